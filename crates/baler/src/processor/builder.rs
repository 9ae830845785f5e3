//! The processor's builder.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use super::batch::BatchHandler;
use super::report::Figures;
use super::store::Store;
use super::Processor;
use crate::config::Builder;
use crate::error::ConfigError;
use crate::limits::{check_duration, check_event_capacity};
use crate::settings::Dispatch;

/// The default [`linger`](ProcessorBuilder::linger) of a processor: a window
/// of 100 ms per key.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(100);

/// Builds a [`Processor`]. Start from [`Processor::builder`].
///
/// ```
/// use std::time::Duration;
/// use baler::processor::{store_fn, Processor};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let processor = Processor::builder()
///     .linger(Duration::from_millis(50))          // a window of 50 ms per key
///     .max_store_time(Duration::from_millis(200)) // load and save may take 200 ms each
///     .max_batch_size(1_000)                      // or close the window at 1,000 operations
///     .max_in_flight(32)                          // at most 32 batches (keys) at once
///     .build(store_fn(
///         |_key: String| async move { Ok::<u64, std::io::Error>(0) },
///         |_key: String, _total: u64| async move { Ok::<(), std::io::Error>(()) },
///     ))?;
/// # processor.shutdown(None).await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct ProcessorBuilder {
    linger: Duration,
    max_store_time: Option<Duration>,
    max_batch_size: Option<usize>,
    max_in_flight: usize,
    buffer_size: usize,
    event_capacity: usize,
    name: String,
}

impl Default for ProcessorBuilder {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ProcessorBuilder {
            linger: DEFAULT_LINGER,
            max_store_time: None,
            max_batch_size: None,
            max_in_flight: 16 * cpus,
            buffer_size: 10_000,
            event_capacity: 1_024,
            name: "baler-processor".to_owned(),
        }
    }
}

impl ProcessorBuilder {
    /// How long a key's window stays open, counted from its first operation:
    /// every operation of the key that arrives within it joins the batch.
    /// It is the engine's [`linger`](crate::Builder::linger), always waited
    /// out (even when nothing is in flight), because gathering a key's
    /// operations into one load and one save is the point of a processor.
    /// Default 100 ms; at most a day.
    pub fn linger(mut self, window: Duration) -> Self {
        self.linger = window;
        self
    }

    /// The longest a load, and separately a save, may take; past it the call
    /// is dropped and the batch fails. Default twice
    /// [`linger`](Self::linger); at most a day.
    pub fn max_store_time(mut self, limit: Duration) -> Self {
        self.max_store_time = Some(limit);
        self
    }

    /// Closes a window early once it holds this many operations. Default:
    /// the buffer size, so windows close on time alone.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = Some(n);
        self
    }

    /// How many batches may be in flight (loading, applying or saving) at
    /// once. A key has at most one batch in flight, so this is also how many
    /// keys may be active at once. Windows of other keys stay open until a
    /// place frees up; a slow key holds one place, never the keys behind it.
    /// The same limit as [`Builder::max_in_flight`](crate::Builder::max_in_flight).
    /// Default 16 × the number of CPUs.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How many operations may wait, across all keys; `run` waits for room
    /// beyond it. Default 10,000.
    pub fn buffer_size(mut self, n: usize) -> Self {
        self.buffer_size = n;
        self
    }

    /// How many batch reports each listener of
    /// [`events`](Processor::events) may fall behind before it misses some.
    /// Default 1,024; at most 2^20 (1,048,576).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// The name of the processor's engine, in its tracing spans. Default
    /// `"baler-processor"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Checks the settings and starts the processor on the current tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] that names the setting to change, or
    /// [`ConfigError::NoRuntime`] outside a tokio runtime.
    pub fn build<S, K>(self, store: S) -> Result<Processor<K, S::Resource, S::Error>, ConfigError>
    where
        S: Store<K>,
        K: Eq + std::hash::Hash + Clone + std::fmt::Debug + Send + Sync + 'static,
    {
        let max_store_time = self
            .max_store_time
            .unwrap_or_else(|| self.linger.saturating_mul(2));
        if max_store_time.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "max_store_time",
                hint: "it bounds every load and save; set it explicitly when linger is zero",
            });
        }
        check_duration("linger (milliseconds)", self.linger)?;
        if let Some(limit) = self.max_store_time {
            check_duration("max_store_time (milliseconds)", limit)?;
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::Zero {
                setting: "max_in_flight",
                hint: "with 0 no key could ever be processed",
            });
        }
        if self.event_capacity == 0 {
            return Err(ConfigError::Zero {
                setting: "event_capacity",
                hint: "listeners need room for at least one report",
            });
        }
        check_event_capacity("event_capacity", self.event_capacity)?;
        let figures = Arc::new(Figures::new(self.event_capacity));
        let handler = BatchHandler {
            store,
            max_store_time,
            figures: figures.clone(),
            _key: PhantomData,
        };
        let batcher = Builder::default()
            .name(self.name)
            // The window counts from the first operation and is waited out
            // even when the key is idle: that is what gathers a batch.
            .dispatch(Dispatch::Linger)
            .linger(self.linger)
            .max_batch_size(self.max_batch_size.unwrap_or(self.buffer_size))
            .buffer_size(self.buffer_size)
            .max_in_flight(self.max_in_flight)
            // Two batches of one key never overlap: each loads what the
            // previous one saved.
            .max_in_flight_per_key(1)
            // An operation runs at most once: a failed batch is not retried.
            .max_attempts(1)
            .build(handler)?;
        Ok(Processor { batcher, figures })
    }
}
