//! Flush and shutdown: waiting until what was accepted has resolved.
//!
//! Owns the flush epochs (operations outstanding per epoch, and the callers
//! of `flush` waiting for theirs) and the shutdown in progress (its
//! deadline, its callers, its report).
//!
//! # Invariants
//!
//! - Every operation belongs to the epoch current when it was accepted, and
//!   is counted there until it resolves (a retry stays counted). A flush
//!   starts a new epoch and is answered once its own and every earlier
//!   epoch's count reaches zero.
//! - A shutdown is finished when nothing is held (buffered, retrying, in
//!   flight) **and** every buffer permit is back: a submitter that took a
//!   permit before the intake closed may still push, and the engine must be
//!   there to take it.
//! - After the deadline passes nothing more is dispatched: whatever is held
//!   or arrives later is abandoned and returned in the report.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Engine;
use crate::events::Event;
use crate::shutdown::ShutdownReport;

/// Outstanding operations per flush epoch, and the flushes waiting.
pub(super) struct Epochs {
    /// Outstanding operations per epoch, starting at `base`.
    counts: VecDeque<u64>,
    base: u64,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
}

impl Epochs {
    pub(super) fn new() -> Self {
        Epochs {
            counts: VecDeque::from([0]),
            base: 0,
            waiters: Vec::new(),
        }
    }

    /// The epoch operations accepted now belong to.
    #[inline]
    pub(super) fn current(&self) -> u64 {
        self.base + self.counts.len() as u64 - 1
    }

    /// Counts `n` operations accepted into the current epoch.
    #[inline]
    pub(super) fn accepted(&mut self, n: u64) {
        if let Some(count) = self.counts.back_mut() {
            *count += n;
        }
    }

    /// Whether a flush is waiting.
    pub(super) fn flushing(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Answers every flush: the engine is stopping, and everything it
    /// accepted has resolved.
    fn answer_all(&mut self) {
        for (_, waiter) in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Starts a new epoch for a flush that waits for everything before it.
    fn open(&mut self, reply: oneshot::Sender<()>) {
        let epoch = self.current();
        self.counts.push_back(0);
        self.waiters.push((epoch, reply));
    }

    pub(super) fn resolved(&mut self, epoch: u64, n: u64) {
        if let Some(count) = epoch
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            debug_assert!(*count >= n, "an epoch resolves no more than it holds");
            *count -= n;
        }
    }

    /// An operation of `epoch` that had resolved is held again (a retry).
    pub(super) fn unresolved(&mut self, epoch: u64) {
        if let Some(count) = epoch
            .checked_sub(self.base)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            *count += 1;
        }
    }

    /// Answers the flushes whose operations have all resolved.
    pub(super) fn settle(&mut self) {
        while self.counts.len() > 1 && self.counts.front() == Some(&0) {
            self.counts.pop_front();
            self.base += 1;
        }
        if self.waiters.is_empty() {
            return;
        }
        let base = self.base;
        let waiters = std::mem::take(&mut self.waiters);
        for (epoch, reply) in waiters {
            if epoch < base {
                let _ = reply.send(());
            } else {
                self.waiters.push((epoch, reply));
            }
        }
    }
}

/// A shutdown in progress.
pub(super) struct Closing<T, K> {
    pub(super) deadline: Option<Instant>,
    pub(super) deadline_passed: bool,
    pub(super) waiters: Vec<oneshot::Sender<ShutdownReport<T, K>>>,
    pub(super) report: ShutdownReport<T, K>,
}

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    pub(super) fn flush(&mut self, reply: oneshot::Sender<()>, now: Instant) {
        self.epochs.open(reply);
        for slot in 0..self.slots.len() {
            if self.slots[slot].live {
                let s = &mut self.slots[slot];
                s.drain = s.queue.len();
            }
        }
        self.evaluate_all(now);
    }

    pub(super) fn begin_shutdown(
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
        let first = self.shared.admission.close();
        if first {
            self.emit(|| Event::ShutdownStarted {
                deadline: deadline.map(|d| d.saturating_duration_since(now)),
            });
        }
        self.evaluate_all(now);
    }

    /// Whether the shutdown is complete: nothing held and nothing in transit.
    pub(super) fn finished(&self) -> bool {
        self.closing.is_some() && self.stats.pending() == 0 && self.shared.admission.idle()
    }

    pub(super) fn finish(&mut self) {
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
        self.epochs.answer_all();
    }
}
