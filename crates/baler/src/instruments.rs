//! Metrics through the `metrics` facade (the `metrics` cargo feature).
//!
//! The engine registers its handles once, when the batcher is built, against
//! the recorder current at that moment, and keeps them: recording is then an
//! atomic update, with no allocation and no look-up. Counters follow the
//! engine's [`Stats`] (one delta per engine turn, so they always agree with
//! `stats()`); gauges are set once per turn; per-batch histograms are recorded
//! at dispatch (size, cost, queue wait) and when the handler returns
//! (duration); the one per-operation histogram, latency, by the batch task,
//! off the engine.
//!
//! Without the feature, the same types exist with empty bodies and
//! [`ENABLED`] is `false`, so call sites compile to nothing.
//!
//! The table of metrics is in the crate docs (`lib.rs`, "Metrics"); keep it in
//! step with [`names`].

use crate::events::Ended;

/// Whether metrics are recorded: guards per-operation loops at call sites.
pub(crate) const ENABLED: bool = cfg!(feature = "metrics");

/// Every metric's name, as documented in the crate docs.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod names {
    pub(crate) const SUBMITTED: &str = "baler_operations_submitted_total";
    pub(crate) const COMPLETED: &str = "baler_operations_completed_total";
    pub(crate) const FAILED: &str = "baler_operations_failed_total";
    pub(crate) const RETRIED: &str = "baler_operations_retried_total";
    pub(crate) const CANCELLED: &str = "baler_operations_cancelled_total";
    pub(crate) const BATCHES_DISPATCHED: &str = "baler_batches_dispatched_total";
    pub(crate) const BATCHES_ENDED: &str = "baler_batches_ended_total";
    pub(crate) const AUDIT_FAILURES: &str = "baler_audit_failures_total";

    pub(crate) const TARGET: &str = "baler_target";
    pub(crate) const CAPACITY: &str = "baler_capacity";
    pub(crate) const BUFFERED: &str = "baler_buffered_operations";
    pub(crate) const BUFFERED_COST: &str = "baler_buffered_cost";
    pub(crate) const RETRYING: &str = "baler_retrying_operations";
    pub(crate) const IN_FLIGHT_BATCHES: &str = "baler_in_flight_batches";
    pub(crate) const IN_FLIGHT: &str = "baler_in_flight_operations";
    pub(crate) const WAITING_SUBMITTERS: &str = "baler_waiting_submitters";
    pub(crate) const PAUSED: &str = "baler_paused";

    pub(crate) const BATCH_SIZE: &str = "baler_batch_size";
    pub(crate) const BATCH_COST: &str = "baler_batch_cost";
    pub(crate) const QUEUE_WAIT: &str = "baler_queue_wait_seconds";
    pub(crate) const HANDLER_DURATION: &str = "baler_handler_duration_seconds";
    pub(crate) const LATENCY: &str = "baler_operation_latency_seconds";

    /// The label every metric carries: the batcher's name.
    pub(crate) const BATCHER: &str = "batcher";
    /// The label of `baler_batches_ended_total`: how the batch ended.
    pub(crate) const OUTCOME: &str = "outcome";
}

/// The `outcome` label's values, by index into `EngineMetrics::ended`.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
const OUTCOMES: [&str; 6] = [
    "ok",
    "handler_error",
    "panicked",
    "outcome_count",
    "timed_out",
    "abandoned",
];

#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
fn outcome_index(ended: Ended) -> usize {
    use crate::events::BatchFailure;
    match ended {
        Ended::Outcomes => 0,
        Ended::Failed(BatchFailure::Handler) => 1,
        Ended::Failed(BatchFailure::Panicked) => 2,
        Ended::Failed(BatchFailure::OutcomeCount) => 3,
        Ended::TimedOut(_) => 4,
        Ended::Abandoned => 5,
    }
}

#[cfg(feature = "metrics")]
mod imp {
    use std::sync::Arc;
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, SharedString, Unit};

    use super::names::*;
    use super::{outcome_index, OUTCOMES};
    use crate::events::Ended;
    use crate::stats::Stats;

    /// The counters that follow [`Stats`], as last published.
    #[derive(Default)]
    struct Counted {
        submitted: u64,
        completed: u64,
        failed: u64,
        retried: u64,
        cancelled: u64,
        batches: u64,
    }

    /// The engine's handles.
    pub(crate) struct EngineMetrics {
        submitted: Counter,
        completed: Counter,
        failed: Counter,
        retried: Counter,
        cancelled: Counter,
        batches: Counter,
        ended: [Counter; 6],
        audit_failures: Counter,
        target: Gauge,
        capacity: Gauge,
        buffered: Gauge,
        buffered_cost: Gauge,
        retrying: Gauge,
        in_flight_batches: Gauge,
        in_flight: Gauge,
        waiting_submitters: Gauge,
        paused: Gauge,
        batch_size: Histogram,
        batch_cost: Histogram,
        queue_wait: Histogram,
        last: Counted,
        batch: BatchMetrics,
    }

    /// The batch tasks' handles; cloning is one reference count.
    #[derive(Clone)]
    pub(crate) struct BatchMetrics(Arc<BatchHandles>);

    struct BatchHandles {
        handler_duration: Histogram,
        latency: Histogram,
    }

    fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(SUBMITTED, "Operations accepted.");
        describe_counter!(COMPLETED, "Operations resolved with an output.");
        describe_counter!(
            FAILED,
            "Operations resolved with an error (handler error, exhausted retries, timeout, panic, abandoned)."
        );
        describe_counter!(
            RETRIED,
            "Times an operation was put back for another attempt."
        );
        describe_counter!(
            CANCELLED,
            "Operations taken out because their ticket was dropped before dispatch."
        );
        describe_counter!(BATCHES_DISPATCHED, "Batches handed to the handler.");
        describe_counter!(BATCHES_ENDED, "Batches ended, by how they ended.");
        describe_counter!(
            AUDIT_FAILURES,
            "Audits that found the target differing from the cost of what is held (a bug)."
        );
        describe_gauge!(
            TARGET,
            "The cost of everything held: buffered, retrying and in flight."
        );
        describe_gauge!(
            CAPACITY,
            "The capacity's rate in cost per second (infinite when unlimited)."
        );
        describe_gauge!(BUFFERED, "Operations waiting in the buffer.");
        describe_gauge!(BUFFERED_COST, "The cost of the operations in the buffer.");
        describe_gauge!(RETRYING, "Operations waiting out a retry backoff.");
        describe_gauge!(IN_FLIGHT_BATCHES, "Batches whose handler is running.");
        describe_gauge!(IN_FLIGHT, "Operations in the batches in flight.");
        describe_gauge!(
            WAITING_SUBMITTERS,
            "Submitters waiting for room in the buffer."
        );
        describe_gauge!(PAUSED, "1 while dispatching is paused, else 0.");
        describe_histogram!(BATCH_SIZE, Unit::Count, "Operations per dispatched batch.");
        describe_histogram!(BATCH_COST, "Cost per dispatched batch.");
        describe_histogram!(
            QUEUE_WAIT,
            Unit::Seconds,
            "Per batch: how long its oldest operation waited in the buffer before dispatch."
        );
        describe_histogram!(
            HANDLER_DURATION,
            Unit::Seconds,
            "Per batch: how long the handler ran."
        );
        describe_histogram!(
            LATENCY,
            Unit::Seconds,
            "Per operation: from submit to its ticket's resolution, across retries."
        );
    }

    impl EngineMetrics {
        pub(crate) fn new(name: &Arc<str>) -> Self {
            describe();
            let label = || [(BATCHER, SharedString::from(Arc::clone(name)))];
            let counter = |n: &'static str| metrics::counter!(n, &label());
            let gauge = |n: &'static str| metrics::gauge!(n, &label());
            let histogram = |n: &'static str| metrics::histogram!(n, &label());
            let ended = OUTCOMES.map(|outcome| {
                metrics::counter!(
                    BATCHES_ENDED,
                    BATCHER => SharedString::from(Arc::clone(name)),
                    OUTCOME => outcome
                )
            });
            EngineMetrics {
                submitted: counter(SUBMITTED),
                completed: counter(COMPLETED),
                failed: counter(FAILED),
                retried: counter(RETRIED),
                cancelled: counter(CANCELLED),
                batches: counter(BATCHES_DISPATCHED),
                ended,
                audit_failures: counter(AUDIT_FAILURES),
                target: gauge(TARGET),
                capacity: gauge(CAPACITY),
                buffered: gauge(BUFFERED),
                buffered_cost: gauge(BUFFERED_COST),
                retrying: gauge(RETRYING),
                in_flight_batches: gauge(IN_FLIGHT_BATCHES),
                in_flight: gauge(IN_FLIGHT),
                waiting_submitters: gauge(WAITING_SUBMITTERS),
                paused: gauge(PAUSED),
                batch_size: histogram(BATCH_SIZE),
                batch_cost: histogram(BATCH_COST),
                queue_wait: histogram(QUEUE_WAIT),
                last: Counted::default(),
                batch: BatchMetrics(Arc::new(BatchHandles {
                    handler_duration: histogram(HANDLER_DURATION),
                    latency: histogram(LATENCY),
                })),
            }
        }

        /// Once per engine turn: counters by their delta since the last
        /// turn, gauges to their current value.
        pub(crate) fn publish(&mut self, s: &Stats, waiting_submitters: impl FnOnce() -> usize) {
            fn bump(counter: &Counter, last: &mut u64, now: u64) {
                if now > *last {
                    counter.increment(now - *last);
                    *last = now;
                }
            }
            let last = &mut self.last;
            bump(&self.submitted, &mut last.submitted, s.submitted);
            bump(&self.completed, &mut last.completed, s.completed);
            bump(&self.failed, &mut last.failed, s.failed);
            bump(&self.retried, &mut last.retried, s.retried);
            bump(&self.cancelled, &mut last.cancelled, s.cancelled);
            bump(&self.batches, &mut last.batches, s.batches);
            self.target.set(s.target as f64);
            self.capacity
                .set(s.capacity.map_or(f64::INFINITY, |rate| rate as f64));
            self.buffered.set(s.buffered as f64);
            self.buffered_cost.set(s.buffered_cost as f64);
            self.retrying.set(s.retrying as f64);
            self.in_flight_batches.set(s.in_flight_batches as f64);
            self.in_flight.set(s.in_flight as f64);
            self.waiting_submitters.set(waiting_submitters() as f64);
            self.paused.set(if s.paused { 1.0 } else { 0.0 });
        }

        /// A batch was dispatched; its oldest operation waited `wait`.
        pub(crate) fn dispatched(&self, size: u64, cost: u64, wait: Duration) {
            self.batch_size.record(size as f64);
            self.batch_cost.record(cost as f64);
            self.queue_wait.record(wait.as_secs_f64());
        }

        /// A batch's task reported how the batch ended.
        pub(crate) fn ended(&self, ended: Ended) {
            self.ended[outcome_index(ended)].increment(1);
        }

        /// The audit found a mismatch.
        pub(crate) fn audit_failed(&self) {
            self.audit_failures.increment(1);
        }

        /// The handles a batch task records with.
        pub(crate) fn batch(&self) -> BatchMetrics {
            self.batch.clone()
        }
    }

    impl BatchMetrics {
        pub(crate) fn handler_duration(&self, duration: Duration) {
            self.0.handler_duration.record(duration.as_secs_f64());
        }

        /// `count` operations resolved `seconds` after they were accepted.
        pub(crate) fn latency_secs(&self, seconds: f64, count: usize) {
            self.0.latency.record_many(seconds, count);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::events::Ended;
    use crate::stats::Stats;

    /// Nothing: the `metrics` feature is off.
    pub(crate) struct EngineMetrics;

    /// Nothing: the `metrics` feature is off.
    #[derive(Clone, Copy)]
    pub(crate) struct BatchMetrics;

    impl EngineMetrics {
        #[inline(always)]
        pub(crate) fn new(_name: &Arc<str>) -> Self {
            EngineMetrics
        }
        #[inline(always)]
        pub(crate) fn publish(&mut self, _s: &Stats, _waiting: impl FnOnce() -> usize) {}
        #[inline(always)]
        pub(crate) fn dispatched(&self, _size: u64, _cost: u64, _wait: Duration) {}
        #[inline(always)]
        pub(crate) fn ended(&self, _ended: Ended) {}
        #[inline(always)]
        pub(crate) fn audit_failed(&self) {}
        #[inline(always)]
        pub(crate) fn batch(&self) -> BatchMetrics {
            BatchMetrics
        }
    }

    impl BatchMetrics {
        #[inline(always)]
        pub(crate) fn handler_duration(&self, _duration: Duration) {}
        #[inline(always)]
        pub(crate) fn latency_secs(&self, _seconds: f64, _count: usize) {}
    }
}

pub(crate) use imp::{BatchMetrics, EngineMetrics};
