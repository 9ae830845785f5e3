//! Specification of the `Loader`: request coalescing on the engine.
//!
//! Every test runs on tokio's paused clock: times are exact, and no test
//! sleeps for real.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{
    loader::{batch_fn, Cache, LoadError, Loader, MemoryCache},
    ConfigError,
};
use common::{advance, now_or_never, settle};
use tokio::time::{sleep, Instant};

const MS: Duration = Duration::from_millis(1);

/// One call of the batch function: when (since the test started) and with
/// which keys.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    at: Duration,
    keys: Vec<u32>,
}

#[derive(Clone)]
struct Log {
    start: Instant,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Log {
    fn new() -> Self {
        Log {
            start: Instant::now(),
            calls: Arc::default(),
        }
    }

    fn record(&self, keys: &[u32]) {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        self.calls.lock().unwrap().push(Call {
            at: self.start.elapsed(),
            keys,
        });
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Every key the batch function was asked for, in order of the calls.
    fn keys(&self) -> Vec<u32> {
        self.calls().into_iter().flat_map(|c| c.keys).collect()
    }
}

fn value(k: u32) -> String {
    format!("v{k}")
}

/// A batch function that records its calls, takes `delay`, and answers every
/// key with `v{key}`.
fn recording(
    log: &Log,
    delay: Duration,
) -> impl baler::loader::BatchFn<u32, String, Error = String, Values = HashMap<u32, String>> {
    let log = log.clone();
    batch_fn(move |keys: Vec<u32>| {
        log.record(&keys);
        async move {
            sleep(delay).await;
            Ok::<_, String>(keys.into_iter().map(|k| (k, value(k))).collect())
        }
    })
}

type TestLoader = Loader<u32, String, String>;

/// Awaits `f`, failing the test (rather than hanging it) if it takes more
/// than an hour of the paused clock.
async fn within_an_hour<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), f)
        .await
        .expect("a load hung")
}

fn spawn_load(
    loader: &TestLoader,
    key: u32,
) -> tokio::task::JoinHandle<(Duration, Result<String, LoadError<String>>)> {
    let load = loader.load(key);
    let start = Instant::now();
    tokio::spawn(async move {
        let result = load.await;
        (start.elapsed(), result)
    })
}

// ----- answers by key -----------------------------------------------------

/// The batch function answers in an order unrelated to its keys'; matching
/// by position (as the Go original does) would hand callers other keys'
/// values.
#[tokio::test(start_paused = true)]
async fn answers_in_scrambled_order_reach_the_callers_of_their_own_keys() {
    let loader: TestLoader = Loader::builder()
        .min_batch_size(8)
        .build(batch_fn(|keys: Vec<u32>| async move {
            let mut answer: Vec<(u32, String)> = keys.into_iter().map(|k| (k, value(k))).collect();
            // Reverse, then swap pairs: no key keeps its position.
            answer.reverse();
            for pair in answer.chunks_mut(2) {
                pair.reverse();
            }
            Ok::<_, String>(answer)
        }))
        .unwrap();
    let keys = [40, 3, 17, 8, 99, 1, 56, 23];
    let loads: Vec<_> = keys.iter().map(|&k| loader.load(k)).collect();
    for (k, load) in keys.iter().zip(loads) {
        assert_eq!(load.await.unwrap(), value(*k));
    }
    assert_eq!(loader.stats().batches, 1, "all eight went in one batch");
}

/// A key missing from the answer is `NotFound`, never the next key's value.
#[tokio::test(start_paused = true)]
async fn a_batch_function_answering_too_few_keys_leaves_the_missing_ones_not_found() {
    let log = Log::new();
    let inner = log.clone();
    let loader: TestLoader = Loader::builder()
        .min_batch_size(3)
        .build(batch_fn(move |keys: Vec<u32>| {
            inner.record(&keys);
            async move {
                // Answers as a list that skips key 2: position 1 holds key 3.
                Ok::<_, String>(
                    keys.into_iter()
                        .filter(|&k| k != 2)
                        .map(|k| (k, value(k)))
                        .collect::<Vec<_>>(),
                )
            }
        }))
        .unwrap();
    let results = loader.load_many([1, 2, 3]).await;
    assert_eq!(results[0].as_ref().unwrap(), &value(1));
    assert_eq!(results[1], Err(LoadError::NotFound));
    assert_eq!(results[2].as_ref().unwrap(), &value(3));
    // NotFound is not cached unless asked: key 2 is asked for again.
    assert_eq!(loader.load(2).await, Err(LoadError::NotFound));
    assert_eq!(log.keys(), vec![1, 2, 3, 2]);
}

/// Pairs for keys nobody asked for reach nobody: not the callers of the
/// batch, not the cache.
#[tokio::test(start_paused = true)]
async fn a_batch_function_answering_too_many_keys_has_the_extra_ones_ignored() {
    let log = Log::new();
    let inner = log.clone();
    let loader: TestLoader = Loader::builder()
        .min_batch_size(2)
        .build(batch_fn(move |keys: Vec<u32>| {
            inner.record(&keys);
            async move {
                let mut answer = vec![(100, "extra".to_owned()), (101, "extra".to_owned())];
                answer.extend(keys.into_iter().map(|k| (k, value(k))));
                Ok::<_, String>(answer)
            }
        }))
        .unwrap();
    assert_eq!(
        loader.load_many([1, 2]).await,
        vec![Ok(value(1)), Ok(value(2))]
    );
    assert_eq!(loader.load(100).await.unwrap(), "extra");
    assert_eq!(
        log.keys(),
        vec![1, 2, 100],
        "key 100 was fetched when asked for, not taken from an unasked answer"
    );
}

/// A key answered twice: the first answer counts, whether it came in the
/// order of the keys or out of it.
#[tokio::test(start_paused = true)]
async fn a_key_answered_twice_gets_its_first_answer() {
    let loader: TestLoader = Loader::builder()
        .min_batch_size(3)
        .build(batch_fn(|keys: Vec<u32>| async move {
            // In the keys' order, then every key again, then key 3's
            // second answer out of order before its first.
            let mut answer: Vec<(u32, String)> = keys
                .iter()
                .filter(|&&k| k != 3)
                .map(|&k| (k, value(k)))
                .collect();
            answer.extend(keys.iter().map(|&k| (k, "later".to_owned())));
            Ok::<_, String>(answer)
        }))
        .unwrap();
    assert_eq!(
        loader.load_many([1, 2, 3]).await,
        vec![Ok(value(1)), Ok(value(2)), Ok("later".to_owned())]
    );
}

/// A key cleared while queued, and loaded again before its batch went, is
/// queued twice: the batch function still sees it once, and the callers of
/// both fetches get its value.
#[tokio::test(start_paused = true)]
async fn a_key_queued_again_after_clear_is_fetched_once_in_its_batch() {
    let log = Log::new();
    let inner = log.clone();
    let loader: TestLoader = Loader::builder()
        .min_batch_size(4)
        .no_cache()
        .build(batch_fn(move |keys: Vec<u32>| {
            inner.record(&keys);
            async move {
                // In the keys' order.
                Ok::<_, String>(keys.into_iter().map(|k| (k, value(k))).collect::<Vec<_>>())
            }
        }))
        .unwrap();
    let first = loader.load(1);
    let two = loader.load(2);
    loader.clear(&1);
    let again = loader.load(1);
    let three = loader.load(3);
    assert_eq!(first.await, Ok(value(1)));
    assert_eq!(two.await, Ok(value(2)));
    assert_eq!(again.await, Ok(value(1)));
    assert_eq!(three.await, Ok(value(3)));
    assert_eq!(log.calls().len(), 1, "one batch of four operations");
    assert_eq!(log.keys(), vec![1, 2, 3], "key 1 once");
}

/// `load_many` answers each key on its own, in the order asked, repeats
/// included.
#[tokio::test(start_paused = true)]
async fn load_many_returns_one_result_per_key_in_the_order_asked() {
    let loader: TestLoader = Loader::new(batch_fn(|keys: Vec<u32>| async move {
        Ok::<_, String>(
            keys.into_iter()
                .filter(|k| k % 2 == 0)
                .map(|k| (k, value(k)))
                .collect::<HashMap<_, _>>(),
        )
    }))
    .unwrap();
    let results = loader.load_many([4, 3, 2, 4]).await;
    assert_eq!(
        results,
        vec![
            Ok(value(4)),
            Err(LoadError::NotFound),
            Ok(value(2)),
            Ok(value(4))
        ]
    );
}

// ----- de-duplication -----------------------------------------------------

/// Many callers (separate tasks, and `load_many` with repeats) asking for
/// the same keys at once: the batch function sees each key once.
#[tokio::test(start_paused = true)]
async fn concurrent_loads_of_one_key_from_many_callers_share_one_fetch() {
    let log = Log::new();
    let loader = Loader::builder()
        .no_cache()
        .build(recording(&log, 50 * MS))
        .unwrap();
    let mut callers = Vec::new();
    for _ in 0..10 {
        callers.push(spawn_load(&loader, 5));
        callers.push(spawn_load(&loader, 6));
    }
    let many = loader.load_many([6, 5, 6]).await;
    assert_eq!(many, vec![Ok(value(6)), Ok(value(5)), Ok(value(6))]);
    for caller in callers {
        let (_, result) = caller.await.unwrap();
        assert!(result.is_ok());
    }
    let mut keys = log.keys();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![5, 6],
        "each key was fetched once, without a cache"
    );
    let stats = loader.stats();
    assert_eq!((stats.loads, stats.fetches, stats.joined), (23, 2, 21));
}

/// Once a fetch is over (and without a cache), the next load fetches again:
/// de-duplication is of loads in flight, not a cache in disguise.
#[tokio::test(start_paused = true)]
async fn a_key_is_fetched_again_after_its_fetch_ended_when_nothing_is_cached() {
    let log = Log::new();
    let loader = Loader::builder()
        .no_cache()
        .build(recording(&log, MS))
        .unwrap();
    assert_eq!(loader.load(1).await.unwrap(), value(1));
    assert_eq!(loader.load(1).await.unwrap(), value(1));
    assert_eq!(log.keys(), vec![1, 1]);
}

// ----- max handlers -------------------------------------------------------

/// With `max_in_flight(2)`, never more than two calls of the batch function
/// run at once, however many batches are ready.
#[tokio::test(start_paused = true)]
async fn max_in_flight_caps_the_batch_calls_running_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let loader: TestLoader = Loader::builder()
        .max_batch_size(1)
        .max_in_flight(2)
        .build(batch_fn(move |keys: Vec<u32>| {
            let (r, p) = (r.clone(), p.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                sleep(100 * MS).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(keys.into_iter().map(|k| (k, value(k))).collect::<Vec<_>>())
            }
        }))
        .unwrap();
    let start = Instant::now();
    let results = loader.load_many(0..6).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(loader.stats().batches, 6);
    assert_eq!(start.elapsed(), 300 * MS, "three waves of two calls");
}

// ----- the cache ----------------------------------------------------------

/// A cached key is answered at once, while a slow batch of another key is
/// in flight: a hit does not queue behind a fetch.
#[tokio::test(start_paused = true)]
async fn a_cache_hit_answers_at_once_while_a_batch_of_other_keys_is_in_flight() {
    let log = Log::new();
    let loader = Loader::builder()
        .max_in_flight(1)
        .build(recording(&log, 10_000 * MS))
        .unwrap();
    let first = spawn_load(&loader, 1);
    let (_, result) = first.await.unwrap();
    assert_eq!(result.unwrap(), value(1));

    let slow = spawn_load(&loader, 2);
    settle().await;
    assert_eq!(log.calls().len(), 2, "the batch of key 2 is in flight");
    let mut hit = loader.load(1);
    assert_eq!(
        now_or_never(&mut hit),
        Some(Ok(value(1))),
        "answered on the first poll, without waiting"
    );
    assert!(!slow.is_finished());
    assert_eq!(loader.stats().cache_hits, 1);
    let (waited, _) = slow.await.unwrap();
    assert_eq!(waited, 10_000 * MS);
}

/// `prime` fills the cache without a fetch (and does not replace a value
/// already there); `clear` and `clear_all` make the next loads fetch again.
#[tokio::test(start_paused = true)]
async fn prime_fills_the_cache_and_clear_makes_the_next_load_fetch_again() {
    let log = Log::new();
    let loader = Loader::new(recording(&log, MS)).unwrap();
    assert!(loader.prime(1, "primed".to_owned()));
    assert!(!loader.prime(1, "again".to_owned()), "a cached value stays");
    assert_eq!(loader.load(1).await.unwrap(), "primed");
    assert_eq!(loader.load(2).await.unwrap(), value(2));
    assert_eq!(loader.load(2).await.unwrap(), value(2));
    assert_eq!(log.keys(), vec![2], "1 was primed, 2 came from the cache");

    loader.clear(&1);
    assert_eq!(loader.load(1).await.unwrap(), value(1));
    assert_eq!(log.keys(), vec![2, 1]);

    loader.clear_all();
    assert_eq!(
        loader.load_many([1, 2]).await,
        vec![Ok(value(1)), Ok(value(2))]
    );
    assert_eq!(log.keys(), vec![2, 1, 1, 2]);
}

/// `clear` during a fetch: its callers still get its result, but the result
/// is not cached, and a load after the clear fetches anew.
#[tokio::test(start_paused = true)]
async fn clear_during_a_fetch_keeps_its_result_out_of_the_cache() {
    let log = Log::new();
    let loader = Loader::new(recording(&log, 100 * MS)).unwrap();
    let before = spawn_load(&loader, 1);
    settle().await;
    loader.clear(&1);
    let after = spawn_load(&loader, 1);
    assert_eq!(before.await.unwrap().1.unwrap(), value(1));
    assert_eq!(after.await.unwrap().1.unwrap(), value(1));
    assert_eq!(log.keys(), vec![1, 1], "the load after clear fetched again");
}

/// Errors that say something about the key are cached only when asked;
/// by default a failed key is fetched again.
#[tokio::test(start_paused = true)]
async fn errors_are_cached_only_when_asked() {
    for cache_errors in [false, true] {
        let log = Log::new();
        let inner = log.clone();
        let loader: TestLoader = Loader::builder()
            .cache_errors(cache_errors)
            .build(batch_fn(move |keys: Vec<u32>| {
                inner.record(&keys);
                async move { Ok::<_, String>(Vec::<(u32, String)>::new()) }
            }))
            .unwrap();
        assert_eq!(loader.load(7).await, Err(LoadError::NotFound));
        assert_eq!(loader.load(7).await, Err(LoadError::NotFound));
        let fetched = if cache_errors { 1 } else { 2 };
        assert_eq!(log.keys().len(), fetched, "cache_errors({cache_errors})");
    }
}

/// The default in-memory cache: bounded, oldest out first, with a time to
/// live on tokio's clock.
#[tokio::test(start_paused = true)]
async fn the_memory_cache_evicts_its_oldest_entry_and_expires_entries_after_their_ttl() {
    let cache = MemoryCache::new(2, Some(Duration::from_secs(60))).unwrap();
    cache.insert(1, "one");
    advance(Duration::from_secs(30)).await;
    cache.insert(2, "two");
    cache.insert(3, "three");
    assert_eq!(cache.get(&1), None, "the oldest entry was evicted");
    assert_eq!((cache.get(&2), cache.get(&3)), (Some("two"), Some("three")));
    cache.insert(2, "two again");
    cache.insert(4, "four");
    assert_eq!(cache.get(&3), None, "replacing 2 made 3 the oldest");
    assert_eq!(cache.len(), 2);

    advance(Duration::from_secs(59)).await;
    assert_eq!(cache.get(&2), Some("two again"));
    advance(Duration::from_secs(1)).await;
    assert_eq!(cache.get(&2), None, "expired after 60 s");

    assert!(matches!(
        MemoryCache::<u32, u32>::new(0, None),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        MemoryCache::<u32, u32>::new(1, Some(Duration::ZERO)),
        Err(ConfigError::ZeroDuration { .. })
    ));
}

/// A loader with a short-lived cache fetches a key again once it expired.
#[tokio::test(start_paused = true)]
async fn a_loader_fetches_a_key_again_once_its_cached_value_expired() {
    let log = Log::new();
    let loader = Loader::builder()
        .cache(MemoryCache::new(100, Some(Duration::from_secs(1))).unwrap())
        .build(recording(&log, Duration::ZERO))
        .unwrap();
    loader.load(1).await.unwrap();
    loader.load(1).await.unwrap();
    assert_eq!(log.keys(), vec![1]);
    advance(Duration::from_secs(1)).await;
    loader.load(1).await.unwrap();
    assert_eq!(log.keys(), vec![1, 1]);
}

// ----- cancellation -------------------------------------------------------

/// The caller who first asked for a key gives up while its batch runs; the
/// other callers of that key, and of the other key in the batch, still get
/// their values when the batch ends. (The Go original ran the batch under
/// the first caller's context, so its cancellation failed everyone.)
#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_during_the_batch_does_not_cancel_it_for_the_others() {
    let log = Log::new();
    let loader = Loader::builder()
        .max_operation_time(Duration::from_secs(1))
        .min_batch_size(2)
        .build(recording(&log, 500 * MS))
        .unwrap();
    let impatient = {
        let load = loader.load(7);
        tokio::spawn(async move { tokio::time::timeout(100 * MS, load).await })
    };
    let patient = spawn_load(&loader, 7);
    let other = spawn_load(&loader, 8);
    assert!(impatient.await.unwrap().is_err(), "gave up after 100 ms");
    let (waited, result) = within_an_hour(patient).await.unwrap();
    assert_eq!(result.unwrap(), value(7));
    assert_eq!(waited, 500 * MS, "the batch ran to its end");
    assert_eq!(within_an_hour(other).await.unwrap().1.unwrap(), value(8));
    assert_eq!(log.keys(), vec![7, 8]);
}

/// The first caller gives up before the batch is dispatched: the key stays
/// queued for the callers who joined it.
#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_before_dispatch_leaves_the_key_queued_for_the_others() {
    let log = Log::new();
    let loader = Loader::builder()
        .min_batch_size(3)
        .build(recording(&log, Duration::ZERO))
        .unwrap();
    let first = loader.load(1);
    let joined = spawn_load(&loader, 1);
    let other = spawn_load(&loader, 2);
    settle().await;
    drop(first);
    assert_eq!(within_an_hour(joined).await.unwrap().1.unwrap(), value(1));
    assert_eq!(within_an_hour(other).await.unwrap().1.unwrap(), value(2));
    assert_eq!(
        log.calls(),
        vec![Call {
            at: 17 * MS,
            keys: vec![1, 2]
        }]
    );
}

/// When every caller of a key gives up before its batch goes, the key is
/// taken out: the batch function is not asked for a value nobody wants.
#[tokio::test(start_paused = true)]
async fn a_key_whose_callers_all_gave_up_before_dispatch_is_not_fetched() {
    let log = Log::new();
    let loader = Loader::builder()
        .min_batch_size(5)
        .build(recording(&log, Duration::ZERO))
        .unwrap();
    let (a, b) = (loader.load(1), loader.load(1));
    let kept = spawn_load(&loader, 2);
    settle().await;
    drop((a, b));
    assert_eq!(within_an_hour(kept).await.unwrap().1.unwrap(), value(2));
    assert_eq!(log.keys(), vec![2]);
    // Key 1 is neither in flight nor cached: a new load fetches it.
    assert_eq!(loader.load(1).await.unwrap(), value(1));
    assert_eq!(log.keys(), vec![2, 1]);
}

// ----- failures -----------------------------------------------------------

/// A batch function that runs past the timeout is cancelled, and every key
/// of its batch resolves as `TimedOut`, at the timeout, whoever gave up
/// earlier. A timeout is not cached.
#[tokio::test(start_paused = true)]
async fn max_operation_time_cancels_a_slow_batch_and_no_caller_can_shorten_it() {
    let log = Log::new();
    let loader = Loader::builder()
        .max_operation_time(Duration::from_secs(1))
        .cache_errors(true)
        .min_batch_size(2)
        .build(recording(&log, Duration::from_secs(10)))
        .unwrap();
    let impatient = {
        let load = loader.load(1);
        tokio::spawn(async move { tokio::time::timeout(10 * MS, load).await })
    };
    let a = spawn_load(&loader, 1);
    let b = spawn_load(&loader, 2);
    assert!(impatient.await.unwrap().is_err());
    let timeout = Err(LoadError::TimedOut {
        after: Duration::from_secs(1),
    });
    for load in [a, b] {
        let (waited, result) = load.await.unwrap();
        assert_eq!(result, timeout);
        assert_eq!(waited, Duration::from_secs(1));
    }
    assert!(loader.load(1).await.is_err());
    assert_eq!(
        log.keys(),
        vec![1, 2, 1],
        "the timed-out key was fetched again"
    );
}

/// A failed batch gives every key of the batch the same error (one `Arc`,
/// not a clone per caller), and the failure is not cached.
#[tokio::test(start_paused = true)]
async fn a_failing_batch_function_shares_one_error_with_every_key_of_its_batch() {
    let log = Log::new();
    let inner = log.clone();
    let loader: TestLoader = Loader::builder()
        .min_batch_size(2)
        .build(batch_fn(move |keys: Vec<u32>| {
            inner.record(&keys);
            async move { Err::<Vec<(u32, String)>, _>("the database is down".to_owned()) }
        }))
        .unwrap();
    let results = loader.load_many([1, 2]).await;
    let errors: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().unwrap_err().fetch_error().unwrap().clone())
        .collect();
    assert_eq!(*errors[0], "the database is down");
    assert!(Arc::ptr_eq(&errors[0], &errors[1]), "one shared error");
    let message = results[0].as_ref().unwrap_err().to_string();
    assert!(message.contains("the database is down"), "{message}");
    assert!(loader.load(1).await.is_err());
    assert_eq!(log.keys(), vec![1, 2, 1], "the failure was not cached");
}

/// A panic in the batch function fails the keys of its batch with
/// `Panicked`; the loader goes on answering other keys.
#[tokio::test(start_paused = true)]
async fn a_panicking_batch_function_fails_its_keys_and_the_loader_goes_on() {
    let loader: TestLoader = Loader::builder()
        .min_batch_size(2)
        .build(batch_fn(|keys: Vec<u32>| async move {
            assert!(!keys.contains(&13), "unlucky key");
            Ok::<_, String>(keys.into_iter().map(|k| (k, value(k))).collect::<Vec<_>>())
        }))
        .unwrap();
    let results = loader.load_many([13, 14]).await;
    for result in &results {
        match result {
            Err(LoadError::Panicked { message }) => assert!(message.contains("unlucky key")),
            other => panic!("expected Panicked, got {other:?}"),
        }
    }
    assert_eq!(
        loader.load_many([15, 16]).await,
        vec![Ok(value(15)), Ok(value(16))]
    );
}

// ----- shutdown -----------------------------------------------------------

/// Keys below the minimum batch size, waiting for a ticker far away, are
/// dispatched at once by shutdown; every load resolves; later loads are
/// refused with `Stopped`.
#[tokio::test(start_paused = true)]
async fn shutdown_dispatches_stragglers_below_the_minimum_at_once_and_nothing_hangs() {
    let log = Log::new();
    let loader = Loader::builder()
        .min_batch_size(20)
        .ticker(Duration::from_secs(3600))
        .build(recording(&log, Duration::ZERO))
        .unwrap();
    let loads: Vec<_> = (0..5).map(|k| spawn_load(&loader, k)).collect();
    settle().await;
    assert!(log.calls().is_empty(), "held below the minimum");
    let report = within_an_hour(loader.shutdown(None)).await;
    assert!(report.is_clean());
    assert_eq!(report.flushed, 5);
    for (k, load) in (0..5).zip(loads) {
        let (waited, result) = within_an_hour(load).await.unwrap();
        assert_eq!(result.unwrap(), value(k));
        assert_eq!(waited, Duration::ZERO);
    }
    assert_eq!(loader.load(99).await, Err(LoadError::Stopped));
    // A cached key is still answered after shutdown.
    assert_eq!(loader.load(3).await.unwrap(), value(3));
}

/// Dropping the last handle drains the loader like a shutdown: loads still
/// waiting resolve.
#[tokio::test(start_paused = true)]
async fn dropping_the_loader_still_answers_the_loads_waiting() {
    let log = Log::new();
    let loader = Loader::builder()
        .min_batch_size(10)
        .ticker(Duration::from_secs(3600))
        .build(recording(&log, Duration::ZERO))
        .unwrap();
    let load = loader.load(4);
    let start = Instant::now();
    drop(loader);
    assert_eq!(within_an_hour(load).await.unwrap(), value(4));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "dispatched by the drain, not by the ticker an hour later"
    );
}

// ----- backpressure -------------------------------------------------------

/// More keys than the engine's buffer holds (10,000): the loads beyond it
/// wait for room, driven by their callers, instead of failing; every key is
/// answered, once.
#[tokio::test(start_paused = true)]
async fn loads_beyond_the_buffer_wait_for_room_instead_of_failing() {
    let log = Log::new();
    let loader = Loader::builder()
        .max_batch_size(100)
        .max_in_flight(1)
        .build(recording(&log, Duration::from_secs(1)))
        .unwrap();
    let keys = 0..10_050u32;
    let results = loader.load_many(keys.clone()).await;
    for (k, result) in keys.zip(results) {
        assert_eq!(result.unwrap(), value(k));
    }
    assert_eq!(log.keys().len(), 10_050, "each key fetched once");
    assert_eq!(loader.stats().fetches, 10_050);
}

// ----- configuration ------------------------------------------------------

// ----- races --------------------------------------------------------------

/// Many tasks on several threads load overlapping keys, some giving up
/// half-way (sometimes the caller who started a fetch, sometimes one who
/// joined it), with keys cleared under their feet: every load that is awaited
/// gets its own key's value, and none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_racing_with_give_ups_and_clears_on_several_threads_each_get_their_own_value() {
    let loader: TestLoader = Loader::builder()
        .max_batch_size(16)
        .max_in_flight(3)
        .cache(MemoryCache::new(8, None).unwrap())
        .build(batch_fn(|keys: Vec<u32>| async move {
            tokio::task::yield_now().await;
            Ok::<_, String>(keys.into_iter().map(|k| (k, value(k))).collect::<Vec<_>>())
        }))
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let loader = loader.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for i in 0..2_000u32 {
                let key = (i * 7 + t * 13) % 40;
                let load = loader.load(key);
                if (i + t) % 5 == 0 {
                    // Give up after one poll, whoever started the fetch.
                    let mut load = load;
                    let _ = now_or_never(&mut load);
                    drop(load);
                    continue;
                }
                if i % 97 == 0 {
                    loader.clear(&key);
                }
                assert_eq!(load.await.unwrap(), value(key));
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("no load hangs")
            .unwrap();
    }
    assert_eq!(answered, 8 * 1_600);
    let stats = loader.stats();
    assert_eq!(stats.loads, 8 * 2_000);
    assert!(stats.joined > 0 && stats.cache_hits > 0, "{stats:?}");
}
