//! The builder: how a batcher forms batches, how much it holds, and how it
//! retries. Every setting has a default; [`Builder::build`] checks them together.

use std::sync::Arc;
use std::time::Duration;

use crate::batcher::Batcher;
use crate::capacity::Capacity;
use crate::error::ConfigError;
use crate::handler::Handler;
use crate::limits::{check_duration, check_event_capacity};
use crate::settings::{Backoff, Config, Dispatch, Execution};

/// Builds a [`Batcher`]. Start from [`Batcher::builder`].
///
/// ```
/// use std::time::Duration;
/// use baler::{handler_fn, Batch, Batcher, Capacity};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let batcher = Batcher::builder()
///     .max_batch_size(50)
///     .linger(Duration::from_millis(2))
///     .max_in_flight(4)
///     .capacity(Capacity::provisioned(10_000)?)
///     .build(handler_fn(|batch: Batch<u64>| async move {
///         Ok::<_, std::io::Error>(batch.done_all(()))
///     }))?;
/// batcher.submit(1).await?.await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder {
    max_batch_size: usize,
    max_batch_cost: Option<u64>,
    min_batch_size: usize,
    linger: Duration,
    ticker: Duration,
    dispatch: Dispatch,
    execution: Execution,
    max_in_flight: usize,
    max_in_flight_per_key: Option<usize>,
    buffer_size: usize,
    buffer_cost: Option<u64>,
    max_attempts: u32,
    backoff: Backoff,
    max_operation_time: Option<Duration>,
    retry_timeouts: bool,
    capacity: Capacity,
    event_capacity: usize,
    audit_interval: Option<Duration>,
    name: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            max_batch_size: 100,
            max_batch_cost: None,
            min_batch_size: 1,
            linger: Duration::from_millis(5),
            ticker: Duration::from_millis(17),
            dispatch: Dispatch::LoadAware,
            execution: Execution::Spawned,
            max_in_flight: 8,
            max_in_flight_per_key: None,
            buffer_size: 10_000,
            buffer_cost: None,
            max_attempts: 3,
            backoff: Backoff::default(),
            max_operation_time: None,
            retry_timeouts: false,
            capacity: Capacity::unlimited(),
            event_capacity: 1024,
            audit_interval: Some(Duration::from_secs(10)),
            name: "baler".to_owned(),
        }
    }
}

impl Builder {
    /// The most operations in one batch. Default 100.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// The most total cost in one batch. Default: no limit beyond the
    /// capacity's burst.
    pub fn max_batch_cost(mut self, cost: u64) -> Self {
        self.max_batch_cost = Some(cost);
        self
    }

    /// The fewest operations worth a batch. A batch below it waits past its
    /// linger for the next tick of the straggler ticker, then goes anyway, so
    /// nothing waits forever. Default 1.
    pub fn min_batch_size(mut self, n: usize) -> Self {
        self.min_batch_size = n;
        self
    }

    /// How long a batch may wait for more operations, counted from its first
    /// one. Default 5 ms. Zero dispatches whatever is buffered at once; at
    /// most a day.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The period of the straggler ticker that sends batches below the
    /// minimum size. Default 17 ms; at most a day.
    pub fn ticker(mut self, period: Duration) -> Self {
        self.ticker = period;
        self
    }

    /// When a batch that is not full goes. Default [`Dispatch::LoadAware`].
    pub fn dispatch(mut self, policy: Dispatch) -> Self {
        self.dispatch = policy;
        self
    }

    /// Where batches' handler futures run. Default [`Execution::Spawned`].
    pub fn execution(mut self, execution: Execution) -> Self {
        self.execution = execution;
        self
    }

    /// The most batches in flight at once. A hard cap: a batch that timed out
    /// holds its place until its handler's future has been dropped. Default 8.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The most batches of one key in flight at once. Default: the global limit.
    pub fn max_in_flight_per_key(mut self, n: usize) -> Self {
        self.max_in_flight_per_key = Some(n);
        self
    }

    /// The most operations the batcher holds: it counts each operation from
    /// acceptance until it resolves (buffered, in flight or waiting to retry),
    /// so memory stays bounded however slow the handler is. When it is full,
    /// [`submit`](Batcher::submit) waits in arrival order. Default 10,000.
    pub fn buffer_size(mut self, n: usize) -> Self {
        self.buffer_size = n;
        self
    }

    /// The most total cost the batcher holds, counted like
    /// [`buffer_size`](Self::buffer_size). Default: no limit.
    pub fn buffer_cost(mut self, cost: u64) -> Self {
        self.buffer_cost = Some(cost);
        self
    }

    /// How many times an operation may be dispatched in all; an attempt
    /// counts when its batch is dispatched. 1 disables retries. Default 3.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff between attempts. Default 10 ms doubling up to 1 s. The
    /// maximum must be at least the base, and at most a day.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff { base, max };
        self
    }

    /// How long a batch's handler may run. Past it, the handler's future is
    /// dropped and the batch's operations resolve with
    /// [`Error::TimedOut`](crate::Error::TimedOut) (or are retried, see
    /// [`retry_timeouts`](Self::retry_timeouts)). Default: no limit; at
    /// most a day.
    pub fn max_operation_time(mut self, limit: Duration) -> Self {
        self.max_operation_time = Some(limit);
        self
    }

    /// Whether operations of a timed-out batch are retried (while attempts
    /// remain). Default false: a write that timed out may still have been
    /// applied, and only the handler can know whether repeating it is safe.
    pub fn retry_timeouts(mut self, retry: bool) -> Self {
        self.retry_timeouts = retry;
        self
    }

    /// The capacity dispatching spends. Default [`Capacity::unlimited`].
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = capacity;
        self
    }

    /// How many events each listener may fall behind before it misses some.
    /// Default 1,024; at most 2^20 (1,048,576), since each slot is allocated
    /// up front.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// How often the engine audits its target against a recount of what it
    /// holds, while it holds anything; `None` audits only on
    /// [`diagnose`](Batcher::diagnose). Default every 10 s; at most a day.
    pub fn audit_interval(mut self, every: Option<Duration>) -> Self {
        self.audit_interval = every;
        self
    }

    /// The batcher's name: the `batcher` field of its batch spans. Default `"baler"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub(crate) fn validate(self) -> Result<Config, ConfigError> {
        let zero = |setting, hint| Err(ConfigError::Zero { setting, hint });
        if self.max_batch_size == 0 {
            return zero("max_batch_size", "a batch needs room for one operation");
        }
        if self.max_batch_cost == Some(0) {
            return zero(
                "max_batch_cost",
                "leave it unset for no limit, or allow at least one operation's cost",
            );
        }
        if self.min_batch_size == 0 {
            return zero("min_batch_size", "use 1 to send batches of any size");
        }
        if self.min_batch_size > self.max_batch_size {
            return Err(ConfigError::MinAboveMax {
                min: self.min_batch_size,
                max: self.max_batch_size,
            });
        }
        check_duration("linger (milliseconds)", self.linger)?;
        if self.ticker.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "ticker",
                hint: "the straggler ticker's period; the default is 17 ms",
            });
        }
        check_duration("ticker (milliseconds)", self.ticker)?;
        if self.max_in_flight == 0 {
            return zero("max_in_flight", "with 0 no batch could ever be dispatched");
        }
        if self.max_in_flight_per_key == Some(0) {
            return zero(
                "max_in_flight_per_key",
                "with 0 no batch could ever be dispatched",
            );
        }
        if self.buffer_size == 0 {
            return zero("buffer_size", "the buffer must hold at least one operation");
        }
        // The buffer's permit word holds at most usize::MAX >> 2 permits;
        // the limit stays where it was when the buffer used tokio's semaphore.
        let max_permits = (usize::MAX >> 3) as u64;
        if self.buffer_size as u64 > max_permits {
            return Err(ConfigError::TooLarge {
                setting: "buffer_size",
                value: self.buffer_size as u64,
                max: max_permits,
            });
        }
        if self.buffer_size < self.max_batch_size {
            return Err(ConfigError::BufferSmallerThanBatch {
                buffer: self.buffer_size,
                batch: self.max_batch_size,
            });
        }
        match self.buffer_cost {
            Some(0) => {
                return zero(
                    "buffer_cost",
                    "leave it unset for no limit, or allow at least one operation's cost",
                )
            }
            Some(c) if c > max_permits => {
                return Err(ConfigError::TooLarge {
                    setting: "buffer_cost",
                    value: c,
                    max: max_permits,
                })
            }
            _ => {}
        }
        if self.max_attempts == 0 {
            return zero(
                "max_attempts",
                "use 1 to dispatch each operation once, without retries",
            );
        }
        if self.backoff.base.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "backoff (base)",
                hint: "retrying at once hammers a failing datastore; 10 ms is a good start",
            });
        }
        if self.backoff.max < self.backoff.base {
            return Err(ConfigError::BackoffMaxBelowBase {
                base: self.backoff.base,
                max: self.backoff.max,
            });
        }
        check_duration("backoff (maximum, in milliseconds)", self.backoff.max)?;
        if self.event_capacity == 0 {
            return zero(
                "event_capacity",
                "listeners need room for at least one event",
            );
        }
        check_event_capacity("event_capacity", self.event_capacity)?;
        if self.audit_interval == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                setting: "audit_interval",
                hint: "use None to audit only on diagnose()",
            });
        }
        if self.max_operation_time == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                setting: "max_operation_time",
                hint: "leave it unset for no limit",
            });
        }
        if let Some(every) = self.audit_interval {
            check_duration("audit_interval (milliseconds)", every)?;
        }
        if let Some(limit) = self.max_operation_time {
            check_duration("max_operation_time (milliseconds)", limit)?;
        }
        Ok(Config {
            max_batch_size: self.max_batch_size,
            max_batch_cost: self.max_batch_cost.unwrap_or(u64::MAX),
            min_batch_size: self.min_batch_size,
            linger: self.linger,
            ticker: self.ticker,
            dispatch: self.dispatch,
            execution: self.execution,
            max_in_flight: self.max_in_flight,
            max_in_flight_per_key: self
                .max_in_flight_per_key
                .unwrap_or(self.max_in_flight)
                .min(self.max_in_flight),
            buffer_size: self.buffer_size,
            buffer_cost: self.buffer_cost,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_operation_time: self.max_operation_time,
            retry_timeouts: self.retry_timeouts,
            capacity: self.capacity,
            event_capacity: self.event_capacity,
            audit_interval: self.audit_interval,
            name: self.name.into(),
        })
    }

    /// Checks the settings and starts the batcher on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] that names the setting to change, or
    /// [`ConfigError::NoRuntime`] outside a tokio runtime.
    pub fn build<H, T, K>(
        self,
        handler: H,
    ) -> Result<Batcher<T, H::Output, H::Error, K>, ConfigError>
    where
        H: Handler<T, K>,
        T: Send + Sync + 'static,
        K: Eq + std::hash::Hash + Clone + std::fmt::Debug + Send + Sync + 'static,
    {
        let config = self.validate()?;
        Batcher::start(config, Arc::new(handler))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backoff_near_duration_max_saturates_instead_of_panicking() {
        let backoff = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
        };
        // The largest random fraction makes a jitter factor that rounds to 1.0.
        let largest = 1.0 - f64::EPSILON / 2.0;
        for random in [0.0, 0.5, largest, 1.0] {
            for attempts in [1, 2, 31, u32::MAX] {
                let delay = backoff.delay(attempts, random);
                assert!(delay >= Duration::MAX / 2 - Duration::from_secs(1));
            }
        }
    }

    #[test]
    fn a_backoff_stays_within_its_upper_half_and_its_maximum() {
        let backoff = Backoff::default();
        for attempts in 1..40 {
            for random in [0.0, 0.25, 0.999] {
                let delay = backoff.delay(attempts, random);
                let full = backoff
                    .base
                    .saturating_mul(1 << attempts.saturating_sub(1).min(30))
                    .min(backoff.max);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "{attempts} {random}: {delay:?}"
                );
            }
        }
    }
}
