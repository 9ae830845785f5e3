//! diagnose(): each finding, built from the situation it describes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use baler::{
    handler_fn, Batch, Batcher, Capacity, CapacitySource, CapacityStatus, Code, Operation, Outcome,
    Severity,
};
use common::{advance, settle, Recorder};

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_healthy_batcher_has_no_findings() {
    let (handler, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().build(handler).unwrap();
    b.submit(1).await.unwrap().await.unwrap();
    let d = b.diagnose().await;
    assert!(d.is_healthy(), "{d}");
    assert_eq!(d.to_string(), "healthy: nothing is holding work back");
}

#[tokio::test(start_paused = true)]
async fn paused_with_work_waiting() {
    let (handler, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().build(handler).unwrap();
    b.pause();
    let _t: Vec<_> = (0..3).map(|i| b.try_submit(i).unwrap()).collect();
    let d = b.diagnose().await;
    let f = d.find(Code::Paused).expect("a paused finding");
    assert_eq!(f.severity, Severity::Warning);
    assert_eq!(f.number("waiting"), Some(3.0));
    assert!(f.message.contains("call resume()"), "{f}");
}

/// A shared capacity that has leased none of its partitions.
struct Leases {
    rate: AtomicU64,
    store_error: Mutex<Option<String>>,
}

impl CapacitySource for Leases {
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::SeqCst)
    }
    fn max_rate(&self) -> u64 {
        10_000
    }
    fn target_changed(&self, _target: u64) {}
    fn status(&self) -> CapacityStatus {
        CapacityStatus::new(
            Some(0),
            Some((0, 10)),
            self.store_error.lock().unwrap().clone(),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn work_waiting_with_no_capacity_says_why_the_batch_never_starts() {
    let leases = Arc::new(Leases {
        rate: AtomicU64::new(0),
        store_error: Mutex::new(None),
    });
    let capacity = Capacity::from_source(leases.clone(), 100 * MS).unwrap();
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(capacity)
        .build(handler)
        .unwrap();
    let _t: Vec<_> = (0..5)
        .map(|i| b.try_submit(Operation::new(i).with_cost(10)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(log.lock().unwrap().is_empty());
    let d = b.diagnose().await;
    let f = d.find(Code::NoCapacity).expect("a no-capacity finding");
    assert_eq!(f.severity, Severity::Error);
    assert!(f.message.contains("0 of 10 partitions are leased"), "{f}");
    assert!(f.message.contains("no capacity is reserved"), "{f}");
    assert_eq!(f.number("target"), Some(50.0));
    assert_eq!(f.number("partitions_leased"), Some(0.0));

    *leases.store_error.lock().unwrap() = Some("connection refused".to_owned());
    let d = b.diagnose().await;
    let f = d.find(Code::NoCapacity).unwrap();
    assert!(
        f.message
            .contains("lease store cannot be reached (connection refused)"),
        "{f}"
    );
}

#[tokio::test(start_paused = true)]
async fn work_waiting_for_capacity_says_the_capacity_sets_the_pace() {
    // 100 cost per second, operations of cost 10: one operation every 100 ms.
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(Capacity::provisioned(100).unwrap())
        .build(handler)
        .unwrap();
    let _t: Vec<_> = (0..20)
        .map(|i| b.try_submit(Operation::new(i).with_cost(10)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let d = b.diagnose().await;
    let f = d
        .find(Code::CapacityBound)
        .expect("a capacity-bound finding");
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.number("capacity"), Some(100.0));
    let dispatched = log.lock().unwrap().len() as f64;
    assert!((4.0..=6.0).contains(&dispatched), "{dispatched}");
    assert_eq!(f.number("waiting"), Some(20.0 - dispatched));
    assert_eq!(f.number("target"), Some(d.stats.target as f64));
    assert_eq!(
        f.number("seconds_to_drain"),
        Some(d.stats.target as f64 / 100.0)
    );
    assert!(f.message.contains("the capacity sets the pace"), "{f}");

    // With an unlimited capacity nothing waits for it.
    let (handler, _) = Recorder::<u32, ()>::new(Duration::from_secs(1));
    let b = Batcher::builder().max_in_flight(1).build(handler).unwrap();
    let _t: Vec<_> = (0..20).map(|i| b.try_submit(i).unwrap()).collect();
    settle().await;
    assert!(b.diagnose().await.find(Code::CapacityBound).is_none());
}

#[tokio::test(start_paused = true)]
async fn in_flight_cap_reached_with_work_waiting() {
    let (handler, _) = Recorder::<u32, ()>::new(Duration::from_secs(1));
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(2)
        .build(handler)
        .unwrap();
    let _t: Vec<_> = (0..5).map(|i| b.try_submit(i).unwrap()).collect();
    settle().await;
    let d = b.diagnose().await;
    let f = d
        .find(Code::InFlightCapReached)
        .expect("an in-flight finding");
    assert_eq!(f.number("max_in_flight"), Some(2.0));
    assert_eq!(f.number("waiting"), Some(3.0));
    assert!(f.message.contains("raise max_in_flight"), "{f}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_running_long_without_a_max_operation_time_says_why_it_never_completes() {
    let (handler, _) = Recorder::<u32, ()>::new(Duration::from_secs(3600));
    let b = Batcher::builder().build(handler).unwrap();
    let _t = b.try_submit(1).unwrap();
    settle().await;
    advance(Duration::from_secs(31)).await;
    let d = b.diagnose().await;
    let f = d
        .find(Code::BatchRunningLong)
        .expect("a running-long finding");
    assert_eq!(f.number("running_seconds"), Some(31.0));
    assert!(f.message.contains("set Builder::max_operation_time"), "{f}");
}

/// A handler future whose drop blocks its thread until the test lets it go:
/// the batch is past its deadline but still holds its slot.
struct BlockingDrop {
    dropping: mpsc::Sender<()>,
    release: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Drop for BlockingDrop {
    fn drop(&mut self) {
        let _ = self.dropping.send(());
        let _ = self.release.lock().unwrap().recv();
    }
}

#[test]
fn a_batch_past_its_max_operation_time_that_still_holds_its_slot() {
    // A handler that blocks its thread cannot be shown on the paused clock,
    // which needs a single-threaded runtime. This test uses two worker
    // threads and synchronises on channels; it asserts no timings.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let (dropping_tx, dropping_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    rt.block_on(async move {
        let b = Batcher::builder()
            .max_operation_time(Duration::from_millis(20))
            .build(handler_fn(move |batch: Batch<u32>| {
                let guard = BlockingDrop {
                    dropping: dropping_tx.clone(),
                    release: release_rx.clone(),
                };
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok::<_, String>(batch.done_all(()))
                }
            }))
            .unwrap();
        let ticket = b.try_submit(1).unwrap();
        // The timeout fired and the handler's future is being dropped...
        tokio::task::spawn_blocking(move || dropping_rx.recv().unwrap())
            .await
            .unwrap();
        // ...but its drop blocks, so the batch is overdue and still in flight.
        let d = b.diagnose().await;
        let f = d.find(Code::BatchOverdue).expect("an overdue finding");
        assert_eq!(f.severity, Severity::Error);
        assert!(f.number("running_seconds").unwrap() > 0.02);
        assert!(f.message.contains("blocks the thread"), "{f}");
        release_tx.send(()).unwrap();
        assert!(matches!(ticket.await, Err(baler::Error::TimedOut { .. })));
        // The ticket resolves just before the engine hears the batch ended;
        // flush() returns once the engine has accounted for it.
        b.flush().await;
        assert!(b.diagnose().await.find(Code::BatchOverdue).is_none());
    });
}

#[tokio::test(start_paused = true)]
async fn buffer_full_with_submitters_waiting() {
    let (handler, _) = Recorder::<u32, ()>::new(Duration::from_secs(1));
    let b = Batcher::builder()
        .max_batch_size(2)
        .buffer_size(4)
        .max_in_flight(1)
        .build(handler)
        .unwrap();
    let _held: Vec<_> = (0..4).map(|i| b.try_submit(i).unwrap()).collect();
    let waiters: Vec<_> = (10..13)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.submit(i).await.map(|_| ()) })
        })
        .collect();
    settle().await;
    let d = b.diagnose().await;
    let f = d.find(Code::BufferFull).expect("a buffer-full finding");
    assert_eq!(f.number("waiting_submitters"), Some(3.0));
    assert_eq!(f.number("held"), Some(4.0));
    for w in waiters {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn operations_retried_again_and_again_are_a_retry_storm() {
    let b = Batcher::builder()
        .max_attempts(10)
        .backoff(MS, 2 * MS)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(
                batch
                    .iter()
                    .map(|_| Outcome::<(), _>::Retry("throttled".to_owned()))
                    .collect(),
            )
        }))
        .unwrap();
    let tickets: Vec<_> = (0..5).map(|i| b.try_submit(i).unwrap()).collect();
    tokio::time::sleep(8 * MS).await;
    let d = b.diagnose().await;
    let f = d.find(Code::RetryStorm).expect("a retry-storm finding");
    assert!(f.number("retried").unwrap() >= 10.0, "{f}");
    for t in tickets {
        assert!(matches!(
            t.await,
            Err(baler::Error::Exhausted { attempts: 10, .. })
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_storm_older_than_the_window_is_not_reported() {
    let b = Batcher::builder()
        .max_attempts(10)
        .backoff(MS, 2 * MS)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(
                batch
                    .iter()
                    .map(|_| Outcome::<(), _>::Retry("throttled".to_owned()))
                    .collect(),
            )
        }))
        .unwrap();
    let tickets: Vec<_> = (0..5).map(|i| b.try_submit(i).unwrap()).collect();
    for t in tickets {
        assert!(t.await.is_err());
    }
    // Nothing is dispatched or retried after the storm: the window must
    // still forget it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let d = b.diagnose().await;
    assert!(d.find(Code::RetryStorm).is_none(), "{d}");
}

#[tokio::test(start_paused = true)]
async fn small_batches_at_light_load_are_explained_by_the_load_aware_policy() {
    let (handler, _) = Recorder::<u32, ()>::new(MS);
    let b = Batcher::builder().build(handler).unwrap();
    for i in 0..30 {
        b.submit(i).await.unwrap().await.unwrap();
    }
    let d = b.diagnose().await;
    let f = d.find(Code::SmallBatches).expect("a small-batches finding");
    assert_eq!(f.severity, Severity::Info);
    assert_eq!(f.number("mean_batch_size"), Some(1.0));
    assert_eq!(f.number("batches"), Some(30.0));
    assert!(f.message.contains("Dispatch::LoadAware"), "{f}");
}

#[tokio::test(start_paused = true)]
async fn small_batches_cut_by_the_capacity_burst_say_so() {
    // 1,000 per second: a burst of 100, so at most 2 operations of cost 50.
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(Capacity::provisioned(1_000).unwrap())
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..60)
        .map(|i| b.try_submit(Operation::new(i).with_cost(50)).unwrap())
        .collect();
    for t in tickets {
        t.await.unwrap();
    }
    assert!(common::sizes(&log).iter().all(|&n| n <= 2));
    let d = b.diagnose().await;
    let f = d.find(Code::SmallBatches).expect("a small-batches finding");
    assert_eq!(f.number("batch_cost_limit"), Some(100.0));
    assert!(f.message.contains("the capacity's burst"), "{f}");
    assert!(f.message.contains("provisioned_with_burst"), "{f}");
}

#[tokio::test(start_paused = true)]
async fn small_batches_spread_over_many_keys_say_so() {
    let (handler, _) = Recorder::<u32, u32>::new(Duration::from_secs(1));
    let b = Batcher::builder().max_in_flight(32).build(handler).unwrap();
    let _t: Vec<_> = (0..25)
        .map(|i| b.try_submit(Operation::new(i).with_key(i)).unwrap())
        .collect();
    settle().await;
    let d = b.diagnose().await;
    let f = d.find(Code::SmallBatches).expect("a small-batches finding");
    assert_eq!(f.number("keys"), Some(25.0));
    assert!(f.message.contains("25 different keys"), "{f}");
}

#[tokio::test(start_paused = true)]
async fn full_batches_are_not_small() {
    let (handler, _) = Recorder::<u32, ()>::new(MS);
    let b = Batcher::builder()
        .max_batch_size(10)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..300).map(|i| b.try_submit(i).unwrap()).collect();
    for t in tickets {
        t.await.unwrap();
    }
    assert!(b.stats().batches >= 30);
    let d = b.diagnose().await;
    assert!(d.find(Code::SmallBatches).is_none(), "{d}");
}

#[tokio::test(start_paused = true)]
async fn findings_come_most_serious_first_and_read_as_sentences() {
    let leases = Arc::new(Leases {
        rate: AtomicU64::new(0),
        store_error: Mutex::new(None),
    });
    let capacity = Capacity::from_source(leases, 100 * MS).unwrap();
    let (handler, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .capacity(capacity)
        .build(handler)
        .unwrap();
    b.pause();
    let _t = b.try_submit(1).unwrap();
    let d = b.diagnose().await;
    let codes: Vec<_> = d.findings.iter().map(|f| f.code).collect();
    assert_eq!(codes, vec![Code::NoCapacity, Code::Paused]);
    let text = d.to_string();
    assert!(text.starts_with("error [no-capacity]"), "{text}");
    assert!(text.contains("\nwarning [paused]"), "{text}");
}
