//! Dispatch: forming a batch from the front of a ready slot and starting it.
//!
//! Owns the in-flight table (one entry per batch from dispatch until the
//! engine has its report), the batches the engine polls itself
//! ([`Execution::Inline`]), what every batch shares ([`RunShared`]), and the
//! wait for capacity. A batch goes only when the global in-flight limit has
//! room, the capacity grants its cost, and its slot is still ready.
//!
//! # Invariants
//!
//! - **In flight**: `stats.in_flight_batches` is the number of entries in
//!   the table, and never exceeds `max_in_flight`; a slot's `in_flight` is
//!   the number of entries for that slot, and never exceeds
//!   `max_in_flight_per_key`. An entry is removed only when the batch's
//!   report arrives, which is after its handler's future was dropped.
//! - A batch's cost is within `batch_cost_limit` unless it is a single
//!   operation (an operation is refused at submit if it could never fit).
//! - Operations whose ticket is gone leave the buffer here without being
//!   dispatched, when a drop was reported that no sweep has covered yet.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::message::Msg;
use super::observe::WindowSecond;
use super::readiness::Readiness;
use super::Engine;
use crate::capacity::Spend;
use crate::events::{BatchId, Event};
use crate::handler::{BatchData, OpInfo};
use crate::operation::OpId;
use crate::run::{run_batch, Done, RunCtx, RunShared, Tracker};
use crate::settings::{Dispatch, Execution};
use crate::time::later;

/// A batch's future, polled by the engine itself with [`Execution::Inline`].
pub(super) type BatchFuture<T, O, E> = Pin<Box<dyn Future<Output = Done<T, O, E>> + Send>>;

/// Counts of operations per flush epoch, for one in-flight batch.
#[derive(Default)]
pub(super) struct EpochCounts(pub(super) Vec<(u64, u32)>);

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

/// One batch in flight.
pub(super) struct InFlight {
    pub(super) id: BatchId,
    pub(super) slot: usize,
    pub(super) ops: u64,
    pub(super) cost: u64,
    pub(super) epochs: EpochCounts,
    pub(super) started: Instant,
}

/// The batches in flight and what starting one needs.
pub(super) struct Flights<T, K, O, E> {
    /// In-flight batches by index; an index is reused once its batch reports.
    table: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// The batches the engine polls itself, with [`Execution::Inline`].
    pub(super) running: Vec<BatchFuture<T, O, E>>,
    pub(super) next_batch: BatchId,
    /// What every batch's task shares: the handler, the abort, the settings.
    pub(super) run: Arc<RunShared<T, K, O, E>>,
    /// Until when the capacity cannot grant the next batch.
    pub(super) capacity_wait: Option<Instant>,
    /// The most cost in one batch: `max_batch_cost`, or the capacity's burst
    /// if that is lower.
    pub(super) batch_cost_limit: u64,
}

impl<T, K, O, E> Flights<T, K, O, E> {
    pub(super) fn new(run: Arc<RunShared<T, K, O, E>>, batch_cost_limit: u64) -> Self {
        Flights {
            table: Vec::new(),
            free: Vec::new(),
            running: Vec::new(),
            next_batch: BatchId(0),
            run,
            capacity_wait: None,
            batch_cost_limit,
        }
    }

    /// Enters a batch; returns its index, which its report names.
    fn insert(&mut self, entry: InFlight) -> usize {
        match self.free.pop() {
            Some(i) => {
                debug_assert!(self.table[i].is_none(), "a free in-flight index is empty");
                self.table[i] = Some(entry);
                i
            }
            None => {
                self.table.push(Some(entry));
                self.table.len() - 1
            }
        }
    }

    /// Takes a batch out when its report arrives; `None` if it already was.
    pub(super) fn take(&mut self, index: usize) -> Option<InFlight> {
        let entry = self.table.get_mut(index).and_then(Option::take)?;
        self.free.push(index);
        Some(entry)
    }

    /// The batches in flight.
    pub(super) fn iter(&self) -> impl Iterator<Item = &InFlight> {
        self.table.iter().flatten()
    }
}

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    pub(super) fn dispatch_ready(&mut self, now: Instant) {
        if self.flights.capacity_wait.is_some() {
            return;
        }
        while self.stats.in_flight_batches < self.cfg.max_in_flight as u64 {
            let Some(slot) = self.ready.front() else {
                break;
            };
            if !matches!(self.readiness(&self.slots[slot], now), Readiness::Ready) {
                self.ready.pop();
                self.slots[slot].listed = false;
                self.evaluate(slot, now);
                self.slots.maybe_free(slot);
                continue;
            }
            let (count, cost) =
                self.slots[slot].head_batch(self.cfg.max_batch_size, self.flights.batch_cost_limit);
            if let Spend::Wait(wait) = self.cfg.capacity.try_spend(cost, now) {
                self.flights.capacity_wait = Some(later(now, wait));
                break;
            }
            self.ready.pop();
            self.slots[slot].listed = false;
            self.dispatch(slot, count, now);
            self.evaluate(slot, now);
            self.slots.maybe_free(slot);
        }
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
        debug_assert!(
            self.stats.in_flight_batches <= self.cfg.max_in_flight as u64
                && s.in_flight <= self.cfg.max_in_flight_per_key,
            "in flight within the limits"
        );
        self.stats.in_flight += ops;
        self.stats.in_flight_cost += cost;
        self.stats.batches += 1;
        if let Some(closing) = &mut self.closing {
            closing.report.flushed += ops;
        }
        self.observe.count_window(
            self.origin,
            now,
            WindowSecond {
                dispatched: ops,
                batches: 1,
                cost,
                ..WindowSecond::default()
            },
        );
        self.observe.metrics.dispatched(
            ops,
            cost,
            oldest.map_or(Duration::ZERO, |at| now.saturating_duration_since(at)),
        );
        let id = self.flights.next_batch;
        self.flights.next_batch.0 += 1;
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
        let batch = self.flights.insert(entry);
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
            shared: Arc::clone(&self.flights.run),
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
            Execution::Inline => self.flights.running.push(Box::pin(batch)),
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
}
