//! Metrics: a known workload, scraped in Prometheus's text format.
//!
//! Each test builds its batchers inside `metrics::with_local_recorder`, so it
//! has a recorder of its own: the batcher registers its handles when it is
//! built and keeps recording into that recorder afterwards, and tests running
//! in parallel never see each other's numbers.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use baler::{Batcher, Capacity, Operation, Outcome};
use common::{settle, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const MS: Duration = Duration::from_millis(1);

fn recorder() -> (PrometheusRecorder, PrometheusHandle) {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[1.0, 5.0, 10.0, 100.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    (recorder, handle)
}

/// A scrape: each sample line's series (name and labels) and value.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
}

impl Scrape {
    fn of(handle: &PrometheusHandle) -> Self {
        let text = handle.render();
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_owned(), value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape { text, samples }
    }

    /// The value of `name{labels}`; fails the test, showing the scrape, if
    /// the series is missing.
    fn value(&self, name: &str, labels: &str) -> f64 {
        let series = format!("{name}{{{labels}}}");
        match self.samples.get(&series) {
            Some(v) => *v,
            None => panic!("no series {series} in the scrape:\n{}", self.text),
        }
    }

    fn type_of(&self, name: &str) -> Option<&str> {
        let prefix = format!("# TYPE {name} ");
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
}

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

/// Items divisible by 5 fail, item 24 asks for a retry every time, the rest
/// succeed.
fn answer(item: &u32) -> Outcome<u32, String> {
    match item {
        24 => Outcome::Retry("throttled".to_owned()),
        n if n % 5 == 0 => Outcome::Failed("rejected".to_owned()),
        n => Outcome::Done(*n),
    }
}

/// 25 operations of cost 2, submitted at once; batches of at most 10 that
/// take the handler 100 ms each; a linger of 5 ms; two attempts at most.
///
/// On the paused clock the run is fixed: at 0 ms batches of 10 and 10 go (the
/// second goes at once because it is full); the last 5 wait out the linger
/// and go at 5 ms; item 24 is retried once, after a backoff of 5–10 ms, in a
/// batch of 1, and then fails for good.
#[tokio::test(start_paused = true)]
async fn a_known_workload_scrapes_to_the_numbers_it_determines() {
    let (recorder, handle) = recorder();
    let (handler, log) = Recorder::<u32, ()>::answering(100 * MS, answer);
    let b = metrics::with_local_recorder(&recorder, || {
        Batcher::builder()
            .name("scrape")
            .max_batch_size(10)
            .linger(5 * MS)
            .max_attempts(2)
            .backoff(10 * MS, 10 * MS)
            .build(handler)
    })
    .unwrap();
    let tickets: Vec<_> = (0..25)
        .map(|i| b.try_submit(Operation::new(i).with_cost(2)).unwrap())
        .collect();
    let mut results = Vec::new();
    for t in tickets {
        results.push(t.await);
    }
    b.flush().await;
    assert_eq!(common::sizes(&log), vec![10, 10, 5, 1]);

    let s = Scrape::of(&handle);
    let l = r#"batcher="scrape""#;
    // Counters: exactly what the workload did.
    assert_eq!(s.value("baler_operations_submitted_total", l), 25.0);
    assert_eq!(s.value("baler_operations_completed_total", l), 19.0);
    assert_eq!(s.value("baler_operations_failed_total", l), 6.0);
    assert_eq!(s.value("baler_operations_retried_total", l), 1.0);
    assert_eq!(s.value("baler_operations_cancelled_total", l), 0.0);
    assert_eq!(s.value("baler_batches_dispatched_total", l), 4.0);
    let ended = |outcome: &str| {
        s.value(
            "baler_batches_ended_total",
            &format!(r#"batcher="scrape",outcome="{outcome}""#),
        )
    };
    assert_eq!(ended("ok"), 4.0);
    for outcome in [
        "handler_error",
        "panicked",
        "outcome_count",
        "timed_out",
        "abandoned",
    ] {
        assert_eq!(ended(outcome), 0.0, "{outcome}");
    }
    assert_eq!(s.value("baler_audit_failures_total", l), 0.0);
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        19,
        "the counters agree with the tickets"
    );

    // Gauges: everything is resolved.
    for gauge in [
        "baler_target",
        "baler_buffered_operations",
        "baler_buffered_cost",
        "baler_retrying_operations",
        "baler_in_flight_batches",
        "baler_in_flight_operations",
        "baler_waiting_submitters",
        "baler_paused",
    ] {
        assert_eq!(s.value(gauge, l), 0.0, "{gauge}");
        assert_eq!(s.type_of(gauge), Some("gauge"), "{gauge}");
    }
    // An unlimited capacity has no limit to show.
    assert_eq!(s.value("baler_capacity", l), f64::INFINITY);

    // Histograms: batch sizes 10, 10, 5 and 1, each operation of cost 2.
    assert_eq!(s.type_of("baler_batch_size"), Some("histogram"));
    assert_eq!(s.value("baler_batch_size_count", l), 4.0);
    assert_eq!(s.value("baler_batch_size_sum", l), 26.0);
    let bucket = |name: &str, le: &str| s.value(name, &format!(r#"batcher="scrape",le="{le}""#));
    assert_eq!(bucket("baler_batch_size_bucket", "1"), 1.0);
    assert_eq!(bucket("baler_batch_size_bucket", "5"), 2.0);
    assert_eq!(bucket("baler_batch_size_bucket", "10"), 4.0);
    assert_eq!(bucket("baler_batch_size_bucket", "+Inf"), 4.0);
    assert_eq!(s.value("baler_batch_cost_count", l), 4.0);
    assert_eq!(s.value("baler_batch_cost_sum", l), 52.0);
    assert_eq!(bucket("baler_batch_cost_bucket", "10"), 2.0);
    assert_eq!(bucket("baler_batch_cost_bucket", "100"), 4.0);

    // The handler ran 4 times for 100 ms.
    assert_eq!(s.value("baler_handler_duration_seconds_count", l), 4.0);
    let handler = s.value("baler_handler_duration_seconds_sum", l);
    assert!(close(handler, 0.4), "handler time {handler}");

    // Queue wait, per batch (its oldest operation): the first two went at
    // once, the third waited out the 5 ms linger, and the retry went at once
    // when its backoff ended.
    assert_eq!(s.value("baler_queue_wait_seconds_count", l), 4.0);
    let wait = s.value("baler_queue_wait_seconds_sum", l);
    assert!(close(wait, 0.005), "queue wait {wait}");
    assert_eq!(
        s.value(
            "baler_queue_wait_seconds_bucket",
            r#"batcher="scrape",le="1""#
        ),
        4.0
    );

    // Latency, per resolved operation: 20 took 100 ms, 4 took 105 ms, and
    // item 24 took 105 ms + a 5-10 ms backoff + 100 ms (+ up to 1 ms: the
    // backoff is jittered, and the timer wheel counts whole milliseconds).
    assert_eq!(s.value("baler_operation_latency_seconds_count", l), 25.0);
    let latency = s.value("baler_operation_latency_seconds_sum", l);
    let fixed = 20.0 * 0.1 + 4.0 * 0.105;
    assert!(
        latency >= fixed + 0.21 - 1e-9 && latency <= fixed + 0.216 + 1e-9,
        "latency sum {latency}"
    );

    // Every metric has a HELP line.
    for name in [
        "baler_operations_submitted_total",
        "baler_target",
        "baler_batch_size",
        "baler_operation_latency_seconds",
    ] {
        assert!(
            s.text.contains(&format!("# HELP {name} ")),
            "{name}:\n{}",
            s.text
        );
    }
    b.shutdown(None).await;
}

#[tokio::test(start_paused = true)]
async fn gauges_show_what_is_held_while_paused() {
    let (recorder, handle) = recorder();
    let (handler, _) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = metrics::with_local_recorder(&recorder, || {
        Batcher::builder()
            .name("held")
            .buffer_size(3)
            .max_batch_size(3)
            .capacity(Capacity::provisioned(1_000).unwrap())
            .build(handler)
    })
    .unwrap();
    b.pause();
    let _held: Vec<_> = (0..3)
        .map(|i| b.try_submit(Operation::new(i).with_cost(5)).unwrap())
        .collect();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.submit(9).await.map(|_| ()) })
    };
    settle().await;
    // Gauges are set as of the engine's last turn: diagnose() makes one.
    b.diagnose().await;

    let s = Scrape::of(&handle);
    let l = r#"batcher="held""#;
    assert_eq!(s.value("baler_paused", l), 1.0);
    assert_eq!(s.value("baler_buffered_operations", l), 3.0);
    assert_eq!(s.value("baler_buffered_cost", l), 15.0);
    assert_eq!(s.value("baler_target", l), 15.0);
    assert_eq!(s.value("baler_waiting_submitters", l), 1.0);
    assert_eq!(s.value("baler_operations_submitted_total", l), 3.0);
    assert_eq!(s.value("baler_batches_dispatched_total", l), 0.0);
    assert_eq!(s.value("baler_capacity", l), 1_000.0);

    waiter.abort();
    drop(_held);
    settle().await;
    b.diagnose().await;
    let s = Scrape::of(&handle);
    assert_eq!(s.value("baler_operations_cancelled_total", l), 3.0);
    assert_eq!(s.value("baler_target", l), 0.0);
}

#[tokio::test(start_paused = true)]
async fn each_batcher_is_its_own_series_labelled_with_its_name() {
    let (recorder, handle) = recorder();
    let build = |name: &str| {
        let (handler, _) = Recorder::<u32, ()>::new(Duration::ZERO);
        metrics::with_local_recorder(&recorder, || {
            Batcher::builder().name(name).build(handler).unwrap()
        })
    };
    let (inserts, lookups) = (build("inserts"), build("lookups"));
    for i in 0..3 {
        inserts.submit(i).await.unwrap().await.unwrap();
    }
    lookups.submit(7).await.unwrap().await.unwrap();
    inserts.flush().await;
    lookups.flush().await;

    let s = Scrape::of(&handle);
    let submitted = |name: &str| {
        s.value(
            "baler_operations_submitted_total",
            &format!(r#"batcher="{name}""#),
        )
    };
    assert_eq!((submitted("inserts"), submitted("lookups")), (3.0, 1.0));
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_fails_the_batch_counts_under_its_outcome() {
    let (recorder, handle) = recorder();
    let b = metrics::with_local_recorder(&recorder, || {
        Batcher::builder().name("failing").build(baler::handler_fn(
            |_batch: baler::Batch<u32>| async move {
                Err::<Vec<Outcome<(), String>>, _>("down".to_owned())
            },
        ))
    })
    .unwrap();
    let t = b.submit(1).await.unwrap();
    assert!(t.await.is_err());
    b.flush().await;
    let s = Scrape::of(&handle);
    let ended = |outcome: &str| {
        s.value(
            "baler_batches_ended_total",
            &format!(r#"batcher="failing",outcome="{outcome}""#),
        )
    };
    assert_eq!((ended("handler_error"), ended("ok")), (1.0, 0.0));
    assert_eq!(
        s.value("baler_operations_failed_total", r#"batcher="failing""#),
        1.0
    );
}
