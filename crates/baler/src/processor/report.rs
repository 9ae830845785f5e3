//! Per-batch figures: a [`BatchReport`] for every batch on the processor's
//! event stream, and running totals in [`ProcessorStats`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::events::Events;

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchOutcome {
    /// The operations ran and the resource was saved.
    Saved,
    /// Every caller of the batch had given up before its operation ran:
    /// nothing ran, so nothing was loaded or saved.
    Skipped,
    /// The load failed; no operation ran.
    LoadFailed,
    /// The load ran past `max_store_time`; no operation ran.
    LoadTimedOut,
    /// The save failed; the operations' effects were not persisted.
    SaveFailed,
    /// The save ran past `max_store_time` and was dropped.
    SaveTimedOut,
    /// An operation panicked; the resource was thrown away unsaved.
    Panicked,
}

/// What one batch did, sent on [`Processor::events`](crate::processor::Processor::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchReport<K> {
    /// The key.
    pub key: K,
    /// Operations in the batch.
    pub operations: usize,
    /// Operations that ran on the resource.
    pub applied: usize,
    /// Operations whose caller had given up, which did not run.
    pub cancelled: usize,
    /// How long the load took (zero if there was none).
    pub load_time: Duration,
    /// How long the save took, if there was one.
    pub save_time: Option<Duration>,
    /// How the batch ended.
    pub outcome: BatchOutcome,
}

/// Running totals of a processor, since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessorStats {
    /// Batches handled, whatever their outcome.
    pub batches: u64,
    /// Loads that succeeded.
    pub loads: u64,
    /// Saves that succeeded.
    pub saves: u64,
    /// Loads that failed or timed out.
    pub load_failures: u64,
    /// Saves that failed or timed out.
    pub save_failures: u64,
    /// Batches thrown away because an operation panicked.
    pub panics: u64,
    /// Operations that ran on a resource (saved or not).
    pub applied: u64,
    /// Operations that did not run because their caller had given up, once
    /// their batch was formed (those taken out before are not counted here).
    pub cancelled: u64,
    /// Total time spent loading.
    pub load_time: Duration,
    /// Total time spent saving.
    pub save_time: Duration,
}

/// The totals, kept with atomics by the batches' tasks.
pub(crate) struct Figures<K> {
    batches: AtomicU64,
    loads: AtomicU64,
    saves: AtomicU64,
    load_failures: AtomicU64,
    save_failures: AtomicU64,
    panics: AtomicU64,
    applied: AtomicU64,
    cancelled: AtomicU64,
    load_nanos: AtomicU64,
    save_nanos: AtomicU64,
    events: broadcast::Sender<BatchReport<K>>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<K: Clone> Figures<K> {
    pub(crate) fn new(event_capacity: usize) -> Self {
        Figures {
            batches: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            saves: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            save_failures: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            load_nanos: AtomicU64::new(0),
            save_nanos: AtomicU64::new(0),
            events: broadcast::channel(event_capacity).0,
        }
    }

    pub(crate) fn record(&self, report: BatchReport<K>) {
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        let loaded = !matches!(
            report.outcome,
            BatchOutcome::Skipped | BatchOutcome::LoadFailed | BatchOutcome::LoadTimedOut
        );
        add(&self.loads, u64::from(loaded));
        add(
            &self.load_failures,
            u64::from(matches!(
                report.outcome,
                BatchOutcome::LoadFailed | BatchOutcome::LoadTimedOut
            )),
        );
        add(
            &self.saves,
            u64::from(report.outcome == BatchOutcome::Saved),
        );
        add(
            &self.save_failures,
            u64::from(matches!(
                report.outcome,
                BatchOutcome::SaveFailed | BatchOutcome::SaveTimedOut
            )),
        );
        add(
            &self.panics,
            u64::from(report.outcome == BatchOutcome::Panicked),
        );
        add(&self.applied, report.applied as u64);
        add(&self.cancelled, report.cancelled as u64);
        add(&self.load_nanos, nanos(report.load_time));
        add(&self.save_nanos, report.save_time.map_or(0, nanos));
        // Counted last, so that a reader who sees the batch sees its figures.
        self.batches.fetch_add(1, Ordering::Release);
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(report);
        }
    }

    pub(crate) fn snapshot(&self) -> ProcessorStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let batches = self.batches.load(Ordering::Acquire);
        ProcessorStats {
            batches,
            loads: get(&self.loads),
            saves: get(&self.saves),
            load_failures: get(&self.load_failures),
            save_failures: get(&self.save_failures),
            panics: get(&self.panics),
            applied: get(&self.applied),
            cancelled: get(&self.cancelled),
            load_time: Duration::from_nanos(get(&self.load_nanos)),
            save_time: Duration::from_nanos(get(&self.save_nanos)),
        }
    }

    pub(crate) fn subscribe(&self) -> Events<BatchReport<K>>
    where
        K: Clone + Send + 'static,
    {
        Events::new(self.events.subscribe())
    }
}
