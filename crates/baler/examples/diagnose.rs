//! What `diagnose()` says in the situations of `docs/troubleshooting.md`.
//!
//! Each scenario builds the situation for real (a batcher, a handler, a
//! capacity, producers), prints a status line like go-batcher's sample did,
//! then prints `Batcher::diagnose()`. Everything runs on tokio's paused
//! clock, so the scenarios take no real time and print the same numbers on
//! every run.
//!
//! ```text
//! cargo run -p baler --example diagnose              # every scenario
//! cargo run -p baler --example diagnose -- never-start
//! ```
//!
//! Scenarios: `target`, `never-complete`, `never-start`, `tiny-batches`,
//! `memory`. The output is quoted in `docs/troubleshooting.md`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{
    handler_fn, Batch, Batcher, Capacity, CapacitySource, CapacityStatus, Event, Operation,
    Outcome, Stats,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SCENARIOS: [&str; 5] = [
    "target",
    "never-complete",
    "never-start",
    "tiny-batches",
    "memory",
];

fn main() -> Result<(), BoxError> {
    let chosen: Vec<String> = std::env::args().skip(1).collect();
    for name in &chosen {
        if !SCENARIOS.contains(&name.as_str()) {
            return Err(format!("unknown scenario {name:?}: choose from {SCENARIOS:?}").into());
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    for name in SCENARIOS {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
            continue;
        }
        println!("== {name}");
        runtime.block_on(async {
            match name {
                "target" => target().await,
                "never-complete" => never_complete().await,
                "never-start" => never_start().await,
                "tiny-batches" => tiny_batches().await,
                _ => memory().await,
            }
        })?;
        println!();
    }
    Ok(())
}

/// A status line in the manner of go-batcher's sample.
fn status(at: &str, s: &Stats) {
    let capacity = s
        .capacity
        .map_or_else(|| "unlimited".to_owned(), |c| c.to_string());
    println!(
        "{at:>6} | submitted {:>6} | buffered {:>6} | in flight {:>4} ({} batches) | completed {:>6} | capacity {capacity} allocated of {} needed",
        s.submitted, s.buffered, s.in_flight, s.in_flight_batches, s.completed, s.target
    );
}

/// A datastore that takes `delay` per batch and accepts everything.
fn datastore(delay: Duration) -> impl baler::Handler<u64, Output = (), Error = Infallible> {
    handler_fn(move |batch: Batch<u64>| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(batch.done_all(()))
    })
}

/// From go-batcher's troubleshooting logs: "capacity: 1000 allocated of 690 needed" while 10,000 records
/// were buffered. In baler the target is the cost of everything held, and the
/// engine audits it.
async fn target() -> Result<(), BoxError> {
    let batcher = Batcher::builder()
        .max_batch_size(10)
        .max_in_flight(100)
        .audit_interval(Some(Duration::from_secs(1)))
        .capacity(Capacity::provisioned(1_000)?)
        .build(datastore(Duration::from_millis(500)))?;
    let mut events = batcher.events();
    let producer = batcher.clone();
    tokio::spawn(async move {
        let mut tickets = Vec::new();
        for n in 0..12_000u64 {
            let Ok(ticket) = producer.submit(Operation::new(n).with_cost(10)).await else {
                break;
            };
            tickets.push(ticket); // dropping a ticket would cancel its operation
        }
        for t in tickets {
            let _ = t.await;
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = batcher.stats();
    status("2.0s", &s);
    println!(
        "target {} = buffered cost {} + retrying cost {} + in-flight cost {}",
        s.target, s.buffered_cost, s.retrying_cost, s.in_flight_cost
    );
    let mut audits = (0, 0);
    while let Ok(Some(e)) = events.try_recv() {
        match e {
            Event::AuditPassed { .. } => audits.0 += 1,
            Event::AuditFailed { .. } => audits.1 += 1,
            _ => {}
        }
    }
    println!("audits: {} passed, {} failed", audits.0, audits.1);
    println!("{}", batcher.diagnose().await);
    batcher.shutdown(Duration::ZERO).await;
    Ok(())
}

/// From go-batcher's troubleshooting logs: "completed: 7500" and nothing more for minutes. Here a
/// datastore call hangs, no maximum operation time is set, and the four
/// in-flight slots fill up with hung batches.
async fn never_complete() -> Result<(), BoxError> {
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let batcher = Batcher::builder()
        .max_batch_size(10)
        .max_in_flight(4)
        .build(handler_fn(move |batch: Batch<u64>| {
            let call = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if call >= 20 {
                    // The datastore stops answering.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, Infallible>(batch.done_all(()))
            }
        }))?;
    let mut tickets = Vec::new();
    for n in 0..300u64 {
        tickets.push(batcher.submit(n).await?);
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    status("60.0s", &batcher.stats());
    println!("{}", batcher.diagnose().await);
    let report = batcher.shutdown(Duration::from_secs(1)).await;
    println!(
        "shutdown with a 1 s deadline: {} completed, {} abandoned (handed back)",
        report.completed,
        report.abandoned.len()
    );
    Ok(())
}

/// A stand-in for a lease-based shared capacity that has lost its
/// partitions and cannot reach its lease store.
struct LostLeases {
    store_error: Mutex<Option<String>>,
}

impl CapacitySource for LostLeases {
    fn rate(&self) -> u64 {
        0
    }
    fn max_rate(&self) -> u64 {
        10_000
    }
    fn target_changed(&self, _target: u64) {}
    fn status(&self) -> CapacityStatus {
        let error = self.store_error.lock().map(|e| e.clone()).unwrap_or(None);
        CapacityStatus::new(Some(0), Some((0, 10)), error)
    }
}

/// From go-batcher's troubleshooting logs: "lost control of partition 1", "has procured 0 capacity", and
/// the ingest request's 16,373 records never start.
async fn never_start() -> Result<(), BoxError> {
    let leases = Arc::new(LostLeases {
        store_error: Mutex::new(Some("connection refused (127.0.0.1:6379)".to_owned())),
    });
    let capacity = Capacity::from_source(leases, Duration::from_millis(100))?;
    let batcher = Batcher::builder()
        .capacity(capacity)
        .build(datastore(Duration::from_millis(100)))?;
    let mut tickets = Vec::new();
    for n in 0..1_000u64 {
        tickets.push(batcher.submit(Operation::new(n).with_cost(10)).await?);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    status("10.0s", &batcher.stats());
    println!("{}", batcher.diagnose().await);
    batcher.shutdown(Duration::ZERO).await;
    Ok(())
}

/// Batches far below `max_batch_size`: two reasons, each named.
async fn tiny_batches() -> Result<(), BoxError> {
    // 1. Light load: one request at a time.
    let batcher = Batcher::builder()
        .max_batch_size(100)
        .build(datastore(Duration::from_millis(5)))?;
    for n in 0..50u64 {
        batcher.submit(n).await?.await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("-- one request at a time");
    println!("{}", batcher.diagnose().await);
    batcher.shutdown(None).await;

    // 2. Expensive operations against a small capacity.
    let batcher = Batcher::builder()
        .max_batch_size(100)
        .capacity(Capacity::provisioned(1_000)?)
        .build(datastore(Duration::from_millis(5)))?;
    let mut tickets = Vec::new();
    for n in 0..200u64 {
        tickets.push(batcher.submit(Operation::new(n).with_cost(40)).await?);
    }
    for t in tickets {
        t.await?;
    }
    println!("-- operations of cost 40, capacity 1,000 per second");
    println!("{}", batcher.diagnose().await);
    batcher.shutdown(None).await;
    Ok(())
}

/// A producer that spawns a task per request against a slow datastore: the
/// buffer stays bounded, but the waiting submitters (each holding its
/// payload) pile up.
async fn memory() -> Result<(), BoxError> {
    let batcher = Batcher::builder()
        .max_batch_size(100)
        .max_in_flight(2)
        .buffer_size(1_000)
        .build(handler_fn(|batch: Batch<Vec<u8>>| async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, Infallible>(batch.iter().map(|_| Outcome::Done(())).collect())
        }))?;
    for n in 0..5_000u64 {
        let batcher = batcher.clone();
        tokio::spawn(async move {
            // One request: 1 KiB of payload waiting for room.
            if let Ok(ticket) = batcher.submit(vec![n as u8; 1024]).await {
                let _ = ticket.await;
            }
        });
        if n % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    status("1.5s", &batcher.stats());
    println!("{}", batcher.diagnose().await);
    batcher.shutdown(Duration::ZERO).await;
    Ok(())
}
