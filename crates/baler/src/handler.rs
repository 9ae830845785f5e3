//! Handlers: the user's code that processes one batch.
//!
//! A handler receives a [`Batch`] and returns one [`Outcome`] per operation,
//! in the batch's order, or one error for the whole batch. The engine, not the
//! handler, matches outcomes to operations: outcome `i` resolves the ticket of
//! operation `i`, and a handler that returns the wrong number of outcomes fails
//! its batch with [`Error::OutcomeCount`](crate::Error::OutcomeCount) instead
//! of resolving anyone with someone else's result.
//!
//! # Why a batch lends its payloads
//!
//! A [`Batch`] lends `&[T]` from a reference-counted block that the batch's
//! run keeps a second reference to. When the handler's future is dropped,
//! the run takes the block back whole (`Arc::try_unwrap`) and re-queues the
//! payloads of operations marked [`Outcome::Retry`]; a handler that leaked
//! its batch only costs those operations their retry. The price is the
//! `T: Sync` bound (the block is shared between the handler's future and the
//! run) and, in the [`Processor`](crate::Processor), a mutex per operation
//! around its closure, since a closure is taken out through a shared slice.
//!
//! An owned batch (the handler receives the payloads by value) was weighed
//! and not taken:
//!
//! - **Retries** need the payloads back. By value, either the handler hands
//!   each retried payload back (a new shape for [`Outcome::Retry`] and for
//!   every handler), or the batch returns its payloads to the run when it
//!   is dropped (a slot per batch, written by the batch's `Drop`). The second
//!   keeps handlers as they are and costs about what the shared block costs
//!   (one allocation and a few atomic operations per batch), so speed is not
//!   the obstacle.
//! - **The bound would not really go.** A handler that holds `&T` across an
//!   `.await` still needs `T: Sync` for its future to be `Send`; only
//!   handlers that copy what they need before awaiting would gain.
//! - **It changes public signatures**: the bounds of [`Batcher`](crate::Batcher),
//!   [`Handler`] and the builders. That belongs with a change of the public
//!   surface, not with a change of the engine's insides.
//!
//! The processor's mutex can go without an owned batch: the compare-and-swap
//! that decides whether an operation starts or is cancelled already makes
//! its winner the closure's only taker, so the closure could sit in a cell
//! that only the winner opens. That is an uncontended lock per operation
//! (tens of nanoseconds against a handler call), traded for `unsafe` code;
//! not worth it until a benchmark says otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::operation::OpId;

/// What the handler decided for one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O, E> {
    /// The operation succeeded with this output.
    Done(O),
    /// The operation failed for good; its ticket resolves with
    /// [`Error::Handler`](crate::Error::Handler).
    Failed(E),
    /// The operation failed but may succeed later: it goes back into the
    /// buffer after a backoff, unless it has used all of its attempts, in
    /// which case its ticket resolves with
    /// [`Error::Exhausted`](crate::Error::Exhausted).
    Retry(E),
}

impl<O, E> From<Result<O, E>> for Outcome<O, E> {
    fn from(result: Result<O, E>) -> Self {
        match result {
            Ok(o) => Outcome::Done(o),
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// What a handler returns: one outcome per operation, or one error for the
/// whole batch (which then reaches every operation of the batch).
pub type HandlerResult<O, E> = Result<Vec<Outcome<O, E>>, E>;

/// Facts about one operation of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpInfo {
    /// The operation's stable id.
    pub id: OpId,
    /// The operation's cost.
    pub cost: u32,
    /// Which attempt this is: 1 the first time the operation is dispatched.
    pub attempt: u32,
}

pub(crate) struct BatchData<T, K> {
    pub(crate) key: Option<K>,
    pub(crate) items: Vec<T>,
    pub(crate) info: Vec<OpInfo>,
}

/// The operations handed to a handler together. They all share one key.
///
/// A batch lends its payloads as a slice: the engine keeps them so that
/// operations the handler asks to [`Retry`](Outcome::Retry) can go back
/// into the buffer. A batch is deliberately not `Clone`: a handler that moves
/// its batch somewhere that outlives the handler's future (a detached task)
/// keeps the payloads from coming back, and its retryable operations then
/// fail with the error they were retried for.
///
/// ```
/// # async fn example(batch: baler::Batch<String>) {
/// let rows: &[String] = batch.items();
/// assert_eq!(rows.len(), batch.len());
/// for (row, info) in batch.iter().zip(batch.info()) {
///     println!("{} (attempt {}): {row}", info.id, info.attempt);
/// }
/// # }
/// ```
pub struct Batch<T, K = ()> {
    pub(crate) data: Arc<BatchData<T, K>>,
}

impl<T, K> Batch<T, K> {
    /// The key all operations of this batch share, if they have one.
    pub fn key(&self) -> Option<&K> {
        self.data.key.as_ref()
    }

    /// The payloads, in the order outcomes must be returned.
    pub fn items(&self) -> &[T] {
        &self.data.items
    }

    /// An iterator over the payloads.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.data.items.iter()
    }

    /// Id, cost and attempt of each operation, in the same order as [`items`](Self::items).
    pub fn info(&self) -> &[OpInfo] {
        &self.data.info
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.data.items.len()
    }

    /// Whether the batch is empty (it never is when handed to a handler).
    pub fn is_empty(&self) -> bool {
        self.data.items.is_empty()
    }

    /// The total cost of the batch.
    pub fn cost(&self) -> u64 {
        self.data.info.iter().map(|i| u64::from(i.cost)).sum()
    }

    /// One [`Outcome::Done`] per operation, all with the same output: the
    /// usual answer of a write handler whose whole batch succeeded.
    ///
    /// ```
    /// # fn f(batch: baler::Batch<u32>) -> Vec<baler::Outcome<(), std::io::Error>> {
    /// batch.done_all(())
    /// # }
    /// ```
    pub fn done_all<O: Clone, E>(&self, output: O) -> Vec<Outcome<O, E>> {
        (0..self.len())
            .map(|_| Outcome::Done(output.clone()))
            .collect()
    }
}

impl<'a, T, K> IntoIterator for &'a Batch<T, K> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: std::fmt::Debug, K: std::fmt::Debug> std::fmt::Debug for Batch<T, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("key", &self.data.key)
            .field("items", &self.data.items)
            .field("info", &self.data.info)
            .finish()
    }
}

/// Processes one batch. Implement it for a type that holds your connection
/// pool or client; for quick use, wrap a closure with [`handler_fn`].
///
/// `handle` may run for several batches at once (up to the in-flight limit),
/// so it takes `&self`. Its future is dropped if it runs past the maximum
/// operation time or when a shutdown deadline passes. A panic inside it
/// resolves the batch's operations with [`Error::Panicked`](crate::Error::Panicked);
/// the batcher carries on.
///
/// ```
/// use baler::{Batch, Handler, HandlerResult, Outcome};
///
/// struct Doubler;
///
/// impl Handler<u64> for Doubler {
///     type Output = u64;
///     type Error = std::io::Error;
///
///     async fn handle(&self, batch: Batch<u64>) -> HandlerResult<u64, std::io::Error> {
///         Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect())
///     }
/// }
/// ```
pub trait Handler<T, K = ()>: Send + Sync + 'static {
    /// What a successful operation resolves with.
    type Output: Send + 'static;
    /// What a failed operation or batch resolves with.
    type Error: Send + Sync + 'static;

    /// Processes `batch`, returning one outcome per operation in the batch's
    /// order, or an error for the whole batch.
    fn handle(
        &self,
        batch: Batch<T, K>,
    ) -> impl Future<Output = HandlerResult<Self::Output, Self::Error>> + Send;
}

/// A [`Handler`] made from a closure; see [`handler_fn`].
#[derive(Clone, Copy)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from an async closure over an owned [`Batch`].
///
/// ```
/// use baler::{handler_fn, Batch, HandlerResult, Outcome};
///
/// let handler = handler_fn(|batch: Batch<u64>| async move {
///     let outcomes: HandlerResult<u64, std::io::Error> =
///         Ok(batch.iter().map(|n| Outcome::Done(n + 1)).collect());
///     outcomes
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F>(f: F) -> HandlerFn<F> {
    HandlerFn { f }
}

impl<F, Fut, T, K, O, E> Handler<T, K> for HandlerFn<F>
where
    F: Fn(Batch<T, K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult<O, E>> + Send + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = O;
    type Error = E;

    fn handle(&self, batch: Batch<T, K>) -> impl Future<Output = HandlerResult<O, E>> + Send {
        (self.f)(batch)
    }
}

pub(crate) type BoxFuture<'a, R> = Pin<Box<dyn Future<Output = R> + Send + 'a>>;

/// A handler with its types erased, so that `Batcher` names only the types
/// its callers see.
pub(crate) trait ErasedHandler<T, K, O, E>: Send + Sync + 'static {
    /// The future borrows the handler: the batch's task holds the engine's
    /// reference to it for as long as the future lives.
    fn call(&self, batch: Batch<T, K>) -> BoxFuture<'_, HandlerResult<O, E>>;
}

impl<H, T, K> ErasedHandler<T, K, H::Output, H::Error> for H
where
    H: Handler<T, K>,
    T: Send + Sync + 'static,
    K: Send + Sync + 'static,
{
    fn call(&self, batch: Batch<T, K>) -> BoxFuture<'_, HandlerResult<H::Output, H::Error>> {
        // `handle` runs at the first poll, inside the task's panic guard.
        Box::pin(async move { self.handle(batch).await })
    }
}
