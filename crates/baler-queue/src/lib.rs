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
//!  Producer ──enqueue (script, per batch)──► {q}:jobs ──XREADGROUP (batch)──► Worker
//!     ▲                                        ▲   │                          │ baler Batcher
//!     │                                        │   └─XAUTOCLAIM after lease─► │ + your Handler
//!     │                              {q}:delayed ◄──retry── complete (script, per batch,
//!     │                                                     fenced per job)
//!     └──XREAD, XDEL── {q}:res:<producer> ◄──result────────────┘  ──dead──► {q}:dead
//! ```
//!
//! **Keys.** All keys of a queue share the hash tag `{q}` (see [`Keys`]), so
//! one Redis Cluster slot holds them and every script may touch any of them;
//! every key a script touches is passed in `KEYS`.
//!
//! **The life of a job.**
//! 1. The producer makes the job's id and registers its ticket, *then* sends
//!    the job: concurrent enqueues are batched by a baler [`Batcher`](baler::Batcher)
//!    into one script call that adds each job (or refuses it when the queue
//!    is at its maximum length, or recognises an idempotency key).
//! 2. A worker claims jobs with `XREADGROUP` under a consumer name unique to
//!    its start, and runs them through its batcher and your handler.
//! 3. The worker completes each batch with one script that, per job, checks
//!    that the claim is still its own (owner and delivery count, the fencing
//!    token), then writes the result to the producer's results stream, or
//!    schedules a retry in `{q}:delayed`, or dead-letters the job; and
//!    acknowledges and deletes the entry. A stale worker writes nothing.
//! 4. The producer reads its results stream from a cursor it owns, resolves
//!    the ticket, and deletes the entry (entries are deleted together, at
//!    most half a second after their delivery).
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
//! worker cannot loop forever. Jobs therefore run *at least once*; the
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

mod codec;
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
