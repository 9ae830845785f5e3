//! Resolution: what happens to operations once they leave the buffer
//! other than by dispatch, and to batches once they report.
//!
//! Owns the retry wait (operations waiting out a backoff, by due time) and
//! its jitter. Takes a batch's report (counts, retries, abandoned payloads),
//! sweeps out the operations of dropped tickets, and abandons everything at
//! a shutdown's deadline.
//!
//! # Invariants
//!
//! - **Target**: every operation leaves the target exactly once, here: when
//!   its batch reports it resolved, when it is cancelled, or when it is
//!   abandoned. A retry stays in the target across its wait.
//! - **Exactly once**: an operation's resolver is moved, never copied; a
//!   retry's comes back from its batch with it, and is sent on or dropped as
//!   cancelled exactly once.
//! - Every operation that leaves the target gives its buffer permits back in
//!   the same step (`release`).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};

use tokio::time::Instant;

use super::observe::WindowSecond;
use super::Engine;
use crate::error::Error;
use crate::events::{Ended, Event};
use crate::operation::OpId;
use crate::queued::Queued;
use crate::run::Done;
use crate::shutdown::Abandoned;
use crate::time::later;

/// Operations waiting out a retry backoff, by (due time, sequence), with
/// their key slot.
type RetryWait<T, O, E> = BTreeMap<(Instant, u64), (usize, Queued<T, O, E>)>;

/// The retry wait and its jitter.
pub(super) struct Retries<T, O, E> {
    wait: RetryWait<T, O, E>,
    /// Tells apart retries due at the same instant.
    seq: u64,
    /// The backoff jitter's state.
    rng: u64,
}

impl<T, O, E> Retries<T, O, E> {
    pub(super) fn new() -> Self {
        Retries {
            wait: BTreeMap::new(),
            seq: 0,
            rng: RandomState::new().hash_one(0x5eed_u64) | 1,
        }
    }

    /// Puts an operation of `slot` to wait until `due`.
    fn insert(&mut self, due: Instant, slot: usize, op: Queued<T, O, E>) {
        self.seq += 1;
        self.wait.insert((due, self.seq), (slot, op));
    }

    /// Takes the first operation due by `now`.
    fn pop_due(&mut self, now: Instant) -> Option<(usize, Queued<T, O, E>)> {
        let entry = self.wait.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        Some(entry.remove())
    }

    /// When the first retry is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.wait.keys().next().map(|(at, _)| *at)
    }

    /// Takes out the operations whose ticket was dropped.
    fn take_cancelled(&mut self) -> Vec<(usize, Queued<T, O, E>)> {
        let closed: Vec<(Instant, u64)> = self
            .wait
            .iter()
            .filter(|(_, (_, op))| op.resolver.is_closed())
            .map(|(k, _)| *k)
            .collect();
        closed
            .into_iter()
            .filter_map(|k| self.wait.remove(&k))
            .collect()
    }

    /// Takes out every operation.
    fn take_all(&mut self) -> impl Iterator<Item = (usize, Queued<T, O, E>)> {
        std::mem::take(&mut self.wait).into_values()
    }

    /// The cost of what waits, for the audit.
    pub(super) fn cost(&self) -> u64 {
        self.wait.values().map(|(_, op)| u64::from(op.cost)).sum()
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

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Retries whose backoff has run out go back into the buffer.
    pub(super) fn return_due_retries(&mut self, now: Instant) {
        while let Some((slot, mut op)) = self.retries.pop_due(now) {
            let cost = u64::from(op.cost);
            self.stats.retrying -= 1;
            self.stats.retrying_cost -= cost;
            self.slots[slot].retrying -= 1;
            if op.resolver.is_closed() {
                // Its ticket was dropped while it was in flight or waiting
                // (a sweep may have run before it came back): cancel it
                // here, since dispatch asks only after unswept drops.
                self.cancelled(op);
                self.slots.maybe_free(slot);
                continue;
            }
            op.enqueued = now;
            let flushed = op.epoch < self.epochs.current() && self.epochs.flushing();
            self.push_buffer(slot, op);
            if flushed {
                let s = &mut self.slots[slot];
                s.drain = s.queue.len();
            }
            self.evaluate(slot, now);
        }
    }

    pub(super) fn complete(&mut self, done: Done<T, O, E>, now: Instant) {
        let Some(batch) = self.flights.take(done.batch) else {
            return;
        };
        self.stats.in_flight_batches -= 1;
        self.stats.in_flight -= batch.ops;
        self.stats.in_flight_cost -= batch.cost;
        let slot = batch.slot;
        self.slots[slot].in_flight -= 1;

        let mut resolved_ops = batch.ops;
        let mut resolved_cost = batch.cost;
        for (epoch, n) in &batch.epochs.0 {
            self.epochs.resolved(*epoch, u64::from(*n));
        }

        self.stats.completed += done.completed;
        self.stats.failed += done.failed + done.abandoned_count;
        let retried = done.retry.len() as u64;
        if retried > 0 {
            self.observe.count_window(
                self.origin,
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
        self.observe.metrics.ended(done.ended);
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
            self.epochs.unresolved(op.epoch);
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
            let random = self.retries.random();
            let delay = self.cfg.backoff.delay(op.attempts, random);
            self.retries.insert(later(now, delay), slot, op);
        }
        self.stats.target -= resolved_cost;
        self.release(resolved_ops, resolved_cost);

        // The slot may have been held back by its per-key cap, or may now go
        // at once under the load-aware policy.
        self.evaluate(slot, now);
        self.slots.maybe_free(slot);
    }

    pub(super) fn push_buffer(&mut self, slot: usize, op: Queued<T, O, E>) {
        let cost = u64::from(op.cost);
        self.slots[slot].push(op);
        self.stats.buffered += 1;
        self.stats.buffered_cost += cost;
    }

    /// Takes the operations of dropped tickets out of the buffer and the
    /// retry wait.
    pub(super) fn sweep_cancelled(&mut self, now: Instant) {
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
            self.slots.maybe_free(slot);
        }
        for (slot, op) in self.retries.take_cancelled() {
            let c = u64::from(op.cost);
            self.stats.retrying -= 1;
            self.stats.retrying_cost -= c;
            self.slots[slot].retrying -= 1;
            self.cancelled(op);
            self.slots.maybe_free(slot);
        }
    }

    /// Accounts for an operation, already out of every queue, whose ticket
    /// was dropped before it was dispatched.
    pub(super) fn cancelled(&mut self, op: Queued<T, O, E>) {
        self.observe.cancelled_unreported += 1;
        self.stats.cancelled += 1;
        self.stats.target -= u64::from(op.cost);
        self.epochs.resolved(op.epoch, 1);
        self.release(1, u64::from(op.cost));
    }

    /// The shutdown deadline passed: resolve everything not in flight as
    /// abandoned, and tell the in-flight batches to drop their handlers.
    pub(super) fn abandon_all(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                self.abandon_buffered(slot);
            }
        }
        let retries: Vec<_> = self.retries.take_all().collect();
        for (slot, op) in retries {
            let c = u64::from(op.cost);
            self.stats.retrying -= 1;
            self.stats.retrying_cost -= c;
            self.slots[slot].retrying -= 1;
            self.abandon(slot, op);
        }
        self.ready.clear();
        for slot in 0..self.slots.len() {
            self.slots[slot].listed = false;
            self.slots.maybe_free(slot);
        }
        self.flights.run.abort.cancel();
    }

    pub(super) fn abandon_buffered(&mut self, slot: usize) {
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
        self.epochs.resolved(op.epoch, 1);
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

    /// Gives resolved operations' buffer permits back.
    fn release(&mut self, ops: u64, cost: u64) {
        self.shared.admission.release(ops, cost);
    }
}
