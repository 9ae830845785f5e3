//! Observation: what the engine tells the world about itself. Events,
//! metrics, the stats snapshot the handles read, the target reported to the
//! capacity, the recent-activity window `diagnose()` reads, and the audit.
//!
//! Owns only what is needed to report: the event sender, the metric
//! handles, and what was last reported (so that an event says what changed,
//! and a `TargetChanged` is coalesced). Nothing here decides what the engine
//! does; a room calls [`Observation::emit`] and goes on.
//!
//! # Invariants
//!
//! - An event is built only when someone listens, and a slow listener never
//!   holds the engine up (the broadcast drops its oldest events instead).
//! - The stats the handles read are published once per turn, whole, so a
//!   snapshot is consistent in itself.
//! - The audit recounts the target from what is held: buffered, retrying and
//!   in flight. A mismatch is a bug in baler, reported, never repaired.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::Engine;
use crate::capacity::TargetSlot;
use crate::events::Event;
use crate::instruments::EngineMetrics;

/// The least time between two `TargetChanged` events.
const TARGET_EVENT_INTERVAL: Duration = Duration::from_millis(100);

/// How far back `diagnose()` looks for a retry storm or small batches, in
/// seconds.
pub(super) const RETRY_WINDOW_SECS: u64 = 10;

/// What was dispatched and retried in one second, for `diagnose()`.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct WindowSecond {
    pub(super) second: u64,
    pub(super) dispatched: u64,
    pub(super) retried: u64,
    pub(super) batches: u64,
    pub(super) cost: u64,
}

impl WindowSecond {
    pub(super) fn add(&mut self, other: &WindowSecond) {
        self.dispatched += other.dispatched;
        self.retried += other.retried;
        self.batches += other.batches;
        self.cost += other.cost;
    }
}

/// What the engine reports, and what it last reported.
pub(super) struct Observation<K> {
    pub(super) events: broadcast::Sender<Event<K>>,
    /// The metrics handles (empty without the `metrics` feature).
    pub(super) metrics: EngineMetrics,
    /// Where the target is reported to the capacity.
    pub(super) target_slot: TargetSlot,
    /// The capacity rate last reported.
    pub(super) last_rate: Option<u64>,
    /// The target last reported, and when.
    target_reported: (u64, Option<Instant>),
    /// When a coalesced `TargetChanged` is due.
    pub(super) target_report_at: Option<Instant>,
    /// Cancellations not yet reported in an event.
    pub(super) cancelled_unreported: u64,
    /// When the next periodic audit is due.
    pub(super) audit_at: Option<Instant>,
    /// The last audit's mismatch, if it found one: (target, recounted).
    pub(super) audit_mismatch: Option<(u64, u64)>,
    /// Per-second counts of dispatched and retried operations.
    pub(super) window: VecDeque<WindowSecond>,
}

impl<K> Observation<K> {
    pub(super) fn new(
        events: broadcast::Sender<Event<K>>,
        metrics: EngineMetrics,
        target_slot: TargetSlot,
        last_rate: Option<u64>,
    ) -> Self {
        Observation {
            events,
            metrics,
            target_slot,
            last_rate,
            target_reported: (0, None),
            target_report_at: None,
            cancelled_unreported: 0,
            audit_at: None,
            audit_mismatch: None,
            window: VecDeque::new(),
        }
    }

    /// Sends an event if anyone listens; the event is only built then.
    #[inline]
    pub(super) fn emit(&self, event: impl FnOnce() -> Event<K>) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event());
        }
    }

    /// Emits `TargetChanged` when the target moved, at most once per
    /// interval; a change inside the interval is reported when it ends.
    fn report_target(&mut self, target: u64, now: Instant) {
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

    /// Counts dispatched and retried operations in the current second.
    pub(super) fn count_window(&mut self, origin: Instant, now: Instant, counts: WindowSecond) {
        let second = now.saturating_duration_since(origin).as_secs();
        match self.window.back_mut() {
            Some(w) if w.second == second => w.add(&counts),
            _ => self.window.push_back(WindowSecond { second, ..counts }),
        }
        while self
            .window
            .front()
            .is_some_and(|w| w.second + RETRY_WINDOW_SECS <= second)
        {
            self.window.pop_front();
        }
    }
}

impl<T, K, O, E> Engine<T, K, O, E>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Sends an event if anyone listens; the event is only built then.
    #[inline]
    pub(super) fn emit(&self, event: impl FnOnce() -> Event<K>) {
        self.observe.emit(event);
    }

    /// Publishes the turn's stats: to the handles, the capacity, the
    /// metrics, and as events for what changed.
    pub(super) fn publish(&mut self, now: Instant) {
        self.stats.paused = self.paused;
        self.stats.shutting_down = self.closing.is_some();
        let rate = self.cfg.capacity.rate();
        self.stats.capacity = rate;
        if rate != self.observe.last_rate {
            self.observe.last_rate = rate;
            self.emit(|| Event::CapacityChanged { rate });
        }
        if self.observe.cancelled_unreported > 0 {
            let count = std::mem::take(&mut self.observe.cancelled_unreported);
            self.emit(|| Event::OperationsCancelled { count });
        }
        self.observe.target_slot.set(self.stats.target);
        self.observe.report_target(self.stats.target, now);
        self.shared.publish(&self.stats);
        let shared = &self.shared;
        self.observe
            .metrics
            .publish(&self.stats, || shared.admission.waiting());
    }

    /// Recounts the cost of everything held and compares it with the target.
    pub(super) fn audit(&mut self) -> bool {
        let buffered: u64 = self
            .slots
            .iter()
            .map(|s| s.queue.iter().map(|op| u64::from(op.cost)).sum::<u64>())
            .sum();
        let retrying: u64 = self.retries.cost();
        let in_flight: u64 = self.flights.iter().map(|b| b.cost).sum();
        let recounted = buffered + retrying + in_flight;
        let target = self.stats.target;
        if recounted == target {
            self.observe.audit_mismatch = None;
            self.emit(|| Event::AuditPassed { target });
            true
        } else {
            self.observe.audit_mismatch = Some((target, recounted));
            self.observe.metrics.audit_failed();
            tracing::error!(
                target,
                recounted,
                "baler audit: the target differs from the cost of what is held"
            );
            self.emit(|| Event::AuditFailed { target, recounted });
            false
        }
    }
}
