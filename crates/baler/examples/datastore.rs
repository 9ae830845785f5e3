//! A producer, a slow datastore, and a provisioned capacity between them:
//! go-batcher's sample (the one its troubleshooting logs came from) in miniature.
//!
//! # What it shows
//!
//! - **Cost and capacity.** Every record is an [`Operation`] of cost 10, and
//!   the datastore is provisioned for 10,000 cost units per second
//!   ([`Capacity::provisioned`]): 1,000 records a second, whatever the
//!   producer would like. Batches of 10 records cost 100, so the capacity
//!   lets about 100 batches go each second.
//! - **A slow, uneven datastore.** The fake datastore takes a random 0–1 s per
//!   batch, so about 50 batches are in flight at any moment; `max_in_flight`
//!   of 100 leaves room for that, and the capacity, not the in-flight limit,
//!   sets the pace.
//! - **Backpressure.** The producer generates records as fast as it can and
//!   [`Batcher::submit`] waits for room in the buffer (10,000 operations): the
//!   first 10,000 go in at once, and after that the producer runs exactly as
//!   fast as the datastore drains the buffer. No record is dropped and memory
//!   stays bounded.
//! - **Watching it.** Once a second a status line like go-batcher's shows what
//!   was produced, what waits in the buffer, what is in flight, what has
//!   completed, and `capacity A allocated of B needed`: `A` is the capacity's
//!   rate and `B` the batcher's target, the cost of everything it holds
//!   (buffered or in flight). While the buffer is full, `B` is far above `A`:
//!   this process would use more capacity if it had it. A capacity shared
//!   between processes ([`Capacity::from_source`]) uses that target to decide
//!   how much to acquire.
//! - **A clean end.** [`Batcher::shutdown`] without a deadline waits for
//!   everything accepted, then the summary checks that every record produced
//!   was completed, both by the engine's count and by the tickets' own
//!   outcomes. The exit code is 1 if not.
//!
//! # Running it
//!
//! ```text
//! cargo run --release -p baler --example datastore
//! cargo run --release -p baler --example datastore -- --records 5000
//! ```
//!
//! The default of 20,000 records costs 200,000 units, which the capacity spends
//! in 20 s; the last batches take up to a second more. `--records N` changes
//! the count (runtime is about N / 1,000 seconds).
//!
//! # What to expect
//!
//! A header, a status line a second, and a summary. From a run on a 2-core
//! machine (the in-flight figures wander with the datastore's random latency):
//!
//! ```text
//! datastore: 20000 records of cost 10, capacity 10000/s, batches of 10, up to 100 in flight, buffer 10000
//!   1.0s | produced  10410 | buffered  9410 | in flight  590 (59 batches) | completed    410 | capacity 10000 allocated of 100000 needed
//!   2.0s | produced  11470 | buffered  9470 | in flight  530 (53 batches) | completed   1470 | capacity 10000 allocated of 100000 needed
//! ...
//!  10.0s | produced  19480 | buffered  9490 | in flight  510 (51 batches) | completed   9480 | capacity 10000 allocated of 100000 needed
//!  11.0s | produced  20000 | buffered  9000 | in flight  630 (63 batches) | completed  10370 | capacity 10000 allocated of 96300 needed
//! ...
//!  20.0s | produced  20000 | buffered     0 | in flight  510 (51 batches) | completed  19490 | capacity 10000 allocated of 5100 needed
//!  20.9s | produced  20000 | buffered     0 | in flight    0 (0 batches) | completed  20000 | capacity 10000 allocated of 0 needed
//! summary
//!   produced   20000 records
//!   completed  20000 (tickets: 20000 ok, 0 failed)
//!   failed     0
//!   batches    2000 (mean size 10.0, mean datastore time 508 ms, 548890 bytes written)
//!   elapsed    20.9s (958 records/s, capacity allows 1000/s)
//! OK: produced == completed
//! ```
//!
//! Read it as go-batcher's log: the producer gets 10,000 records ahead at
//! once (the buffer), then advances at 1,000 a second, exactly the rate
//! completions free room; `completed` also climbs by 1,000 a second, since the
//! capacity, not the datastore's latency, is the bottleneck; and once the
//! producer is done the buffer drains by 1,000 a second and the target falls
//! with it, to 0 when everything has completed.

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baler::{Batch, Batcher, Capacity, Handler, HandlerResult, Operation, Stats};
use tokio::task::JoinSet;

/// What each record costs the datastore.
const RECORD_COST: u32 = 10;
/// The datastore's provisioned capacity, in cost units per second.
const CAPACITY_PER_SECOND: u64 = 10_000;
/// Records per batch.
const BATCH_SIZE: usize = 10;
/// Batches the datastore may work on at once.
const MAX_IN_FLIGHT: usize = 100;
/// Operations the batcher holds before `submit` waits.
const BUFFER_SIZE: usize = 10_000;
/// Records produced unless `--records N` says otherwise: 20 s at this capacity.
const DEFAULT_RECORDS: u64 = 20_000;
/// The slowest a batch write may be.
const MAX_WRITE_TIME: Duration = Duration::from_secs(1);

/// One generated record: what the producer would have read from a request.
#[derive(Debug)]
struct Record {
    /// The serialized row, as it would be sent to the datastore.
    body: String,
}

/// A small lock-free random number generator (splitmix64): each call advances
/// a shared counter and mixes it, so concurrent batches never contend.
struct SplitMix(AtomicU64);

impl SplitMix {
    fn seeded() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SplitMix(AtomicU64::new(nanos ^ 0x853c_49e6_748f_ea9b))
    }

    /// A random fraction in `[0, 1)`.
    fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A fake datastore: every batch write takes a random 0–1 s and succeeds.
struct FakeDatastore {
    rng: SplitMix,
    /// Batches written, their bytes, and the total time they took, for the
    /// summary.
    writes: AtomicU64,
    bytes: AtomicU64,
    write_millis: AtomicU64,
}

impl Handler<Record> for FakeDatastore {
    type Output = ();
    type Error = Infallible;

    async fn handle(&self, batch: Batch<Record>) -> HandlerResult<(), Infallible> {
        // A real handler would send `batch.items()` to the datastore here.
        let bytes: usize = batch.iter().map(|record| record.body.len()).sum();
        let latency = MAX_WRITE_TIME.mul_f64(self.rng.next_f64());
        tokio::time::sleep(latency).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.write_millis
            .fetch_add(latency.as_millis() as u64, Ordering::Relaxed);
        Ok(batch.done_all(()))
    }
}

/// What the callers saw: records accepted, and their tickets' outcomes.
#[derive(Default)]
struct Counts {
    produced: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    producer_done: AtomicBool,
}

fn status_line(elapsed: Duration, produced: u64, s: &Stats) -> String {
    let allocated = s
        .capacity
        .map_or_else(|| "unlimited".to_owned(), |rate| rate.to_string());
    format!(
        "{:>5.1}s | produced {:>6} | buffered {:>5} | in flight {:>4} ({} batches) | completed {:>6} | capacity {} allocated of {} needed",
        elapsed.as_secs_f64(),
        produced,
        s.buffered,
        s.in_flight,
        s.in_flight_batches,
        s.completed,
        allocated,
        s.target,
    )
}

const USAGE: &str = "usage: datastore [--records N]

Pushes N records (default 20000) of cost 10 through a batcher with a
provisioned capacity of 10000 cost units per second, into a fake datastore
that takes 0-1 s per batch of 10.";

/// Reads `--records N` (or `--records=N`) by hand.
fn parse_records() -> Result<u64, String> {
    let mut records = DEFAULT_RECORDS;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--records" => args
                .next()
                .ok_or_else(|| "--records needs a value".to_owned())?,
            other => match other.strip_prefix("--records=") {
                Some(v) => v.to_owned(),
                None => return Err(format!("unknown argument {other:?}")),
            },
        };
        records = value
            .parse()
            .map_err(|e| format!("--records {value:?}: {e}"))?;
    }
    Ok(records)
}

#[tokio::main]
async fn main() -> ExitCode {
    let records = match parse_records() {
        Ok(n) => n,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let datastore = Arc::new(FakeDatastore {
        rng: SplitMix::seeded(),
        writes: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        write_millis: AtomicU64::new(0),
    });
    let capacity = Capacity::provisioned(CAPACITY_PER_SECOND).expect("a positive rate");
    let batcher: Batcher<Record, (), Infallible> = Batcher::builder()
        .max_batch_size(BATCH_SIZE)
        .max_in_flight(MAX_IN_FLIGHT)
        .buffer_size(BUFFER_SIZE)
        .capacity(capacity)
        .build(ArcHandler(datastore.clone()))
        .expect("a valid configuration");

    println!(
        "datastore: {records} records of cost {RECORD_COST}, capacity {CAPACITY_PER_SECOND}/s, \
         batches of {BATCH_SIZE}, up to {MAX_IN_FLIGHT} in flight, buffer {BUFFER_SIZE}"
    );
    let start = Instant::now();
    let counts = Arc::new(Counts::default());

    // The producer: generate records and submit them. `submit` waits while
    // the buffer is full, which is what paces this loop. Each ticket is
    // awaited by a small task of its own (dropping a ticket before its record
    // is dispatched would cancel the record).
    let producer = {
        let batcher = batcher.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut tickets = JoinSet::new();
            for id in 0..records {
                let record = Record {
                    body: format!("{{\"id\":{id},\"kind\":\"sample\"}}"),
                };
                let ticket = match batcher
                    .submit(Operation::new(record).with_cost(RECORD_COST))
                    .await
                {
                    Ok(ticket) => ticket,
                    Err(e) => {
                        eprintln!("submit of record {id} refused: {e}");
                        break;
                    }
                };
                counts.produced.fetch_add(1, Ordering::Relaxed);
                let counts = counts.clone();
                tickets.spawn(async move {
                    match ticket.await {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("record {id} failed: {e}");
                            counts.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                });
                // Reap finished ticket tasks as we go, so the set stays small.
                while tickets.try_join_next().is_some() {}
            }
            counts.producer_done.store(true, Ordering::Relaxed);
            tickets
        })
    };

    // The status line, once a second.
    let status = {
        let batcher = batcher.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await; // the first tick is immediate
            loop {
                every.tick().await;
                let produced = counts.produced.load(Ordering::Relaxed);
                println!(
                    "{}",
                    status_line(start.elapsed(), produced, &batcher.stats())
                );
            }
        })
    };

    let mut tickets = producer.await.expect("the producer does not panic");
    // Everything is submitted: stop intake and wait for every record accepted.
    let report = batcher.shutdown(None).await;
    while tickets.join_next().await.is_some() {}
    status.abort();
    let elapsed = start.elapsed();

    let stats = batcher.stats();
    let produced = counts.produced.load(Ordering::Relaxed);
    let ok = counts.ok.load(Ordering::Relaxed);
    let ticket_failed = counts.failed.load(Ordering::Relaxed);
    println!("{}", status_line(elapsed, produced, &stats));
    let mean_size = if stats.batches == 0 {
        0.0
    } else {
        (stats.completed + stats.failed) as f64 / stats.batches as f64
    };
    let writes = datastore.writes.load(Ordering::Relaxed);
    let mean_write = datastore.write_millis.load(Ordering::Relaxed) / writes.max(1);
    println!("summary");
    println!("  produced   {produced} records");
    println!(
        "  completed  {} (tickets: {ok} ok, {ticket_failed} failed)",
        stats.completed
    );
    println!("  failed     {}", stats.failed);
    println!(
        "  batches    {} (mean size {mean_size:.1}, mean datastore time {mean_write} ms, {} bytes written)",
        stats.batches,
        datastore.bytes.load(Ordering::Relaxed)
    );
    println!(
        "  elapsed    {:.1}s ({:.0} records/s, capacity allows {}/s)",
        elapsed.as_secs_f64(),
        produced as f64 / elapsed.as_secs_f64(),
        CAPACITY_PER_SECOND / u64::from(RECORD_COST),
    );

    let clean = counts.producer_done.load(Ordering::Relaxed)
        && produced == records
        && stats.submitted == produced
        && stats.completed == produced
        && ok == produced
        && stats.failed == 0
        && ticket_failed == 0
        && report.is_clean()
        && stats.pending() == 0;
    if clean {
        println!("OK: produced == completed");
        ExitCode::SUCCESS
    } else {
        println!(
            "MISMATCH: produced {produced} of {records}, engine completed {} and failed {}, \
             tickets ok {ok} and failed {ticket_failed}, still pending {}, abandoned {}",
            stats.completed,
            stats.failed,
            stats.pending(),
            report.abandoned.len()
        );
        ExitCode::FAILURE
    }
}

/// Lets the batcher share the datastore with `main`, which reads its counters
/// for the summary.
struct ArcHandler(Arc<FakeDatastore>);

impl Handler<Record> for ArcHandler {
    type Output = ();
    type Error = Infallible;

    async fn handle(&self, batch: Batch<Record>) -> HandlerResult<(), Infallible> {
        self.0.handle(batch).await
    }
}
