//! The `Batcher` handle: how callers talk to the engine.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::{broadcast, oneshot};
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, NoRoom, Padded, Place, Reserved};
use crate::capacity::Capacity;
use crate::config::Builder;
use crate::diagnose::Diagnosis;
use crate::engine::{Engine, Msg, Shared};
use crate::error::{ConfigError, CostLimit, SubmitError};
use crate::events::{Event, Events};
use crate::handler::ErasedHandler;
use crate::operation::Operation;
use crate::queued::Submitted;
use crate::settings::Config;
use crate::shutdown::ShutdownReport;
use crate::slot::{self, CancelCount};
use crate::stats::Stats;
use crate::ticket::{cancel_shard, CancelShard, CancelSink, Ticket, CANCEL_SHARDS};
use crate::time::later;

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
        self.shared().admission.is_closed()
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
            admission: Admission::new(cfg.buffer_size, cfg.buffer_cost),
            stats: Padded(Mutex::new(Stats {
                capacity: cfg.capacity.rate(),
                ..Stats::default()
            })),
            max_batch_cost: cfg.max_batch_cost,
            buffer_cost: cfg.buffer_cost,
            fixed_cost_limit,
            capacity: cfg.capacity.clone(),
            events: events.downgrade(),
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
        match self.shared().admission.try_reserve(op.cost) {
            Ok(room) => self.enqueue(op, room),
            Err(NoRoom::Full) => {
                self.shared().report_full();
                Err(SubmitError::Full(op.payload))
            }
            Err(_) => Err(SubmitError::Shutdown(op.payload)),
        }
    }

    /// Refuses what can never be accepted, before waiting for room.
    fn check(&self, op: Operation<T, K>) -> Result<Operation<T, K>, SubmitError<T>> {
        let shared = self.shared();
        if shared.admission.is_closed() {
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
        room: Reserved<'_>,
    ) -> Result<Ticket<O, E>, SubmitError<T>> {
        let shared = self.shared();
        let (resolver, receiver) = slot::channel();
        let submitted = Submitted {
            payload: op.payload,
            key: op.key,
            cost: op.cost,
            resolver,
        };
        match shared.admission.admit(room, submitted) {
            Ok(()) => {
                let sink = shared.cancel_sinks[cancel_shard()].clone();
                Ok(Ticket::new(receiver, sink))
            }
            Err(submitted) => Err(SubmitError::Shutdown(submitted.payload)),
        }
    }

    /// Subscribes to the batcher's [`Event`](crate::Event)s. A listener that falls behind
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
/// ready at once. Otherwise it waits in line, first come first served,
/// holding its operation and its place in line and little else (with
/// [`submit_timeout`](Batcher::submit_timeout), a timer). Dropping it while
/// it waits gives up its place in line, and the operation was never accepted.
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
    state: SubmitState<T, K>,
}

/// Where a submit is. A waiting one holds its operation and its place in
/// line (an index: the line's node is the admission's), and a timer only if
/// it has a deadline: no future of its own, nothing pinned.
enum SubmitState<T, K> {
    /// Not polled yet, with the deadline if any.
    Start(Operation<T, K>, Option<Instant>),
    /// The buffer was full at the first poll: waiting for room.
    Waiting(Operation<T, K>, Place, Option<Pin<Box<Sleep>>>),
    /// Accepted or refused.
    Done,
}

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
            state: SubmitState::Start(op, deadline),
        }
    }
}

impl<T, O, E, K> Drop for Submit<'_, T, O, E, K> {
    fn drop(&mut self) {
        if let SubmitState::Waiting(_, place, _) =
            std::mem::replace(&mut self.state, SubmitState::Done)
        {
            // Gives up the place in line; room granted to it goes on.
            self.batcher.shared().admission.leave(place);
        }
    }
}

impl<T, O, E, K> fmt::Debug for Submit<'_, T, O, E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let deadline = match &self.state {
            SubmitState::Start(_, deadline) => *deadline,
            SubmitState::Waiting(_, _, sleep) => sleep.as_ref().map(|s| s.deadline()),
            SubmitState::Done => None,
        };
        f.debug_struct("Submit")
            .field("waiting", &matches!(self.state, SubmitState::Waiting(..)))
            .field("deadline", &deadline)
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
        let admission = &batcher.shared().admission;
        let (op, place, mut sleep) = match std::mem::replace(&mut this.state, SubmitState::Done) {
            SubmitState::Start(op, deadline) => {
                let op = match batcher.check(op) {
                    Ok(op) => op,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                match admission.try_reserve(op.cost) {
                    Ok(room) => return Poll::Ready(batcher.enqueue(op, room)),
                    Err(NoRoom::Full) => batcher.shared().report_full(),
                    Err(NoRoom::Closed) => {
                        return Poll::Ready(Err(SubmitError::Shutdown(op.payload)))
                    }
                }
                match admission.join(op.cost, cx) {
                    Ok(place) => (op, place, deadline.map(|at| Box::pin(sleep_until(at)))),
                    Err(answer) => return Poll::Ready(accepted(batcher, op, answer)),
                }
            }
            SubmitState::Waiting(op, place, sleep) => {
                if let Poll::Ready(answer) = admission.poll_place(&place, op.cost, cx) {
                    return Poll::Ready(accepted(batcher, op, answer));
                }
                (op, place, sleep)
            }
            SubmitState::Done => panic!("a baler Submit future was polled after it completed"),
        };
        if let Some(timer) = &mut sleep {
            if timer.as_mut().poll(cx).is_ready() {
                admission.leave(place);
                return Poll::Ready(Err(SubmitError::Timeout(op.payload)));
            }
        }
        this.state = SubmitState::Waiting(op, place, sleep);
        Poll::Pending
    }
}

/// The end of a wait for room: the operation accepted with it, or refused.
fn accepted<T, O, E, K>(
    batcher: &Batcher<T, O, E, K>,
    op: Operation<T, K>,
    answer: Result<Reserved<'_>, NoRoom>,
) -> Result<Ticket<O, E>, SubmitError<T>>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    match answer {
        Ok(room) => batcher.enqueue(op, room),
        Err(_) => Err(SubmitError::Shutdown(op.payload)),
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

    /// A submitter waiting for room holds its `Submit` (this size, inside
    /// its task) and one 32-byte node in the buffer's line, and nothing
    /// else; tokio's own bounded `send` future is larger than both together.
    /// A guard against the waiting state growing back.
    #[test]
    fn a_waiting_submit_is_small() {
        type Waiting = Submit<'static, u64, (), std::io::Error>;
        let submit = std::mem::size_of::<Waiting>();
        assert!(submit <= 48, "a Submit of a u64 takes {submit} bytes");
        let (tx, _rx) = mpsc::channel::<u64>(1);
        let send = std::mem::size_of_val(&tx.send(1));
        assert!(
            submit + 32 <= send,
            "a waiting submit ({submit} + 32 bytes) is larger than tokio's send ({send})"
        );
    }

    /// A batcher whose handler takes 10 ms per unit of a batch's cost, one
    /// operation per batch, so that operations resolve in order of cost.
    fn by_cost(buffer_cost: u64) -> Batcher<u32, u32, std::io::Error> {
        Batcher::builder()
            .max_batch_size(1)
            .max_in_flight(4)
            .buffer_cost(buffer_cost)
            .build(crate::handler::handler_fn(
                |b: crate::handler::Batch<u32>| async move {
                    tokio::time::sleep(Duration::from_millis(10 * b.cost())).await;
                    Ok::<_, std::io::Error>(b.iter().map(|&n| crate::Outcome::Done(n)).collect())
                },
            ))
            .expect("a valid batcher")
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The head of the line needs more cost than is free: a cheaper
    /// operation behind it waits its turn even though it would fit, and
    /// both get in when the head's room comes.
    #[tokio::test(start_paused = true)]
    async fn a_cheap_submit_does_not_pass_an_expensive_one_waiting_ahead() {
        let b = by_cost(4);
        let first = b
            .submit(crate::Operation::new(30).with_cost(3))
            .await
            .unwrap();
        let second = b
            .submit(crate::Operation::new(10).with_cost(1))
            .await
            .unwrap();
        let admitted = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (n, cost) in [(31, 3), (11, 1)] {
            let (b, admitted) = (b.clone(), admitted.clone());
            waiters.push(tokio::spawn(async move {
                let ticket = b
                    .submit(crate::Operation::new(n).with_cost(cost))
                    .await
                    .unwrap();
                admitted.lock().unwrap().push(n);
                ticket.await.unwrap()
            }));
            settle().await;
        }
        assert_eq!(b.shared().admission.waiting(), 2);
        // The cost-1 operation resolves first and frees 1: enough for the
        // cheap waiter, not for the head of the line.
        assert_eq!(second.await.unwrap(), 10);
        settle().await;
        assert!(
            admitted.lock().unwrap().is_empty(),
            "no one passes the head"
        );
        assert_eq!(first.await.unwrap(), 30);
        settle().await;
        assert_eq!(*admitted.lock().unwrap(), vec![31, 11]);
        assert_eq!(b.shared().admission.waiting(), 0);
        for w in waiters {
            w.await.unwrap();
        }
    }

    /// A submit whose deadline passes leaves the line (it is refused with
    /// its payload) and the room it would have had goes to the next.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_that_passes_leaves_the_line_to_the_next() {
        let b = by_cost(1);
        let first = b.submit(1).await.unwrap();
        let (b2, b3) = (b.clone(), b.clone());
        let timed =
            tokio::spawn(async move { b2.submit_timeout(2, Duration::from_millis(5)).await });
        settle().await;
        let patient = tokio::spawn(async move { b3.submit(3).await.unwrap().await.unwrap() });
        settle().await;
        assert_eq!(b.shared().admission.waiting(), 2);
        match timed.await.unwrap() {
            Err(SubmitError::Timeout(2)) => {}
            other => panic!("expected a timeout with the payload, got {other:?}"),
        }
        assert_eq!(b.shared().admission.waiting(), 1);
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(patient.await.unwrap(), 3);
        assert_eq!(
            b.stats().submitted,
            2,
            "the timed-out submit was never accepted"
        );
    }

    /// A submitter waiting for room, on a runtime of its own, on a batcher
    /// whose engine goes with its runtime, is refused instead of waiting for
    /// an engine that is gone.
    #[test]
    fn a_waiting_submitter_is_refused_when_the_engine_goes_with_its_runtime() {
        let engine_rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let b: Batcher<u32, (), std::io::Error> = engine_rt
            .block_on(async {
                Batcher::builder().max_batch_size(1).buffer_size(1).build(
                    crate::handler::handler_fn(|b: crate::handler::Batch<u32>| async move {
                        std::future::pending::<()>().await;
                        Ok::<_, std::io::Error>(b.done_all(()))
                    }),
                )
            })
            .expect("a valid batcher");
        let _held = b.try_submit(1).expect("room for one");
        let waiter = {
            let b = b.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move { b.submit(2).await.map(|_| ()) })
            })
        };
        let mut spins = 0u64;
        while b.shared().admission.waiting() == 0 {
            spins += 1;
            assert!(spins < 100_000_000, "the submitter never joined the line");
            std::thread::yield_now();
        }
        drop(engine_rt);
        match waiter.join().expect("the submitter's thread") {
            Err(SubmitError::Shutdown(2)) => {}
            other => panic!("expected a refusal with the payload, got {other:?}"),
        }
    }
}
