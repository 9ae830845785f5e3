//! Building a shared capacity: the figures and the lease timing.

use std::sync::Arc;
use std::time::Duration;

use crate::capacity::{Capacity, DEFAULT_BURST_INTERVAL};
use crate::error::ConfigError;

use super::leaser::{self, Timing};
use super::partitions::{random_u64, Plan, MAX_PARTITIONS};
use super::source::{SharedSource, State};
use super::store::LeaseStore;

/// The default lease time: how long a lease lasts in the store unless
/// renewed.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(10);

impl Capacity {
    /// A capacity shared between processes: `reserved` per second of this
    /// instance's own, plus the partitions of `shared` per second (each worth
    /// `factor`) that it holds leases on in `store`. Lease timing is
    /// [`SharedCapacity`]'s default; use it to change that.
    ///
    /// Must be called within a tokio runtime: a background task on it takes,
    /// renews and gives back leases as the target of the batchers drawing on
    /// this capacity changes.
    ///
    /// ```
    /// use baler::{Capacity, shared::MemoryLeaseStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), baler::ConfigError> {
    /// let capacity = Capacity::shared(100, 10_000, 1_000, MemoryLeaseStore::new())?;
    /// assert_eq!(capacity.rate(), Some(100)); // only the reserved part until work comes
    /// # Ok(())
    /// # }
    /// ```
    pub fn shared(
        reserved: u64,
        shared: u64,
        factor: u64,
        store: impl LeaseStore,
    ) -> Result<Capacity, ConfigError> {
        SharedCapacity::new(store)
            .reserved(reserved)
            .shared(shared, factor)
            .build()
    }
}

/// Builds a [`Capacity`] shared between processes through partition leases.
///
/// The shared capacity is cut into partitions, each worth `factor` per second
/// (at most [`MAX_PARTITIONS`] of them). An instance's rate is its reserved
/// capacity plus the worth of the partitions it holds leases on. Its
/// background task:
///
/// - takes the partitions its target needs **in parallel**, in a random
///   order, so that instances spread over the partitions and full capacity
///   comes within a round trip or two to the store;
/// - **renews** them every [`renew_every`](Self::renew_every) while they are
///   needed, and **gives them back** as soon as the target drops;
/// - counts a lease as its own only until a
///   [`safety_margin`](Self::safety_margin) *before* it expires (timed from
///   just before the request was sent), so two instances never count the
///   same partition;
/// - shares the partitions fairly when the store keeps demands (see
///   [`LeaseStore::announce`]): each instance announces how many partitions
///   it needs, and holds no more than its max-min fair share of them, so an
///   instance that came first gives partitions back to those that came later
///   (it learns of them when it next announces: within one
///   [`renew_every`](Self::renew_every) of their first announcement);
/// - takes over the partitions of an instance that died **as soon as its
///   leases and its announcement run out** in the store, when the store says
///   when that is ([`Acquired::Held`](crate::shared::Acquired::Held),
///   [`Demand::expires_in`](crate::shared::Demand::expires_in)), rather than at its
///   next retry period: within one lease time of the death;
/// - when the store cannot be reached, keeps its leases only until they
///   would expire and falls back to its reserved capacity; it takes
///   partitions again when the store comes back.
///
/// Lease events and rate changes go to the batchers' [`events`](crate::Batcher::events);
/// [`Capacity::status`] (and with it [`diagnose`](crate::Batcher::diagnose)) tells
/// how many partitions are held and whether the store can be reached.
///
/// ```
/// use std::time::Duration;
/// use baler::shared::{MemoryLeaseStore, SharedCapacity};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), baler::ConfigError> {
/// let capacity = SharedCapacity::new(MemoryLeaseStore::new())
///     .reserved(0)
///     .shared(10_000, 1_000) // 10 partitions of 1,000 per second
///     .lease_time(Duration::from_secs(2))
///     .build()?;
/// assert_eq!(capacity.max_burst(), Some(1_000)); // 100 ms of 10,000 per second
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedCapacity {
    store: Arc<dyn LeaseStore>,
    reserved: u64,
    shared: u64,
    factor: u64,
    lease_time: Duration,
    safety_margin: Option<Duration>,
    renew_every: Option<Duration>,
    retry_every: Option<Duration>,
    call_timeout: Option<Duration>,
    burst_interval: Duration,
}

impl SharedCapacity {
    /// A shared capacity whose leases live in `store`. Set its size with
    /// [`shared`](Self::shared) before building.
    pub fn new(store: impl LeaseStore) -> Self {
        SharedCapacity {
            store: Arc::new(store),
            reserved: 0,
            shared: 0,
            factor: 0,
            lease_time: DEFAULT_LEASE_TIME,
            safety_margin: None,
            renew_every: None,
            retry_every: None,
            call_timeout: None,
            burst_interval: DEFAULT_BURST_INTERVAL,
        }
    }

    /// Capacity per second of this instance's own, granted whether or not the
    /// store can be reached (default 0). With none, work waits whenever no
    /// partition can be leased.
    pub fn reserved(mut self, per_second: u64) -> Self {
        self.reserved = per_second;
        self
    }

    /// The capacity per second shared by every instance, cut into partitions
    /// worth `factor` each (the last one worth what is left).
    pub fn shared(mut self, per_second: u64, factor: u64) -> Self {
        self.shared = per_second;
        self.factor = factor;
        self
    }

    /// How long a lease lasts in the store unless renewed (default 10 s):
    /// also how long the partitions of a process that died stay out of reach,
    /// and at most how long an instance keeps counting its leases when the
    /// store cannot be reached. The other timings default to fractions of it.
    /// It must be one the store can grant ([`LeaseStore::lease_times`]; a
    /// blob store's leases, for one, last 15 to 60 seconds), or
    /// [`build`](Self::build) fails.
    pub fn lease_time(mut self, lease_time: Duration) -> Self {
        self.lease_time = lease_time;
        self
    }

    /// How long before a lease expires this instance stops counting it
    /// (default a fifth of the lease time). It covers the drift between this
    /// instance's clock and the store's.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.safety_margin = Some(margin);
        self
    }

    /// How often held leases are renewed (default a quarter of the lease
    /// time).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// How often partitions are tried again while the target needs more than
    /// is held, or the store cannot be reached (default a tenth of the lease
    /// time).
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry_every = Some(every);
        self
    }

    /// How long one call to the store may take before it counts as failed
    /// (default a fifth of the lease time).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// The interval whose worth of the current rate is the burst (default
    /// [`DEFAULT_BURST_INTERVAL`], at most a day), as in
    /// [`Capacity::from_source`].
    pub fn burst_interval(mut self, interval: Duration) -> Self {
        self.burst_interval = interval;
        self
    }

    /// Builds the capacity and starts its lease task on the current tokio
    /// runtime. The task gives every lease back when the last clone of the
    /// capacity is dropped.
    pub fn build(self) -> Result<Capacity, ConfigError> {
        self.start().map(|(capacity, _leases)| capacity)
    }

    /// Like [`build`](Self::build), and also returns a handle with which a
    /// process that is about to exit gives its leases back, and waits until
    /// the store has them, so that other instances can take them at once.
    ///
    /// ```
    /// use baler::shared::{MemoryLeaseStore, SharedCapacity};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), baler::ConfigError> {
    /// let (capacity, leases) = SharedCapacity::new(MemoryLeaseStore::new())
    ///     .reserved(50)
    ///     .shared(10_000, 1_000)
    ///     .start()?;
    /// // ... batchers draw on `capacity` ...
    /// leases.release_all().await;
    /// assert_eq!(capacity.rate(), Some(50)); // only the reserved part is left
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<(Capacity, SharedLeases), ConfigError> {
        if self.factor == 0 {
            return Err(ConfigError::Zero {
                setting: "SharedCapacity::shared (factor)",
                hint: "the factor is what one partition is worth; 1,000 is a good start",
            });
        }
        if self.shared == 0 {
            return Err(ConfigError::Zero {
                setting: "SharedCapacity::shared (per second)",
                hint: "give the capacity shared between instances, or use Capacity::provisioned \
                       for a capacity of this instance alone",
            });
        }
        const MAX: u64 = 1 << 53;
        let total = self.reserved.saturating_add(self.shared);
        if total > MAX {
            return Err(ConfigError::TooLarge {
                setting: "SharedCapacity (reserved + shared per second)",
                value: total,
                max: MAX,
            });
        }
        let plan = Plan::new(self.reserved, self.shared, self.factor);
        if plan.count > MAX_PARTITIONS {
            return Err(ConfigError::TooLarge {
                setting: "SharedCapacity::shared (partitions: shared / factor, rounded up; \
                          raise the factor)",
                value: u64::from(plan.count),
                max: u64::from(MAX_PARTITIONS),
            });
        }
        let timing = self.timing()?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ConfigError::CapacityNoRuntime)?;
        let owner = format!(
            "{}-{:016x}{:016x}",
            std::process::id(),
            random_u64(),
            random_u64()
        );
        let source = Arc::new(SharedSource::new(plan));
        crate::limits::check_duration(
            "SharedCapacity::burst_interval (milliseconds)",
            self.burst_interval,
        )?;
        let capacity = Capacity::from_source(source.clone(), self.burst_interval)?;
        let task = leaser::start(
            &runtime,
            source.state(),
            self.store,
            owner,
            timing,
            random_u64(),
        );
        let leases = SharedLeases {
            state: source.state(),
            task,
        };
        Ok((capacity, leases))
    }

    fn timing(&self) -> Result<Timing, ConfigError> {
        let lease = self.lease_time;
        if lease.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "SharedCapacity::lease_time",
                hint: "a lease must last long enough to be renewed; 10 s is a good start",
            });
        }
        const MAX_LEASE: Duration = Duration::from_secs(3_600);
        if lease > MAX_LEASE {
            return Err(ConfigError::TooLarge {
                setting: "SharedCapacity::lease_time (milliseconds)",
                value: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
                max: u64::try_from(MAX_LEASE.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let supported = self.store.lease_times();
        if !supported.contains(&lease) {
            return Err(ConfigError::LeaseTimeUnsupported {
                lease_time: lease,
                min: *supported.start(),
                max: *supported.end(),
            });
        }
        let timing = Timing {
            lease_time: lease,
            safety_margin: self.safety_margin.unwrap_or(lease / 5),
            renew_every: self.renew_every.unwrap_or(lease / 4),
            retry_every: self.retry_every.unwrap_or(lease / 10),
            call_timeout: self.call_timeout.unwrap_or(lease / 5),
        };
        for (setting, value) in [
            ("SharedCapacity::renew_every", timing.renew_every),
            ("SharedCapacity::retry_every", timing.retry_every),
            ("SharedCapacity::call_timeout", timing.call_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration {
                    setting,
                    hint: "leave it unset for its default, a fraction of the lease time",
                });
            }
        }
        if timing.retry_every > lease {
            return Err(ConfigError::TooLarge {
                setting: "SharedCapacity::retry_every (milliseconds; at most the lease time)",
                value: u64::try_from(timing.retry_every.as_millis()).unwrap_or(u64::MAX),
                max: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            });
        }
        // A renewal sent at the last moment must come back before the lease
        // stops counting.
        let needed = timing
            .safety_margin
            .saturating_add(timing.renew_every)
            .saturating_add(timing.call_timeout);
        if needed > lease {
            return Err(ConfigError::LeaseTiming {
                lease_time: lease,
                safety_margin: timing.safety_margin,
                renew_every: timing.renew_every,
                call_timeout: timing.call_timeout,
            });
        }
        Ok(timing)
    }
}

impl std::fmt::Debug for SharedCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCapacity")
            .field("reserved", &self.reserved)
            .field("shared", &self.shared)
            .field("factor", &self.factor)
            .field("lease_time", &self.lease_time)
            .finish_non_exhaustive()
    }
}

/// The lease task of a shared capacity, from [`SharedCapacity::start`].
/// Dropping it changes nothing: the task runs until the capacity is dropped.
pub struct SharedLeases {
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl SharedLeases {
    /// Gives every lease back and stops taking new ones; returns once the
    /// store has been told (or the calls failed: unreleased leases expire).
    /// From then on the capacity grants only its reserved part.
    pub async fn release_all(self) {
        self.state
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.state.wake.notify_one();
        let _ = self.task.await;
    }
}

impl std::fmt::Debug for SharedLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLeases").finish_non_exhaustive()
    }
}
