//! A fixed amount of work for instruction counts: `ops` no-op operations
//! through one contender at `submitters` closed-loop submitters, on a
//! current-thread runtime so that the run is deterministic enough for
//! `valgrind --tool=callgrind` (or `--tool=dhat`) to compare code variants.
//!
//! ```text
//! cargo build --release --bin count
//! valgrind --tool=callgrind target/release/count baler 256 200000
//! ```
//!
//! Contenders: `baler`, `inline` (baler with `Execution::Inline`), `floor`
//! (tokio mpsc + oneshot, `recv_many`) and `chunks` (tokio-stream's
//! `chunks_timeout`). It prints the operations done and the mean batch size.
//! For `baler` and `inline`, `COUNT_HANDLER_MS` makes the handler wait that
//! long before it answers and `COUNT_IN_FLIGHT` sets `max_in_flight`
//! (default 8), to count what many pending batches cost.
//!
//! Loaders, with `submitters` closed-loop callers of unique keys (no two
//! loads ask for the same key) and the bench's adapters from `src/loaders/`
//! (the same configuration as the loader rows of the benchmarks, no cache):
//! `loader` (baler's `Loader`, 8 handlers), `loader1` (baler's `Loader`,
//! 1 handler), `dataloader` (the `dataloader` crate's `non_cached::Loader`)
//! and `floor-loader` (mpsc + oneshot with per-batch de-duplication). Each
//! load's value is checked.
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/count loader 16 200000
//! callgrind_annotate --inclusive=yes /tmp/cg.out | head -60
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Execution};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

// The bench's loader adapters and what they share, compiled into this bin
// too; the stub `workloads` gives `loaders::all` the one trait it names.
#[allow(dead_code)]
#[path = "../loaders/mod.rs"]
mod loaders;
#[allow(dead_code)]
#[path = "../shared.rs"]
mod shared;
mod workloads {
    pub trait LoaderRuns {}
    impl<L: crate::loaders::LoaderContender> LoaderRuns for L {}
}

use loaders::{value_of, LoaderContender};

const MAX_BATCH: usize = 100;
const LINGER: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Count {
    ops: AtomicU64,
    batches: AtomicU64,
}

impl Count {
    fn batch(&self, n: usize) {
        self.ops.fetch_add(n as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}

type Item = (u64, oneshot::Sender<()>);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: count <baler|inline|floor|chunks|loader|loader1|dataloader|floor-loader> <submitters> <ops>";
    let (Some(who), Some(subs), Some(ops)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let subs: u64 = subs.parse().expect("submitters: a number");
    let ops: u64 = ops.parse().expect("ops: a number");
    let per = ops / subs;
    // As the bench: a buffer of 10,000 (`DEFAULT_BUFFER`).
    let buffer = 10_000;
    let count = Arc::new(Count::default());
    // COUNT_THREADS=2: a multi-thread runtime instead, to compare CPU time
    // per operation (printed) between contenders on a noisy machine.
    let threads: usize = std::env::var("COUNT_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let rt = if threads > 0 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("a runtime");
    // COUNT_HANDLER_MS=1: baler's handler waits that long (a tokio sleep)
    // before it answers, as one writing to a datastore does; with
    // COUNT_IN_FLIGHT=64, that many batches are pending at once.
    let handler_ms: u64 = std::env::var("COUNT_HANDLER_MS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let in_flight: usize = std::env::var("COUNT_IN_FLIGHT")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(8);
    let cpu_start = cpu_time();
    let wall_start = std::time::Instant::now();
    rt.block_on(async {
        match who.as_str() {
            "baler" | "inline" => {
                let c = count.clone();
                let b = Batcher::builder()
                    .max_batch_size(MAX_BATCH)
                    .linger(LINGER)
                    .buffer_size(buffer)
                    .max_in_flight(in_flight)
                    .execution(if who == "inline" {
                        Execution::Inline
                    } else {
                        Execution::Spawned
                    })
                    .build(handler_fn(move |batch: Batch<u64>| {
                        c.batch(batch.len());
                        async move {
                            if handler_ms > 0 {
                                tokio::time::sleep(Duration::from_millis(handler_ms)).await;
                            }
                            Ok::<_, std::convert::Infallible>(batch.done_all(()))
                        }
                    }))
                    .expect("a valid configuration");
                let tasks: Vec<_> = (0..subs)
                    .map(|s| {
                        let b = b.clone();
                        tokio::spawn(async move {
                            for i in 0..per {
                                // A clone per operation, as the bench's
                                // closed loop does.
                                let b = b.clone();
                                let t = b.submit(s * per + i).await.expect("accepted");
                                t.await.expect("resolved");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("a submitter");
                }
                assert!(b.shutdown(None).await.is_clean());
            }
            "floor" | "chunks" => {
                let (tx, mut rx) = mpsc::channel::<Item>(buffer);
                let c = count.clone();
                let consumer = if who == "floor" {
                    tokio::spawn(async move {
                        let mut batch: Vec<Item> = Vec::with_capacity(MAX_BATCH);
                        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                            c.batch(batch.len());
                            for (_x, reply) in batch.drain(..) {
                                let _ = reply.send(());
                            }
                        }
                    })
                } else {
                    tokio::spawn(async move {
                        let chunks = ReceiverStream::new(rx).chunks_timeout(MAX_BATCH, LINGER);
                        tokio::pin!(chunks);
                        while let Some(batch) = chunks.next().await {
                            c.batch(batch.len());
                            for (_x, reply) in batch {
                                let _ = reply.send(());
                            }
                        }
                    })
                };
                let tasks: Vec<_> = (0..subs)
                    .map(|s| {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            for i in 0..per {
                                let (reply, result) = oneshot::channel();
                                let tx = tx.clone();
                                tx.send((s * per + i, reply)).await.expect("sent");
                                result.await.expect("answered");
                            }
                        })
                    })
                    .collect();
                drop(tx);
                for t in tasks {
                    t.await.expect("a submitter");
                }
                consumer.await.expect("the consumer");
            }
            "loader" => {
                load(
                    &loaders::baler::Baler::default_handlers(),
                    subs,
                    per,
                    &count,
                )
                .await
            }
            "loader1" => load(&loaders::baler::Baler::one_handler(), subs, per, &count).await,
            "dataloader" => load(&loaders::dataloader::Dataloader, subs, per, &count).await,
            "floor-loader" => load(&loaders::floor::Floor, subs, per, &count).await,
            other => {
                eprintln!("unknown contender {other:?}; {usage}");
                std::process::exit(2);
            }
        }
    });
    let wall = wall_start.elapsed();
    let cpu = cpu_time() - cpu_start;
    let done = count.ops.load(Ordering::Relaxed);
    let batches = count.batches.load(Ordering::Relaxed).max(1);
    println!(
        "{who}: {done} operations, mean batch {:.1}, {:.0} ns CPU/op, {:.0} ns wall/op",
        done as f64 / batches as f64,
        cpu * 1e9 / done.max(1) as f64,
        wall.as_secs_f64() * 1e9 / done.max(1) as f64,
    );
}

/// `subs` closed-loop callers of `loader`, `per` unique keys each; the
/// batches and keys its load function saw go into `count`.
async fn load<L: LoaderContender>(loader: &L, subs: u64, per: u64, count: &Count) {
    let shared = shared::Shared::open();
    let handle = loader.start(&shared);
    let tasks: Vec<_> = (0..subs)
        .map(|s| {
            let h = handle.clone();
            tokio::spawn(async move {
                for i in 0..per {
                    // As the bench's closed loop: a clone per load.
                    let h = h.clone();
                    let key = (s << 32) | i;
                    let value = L::load(&h, key).await.expect("a value");
                    assert_eq!(value, value_of(key), "key {key}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a caller");
    }
    L::stop(handle).await;
    count.ops.store(shared.keys(), Ordering::Relaxed);
    count.batches.store(shared.batches(), Ordering::Relaxed);
}

/// The process's CPU time (user + system, all threads) in seconds, from
/// `/proc/self/stat` (clock ticks of 10 ms; enough for runs of seconds).
fn cpu_time() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 (utime, stime), counted from 1 with the pid and
    // name before the ')'.
    (ticks(11) + ticks(12)) / 100.0
}
