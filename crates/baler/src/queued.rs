//! An accepted operation as the engine and the batches carry it: on its way
//! in ([`Submitted`]), waiting in a buffer or a retry ([`Queued`]), and what
//! its ticket resolves with ([`Res`]).
//!
//! Its own module because three rooms hand it to each other: the intake
//! delivers it, the engine buffers it, and a batch's run gives it back for a
//! retry. None of them owns the type, so none has to import another for it.

use tokio::time::Instant;

use crate::error::Error;
use crate::slot::Resolver;

/// What a ticket resolves with.
pub(crate) type Res<O, E> = Result<O, Error<E>>;

/// An accepted operation on its way to the engine.
pub(crate) struct Submitted<T, K, O, E> {
    pub(crate) payload: T,
    pub(crate) key: Option<K>,
    pub(crate) cost: u32,
    pub(crate) resolver: Resolver<Res<O, E>>,
}

/// An accepted operation waiting in the buffer or for a retry.
pub(crate) struct Queued<T, O, E> {
    pub(crate) payload: T,
    pub(crate) resolver: Resolver<Res<O, E>>,
    pub(crate) id: u64,
    pub(crate) cost: u32,
    /// Times dispatched so far.
    pub(crate) attempts: u32,
    /// The flush epoch it was accepted in.
    pub(crate) epoch: u64,
    /// When it (re-)entered the buffer; the linger counts from the oldest.
    pub(crate) enqueued: Instant,
    /// When it was accepted, in nanoseconds since the engine started (for
    /// the latency metric: cheaper to subtract than an `Instant`).
    pub(crate) submitted: u64,
}
