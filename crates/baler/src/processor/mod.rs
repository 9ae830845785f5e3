//! The keyed batch processor: per key, load a resource once, run every
//! operation of a window on it in order, save once, and answer every caller.
//!
//! # The model
//!
//! ```text
//!  run(key, op) ──► engine: one queue per key ──► window of `linger` from its first op
//!                                                   (or max_batch_size ops), then a batch
//!                                                             │  at most one batch per key,
//!                                                             │  at most max_in_flight batches
//!                                                             ▼
//!                              load(key) ─► op₁(&mut r), op₂(&mut r), … in arrival order ─► save(key, r)
//!                                                             │
//!  run returns opᵢ's value ◄── only once the save succeeded ◄──┘
//! ```
//!
//! A [`Processor`] is the [`Batcher`] engine with a handler that loads,
//! applies and saves. It inherits what the engine guarantees: every `run`
//! resolves exactly once, operations of one key are batched in arrival
//! order, and [`shutdown`](Processor::shutdown) loses nothing.
//!
//! - **Order and exclusion.** Operations of a key run one after the other in
//!   the order their `run` calls were accepted, on a `&mut` to the loaded
//!   resource: no locks in user code, and no lost updates, whatever the
//!   resource's type. Two batches of one key never overlap, so each load sees
//!   the previous save.
//! - **No head-of-line blocking.** Keys are not pinned to workers by hash:
//!   any key whose window has closed takes the next free place among
//!   [`max_in_flight`](ProcessorBuilder::max_in_flight), so a slow key
//!   holds up only its own operations.
//! - **Windows.** A key's window opens with its first operation and stays
//!   open for [`linger`](ProcessorBuilder::linger) (100 ms by
//!   default), or until it holds
//!   [`max_batch_size`](ProcessorBuilder::max_batch_size) operations. Then
//!   the batch loads, applies and saves; operations that arrive meanwhile
//!   open the key's next window. A `run` therefore takes about one window
//!   plus one load and one save.
//! - **Deadlines.** A load and a save may each take up to
//!   [`max_store_time`](ProcessorBuilder::max_store_time) (twice the window by
//!   default); past it the call is dropped and every operation of the batch
//!   fails with [`ProcessorError::LoadTimedOut`] or
//!   [`ProcessorError::SaveTimedOut`].
//!
//! # Failures
//!
//! - A failed **load** resolves every operation of its batch with
//!   [`ProcessorError::Load`]; none of them ran.
//! - A failed **save** resolves every operation that ran with
//!   [`ProcessorError::Save`]: the operations ran, but **their effects were
//!   not persisted**. The next batch loads the resource as it was saved last.
//! - A **panicking operation** crashes nothing. The resource it ran on may be
//!   half changed, so the whole batch is thrown away unsaved: the operation
//!   that panicked gets [`ProcessorError::Panicked`], every other operation of
//!   the batch [`ProcessorError::Aborted`] (those after it do not run). None
//!   of the batch was persisted, so each caller may safely run its operation
//!   again. A panic in the store's load or save also ends in `Aborted`.
//! - A caller that **gives up** before its operation ran (its `run` future is
//!   dropped, or the deadline of [`run_timeout`](Processor::run_timeout)
//!   passes) withdraws it: the operation never runs, and `run_timeout`
//!   returns [`ProcessorError::Cancelled`]. Once an operation has started, it
//!   is part of its batch and is saved with it; `run_timeout` then waits for
//!   the save (bounded by `max_store_time`) rather than report a result it
//!   cannot take back.
//!
//! # Shutting down
//!
//! [`shutdown`](Processor::shutdown) closes every open window at once, runs
//! and saves those batches, waits for the batches already running, and
//! returns a [`ShutdownReport`]. A `run` accepted before the shutdown is
//! processed and answered as usual; a `run` after it fails with
//! [`ProcessorError::Stopped`]. Dropping the last handle of a processor shuts
//! it down in the background in the same way.
//!
//! # Figures
//!
//! Every batch sends a [`BatchReport`] (key, operations, applied, cancelled,
//! load time, save time, outcome) to the listeners of
//! [`events`](Processor::events), and adds to the totals of
//! [`stats`](Processor::stats). The engine's own [`Stats`] (buffered, in
//! flight, batches) are in [`engine_stats`](Processor::engine_stats).

mod batch;
mod builder;
mod error;
mod job;
mod report;
mod store;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::batcher::Batcher;
use crate::error::SubmitError;
use crate::events::Events;
use crate::operation::Operation;
use crate::shutdown::{Abandoned, ShutdownReport};
use crate::stats::Stats;

pub use builder::{ProcessorBuilder, DEFAULT_LINGER};
pub use error::ProcessorError;
pub use report::{BatchOutcome, BatchReport, ProcessorStats};
pub use store::{store_fn, Store, StoreFn};

use error::Failure;
use job::{Job, Value};
use report::Figures;

/// A keyed batch processor: per key, loads a resource once, runs every
/// operation of a window on it in order, saves it once, and hands each caller
/// its operation's value. See the [module docs](self) for the model.
///
/// `K` is the key, `R` the resource and `E` the [`Store`]'s error. Cloning a
/// `Processor` gives another handle to the same one.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use baler::processor::{store_fn, Processor};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Balances kept in a map; a real store would talk to a database.
/// let db: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
/// let (load_db, save_db) = (db.clone(), db.clone());
/// let processor = Processor::builder().build(store_fn(
///     move |key: String| {
///         let balance = load_db.lock().unwrap().get(&key).copied().unwrap_or(0);
///         async move { Ok::<_, std::io::Error>(balance) }
///     },
///     move |key: String, balance: i64| {
///         save_db.lock().unwrap().insert(key, balance);
///         async move { Ok(()) }
///     },
/// ))?;
///
/// // Both deposits land in one window: one load, one save.
/// let (a, b) = tokio::join!(
///     processor.run("alice".to_owned(), |balance: &mut i64| { *balance += 10; *balance }),
///     processor.run("alice".to_owned(), |balance: &mut i64| { *balance += 5; *balance }),
/// );
/// assert_eq!((a?, b?), (10, 15));
/// assert_eq!(db.lock().unwrap()["alice"], 15);
/// assert_eq!(processor.stats().saves, 1);
///
/// processor.shutdown(None).await;
/// # Ok(())
/// # }
/// ```
pub struct Processor<K, R, E> {
    batcher: Batcher<Job<R>, Value, Failure<E>, K>,
    figures: Arc<Figures<K>>,
}

impl<K, R, E> Clone for Processor<K, R, E> {
    fn clone(&self) -> Self {
        Processor {
            batcher: self.batcher.clone(),
            figures: self.figures.clone(),
        }
    }
}

impl<K: Clone, R, E> fmt::Debug for Processor<K, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Processor")
            .field("stats", &self.figures.snapshot())
            .finish()
    }
}

impl Processor<(), (), ()> {
    /// Starts configuring a processor.
    pub fn builder() -> ProcessorBuilder {
        ProcessorBuilder::default()
    }
}

impl<K, R, E> Processor<K, R, E>
where
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    R: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Runs `op` on the resource of `key`, in a batch with the other
    /// operations of the key's current window, and returns its value once the
    /// batch's save succeeded.
    ///
    /// `op` runs on the processor's task, between a load and a save: keep it
    /// short and free of I/O. It gets the resource by `&mut`, so its changes
    /// are what the next operation sees and what is saved.
    ///
    /// Dropping the returned future before `op` ran withdraws it: it will not
    /// run.
    ///
    /// # Errors
    ///
    /// [`ProcessorError::Stopped`] after [`shutdown`](Self::shutdown); otherwise the
    /// failure of the operation's batch (see [`ProcessorError`]).
    pub async fn run<V, F>(&self, key: K, op: F) -> Result<V, ProcessorError<E>>
    where
        F: FnOnce(&mut R) -> V + Send + 'static,
        V: Send + 'static,
    {
        self.run_until(key, op, None).await
    }

    /// As [`run`](Self::run), but gives up if `op` has not started within
    /// `wait` (counting any wait for room in the buffer): then `op` never
    /// runs and the result is [`ProcessorError::Cancelled`]. If `op` has
    /// started by then, it belongs to its batch, and this waits for the
    /// batch's save like `run`.
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run), and [`ProcessorError::Cancelled`].
    pub async fn run_timeout<V, F>(
        &self,
        key: K,
        op: F,
        wait: Duration,
    ) -> Result<V, ProcessorError<E>>
    where
        F: FnOnce(&mut R) -> V + Send + 'static,
        V: Send + 'static,
    {
        self.run_until(key, op, Some(crate::time::later(Instant::now(), wait)))
            .await
    }

    async fn run_until<V, F>(
        &self,
        key: K,
        op: F,
        deadline: Option<Instant>,
    ) -> Result<V, ProcessorError<E>>
    where
        F: FnOnce(&mut R) -> V + Send + 'static,
        V: Send + 'static,
    {
        // `claim` cancels the operation if this future is dropped before the
        // operation started.
        let (job, claim) = Job::new(op);
        let op = Operation::new(job).with_key(key);
        let submitted = match deadline {
            None => self.batcher.submit(op).await,
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                self.batcher.submit_timeout(op, wait).await
            }
        };
        let ticket = match submitted {
            Ok(ticket) => ticket,
            Err(SubmitError::Timeout(_)) => return Err(ProcessorError::Cancelled),
            Err(SubmitError::Shutdown(_)) => return Err(ProcessorError::Stopped),
            Err(other) => {
                return Err(ProcessorError::Engine {
                    message: other.to_string(),
                })
            }
        };
        tokio::pin!(ticket);
        let result = match deadline {
            None => ticket.await,
            Some(at) => match tokio::time::timeout_at(at, &mut ticket).await {
                Ok(result) => result,
                // Too late to withdraw: it runs (or ran) with its batch.
                Err(_) if !claim.cancel() => ticket.await,
                Err(_) => return Err(ProcessorError::Cancelled),
            },
        };
        match result {
            Ok(value) => match value.downcast::<V>() {
                Ok(value) => Ok(*value),
                // The value was made by this call's own `op`, so it is a V.
                Err(_) => Err(ProcessorError::Engine {
                    message: "the operation's value had an unexpected type".to_owned(),
                }),
            },
            Err(error) => Err(ProcessorError::from_engine(error)),
        }
    }

    /// Shuts the processor down: new `run`s fail with
    /// [`ProcessorError::Stopped`], every open window closes at once and its
    /// batch is run and saved, and this returns when every batch has
    /// finished. Calling it again, or from another handle, waits for the same
    /// shutdown.
    ///
    /// With a `deadline`, operations whose batch has not finished when it
    /// passes resolve as [`ProcessorError::Abandoned`] and are listed in the report by key; an
    /// operation is a closure, so the report cannot hand it back. Without
    /// one, nothing is abandoned: loads and saves are bounded by
    /// [`max_store_time`](ProcessorBuilder::max_store_time), so this ends.
    pub async fn shutdown(&self, deadline: impl Into<Option<Duration>>) -> ShutdownReport<(), K> {
        let report = self.batcher.shutdown(deadline).await;
        ShutdownReport {
            flushed: report.flushed,
            completed: report.completed,
            failed: report.failed,
            abandoned: report
                .abandoned
                .into_iter()
                .map(|a| Abandoned {
                    id: a.id,
                    key: a.key,
                    payload: (),
                    cost: a.cost,
                })
                .collect(),
        }
    }

    /// Whether a [`shutdown`](Self::shutdown) has started (new `run`s are
    /// refused).
    pub fn is_shutting_down(&self) -> bool {
        self.batcher.is_shutting_down()
    }

    /// Subscribes to a [`BatchReport`] per batch. Like the engine's events,
    /// they go out on a bounded broadcast: a listener that falls behind
    /// misses the oldest reports and is told how many; it never slows the
    /// processor down.
    pub fn events(&self) -> Events<BatchReport<K>> {
        self.figures.subscribe()
    }

    /// The running totals: batches, loads, saves, failures, panics, applied
    /// and cancelled operations, time spent loading and saving.
    pub fn stats(&self) -> ProcessorStats {
        self.figures.snapshot()
    }

    /// The engine's snapshot: operations buffered (in open windows) and in
    /// flight, batches dispatched, and more.
    pub fn engine_stats(&self) -> Stats {
        self.batcher.stats()
    }
}
