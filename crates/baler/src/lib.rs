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
//!   of the batcher's state. Callers and batch tasks talk to it by message, so
//!   nothing is locked on the hot path and no data race is possible.
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
//! - A [`Loader`] is the engine with keys as operations: request coalescing
//!   (a dataloader) with de-duplication of keys in flight and a [`Cache`] in
//!   front; see the [`loader`] module.
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
//!     tickets.push(batcher.submit(Operation::new(row.to_owned()).cost(2)).await?);
//! }
//! for (ticket, expected) in tickets.into_iter().zip([1, 2, 3]) {
//!     assert_eq!(ticket.await?, expected);
//! }
//! let report = batcher.shutdown(None).await;
//! assert!(report.is_clean());
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

mod batcher;
mod capacity;
mod config;
mod diagnose;
mod engine;
mod error;
mod events;
mod handler;
pub mod loader;
mod operation;
mod processor;
mod run;
mod shared;
mod shutdown;
mod slot;
mod stats;
mod ticket;

pub use batcher::Batcher;
pub use capacity::{Capacity, CapacityNotifier, CapacitySource, DEFAULT_BURST_INTERVAL};
pub use config::{Backoff, Builder, Dispatch, Execution};
pub use diagnose::{CapacityStatus, Code, Diagnosis, Finding, Severity};
pub use error::{ConfigError, CostLimit, Error, SubmitError};
pub use events::{BatchFailure, BatchId, CapacityEvent, Event, Events, RecvError};
pub use handler::{handler_fn, Batch, Handler, HandlerFn, HandlerResult, OpInfo, Outcome};
pub use loader::{
    batch_fn, BatchFn, BatchFnOf, Cache, Load, LoadError, Loader, LoaderBuilder, LoaderStats,
    MemoryCache, DEFAULT_CACHE_ENTRIES,
};
pub use operation::{OpId, Operation};
pub use processor::{
    store_fn, BatchOutcome, BatchReport, Processor, ProcessorBuilder, ProcessorError,
    ProcessorEvents, ProcessorStats, Store, StoreFn, DEFAULT_MIN_DURATION,
};
pub use shared::{
    Demand, LeaseFuture, LeaseStore, LeaseStoreError, MemoryLeaseStore, SharedCapacity,
    SharedLeases, DEFAULT_LEASE_TIME, MAX_PARTITIONS,
};
pub use shutdown::{Abandoned, ShutdownReport};
pub use stats::Stats;
pub use ticket::Ticket;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
