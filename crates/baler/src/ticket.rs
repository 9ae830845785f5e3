//! Tickets: the caller's half of an operation.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use crate::error::Error;
use crate::slot::{CloseOutcome, Receiver};

/// Told when a ticket is dropped before its operation resolved.
pub(crate) trait CancelSink: Send + Sync {
    fn cancelled(&self);
}

/// How many [`CancelShard`]s a batcher has.
pub(crate) const CANCEL_SHARDS: usize = 16;

/// What a ticket holds to report its cancellation: one of a batcher's few
/// shards, chosen by the submitting thread, so that counting a reference per
/// ticket stays on a cache line that thread mostly has to itself (one shared
/// count, taken and released by every ticket on every thread, was one of the
/// costliest instructions of a submit). It reaches the engine through a weak
/// reference: once the batcher is gone there is nothing to sweep.
#[repr(align(128))]
pub(crate) struct CancelShard {
    target: Weak<dyn CancelSink>,
}

impl CancelShard {
    pub(crate) fn new(target: Weak<dyn CancelSink>) -> Self {
        CancelShard { target }
    }

    fn cancelled(&self) {
        if let Some(target) = self.target.upgrade() {
            target.cancelled();
        }
    }
}

/// The shard of the current thread.
#[inline]
pub(crate) fn cancel_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % CANCEL_SHARDS;
    }
    SHARD.with(|s| *s)
}

/// What [`Batcher::submit`](crate::Batcher::submit) hands back: a future that
/// resolves exactly once, with the operation's own output or the
/// [`Error`] that says why there is none.
///
/// Dropping a ticket before its operation is dispatched takes the operation
/// out of the buffer (and out of the target); it is never handed to the
/// handler. Dropping it later only discards the result.
///
/// ```
/// # use baler::{handler_fn, Batch, Batcher};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let batcher = Batcher::builder().build(handler_fn(|b: Batch<u32>| async move {
/// #     Ok::<_, std::io::Error>(b.done_all(()))
/// # }))?;
/// let ticket = batcher.submit(7).await?; // waits for room in the buffer
/// let output = ticket.await?;            // waits for the batch's outcome
/// # let () = output;
/// # Ok(())
/// # }
/// ```
#[must_use = "dropping a ticket before its operation is dispatched cancels the operation"]
pub struct Ticket<O, E> {
    rx: Receiver<Result<O, Error<E>>>,
    done: bool,
    sink: Arc<CancelShard>,
}

impl<O, E> Ticket<O, E> {
    pub(crate) fn new(rx: Receiver<Result<O, Error<E>>>, sink: Arc<CancelShard>) -> Self {
        Ticket {
            rx,
            done: false,
            sink,
        }
    }
}

impl<O, E> Future for Ticket<O, E> {
    type Output = Result<O, Error<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.rx.poll_recv(cx) {
            Poll::Ready(result) => {
                this.done = true;
                Poll::Ready(result.unwrap_or_else(|_| Err(Error::Stopped)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<O, E> Drop for Ticket<O, E> {
    fn drop(&mut self) {
        if !self.done && self.rx.close() == CloseOutcome::Unresolved {
            self.sink.cancelled();
        }
    }
}

impl<O, E> fmt::Debug for Ticket<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("done", &self.done).finish()
    }
}
