//! Capacity: dispatch spends cost from a token bucket at the capacity's rate;
//! one capacity may be shared; the engine reports its target to it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{Batcher, Capacity, CapacitySource, ConfigError, CostLimit, Operation, SubmitError};
use common::{assert_target, settle, Recorder};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// Cost dispatched by each moment must never exceed `rate × elapsed`.
fn assert_paced<T, K>(log: &common::Log<T, K>, start: Instant, rate: u64) {
    let mut spent = 0;
    for batch in log.lock().unwrap().iter() {
        spent += batch.cost;
        let allowed = rate as f64 * (batch.at - start).as_secs_f64();
        assert!(
            spent as f64 <= allowed + 1e-6,
            "spent {spent} by {:?}, more than {allowed}",
            batch.at - start
        );
    }
}

#[tokio::test(start_paused = true)]
async fn capacity_paces_dispatch_so_1000_operations_of_cost_10_at_1000_per_second_take_10_seconds()
{
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(Capacity::provisioned(1_000).unwrap())
        .build(handler)
        .unwrap();
    let start = Instant::now();
    let tickets: Vec<_> = (0..1000)
        .map(|i| b.try_submit(Operation::new(i).with_cost(10)).unwrap())
        .collect();
    for t in tickets {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(10),
        "never less than 10 s: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(10_100),
        "and not much more: {elapsed:?}"
    );
    assert_paced(&log, start, 1_000);
    // Batches are cut to the burst (100 ms worth = 100): 10 operations of cost 10.
    assert!(log.lock().unwrap().iter().all(|s| s.cost <= 100));
    assert_eq!(b.capacity().spent(), 10_000);
    // A batch's report reaches the engine just after its tickets resolve
    // (its task first lets the callers it woke run); a flush waits for it.
    b.flush().await;
    assert_eq!(assert_target(&b).target, 0);
}

#[tokio::test(start_paused = true)]
async fn an_operation_costing_more_than_the_capacity_can_ever_grant_is_refused_too_expensive() {
    let (handler, _log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(Capacity::provisioned_with_burst(1_000, 50).unwrap())
        .build(handler)
        .unwrap();
    match b.submit(Operation::new(1).with_cost(51)).await {
        Err(SubmitError::TooExpensive {
            cost: 51,
            limit: 50,
            limited_by: CostLimit::Capacity,
            payload: 1,
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    let s = assert_target(&b);
    assert_eq!(
        (s.submitted, s.target),
        (0, 0),
        "a refused submit leaves no trace"
    );
    let err = b.try_submit(Operation::new(2).with_cost(60)).unwrap_err();
    assert!(
        err.to_string()
            .contains("lower its cost or raise that limit"),
        "{err}"
    );
    b.submit(Operation::new(3).with_cost(50))
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_operation_costing_more_than_the_max_batch_cost_is_refused_too_expensive() {
    let (handler, _log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().max_batch_cost(8).build(handler).unwrap();
    assert!(matches!(
        b.try_submit(Operation::new(1).with_cost(9)),
        Err(SubmitError::TooExpensive {
            limited_by: CostLimit::MaxBatchCost,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn one_capacity_shared_by_two_batchers_is_never_overspent() {
    let capacity = Capacity::provisioned(1_000).unwrap();
    let (h1, log1) = Recorder::<u32, ()>::new(Duration::ZERO);
    let (h2, log2) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b1 = Batcher::builder()
        .capacity(capacity.clone())
        .build(h1)
        .unwrap();
    let b2 = Batcher::builder()
        .capacity(capacity.clone())
        .build(h2)
        .unwrap();
    let start = Instant::now();
    let mut tickets = Vec::new();
    for i in 0..300 {
        tickets.push(b1.try_submit(Operation::new(i).with_cost(10)).unwrap());
        tickets.push(b2.try_submit(Operation::new(i).with_cost(10)).unwrap());
    }
    for t in tickets {
        t.await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    // Merge both ledgers: together they stay within the one budget.
    let merged = Arc::new(Mutex::new(Vec::new()));
    merged
        .lock()
        .unwrap()
        .extend(log1.lock().unwrap().iter().cloned());
    merged
        .lock()
        .unwrap()
        .extend(log2.lock().unwrap().iter().cloned());
    merged.lock().unwrap().sort_by_key(|s| s.at);
    assert_paced(&merged, start, 1_000);
    assert!(!log1.lock().unwrap().is_empty() && !log2.lock().unwrap().is_empty());
    assert_eq!(capacity.spent(), 6_000);
}

#[tokio::test(start_paused = true)]
async fn the_engine_reports_its_target_to_its_capacity() {
    let capacity = Capacity::unlimited();
    let (h1, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let (h2, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b1 = Batcher::builder()
        .capacity(capacity.clone())
        .build(h1)
        .unwrap();
    let b2 = Batcher::builder()
        .capacity(capacity.clone())
        .build(h2)
        .unwrap();
    b1.pause();
    b2.pause();
    let t1 = b1.try_submit(Operation::new(1).with_cost(7)).unwrap();
    let t2 = b2.try_submit(Operation::new(2).with_cost(5)).unwrap();
    settle().await;
    assert_eq!(capacity.target(), 12, "the sum of both batchers' targets");
    b1.resume();
    b2.resume();
    t1.await.unwrap();
    t2.await.unwrap();
    settle().await;
    assert_eq!(capacity.target(), 0);
}

/// A capacity source whose rate a test sets, and that records the targets
/// it is told: the seam a shared (leased) capacity plugs into.
struct Dial {
    rate: AtomicU64,
    targets: Mutex<Vec<u64>>,
}

impl CapacitySource for Dial {
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::SeqCst)
    }
    fn max_rate(&self) -> u64 {
        10_000
    }
    fn target_changed(&self, target: u64) {
        self.targets.lock().unwrap().push(target);
    }
}

#[tokio::test(start_paused = true)]
async fn a_capacity_source_hears_the_target_and_its_rate_governs_dispatch() {
    let dial = Arc::new(Dial {
        rate: AtomicU64::new(0),
        targets: Mutex::new(Vec::new()),
    });
    let capacity = Capacity::from_source(dial.clone(), 100 * MS).unwrap();
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(capacity)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..10)
        .map(|i| b.try_submit(Operation::new(i).with_cost(10)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "rate 0: nothing may be spent"
    );
    assert_eq!(
        dial.targets.lock().unwrap().last(),
        Some(&100),
        "the source hears the need"
    );
    assert_eq!(b.stats().capacity, Some(0));
    // The source gains capacity (say, a partition lease): dispatch starts.
    dial.rate.store(1_000, Ordering::SeqCst);
    let start = Instant::now();
    for t in tickets {
        t.await.unwrap();
    }
    assert!(
        start.elapsed() <= Duration::from_millis(1_200),
        "{:?}",
        start.elapsed()
    );
    // The target drops when the last batch's report reaches the engine.
    b.flush().await;
    assert_eq!(dial.targets.lock().unwrap().last(), Some(&0));
}

#[test]
fn capacity_settings_are_validated() {
    assert!(Capacity::provisioned(0).is_err());
    assert!(Capacity::provisioned_with_burst(5, 0).is_err());
    let err = Capacity::provisioned(0).unwrap_err().to_string();
    assert!(err.contains("Capacity::unlimited()"), "{err}");
}

#[test]
fn a_burst_interval_above_a_day_is_refused_with_the_setting_named() {
    let dial = Arc::new(Dial {
        rate: AtomicU64::new(1_000),
        targets: Mutex::new(Vec::new()),
    });
    for interval in [Duration::MAX, Duration::from_secs(86_401)] {
        let err = Capacity::from_source(dial.clone(), interval).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.starts_with("Capacity::from_source (interval"),
            "{text}"
        );
        assert!(text.contains("lower it to 86400000 or less"), "{text}");
    }
}

#[test]
fn a_day_long_burst_interval_at_a_huge_rate_saturates_instead_of_overflowing() {
    let dial = Arc::new(Dial {
        rate: AtomicU64::new(1 << 53),
        targets: Mutex::new(Vec::new()),
    });
    let capacity = Capacity::from_source(dial, Duration::from_secs(86_400)).unwrap();
    // 2^53 per second for a day is above u64::MAX.
    assert_eq!(capacity.burst(), Some(u64::MAX));
    // The dial's most is 10,000 per second: a day of it.
    assert_eq!(capacity.max_burst(), Some(864_000_000));
}
