//! baler's durable job queue on Redis Streams.
//!
//! Producers in some processes enqueue jobs; workers in others run them in
//! batches through a [`baler::Handler`]; each job's result comes back to the
//! producer that enqueued it, exactly once, even when workers die, Redis
//! restarts, or the producer itself restarts.
//!
//! # The model
//!
//! ```text
//!  Producer ──enqueue (one entry per batch)► {q}:jobs ──XREADGROUP (batch)──► Worker
//!     ▲                                          ▲   │                          │ baler Batcher
//!     │                                          │   └─XAUTOCLAIM after lease─► │ + your Handler
//!     │                                {q}:delayed ◄──retry── complete (script, per batch,
//!     │                                                       fenced per entry)
//!     └──XREAD, XDEL── {q}:res:<producer> ◄──result────────────┘  ──dead──► {q}:dead
//! ```
//!
//! **Keys.** All keys of a queue share the hash tag `{q}` (see [`Keys`]), so
//! one Redis Cluster slot holds them and every script may touch any of them;
//! every key a script touches is passed in `KEYS`. A queue split into shards
//! has one such tag per shard (see "Sharding on Redis Cluster" below).
//!
//! **The life of a job.**
//! 1. The producer makes the job's id and registers its ticket, *then* sends
//!    the job: concurrent enqueues are batched by a baler [`Batcher`](baler::Batcher)
//!    into one round trip. A batch of jobs without idempotency keys is one
//!    stream entry, a *bundle* (see [`ProducerBuilder::bundles`]): Redis
//!    then stores, hands out, acknowledges and trims one entry per batch,
//!    not one per job. When a job has an idempotency key or the queue a
//!    maximum length, the batch is one script call that adds each job as an
//!    entry of its own (or refuses it when the queue is full, or recognises
//!    the key).
//! 2. A worker claims entries with `XREADGROUP` under a consumer name unique
//!    to its start, and runs their jobs through its batcher and your
//!    handler (a bundle's jobs may be spread over several handler calls).
//! 3. The worker completes entries in batches with one script that, per
//!    entry, checks that the claim is still its own (owner and delivery
//!    count, the fencing token), then, per job, writes the result, or
//!    schedules a retry in `{q}:delayed`, or dead-letters the job; and
//!    acknowledges the entry (finished entries are trimmed in bulk). The
//!    results for one producer go as one entry of its results stream. A
//!    bundle is completed whole, once all its jobs have their outcome. A
//!    stale worker writes nothing.
//! 4. The producer reads its results stream from a cursor it owns, resolves
//!    the tickets, and deletes the entry once every result in it is
//!    delivered (entries are deleted together, at most half a second after
//!    their delivery).
//!
//! **Why no result can be lost.** A result is never a message sent to
//! whoever happens to listen (as a pub/sub event is): it is a stream entry
//! written in the same script that acknowledges the job, so a job is either
//! still claimable or its result is stored. The entry stays until the
//! producer has resolved the ticket. The ticket existed before the job could
//! reach a worker, so a fast worker cannot beat it; and a producer restarted
//! under the same name reads its stream from the start and finds every
//! result of the jobs it enqueued before (see [`Producer::reattach`] and
//! [`Producer::take_unclaimed`]).
//!
//! **Crashes.** A live worker renews its leases every third of the lease.
//! A job whose worker died is reclaimed by another worker once its lease has
//! run out (`XAUTOCLAIM`), and run again; a job delivered more than
//! `max_deliveries` times is dead-lettered instead, so a job that kills its
//! worker cannot loop forever. A reclaimed bundle is not run as a bundle
//! again: its jobs are handed back as entries of their own, so that one job
//! that kills its worker is dead-lettered alone. Jobs therefore run *at least once*; the
//! fencing makes sure that only one run's result is written.
//!
//! **Resends.** An enqueue whose reply was lost (the connection dropped
//! during the call) is sent again. A job with an
//! [idempotency key](Job::idempotency_key) is not added twice; one without
//! may be, and then runs twice, unless the queue has a
//! [`resend_window`](QueueBuilder::resend_window), which costs a marker key
//! and a script call per enqueue. Either way its ticket resolves once: the
//! second result is recognised as the second copy of a job this producer
//! already resolved, and deleted.
//!
//! **Results are delivered at least once across a producer's crash.** A
//! producer killed within half a second of delivering a result may not have
//! deleted it yet; its next start finds it and offers it through
//! [`Producer::take_unclaimed`] again.
//!
//! **Durability** is Redis's: with `appendonly yes` and `appendfsync always`,
//! everything a script call acknowledged survives a Redis restart. With
//! `everysec`, up to a second of acknowledged writes may be lost on a crash
//! of the Redis host; with replicas, what the master answered but had not
//! yet copied is lost with it. [`QueueBuilder::durability`] makes producers
//! wait for replicas (`WAIT`) or for the append-only files (`WAITAOF`)
//! before answering; the [`durability`] module says what each setting
//! promises. The jobs stream is never capped with `MAXLEN` (that would
//! delete jobs not yet run); a queue's length is bounded by
//! [`QueueBuilder::max_length`] instead.
//!
//! # Sharding on Redis Cluster
//!
//! One queue is one hash tag, so one slot, so one Redis node: a single
//! master carries all of its traffic. [`QueueBuilder::shards`] splits it
//! into `n` shards, each a complete queue of its own hash tag (jobs stream
//! and group, delayed jobs, dead letters, results streams, idempotency
//! markers), and [`Queue::cluster_builder`] reaches a Redis Cluster through
//! any of its nodes:
//!
//! ```no_run
//! use baler_queue::Queue;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"];
//! let queue = Queue::cluster_builder(nodes, "mail").shards(3).build().await?;
//! # let _ = queue;
//! # Ok(())
//! # }
//! ```
//!
//! - **Placement.** Shard `i`'s tag is chosen (client-side, the same in every
//!   process) so that its slot lies in the `i`-th of `n` equal slot ranges;
//!   with the slots split evenly between `n` masters, as
//!   `redis-cli --cluster create` does, each shard has a master of its own.
//!   See [`Keys`] for the rule. A queue of one shard keeps the keys `{q}:…`
//!   and does exactly what it did before sharding existed.
//! - **Producers** send a job without an idempotency key to the shards in
//!   turn, and one with a key always to the shard the key hashes to, so that
//!   enqueuing the key again finds its marker. Each shard has its own
//!   enqueue batcher (one round trip per batch and shard) and its own
//!   results reader: a worker writes a job's result into the results stream
//!   of the job's own shard (`{q#i}:res:<producer>`), in the same script
//!   that completes it, and the producer reads every shard's stream.
//!   [`Producer::reattach`], [`Producer::take_unclaimed`] and a restart
//!   under the same name work across shards.
//! - **Workers** claim from every shard: per shard a claimer (with a
//!   blocking connection of its own), a keeper (lease renewal, reclaim,
//!   promotion of due retries) and a completer (one completion script per
//!   batch and shard). [`Queue::stats`] and [`Queue::diagnose`] sum over the
//!   shards.
//! - **Every producer and worker of a queue must use the same shard count**:
//!   a shard nobody reads keeps its jobs. Changing the count of a queue that
//!   holds jobs strands the jobs of the shards that go away; drain it first.
//!
//! **What the loss of a master means.** Each shard lives on one master, and
//! Redis replication is asynchronous: a master acknowledges a write (an
//! enqueue, a completion and its result) before any replica has it. A
//! master that dies before replicating loses those writes, even when a
//! replica takes over: jobs whose enqueue was lost vanish (their tickets
//! never resolve by themselves and end as outstanding at the producer's
//! shutdown), an idempotency key whose marker was lost enqueues anew, and a
//! completion that was lost leaves its job pending as before, so it is
//! reclaimed and runs again, and a result the producer had already read
//! comes a second time (as an unclaimed one). Only `WAIT` (or `WAITAOF`)
//! after a write narrows that window: [`QueueBuilder::durability`] makes
//! producers wait so after each enqueue, on the shard's own master (see
//! [`durability`]); completions are not waited for. Without replicas, the shard is unavailable until its master comes back,
//! with what its AOF kept if it had one (see "Durability" above) and
//! nothing otherwise. Meanwhile the other shards go on: their
//! jobs are enqueued, run and answered; producers retry the dead shard's
//! enqueues and then fail them with [`EnqueueError::Unconfirmed`], a
//! producer's shutdown reports the dead shard's jobs as outstanding (their
//! tickets end with [`JobError::Shutdown`]), and a worker's shutdown counts
//! the completions it could not write as `unwritten`. For the other
//! masters to keep serving while one is down, the cluster must run with
//! `cluster-require-full-coverage no`; with the default `yes`, the whole
//! cluster refuses commands once it has marked a master as failed.
//!
//! # TLS
//!
//! With the `tls` feature (on by default), a `rediss://host:port` URL
//! connects to Redis's `tls-port` over TLS (rustls with the ring crypto
//! provider: no OpenSSL needed), for producers and workers alike. The
//! server's certificate must name the URL's host and be signed by a CA that
//! the system trusts, or by the CA whose PEM certificate is given to
//! [`QueueBuilder::with_ca`]. Certificate checks cannot be turned off (a
//! `rediss://…#insecure` URL is refused), and clients present no
//! certificate, so the server must not require one (`tls-auth-clients no`
//! or `optional`). A handshake that fails is a
//! [`ConnectError::TlsHandshake`] that names the server and what to check,
//! or a [`ConnectError::TlsNoAnswer`], most often a plain port given as
//! `rediss://`. If no rustls crypto provider is installed for the process
//! when a `rediss://` queue is built, ring's becomes the process's default.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use baler::{handler_fn, Batch, Outcome};
//! use baler_queue::Queue;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = Queue::connect("redis://127.0.0.1:6379", "double").await?;
//! let worker = queue.worker().start(handler_fn(|batch: Batch<u64>| async move {
//!     Ok::<_, std::io::Error>(batch.iter().map(|n| Outcome::Done(n * 2)).collect())
//! }))?;
//! let producer = queue.producer("api-1").build::<u64, u64>()?;
//! let ticket = producer.enqueue(21).await?;
//! assert_eq!(ticket.await?, 42);
//! producer.shutdown(Duration::from_secs(5)).await;
//! worker.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod bundle;
mod codec;
mod conn;
pub mod durability;
mod error;
mod events;
mod keys;
pub mod observe;
mod producer;
mod queue;
mod scripts;
mod tls;
mod worker;

/// The integration tests' Redis harness, for the unit tests that need a server.
#[cfg(test)]
#[path = "../tests/common/mod.rs"]
mod test_common;

pub use codec::{Codec, Json};
pub use durability::{Durability, Reached};
pub use error::{ConfigError, ConnectError, EnqueueError, JobError};
pub use events::{QueueEvent, QueueEvents, RecvError};
pub use keys::Keys;
pub use observe::{ConsumerStats, QueueCode, QueueDiagnosis, QueueFinding, QueueStats};
pub use producer::{Job, JobTicket, Producer, ProducerBuilder, ProducerReport};
pub use queue::{JobId, Queue, QueueBuilder};
pub use worker::{Worker, WorkerBuilder, WorkerReport, WorkerStats};
