//! baler is a batching engine for Rust services.
//!
//! Many small operations (row inserts, key look-ups, counter updates) go in;
//! batches come out, formed by size, cost and time, at the pace the datastore
//! behind them allows; every caller gets its own operation's result; and
//! nothing accepted is ever lost, whether the handler fails, panics, times out,
//! or the batcher shuts down.
//!
//! # The model
//!
//! ```text
//!  submit ──► buffer (bounded: wait / try / deadline) ──► queue per key
//!                                                             │
//!        capacity (token bucket at the current rate)  ◄───────┤ batch former: size, cost,
//!        in-flight limit (global, per key)            ◄───────┤ linger, min size + ticker
//!                                                             ▼
//!                                        handler(batch) ──► one outcome per operation
//!                                                             │ retry (backoff, attempts)
//!  ticket ◄──────────────── exactly one resolution ◄──────────┘ or resolve
//! ```
//!
//! - A [`Batcher`] is a handle to an **engine**: one tokio task that owns all
//!   of the batcher's state. Callers and batch tasks talk to it by message
//!   (a submit is a push onto the engine's intake, which the engine takes
//!   whole each turn), so the engine's state is never shared and no data race
//!   is possible.
//! - An [`Operation`] carries a payload, a cost (1 unless set) and an optional
//!   key. [`Batcher::submit`] hands back a [`Ticket`], a future that resolves
//!   exactly once with the operation's output or an [`Error`] that says why not.
//! - A batch closes when it reaches [`max_batch_size`](Builder::max_batch_size)
//!   or [`max_batch_cost`](Builder::max_batch_cost), or when its
//!   [`linger`](Builder::linger), counted from its first operation, runs out.
//!   With the default [`Dispatch::LoadAware`] policy, a batch whose key has
//!   nothing in flight goes at once: idle requests do not wait out a timer.
//! - A [`Handler`] processes a [`Batch`] and returns one [`Outcome`] per
//!   operation, in order. The engine, not the handler, pairs outcomes with
//!   tickets. Operations it marks [`Outcome::Retry`] go back into the buffer
//!   after a backoff, up to [`max_attempts`](Builder::max_attempts).
//! - A [`Capacity`] is the cost per second batches may spend; one capacity can
//!   be shared by several batchers. The **target**, the cost of everything a
//!   batcher holds, is reported to the capacity, so that a shared capacity can
//!   acquire what is needed.
//! - [`Batcher::shutdown`] stops intake, flushes everything, waits for the
//!   batches in flight and returns a [`ShutdownReport`]; with a deadline,
//!   whatever is left resolves as [`Error::Abandoned`] and comes back in the
//!   report, payload and all.
//! - A [`Loader`](loader::Loader) is the engine with keys as operations:
//!   request coalescing (a dataloader) with de-duplication of keys in flight
//!   and a [`Cache`](loader::Cache) in front; see the [`loader`] module.
//! - A [`Processor`](processor::Processor) is the engine with per-key batches
//!   that load a resource once, apply every operation of a window to it in
//!   order and save it once; see the [`processor`] module.
//!
//! # The crate's surface
//!
//! The root holds the engine and what every user of it meets: [`Batcher`]
//! and its [`Builder`]; [`Operation`], [`Ticket`] and [`OpId`]; the
//! [`Handler`] side ([`Batch`], [`Outcome`], [`handler_fn`], [`OpInfo`]);
//! the errors ([`Error`], [`SubmitError`], [`ConfigError`]); [`Capacity`];
//! [`ShutdownReport`]; [`Stats`]; [`Events`] and [`Event`]; and
//! [`Diagnosis`]. These are the words of the model above.
//!
//! Each face built on the engine lives in its own module and is named by its
//! path, so that its types (each with its own builder, errors and figures)
//! never crowd the root and never need a prefix to tell them apart:
//!
//! | module | what it holds |
//! |---|---|
//! | [`loader`] | [`Loader`](loader::Loader), its builder, [`LoadError`](loader::LoadError), caches and batch functions |
//! | [`processor`] | [`Processor`](processor::Processor), its builder, [`ProcessorError`](processor::ProcessorError), [`Store`](processor::Store) and batch reports |
//! | [`shared`] | [`SharedCapacity`](shared::SharedCapacity) and the [`LeaseStore`](shared::LeaseStore) contract that backends such as Redis or Azure Blob implement |
//!
//! One concept has one name wherever a face has it: `max_in_flight` is how
//! many batches run at once, `max_batch_size` how many operations a batch
//! holds, `linger` how long a batch waits for more from its first operation,
//! `max_operation_time` how long one call of the handler (or batch function)
//! may run, and `shutdown(deadline)` stops intake, finishes or abandons what
//! is held and returns a [`ShutdownReport`]. A different concept has a name
//! that says so: a processor's `max_store_time` bounds each load and each
//! save, not the batch as a whole. Every face's listeners read an
//! [`Events`].
//!
//! # Example
//!
//! ```
//! use baler::{handler_fn, Batch, Batcher, Operation, Outcome};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A handler that "writes" a batch of rows and answers each with its length.
//! let batcher = Batcher::builder()
//!     .max_batch_size(100)
//!     .build(handler_fn(|batch: Batch<String>| async move {
//!         Ok::<_, std::io::Error>(batch.iter().map(|row| Outcome::Done(row.len())).collect())
//!     }))?;
//!
//! let mut tickets = Vec::new();
//! for row in ["a", "bb", "ccc"] {
//!     tickets.push(batcher.submit(Operation::new(row.to_owned()).with_cost(2)).await?);
//! }
//! for (ticket, expected) in tickets.into_iter().zip([1, 2, 3]) {
//!     assert_eq!(ticket.await?, expected);
//! }
//! let report = batcher.shutdown(None).await;
//! assert!(report.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics
//!
//! With the default cargo feature `metrics`, every batcher records through the
//! [`metrics`](https://docs.rs/metrics) facade, into whatever recorder the
//! service installed (for Prometheus, `metrics-exporter-prometheus`; see
//! `examples/prometheus.rs`). The batcher registers its handles **when it is
//! built**, against the recorder current at that moment, so install the
//! recorder first. Recording is an atomic update on a handle: no allocation,
//! no look-up, nothing per operation on the engine's task. Without the
//! feature (`default-features = false`) nothing is recorded and nothing is
//! paid.
//!
//! Every metric carries the label `batcher`, the batcher's
//! [`name`](Builder::name). Counters move with [`Stats`] (they always agree
//! with [`Batcher::stats`]); gauges are set once per turn of the engine, so
//! they are as of its last turn.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `baler_operations_submitted_total` | counter | `batcher` | operations accepted |
//! | `baler_operations_completed_total` | counter | `batcher` | operations resolved with an output |
//! | `baler_operations_failed_total` | counter | `batcher` | operations resolved with an error: handler error, retries exhausted, timeout, panic, wrong outcome count, abandoned at a shutdown deadline |
//! | `baler_operations_retried_total` | counter | `batcher` | times an operation was put back for another attempt |
//! | `baler_operations_cancelled_total` | counter | `batcher` | operations taken out because their ticket was dropped before dispatch |
//! | `baler_batches_dispatched_total` | counter | `batcher` | batches handed to the handler |
//! | `baler_batches_ended_total` | counter | `batcher`, `outcome` | batches ended, by `outcome`: `ok` (the handler returned one outcome per operation), `handler_error`, `panicked`, `outcome_count` (wrong number of outcomes), `timed_out`, `abandoned` (shutdown deadline) |
//! | `baler_audit_failures_total` | counter | `batcher` | audits that found the target differing from the cost of what is held: a bug in baler, see [`Code::AuditMismatch`] |
//! | `baler_target` | gauge | `batcher` | the target: the cost of everything held, buffered, retrying or in flight |
//! | `baler_capacity` | gauge | `batcher` | the capacity's rate in cost per second; infinite (`inf`) when unlimited |
//! | `baler_buffered_operations` | gauge | `batcher` | operations waiting in the buffer for a batch |
//! | `baler_buffered_cost` | gauge | `batcher` | their total cost |
//! | `baler_retrying_operations` | gauge | `batcher` | operations waiting out a retry backoff |
//! | `baler_in_flight_batches` | gauge | `batcher` | batches whose handler is running |
//! | `baler_in_flight_operations` | gauge | `batcher` | operations in those batches |
//! | `baler_waiting_submitters` | gauge | `batcher` | submitters waiting for room in the buffer |
//! | `baler_paused` | gauge | `batcher` | 1 while dispatching is paused, else 0 |
//! | `baler_batch_size` | histogram | `batcher` | operations per dispatched batch |
//! | `baler_batch_cost` | histogram | `batcher` | cost per dispatched batch |
//! | `baler_queue_wait_seconds` | histogram | `batcher` | per batch: how long its oldest operation waited in the buffer before the batch was dispatched (the longest wait in the batch; a retry's wait counts from its return to the buffer) |
//! | `baler_handler_duration_seconds` | histogram | `batcher` | per batch: how long the handler ran (until it returned, panicked, timed out or was abandoned) |
//! | `baler_operation_latency_seconds` | histogram | `batcher` | per operation a batch resolves: from submit to resolution, across retries |
//!
//! Where to look first: `baler_target` above `baler_capacity` for long means
//! the capacity is the bottleneck; `baler_in_flight_batches` stuck at
//! `max_in_flight` means the handler is; `baler_waiting_submitters` above 0
//! means producers are being pushed back. [`Batcher::diagnose`] says the same
//! in words.
//!
//! # tower
//!
//! With the `tower` feature (off by default), `service::BatcherService` makes
//! a `Batcher` a tower `Service`, one operation per call, so that tower's
//! middleware composes in front of the batching; see the `service` module
//! (documented on docs.rs, which builds every feature) and `examples/tower.rs`.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod admission;
mod batcher;
mod capacity;
mod config;
mod diagnose;
mod engine;
mod error;
mod events;
mod handler;
mod instruments;
mod intake;
mod limits;
pub mod loader;
mod operation;
pub mod processor;
mod queued;
mod run;
#[cfg(feature = "tower")]
pub mod service;
mod settings;
pub mod shared;
mod shutdown;
mod slot;
mod stats;
mod ticket;
mod time;

pub use batcher::{Batcher, Submit};
pub use capacity::{Capacity, CapacityNotifier, CapacitySource, DEFAULT_BURST_INTERVAL};
pub use config::Builder;
pub use diagnose::{CapacityStatus, Code, Diagnosis, Finding, Severity};
pub use error::{ConfigError, CostLimit, Error, SubmitError};
pub use events::{BatchFailure, BatchId, CapacityEvent, Event, Events, RecvError};
pub use handler::{handler_fn, Batch, Handler, HandlerFn, HandlerResult, OpInfo, Outcome};
pub use operation::{OpId, Operation};
pub use settings::{Backoff, Dispatch, Execution};
pub use shutdown::{Abandoned, ShutdownReport};
pub use stats::Stats;
pub use ticket::Ticket;

/// The README's examples, compiled and run as doc tests (`build.rs` finds the
/// README in a checkout and in the published crate alike).
#[cfg(all(doctest, baler_readme))]
#[doc = include_str!(env!("BALER_README"))]
pub struct ReadmeDoctests;

/// The examples of the guides in `docs/`, compiled and run as doc tests in a
/// checkout (the published crate does not ship `docs/`; `build.rs` sets
/// `baler_guides` only where the guides are).
#[cfg(all(doctest, baler_guides))]
pub mod guides {
    /// `docs/cli.md`.
    #[doc = include_str!(concat!(env!("BALER_GUIDES"), "/cli.md"))]
    pub struct Cli;
    /// `docs/loader.md`.
    #[doc = include_str!(concat!(env!("BALER_GUIDES"), "/loader.md"))]
    pub struct Loader;
    /// `docs/processor.md`.
    #[doc = include_str!(concat!(env!("BALER_GUIDES"), "/processor.md"))]
    pub struct Processor;
    /// `docs/shared-capacity.md`.
    #[doc = include_str!(concat!(env!("BALER_GUIDES"), "/shared-capacity.md"))]
    pub struct SharedCapacity;
}
