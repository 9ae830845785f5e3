//! The queue's metrics, recorded through the `metrics` facade into a
//! recorder installed for this test binary alone.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{JobError, Queue};
use common::{within, RedisServer};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

#[derive(Default)]
struct Count(AtomicU64);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// Counters by name and sorted labels, as `name{k=v,...}`.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<Count>>>);

fn key_string(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for &'static Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.0.lock().unwrap();
        Counter::from_arc(map.entry(key_string(key)).or_default().clone())
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(counters).expect("the only recorder of this binary");
        counters
    })
}

fn counter(name: &str) -> u64 {
    counters()
        .0
        .lock()
        .unwrap()
        .get(name)
        .map(|c| c.0.load(Ordering::Relaxed))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_what_happens_to_jobs_labelled_by_queue() {
    counters();
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "metered")
        .lease(Duration::from_millis(400))
        .max_attempts(2)
        .backoff(Duration::from_millis(20), Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            let out: HandlerResult<u64, String> = Ok(batch
                .iter()
                .map(|n| match n {
                    0 => Outcome::Retry("zero again".to_owned()),
                    n => Outcome::Done(*n),
                })
                .collect());
            out
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let mut results = Vec::new();
    for t in producer.enqueue_many([0u64, 1, 2]).await {
        results.push(within(Duration::from_secs(20), "results", t.unwrap()).await);
    }
    assert!(matches!(
        results[0],
        Err(JobError::Failed { attempts: 2, .. })
    ));
    assert_eq!(results[1..], [Ok(1), Ok(2)]);
    worker.shutdown(Duration::from_secs(5)).await;

    assert_eq!(counter("baler_queue_enqueued_total{queue=metered}"), 3);
    assert_eq!(counter("baler_queue_retried_total{queue=metered}"), 1);
    assert_eq!(
        counter("baler_queue_completed_total{queue=metered,status=ok}"),
        2
    );
    assert_eq!(
        counter("baler_queue_completed_total{queue=metered,status=failed}"),
        1
    );
    assert_eq!(
        counter("baler_queue_results_total{queue=metered,status=ok}"),
        2
    );
    assert_eq!(
        counter("baler_queue_results_total{queue=metered,status=failed}"),
        1
    );
}
