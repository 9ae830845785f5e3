//! The engine: one task that owns every piece of a batcher's mutable state.
//!
//! Submits arrive through the [`Intake`](crate::intake::Intake) (a vector the
//! engine takes whole); cancellations, batch reports and commands as messages
//! on a channel, each command taking the intake first so that it never
//! overtakes an earlier submit. The engine is the only writer of the buffer,
//! the target, the in-flight table and the timers, so none of them needs a
//! lock and no data race is possible. Each turn of its loop takes every
//! submit and message waiting, then fires due timers, sweeps cancelled
//! operations, dispatches what is ready, and publishes a consistent [`Stats`]
//! snapshot.
//!
//! # Invariants
//!
//! Kept by this file and checked by the tests after every step:
//!
//! - **Target**: `target == buffered_cost + retrying_cost + in_flight_cost`.
//!   An operation adds its cost once, when accepted, and removes it once, when
//!   resolved or cancelled; every move between buffer, retry wait and flight
//!   keeps the sum.
//! - **Buffer permits**: every accepted operation holds one permit of the
//!   operations semaphore (and `cost` permits of the cost semaphore) from
//!   acceptance until it is resolved or cancelled, and gives them back exactly
//!   then. So when the semaphore has all its permits and nothing is buffered,
//!   in flight or retrying, no operation is in transit either.
//! - **In flight**: a batch counts against the in-flight limits from dispatch
//!   until the engine has its report (a message from its task, or the value
//!   of its future when the engine polls it itself), which is after its
//!   handler's future was dropped.
//! - **Exactly once**: an operation's resolver is moved, never copied: from
//!   the intake to the buffer, to a batch's future (which sends on
//!   it or hands it back for a retry), or to a sweep that drops it as
//!   cancelled.

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt::Debug;
use std::future::{poll_fn, Future};
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batcher::Shared;
use crate::capacity::{Notice, Spend, TargetSlot};
use crate::config::{Config, Dispatch, Execution};
use crate::diagnose::{Code, Diagnosis, Finding, Severity};
use crate::error::Error;
use crate::events::{BatchId, Event};
use crate::handler::{BatchData, ErasedHandler, OpInfo};
use crate::instruments::EngineMetrics;
use crate::intake::Submitted;
use crate::operation::OpId;
use crate::run::{run_batch, Done, Ended, RunCtx, RunShared, Tracker};
use crate::shutdown::{Abandoned, ShutdownReport};
use crate::slot::Resolver;
use crate::stats::Stats;

/// What a ticket resolves with.
pub(crate) type Res<O, E> = Result<O, Error<E>>;

/// A batch's future, polled by the engine itself with [`Execution::Inline`].
type BatchFuture<T, O, E> = Pin<Box<dyn Future<Output = Done<T, O, E>> + Send>>;

/// Operations waiting out a retry backoff, by due time, with their key slot.
type RetryWait<T, O, E> = BTreeMap<(Instant, u64), (usize, Queued<T, O, E>)>;

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

/// How long a batch may run with no maximum operation time before
/// `diagnose()` points it out.
pub(crate) const LONG_RUNNING: Duration = Duration::from_secs(30);

/// The least time between two `TargetChanged` events.
const TARGET_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// How far back `diagnose()` looks for a retry storm or small batches, in
/// seconds.
const RETRY_WINDOW_SECS: u64 = 10;

/// The least number of recent batches for a small-batches finding.
const SMALL_BATCHES_MIN: u64 = 20;

/// What was dispatched and retried in one second, for `diagnose()`.
#[derive(Debug, Default, Clone, Copy)]
struct WindowSecond {
    second: u64,
    dispatched: u64,
    retried: u64,
    batches: u64,
    cost: u64,
}

impl WindowSecond {
    fn add(&mut self, other: &WindowSecond) {
        self.dispatched += other.dispatched;
        self.retried += other.retried;
        self.batches += other.batches;
        self.cost += other.cost;
    }
}

/// Messages to the engine, but for submits, which come through the
/// [`Intake`](crate::intake::Intake).
pub(crate) enum Msg<T, K, O, E> {
    /// A ticket was dropped unresolved: sweep the buffer.
    Cancel,
    /// Boxed, so that every message stays small.
    Done(Box<Done<T, O, E>>),
    Pause,
    Resume,
    Flush(oneshot::Sender<()>),
    Shutdown {
        deadline: Option<Instant>,
        reply: oneshot::Sender<ShutdownReport<T, K>>,
    },
    /// The last `Batcher` handle was dropped.
    Close,
    Diagnose(oneshot::Sender<Diagnosis>),
    /// The capacity changed its rate or reports a lease event.
    Capacity(Notice),
    /// Test-only fault injection: skews the target to prove the audit sees it.
    #[cfg(test)]
    SkewTarget(u64),
}

/// The operations of one key.
struct KeySlot<T, K, O, E> {
    key: Option<K>,
    generation: u32,
    queue: VecDeque<Queued<T, O, E>>,
    /// Total cost of `queue`.
    cost: u64,
    in_flight: usize,
    /// Operations of this key waiting out a retry backoff.
    retrying: usize,
    /// Whether the slot is in the ready queue.
    listed: bool,
    /// The deadline of its live timer entry.
    armed: Option<Instant>,
    /// Operations at the front to dispatch regardless of linger: a flush.
    drain: usize,
    live: bool,
}

impl<T, K, O, E> KeySlot<T, K, O, E> {
    fn new(key: Option<K>) -> Self {
        KeySlot {
            key,
            generation: 0,
            queue: VecDeque::new(),
            cost: 0,
            in_flight: 0,
            retrying: 0,
            listed: false,
            armed: None,
            drain: 0,
            live: true,
        }
    }
}

/// Counts of operations per flush epoch, for one in-flight batch.
#[derive(Default)]
struct EpochCounts(Vec<(u64, u32)>);

impl EpochCounts {
    #[inline]
    fn add(&mut self, epoch: u64) {
        match self.0.last_mut() {
            Some((e, n)) if *e == epoch => *n += 1,
            _ => match self.0.iter_mut().find(|(e, _)| *e == epoch) {
                Some((_, n)) => *n += 1,
                None => self.0.push((epoch, 1)),
            },
        }
    }
}

struct InFlight {
    id: BatchId,
    slot: usize,
    ops: u64,
    cost: u64,
    epochs: EpochCounts,
    started: Instant,
}

/// A shutdown in progress.
struct Closing<T, K> {
    deadline: Option<Instant>,
    deadline_passed: bool,
    waiters: Vec<oneshot::Sender<ShutdownReport<T, K>>>,
    report: ShutdownReport<T, K>,
}

enum Readiness {
    Ready,
    At(Instant),
    Hold,
}

pub(crate) struct Engine<T, K, O, E> {
    cfg: Config,
    /// What every batch's task shares: the handler, the abort, the settings.
    run: Arc<RunShared<T, K, O, E>>,
    rx: UnboundedReceiver<Msg<T, K, O, E>>,
    tx: UnboundedSender<Msg<T, K, O, E>>,
    shared: Arc<Shared<T, K, O, E>>,

    slots: Vec<KeySlot<T, K, O, E>>,
    free_slots: Vec<usize>,
    index: HashMap<K, usize>,
    ready: VecDeque<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    retries: RetryWait<T, O, E>,
    in_flight: Vec<Option<InFlight>>,
    in_flight_free: Vec<usize>,
    capacity_wait: Option<Instant>,
    batch_cost_limit: u64,

    /// Outstanding operations per flush epoch, starting at `epoch_base`.
    epochs: VecDeque<u64>,
    epoch_base: u64,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,

    stats: Stats,
    next_id: u64,
    retry_seq: u64,
    paused: bool,
    sweep: bool,
    closing: Option<Closing<T, K>>,
    ticker_origin: Instant,
    target_slot: TargetSlot,
    rng: u64,

    events: broadcast::Sender<Event<K>>,
    /// The count of dropped tickets (`Shared::cancels_reported`) that the
    /// last sweep covered.
    cancels_swept: u64,
    /// Submits taken from the intake, not yet accepted.
    incoming: Vec<Submitted<T, K, O, E>>,
    /// The batches the engine polls itself, with [`Execution::Inline`].
    running: Vec<BatchFuture<T, O, E>>,
    next_batch: BatchId,
    /// The capacity rate last reported.
    last_rate: Option<u64>,
    /// The target last reported, and when.
    target_reported: (u64, Option<Instant>),
    /// When a coalesced `TargetChanged` is due.
    target_report_at: Option<Instant>,
    /// When the next periodic audit is due.
    audit_at: Option<Instant>,
    /// The last audit's mismatch, if it found one: (target, recounted).
    audit_mismatch: Option<(u64, u64)>,
    /// Per-second counts of dispatched and retried operations.
    retry_window: VecDeque<WindowSecond>,
    /// Cancellations not yet reported in an event.
    cancelled_unreported: u64,
    /// The metrics handles (empty without the `metrics` feature).
    metrics: EngineMetrics,
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
        let ticker_origin = Instant::now();
        let metrics = EngineMetrics::new(&cfg.name);
        let run = Arc::new(RunShared {
            handler,
            abort: CancellationToken::new(),
            name: cfg.name.clone(),
            origin: ticker_origin,
            max_attempts: cfg.max_attempts,
            max_time: cfg.max_operation_time,
            retry_timeouts: cfg.retry_timeouts,
            metrics: metrics.batch(),
        });
        Engine {
            run,
            rx,
            tx,
            shared,
            // Slot 0 is the queue of operations without a key; it is never freed.
            slots: vec![KeySlot::new(None)],
            free_slots: Vec::new(),
            index: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            retries: BTreeMap::new(),
            in_flight: Vec::new(),
            in_flight_free: Vec::new(),
            capacity_wait: None,
            batch_cost_limit: cfg.max_batch_cost,
            epochs: VecDeque::from([0]),
            epoch_base: 0,
            flush_waiters: Vec::new(),
            stats: Stats::default(),
            next_id: 0,
            retry_seq: 0,
            paused: false,
            sweep: false,
            closing: None,
            ticker_origin,
            target_slot,
            rng: RandomState::new().hash_one(0x5eed_u64) | 1,
            events,
            cancels_swept: 0,
            incoming: Vec::new(),
            running: Vec::new(),
            next_batch: BatchId(0),
            last_rate,
            target_reported: (0, None),
            target_report_at: None,
            audit_at: None,
            audit_mismatch: None,
            retry_window: VecDeque::new(),
            cancelled_unreported: 0,
            metrics,
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
                self.running
                    .retain_mut(|batch| match batch.as_mut().poll(cx) {
                        Poll::Ready(done) => {
                            ended.push(done);
                            false
                        }
                        Poll::Pending => true,
                    });
                let submitted = self
                    .shared
                    .intake
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
            self.shared.intake.take(&mut self.incoming);
        }
        self.accept_incoming(now)
    }

    /// Accepts the submits already taken from the intake; returns how many.
    fn accept_incoming(&mut self, now: Instant) -> usize {
        let mut incoming = std::mem::take(&mut self.incoming);
        let n = incoming.len();
        if n > 0 {
            let now_ns = nanos_since(self.ticker_origin, now);
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
        let epoch = self.current_epoch();
        let mut cost_sum = 0u64;
        for op in incoming.drain(..) {
            let cost = u64::from(op.cost);
            cost_sum += cost;
            let id = self.next_id;
            self.next_id += 1;
            let slot = self.slot_for(op.key);
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
        if let Some(count) = self.epochs.back_mut() {
            *count += n;
        }
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
                    self.maybe_free(slot);
                }
            }
        }
    }

    fn refresh_cost_limit(&mut self) {
        self.batch_cost_limit = match self.cfg.capacity.burst() {
            Some(burst) => self.cfg.max_batch_cost.min(burst.max(1)),
            None => self.cfg.max_batch_cost,
        };
    }

    // ----- messages -------------------------------------------------------

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
                self.capacity_wait = None;
                self.evaluate_all(now);
            }
            #[cfg(test)]
            Msg::SkewTarget(delta) => self.stats.target += delta,
            Msg::Flush(reply) => self.flush(reply, now),
            Msg::Shutdown { deadline, reply } => self.begin_shutdown(deadline, Some(reply), now),
            Msg::Close => self.begin_shutdown(None, None, now),
        }
    }

    /// Decides again about a slot that just got one more operation at the
    /// back, if that may have changed anything. It changes nothing for a
    /// slot already in the ready queue, nor for one whose timer is armed,
    /// unless it makes the batch full or reaches the minimum size. (Deciding
    /// is most of the cost of accepting an operation while batches are in
    /// flight.)
    #[inline]
    fn pushed(&mut self, slot: usize, now: Instant) {
        let s = &self.slots[slot];
        let unchanged = s.listed
            || (s.armed.is_some()
                && s.queue.len() < self.cfg.max_batch_size
                && s.cost < self.batch_cost_limit
                && s.queue.len() != self.cfg.min_batch_size);
        if !unchanged {
            self.evaluate(slot, now);
        }
    }

    fn push_buffer(&mut self, slot: usize, op: Queued<T, O, E>) {
        let cost = u64::from(op.cost);
        let s = &mut self.slots[slot];
        s.cost += cost;
        s.queue.push_back(op);
        self.stats.buffered += 1;
        self.stats.buffered_cost += cost;
    }

    /// The slot of a key, created if it has none; 0 without a key.
    #[inline]
    fn slot_for(&mut self, key: Option<K>) -> usize {
        match key {
            None => 0,
            Some(key) => self.slot_for_key(key),
        }
    }

    fn slot_for_key(&mut self, key: K) -> usize {
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot];
                s.key = Some(key.clone());
                s.live = true;
                slot
            }
            None => {
                self.slots.push(KeySlot::new(Some(key.clone())));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// Frees a keyed slot that holds nothing, so that memory does not grow
    /// with the number of keys ever seen.
    fn maybe_free(&mut self, slot: usize) {
        if slot == 0 {
            return;
        }
        let s = &mut self.slots[slot];
        if !s.live || !s.queue.is_empty() || s.in_flight > 0 || s.retrying > 0 || s.listed {
            return;
        }
        if let Some(key) = s.key.take() {
            self.index.remove(&key);
        }
        s.live = false;
        s.generation = s.generation.wrapping_add(1);
        s.armed = None;
        s.drain = 0;
        self.free_slots.push(slot);
    }

    fn complete(&mut self, done: Done<T, O, E>, now: Instant) {
        let Some(batch) = self.in_flight.get_mut(done.batch).and_then(Option::take) else {
            return;
        };
        self.in_flight_free.push(done.batch);
        self.stats.in_flight_batches -= 1;
        self.stats.in_flight -= batch.ops;
        self.stats.in_flight_cost -= batch.cost;
        let slot = batch.slot;
        self.slots[slot].in_flight -= 1;

        let mut resolved_ops = batch.ops;
        let mut resolved_cost = batch.cost;
        for (epoch, n) in &batch.epochs.0 {
            self.epoch_resolved(*epoch, u64::from(*n));
        }

        self.stats.completed += done.completed;
        self.stats.failed += done.failed + done.abandoned_count;
        let retried = done.retry.len() as u64;
        if retried > 0 {
            self.count_window(
                now,
                WindowSecond {
                    retried,
                    ..WindowSecond::default()
                },
            );
        }
        // Only for the events, and only when someone listens.
        let duration = || now.saturating_duration_since(batch.started);
        let key = &self.slots[slot].key;
        let size = batch.ops as usize;
        self.metrics.ended(done.ended);
        match done.ended {
            Ended::Outcomes => self.emit(|| Event::BatchCompleted {
                batch: batch.id,
                key: key.clone(),
                completed: done.completed,
                failed: done.failed,
                retried,
                duration: duration(),
            }),
            Ended::Failed(reason) => self.emit(|| Event::BatchFailed {
                batch: batch.id,
                key: key.clone(),
                reason,
                size,
                duration: duration(),
            }),
            Ended::TimedOut(after) => self.emit(|| Event::BatchTimedOut {
                batch: batch.id,
                key: key.clone(),
                size,
                after,
            }),
            Ended::Abandoned => {}
        }
        if retried > 0 {
            self.emit(|| Event::BatchRetried {
                batch: batch.id,
                key: key.clone(),
                operations: retried,
            });
        }
        if let Some(closing) = &mut self.closing {
            closing.report.completed += done.completed;
            closing.report.failed += done.failed;
            let key = self.slots[slot].key.clone();
            closing
                .report
                .abandoned
                .extend(
                    done.abandoned
                        .into_iter()
                        .map(|(id, cost, payload)| Abandoned {
                            id,
                            key: key.clone(),
                            payload,
                            cost,
                        }),
                );
        }

        for op in done.retry {
            let cost = u64::from(op.cost);
            resolved_ops -= 1;
            resolved_cost -= cost;
            self.epoch_unresolved(op.epoch);
            if self.closing.as_ref().is_some_and(|c| c.deadline_passed) {
                // The shutdown's deadline has passed: no more attempts. (A
                // batch can report after the deadline: it yields before its
                // report, and an aborted one reports when its task ends.)
                self.abandon(slot, op);
                continue;
            }
            self.stats.retried += 1;
            self.stats.retrying += 1;
            self.stats.retrying_cost += cost;
            self.slots[slot].retrying += 1;
            let random = self.random();
            let delay = self.cfg.backoff.delay(op.attempts, random);
            self.retry_seq += 1;
            self.retries
                .insert((later(now, delay), self.retry_seq), (slot, op));
        }
        self.stats.target -= resolved_cost;
        self.release(resolved_ops, resolved_cost);

        // The slot may have been held back by its per-key cap, or may now go
        // at once under the load-aware policy.
        self.evaluate(slot, now);
        self.maybe_free(slot);
    }

    fn flush(&mut self, reply: oneshot::Sender<()>, now: Instant) {
        let epoch = self.current_epoch();
        self.epochs.push_back(0);
        self.flush_waiters.push((epoch, reply));
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                let s = &mut self.slots[slot];
                s.drain = s.queue.len();
            }
        }
        self.evaluate_all(now);
    }

    fn begin_shutdown(
        &mut self,
        deadline: Option<Instant>,
        reply: Option<oneshot::Sender<ShutdownReport<T, K>>>,
        now: Instant,
    ) {
        let closing = self.closing.get_or_insert_with(|| Closing {
            deadline: None,
            deadline_passed: false,
            waiters: Vec::new(),
            report: ShutdownReport::default(),
        });
        // The earliest deadline asked for wins.
        closing.deadline = match (closing.deadline, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        closing.waiters.extend(reply);
        let first = !self.shared.is_closed();
        self.shared.close_intake();
        if first {
            self.emit(|| Event::ShutdownStarted {
                deadline: deadline.map(|d| d.saturating_duration_since(now)),
            });
        }
        self.evaluate_all(now);
    }

    // ----- one turn of the loop ----------------------------------------------

    fn step(&mut self, now: Instant) {
        // Due linger and ticker deadlines.
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let s = &mut self.slots[slot];
            if s.generation == generation && s.armed == Some(at) {
                s.armed = None;
                self.evaluate(slot, now);
            }
        }
        // Retries whose backoff has run out go back into the buffer.
        while let Some(entry) = self.retries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (slot, mut op) = entry.remove();
            let cost = u64::from(op.cost);
            self.stats.retrying -= 1;
            self.stats.retrying_cost -= cost;
            self.slots[slot].retrying -= 1;
            if op.resolver.is_closed() {
                // Its ticket was dropped while it was in flight or waiting
                // (a sweep may have run before it came back): cancel it
                // here, since dispatch asks only after unswept drops.
                self.cancelled(op);
                self.maybe_free(slot);
                continue;
            }
            op.enqueued = now;
            let flushed = op.epoch < self.current_epoch() && !self.flush_waiters.is_empty();
            self.push_buffer(slot, op);
            if flushed {
                let s = &mut self.slots[slot];
                s.drain = s.queue.len();
            }
            self.evaluate(slot, now);
        }
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
        if self.capacity_wait.is_some_and(|at| at <= now) {
            self.capacity_wait = None;
        }
        self.dispatch_ready(now);
        if self.audit_at.is_some_and(|at| at <= now) {
            self.audit_at = None;
            self.audit();
        }
        if self.audit_at.is_none() && self.stats.target > 0 {
            self.audit_at = self.cfg.audit_interval.map(|every| later(now, every));
        }
        self.publish(now);
        self.settle_flushes();
    }

    /// Whether the shutdown is complete: nothing held and nothing in transit.
    fn finished(&self) -> bool {
        self.closing.is_some()
            && self.stats.pending() == 0
            && self.shared.ops.available_permits() == self.cfg.buffer_size
    }

    fn finish(&mut self) {
        self.publish(Instant::now());
        if let Some(closing) = &self.closing {
            let report = &closing.report;
            self.emit(|| Event::ShutdownFinished {
                flushed: report.flushed,
                completed: report.completed,
                failed: report.failed,
                abandoned: report.abandoned.len() as u64,
            });
        }
        if let Some(mut closing) = self.closing.take() {
            // The first caller gets the abandoned payloads; later callers
            // the same counts, also those whose request comes too late for
            // the engine to read it.
            let counts = closing.report.clone_counts();
            *self
                .shared
                .final_report
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(counts.clone_counts());
            let mut waiters = closing.waiters.drain(..);
            if let Some(first) = waiters.next() {
                let _ = first.send(std::mem::take(&mut closing.report));
            }
            for waiter in waiters {
                let _ = waiter.send(counts.clone_counts());
            }
        }
        for (_, waiter) in self.flush_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let retry = self.retries.keys().next().map(|(at, _)| *at);
        let deadline = self
            .closing
            .as_ref()
            .filter(|c| !c.deadline_passed)
            .and_then(|c| c.deadline);
        [
            timer,
            retry,
            deadline,
            self.capacity_wait,
            self.target_report_at,
            self.audit_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ----- readiness ---------------------------------------------------------

    fn evaluate_all(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                self.evaluate(slot, now);
            }
        }
    }

    /// Puts the slot in the ready queue if its next batch may go now, or arms
    /// a timer for when it may.
    fn evaluate(&mut self, slot: usize, now: Instant) {
        let s = &self.slots[slot];
        if s.listed || s.queue.is_empty() {
            return;
        }
        match self.readiness(s, now) {
            Readiness::Ready => {
                self.slots[slot].listed = true;
                self.ready.push_back(slot);
            }
            Readiness::At(at) => {
                let s = &mut self.slots[slot];
                if s.armed != Some(at) {
                    s.armed = Some(at);
                    self.timers.push(Reverse((at, slot, s.generation)));
                }
            }
            Readiness::Hold => {}
        }
    }

    fn readiness(&self, s: &KeySlot<T, K, O, E>, now: Instant) -> Readiness {
        let Some(head) = s.queue.front() else {
            return Readiness::Hold;
        };
        if s.in_flight >= self.cfg.max_in_flight_per_key {
            return Readiness::Hold;
        }
        if self.closing.is_some() || s.drain > 0 {
            return Readiness::Ready;
        }
        if self.paused {
            return Readiness::Hold;
        }
        let len = s.queue.len();
        if len >= self.cfg.max_batch_size || s.cost >= self.batch_cost_limit {
            return Readiness::Ready;
        }
        let linger_end = later(head.enqueued, self.cfg.linger);
        let at = if len >= self.cfg.min_batch_size {
            if self.cfg.dispatch == Dispatch::LoadAware && s.in_flight == 0 {
                return Readiness::Ready;
            }
            linger_end
        } else {
            self.tick_after(linger_end)
        };
        if now >= at {
            Readiness::Ready
        } else {
            Readiness::At(at)
        }
    }

    /// The first tick of the straggler ticker strictly after `t`.
    fn tick_after(&self, t: Instant) -> Instant {
        let period = self.cfg.ticker.as_nanos().max(1);
        let since = t.saturating_duration_since(self.ticker_origin).as_nanos();
        let ticks = since / period + 1;
        let offset = u64::try_from(ticks.saturating_mul(period)).unwrap_or(u64::MAX);
        later(self.ticker_origin, Duration::from_nanos(offset))
    }

    // ----- dispatch ----------------------------------------------------------

    fn dispatch_ready(&mut self, now: Instant) {
        if self.capacity_wait.is_some() {
            return;
        }
        while self.stats.in_flight_batches < self.cfg.max_in_flight as u64 {
            let Some(&slot) = self.ready.front() else {
                break;
            };
            if !matches!(self.readiness(&self.slots[slot], now), Readiness::Ready) {
                self.ready.pop_front();
                self.slots[slot].listed = false;
                self.evaluate(slot, now);
                self.maybe_free(slot);
                continue;
            }
            let (count, cost) = self.head_batch(slot);
            if let Spend::Wait(wait) = self.cfg.capacity.try_spend(cost, now) {
                self.capacity_wait = Some(later(now, wait));
                break;
            }
            self.ready.pop_front();
            self.slots[slot].listed = false;
            self.dispatch(slot, count, now);
            self.evaluate(slot, now);
            self.maybe_free(slot);
        }
    }

    /// How many operations from the front of the slot form its next batch,
    /// and their cost.
    fn head_batch(&self, slot: usize) -> (usize, u64) {
        let s = &self.slots[slot];
        let max = self.cfg.max_batch_size;
        if s.cost <= self.batch_cost_limit {
            // The whole queue is within the cost limit, so any front of it
            // is: the batch is as many as the size allows.
            if s.queue.len() <= max {
                return (s.queue.len(), s.cost);
            }
            let cost = s.queue.range(..max).map(|op| u64::from(op.cost)).sum();
            return (max, cost);
        }
        let mut count = 0;
        let mut cost = 0u64;
        for op in s.queue.iter().take(max) {
            let c = u64::from(op.cost);
            if count > 0 && cost + c > self.batch_cost_limit {
                break;
            }
            count += 1;
            cost += c;
        }
        (count, cost)
    }

    fn dispatch(&mut self, slot: usize, count: usize, now: Instant) {
        // The front of the queue entered it first: the batch's longest wait.
        let oldest = self.slots[slot].queue.front().map(|op| op.enqueued);
        let mut items = Vec::with_capacity(count);
        let mut info = Vec::with_capacity(count);
        let mut trackers = Vec::with_capacity(count);
        let mut epochs = EpochCounts::default();
        let mut cost = 0u64;
        // What leaves the buffer, accounted once for the whole batch.
        let mut taken_cost = 0u64;
        // Whether a ticket may have been dropped since the last sweep.
        // Asking each operation's slot is a cache miss per operation (the
        // slot was last written on the submitter's thread), so it is only
        // asked when a drop was reported that no sweep has covered yet
        // (`CancelCount`, whose ordering the loom tests check).
        let check_closed = self.shared.cancels_reported() != self.cancels_swept;
        let queue = &mut self.slots[slot].queue;
        let taken = count.min(queue.len());
        // Operations whose ticket is gone leave the front first, and are
        // accounted once the batch has left the queue.
        let mut gone = Vec::new();
        let mut len = taken;
        if check_closed {
            let mut i = 0;
            while i < len {
                if queue[i].resolver.is_closed() {
                    gone.extend(queue.remove(i));
                    len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        // The batch is the first `len` operations: their descriptions for
        // the handler first, then the operations themselves.
        info.extend(queue.range(..len).map(|op| OpInfo {
            id: OpId(op.id),
            cost: op.cost,
            attempt: op.attempts + 1,
        }));
        for op in queue.drain(..len) {
            cost += u64::from(op.cost);
            epochs.add(op.epoch);
            items.push(op.payload);
            trackers.push(Tracker {
                resolver: op.resolver,
                id: op.id,
                cost: op.cost,
                attempts: op.attempts + 1,
                epoch: op.epoch,
                submitted: op.submitted,
            });
        }
        taken_cost += cost;
        for op in gone {
            taken_cost += u64::from(op.cost);
            self.cancelled(op);
        }
        let taken = taken as u64;
        self.stats.buffered -= taken;
        self.stats.buffered_cost -= taken_cost;
        let s = &mut self.slots[slot];
        s.cost -= taken_cost;
        s.drain = s.drain.saturating_sub(count);
        if items.is_empty() {
            return;
        }
        let ops = items.len() as u64;
        s.in_flight += 1;
        self.stats.in_flight_batches += 1;
        self.stats.in_flight += ops;
        self.stats.in_flight_cost += cost;
        self.stats.batches += 1;
        if let Some(closing) = &mut self.closing {
            closing.report.flushed += ops;
        }
        self.count_window(
            now,
            WindowSecond {
                dispatched: ops,
                batches: 1,
                cost,
                ..WindowSecond::default()
            },
        );
        self.metrics.dispatched(
            ops,
            cost,
            oldest.map_or(Duration::ZERO, |at| now.saturating_duration_since(at)),
        );
        let id = self.next_batch;
        self.next_batch.0 += 1;
        let attempt = info.iter().map(|i| i.attempt).max().unwrap_or(1);
        let key = &self.slots[slot].key;
        self.emit(|| Event::BatchDispatched {
            batch: id,
            key: key.clone(),
            size: ops as usize,
            cost,
            attempt,
        });
        let entry = InFlight {
            id,
            slot,
            ops,
            cost,
            epochs,
            started: now,
        };
        let batch = match self.in_flight_free.pop() {
            Some(i) => {
                self.in_flight[i] = Some(entry);
                i
            }
            None => {
                self.in_flight.push(Some(entry));
                self.in_flight.len() - 1
            }
        };
        let data = Arc::new(BatchData {
            key: self.slots[slot].key.clone(),
            items,
            info,
        });
        // One reference count for everything the batch shares with the
        // others (a clone of the abort token alone takes a lock, and
        // another to drop it).
        let ctx = RunCtx {
            batch,
            id,
            shared: Arc::clone(&self.run),
        };
        let batch = run_batch(data, trackers, ctx);
        // Under the load-aware policy, the task of a batch of several
        // operations yields once between resolving them and reporting: the
        // callers it woke are likely to submit again, and should get in
        // before the engine hears that nothing is in flight and sends what
        // it holds at once. Without it, the report overtakes them and
        // batches stay a few operations small under load. (So the stats
        // count a batch a moment after its tickets resolve.) A batch of one,
        // a lone caller's, reports at once.
        let settle = self.cfg.dispatch == Dispatch::LoadAware
            && self.cfg.execution == Execution::Spawned
            && ops > 1;
        match self.cfg.execution {
            Execution::Inline => self.running.push(Box::pin(batch)),
            Execution::Spawned => {
                let tx = self.tx.clone();
                // The batch's future is large (the handler's call, its
                // timeout, the shutdown race): boxed once here, the task
                // itself stays a few words, which tokio moves several times
                // as it spawns, completes and drops the task.
                let batch = Box::pin(batch);
                tokio::spawn(async move {
                    let done = Box::new(batch.await);
                    if settle {
                        tokio::task::yield_now().await;
                    }
                    // The engine holds a sender itself and outlives every
                    // batch it dispatched, so this send cannot fail.
                    let _ = tx.send(Msg::Done(done));
                });
            }
        }
    }

    // ----- cancellation and abandonment --------------------------------------

    /// Takes the operations of dropped tickets out of the buffer and the
    /// retry wait.
    fn sweep_cancelled(&mut self, now: Instant) {
        // Every drop counted up to here is found by this sweep: its ticket
        // closed its slot before counting, and its operation was pushed to
        // the intake before that (taken now) or is in a queue.
        let reported = self.shared.cancels_reported();
        self.take_intake(now);
        self.sweep_queues(now);
        self.cancels_swept = reported;
    }

    fn sweep_queues(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if !self.slots[slot].live || self.slots[slot].queue.is_empty() {
                continue;
            }
            if !self.slots[slot]
                .queue
                .iter()
                .any(|op| op.resolver.is_closed())
            {
                continue;
            }
            let queue = std::mem::take(&mut self.slots[slot].queue);
            let drain = self.slots[slot].drain;
            // A flush marked the first `drain` operations; only cancellations
            // among those lower the mark, so the operations it still covers
            // keep their right to go regardless of linger and pause.
            let mut drain_removed = 0;
            let mut kept = VecDeque::with_capacity(queue.len());
            for (position, op) in queue.into_iter().enumerate() {
                if op.resolver.is_closed() {
                    let c = u64::from(op.cost);
                    self.slots[slot].cost -= c;
                    self.stats.buffered -= 1;
                    self.stats.buffered_cost -= c;
                    self.cancelled(op);
                    if position < drain {
                        drain_removed += 1;
                    }
                } else {
                    kept.push_back(op);
                }
            }
            let s = &mut self.slots[slot];
            s.queue = kept;
            s.drain = drain - drain_removed;
            self.evaluate(slot, now);
            self.maybe_free(slot);
        }
        let closed: Vec<(Instant, u64)> = self
            .retries
            .iter()
            .filter(|(_, (_, op))| op.resolver.is_closed())
            .map(|(k, _)| *k)
            .collect();
        for k in closed {
            if let Some((slot, op)) = self.retries.remove(&k) {
                let c = u64::from(op.cost);
                self.stats.retrying -= 1;
                self.stats.retrying_cost -= c;
                self.slots[slot].retrying -= 1;
                self.cancelled(op);
                self.maybe_free(slot);
            }
        }
    }

    /// Accounts for an operation, already out of every queue, whose ticket
    /// was dropped before it was dispatched.
    fn cancelled(&mut self, op: Queued<T, O, E>) {
        self.cancelled_unreported += 1;
        self.stats.cancelled += 1;
        self.stats.target -= u64::from(op.cost);
        self.epoch_resolved(op.epoch, 1);
        self.release(1, u64::from(op.cost));
    }

    /// The shutdown deadline passed: resolve everything not in flight as
    /// abandoned, and tell the in-flight batches to drop their handlers.
    fn abandon_all(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                self.abandon_buffered(slot);
            }
        }
        let retries = std::mem::take(&mut self.retries);
        for (_, (slot, op)) in retries {
            let c = u64::from(op.cost);
            self.stats.retrying -= 1;
            self.stats.retrying_cost -= c;
            self.slots[slot].retrying -= 1;
            self.abandon(slot, op);
        }
        self.ready.clear();
        for slot in 0..self.slots.len() {
            self.slots[slot].listed = false;
            self.maybe_free(slot);
        }
        self.run.abort.cancel();
    }

    fn abandon_buffered(&mut self, slot: usize) {
        let queue = std::mem::take(&mut self.slots[slot].queue);
        for op in queue {
            let c = u64::from(op.cost);
            self.stats.buffered -= 1;
            self.stats.buffered_cost -= c;
            self.abandon(slot, op);
        }
        let s = &mut self.slots[slot];
        s.cost = 0;
        s.drain = 0;
    }

    fn abandon(&mut self, slot: usize, op: Queued<T, O, E>) {
        let cost = u64::from(op.cost);
        self.stats.target -= cost;
        self.stats.failed += 1;
        self.epoch_resolved(op.epoch, 1);
        self.release(1, cost);
        let _ = op.resolver.send(Err(Error::Abandoned));
        if let Some(closing) = &mut self.closing {
            closing.report.abandoned.push(Abandoned {
                id: OpId(op.id),
                key: self.slots[slot].key.clone(),
                payload: op.payload,
                cost: op.cost,
            });
        }
    }

    // ----- bookkeeping -------------------------------------------------------

    /// Gives resolved operations' buffer permits back.
    fn release(&mut self, ops: u64, cost: u64) {
        if ops > 0 {
            self.shared.room_made();
            self.shared.ops.add_permits(ops as usize);
        }
        if let Some(sem) = &self.shared.cost {
            if cost > 0 {
                sem.add_permits(cost as usize);
            }
        }
    }

    fn current_epoch(&self) -> u64 {
        self.epoch_base + self.epochs.len() as u64 - 1
    }

    fn epoch_resolved(&mut self, epoch: u64, n: u64) {
        if let Some(count) = epoch
            .checked_sub(self.epoch_base)
            .and_then(|i| self.epochs.get_mut(i as usize))
        {
            *count -= n;
        }
    }

    fn epoch_unresolved(&mut self, epoch: u64) {
        if let Some(count) = epoch
            .checked_sub(self.epoch_base)
            .and_then(|i| self.epochs.get_mut(i as usize))
        {
            *count += 1;
        }
    }

    /// Answers the flushes whose operations have all resolved.
    fn settle_flushes(&mut self) {
        while self.epochs.len() > 1 && self.epochs.front() == Some(&0) {
            self.epochs.pop_front();
            self.epoch_base += 1;
        }
        if self.flush_waiters.is_empty() {
            return;
        }
        let base = self.epoch_base;
        let waiters = std::mem::take(&mut self.flush_waiters);
        for (epoch, reply) in waiters {
            if epoch < base {
                let _ = reply.send(());
            } else {
                self.flush_waiters.push((epoch, reply));
            }
        }
    }

    fn publish(&mut self, now: Instant) {
        self.stats.paused = self.paused;
        self.stats.shutting_down = self.closing.is_some();
        let rate = self.cfg.capacity.rate();
        self.stats.capacity = rate;
        if rate != self.last_rate {
            self.last_rate = rate;
            self.emit(|| Event::CapacityChanged { rate });
        }
        if self.cancelled_unreported > 0 {
            let count = std::mem::take(&mut self.cancelled_unreported);
            self.emit(|| Event::OperationsCancelled { count });
        }
        self.target_slot.set(self.stats.target);
        self.report_target(now);
        self.shared.publish(&self.stats);
        let shared = &self.shared;
        self.metrics
            .publish(&self.stats, || shared.waiting_submitters());
    }

    /// Emits `TargetChanged` when the target moved, at most once per
    /// interval; a change inside the interval is reported when it ends.
    fn report_target(&mut self, now: Instant) {
        let target = self.stats.target;
        let (reported, at) = self.target_reported;
        // With nobody listening there is nothing to coalesce, and no timer
        // to arm: a listener that subscribes later hears the next change.
        if target == reported || self.events.receiver_count() == 0 {
            self.target_report_at = None;
            return;
        }
        match at {
            Some(at) if now < at + TARGET_EVENT_INTERVAL => {
                self.target_report_at = Some(at + TARGET_EVENT_INTERVAL);
            }
            _ => {
                self.target_reported = (target, Some(now));
                self.target_report_at = None;
                self.emit(|| Event::TargetChanged { target });
            }
        }
    }

    /// Sends an event if anyone listens; the event is only built then.
    fn emit(&self, event: impl FnOnce() -> Event<K>) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }

    /// Counts dispatched and retried operations in the current second.
    fn count_window(&mut self, now: Instant, counts: WindowSecond) {
        let second = now.saturating_duration_since(self.ticker_origin).as_secs();
        match self.retry_window.back_mut() {
            Some(w) if w.second == second => w.add(&counts),
            _ => self
                .retry_window
                .push_back(WindowSecond { second, ..counts }),
        }
        while self
            .retry_window
            .front()
            .is_some_and(|w| w.second + RETRY_WINDOW_SECS <= second)
        {
            self.retry_window.pop_front();
        }
    }

    /// Looks at the engine's own state and says what holds work back.
    fn diagnose(&mut self, now: Instant) -> Diagnosis {
        self.audit();
        let mut findings = Vec::new();
        let s = &self.stats;
        let waiting = s.buffered + s.retrying;
        let held = s.pending();

        if self.paused && self.closing.is_none() {
            findings.push(Finding {
                severity: if waiting > 0 {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                code: Code::Paused,
                message: format!(
                    "dispatching is paused with {waiting} operation(s) waiting; call resume() \
                     to dispatch them"
                ),
                numbers: vec![("waiting", waiting as f64)],
            });
        }

        if s.target > 0 && self.cfg.capacity.rate() == Some(0) {
            let status = self.cfg.capacity.status();
            let mut why = Vec::new();
            if let Some(error) = &status.store_error {
                why.push(format!("the lease store cannot be reached ({error})"));
            }
            if let Some((held, total)) = status.partitions {
                why.push(format!("{held} of {total} partitions are leased"));
            }
            match status.reserved {
                Some(0) | None => why.push("no capacity is reserved for this instance".to_owned()),
                Some(r) => why.push(format!("{r} is reserved but none of it is granted")),
            }
            let mut numbers = vec![("target", s.target as f64), ("capacity", 0.0)];
            if let Some((held, total)) = status.partitions {
                numbers.push(("partitions_leased", f64::from(held)));
                numbers.push(("partitions", f64::from(total)));
            }
            if let Some(r) = status.reserved {
                numbers.push(("reserved", r as f64));
            }
            findings.push(Finding {
                severity: Severity::Error,
                code: Code::NoCapacity,
                message: format!(
                    "{} operation(s) with a target of {} wait, but the capacity grants 0 per \
                     second: {}; nothing can be dispatched until capacity is granted (reserve \
                     some capacity so that work always moves)",
                    waiting,
                    s.target,
                    why.join(", ")
                ),
                numbers,
            });
        }

        if let (Some(rate), Some(_)) = (self.cfg.capacity.rate(), self.capacity_wait) {
            if rate > 0 && waiting > 0 {
                let drain = s.target as f64 / rate as f64;
                findings.push(Finding {
                    severity: Severity::Info,
                    code: Code::CapacityBound,
                    message: format!(
                        "{waiting} operation(s) wait for capacity: the target is {} but the \
                         capacity grants {rate} per second, so the capacity sets the pace \
                         (about {drain:.1} s to dispatch what is held); raise the capacity if \
                         the datastore can take more",
                        s.target
                    ),
                    numbers: vec![
                        ("target", s.target as f64),
                        ("capacity", rate as f64),
                        ("waiting", waiting as f64),
                        ("seconds_to_drain", drain),
                    ],
                });
            }
        }

        let max = self.cfg.max_in_flight as u64;
        if s.in_flight_batches >= max && waiting > 0 {
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::InFlightCapReached,
                message: format!(
                    "all {max} in-flight slots are busy and {waiting} operation(s) wait: the \
                     handler is the bottleneck; raise max_in_flight if the datastore can take \
                     more, or make the handler faster"
                ),
                numbers: vec![
                    ("in_flight_batches", s.in_flight_batches as f64),
                    ("max_in_flight", max as f64),
                    ("waiting", waiting as f64),
                ],
            });
        }

        for batch in self.in_flight.iter().flatten() {
            let running = now.saturating_duration_since(batch.started);
            let key = &self.slots[batch.slot].key;
            match self.cfg.max_operation_time {
                Some(limit) if running > limit => findings.push(Finding {
                    severity: Severity::Error,
                    code: Code::BatchOverdue,
                    message: format!(
                        "batch {} (key {key:?}, {} operation(s)) has run {running:?}, past its \
                         maximum operation time of {limit:?}, and still holds its in-flight \
                         slot: its handler blocks the thread, or dropping its future blocks; \
                         use async I/O or spawn_blocking in the handler",
                        batch.id, batch.ops
                    ),
                    numbers: vec![
                        ("batch", batch.id.0 as f64),
                        ("running_seconds", running.as_secs_f64()),
                        ("max_operation_time_seconds", limit.as_secs_f64()),
                    ],
                }),
                None if running > LONG_RUNNING => findings.push(Finding {
                    severity: Severity::Warning,
                    code: Code::BatchRunningLong,
                    message: format!(
                        "batch {} (key {key:?}, {} operation(s)) has been running for \
                         {running:?} and no maximum operation time is set, so a hung handler is \
                         never cut short; set Builder::max_operation_time",
                        batch.id, batch.ops
                    ),
                    numbers: vec![
                        ("batch", batch.id.0 as f64),
                        ("running_seconds", running.as_secs_f64()),
                    ],
                }),
                _ => {}
            }
        }

        let submitters = self.shared.waiting_submitters();
        if submitters > 0 {
            let buffer = self.cfg.buffer_size as u64;
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::BufferFull,
                message: format!(
                    "the buffer is full ({held} of {buffer} operations held) and {submitters} \
                     submitter(s) wait for room, each holding its payload: the handler is \
                     slower than the submit rate; \
                     this is backpressure working, but if it lasts, raise max_in_flight or the \
                     capacity, or slow the producers"
                ),
                numbers: vec![
                    ("held", held as f64),
                    ("buffer_size", buffer as f64),
                    ("waiting_submitters", submitters as f64),
                ],
            });
        }

        // The seconds of the window still within it now (the window is
        // trimmed when operations are counted, which may be a while ago).
        let second = now.saturating_duration_since(self.ticker_origin).as_secs();
        let mut window = WindowSecond::default();
        for w in &self.retry_window {
            if w.second + RETRY_WINDOW_SECS > second {
                window.add(w);
            }
        }
        let (dispatched, retried) = (window.dispatched, window.retried);
        if retried >= 10 && retried * 2 >= dispatched {
            findings.push(Finding {
                severity: Severity::Warning,
                code: Code::RetryStorm,
                message: format!(
                    "{retried} of the {dispatched} operation(s) dispatched in the last \
                     {RETRY_WINDOW_SECS} s were retried: the datastore is refusing work; \
                     look at the handler's errors, lower the capacity, or raise the backoff"
                ),
                numbers: vec![
                    ("retried", retried as f64),
                    ("dispatched", dispatched as f64),
                    ("window_seconds", RETRY_WINDOW_SECS as f64),
                ],
            });
        }

        let max_size = self.cfg.max_batch_size as f64;
        if window.batches >= SMALL_BATCHES_MIN && max_size >= 4.0 {
            let mean_size = window.dispatched as f64 / window.batches as f64;
            let mean_cost = window.cost as f64 / window.batches as f64;
            if mean_size * 4.0 < max_size {
                findings.push(self.small_batches(mean_size, mean_cost, window.batches));
            }
        }

        if let Some((target, recounted)) = self.audit_mismatch {
            findings.push(Finding {
                severity: Severity::Error,
                code: Code::AuditMismatch,
                message: format!(
                    "the target is {target} but what is buffered, retrying and in flight costs \
                     {recounted}: the engine's accounting is wrong; this is a bug in baler, \
                     please report it with this diagnosis"
                ),
                numbers: vec![("target", target as f64), ("recounted", recounted as f64)],
            });
        }

        findings.sort_by_key(|f| Reverse(f.severity));
        Diagnosis {
            findings,
            stats: self.stats.clone(),
        }
    }

    /// Says why recent batches averaged under a quarter of `max_batch_size`.
    fn small_batches(&self, mean_size: f64, mean_cost: f64, batches: u64) -> Finding {
        let limit = self.batch_cost_limit;
        let keys = self.index.len();
        let why = if mean_cost * 2.0 >= limit as f64 {
            if limit < self.cfg.max_batch_cost {
                format!(
                    "batches are cut at a cost of {limit}, the capacity's burst (what it \
                     grants in one burst interval); give the capacity a larger burst \
                     (Capacity::provisioned_with_burst) or make operations cheaper"
                )
            } else {
                format!(
                    "batches are cut at max_batch_cost ({limit}); raise it if the datastore \
                     takes bigger batches"
                )
            }
        } else if keys > 1 {
            format!(
                "operations of {keys} different keys are held and never share a batch; use \
                 fewer keys, or no key where batches need not be split"
            )
        } else if self.cfg.dispatch == Dispatch::LoadAware {
            "with Dispatch::LoadAware a batch goes as soon as its key has nothing in flight, \
             which keeps latency low when the load is light; to trade latency for bigger \
             batches, set min_batch_size, or use Dispatch::Linger with a longer linger"
                .to_owned()
        } else {
            format!(
                "batches close when their linger ({:?}) runs out before they fill; raise the \
                 linger to trade latency for bigger batches",
                self.cfg.linger
            )
        };
        let mut numbers = vec![
            ("mean_batch_size", mean_size),
            ("max_batch_size", self.cfg.max_batch_size as f64),
            ("mean_batch_cost", mean_cost),
        ];
        if limit < u64::MAX {
            numbers.push(("batch_cost_limit", limit as f64));
        }
        numbers.push(("batches", batches as f64));
        numbers.push(("keys", keys as f64));
        Finding {
            severity: Severity::Info,
            code: Code::SmallBatches,
            message: format!(
                "the last {batches} batches averaged {mean_size:.1} operation(s) (cost \
                 {mean_cost:.1}) of at most {}: {why}",
                self.cfg.max_batch_size
            ),
            numbers,
        }
    }

    /// Recounts the cost of everything held and compares it with the target.
    fn audit(&mut self) -> bool {
        let buffered: u64 = self
            .slots
            .iter()
            .map(|s| s.queue.iter().map(|op| u64::from(op.cost)).sum::<u64>())
            .sum();
        let retrying: u64 = self
            .retries
            .values()
            .map(|(_, op)| u64::from(op.cost))
            .sum();
        let in_flight: u64 = self.in_flight.iter().flatten().map(|b| b.cost).sum();
        let recounted = buffered + retrying + in_flight;
        let target = self.stats.target;
        if recounted == target {
            self.audit_mismatch = None;
            self.emit(|| Event::AuditPassed { target });
            true
        } else {
            self.audit_mismatch = Some((target, recounted));
            self.metrics.audit_failed();
            tracing::error!(
                target,
                recounted,
                "baler audit: the target differs from the cost of what is held"
            );
            self.emit(|| Event::AuditFailed { target, recounted });
            false
        }
    }

    /// A random fraction in [0, 1), for backoff jitter (splitmix64).
    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The longest wait the engine arms a deadline for: 30 years, as tokio's own
/// "far future". A longer wait (a linger, backoff, audit interval or caller's
/// deadline of `Duration::MAX`, say) is the same as never.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `t + d`, saturating at [`FAR_FUTURE`] past `t` instead of panicking on an
/// `Instant` overflow.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t + d.min(FAR_FUTURE)
}

/// Nanoseconds from `origin` to `t` (0 if `t` is earlier).
pub(crate) fn nanos_since(origin: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

impl<T, K, O, E> Drop for Engine<T, K, O, E> {
    fn drop(&mut self) {
        // Stopped or dropped with its runtime: nothing more comes in, and
        // what did come in but was never taken resolves its tickets (with
        // `Error::Stopped`) as it is dropped here.
        drop(self.shared.intake.close());
        // Requests sent as the engine stopped may never be read: their
        // callers stop waiting now.
        self.shared.stopped.cancel();
    }
}

impl<T, K> ShutdownReport<T, K> {
    pub(crate) fn clone_counts(&self) -> ShutdownReport<T, K> {
        ShutdownReport {
            flushed: self.flushed,
            completed: self.completed,
            failed: self.failed,
            abandoned: Vec::new(),
        }
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
        use crate::intake::Submitted;
        use crate::slot;

        let batcher = Batcher::builder()
            .build(handler_fn(|b: Batch<u32>| async move {
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(b.done_all(()))
            }))
            .unwrap();
        let first = batcher.submit(1).await.unwrap();
        // A submitter that has its permit but has not pushed yet.
        let permit = batcher.shared().ops.try_acquire().unwrap();
        let stopping = batcher.clone();
        let shutdown =
            tokio::spawn(async move { stopping.shutdown(Duration::from_millis(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(first.await, Err(crate::Error::Abandoned)));

        let (resolver, mut receiver) = slot::channel();
        let pushed = batcher.shared().intake.push(Submitted {
            payload: 2,
            key: None,
            cost: 1,
            resolver,
        });
        assert!(pushed.is_ok(), "the engine waits for the held permit");
        std::mem::forget(permit);
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
