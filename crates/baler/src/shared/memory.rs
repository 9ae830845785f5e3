//! A lease store in memory: for the capacities of one process, and for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Acquired, Demand, LeaseFuture, LeaseStore};

/// A [`LeaseStore`] in memory: shares a capacity between the capacities of
/// one process (one per tenant, say), and stands in for a real store in
/// tests. Its clock is tokio's, so it follows a paused test clock. Clones
/// share the same leases.
///
/// ```
/// use baler::{Capacity, shared::MemoryLeaseStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), baler::ConfigError> {
/// let store = MemoryLeaseStore::new();
/// // Two capacities sharing 10,000/s in partitions of 1,000, each with 500/s of its own.
/// let a = Capacity::shared(500, 10_000, 1_000, store.clone())?;
/// let b = Capacity::shared(500, 10_000, 1_000, store)?;
/// assert_eq!(a.rate(), Some(500)); // no target yet, so no partitions leased
/// assert_eq!(b.status().partitions, Some((0, 10)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLeaseStore {
    leases: Arc<Mutex<HashMap<u32, Lease>>>,
    demands: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

#[derive(Debug)]
struct Lease {
    owner: String,
    expires: Instant,
}

impl MemoryLeaseStore {
    /// An empty store: every partition is free.
    pub fn new() -> Self {
        MemoryLeaseStore::default()
    }

    /// Who holds `partition` now, if anyone.
    pub fn holder(&self, partition: u32) -> Option<String> {
        let now = Instant::now();
        self.lock()
            .get(&partition)
            .filter(|lease| lease.expires > now)
            .map(|lease| lease.owner.clone())
    }

    /// How many partitions are held now, by anyone.
    pub fn held(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|l| l.expires > now).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes or extends the lease; when refused, how long the lease that
    /// stands in the way still runs (zero when `only_own` and it is free).
    fn take(
        &self,
        partition: u32,
        owner: &str,
        lease_time: Duration,
        only_own: bool,
    ) -> Result<(), Duration> {
        let now = Instant::now();
        let mut leases = self.lock();
        let refused = match leases.get(&partition) {
            None => only_own.then_some(Duration::ZERO),
            Some(lease) if lease.owner == owner => {
                (only_own && lease.expires <= now).then_some(Duration::ZERO)
            }
            Some(lease) if lease.expires <= now => only_own.then_some(Duration::ZERO),
            Some(lease) => Some(lease.expires - now),
        };
        if let Some(expires_in) = refused {
            return Err(expires_in);
        }
        leases.insert(
            partition,
            Lease {
                owner: owner.to_owned(),
                expires: crate::time::later(now, lease_time),
            },
        );
        Ok(())
    }
}

impl LeaseStore for MemoryLeaseStore {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(async move {
            Ok(match self.take(partition, owner, lease_time, false) {
                Ok(()) => Acquired::Granted,
                Err(expires_in) => Acquired::Held {
                    expires_in: Some(expires_in),
                },
            })
        })
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, bool> {
        Box::pin(async move { Ok(self.take(partition, owner, lease_time, true).is_ok()) })
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            let mut leases = self.lock();
            if leases.get(&partition).is_some_and(|l| l.owner == owner) {
                leases.remove(&partition);
            }
            Ok(())
        })
    }

    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut demands = self.demands.lock().unwrap_or_else(|p| p.into_inner());
            demands.insert(owner.to_owned(), (wanted, crate::time::later(now, ttl)));
            demands.retain(|_, (_, expires)| *expires > now);
            Ok(Some(
                demands
                    .iter()
                    .map(|(owner, (wanted, expires))| {
                        Demand::new(owner.clone(), *wanted)
                            .expires_in(expires.saturating_duration_since(now))
                    })
                    .collect(),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_lease_is_exclusive_until_it_expires_by_the_stores_clock() {
        let store = MemoryLeaseStore::new();
        assert!(store.acquire(1, "a", 2 * SEC).await.unwrap().is_granted());
        tokio::time::advance(SEC / 2).await;
        assert_eq!(
            store.acquire(1, "b", 2 * SEC).await.unwrap(),
            Acquired::Held {
                expires_in: Some(3 * SEC / 2)
            },
            "a's for 1.5 s more"
        );
        tokio::time::advance(3 * SEC / 2).await;
        assert!(!store.renew(1, "a", 2 * SEC).await.unwrap(), "expired");
        assert!(store.acquire(1, "b", 2 * SEC).await.unwrap().is_granted());
        assert_eq!(store.holder(1).as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn release_by_another_owner_changes_nothing() {
        let store = MemoryLeaseStore::new();
        assert!(store.acquire(1, "a", 2 * SEC).await.unwrap().is_granted());
        store.release(1, "b").await.unwrap();
        assert_eq!(store.holder(1).as_deref(), Some("a"));
        store.release(1, "a").await.unwrap();
        assert_eq!(store.holder(1), None);
        assert!(!store.renew(1, "a", 2 * SEC).await.unwrap());
    }
}
