//! What a batcher runs with: the dispatch policy, where batches run, the
//! retry backoff, and the validated settings that the engine reads.
//!
//! The [`Builder`](crate::Builder) (in `config`) produces a [`Config`]; the
//! engine and the handles read it and never see the builder, so that neither
//! depends on the module that builds them.

use std::time::Duration;

use crate::capacity::Capacity;

/// When a batch that has not filled up is dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Dispatch {
    /// Nagle-like, and the default: when no batch is in flight, dispatch what
    /// is buffered at once; while batches are in flight, let the next one fill
    /// up to its maximum size or cost, or until its linger runs out.
    ///
    /// A lone request at low load is answered without waiting out a timer (a
    /// 1 ms tokio sleep costs about 2 ms in practice), and under load the
    /// batches are as full as with [`Dispatch::Linger`], because the
    /// in-flight batches are what the next one waits behind.
    #[default]
    LoadAware,
    /// Always wait for a full batch or the linger, even when idle: the fewest,
    /// fullest batches, at the price of up to one linger of latency per request.
    Linger,
}

/// Where a batch's handler future runs.
///
/// [`Execution::Inline`] is the faster where batches are small: it saves a
/// spawn and a report message per batch and sees each batch end at once. In
/// `docs/benchmarks.md` (no-op handler) it is about 1.4× the throughput of
/// [`Execution::Spawned`] at 16 submitters and about 0.6× its median latency
/// at one; at 256 submitters, where batches are full, the two are level.
/// [`Execution::Spawned`] is the default all the same, because it keeps the
/// engine answering whatever the handler does: a handler that blocks its
/// thread (a synchronous driver, a long computation) still leaves intake,
/// timeouts and [`diagnose`](crate::Batcher::diagnose) working, which is how
/// `diagnose()` can say that a batch is overdue. Choose `Inline` when the
/// handler only awaits I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Execution {
    /// Each batch runs on a task of its own (`tokio::spawn`), and the default.
    ///
    /// Batches run in parallel with each other and with the engine on a
    /// multi-thread runtime, so a handler that spends CPU (serialising a large
    /// batch, say) or even blocks its thread never holds up intake,
    /// dispatching or [`diagnose`](crate::Batcher::diagnose). The price is a
    /// task spawn and one message back to the engine per batch.
    #[default]
    Spawned,
    /// The engine's own task polls the handler futures of its batches.
    ///
    /// No spawn and no report message per batch, and the engine sees a batch
    /// end the moment it ends: the most throughput when the handler is cheap
    /// or waits on I/O (the benchmark's no-op handler goes about twice as
    /// fast). But the handlers' CPU time is the engine's: a handler that
    /// computes for long, or blocks its thread, stalls intake and dispatch
    /// until it yields. Use it for handlers that only await I/O, and move CPU
    /// work into `spawn_blocking` inside the handler.
    Inline,
}

/// Exponential backoff with jitter between attempts of a retried operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the second attempt.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempts + 1`, given a random fraction in
    /// `[0, 1)`: `min(max, base × 2^(attempts-1))`, jittered into its upper half,
    /// so that retried operations spread out but never come back at once.
    pub(crate) fn delay(&self, attempts: u32, random: f64) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.max);
        // Not `mul_f64`: it panics when the product rounds past
        // `Duration::MAX`, which a factor that rounds to 1.0 does for a
        // maximum near it.
        let factor = 0.5 + random.clamp(0.0, 1.0) / 2.0;
        Duration::try_from_secs_f64(full.as_secs_f64() * factor)
            .map_or(full, |jittered| jittered.min(full))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
        }
    }
}

/// The validated settings the engine runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) max_batch_size: usize,
    pub(crate) max_batch_cost: u64,
    pub(crate) min_batch_size: usize,
    pub(crate) linger: Duration,
    pub(crate) ticker: Duration,
    pub(crate) dispatch: Dispatch,
    pub(crate) execution: Execution,
    pub(crate) max_in_flight: usize,
    pub(crate) max_in_flight_per_key: usize,
    pub(crate) buffer_size: usize,
    pub(crate) buffer_cost: Option<u64>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_operation_time: Option<Duration>,
    pub(crate) retry_timeouts: bool,
    pub(crate) capacity: Capacity,
    pub(crate) event_capacity: usize,
    pub(crate) audit_interval: Option<Duration>,
    pub(crate) name: std::sync::Arc<str>,
}
