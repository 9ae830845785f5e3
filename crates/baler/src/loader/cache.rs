//! The loader's cache: a trait, and a bounded in-memory implementation.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ConfigError;

/// Where a [`Loader`](crate::loader::Loader) keeps answers, so that a key loaded
/// once is answered at once the next time, without a batch.
///
/// The loader calls it with its own locks released only around `get`; the
/// other methods are called briefly under the loader's table of loads in
/// flight, so they must not block for long (no I/O). `V` is what the loader
/// stores: `Result<V, LoadError<E>>`, where errors are only stored with
/// [`cache_errors`](crate::loader::LoaderBuilder::cache_errors).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use baler::loader::Cache;
///
/// /// An unbounded cache (for one request's lifetime, as GraphQL servers do).
/// #[derive(Default)]
/// struct Unbounded<K, V>(Mutex<HashMap<K, V>>);
///
/// impl<K, V> Cache<K, V> for Unbounded<K, V>
/// where
///     K: Eq + std::hash::Hash + Send + 'static,
///     V: Clone + Send + 'static,
/// {
///     fn get(&self, key: &K) -> Option<V> {
///         self.0.lock().unwrap().get(key).cloned()
///     }
///     fn insert(&self, key: K, value: V) {
///         self.0.lock().unwrap().insert(key, value);
///     }
///     fn remove(&self, key: &K) {
///         self.0.lock().unwrap().remove(key);
///     }
///     fn clear(&self) {
///         self.0.lock().unwrap().clear();
///     }
/// }
/// ```
pub trait Cache<K, V>: Send + Sync + 'static {
    /// The value stored for `key`, if any (and still fresh).
    fn get(&self, key: &K) -> Option<V>;
    /// Stores `value` for `key`, replacing what was there.
    fn insert(&self, key: K, value: V);
    /// Forgets `key`.
    fn remove(&self, key: &K);
    /// Forgets everything.
    fn clear(&self);
}

/// The default cache: an in-memory map with a bound on its number of entries
/// and an optional time to live.
///
/// When it is full, inserting a new key evicts the oldest entry (first in,
/// first out). An entry older than the time to live is never returned and is
/// dropped when it is next looked at or evicted. Time is tokio's clock, so a
/// test with a paused clock controls it.
///
/// ```
/// use std::time::Duration;
/// use baler::loader::{Cache, MemoryCache};
///
/// # fn main() -> Result<(), baler::ConfigError> {
/// let cache = MemoryCache::new(2, None)?;
/// cache.insert(1, "one");
/// cache.insert(2, "two");
/// cache.insert(3, "three"); // evicts 1, the oldest
/// assert_eq!(cache.get(&1), None);
/// assert_eq!(cache.get(&3), Some("three"));
///
/// let _expiring: MemoryCache<u64, String> = MemoryCache::new(10_000, Some(Duration::from_secs(60)))?;
/// # Ok(())
/// # }
/// ```
pub struct MemoryCache<K, V> {
    inner: Mutex<Entries<K, V>>,
    capacity: usize,
    ttl: Option<Duration>,
}

struct Entries<K, V> {
    map: HashMap<K, Entry<V>>,
    /// Keys in insertion order, with the sequence number of their entry; an
    /// element whose number no longer matches its entry is stale.
    order: VecDeque<(K, u64)>,
    seq: u64,
}

struct Entry<V> {
    value: V,
    seq: u64,
    inserted: Instant,
}

impl<K, V> std::fmt::Debug for MemoryCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The default number of entries of a loader's [`MemoryCache`].
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

impl<K, V> MemoryCache<K, V> {
    /// A cache of at most `capacity` entries, each kept at most `ttl` (or
    /// until evicted, with `None`).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a capacity of 0 (build the loader with
    /// [`no_cache`](crate::loader::LoaderBuilder::no_cache) instead), and
    /// [`ConfigError::ZeroDuration`] for a time to live of zero.
    pub fn new(capacity: usize, ttl: Option<Duration>) -> Result<Self, ConfigError> {
        if capacity == 0 {
            return Err(ConfigError::Zero {
                setting: "MemoryCache capacity",
                hint: "to cache nothing, build the loader with no_cache()",
            });
        }
        if ttl == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroDuration {
                setting: "MemoryCache ttl",
                hint: "use None to keep entries until they are evicted",
            });
        }
        Ok(MemoryCache {
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
            }),
            capacity,
            ttl,
        })
    }

    /// The number of entries held, expired ones included until they are dropped.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // No user code runs under the lock, so a poisoned lock still guards
        // consistent entries.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fresh(&self, entry: &Entry<V>, now: Instant) -> bool {
        self.ttl
            .is_none_or(|ttl| now.saturating_duration_since(entry.inserted) < ttl)
    }
}

impl<K, V> Cache<K, V> for MemoryCache<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.lock();
        let entry = entries.map.get(key)?;
        if self.ttl.is_none() || self.fresh(entry, Instant::now()) {
            return Some(entry.value.clone());
        }
        entries.map.remove(key);
        None
    }

    fn insert(&self, key: K, value: V) {
        let now = Instant::now();
        let mut entries = self.lock();
        let entries = &mut *entries;
        entries.seq += 1;
        let seq = entries.seq;
        entries.order.push_back((key.clone(), seq));
        entries.map.insert(
            key,
            Entry {
                value,
                seq,
                inserted: now,
            },
        );
        while entries.map.len() > self.capacity {
            let Some((oldest, seq)) = entries.order.pop_front() else {
                break;
            };
            if entries.map.get(&oldest).is_some_and(|e| e.seq == seq) {
                entries.map.remove(&oldest);
            }
        }
        // Replaced and removed keys leave stale elements behind; drop them
        // once they outnumber the live ones, so memory stays bounded.
        if entries.order.len() > 2 * self.capacity.max(entries.map.len()) {
            let map = &entries.map;
            entries
                .order
                .retain(|(k, seq)| map.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    fn remove(&self, key: &K) {
        self.lock().map.remove(key);
    }

    fn clear(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.order.clear();
    }
}
