//! What passes between the handles and the engine: the [`Msg`]s on the
//! engine's channel, and [`Shared`], the state both sides hold (the engine's
//! inbox: its channel's sender, and the [`Admission`] through which submits
//! arrive; the published stats; how a stopped engine is told apart).
//!
//! In the manner of tower's `buffer`, this is the module both sides import,
//! so that the handle (`batcher`) and the worker (the engine) never import
//! each other.
//!
//! # Invariants
//!
//! - Submits travel through the intake, everything else on the channel; a
//!   command takes the intake before it acts, so it never overtakes a submit
//!   sent before it (see [`Intake`](crate::intake::Intake)).
//! - `stopped` is cancelled once the engine is gone, whether its loop ended
//!   or its task was dropped: a request it never read stops waiting then.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Padded};
use crate::capacity::{Capacity, Notice};
use crate::diagnose::Diagnosis;
use crate::events::Event;
use crate::queued::Submitted;
use crate::run::Done;
use crate::shutdown::ShutdownReport;
use crate::slot::CancelCount;
use crate::stats::Stats;
use crate::ticket::{CancelShard, CancelSink};

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

/// State shared by the handles, the tickets and the engine.
pub(crate) struct Shared<T, K, O, E> {
    pub(crate) tx: UnboundedSender<Msg<T, K, O, E>>,
    /// The buffer's door: the intake, the permits, the closed flag.
    pub(crate) admission: Admission<Submitted<T, K, O, E>>,
    pub(crate) stats: Padded<Mutex<Stats>>,
    pub(crate) max_batch_cost: u64,
    pub(crate) buffer_cost: Option<u64>,
    /// The lowest of `max_batch_cost`, `buffer_cost` and the capacity's
    /// maximum burst if that never changes: a submit's quick check.
    pub(crate) fixed_cost_limit: u64,
    /// Whether `fixed_cost_limit` covers the capacity's maximum burst;
    /// otherwise a submit asks the capacity each time (reading it is a
    /// cache miss when another thread spends from the capacity).
    pub(crate) max_burst_is_fixed: bool,
    /// Where a ticket dropped unresolved reports it: one of several
    /// handles, by thread, so that the tickets of different threads do not
    /// all count references on one cache line.
    pub(crate) cancel_sinks: Box<[Arc<CancelShard>]>,
    pub(crate) capacity: Capacity,
    /// The engine owns the only strong sender, so listeners see the stream
    /// close when the engine stops, even while handles are alive.
    pub(crate) events: broadcast::WeakSender<Event<K>>,
    /// Tickets dropped before their operation resolved, ever.
    pub(crate) cancels: CancelCount,
    /// Cancelled when the engine is gone (its loop ended, or its task was
    /// dropped with the runtime): a request it never read stops waiting.
    pub(crate) stopped: CancellationToken,
    /// The counts of the finished shutdown, for a caller whose request the
    /// engine never read.
    pub(crate) final_report: Mutex<Option<ShutdownReport<T, K>>>,
}

impl<T, K, O, E> Shared<T, K, O, E> {
    /// How many tickets were dropped before their operation resolved.
    pub(crate) fn cancels_reported(&self) -> u64 {
        self.cancels.reported()
    }

    /// Reports a full buffer once per episode.
    pub(crate) fn report_full(&self)
    where
        K: Clone,
    {
        if !self.admission.first_full() {
            return;
        }
        if let Some(events) = self.events.upgrade().filter(|e| e.receiver_count() > 0) {
            let _ = events.send(Event::BufferFull {
                operations: self.admission.held() as u64,
            });
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
