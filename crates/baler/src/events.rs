//! Events: what the engine does, as a typed stream.
//!
//! [`Batcher::events`](crate::Batcher::events) subscribes a listener. Events
//! go out on a bounded broadcast channel: a listener that falls behind never
//! slows the engine down; it loses the oldest events instead, and its next
//! read (by [`Events::recv`] or as a [`Stream`](futures_core::Stream)) says
//! how many with [`RecvError::Lagged`]. Listeners are
//! independent of each other and of the engine, so subscribing or dropping a
//! listener from inside another listener cannot deadlock.
//!
//! Nothing here is per operation: events are per batch, per sweep, or
//! coalesced (the target is reported at most every 100 ms).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::broadcast;

/// An identifier of a dispatched batch, unique within one batcher.
///
/// The engine numbers batches from 0 in the order it dispatches them; a retry
/// goes out in a new batch with a new id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub(crate) u64);

impl BatchId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch-{}", self.0)
    }
}

/// Why every operation of a batch failed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchFailure {
    /// The handler returned an error for the whole batch.
    Handler,
    /// The handler panicked.
    Panicked,
    /// The handler returned the wrong number of outcomes.
    OutcomeCount,
}

/// What a capacity provider reports about its leases and its store.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CapacityEvent {
    /// A partition's lease was acquired.
    LeaseAcquired {
        /// The partition.
        partition: u32,
    },
    /// A partition's lease was renewed.
    LeaseRenewed {
        /// The partition.
        partition: u32,
    },
    /// A partition's lease was given back because the target dropped.
    LeaseReleased {
        /// The partition.
        partition: u32,
    },
    /// A partition's lease was lost (expired, or taken by another instance).
    LeaseLost {
        /// The partition.
        partition: u32,
    },
    /// The lease store could not be reached; the capacity fell back to its
    /// reserved part.
    StoreUnreachable {
        /// What went wrong.
        error: String,
    },
    /// The lease store can be reached again.
    StoreReachable,
}

/// Something the engine did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<K> {
    /// A batch went to the handler.
    BatchDispatched {
        /// The batch.
        batch: BatchId,
        /// Its key.
        key: Option<K>,
        /// Its number of operations.
        size: usize,
        /// Its total cost.
        cost: u64,
        /// The highest attempt number among its operations (1 for fresh ones).
        attempt: u32,
    },
    /// A batch's handler returned outcomes, one per operation.
    BatchCompleted {
        /// The batch.
        batch: BatchId,
        /// Its key.
        key: Option<K>,
        /// Operations that succeeded.
        completed: u64,
        /// Operations that failed for good.
        failed: u64,
        /// Operations put back for another attempt.
        retried: u64,
        /// How long the handler ran.
        duration: Duration,
    },
    /// All operations of a batch failed together.
    BatchFailed {
        /// The batch.
        batch: BatchId,
        /// Its key.
        key: Option<K>,
        /// Why.
        reason: BatchFailure,
        /// Its number of operations.
        size: usize,
        /// How long the handler ran.
        duration: Duration,
    },
    /// A batch ran past the maximum operation time and its handler was dropped.
    BatchTimedOut {
        /// The batch.
        batch: BatchId,
        /// Its key.
        key: Option<K>,
        /// Its number of operations.
        size: usize,
        /// The limit it exceeded.
        after: Duration,
    },
    /// Operations of a batch were put back for another attempt.
    BatchRetried {
        /// The batch.
        batch: BatchId,
        /// Its key.
        key: Option<K>,
        /// How many operations.
        operations: u64,
    },
    /// Operations were taken out because their tickets were dropped.
    OperationsCancelled {
        /// How many.
        count: u64,
    },
    /// The capacity's rate changed.
    CapacityChanged {
        /// The new rate in cost per second; `None` when unlimited.
        rate: Option<u64>,
    },
    /// The target changed (reported at most every 100 ms).
    TargetChanged {
        /// The cost of everything held, buffered or in flight.
        target: u64,
    },
    /// Dispatching was paused.
    Paused,
    /// Dispatching was resumed.
    Resumed,
    /// The buffer became full: submitters now wait or are refused.
    BufferFull {
        /// Operations held.
        operations: u64,
    },
    /// A shutdown started.
    ShutdownStarted {
        /// Its deadline, if it has one.
        deadline: Option<Duration>,
    },
    /// The shutdown finished; the engine has stopped.
    ShutdownFinished {
        /// Operations dispatched during the shutdown.
        flushed: u64,
        /// Operations completed during the shutdown.
        completed: u64,
        /// Operations failed during the shutdown.
        failed: u64,
        /// Operations abandoned at the deadline.
        abandoned: u64,
    },
    /// The audit recounted what is held and found the target exact.
    AuditPassed {
        /// The target.
        target: u64,
    },
    /// The audit found the target differing from the cost of what is held.
    AuditFailed {
        /// The target the engine kept.
        target: u64,
        /// The cost of what is buffered, retrying and in flight, recounted.
        recounted: u64,
    },
    /// The capacity provider reported on its leases or store.
    Capacity(CapacityEvent),
}

/// Why [`Events::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The listener fell behind and missed this many events; the next call
    /// returns the oldest event still held.
    #[error("the event listener fell behind and missed {0} event(s)")]
    Lagged(u64),
    /// The sender has stopped; no more events will come.
    #[error("the batcher has stopped; no more events will come")]
    Closed,
}

type Waiting<T> = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<T, broadcast::error::RecvError>,
                    broadcast::Receiver<T>,
                ),
            > + Send,
    >,
>;

/// A listener's stream of events: the engine's [`Event`]s from
/// [`Batcher::events`](crate::Batcher::events), or a processor's
/// [`BatchReport`](crate::processor::BatchReport)s from
/// [`Processor::events`](crate::processor::Processor::events).
///
/// Read it with [`recv`](Self::recv), [`try_recv`](Self::try_recv), or as a
/// [`Stream`] of `Result<T, RecvError>` that ends when the sender has stopped
/// (it never yields [`RecvError::Closed`]). Either way, a listener that fell
/// behind gets [`RecvError::Lagged`] with the number of events it missed, and
/// then the oldest event still held.
///
/// ```
/// use baler::{handler_fn, Batch, Batcher, Event, Outcome};
/// use futures_core::Stream;
/// use std::pin::Pin;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let batcher = Batcher::builder().build(handler_fn(|batch: Batch<u32>| async move {
///     Ok::<_, std::io::Error>(batch.done_all(()))
/// }))?;
/// let mut events = batcher.events();
/// batcher.submit(7).await?.await?;
/// let first = std::future::poll_fn(|cx| Pin::new(&mut events).poll_next(cx)).await;
/// assert!(matches!(first, Some(Ok(Event::BatchDispatched { size: 1, .. }))));
/// # Ok(())
/// # }
/// ```
pub struct Events<T> {
    // Held here between reads; moved into `waiting` while a read is pending,
    // so that a pending read keeps its place in the channel's wait list
    // across polls instead of re-registering (and missing a wake-up).
    rx: Option<broadcast::Receiver<T>>,
    waiting: Option<Waiting<T>>,
}

impl<T: Clone + Send + 'static> Events<T> {
    pub(crate) fn new(rx: broadcast::Receiver<T>) -> Self {
        Events {
            rx: Some(rx),
            waiting: None,
        }
    }

    /// Waits for the next event. Cancel safe: if the returned future is
    /// dropped, no event is lost; the next call picks up where it left off.
    ///
    /// # Errors
    ///
    /// [`RecvError::Lagged`] if events were missed, [`RecvError::Closed`]
    /// once the sender has stopped and every event was read.
    pub async fn recv(&mut self) -> Result<T, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is waiting: `Ok(None)` if none is.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Option<T>, RecvError> {
        if self.waiting.is_some() {
            // A read is pending and holds the receiver: finish it if it can
            // finish now, without registering anyone to be woken.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            return match self.poll_recv(&mut cx) {
                Poll::Ready(result) => result.map(Some),
                Poll::Pending => Ok(None),
            };
        }
        let Some(rx) = self.rx.as_mut() else {
            return Err(RecvError::Closed);
        };
        match rx.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(broadcast::error::TryRecvError::Empty) => Ok(None),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Err(RecvError::Closed),
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        if self.waiting.is_none() {
            let Some(mut rx) = self.rx.take() else {
                return Poll::Ready(Err(RecvError::Closed));
            };
            self.waiting = Some(Box::pin(async move {
                let result = rx.recv().await;
                (result, rx)
            }));
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(Err(RecvError::Closed));
        };
        let (result, rx) = std::task::ready!(waiting.as_mut().poll(cx));
        self.waiting = None;
        self.rx = Some(rx);
        Poll::Ready(result.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => RecvError::Lagged(n),
            broadcast::error::RecvError::Closed => RecvError::Closed,
        }))
    }
}

impl<T: Clone + Send + 'static> Stream for Events<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match std::task::ready!(self.get_mut().poll_recv(cx)) {
            Err(RecvError::Closed) => Poll::Ready(None),
            other => Poll::Ready(Some(other)),
        }
    }
}

impl<T> fmt::Debug for Events<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("pending", &self.rx.as_ref().map(broadcast::Receiver::len))
            .field("reading", &self.waiting.is_some())
            .finish()
    }
}

/// How a batch ended, for the engine's events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    Outcomes,
    Failed(BatchFailure),
    TimedOut(Duration),
    Abandoned,
}
