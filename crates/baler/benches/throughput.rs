//! Throughput of no-op operations through a baler `Batcher`, against a raw
//! floor: the least an async batcher with per-operation results can cost.
//!
//! Run with `cargo bench -p baler --bench throughput`. (Under `cargo test`,
//! without `--bench`, it runs one small repetition as a smoke test.)
//! Environment:
//!
//! - `BALER_BENCH_OPS`: operations per measurement (default 1,000,000);
//! - `BALER_BENCH_REPS`: measurements per (contender, submitters) (default 5);
//! - `BALER_BENCH_SUBMITTERS`: a comma-separated subset of 1,16,256 (or any
//!   other counts) to run, and `BALER_BENCH_CONTENDER`: `baler`, `inline` or `floor` to
//!   run only one contender; both for profiling, e.g. under `perf record`;
//! - `BALER_BENCH_RECORDER`: `none` (default) or `prometheus`, which installs
//!   `metrics-exporter-prometheus`'s recorder (histogram buckets set, upkeep
//!   every second on a thread of its own) so that baler's metrics are
//!   recorded for real.
//!
//! Run by `cargo test` (without `--bench`), it is a smoke test: 2,000
//! operations and one repetition unless the environment says otherwise.
//!
//! # The cost of metrics
//!
//! The `metrics` feature is on by default. `scripts/bench-metrics` measures
//! its cost at 256 submitters: it builds this bench with and without the
//! feature and runs the baler contender alone in three configurations, in
//! alternating order for 16 rounds of 3 × 400,000 operations: feature off,
//! feature on with no recorder installed, and feature on recording into
//! `metrics-exporter-prometheus` (`BALER_BENCH_RECORDER=prometheus`). It
//! reports the median CPU time per operation (all threads, from the kernel's
//! accounting; steadier than wall-clock throughput on a shared machine) and
//! the median throughput, each as a ratio to the feature-off build:
//!
//! ```text
//! scripts/bench-metrics                                  # 16 rounds, about 2 minutes
//! ROUNDS=4 BALER_BENCH_OPS=100000 scripts/bench-metrics  # a quick look
//! ```
//!
//! Two sessions of `scripts/bench-metrics` with its defaults on the 2-core
//! development machine, which other builds were loading (load average 8–10),
//! so single runs moved by ±20%:
//!
//! | metrics | CPU per operation vs off | throughput vs off |
//! |---|---:|---:|
//! | on, no recorder | 1.04 and 1.10 (fastest runs: 1.00) | 0.97 and 1.07 |
//! | on, Prometheus recorder | 1.22 and 1.36 (fastest runs: 1.30) | 0.94 and 0.89 |
//!
//! Without a recorder, the feature's cost is within this machine's noise
//! (medians 4% and 10% up, the fastest runs equal): the 5% goal holds as far
//! as this machine can tell. With the Prometheus recorder it does not: each
//! histogram sample is an atomic push into the exporter's bucket, contended
//! when both worker threads push to the same histogram, and the handler here
//! does nothing, so that cost is large next to the ~0.7 µs of CPU baler spends
//! per operation. In one experiment (fastest runs), leaving out the one
//! per-operation histogram (latency) saved about 9 points; the per-batch
//! histograms and the gauges set each engine turn are the rest. A handler
//! that does real I/O per batch hides most of it.
//!
//! # What is measured
//!
//! `ops` operations of a `u64` payload, split evenly over N closed-loop
//! submitter tasks (N in 1, 16, 256): each submits one operation, awaits its
//! result, then submits the next. Three contenders:
//!
//! - **baler**: `max_batch_size(100)`, `linger(1 ms)`, the default
//!   load-aware dispatch, and a handler that answers `batch.done_all(())`.
//!   Its mean batch size comes from `Batcher::stats()` (completed / batches).
//! - **baler (inline)**: the same with [`Execution::Inline`]: the engine's
//!   task polls the handler futures itself, with no spawn per batch.
//! - **floor**: a hand-written batching loop over a tokio mpsc channel of
//!   `(u64, oneshot::Sender<())>`, with the same batch size and submitters;
//!   see [`floor_consumer`] for the batching rule it uses and why. Its mean
//!   batch size is reported too.
//!
//! The table gives the median, min and max ops/s over the repetitions, and
//! baler's median over the floor's median at each N.
//!
//! Every measurement runs on a fresh multi-thread tokio runtime with 2 worker
//! threads (for both contenders alike), so no state (timers, tasks, allocator
//! warmth of a previous contender) carries over. Building the runtime and the
//! batcher, and shutting them down, are outside the timed section; the timed
//! section is from spawning the submitters to the last one finishing.
//!
//! Repetitions are interleaved, and the order of the two contenders alternates
//! between repetitions, so that machine noise and drift affect both. Before
//! the measured repetitions, each contender and N runs once with a tenth of
//! the operations as a warm-up (page faults, CPU frequency, lazy statics).

use std::error::Error as StdError;
use std::future::Future;
use std::time::{Duration, Instant};

use baler::{handler_fn, Batch, Batcher, Execution};
use tokio::sync::{mpsc, oneshot};

type BoxError = Box<dyn StdError + Send + Sync>;

const MAX_BATCH: usize = 100;
/// Baler's linger. The floor never waits for one (see [`floor_consumer`]).
const LINGER: Duration = Duration::from_millis(1);
/// The floor's channel bound: the same as baler's default `buffer_size`, so
/// that both pay for backpressure (a semaphore permit per operation).
const FLOOR_BUFFER: usize = 10_000;
const SUBMITTERS: &str = "1,16,256";
const WORKER_THREADS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Floor,
    Baler,
    BalerInline,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Floor => "floor (mpsc+oneshot)",
            Contender::Baler => "baler",
            Contender::BalerInline => "baler (inline)",
        }
    }
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ops_per_sec: f64,
    /// Operations completed and batches formed, for the mean batch size.
    completed: u64,
    batches: u64,
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a positive integer, got {v:?}")),
        Err(_) => default,
    }
}

fn submitters() -> Vec<usize> {
    let list = std::env::var("BALER_BENCH_SUBMITTERS").unwrap_or_else(|_| SUBMITTERS.to_owned());
    list.split(',')
        .map(|n| {
            n.trim()
                .parse()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("BALER_BENCH_SUBMITTERS: bad count {n:?}"))
        })
        .collect()
}

fn contenders() -> Vec<Contender> {
    match std::env::var("BALER_BENCH_CONTENDER").as_deref() {
        Err(_) => vec![Contender::Floor, Contender::Baler, Contender::BalerInline],
        Ok("baler") => vec![Contender::Baler],
        Ok("inline") => vec![Contender::BalerInline],
        Ok("floor") => vec![Contender::Floor],
        Ok(other) => panic!("BALER_BENCH_CONTENDER must be baler, inline or floor, got {other:?}"),
    }
}

/// Installs the recorder `BALER_BENCH_RECORDER` names; returns its name.
fn install_recorder() -> &'static str {
    match std::env::var("BALER_BENCH_RECORDER").as_deref() {
        Err(_) | Ok("none") => "none",
        #[cfg(feature = "metrics")]
        Ok("prometheus") => {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
                .and_then(|b| b.install_recorder())
                .expect("the Prometheus recorder installs");
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                handle.run_upkeep();
            });
            "prometheus"
        }
        #[cfg(not(feature = "metrics"))]
        Ok("prometheus") => panic!("BALER_BENCH_RECORDER=prometheus needs the metrics feature"),
        Ok(other) => panic!("BALER_BENCH_RECORDER must be none or prometheus, got {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// How many operations submitter `i` of `n` runs: `ops` split evenly, the
/// remainder spread over the first ones, so that the total is exactly `ops`.
fn share(ops: usize, n: usize, i: usize) -> usize {
    ops / n + usize::from(i < ops % n)
}

/// Spawns `n` submitters running `ops` operations in all, each made by
/// `submitter(index, count)`, and waits for all of them. Returns the time
/// from the first spawn to the last completion.
async fn drive<F, Fut>(ops: usize, n: usize, submitter: F) -> Duration
where
    F: Fn(usize, usize) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(submitter(i, share(ops, n, i))))
        .collect();
    for task in tasks {
        task.await
            .expect("a submitter panicked")
            .expect("a submitter failed");
    }
    start.elapsed()
}

fn measure_baler(ops: usize, n: usize, execution: Execution) -> Sample {
    let rt = runtime();
    let sample = rt.block_on(async {
        let batcher = Batcher::builder()
            .max_batch_size(MAX_BATCH)
            .linger(LINGER)
            .execution(execution)
            .build(handler_fn(|batch: Batch<u64>| async move {
                Ok::<_, std::io::Error>(batch.done_all(()))
            }))
            .expect("a valid configuration");
        let elapsed = drive(ops, n, |i, count| {
            let batcher = batcher.clone();
            async move {
                let base = (i as u64) << 32;
                for x in 0..count as u64 {
                    let ticket = batcher.submit(base + x).await?;
                    ticket.await?;
                }
                Ok(())
            }
        })
        .await;
        // Shutting down publishes the engine's final stats: the last batch's
        // report reaches the engine after its tickets resolved.
        let report = batcher.shutdown(None).await;
        assert!(report.is_clean(), "the shutdown lost operations");
        let stats = batcher.stats();
        assert_eq!(
            stats.completed, ops as u64,
            "every operation completes once"
        );
        Sample {
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            completed: stats.completed,
            batches: stats.batches,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    sample
}

type FloorItem = (u64, oneshot::Sender<()>);

/// The floor: a bounded tokio mpsc channel of `(payload, oneshot sender)` and
/// one consumer task that forms batches and resolves every operation of a
/// batch with `()` on its oneshot. Returns the number of batches formed.
///
/// Batching rule: `recv_many(.., 100)`, which waits for at least one item and
/// then takes whatever else is queued right now, up to 100. That is baler's
/// load-aware rule with this handler: a batch goes when it is full (100),
/// when its 1 ms linger runs out, or at once when no batch is in flight; the
/// floor's "handler" is a synchronous no-op run inline by the consumer, so
/// when the consumer forms a batch nothing is ever in flight, and under the
/// load-aware rule the batch goes at once, before the linger could matter.
/// Adding a 1 ms linger wait for partial batches would be a different policy
/// (baler's `Dispatch::Linger`) and would make the floor slower than baler,
/// not a floor. Resolving inline rather than on a spawned task per batch is
/// what makes it the least any such batcher can do: one channel hop in, one
/// oneshot hop out, per operation.
async fn floor_consumer(mut rx: mpsc::Receiver<FloorItem>) -> u64 {
    let mut batches = 0u64;
    let mut batch: Vec<FloorItem> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batches += 1;
        for (_payload, reply) in batch.drain(..) {
            let _ = reply.send(());
        }
    }
    batches
}

fn measure_floor(ops: usize, n: usize) -> Sample {
    let rt = runtime();
    let sample = rt.block_on(async {
        let (tx, rx) = mpsc::channel::<FloorItem>(FLOOR_BUFFER);
        let consumer = tokio::spawn(floor_consumer(rx));
        let elapsed = drive(ops, n, |i, count| {
            let tx = tx.clone();
            async move {
                let base = (i as u64) << 32;
                for x in 0..count as u64 {
                    let (reply, ticket) = oneshot::channel();
                    tx.send((base + x, reply)).await?;
                    ticket.await?;
                }
                Ok(())
            }
        })
        .await;
        drop(tx);
        let batches = consumer.await.expect("the floor's consumer panicked");
        Sample {
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            completed: ops as u64,
            batches,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    sample
}

fn measure(contender: Contender, ops: usize, n: usize) -> Sample {
    match contender {
        Contender::Floor => measure_floor(ops, n),
        Contender::Baler => measure_baler(ops, n, Execution::Spawned),
        Contender::BalerInline => measure_baler(ops, n, Execution::Inline),
    }
}

struct Summary {
    median: f64,
    min: f64,
    max: f64,
    mean_batch: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let mut rates: Vec<f64> = samples.iter().map(|s| s.ops_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    let median = if rates.len() % 2 == 1 {
        rates[mid]
    } else {
        (rates[mid - 1] + rates[mid]) / 2.0
    };
    let completed: u64 = samples.iter().map(|s| s.completed).sum();
    let batches: u64 = samples.iter().map(|s| s.batches).sum();
    Summary {
        median,
        min: rates[0],
        max: rates[rates.len() - 1],
        mean_batch: completed as f64 / batches.max(1) as f64,
    }
}

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` does not: a smoke test then.
    let benching = std::env::args().any(|a| a == "--bench");
    let ops = env_usize("BALER_BENCH_OPS", if benching { 1_000_000 } else { 2_000 }).max(1);
    let reps = env_usize("BALER_BENCH_REPS", if benching { 5 } else { 1 }).max(1);
    let submitters = submitters();
    let contenders = contenders();
    let metrics = format!(
        "metrics feature {}, recorder {}",
        if cfg!(feature = "metrics") {
            "on"
        } else {
            "off"
        },
        install_recorder()
    );

    eprintln!(
        "throughput: {ops} ops, {reps} reps, submitters {submitters:?}, \
         max_batch_size {MAX_BATCH}, linger {LINGER:?}, {WORKER_THREADS} worker threads, {metrics}"
    );

    let warmup = (ops / 10).max(1);
    for &n in &submitters {
        for &c in &contenders {
            let s = measure(c, warmup, n);
            eprintln!(
                "warm-up   N={n:>3} {:<20} {:>12} ops/s",
                c.name(),
                thousands(s.ops_per_sec)
            );
        }
    }

    // samples[submitters index][contenders index]
    let mut samples = vec![vec![Vec::new(); contenders.len()]; submitters.len()];
    for rep in 0..reps {
        for (ni, &n) in submitters.iter().enumerate() {
            // Alternate which contender goes first.
            let mut order: Vec<usize> = (0..contenders.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for ci in order {
                let c = contenders[ci];
                let s = measure(c, ops, n);
                eprintln!(
                    "rep {}/{reps} N={n:>3} {:<20} {:>12} ops/s, mean batch {:.1}",
                    rep + 1,
                    c.name(),
                    thousands(s.ops_per_sec),
                    s.completed as f64 / s.batches.max(1) as f64,
                );
                samples[ni][ci].push(s);
            }
        }
    }

    println!();
    println!(
        "Throughput of {} no-op operations, closed loop, max_batch_size {MAX_BATCH}, \
         linger {} ms, {WORKER_THREADS} worker threads, {reps} reps, {metrics} (ops/s):",
        thousands(ops as f64),
        LINGER.as_millis()
    );
    println!();
    println!(
        "| submitters | contender | median ops/s | min ops/s | max ops/s | mean batch size | ratio to floor |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (ni, &n) in submitters.iter().enumerate() {
        let summaries: Vec<Summary> = samples[ni].iter().map(|s| summarize(s)).collect();
        let median_of = |c: Contender| {
            contenders
                .iter()
                .position(|&x| x == c)
                .map(|i| summaries[i].median)
        };
        let floor = median_of(Contender::Floor);
        for (&c, s) in contenders.iter().zip(&summaries) {
            let ratio = match floor {
                Some(f) if c != Contender::Floor => format!("{:.2}×", s.median / f),
                _ => String::new(),
            };
            println!(
                "| {n} | {} | {} | {} | {} | {:.1} | {ratio} |",
                c.name(),
                thousands(s.median),
                thousands(s.min),
                thousands(s.max),
                s.mean_batch,
            );
        }
    }
}
