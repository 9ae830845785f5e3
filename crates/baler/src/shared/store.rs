//! The lease store: where partition leases live.

use std::future::Future;
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The future a [`LeaseStore`] call returns.
pub type LeaseFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, LeaseStoreError>> + Send + 'a>>;

/// Where the leases on the partitions of a shared capacity live: a map from
/// partition to its owner and expiry, kept by a store that every process
/// sharing the capacity can reach (memory for one process, Redis, a blob
/// store).
///
/// # The contract
///
/// - The **store's clock decides expiry**: a lease granted for `lease_time`
///   expires `lease_time` after the store granted it, by the store's clock.
///   The caller counts a lease as its own from just *before* it sent the
///   request until a safety margin before that time has passed on its own
///   clock, so it never counts a lease the store has already given away.
/// - Each call is **atomic** in the store: two owners can never both be told
///   they hold the same partition at once.
/// - `owner` is an opaque token, unique per process (per capacity); the store
///   compares it and never interprets it.
/// - An error means the store could not be reached or answered nonsense: the
///   caller does not know whether the call took effect and acts safely
///   (counts nothing new; keeps what it holds only until it would expire).
///
/// ```
/// use std::time::Duration;
/// use baler::shared::{Acquired, LeaseStore, MemoryLeaseStore};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), baler::shared::LeaseStoreError> {
/// let store = MemoryLeaseStore::new();
/// let ten_seconds = Duration::from_secs(10);
/// assert!(store.acquire(3, "instance-a", ten_seconds).await?.is_granted());
/// // Held by a, for ten seconds more by the store's clock:
/// let refused = store.acquire(3, "instance-b", ten_seconds).await?;
/// assert_eq!(refused, Acquired::Held { expires_in: Some(ten_seconds) });
/// assert!(store.renew(3, "instance-a", ten_seconds).await?);
/// store.release(3, "instance-a").await?;
/// assert!(store.acquire(3, "instance-b", ten_seconds).await?.is_granted());
/// # Ok(())
/// # }
/// ```
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease on `partition` for `owner` for `lease_time` if nobody
    /// else holds it (free, expired, or already `owner`'s).
    /// [`Acquired::Granted`]: the lease is `owner`'s until `lease_time` from
    /// now by the store's clock. [`Acquired::Held`]: someone else holds it,
    /// and, when the store can tell, for how much longer.
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired>;

    /// Extends `owner`'s lease on `partition` to `lease_time` from now.
    /// `Ok(false)`: `owner` no longer holds it (it expired, and perhaps
    /// someone else took it).
    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, bool>;

    /// Gives `owner`'s lease on `partition` back, so that another owner can
    /// take it at once. Does nothing if `owner` does not hold it.
    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()>;

    /// Announces that `owner` wants `wanted` partitions, valid for `ttl` by
    /// the store's clock, and returns the demand of every owner whose
    /// announcement has not expired, this one's included. Instances use the
    /// demands to share the partitions fairly (max-min: nobody gets more than
    /// an equal share while another that wants more gets less).
    ///
    /// `Ok(None)` means the store does not keep demands; then there is no
    /// fair sharing, and whoever holds a partition keeps it while it needs
    /// it. That is the default.
    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        let _ = (owner, wanted, ttl);
        Box::pin(async { Ok(None) })
    }

    /// The lease times this store can grant, shortest and longest included.
    /// [`SharedCapacity::build`](crate::shared::SharedCapacity::build) refuses a
    /// `lease_time` outside them with
    /// [`ConfigError::LeaseTimeUnsupported`](crate::ConfigError::LeaseTimeUnsupported),
    /// so a store that could not grant it fails when the capacity is built,
    /// not at its first call.
    ///
    /// The default is any lease time. A blob store whose leases last 15 to
    /// 60 seconds returns `Duration::from_secs(15)..=Duration::from_secs(60)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use baler::shared::{LeaseStore, MemoryLeaseStore};
    ///
    /// let times = MemoryLeaseStore::new().lease_times();
    /// assert!(times.contains(&Duration::from_millis(1)));
    /// assert!(times.contains(&Duration::from_secs(3_600)));
    /// ```
    fn lease_times(&self) -> RangeInclusive<Duration> {
        Duration::ZERO..=Duration::MAX
    }
}

/// What [`LeaseStore::acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is the caller's now.
    Granted,
    /// Another owner holds the lease.
    Held {
        /// How much longer its lease runs by the store's clock, when the
        /// store can tell. An instance that needs the partition tries again
        /// just after that instead of at its next retry period, so the
        /// partitions of an instance that died are taken over as soon as
        /// their leases run out.
        expires_in: Option<Duration>,
    },
}

impl Acquired {
    /// Whether the lease was granted.
    pub fn is_granted(self) -> bool {
        matches!(self, Acquired::Granted)
    }
}

/// How many partitions one owner wants, as announced to a [`LeaseStore`].
///
/// ```
/// use std::time::Duration;
/// use baler::shared::Demand;
///
/// let demand = Demand::new("instance-a", 3).expires_in(Duration::from_secs(2));
/// assert_eq!(demand.wanted, 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Demand {
    /// The owner's token.
    pub owner: String,
    /// The partitions it wants.
    pub wanted: u32,
    /// How much longer the announcement lives by the store's clock, when the
    /// store can tell. The others announce again just after the earliest of
    /// these, so that they learn at once when an instance stops announcing
    /// (it died) and take its share.
    pub expires_in: Option<Duration>,
}

impl Demand {
    /// `owner` wants `wanted` partitions (for as long as the store keeps the
    /// announcement, unknown to the caller).
    pub fn new(owner: impl Into<String>, wanted: u32) -> Self {
        Demand {
            owner: owner.into(),
            wanted,
            expires_in: None,
        }
    }

    /// The announcement lives `expires_in` more by the store's clock.
    pub fn expires_in(mut self, expires_in: Duration) -> Self {
        self.expires_in = Some(expires_in);
        self
    }
}

impl<S: LeaseStore + ?Sized> LeaseStore for Arc<S> {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        (**self).acquire(partition, owner, lease_time)
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, bool> {
        (**self).renew(partition, owner, lease_time)
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        (**self).release(partition, owner)
    }

    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        (**self).announce(owner, wanted, ttl)
    }

    fn lease_times(&self) -> RangeInclusive<Duration> {
        (**self).lease_times()
    }
}

/// Why a [`LeaseStore`] call failed. Either way the caller cannot know
/// whether the call took effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseStoreError {
    /// The store could not be reached (refused, reset, timed out).
    #[error(
        "the lease store cannot be reached: {0}; check that it runs and that its address is right"
    )]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store answered, but not as a lease store should (a wrong type, a
    /// script error, a refused command).
    #[error("the lease store answered unexpectedly: {0}; check its version and permissions")]
    Protocol(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LeaseStoreError {
    /// An [`Unreachable`](LeaseStoreError::Unreachable) error with this message.
    pub fn unreachable(message: impl Into<String>) -> Self {
        LeaseStoreError::Unreachable(message.into().into())
    }

    /// A [`Protocol`](LeaseStoreError::Protocol) error with this message.
    pub fn protocol(message: impl Into<String>) -> Self {
        LeaseStoreError::Protocol(message.into().into())
    }
}
