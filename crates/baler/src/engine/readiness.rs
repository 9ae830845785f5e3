//! Readiness: which key's next batch may go now, and when the others may.
//!
//! Owns the ready queue (slots whose batch may be dispatched, in the order
//! they became ready) and the timers (a slot's linger or the straggler
//! ticker). Deciding is done from a slot's queue and the engine's gates
//! (pause, shutdown, flush, the per-key in-flight cap, the cost limit); the
//! decision is only ever an entry in the queue or a timer, never a dispatch.
//!
//! # Invariants
//!
//! - A slot is in the ready queue at most once: `listed` says it is there.
//! - A timer entry is live only while its slot's `armed` and `generation`
//!   match it; stale entries are skipped when they fire, so that re-arming
//!   never needs to find the old entry in the heap.
//! - Readiness is checked again when a listed slot reaches the front of the
//!   queue: what was ready may have changed (a cancel, a pause).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::slots::KeySlot;
use super::Engine;
use crate::settings::Dispatch;
use crate::time::later;

/// Whether a slot's next batch may go.
pub(super) enum Readiness {
    Ready,
    At(Instant),
    Hold,
}

/// The ready queue and the timers.
#[derive(Default)]
pub(super) struct Ready {
    /// Slots whose next batch may go, oldest first.
    queue: VecDeque<usize>,
    /// Linger and ticker deadlines: (when, slot, the slot's generation).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Ready {
    /// The slot at the front of the ready queue.
    #[inline]
    pub(super) fn front(&self) -> Option<usize> {
        self.queue.front().copied()
    }

    /// Takes the front slot off the ready queue.
    #[inline]
    pub(super) fn pop(&mut self) {
        self.queue.pop_front();
    }

    /// Empties the ready queue (the slots' `listed` flags are the caller's).
    pub(super) fn clear(&mut self) {
        self.queue.clear();
    }

    /// When the first timer fires.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }
}

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Fires the due timers: each decides again about its slot.
    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.ready.timers.peek().copied() {
            if at > now {
                break;
            }
            self.ready.timers.pop();
            let s = &mut self.slots[slot];
            if s.generation == generation && s.armed == Some(at) {
                s.armed = None;
                self.evaluate(slot, now);
            }
        }
    }

    /// Decides again about a slot that just got one more operation at the
    /// back, if that may have changed anything. It changes nothing for a
    /// slot already in the ready queue, nor for one whose timer is armed,
    /// unless it makes the batch full or reaches the minimum size. (Deciding
    /// is most of the cost of accepting an operation while batches are in
    /// flight.)
    #[inline]
    pub(super) fn pushed(&mut self, slot: usize, now: Instant) {
        let s = &self.slots[slot];
        let unchanged = s.listed
            || (s.armed.is_some()
                && s.queue.len() < self.cfg.max_batch_size
                && s.cost < self.flights.batch_cost_limit
                && s.queue.len() != self.cfg.min_batch_size);
        if !unchanged {
            self.evaluate(slot, now);
        }
    }

    pub(super) fn evaluate_all(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                self.evaluate(slot, now);
            }
        }
    }

    /// Puts the slot in the ready queue if its next batch may go now, or arms
    /// a timer for when it may.
    pub(super) fn evaluate(&mut self, slot: usize, now: Instant) {
        let s = &self.slots[slot];
        if s.listed || s.queue.is_empty() {
            return;
        }
        match self.readiness(s, now) {
            Readiness::Ready => {
                self.slots[slot].listed = true;
                self.ready.queue.push_back(slot);
            }
            Readiness::At(at) => {
                let s = &mut self.slots[slot];
                if s.armed != Some(at) {
                    s.armed = Some(at);
                    self.ready.timers.push(Reverse((at, slot, s.generation)));
                }
            }
            Readiness::Hold => {}
        }
    }

    pub(super) fn readiness(&self, s: &KeySlot<T, K, O, E>, now: Instant) -> Readiness {
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
        if len >= self.cfg.max_batch_size || s.cost >= self.flights.batch_cost_limit {
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
        let since = t.saturating_duration_since(self.origin).as_nanos();
        let ticks = since / period + 1;
        let offset = u64::try_from(ticks.saturating_mul(period)).unwrap_or(u64::MAX);
        later(self.origin, Duration::from_nanos(offset))
    }
}
