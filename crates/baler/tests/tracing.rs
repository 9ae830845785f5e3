//! tracing: one `batch` span per batch, with its key, size, cost, attempt and
//! outcome; nothing per operation above debug.
//!
//! A small subscriber of our own records every span's fields and every
//! event's level, installed as the thread's default around a current-thread
//! runtime, so that the engine and the batch tasks report to it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Operation, Outcome};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

#[derive(Default)]
struct Seen {
    /// Span name and fields, by id.
    spans: Vec<(String, HashMap<String, String>)>,
    /// Level and target of every event.
    events: Vec<(Level, String)>,
}

#[derive(Clone, Default)]
struct Capture {
    seen: Arc<Mutex<Seen>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        let mut seen = self.seen.lock().unwrap();
        seen.spans.push((span.metadata().name().to_owned(), fields));
        Id::from_u64(seen.spans.len() as u64)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut seen = self.seen.lock().unwrap();
        let i = span.into_u64() as usize - 1;
        values.record(&mut Fields(&mut seen.spans[i].1));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        self.seen
            .lock()
            .unwrap()
            .events
            .push((*m.level(), m.target().to_owned()));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Runs `body` on a paused current-thread runtime with `capture` as the
/// thread's subscriber.
fn traced<F: std::future::Future<Output = ()>>(capture: &Capture, body: impl FnOnce() -> F) {
    let _default = tracing::subscriber::set_default(capture.clone());
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(body());
}

fn batch_spans(capture: &Capture) -> Vec<HashMap<String, String>> {
    capture
        .seen
        .lock()
        .unwrap()
        .spans
        .iter()
        .filter(|(name, _)| name == "batch")
        .map(|(_, fields)| fields.clone())
        .collect()
}

#[test]
fn each_batch_has_one_span_with_its_key_size_cost_attempt_and_outcome() {
    let capture = Capture::default();
    traced(&capture, || async {
        let b = Batcher::builder()
            .name("orders")
            .max_batch_size(10)
            .build(handler_fn(|batch: Batch<u32, &'static str>| async move {
                Ok::<_, String>(batch.done_all(()))
            }))
            .unwrap();
        let tickets: Vec<_> = (0..25)
            .map(|i| {
                b.try_submit(Operation::new(i).with_key("eu").with_cost(3))
                    .unwrap()
            })
            .collect();
        for t in tickets {
            t.await.unwrap();
        }
        b.shutdown(None).await;
    });

    let spans = batch_spans(&capture);
    let mut sizes: Vec<_> = spans.iter().map(|f| f["size"].clone()).collect();
    sizes.sort();
    assert_eq!(sizes, ["10", "10", "5"], "one span per batch: {spans:?}");
    for f in &spans {
        assert_eq!(f["batcher"], "orders");
        assert_eq!(f["key"], r#"Some("eu")"#);
        let size: u64 = f["size"].parse().unwrap();
        assert_eq!(f["cost"], (size * 3).to_string());
        assert_eq!(f["attempt"], "1");
        assert_eq!(f["outcome"], "outcomes");
    }
    // 25 operations and a shutdown: nothing was logged above debug.
    let loud: Vec<_> = capture
        .seen
        .lock()
        .unwrap()
        .events
        .iter()
        .filter(|(level, target)| *level < Level::DEBUG && target.starts_with("baler"))
        .cloned()
        .collect();
    assert!(loud.is_empty(), "events above debug: {loud:?}");
}

#[test]
fn a_retried_batch_span_carries_its_attempt_and_a_failed_one_its_outcome() {
    let capture = Capture::default();
    traced(&capture, || async {
        let b = Batcher::builder()
            .max_attempts(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
            .max_operation_time(Duration::from_secs(1))
            .build(handler_fn(|batch: Batch<u32>| async move {
                match batch.info()[0].attempt {
                    1 => Ok(vec![Outcome::Retry("busy".to_owned())]),
                    _ => Err("down".to_owned()),
                }
                .map(|v: Vec<Outcome<(), String>>| v)
            }))
            .unwrap();
        assert!(b.submit(1).await.unwrap().await.is_err());
        b.shutdown(None).await;
    });

    let spans = batch_spans(&capture);
    let seen: Vec<_> = spans
        .iter()
        .map(|f| (f["attempt"].as_str(), f["outcome"].as_str()))
        .collect();
    assert_eq!(seen, [("1", "outcomes"), ("2", "handler-error")]);
}
