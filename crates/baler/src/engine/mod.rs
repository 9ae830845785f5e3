//! The engine: one task that owns every piece of a batcher's mutable state.
//!
//! Submits arrive through the [`Intake`](crate::intake::Intake) (a vector the
//! engine takes whole); cancellations, batch reports and commands as
//! [`Msg`]s on a channel, each command taking the intake first so that it
//! never overtakes an earlier submit. The engine is the only writer of the
//! buffer, the target, the in-flight table and the timers, so none of them
//! needs a lock and no data race is possible. Each turn of its loop takes
//! every submit and message waiting, then fires due timers, sweeps cancelled
//! operations, dispatches what is ready, and publishes a consistent
//! [`Stats`] snapshot.
//!
//! The engine's state is split into rooms, one idea each, each owning the
//! part of the state it keeps (this module owns the whole and the loop):
//!
//! | room | owns |
//! |---|---|
//! | [`message`] | what passes between handles and engine: [`Msg`], [`Shared`] |
//! | [`slots`] | the buffer: one queue per key, the key index |
//! | [`readiness`] | the ready queue and the linger/ticker timers |
//! | [`dispatch`] | the in-flight table and starting batches |
//! | [`resolution`] | batch reports, retries, cancellation, abandonment |
//! | [`flush`] | flush epochs and the shutdown in progress |
//! | [`observe`] | events, metrics, published stats, the audit |
//! | [`diagnosis`] | `diagnose()`'s findings (reads, owns nothing) |
//!
//! # Invariants
//!
//! Kept by the rooms named, checked by `debug_assert!`s where they can
//! break and by the tests after every step:
//!
//! - **Target** (`resolution`, `dispatch`): `target == buffered_cost +
//!   retrying_cost + in_flight_cost`. An operation adds its cost once, when
//!   accepted, and removes it once, when resolved or cancelled; every move
//!   between buffer, retry wait and flight keeps the sum.
//! - **Buffer permits** (owned by [`Admission`](crate::admission::Admission);
//!   `resolution` releases): every accepted operation holds one operation
//!   permit (and `cost` cost permits) from acceptance until it is resolved
//!   or cancelled, and gives them back exactly then. So when every permit is
//!   back and nothing is buffered, in flight or retrying, no operation is in
//!   transit either (`flush`: when a shutdown is finished).
//! - **In flight** (`dispatch`): a batch counts against the in-flight limits
//!   from dispatch until the engine has its report (a message from its task,
//!   or the value of its future when the engine polls it itself), which is
//!   after its handler's future was dropped.
//! - **Exactly once** (`resolution`): an operation's resolver is moved,
//!   never copied: from the intake to the buffer, to a batch's future (which
//!   sends on it or hands it back for a retry), or to a sweep that drops it
//!   as cancelled.

mod diagnosis;
mod dispatch;
mod flush;
pub(crate) mod message;
mod observe;
mod readiness;
mod resolution;
mod slots;

use std::fmt::Debug;
use std::future::{poll_fn, Future};
use std::hash::Hash;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::broadcast;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::capacity::Notice;
use crate::events::Event;
use crate::handler::ErasedHandler;
use crate::instruments::EngineMetrics;
use crate::queued::{Queued, Submitted};
use crate::run::RunShared;
use crate::settings::{Config, Dispatch};
use crate::stats::Stats;
use crate::time::{later, nanos_since};

use dispatch::Flights;
use flush::{Closing, Epochs};
pub(crate) use message::{Msg, Shared};
use observe::Observation;
use readiness::Ready;
use resolution::Retries;
use slots::KeySlots;

pub(crate) struct Engine<T, K, O, E> {
    cfg: Config,
    rx: UnboundedReceiver<Msg<T, K, O, E>>,
    /// The engine's own sender: its batches' tasks report on clones of it,
    /// and it keeps the channel open for as long as the engine runs.
    tx: UnboundedSender<Msg<T, K, O, E>>,
    shared: Arc<Shared<T, K, O, E>>,
    /// Submits taken from the intake, not yet accepted.
    incoming: Vec<Submitted<T, K, O, E>>,

    slots: KeySlots<T, K, O, E>,
    ready: Ready,
    flights: Flights<T, K, O, E>,
    retries: Retries<T, O, E>,
    epochs: Epochs,
    closing: Option<Closing<T, K>>,
    observe: Observation<K>,

    /// The counts every room keeps up to date; published once per turn.
    stats: Stats,
    next_id: u64,
    paused: bool,
    /// Whether a dropped ticket was reported since the last sweep.
    sweep: bool,
    /// The count of dropped tickets (`Shared::cancels_reported`) that the
    /// last sweep covered.
    cancels_swept: u64,
    /// The engine's start: the ticker's phase, and the zero of the
    /// nanosecond times operations carry.
    origin: Instant,
    /// Whether a test broke the target on purpose (the audit's own test).
    #[cfg(test)]
    skewed: bool,
}

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    pub(crate) fn new(
        cfg: Config,
        handler: Arc<dyn ErasedHandler<T, K, O, E>>,
        rx: UnboundedReceiver<Msg<T, K, O, E>>,
        tx: UnboundedSender<Msg<T, K, O, E>>,
        shared: Arc<Shared<T, K, O, E>>,
        events: broadcast::Sender<Event<K>>,
    ) -> Self {
        let notices = tx.clone();
        let target_slot = cfg.capacity.register(Arc::new(move |notice| {
            let _ = notices.send(Msg::Capacity(notice));
        }));
        let last_rate = cfg.capacity.rate();
        let origin = Instant::now();
        let metrics = EngineMetrics::new(&cfg.name);
        let run = Arc::new(RunShared {
            handler,
            abort: CancellationToken::new(),
            name: cfg.name.clone(),
            origin,
            max_attempts: cfg.max_attempts,
            max_time: cfg.max_operation_time,
            retry_timeouts: cfg.retry_timeouts,
            metrics: metrics.batch(),
        });
        Engine {
            rx,
            tx,
            shared,
            incoming: Vec::new(),
            slots: KeySlots::new(),
            ready: Ready::default(),
            flights: Flights::new(run, cfg.max_batch_cost),
            retries: Retries::new(),
            epochs: Epochs::new(),
            closing: None,
            observe: Observation::new(events, metrics, target_slot, last_rate),
            stats: Stats::default(),
            next_id: 0,
            paused: false,
            sweep: false,
            cancels_swept: 0,
            origin,
            #[cfg(test)]
            skewed: false,
            cfg,
        }
    }

    pub(crate) async fn run(mut self) {
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let mut ended = Vec::new();
            let first = poll_fn(|cx| {
                // Inline batches first: each registers this task's waker, so
                // every wake-up polls all of them (at most `max_in_flight`
                // futures), the price of not keeping a waker per batch.
                self.flights
                    .running
                    .retain_mut(|batch| match batch.as_mut().poll(cx) {
                        Poll::Ready(done) => {
                            ended.push(done);
                            false
                        }
                        Poll::Pending => true,
                    });
                let submitted = self
                    .shared
                    .admission
                    .poll_take(cx, &mut self.incoming)
                    .is_ready();
                if let Poll::Ready(msg) = self.rx.poll_recv(cx) {
                    return Poll::Ready(Some(msg));
                }
                if armed.is_some() && sleep.as_mut().poll(cx).is_ready() {
                    armed = None;
                    return Poll::Ready(None);
                }
                if ended.is_empty() && !submitted {
                    Poll::Pending
                } else {
                    Poll::Ready(None)
                }
            })
            .await;
            let now = Instant::now();
            self.refresh_cost_limit();
            // Submits taken by the poll come first: they were sent before
            // any command read after them.
            let mut taken = self.accept_incoming(now);
            match first {
                // The engine holds a sender itself, so the channel never closes.
                Some(None) => break,
                Some(Some(msg)) => {
                    taken += 1;
                    self.handle(msg, now);
                }
                None => {}
            }
            for done in ended {
                self.complete(done, now);
            }
            // Take everything else that is waiting before acting on it, so
            // that a burst of submits forms full batches.
            taken += self.take_waiting(now);
            taken += self.take_intake(now);
            if taken > 1 && self.cfg.dispatch == Dispatch::LoadAware {
                // Several callers are active: let the ones just woken send
                // theirs before a partial batch goes, so that batches fill
                // under load. A lone caller (one message a turn) never waits.
                tokio::task::yield_now().await;
                self.take_waiting(now);
                self.take_intake(now);
            }
            self.step(now);
            if self.finished() {
                self.finish();
                return;
            }
            let next = self.next_wakeup();
            if next != armed {
                if let Some(at) = next {
                    sleep.as_mut().reset(at);
                }
                armed = next;
            }
        }
    }

    /// Handles the messages already waiting, at most a bounded number so that
    /// timers and dispatch are not starved; returns how many it took.
    fn take_waiting(&mut self, now: Instant) -> usize {
        let mut taken = 0;
        while taken < 4096 {
            match self.rx.try_recv() {
                Ok(msg) => self.handle(msg, now),
                Err(_) => break,
            }
            taken += 1;
        }
        taken
    }

    /// Accepts the submits in the intake; returns how many.
    fn take_intake(&mut self, now: Instant) -> usize {
        if self.incoming.is_empty() {
            self.shared.admission.take(&mut self.incoming);
        }
        self.accept_incoming(now)
    }

    /// Accepts the submits already taken from the intake; returns how many.
    fn accept_incoming(&mut self, now: Instant) -> usize {
        let mut incoming = std::mem::take(&mut self.incoming);
        let n = incoming.len();
        if n > 0 {
            let now_ns = nanos_since(self.origin, now);
            self.accept_all(&mut incoming, now, now_ns);
        }
        // Keep the vector's capacity for the next swap with the intake.
        self.incoming = incoming;
        n
    }

    /// Accepts every submit of `incoming` (emptying it): each joins its
    /// key's queue, and the counts that only the turn's end reads (the
    /// stats, the epoch's outstanding operations) are added once for all of
    /// them. Submits accepted after the shutdown's deadline are abandoned at
    /// once: nothing more is dispatched.
    fn accept_all(&mut self, incoming: &mut Vec<Submitted<T, K, O, E>>, now: Instant, now_ns: u64) {
        let abandon = self.closing.as_ref().is_some_and(|c| c.deadline_passed);
        let n = incoming.len() as u64;
        let epoch = self.epochs.current();
        let mut cost_sum = 0u64;
        for op in incoming.drain(..) {
            let cost = u64::from(op.cost);
            cost_sum += cost;
            let id = self.next_id;
            self.next_id += 1;
            let slot = self.slots.slot_for(op.key);
            let s = &mut self.slots[slot];
            s.cost += cost;
            s.queue.push_back(Queued {
                payload: op.payload,
                resolver: op.resolver,
                id,
                cost: op.cost,
                attempts: 0,
                epoch,
                enqueued: now,
                submitted: now_ns,
            });
            if !abandon {
                self.pushed(slot, now);
            }
        }
        self.epochs.accepted(n);
        self.stats.submitted += n;
        self.stats.target += cost_sum;
        self.stats.buffered += n;
        self.stats.buffered_cost += cost_sum;
        if abandon {
            // The deadline emptied every queue, so what is buffered now is
            // what was just accepted.
            for slot in 0..self.slots.len() {
                if self.slots[slot].live {
                    self.abandon_buffered(slot);
                    self.slots.maybe_free(slot);
                }
            }
        }
    }

    fn refresh_cost_limit(&mut self) {
        self.flights.batch_cost_limit = match self.cfg.capacity.burst() {
            Some(burst) => self.cfg.max_batch_cost.min(burst.max(1)),
            None => self.cfg.max_batch_cost,
        };
    }

    fn handle(&mut self, msg: Msg<T, K, O, E>, now: Instant) {
        if !matches!(msg, Msg::Done(_)) {
            // A command must not overtake the submits that happened before
            // it was sent.
            self.take_intake(now);
        }
        match msg {
            Msg::Cancel => self.sweep = true,
            Msg::Done(done) => self.complete(*done, now),
            Msg::Pause => {
                if !self.paused {
                    self.paused = true;
                    self.emit(|| Event::Paused);
                }
            }
            Msg::Resume => {
                if self.paused {
                    self.paused = false;
                    self.emit(|| Event::Resumed);
                }
                self.evaluate_all(now);
            }
            Msg::Diagnose(reply) => {
                let diagnosis = self.diagnose(now);
                let _ = reply.send(diagnosis);
            }
            Msg::Capacity(Notice::Event(event)) => self.emit(|| Event::Capacity(event)),
            Msg::Capacity(Notice::RateChanged) => {
                // Look again now: the rate may have gone up from zero.
                self.flights.capacity_wait = None;
                self.evaluate_all(now);
            }
            #[cfg(test)]
            Msg::SkewTarget(delta) => {
                self.stats.target += delta;
                self.skewed = true;
            }
            Msg::Flush(reply) => self.flush(reply, now),
            Msg::Shutdown { deadline, reply } => self.begin_shutdown(deadline, Some(reply), now),
            Msg::Close => self.begin_shutdown(None, None, now),
        }
    }

    /// The turn's work once everything waiting was taken: timers, due
    /// retries, the shutdown's deadline, cancellations, dispatch, the
    /// audit, and what is published.
    fn step(&mut self, now: Instant) {
        self.fire_timers(now);
        self.return_due_retries(now);
        if let Some(closing) = &mut self.closing {
            if !closing.deadline_passed && closing.deadline.is_some_and(|d| d <= now) {
                closing.deadline_passed = true;
                self.abandon_all();
            }
        }
        if self.sweep {
            self.sweep = false;
            self.sweep_cancelled(now);
        }
        if self.flights.capacity_wait.is_some_and(|at| at <= now) {
            self.flights.capacity_wait = None;
        }
        self.dispatch_ready(now);
        if self.observe.audit_at.is_some_and(|at| at <= now) {
            self.observe.audit_at = None;
            self.audit();
        }
        if self.observe.audit_at.is_none() && self.stats.target > 0 {
            self.observe.audit_at = self.cfg.audit_interval.map(|every| later(now, every));
        }
        self.publish(now);
        self.epochs.settle();
        #[cfg(test)]
        let skewed = self.skewed;
        #[cfg(not(test))]
        let skewed = false;
        debug_assert!(
            skewed
                || self.stats.target
                    == self.stats.buffered_cost
                        + self.stats.retrying_cost
                        + self.stats.in_flight_cost,
            "the target is the cost of what is buffered, retrying and in flight: {:?}",
            self.stats
        );
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.ready.next_timer();
        let retry = self.retries.next_due();
        let deadline = self
            .closing
            .as_ref()
            .filter(|c| !c.deadline_passed)
            .and_then(|c| c.deadline);
        [
            timer,
            retry,
            deadline,
            self.flights.capacity_wait,
            self.observe.target_report_at,
            self.observe.audit_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl<T, K, O, E> Drop for Engine<T, K, O, E> {
    fn drop(&mut self) {
        // Stopped or dropped with its runtime: nothing more comes in, and
        // what did come in but was never taken resolves its tickets (with
        // `Error::Stopped`) as it is dropped here.
        drop(self.shared.admission.shut_intake());
        // Submitters still waiting for room (on another runtime, say) are
        // refused rather than left waiting for an engine that is gone.
        self.shared.admission.close();
        // Requests sent as the engine stopped may never be read: their
        // callers stop waiting now.
        self.shared.stopped.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A submit that reaches the engine after the shutdown's deadline (its
    /// permit taken before the shutdown closed the buffer, its push made
    /// after) is abandoned at once: its ticket resolves, the report lists
    /// it, and it leaves the buffer's count.
    #[tokio::test(start_paused = true)]
    async fn a_submit_taken_after_the_deadline_is_abandoned_at_once() {
        use crate::queued::Submitted;
        use crate::slot;

        let batcher = Batcher::builder()
            .build(handler_fn(|b: Batch<u32>| async move {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(b.done_all(()))
            }))
            .unwrap();
        let first = batcher.submit(1).await.unwrap();
        // A submitter that has its room but has not pushed yet.
        let room = batcher.shared().admission.try_reserve(1).unwrap();
        let stopping = batcher.clone();
        let shutdown =
            tokio::spawn(async move { stopping.shutdown(Duration::from_millis(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(first.await, Err(crate::Error::Abandoned)));

        let (resolver, mut receiver) = slot::channel();
        let pushed = batcher.shared().admission.admit(
            room,
            Submitted {
                payload: 2,
                key: None,
                cost: 1,
                resolver,
            },
        );
        assert!(pushed.is_ok(), "the engine waits for the held permit");
        let late = tokio::time::timeout(
            Duration::from_secs(1),
            std::future::poll_fn(|cx| receiver.poll_recv(cx)),
        )
        .await
        .expect("the late submit resolved");
        assert!(matches!(late, Ok(Err(crate::Error::Abandoned))));

        let report = shutdown.await.unwrap();
        let abandoned: Vec<u32> = report.abandoned.iter().map(|a| a.payload).collect();
        assert_eq!(abandoned, vec![1, 2]);
        let stats = batcher.stats();
        assert_eq!((stats.buffered, stats.pending()), (0, 0));
    }

    use crate::diagnose::{Code, Severity};
    use crate::events::Event;
    use crate::handler::{handler_fn, Batch};
    use crate::Batcher;

    /// The audit is only worth having if it notices a broken target. The
    /// engine keeps the target exact, so this test breaks it on purpose
    /// through a test-only message and checks that the audit says so.
    #[tokio::test(start_paused = true)]
    async fn an_audit_mismatch_between_the_target_and_what_is_held() {
        let b = Batcher::builder()
            .build(handler_fn(|batch: Batch<u32>| async move {
                Ok::<_, String>(batch.done_all(()))
            }))
            .unwrap();
        let mut events = b.events();
        b.pause();
        let _t = b.try_submit(1).unwrap();
        assert!(b.diagnose().await.find(Code::AuditMismatch).is_none());
        b.skew_target(5);
        let d = b.diagnose().await;
        let f = d.find(Code::AuditMismatch).expect("an audit finding");
        assert_eq!(f.severity, Severity::Error);
        assert_eq!(
            (f.number("target"), f.number("recounted")),
            (Some(6.0), Some(1.0))
        );
        let mut saw = (false, false);
        while let Ok(Some(e)) = events.try_recv() {
            match e {
                Event::AuditPassed { target: 1 } => saw.0 = true,
                Event::AuditFailed {
                    target: 6,
                    recounted: 1,
                } => saw.1 = true,
                _ => {}
            }
        }
        assert_eq!(saw, (true, true), "both audits were reported as events");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
