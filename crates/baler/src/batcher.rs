//! The `Batcher` handle: how callers talk to the engine.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::{broadcast, oneshot, AcquireError, Semaphore, SemaphorePermit, TryAcquireError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capacity::Capacity;
use crate::config::{Builder, Config};
use crate::diagnose::Diagnosis;
use crate::engine::{later, Engine, Msg};
use crate::error::{ConfigError, CostLimit, SubmitError};
use crate::events::{Event, Events};
use crate::handler::ErasedHandler;
use crate::intake::{Intake, Submitted};
use crate::operation::Operation;
use crate::shutdown::ShutdownReport;
use crate::slot::{self, CancelCount};
use crate::stats::Stats;
use crate::ticket::{cancel_shard, CancelShard, CancelSink, Ticket, CANCEL_SHARDS};

/// State shared by the handles, the tickets and the engine.
pub(crate) struct Shared<T, K, O, E> {
    tx: UnboundedSender<Msg<T, K, O, E>>,
    /// Where submits go.
    pub(crate) intake: Padded<Intake<Submitted<T, K, O, E>>>,
    /// One permit per operation held, from acceptance to resolution.
    pub(crate) ops: Padded<Semaphore>,
    /// One permit per unit of cost held, when the buffer's cost is bounded.
    pub(crate) cost: Option<Semaphore>,
    closed: AtomicBool,
    stats: Padded<Mutex<Stats>>,
    max_batch_cost: u64,
    buffer_cost: Option<u64>,
    /// The lowest of `max_batch_cost`, `buffer_cost` and the capacity's
    /// maximum burst if that never changes: a submit's quick check.
    fixed_cost_limit: u64,
    /// Whether `fixed_cost_limit` covers the capacity's maximum burst;
    /// otherwise a submit asks the capacity each time (reading it is a
    /// cache miss when another thread spends from the capacity).
    max_burst_is_fixed: bool,
    /// Where a ticket dropped unresolved reports it: one of several
    /// handles, by thread, so that the tickets of different threads do not
    /// all count references on one cache line.
    cancel_sinks: Box<[Arc<CancelShard>]>,
    capacity: Capacity,
    /// The engine owns the only strong sender, so listeners see the stream
    /// close when the engine stops, even while handles are alive.
    events: broadcast::WeakSender<Event<K>>,
    buffer_size: usize,
    /// Submitters waiting for room in the buffer.
    waiting: AtomicUsize,
    /// Tickets dropped before their operation resolved, ever.
    cancels: CancelCount,
    /// Whether the current full-buffer episode was reported.
    full_reported: AtomicBool,
    /// Cancelled when the engine is gone (its loop ended, or its task was
    /// dropped with the runtime): a request it never read stops waiting.
    pub(crate) stopped: CancellationToken,
    /// The counts of the finished shutdown, for a caller whose request the
    /// engine never read.
    pub(crate) final_report: Mutex<Option<ShutdownReport<T, K>>>,
}

impl<T, K, O, E> Shared<T, K, O, E> {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// How many tickets were dropped before their operation resolved.
    pub(crate) fn cancels_reported(&self) -> u64 {
        self.cancels.reported()
    }

    pub(crate) fn waiting_submitters(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The engine gave permits back: a later full buffer is a new episode.
    pub(crate) fn room_made(&self) {
        // Read first: most releases find nothing to reset, and a store
        // would take the line from the submitters that read it.
        if self.full_reported.load(Ordering::Relaxed) {
            self.full_reported.store(false, Ordering::Relaxed);
        }
    }

    /// Reports a full buffer once per episode.
    fn report_full(&self)
    where
        K: Clone,
    {
        if self.full_reported.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(events) = self.events.upgrade().filter(|e| e.receiver_count() > 0) {
            let held = self
                .buffer_size
                .saturating_sub(self.ops.available_permits());
            let _ = events.send(Event::BufferFull {
                operations: held as u64,
            });
        }
    }

    pub(crate) fn close_intake(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ops.close();
        if let Some(cost) = &self.cost {
            cost.close();
        }
    }

    pub(crate) fn publish(&self, stats: &Stats) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone_from(stats);
    }
}

impl<T: Send, K: Send, O: Send, E: Send + Sync> CancelSink for Shared<T, K, O, E> {
    fn cancelled(&self) {
        // Counted after the ticket closed its slot and before the engine
        // hears of it: the engine's dispatch asks operations whether their
        // ticket is gone only while the count is ahead of its last sweep
        // (see `CancelCount`).
        self.cancels.report();
        let _ = self.tx.send(Msg::Cancel);
    }
}

/// A field on cache lines of its own: the parts of [`Shared`] that threads
/// write all the time (the intake, the buffer's semaphore, the stats) must
/// not share a line with what every submit only reads.
#[repr(align(128))]
pub(crate) struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Sends `Close` when the last handle goes, so the engine drains and stops.
///
/// Aligned to two cache lines: callers often clone a `Batcher` per request,
/// and its reference count should not share a line with anything else.
#[repr(align(128))]
struct Handle<T, K, O, E> {
    shared: Arc<Shared<T, K, O, E>>,
}

impl<T, K, O, E> Drop for Handle<T, K, O, E> {
    fn drop(&mut self) {
        let _ = self.shared.tx.send(Msg::Close);
    }
}

/// A batching engine: operations go in, batches go to the handler, each
/// operation's own outcome comes back on its [`Ticket`].
///
/// `T` is the payload, `O` and `E` the handler's output and error, and `K` the
/// optional key (operations of different keys never share a batch). Cloning a
/// `Batcher` gives another handle to the same engine. When the last handle is
/// dropped the engine drains in the background, as a [`shutdown`](Self::shutdown)
/// without a deadline would, and every ticket still resolves.
///
/// ```
/// use baler::{handler_fn, Batch, Batcher};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let batcher = Batcher::builder().build(handler_fn(|batch: Batch<u64>| async move {
///     Ok::<_, std::io::Error>(batch.iter().map(|n| baler::Outcome::Done(n * 10)).collect())
/// }))?;
///
/// let ticket = batcher.submit(4).await?;
/// assert_eq!(ticket.await?, 40);
///
/// let report = batcher.shutdown(None).await;
/// assert!(report.is_clean());
/// # Ok(())
/// # }
/// ```
pub struct Batcher<T, O, E, K = ()> {
    handle: Arc<Handle<T, K, O, E>>,
}

impl<T, O, E, K> Clone for Batcher<T, O, E, K> {
    fn clone(&self) -> Self {
        Batcher {
            handle: self.handle.clone(),
        }
    }
}

impl<T, O, E, K> fmt::Debug for Batcher<T, O, E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batcher")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Batcher<(), (), (), ()> {
    /// Starts configuring a batcher.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<T, O, E, K> Batcher<T, O, E, K> {
    pub(crate) fn shared(&self) -> &Arc<Shared<T, K, O, E>> {
        &self.handle.shared
    }

    /// A consistent snapshot of what the batcher holds and has done.
    pub fn stats(&self) -> Stats {
        self.shared()
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The capacity this batcher spends.
    pub fn capacity(&self) -> &Capacity {
        &self.shared().capacity
    }

    /// Whether a shutdown has started (new operations are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared().closed.load(Ordering::SeqCst)
    }
}

impl<T, O, E, K> Batcher<T, O, E, K>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn start(
        cfg: Config,
        handler: Arc<dyn ErasedHandler<T, K, O, E>>,
    ) -> Result<Self, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(cfg.event_capacity);
        let fixed_burst = cfg.capacity.max_burst_is_fixed();
        let mut fixed_cost_limit = cfg
            .buffer_cost
            .map_or(cfg.max_batch_cost, |b| b.min(cfg.max_batch_cost));
        if fixed_burst {
            if let Some(burst) = cfg.capacity.max_burst() {
                fixed_cost_limit = fixed_cost_limit.min(burst);
            }
        }
        let shared = Arc::new_cyclic(|weak: &Weak<Shared<T, K, O, E>>| Shared {
            cancel_sinks: (0..CANCEL_SHARDS)
                .map(|_| {
                    let target: Weak<dyn CancelSink> = weak.clone();
                    Arc::new(CancelShard::new(target))
                })
                .collect(),
            max_burst_is_fixed: fixed_burst,
            tx: tx.clone(),
            intake: Padded(Intake::new()),
            ops: Padded(Semaphore::new(cfg.buffer_size)),
            cost: cfg
                .buffer_cost
                .map(|c| Semaphore::new(usize::try_from(c).unwrap_or(Semaphore::MAX_PERMITS))),
            closed: AtomicBool::new(false),
            stats: Padded(Mutex::new(Stats {
                capacity: cfg.capacity.rate(),
                ..Stats::default()
            })),
            max_batch_cost: cfg.max_batch_cost,
            buffer_cost: cfg.buffer_cost,
            fixed_cost_limit,
            capacity: cfg.capacity.clone(),
            events: events.downgrade(),
            buffer_size: cfg.buffer_size,
            waiting: AtomicUsize::new(0),
            full_reported: AtomicBool::new(false),
            cancels: CancelCount::new(),
            stopped: CancellationToken::new(),
            final_report: Mutex::new(None),
        });
        let engine = Engine::new(cfg, handler, rx, tx, shared.clone(), events);
        runtime.spawn(engine.run());
        Ok(Batcher {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Submits an operation, waiting for room in the buffer (first come, first
    /// served). Resolves to a [`Ticket`] that resolves with the operation's
    /// outcome.
    ///
    /// Dropping the returned [`Submit`] future while it waits gives up its
    /// place in line; the operation was never accepted.
    ///
    /// # Errors
    ///
    /// [`SubmitError::Shutdown`] once a shutdown has started, and
    /// [`SubmitError::TooExpensive`] for an operation that could never be
    /// dispatched. The payload comes back inside the error.
    pub fn submit(&self, op: impl Into<Operation<T, K>>) -> Submit<'_, T, O, E, K> {
        Submit::new(self, op.into(), None)
    }

    /// Submits an operation, waiting at most `wait` for room in the buffer
    /// (as Kafka's `max.block.ms`).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`SubmitError::Timeout`] if the buffer
    /// stayed full for `wait`.
    pub fn submit_timeout(
        &self,
        op: impl Into<Operation<T, K>>,
        wait: Duration,
    ) -> Submit<'_, T, O, E, K> {
        Submit::new(self, op.into(), Some(later(Instant::now(), wait)))
    }

    /// Submits an operation only if the buffer has room now.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`SubmitError::Full`] if the buffer
    /// is full.
    pub fn try_submit(
        &self,
        op: impl Into<Operation<T, K>>,
    ) -> Result<Ticket<O, E>, SubmitError<T>> {
        let op = self.check(op.into())?;
        match self.try_permits(op.cost) {
            Ok((permit, cost_permit)) => self.enqueue(op, permit, cost_permit),
            Err((_, e)) => Err(self.try_error(e, op.payload)),
        }
    }

    /// Takes the buffer's permits for an operation of `cost` if there is room
    /// now. When there is not, gives back the operation permit if it was
    /// taken (the cost was what was missing), and why.
    fn try_permits(
        &self,
        cost: u32,
    ) -> Result<Permits<'_>, (Option<SemaphorePermit<'_>>, TryAcquireError)> {
        let shared = self.shared();
        let permit = shared.ops.try_acquire().map_err(|e| (None, e))?;
        match &shared.cost {
            None => Ok((permit, None)),
            Some(sem) => match sem.try_acquire_many(cost) {
                Ok(cost_permit) => Ok((permit, Some(cost_permit))),
                Err(e) => Err((Some(permit), e)),
            },
        }
    }

    fn try_error(&self, e: TryAcquireError, payload: T) -> SubmitError<T> {
        match e {
            TryAcquireError::Closed => SubmitError::Shutdown(payload),
            TryAcquireError::NoPermits => {
                self.shared().report_full();
                SubmitError::Full(payload)
            }
        }
    }

    /// Refuses what can never be accepted, before waiting for room.
    fn check(&self, op: Operation<T, K>) -> Result<Operation<T, K>, SubmitError<T>> {
        let shared = self.shared();
        if shared.closed.load(Ordering::SeqCst) {
            return Err(SubmitError::Shutdown(op.payload));
        }
        let cost = u64::from(op.cost);
        if cost <= shared.fixed_cost_limit
            && (shared.max_burst_is_fixed
                || shared
                    .capacity
                    .max_burst()
                    .is_none_or(|burst| cost <= burst))
        {
            return Ok(op);
        }
        let limits = [
            (Some(shared.max_batch_cost), CostLimit::MaxBatchCost),
            (shared.buffer_cost, CostLimit::BufferCost),
            (shared.capacity.max_burst(), CostLimit::Capacity),
        ];
        for (limit, limited_by) in limits {
            if let Some(limit) = limit.filter(|&l| cost > l) {
                return Err(SubmitError::TooExpensive {
                    cost,
                    limit,
                    limited_by,
                    payload: op.payload,
                });
            }
        }
        Ok(op)
    }

    fn enqueue(
        &self,
        op: Operation<T, K>,
        permit: SemaphorePermit<'_>,
        cost_permit: Option<SemaphorePermit<'_>>,
    ) -> Result<Ticket<O, E>, SubmitError<T>> {
        let shared = self.shared();
        let (resolver, receiver) = slot::channel();
        let submitted = Submitted {
            payload: op.payload,
            key: op.key,
            cost: op.cost,
            resolver,
        };
        match shared.intake.push(submitted) {
            Ok(()) => {
                // From here the engine owns the permits and gives them back
                // when the operation resolves. (A permit forgotten is one
                // whose drop, which would give it back, never runs: the same
                // as its `forget`, but without a call into tokio per submit.)
                std::mem::forget(permit);
                std::mem::forget(cost_permit);
                let sink = shared.cancel_sinks[cancel_shard()].clone();
                Ok(Ticket::new(receiver, sink))
            }
            Err(submitted) => Err(SubmitError::Shutdown(submitted.payload)),
        }
    }

    /// Subscribes to the batcher's [`Event`]s. A listener that falls behind
    /// misses the oldest events and is told how many; it never slows the
    /// engine down.
    pub fn events(&self) -> Events<Event<K>> {
        match self.shared().events.upgrade() {
            Some(events) => Events::new(events.subscribe()),
            // The engine has stopped: a stream that is closed from the start.
            None => Events::new(broadcast::channel(1).1),
        }
    }

    /// Asks the engine why work is, or is not, moving: paused, no capacity,
    /// the capacity setting the pace, in-flight limit reached, a batch running
    /// too long, a full buffer, a retry storm, small batches, or an accounting
    /// mismatch. Runs an audit of the target as part of it. Returns an empty
    /// diagnosis once the engine has stopped. `docs/troubleshooting.md` shows
    /// each finding in its situation.
    pub async fn diagnose(&self) -> Diagnosis {
        let shared = self.shared();
        match request(&shared.tx, &shared.stopped, Msg::Diagnose).await {
            Some(diagnosis) => diagnosis,
            None => Diagnosis {
                findings: Vec::new(),
                stats: self.stats(),
            },
        }
    }

    #[cfg(test)]
    pub(crate) fn skew_target(&self, delta: u64) {
        let _ = self.shared().tx.send(Msg::SkewTarget(delta));
    }

    /// Stops dispatching. Operations are still accepted and buffered. A
    /// shutdown, or an explicit [`flush`](Self::flush), dispatches regardless.
    pub fn pause(&self) {
        let _ = self.shared().tx.send(Msg::Pause);
    }

    /// Resumes dispatching after [`pause`](Self::pause).
    pub fn resume(&self) {
        let _ = self.shared().tx.send(Msg::Resume);
    }

    /// Dispatches everything buffered now, regardless of linger and minimum
    /// batch size (and of a pause), and waits until every operation accepted
    /// before the call has resolved, retries included.
    pub async fn flush(&self) {
        let shared = self.shared();
        // Once the engine is gone, everything it accepted has resolved.
        let _ = request(&shared.tx, &shared.stopped, Msg::Flush).await;
    }

    /// Shuts the batcher down: new submits fail with
    /// [`SubmitError::Shutdown`], everything buffered is dispatched regardless
    /// of linger, minimum size and pause, and in-flight batches are awaited.
    ///
    /// With a `deadline`, whatever is unresolved when it passes (buffered,
    /// waiting to retry, or in flight, whose handlers are then dropped)
    /// resolves with [`Error::Abandoned`](crate::Error::Abandoned) and is
    /// returned in the report's `abandoned` list, payload and all.
    ///
    /// Calling it again (or from several handles) waits for the same
    /// shutdown; the earliest deadline applies.
    pub async fn shutdown(&self, deadline: impl Into<Option<Duration>>) -> ShutdownReport<T, K> {
        let deadline = deadline.into().map(|d| later(Instant::now(), d));
        let shared = self.shared();
        let reply = request(&shared.tx, &shared.stopped, |reply| Msg::Shutdown {
            deadline,
            reply,
        })
        .await;
        match reply {
            Some(report) => report,
            // The engine had stopped: the same counts as its last callers got.
            None => shared
                .final_report
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(ShutdownReport::clone_counts)
                .unwrap_or_default(),
        }
    }
}

/// Sends the engine a request and waits for its answer; `None` if the engine
/// stopped without answering.
///
/// Waiting for the reply's sender to be dropped is not enough: a message
/// sent just as the engine stops can be left unread in the channel, which
/// frees its messages only when every sender is gone, and the handles keep
/// one. So the wait also ends when the engine is gone.
async fn request<M, R>(
    tx: &UnboundedSender<M>,
    stopped: &CancellationToken,
    msg: impl FnOnce(oneshot::Sender<R>) -> M,
) -> Option<R> {
    let (reply, mut answer) = oneshot::channel();
    tx.send(msg(reply)).ok()?;
    tokio::select! {
        biased;
        answer = &mut answer => answer.ok(),
        () = stopped.cancelled() => answer.try_recv().ok(),
    }
}

/// The future of [`Batcher::submit`] and [`Batcher::submit_timeout`]:
/// resolves to the operation's [`Ticket`] once the buffer has room for it.
///
/// When the buffer has room, the first poll accepts the operation and is
/// ready at once. Otherwise it waits in line, first come first served; only
/// then does it allocate the state of that wait. Dropping it while it waits
/// gives up its place in line, and the operation was never accepted.
///
/// ```
/// # use baler::{handler_fn, Batch, Batcher};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let batcher = Batcher::builder().build(handler_fn(|b: Batch<u32>| async move {
/// #     Ok::<_, std::io::Error>(b.done_all(()))
/// # }))?;
/// let submit: baler::Submit<'_, u32, (), std::io::Error> = batcher.submit(7);
/// let ticket = submit.await?;
/// ticket.await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "an operation is only submitted when its Submit future is awaited"]
pub struct Submit<'a, T, O, E, K = ()> {
    batcher: &'a Batcher<T, O, E, K>,
    deadline: Option<Instant>,
    state: SubmitState<'a, T, K>,
}

enum SubmitState<'a, T, K> {
    /// Not polled yet.
    Start(Operation<T, K>),
    /// The buffer was full at the first poll: waiting for room.
    Waiting(Operation<T, K>, WaitForRoom<'a>),
    /// Accepted or refused.
    Done,
}

/// The buffer permits an accepted operation holds.
type Permits<'a> = (SemaphorePermit<'a>, Option<SemaphorePermit<'a>>);

type WaitForRoom<'a> = Pin<Box<dyn Future<Output = Result<Permits<'a>, WaitError>> + Send + 'a>>;

// The operation is never pinned: it is moved out whole when it is accepted.
impl<T, O, E, K> Unpin for Submit<'_, T, O, E, K> {}

impl<'a, T, O, E, K> Submit<'a, T, O, E, K> {
    fn new(
        batcher: &'a Batcher<T, O, E, K>,
        op: Operation<T, K>,
        deadline: Option<Instant>,
    ) -> Self {
        Submit {
            batcher,
            deadline,
            state: SubmitState::Start(op),
        }
    }
}

impl<T, O, E, K> fmt::Debug for Submit<'_, T, O, E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("waiting", &matches!(self.state, SubmitState::Waiting(..)))
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<'a, T, O, E, K> Future for Submit<'a, T, O, E, K>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    type Output = Result<Ticket<O, E>, SubmitError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let batcher = this.batcher;
        let (op, mut wait) = match std::mem::replace(&mut this.state, SubmitState::Done) {
            SubmitState::Start(op) => {
                let op = match batcher.check(op) {
                    Ok(op) => op,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let held = match batcher.try_permits(op.cost) {
                    Ok((permit, cost)) => return Poll::Ready(batcher.enqueue(op, permit, cost)),
                    Err((_, TryAcquireError::Closed)) => {
                        return Poll::Ready(Err(SubmitError::Shutdown(op.payload)))
                    }
                    Err((held, TryAcquireError::NoPermits)) => held,
                };
                let shared: &'a Shared<T, K, O, E> = batcher.shared();
                if held.is_none() {
                    shared.report_full();
                }
                let wait: WaitForRoom<'a> =
                    Box::pin(wait_for_room(shared, held, op.cost, this.deadline));
                (op, wait)
            }
            SubmitState::Waiting(op, wait) => (op, wait),
            SubmitState::Done => panic!("a baler Submit future was polled after it completed"),
        };
        match wait.as_mut().poll(cx) {
            Poll::Pending => {
                this.state = SubmitState::Waiting(op, wait);
                Poll::Pending
            }
            Poll::Ready(Ok((permit, cost))) => Poll::Ready(batcher.enqueue(op, permit, cost)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into_error(op.payload))),
        }
    }
}

fn wait_for_room<'a, T, K, O, E>(
    shared: &'a Shared<T, K, O, E>,
    permit: Option<SemaphorePermit<'a>>,
    cost: u32,
    deadline: Option<Instant>,
) -> impl Future<Output = Result<Permits<'a>, WaitError>> + Send + 'a {
    wait_for_permits(
        &shared.ops,
        shared.cost.as_ref(),
        &shared.waiting,
        permit,
        cost,
        deadline,
    )
}

async fn wait_for_permits<'a>(
    ops: &'a Semaphore,
    cost_sem: Option<&'a Semaphore>,
    waiting: &'a AtomicUsize,
    permit: Option<SemaphorePermit<'a>>,
    cost: u32,
    deadline: Option<Instant>,
) -> Result<Permits<'a>, WaitError> {
    let permit = match permit {
        Some(p) => p,
        None => {
            let _waiting = Waiting::new(waiting);
            wait(ops.acquire(), deadline).await?
        }
    };
    let cost_permit = match cost_sem {
        Some(sem) => {
            let _waiting = Waiting::new(waiting);
            Some(wait(sem.acquire_many(cost), deadline).await?)
        }
        None => None,
    };
    Ok((permit, cost_permit))
}

enum WaitError {
    Closed,
    Timeout,
}

impl WaitError {
    fn into_error<T>(self, payload: T) -> SubmitError<T> {
        match self {
            WaitError::Closed => SubmitError::Shutdown(payload),
            WaitError::Timeout => SubmitError::Timeout(payload),
        }
    }
}

async fn wait<P>(
    acquire: impl std::future::Future<Output = Result<P, AcquireError>>,
    deadline: Option<Instant>,
) -> Result<P, WaitError> {
    match deadline {
        None => acquire.await.map_err(|_| WaitError::Closed),
        Some(deadline) => match tokio::time::timeout_at(deadline, acquire).await {
            Ok(result) => result.map_err(|_| WaitError::Closed),
            Err(_) => Err(WaitError::Timeout),
        },
    }
}

/// Counts a submitter while it waits for room.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's side of a channel whose messages are reply senders.
    type Requests = mpsc::UnboundedReceiver<oneshot::Sender<u32>>;

    /// A message the engine never reads (sent as its channel closed, left
    /// in the channel while a handle keeps a sender) does not hold its
    /// caller once the engine is gone.
    #[tokio::test(start_paused = true)]
    async fn a_request_left_unread_ends_when_the_engine_is_gone() {
        let (tx, unread): (_, Requests) = mpsc::unbounded_channel();
        let stopped = CancellationToken::new();
        let waiting = tokio::spawn({
            let (tx, stopped) = (tx.clone(), stopped.clone());
            async move { request(&tx, &stopped, |reply| reply).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nobody answered yet");
        stopped.cancel();
        let answer = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the request ended when the engine went")
            .expect("the request's task");
        assert_eq!(answer, None);
        drop(unread);
    }

    /// An answer the engine gave before it went is the caller's, whichever
    /// of the two the caller sees first.
    #[tokio::test]
    async fn an_answer_given_before_the_engine_went_is_kept() {
        let (tx, mut requests): (_, Requests) = mpsc::unbounded_channel();
        let stopped = CancellationToken::new();
        let engine = tokio::spawn({
            let stopped = stopped.clone();
            async move {
                let reply = requests.recv().await.expect("a request");
                reply.send(7).expect("the caller waits");
                stopped.cancel();
            }
        });
        assert_eq!(request(&tx, &stopped, |reply| reply).await, Some(7));
        engine.await.expect("the engine's task");
    }
}
