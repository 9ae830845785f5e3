//! Request coalescing (a dataloader): many callers ask for keys one at a
//! time; the loader asks the datastore for them many at a time.
//!
//! # The model
//!
//! ```text
//!  load(k) ──► cache? ──hit──► answered at once
//!                │ miss
//!                ▼
//!          in flight? ──yes──► join that fetch (one fetch, many callers)
//!                │ no
//!                ▼
//!          queue k on the engine ──► batch of keys ──► batch function(keys)
//!                                                          │ answer by key
//!  every caller of k ◄── k's own value, or NotFound ◄──────┘
//! ```
//!
//! A [`Loader`] is a [`Batcher`] whose operations are keys, with two things in
//! front of it: a [`Cache`] and a table of keys in flight. The engine forms the
//! batches (max and min batch size, the straggler ticker, the in-flight limit,
//! the timeout, shutdown); the loader only decides which keys need fetching
//! and hands each answer to every caller waiting for it.
//!
//! A load hashes its key once; the table of keys in flight and the batch's
//! index of keys both use that hash, which travels with the key through the
//! engine, so neither hashes the key again.
//!
//! What the loader guarantees, each with a test in `tests/loader.rs`:
//!
//! - **By key, never by position.** The batch function answers with key/value
//!   pairs in any order; each caller gets its own key's value, and a key
//!   missing from the answer resolves as [`LoadError::NotFound`].
//! - **One fetch per key in flight**, whoever asks for it: the batch function
//!   sees each key once while it is being fetched.
//! - **Cache hits do not wait** behind fetches in flight: a hit never touches
//!   the engine.
//! - **No caller's cancellation affects another.** The batch runs on the
//!   engine, not in any caller's future; a caller that gives up only leaves
//!   its key's fetch, which goes on while anyone else waits for it. The
//!   [`max_operation_time`](LoaderBuilder::max_operation_time) is the batch's, not a caller's.
//! - **Nothing hangs at shutdown**: [`Loader::shutdown`] dispatches every
//!   waiting key at once, whatever the minimum batch size, and loads after it
//!   resolve as [`LoadError::Stopped`].

mod batch_fn;
mod cache;
mod error;
mod flight;
mod hashed;
mod table;

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

pub use batch_fn::{batch_fn, BatchFn, BatchFnOf};
pub use cache::{Cache, MemoryCache, DEFAULT_CACHE_ENTRIES};
pub use error::LoadError;

use crate::batcher::Batcher;
use crate::error::{ConfigError, SubmitError};
use crate::settings::Dispatch;
use crate::shutdown::{Abandoned, ShutdownReport};
use batch_fn::LoaderHandler;
use error::FetchError;
use flight::{Flight, LoadResult, Stage};
use hashed::{Hashed, KeyHasher};
use table::Table;

/// The engine's buffer, in keys queued and not yet answered, unless the
/// maximum batch size asks for more.
const BUFFER_KEYS: usize = 10_000;

type DynCache<K, V, E> = Arc<dyn Cache<K, LoadResult<V, E>>>;

/// Coalesces loads of single keys into batch calls of a [`BatchFn`].
///
/// `K` is the key, `V` the value and `E` the batch function's error. Cloning
/// a `Loader` gives another handle to the same loader (same cache, same
/// batches). See the [module documentation](crate::loader) for the model.
///
/// ```
/// use std::collections::HashMap;
/// use baler::loader::{batch_fn, Loader};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let users: Loader<u64, String, std::io::Error> = Loader::builder()
///     .max_batch_size(100)
///     .build(batch_fn(|ids: Vec<u64>| async move {
///         // One query for the whole batch: SELECT ... WHERE id IN (...)
///         let rows: HashMap<u64, String> =
///             ids.into_iter().filter(|id| *id != 0).map(|id| (id, format!("user {id}"))).collect();
///         Ok(rows)
///     }))?;
///
/// let (a, b, zero) = tokio::join!(users.load(1), users.load(2), users.load(0));
/// assert_eq!(a?, "user 1");
/// assert_eq!(b?, "user 2");
/// assert!(matches!(zero, Err(baler::loader::LoadError::NotFound)));
/// assert_eq!(users.stats().batches, 1);
/// # Ok(())
/// # }
/// ```
pub struct Loader<K, V, E> {
    /// Held by the loader's handles only, not by their loads: when the last
    /// handle goes, the engine drains, so loads still waiting are dispatched
    /// at once rather than left to the ticker.
    batcher: Batcher<Hashed<K>, V, FetchError<E>>,
    inner: Arc<Inner<K, V, E>>,
}

/// What a loader's handles and its waiting loads share.
struct Inner<K, V, E> {
    /// Keys in flight: the fetch that every new caller of the key joins.
    table: Mutex<Table<K, V, E>>,
    /// Hashes keys for the table, outside its lock.
    hasher: KeyHasher,
    cache: Option<DynCache<K, V, E>>,
    cache_errors: bool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    /// Loads refused because the loader was shut down.
    refused: AtomicU64,
    cache_hits: AtomicU64,
    joined: AtomicU64,
    fetches: AtomicU64,
}

/// What a loader has done so far. See [`Loader::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoaderStats {
    /// Keys asked for (by `load`, and each key of `load_many`).
    pub loads: u64,
    /// Loads answered from the cache.
    pub cache_hits: u64,
    /// Loads that joined a fetch of the same key already in flight.
    pub joined: u64,
    /// Keys queued for fetching (each shared by its joined loads).
    pub fetches: u64,
    /// Calls of the batch function.
    pub batches: u64,
}

impl<K, V, E> Clone for Loader<K, V, E> {
    fn clone(&self) -> Self {
        Loader {
            batcher: self.batcher.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, E> fmt::Debug for Loader<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("stats", &self.stats())
            .finish()
    }
}

impl<K, V, E> Loader<K, V, E> {
    /// Starts configuring a loader, with the defaults of the Go dataloader
    /// batchers it follows: at most 100 keys a batch, 8 calls in flight, and
    /// a 17 ms straggler ticker.
    pub fn builder() -> LoaderBuilder<K, V, E> {
        LoaderBuilder::default()
    }

    /// What the loader has done so far.
    pub fn stats(&self) -> LoaderStats {
        let c = &self.inner.counters;
        // Every load is counted once, in one of these: one shared counter
        // fewer on the hot path.
        let (refused, cache_hits, joined, fetches) = (
            c.refused.load(Ordering::Relaxed),
            c.cache_hits.load(Ordering::Relaxed),
            c.joined.load(Ordering::Relaxed),
            c.fetches.load(Ordering::Relaxed),
        );
        LoaderStats {
            loads: refused + cache_hits + joined + fetches,
            cache_hits,
            joined,
            fetches,
            batches: self.batcher.stats().batches,
        }
    }
}

impl<K, V, E> Loader<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// A loader with the default options over `f`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::NoRuntime`] outside a tokio runtime.
    pub fn new<F>(f: F) -> Result<Self, ConfigError>
    where
        F: BatchFn<K, V, Error = E>,
    {
        Self::builder().build(f)
    }

    /// Loads one key: from the cache if it is there, else by joining the
    /// key's fetch in flight, else by queuing the key for the next batch.
    ///
    /// The key is queued when `load` is called; the returned future waits for
    /// its value. Dropping the future gives up this caller's wait only: the
    /// fetch goes on for every other caller of the key, and is only taken
    /// back (if its batch has not gone yet) when no caller waits any more.
    pub fn load(&self, key: K) -> Load<K, V, E> {
        let inner = &self.inner;
        if let Some(hit) = inner.cached(&key) {
            return Load::ready(hit);
        }
        let hash = inner.hasher.hash(&key);
        let mut table = inner.lock_table();
        if let Some(flight) = table.find(hash, &key) {
            flight.waiters.fetch_add(1, Ordering::Relaxed);
            inner.counters.joined.fetch_add(1, Ordering::Relaxed);
            return Load::waiting(
                flight.clone(),
                inner.clone() as Arc<dyn FlightTable<K, V, E>>,
            );
        }
        // A fetch of this key may have finished between the first look at
        // the cache and taking the table.
        if let Some(hit) = inner.cached(&key) {
            return Load::ready(hit);
        }
        let item = Hashed {
            key: key.clone(),
            hash,
        };
        let stage = match self.batcher.try_submit(item) {
            Ok(ticket) => Stage::Queued(ticket),
            Err(SubmitError::Full(item)) => {
                let batcher = self.batcher.clone();
                Stage::Submitting(Box::pin(async move { batcher.submit(item).await }))
            }
            Err(_) => {
                inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Load::ready(Err(LoadError::Stopped));
            }
        };
        inner.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let flight = Arc::new(Flight::new(key, hash, stage));
        table.insert(flight.clone());
        drop(table);
        Load::waiting(flight, inner.clone() as Arc<dyn FlightTable<K, V, E>>)
    }

    /// Loads many keys, with one result per key in the order of `keys`. Each
    /// key succeeds or fails on its own: a missing key is a
    /// [`LoadError::NotFound`] in its place, not an error for the whole call.
    /// The keys share batches with each other and with every other caller's
    /// loads.
    pub async fn load_many(&self, keys: impl IntoIterator<Item = K>) -> Vec<LoadResult<V, E>> {
        // Every key is queued before the first wait, so they all go in the
        // same batches.
        let loads: Vec<Load<K, V, E>> = keys.into_iter().map(|key| self.load(key)).collect();
        let mut results = Vec::with_capacity(loads.len());
        for load in loads {
            results.push(load.await);
        }
        results
    }

    /// Puts a value in the cache for `key`, unless the cache already holds
    /// one: a value the caller already has (say, from a list query) is then
    /// not fetched again. Returns whether the value was stored; with
    /// [`no_cache`](LoaderBuilder::no_cache) nothing is. To replace a cached
    /// value, [`clear`](Self::clear) the key first.
    pub fn prime(&self, key: K, value: V) -> bool {
        let Some(cache) = &self.inner.cache else {
            return false;
        };
        let _table = self.inner.lock_table();
        if cache.get(&key).is_some() {
            return false;
        }
        cache.insert(key, Ok(value));
        true
    }

    /// Forgets `key`: its cached value, and its fetch in flight, whose
    /// callers still get its result but whose result is not cached. The next
    /// load of `key` fetches it again.
    pub fn clear(&self, key: &K) {
        let hash = self.inner.hasher.hash(key);
        let mut table = self.inner.lock_table();
        if let Some(flight) = table.remove_key(hash, key) {
            flight.cacheable.store(false, Ordering::Relaxed);
        }
        if let Some(cache) = &self.inner.cache {
            cache.remove(key);
        }
    }

    /// Forgets every key, as [`clear`](Self::clear) does for one.
    pub fn clear_all(&self) {
        let mut table = self.inner.lock_table();
        for flight in table.drain() {
            flight.cacheable.store(false, Ordering::Relaxed);
        }
        if let Some(cache) = &self.inner.cache {
            cache.clear();
        }
    }

    /// Shuts the loader down: new loads resolve as [`LoadError::Stopped`],
    /// every key waiting is dispatched at once (whatever the minimum batch
    /// size), and the batches in flight are awaited.
    ///
    /// With a `deadline`, keys still unanswered when it passes resolve as
    /// [`LoadError::Abandoned`] and are listed in the report. Every load
    /// resolves either way: nothing hangs.
    pub async fn shutdown(&self, deadline: impl Into<Option<Duration>>) -> ShutdownReport<K> {
        let report = self.batcher.shutdown(deadline).await;
        ShutdownReport {
            flushed: report.flushed,
            completed: report.completed,
            failed: report.failed,
            abandoned: report
                .abandoned
                .into_iter()
                .map(|a| Abandoned {
                    id: a.id,
                    key: a.key,
                    payload: a.payload.key,
                    cost: a.cost,
                })
                .collect(),
        }
    }
}

/// What a waiting [`Load`] needs from its loader, with the loader's bounds
/// erased so that `Load` can be dropped without them.
trait FlightTable<K, V, E>: Send + Sync {
    /// The flight's result arrived: it is no longer in flight, and its
    /// result may be cached. Called under the flight's lock; returns whether
    /// any other caller waits for the result (none can join any more).
    fn settle(&self, flight: &Arc<Flight<K, V, E>>, result: &LoadResult<V, E>) -> bool;
    /// A waiter gave up. The last one to leave takes the fetch back.
    fn leave(&self, flight: &Arc<Flight<K, V, E>>);
}

impl<K, V, E> Inner<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    fn lock_table(&self) -> MutexGuard<'_, Table<K, V, E>> {
        // No user code runs under the lock (the cache's methods are brief and
        // a panic in one leaves the table consistent).
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, key: &K) -> Option<LoadResult<V, E>> {
        let hit = self.cache.as_ref()?.get(key)?;
        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(hit)
    }
}

impl<K, V, E> FlightTable<K, V, E> for Inner<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    fn settle(&self, flight: &Arc<Flight<K, V, E>>, result: &LoadResult<V, E>) -> bool {
        let mut table = self.lock_table();
        // Unless it was cleared (and perhaps replaced by a newer flight of
        // the key, which stays).
        table.remove(flight);
        // Callers join under the table's lock, and the flight has left the
        // table: this count can only go down from here.
        let others = flight.waiters.load(Ordering::Relaxed) > 1;
        if let Some(cache) = &self.cache {
            let cache_it = match result {
                Ok(_) => true,
                Err(e) => self.cache_errors && e.is_answer(),
            };
            if cache_it && flight.cacheable.load(Ordering::Relaxed) {
                cache.insert(flight.key.clone(), result.clone());
            }
        }
        others
    }

    fn leave(&self, flight: &Arc<Flight<K, V, E>>) {
        let last = {
            let mut table = self.lock_table();
            let last = flight.waiters.fetch_sub(1, Ordering::Relaxed) == 1;
            if last {
                table.remove(flight);
            }
            last
        };
        if last {
            // Dropped outside the flight's lock: dropping a ticket tells the
            // engine to take the key out of its buffer.
            let stage = std::mem::replace(&mut flight.lock().stage, Stage::Over);
            drop(stage);
        }
    }
}

/// The future of one [`Loader::load`]: resolves with the key's value or the
/// [`LoadError`] that says why there is none.
///
/// Dropping it gives up this caller's wait; see [`Loader::load`].
#[must_use = "a load's result is only seen by awaiting it; dropping it gives up the load"]
pub struct Load<K, V, E> {
    state: LoadState<K, V, E>,
}

enum LoadState<K, V, E> {
    Ready(Option<LoadResult<V, E>>),
    Waiting {
        flight: Arc<Flight<K, V, E>>,
        inner: Arc<dyn FlightTable<K, V, E>>,
        slot: Option<usize>,
    },
    Done,
}

impl<K, V, E> Load<K, V, E> {
    fn ready(result: LoadResult<V, E>) -> Self {
        Load {
            state: LoadState::Ready(Some(result)),
        }
    }

    fn waiting(flight: Arc<Flight<K, V, E>>, inner: Arc<dyn FlightTable<K, V, E>>) -> Self {
        Load {
            state: LoadState::Waiting {
                flight,
                inner,
                slot: None,
            },
        }
    }
}

// No field is structurally pinned: the result is only ever moved out.
impl<K, V, E> Unpin for Load<K, V, E> {}

impl<K, V, E> fmt::Debug for Load<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            LoadState::Ready(_) => "ready",
            LoadState::Waiting { .. } => "waiting",
            LoadState::Done => "done",
        };
        f.debug_struct("Load").field("state", &state).finish()
    }
}

impl<K, V, E> Future for Load<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    type Output = LoadResult<V, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match &mut this.state {
            LoadState::Ready(result) => result.take().unwrap_or(Err(LoadError::Stopped)),
            LoadState::Waiting {
                flight,
                inner,
                slot,
            } => {
                let mut state = flight.lock();
                match &state.result {
                    Some(result) => {
                        let result = result.clone();
                        drop(state);
                        flight.deregister(slot);
                        result
                    }
                    None => {
                        // A first poll registers before it polls the fetch,
                        // which has hardly ever arrived yet. A later poll
                        // mostly comes from the fetch's wake: it polls first,
                        // and only if the fetch is still pending registers
                        // and polls again, so that no wake falls between.
                        let registered = slot.is_none();
                        if registered {
                            flight.register(slot, cx.waker());
                        }
                        let mut polled = flight.poll_fetch(&mut state);
                        if polled.is_pending() && !registered {
                            flight.register(slot, cx.waker());
                            polled = flight.poll_fetch(&mut state);
                        }
                        let Poll::Ready(result) = polled else {
                            return Poll::Pending;
                        };
                        // Still under the flight's lock, so no other waiter
                        // can look for the result before it is stored.
                        if inner.settle(flight, &result) {
                            state.result = Some(result.clone());
                            drop(state);
                            flight.deregister(slot);
                            flight.wake_all();
                        }
                        // Else nobody else waits, nor can join: the slots
                        // go with the flight.
                        result
                    }
                }
            }
            // Polled again after it completed: there is nothing left to give.
            LoadState::Done => Err(LoadError::Stopped),
        };
        this.state = LoadState::Done;
        Poll::Ready(result)
    }
}

impl<K, V, E> Drop for Load<K, V, E> {
    fn drop(&mut self) {
        if let LoadState::Waiting {
            flight,
            inner,
            slot,
        } = &mut self.state
        {
            flight.deregister(slot);
            inner.leave(flight);
        }
    }
}

/// The cache a builder will give its loader.
enum CacheChoice<K, V, E> {
    Default,
    None,
    Custom(DynCache<K, V, E>),
}

/// Configures a [`Loader`]. Start from [`Loader::builder`].
///
/// Each option is the engine's option of the same name (see
/// [`Builder`](crate::Builder)): max and min batch size, the straggler
/// ticker, linger, the in-flight limit and the maximum operation time.
///
/// ```
/// use std::time::Duration;
/// use baler::loader::{batch_fn, Loader, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let loader = Loader::builder()
///     .max_batch_size(100)
///     .min_batch_size(20)
///     .ticker(Duration::from_millis(17))
///     .max_in_flight(4)
///     .max_operation_time(Duration::from_secs(2))
///     .cache(MemoryCache::new(50_000, Some(Duration::from_secs(60)))?)
///     .build(batch_fn(|keys: Vec<u32>| async move {
///         Ok::<_, std::io::Error>(keys.into_iter().map(|k| (k, k * 2)).collect::<Vec<_>>())
///     }))?;
/// assert_eq!(loader.load(21).await?, 42);
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct LoaderBuilder<K, V, E> {
    max_batch_size: usize,
    min_batch_size: usize,
    max_in_flight: usize,
    ticker: Duration,
    linger: Duration,
    max_operation_time: Option<Duration>,
    cache: CacheChoice<K, V, E>,
    cache_errors: bool,
    name: String,
    _types: PhantomData<fn(K) -> (V, E)>,
}

impl<K, V, E> Default for LoaderBuilder<K, V, E> {
    fn default() -> Self {
        LoaderBuilder {
            max_batch_size: 100,
            min_batch_size: 1,
            max_in_flight: 8,
            ticker: Duration::from_millis(17),
            linger: Duration::ZERO,
            max_operation_time: None,
            cache: CacheChoice::Default,
            cache_errors: false,
            name: "baler-loader".to_owned(),
            _types: PhantomData,
        }
    }
}

impl<K, V, E> fmt::Debug for LoaderBuilder<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = match self.cache {
            CacheChoice::Default => "default",
            CacheChoice::None => "none",
            CacheChoice::Custom(_) => "custom",
        };
        f.debug_struct("LoaderBuilder")
            .field("max_batch_size", &self.max_batch_size)
            .field("min_batch_size", &self.min_batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("ticker", &self.ticker)
            .field("linger", &self.linger)
            .field("max_operation_time", &self.max_operation_time)
            .field("cache", &cache)
            .field("cache_errors", &self.cache_errors)
            .finish()
    }
}

impl<K, V, E> LoaderBuilder<K, V, E> {
    /// The most keys in one call of the batch function. Default 100.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// The fewest keys worth a call of the batch function. Fewer keys wait
    /// for the next tick of the [`ticker`](Self::ticker), then go anyway.
    /// Default 1.
    pub fn min_batch_size(mut self, n: usize) -> Self {
        self.min_batch_size = n;
        self
    }

    /// The most calls of the batch function running at once: the engine's
    /// in-flight limit, as [`Builder::max_in_flight`](crate::Builder::max_in_flight).
    /// Default 8.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The period of the straggler ticker, which sends batches below the
    /// minimum size. Default 17 ms.
    pub fn ticker(mut self, period: Duration) -> Self {
        self.ticker = period;
        self
    }

    /// How long a batch waits for more keys while other batches are in
    /// flight. Default zero: as in the Go dataloader batchers, keys go as soon as a handler is
    /// free (and at once when none is busy); keys that arrive while every
    /// handler is busy gather into the next batch anyway. Raise it for
    /// fuller batches at the price of latency.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How long one call of the batch function may run; past it, the call is
    /// cancelled and its keys resolve as [`LoadError::TimedOut`]. It is the
    /// batch's limit: no caller giving up shortens it. Default: no limit; at
    /// most a day.
    pub fn max_operation_time(mut self, limit: Duration) -> Self {
        self.max_operation_time = Some(limit);
        self
    }

    /// Caches values in `cache` instead of the default
    /// [`MemoryCache`] of [`DEFAULT_CACHE_ENTRIES`] entries without expiry.
    pub fn cache(mut self, cache: impl Cache<K, LoadResult<V, E>>) -> Self {
        self.cache = CacheChoice::Custom(Arc::new(cache));
        self
    }

    /// Caches nothing: every load that is not joined to a fetch in flight
    /// goes to the batch function.
    pub fn no_cache(mut self) -> Self {
        self.cache = CacheChoice::None;
        self
    }

    /// Whether [`NotFound`](LoadError::NotFound) and
    /// [`Fetch`](LoadError::Fetch) errors are cached like values. Default
    /// false: a failed key is fetched again on its next load. Timeouts,
    /// panics and shutdown are never cached.
    pub fn cache_errors(mut self, cache: bool) -> Self {
        self.cache_errors = cache;
        self
    }

    /// The loader's name: the `batcher` field of its batch spans. Default
    /// `"baler-loader"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl<K, V, E> LoaderBuilder<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Send + Sync + 'static,
{
    /// Checks the options and starts the loader on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] that names the option to change, or
    /// [`ConfigError::NoRuntime`] outside a tokio runtime.
    pub fn build<F>(self, f: F) -> Result<Loader<K, V, E>, ConfigError>
    where
        F: BatchFn<K, V, Error = E>,
    {
        if self.max_in_flight == 0 {
            return Err(ConfigError::Zero {
                setting: "max_in_flight",
                hint: "with 0 the batch function could never be called",
            });
        }
        let mut engine = Batcher::builder()
            .name(self.name)
            .max_batch_size(self.max_batch_size)
            .min_batch_size(self.min_batch_size)
            .ticker(self.ticker)
            .linger(self.linger)
            .dispatch(Dispatch::LoadAware)
            .max_in_flight(self.max_in_flight)
            .buffer_size(BUFFER_KEYS.max(self.max_batch_size))
            .max_attempts(1);
        if let Some(limit) = self.max_operation_time {
            if limit.is_zero() {
                return Err(ConfigError::ZeroDuration {
                    setting: "max_operation_time",
                    hint: "leave it unset for no limit",
                });
            }
            crate::limits::check_duration("max_operation_time (milliseconds)", limit)?;
            engine = engine.max_operation_time(limit);
        }
        let cache = match self.cache {
            CacheChoice::Default => {
                let cache: MemoryCache<K, LoadResult<V, E>> =
                    MemoryCache::new(DEFAULT_CACHE_ENTRIES, None)?;
                Some(Arc::new(cache) as DynCache<K, V, E>)
            }
            CacheChoice::None => None,
            CacheChoice::Custom(cache) => Some(cache),
        };
        let hasher = KeyHasher::default();
        let batcher = engine.build(LoaderHandler {
            f,
            hasher: hasher.clone(),
            _values: PhantomData,
        })?;
        Ok(Loader {
            batcher,
            inner: Arc::new(Inner {
                table: Mutex::new(Table::default()),
                hasher,
                cache,
                cache_errors: self.cache_errors,
                counters: Counters::default(),
            }),
        })
    }
}
