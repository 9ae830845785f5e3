//! Capacity: the cost per second that batchers may spend.
//!
//! A [`Capacity`] is a token bucket. Dispatching a batch spends its cost; the
//! bucket refills at the current rate and holds at most its *burst*. One
//! `Capacity` can be cloned into several batchers (one per operation type, say)
//! so that together they never spend more than the one budget of the datastore
//! behind them.
//!
//! # The seam for shared capacity
//!
//! The engine and its capacity talk in two directions:
//!
//! - the engine tells its capacity its **target**, the cost of everything it
//!   holds (buffered or in flight), whenever that changes; the capacity adds up
//!   the targets of all its batchers and passes the total to its
//!   [`CapacitySource`];
//! - the capacity tells the engine what it may **spend**: the bucket refills at
//!   the source's current [`rate`](CapacitySource::rate).
//!
//! A fixed rate ([`Capacity::provisioned`]) ignores the target. A source that
//! leases partitions of a capacity shared between processes uses the target to
//! decide how many partitions to hold, and changes its rate as it gains and
//! loses them.
//!
//! # Why the bucket starts empty
//!
//! A new bucket has saved nothing: it starts empty the first time it is drawn
//! on, and fills at its rate from then on. So by any time `t` after that, the
//! cost granted is at most `rate × t`: a process that restarts cannot
//! spend a burst on top of what the previous one just spent.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::diagnose::CapacityStatus;
use crate::error::ConfigError;
use crate::events::CapacityEvent;

/// The interval whose worth of capacity is the default burst, as go-batcher's
/// flush interval was: 100 ms.
pub const DEFAULT_BURST_INTERVAL: Duration = Duration::from_millis(100);

const NANOS: i128 = 1_000_000_000;

/// Where a shared capacity's rate comes from. Implemented by lease-based
/// providers that share one capacity between processes.
pub trait CapacitySource: Send + Sync + 'static {
    /// The cost per second this process may spend now.
    fn rate(&self) -> u64;

    /// The largest rate this source can ever grant. It bounds the burst, and
    /// with it the most expensive operation a batcher accepts.
    fn max_rate(&self) -> u64;

    /// The total target of every batcher drawing on this capacity changed:
    /// the cost of everything they hold, buffered or in flight.
    fn target_changed(&self, target: u64);

    /// Why the source grants what it grants: reserved capacity, partitions
    /// held, whether its store can be reached. `diagnose()` uses it to say why
    /// a batcher has no capacity. By default nothing is known.
    fn status(&self) -> CapacityStatus {
        CapacityStatus::default()
    }

    /// Called once, when the source is wrapped in a [`Capacity`], with a
    /// notifier through which it reports lease events and rate changes to
    /// every batcher drawing on the capacity.
    fn attach(&self, notifier: CapacityNotifier) {
        let _ = notifier;
    }
}

/// What a capacity tells the batchers that draw on it.
#[derive(Debug, Clone)]
pub(crate) enum Notice {
    Event(CapacityEvent),
    RateChanged,
}

type Listener = Arc<dyn Fn(Notice) + Send + Sync>;

/// How a [`CapacitySource`] reports to the batchers that draw on its
/// capacity: lease events go to their event streams, and a rate change wakes
/// them at once instead of at their next look.
#[derive(Clone)]
pub struct CapacityNotifier {
    inner: Weak<Inner>,
}

impl CapacityNotifier {
    /// Reports a lease or store event.
    pub fn event(&self, event: CapacityEvent) {
        self.notify(Notice::Event(event));
    }

    /// Says that [`CapacitySource::rate`] changed.
    pub fn rate_changed(&self) {
        self.notify(Notice::RateChanged);
    }

    fn notify(&self, notice: Notice) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let listeners: Vec<Listener> = lock(&inner.targets)
            .listeners
            .iter()
            .flatten()
            .cloned()
            .collect();
        for listener in listeners {
            listener(notice.clone());
        }
    }
}

impl fmt::Debug for CapacityNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CapacityNotifier")
    }
}

enum Limit {
    Unlimited,
    Provisioned {
        rate: u64,
        burst: u64,
    },
    Source {
        source: Arc<dyn CapacitySource>,
        interval: Duration,
    },
}

struct Bucket {
    /// Tokens in units of 1e-9 cost; negative while a batch larger than the
    /// burst is being paid off.
    tokens: i128,
    /// When the bucket was last refilled; `None` until first drawn upon.
    last: Option<Instant>,
    /// Total cost granted, ever.
    spent: u64,
}

struct Targets {
    slots: Vec<Option<u64>>,
    listeners: Vec<Option<Listener>>,
    total: u64,
}

struct Inner {
    limit: Limit,
    bucket: Mutex<Bucket>,
    targets: Mutex<Targets>,
}

/// A budget of cost per second, shareable between batchers. Cloning it shares
/// the budget.
///
/// ```
/// use baler::Capacity;
///
/// let unlimited = Capacity::unlimited();
/// let writes = Capacity::provisioned(10_000).unwrap(); // 10,000 cost units per second
/// assert_eq!(writes.rate(), Some(10_000));
/// assert_eq!(writes.burst(), Some(1_000)); // 100 ms worth by default
/// assert_eq!(unlimited.rate(), None);
/// ```
#[derive(Clone)]
pub struct Capacity {
    inner: Arc<Inner>,
}

/// The answer to a request to spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Spent.
    Granted,
    /// Not enough yet: try again after this long.
    Wait(Duration),
}

impl Capacity {
    fn new(limit: Limit) -> Self {
        Capacity {
            inner: Arc::new(Inner {
                limit,
                bucket: Mutex::new(Bucket {
                    tokens: 0,
                    last: None,
                    spent: 0,
                }),
                targets: Mutex::new(Targets {
                    slots: Vec::new(),
                    listeners: Vec::new(),
                    total: 0,
                }),
            }),
        }
    }

    /// No limit: every batch may be dispatched at once.
    pub fn unlimited() -> Self {
        Capacity::new(Limit::Unlimited)
    }

    /// A fixed rate of `per_second` cost units per second, with a burst of
    /// one [`DEFAULT_BURST_INTERVAL`] (100 ms) worth, and at least 1.
    pub fn provisioned(per_second: u64) -> Result<Self, ConfigError> {
        let burst = burst_for(per_second, DEFAULT_BURST_INTERVAL).max(1);
        Capacity::provisioned_with_burst(per_second, burst)
    }

    /// A fixed rate of `per_second` cost units per second that may save up at
    /// most `burst` units while idle. No operation costing more than `burst`
    /// is accepted, and batches are cut so that their cost fits in it.
    pub fn provisioned_with_burst(per_second: u64, burst: u64) -> Result<Self, ConfigError> {
        if per_second == 0 {
            return Err(ConfigError::Zero {
                setting: "Capacity::provisioned (per second)",
                hint: "use Capacity::unlimited() for no limit, or a positive rate",
            });
        }
        if burst == 0 {
            return Err(ConfigError::Zero {
                setting: "Capacity::provisioned_with_burst (burst)",
                hint: "the burst bounds the most expensive batch; give it at least one operation's cost",
            });
        }
        const MAX: u64 = 1 << 53;
        for (setting, value) in [
            ("Capacity::provisioned (per second)", per_second),
            ("Capacity::provisioned_with_burst (burst)", burst),
        ] {
            if value > MAX {
                return Err(ConfigError::TooLarge {
                    setting,
                    value,
                    max: MAX,
                });
            }
        }
        Ok(Capacity::new(Limit::Provisioned {
            rate: per_second,
            burst,
        }))
    }

    /// A capacity whose rate comes from `source` and follows it as it changes;
    /// the burst is `interval` worth of the current rate (at most a day's).
    /// The source is told the total target of every batcher that draws on
    /// this capacity.
    pub fn from_source(
        source: Arc<dyn CapacitySource>,
        interval: Duration,
    ) -> Result<Self, ConfigError> {
        if interval.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "Capacity::from_source (interval)",
                hint: "the burst is one interval's worth of the rate; 100 ms is a good start",
            });
        }
        crate::limits::check_duration("Capacity::from_source (interval, milliseconds)", interval)?;
        let capacity = Capacity::new(Limit::Source {
            source: source.clone(),
            interval,
        });
        source.attach(CapacityNotifier {
            inner: Arc::downgrade(&capacity.inner),
        });
        Ok(capacity)
    }

    /// Why the capacity grants what it grants, as far as its source knows.
    pub fn status(&self) -> CapacityStatus {
        match &self.inner.limit {
            Limit::Source { source, .. } => source.status(),
            _ => CapacityStatus::default(),
        }
    }

    /// The cost per second that may be spent now; `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        match &self.inner.limit {
            Limit::Unlimited => None,
            Limit::Provisioned { rate, .. } => Some(*rate),
            Limit::Source { source, .. } => Some(source.rate()),
        }
    }

    /// The most that may be spent at once now; `None` when unlimited.
    pub fn burst(&self) -> Option<u64> {
        match &self.inner.limit {
            Limit::Unlimited => None,
            Limit::Provisioned { burst, .. } => Some(*burst),
            Limit::Source { source, interval } => Some(burst_for(source.rate(), *interval)),
        }
    }

    /// Whether [`max_burst`](Self::max_burst) never changes (it does only
    /// for a capacity whose rate comes from a [`CapacitySource`]).
    pub(crate) fn max_burst_is_fixed(&self) -> bool {
        !matches!(self.inner.limit, Limit::Source { .. })
    }

    /// The most that could ever be spent at once; `None` when unlimited. An
    /// operation that costs more is refused with
    /// [`SubmitError::TooExpensive`](crate::SubmitError::TooExpensive).
    pub fn max_burst(&self) -> Option<u64> {
        match &self.inner.limit {
            Limit::Unlimited => None,
            Limit::Provisioned { burst, .. } => Some(*burst),
            Limit::Source { source, interval } => {
                Some(burst_for(source.max_rate(), *interval).max(1))
            }
        }
    }

    /// The total cost granted to batches so far.
    pub fn spent(&self) -> u64 {
        lock(&self.inner.bucket).spent
    }

    /// The total target of every batcher drawing on this capacity.
    pub fn target(&self) -> u64 {
        lock(&self.inner.targets).total
    }

    /// Spends `cost` if the bucket holds it.
    pub(crate) fn try_spend(&self, cost: u64, now: Instant) -> Spend {
        let (rate, burst) = match &self.inner.limit {
            Limit::Unlimited => {
                let mut bucket = lock(&self.inner.bucket);
                bucket.spent = bucket.spent.saturating_add(cost);
                return Spend::Granted;
            }
            Limit::Provisioned { rate, burst } => (*rate, *burst),
            Limit::Source { source, interval } => {
                let rate = source.rate();
                (rate, burst_for(rate, *interval))
            }
        };
        let mut bucket = lock(&self.inner.bucket);
        let rate_i = i128::from(rate);
        let cap = i128::from(burst) * NANOS;
        let last = *bucket.last.get_or_insert(now);
        let elapsed =
            i128::try_from(now.saturating_duration_since(last).as_nanos()).unwrap_or(i128::MAX / 4);
        bucket.tokens = (bucket.tokens + rate_i.saturating_mul(elapsed)).min(cap);
        bucket.last = Some(now);

        let need = i128::from(cost) * NANOS;
        // A batch costlier than the burst (possible only when a shared rate
        // shrank after the batch's operations were accepted) goes when the
        // bucket is full, leaving it in debt, rather than never.
        if bucket.tokens >= need || (need > cap && cap > 0 && bucket.tokens >= cap) {
            bucket.tokens -= need;
            bucket.spent = bucket.spent.saturating_add(cost);
            return Spend::Granted;
        }
        if rate == 0 {
            // Nothing refills the bucket: look again once an interval, when a
            // shared source may have gained capacity.
            return Spend::Wait(DEFAULT_BURST_INTERVAL);
        }
        // Wait for the cost, or for a full bucket when the cost exceeds it.
        let missing = need.min(cap) - bucket.tokens;
        let nanos = (missing + rate_i - 1) / rate_i;
        Spend::Wait(Duration::from_nanos(
            u64::try_from(nanos.max(1)).unwrap_or(u64::MAX),
        ))
    }

    /// Registers one batcher's target and its listener for notices; both
    /// are removed when the returned handle is dropped.
    pub(crate) fn register(&self, listener: Listener) -> TargetSlot {
        let mut targets = lock(&self.inner.targets);
        let index = match targets.slots.iter().position(Option::is_none) {
            Some(i) => {
                targets.slots[i] = Some(0);
                targets.listeners[i] = Some(listener);
                i
            }
            None => {
                targets.slots.push(Some(0));
                targets.listeners.push(Some(listener));
                targets.slots.len() - 1
            }
        };
        TargetSlot {
            capacity: self.clone(),
            index,
            last: 0,
        }
    }

    fn set_target(&self, index: usize, target: Option<u64>) {
        let total = {
            let mut targets = lock(&self.inner.targets);
            if let Some(slot) = targets.slots.get_mut(index) {
                *slot = target;
            }
            if target.is_none() {
                if let Some(listener) = targets.listeners.get_mut(index) {
                    *listener = None;
                }
            }
            let total = targets.slots.iter().flatten().sum();
            targets.total = total;
            total
        };
        if let Limit::Source { source, .. } = &self.inner.limit {
            source.target_changed(total);
        }
    }
}

fn burst_for(rate: u64, interval: Duration) -> u64 {
    let burst = u128::from(rate).saturating_mul(interval.as_nanos()) / 1_000_000_000;
    u64::try_from(burst).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl fmt::Debug for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.limit {
            Limit::Unlimited => f.write_str("Capacity::unlimited"),
            Limit::Provisioned { rate, burst } => f
                .debug_struct("Capacity::provisioned")
                .field("per_second", rate)
                .field("burst", burst)
                .finish(),
            Limit::Source { interval, source } => f
                .debug_struct("Capacity::from_source")
                .field("rate", &source.rate())
                .field("interval", interval)
                .finish(),
        }
    }
}

/// One batcher's place in its capacity's sum of targets.
pub(crate) struct TargetSlot {
    capacity: Capacity,
    index: usize,
    last: u64,
}

impl TargetSlot {
    /// Reports this batcher's target; a no-op when it has not changed.
    pub(crate) fn set(&mut self, target: u64) {
        if target != self.last {
            self.last = target;
            self.capacity.set_target(self.index, Some(target));
        }
    }
}

impl Drop for TargetSlot {
    fn drop(&mut self) {
        self.capacity.set_target(self.index, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_starts_empty_and_refills_at_its_rate() {
        let cap = Capacity::provisioned(1_000).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            cap.try_spend(10, t0),
            Spend::Wait(Duration::from_millis(10))
        );
        assert_eq!(
            cap.try_spend(10, t0 + Duration::from_millis(10)),
            Spend::Granted
        );
        // Idle for long: it saves up at most its burst (100).
        let later = t0 + Duration::from_secs(60);
        assert_eq!(cap.try_spend(100, later), Spend::Granted);
        assert_eq!(
            cap.try_spend(1, later),
            Spend::Wait(Duration::from_millis(1))
        );
        assert_eq!(cap.spent(), 110);
    }

    #[test]
    fn zero_rate_and_zero_burst_are_refused() {
        assert!(matches!(
            Capacity::provisioned(0),
            Err(ConfigError::Zero { .. })
        ));
        assert!(matches!(
            Capacity::provisioned_with_burst(10, 0),
            Err(ConfigError::Zero { .. })
        ));
    }

    #[test]
    fn targets_of_batchers_add_up() {
        let cap = Capacity::unlimited();
        let mut a = cap.register(Arc::new(|_| {}));
        let mut b = cap.register(Arc::new(|_| {}));
        a.set(5);
        b.set(7);
        assert_eq!(cap.target(), 12);
        drop(a);
        assert_eq!(cap.target(), 7);
    }
}
