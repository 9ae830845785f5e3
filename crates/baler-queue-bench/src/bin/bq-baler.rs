//! baler's contender in the queue benchmark: one role per process, as the
//! runner (`queue-bench`) starts it. See docs/queue-benchmarks.md.
//!
//! ```text
//! bq-baler worker   # runs jobs until SIGTERM
//! bq-baler chain    # keeps BQB_CHAINS chains of jobs going for BQB_SECONDS
//! bq-baler bulk     # enqueues BQB_JOBS jobs in batches of BQB_BATCH
//! ```
//!
//! Environment: `BQB_REDIS`, `BQB_QUEUE`, `BQB_REPORT` (where the JSON report
//! goes, rewritten atomically every 250 ms and at exit), and per role
//! `BQB_CONCURRENCY`, `BQB_CHAINS`, `BQB_SECONDS`, `BQB_JOBS`, `BQB_BATCH`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baler::{handler_fn, Batch, Outcome};
use baler_queue::Queue;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A job: its chain and its number in the chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    c: u64,
    n: u64,
}

/// A job's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    n: u64,
}

// One thread per process, as Node runs bee-queue and BullMQ: the machine
// runs seven contender processes and redis-server on two cores, where a
// multi-thread runtime per process mostly adds cross-thread wake-ups (the
// chain ran about 12% faster this way, measured with scripts/queue-bench).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    let outcome = match role.as_str() {
        "worker" => worker().await,
        "chain" => chain().await,
        "bulk" => bulk().await,
        other => Err(format!("unknown role {other:?}: give `worker`, `chain` or `bulk`").into()),
    };
    if let Err(e) = outcome {
        eprintln!("bq-baler {role}: {e}");
        std::process::exit(1);
    }
}

fn var(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| format!("{name} is not set: the runner sets it").into())
}

fn number(name: &str) -> Result<u64, Error> {
    let text = var(name)?;
    text.parse()
        .map_err(|e| format!("{name}={text:?} is not a whole number ({e})").into())
}

/// The queue: on one Redis (`BQB_REDIS`), or on a Redis Cluster when the
/// runner gives its nodes (`BQB_CLUSTER`), split into `BQB_SHARDS` shards
/// (default 1).
async fn queue() -> Result<Queue, Error> {
    let name = var("BQB_QUEUE")?;
    let shards = match std::env::var("BQB_SHARDS") {
        Ok(_) => usize::try_from(number("BQB_SHARDS")?)?,
        Err(_) => 1,
    };
    let builder = match std::env::var("BQB_CLUSTER") {
        Ok(nodes) => Queue::cluster_builder(nodes.split(','), &name),
        Err(_) => Queue::builder(&var("BQB_REDIS")?, &name),
    };
    Ok(builder.shards(shards).build().await?)
}

/// Writes `value` to `path` atomically: `<path>.tmp`, then a rename.
fn write_report(path: &Path, value: &serde_json::Value) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, value.to_string())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), path.display()))?;
    Ok(())
}

/// Rewrites the report every 250 ms from `make` until the task is aborted.
fn keep_reporting(
    path: PathBuf,
    make: impl Fn() -> serde_json::Value + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            if let Err(e) = write_report(&path, &make()) {
                eprintln!("bq-baler: {e}");
            }
        }
    })
}

/// Runs jobs until SIGTERM; `BQB_CONCURRENCY` is the worker's
/// `max_in_flight`: how many batches (handler calls) run at once.
async fn worker() -> Result<(), Error> {
    let report = PathBuf::from(var("BQB_REPORT")?);
    let concurrency = number("BQB_CONCURRENCY")? as usize;
    // Installed before the worker starts, so that an early SIGTERM is seen.
    let mut term = signal(SignalKind::terminate())?;
    let queue = queue().await?;
    let ran = Arc::new(AtomicU64::new(0));
    let counter = ran.clone();
    let worker = queue.worker().max_in_flight(concurrency).start(handler_fn(
        move |batch: Batch<Payload>| {
            let ran = counter.clone();
            async move {
                let answers: Vec<Outcome<Answer, std::io::Error>> = batch
                    .iter()
                    .map(|job| Outcome::Done(Answer { n: job.n }))
                    .collect();
                ran.fetch_add(answers.len() as u64, Ordering::Relaxed);
                Ok::<_, std::io::Error>(answers)
            }
        },
    ))?;
    let make = {
        let ran = ran.clone();
        move || serde_json::json!({ "ran": ran.load(Ordering::Relaxed) })
    };
    write_report(&report, &make())?;
    let reporter = keep_reporting(report.clone(), make.clone());
    term.recv().await;
    let left = worker.shutdown(Duration::from_secs(5)).await;
    reporter.abort();
    if left.unwritten > 0 {
        eprintln!(
            "bq-baler worker: {} completions unwritten at shutdown",
            left.unwritten
        );
    }
    write_report(&report, &make())
}

/// This process's resident memory in kB (VmRSS), 0 if unknown.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct ChainCounts {
    enqueued: AtomicU64,
    advanced: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

/// Keeps `BQB_CHAINS` chains going for `BQB_SECONDS`: each chain enqueues a
/// job, awaits its ticket, and enqueues its next job. The ticket is both the
/// signal that advances the chain and the per-job result, so `advanced` and
/// `delivered` count the same thing here.
async fn chain() -> Result<(), Error> {
    let report = PathBuf::from(var("BQB_REPORT")?);
    let chains = number("BQB_CHAINS")?;
    let seconds = number("BQB_SECONDS")?;
    let queue = queue().await?;
    let producer = queue.producer("bqb-chain").build::<Payload, Answer>()?;
    let counts = Arc::new(ChainCounts::default());
    let rss = Arc::new(Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    let elapsed = Arc::new(Mutex::new(None::<f64>));
    let sampler = {
        let rss = rss.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                rss.lock().unwrap_or_else(|e| e.into_inner()).push(rss_kb());
            }
        })
    };
    let make = {
        let (counts, rss, elapsed) = (counts.clone(), rss.clone(), elapsed.clone());
        move || {
            let seconds = elapsed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| started.elapsed().as_secs_f64());
            let rss = rss.lock().unwrap_or_else(|e| e.into_inner()).clone();
            serde_json::json!({
                "enqueued": counts.enqueued.load(Ordering::Relaxed),
                "advanced": counts.advanced.load(Ordering::Relaxed),
                "delivered": counts.delivered.load(Ordering::Relaxed),
                "failed": counts.failed.load(Ordering::Relaxed),
                "seconds": seconds,
                "rss_kb": rss,
            })
        }
    };
    let reporter = keep_reporting(report.clone(), make.clone());
    let stop_at = started + Duration::from_secs(seconds);
    let wait_until = stop_at + Duration::from_secs(10);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..chains {
        let (producer, counts) = (producer.clone(), counts.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < stop_at {
                let ticket = match producer.enqueue(Payload { c, n }).await {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("bq-baler chain {c}: enqueue failed: {e}");
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                counts.enqueued.fetch_add(1, Ordering::Relaxed);
                let deadline = tokio::time::Instant::from_std(wait_until);
                match tokio::time::timeout_at(deadline, ticket).await {
                    Ok(Ok(_)) => {
                        counts.advanced.fetch_add(1, Ordering::Relaxed);
                        counts.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        eprintln!("bq-baler chain {c}: job {n} failed: {e}");
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    // The final wait ran out with this job outstanding.
                    Err(_) => break,
                }
                n += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    *elapsed.lock().unwrap_or_else(|e| e.into_inner()) = Some(started.elapsed().as_secs_f64());
    sampler.abort();
    reporter.abort();
    producer.shutdown(Duration::from_secs(1)).await;
    write_report(&report, &make())
}

/// Enqueues `BQB_JOBS` jobs with `enqueue_many`, `BQB_BATCH` at a time, and
/// reports the enqueue time. The tickets are dropped, but the workers still
/// write every result to this producer's results stream, and only a live
/// producer reads and deletes them: so after enqueuing it stays until every
/// result has been consumed (at most `BQB_DRAIN_SECONDS`, default 1800), and
/// reports `drained` (results consumed) and `drain_seconds` (from the first
/// enqueue) besides. It allows `BQB_JOBS` outstanding jobs, so that enqueuing
/// never waits for results, as the other libraries' bulk adds do not.
async fn bulk() -> Result<(), Error> {
    let report = PathBuf::from(var("BQB_REPORT")?);
    let jobs = number("BQB_JOBS")?;
    let batch = number("BQB_BATCH")?.max(1);
    let drain_limit = Duration::from_secs(match std::env::var("BQB_DRAIN_SECONDS") {
        Ok(_) => number("BQB_DRAIN_SECONDS")?,
        Err(_) => 1800,
    });
    let queue = queue().await?;
    let producer = queue
        .producer("bqb-bulk")
        .max_outstanding(jobs.max(1) as usize)
        // One enqueue script call per batch of BQB_BATCH jobs.
        .max_batch_size(batch as usize)
        .build::<Payload, Answer>()?;
    let started = Instant::now();
    let enqueued = Arc::new(AtomicU64::new(0));
    let make_enqueuing = {
        let enqueued = enqueued.clone();
        move || {
            serde_json::json!({
                "enqueued": enqueued.load(Ordering::Relaxed),
                "seconds": started.elapsed().as_secs_f64(),
            })
        }
    };
    let reporter = keep_reporting(report.clone(), make_enqueuing);
    let mut next = 0;
    while next < jobs {
        let end = (next + batch).min(jobs);
        let answers = producer
            .enqueue_many((next..end).map(|n| Payload { c: 0, n }))
            .await;
        for answer in answers {
            match answer {
                // Dropping the ticket discards the result; the producer still
                // reads it from Redis and deletes it.
                Ok(_ticket) => {
                    enqueued.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("enqueue failed: {e}").into()),
            }
        }
        next = end;
    }
    let seconds = started.elapsed().as_secs_f64();
    reporter.abort();
    let enqueued = enqueued.load(Ordering::Relaxed);
    let drain_report = |drained: u64, drain_seconds: f64| {
        serde_json::json!({
            "enqueued": enqueued,
            "seconds": seconds,
            "drained": drained,
            "drain_seconds": drain_seconds,
        })
    };
    write_report(&report, &drain_report(0, seconds))?;
    let give_up = Instant::now() + drain_limit;
    loop {
        let drained = enqueued - (producer.outstanding() as u64).min(enqueued);
        if drained == enqueued || Instant::now() >= give_up {
            break;
        }
        write_report(
            &report,
            &drain_report(drained, started.elapsed().as_secs_f64()),
        )?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let left = producer.shutdown(Duration::from_secs(1)).await;
    let drained = enqueued - (left.outstanding.len() as u64).min(enqueued);
    write_report(
        &report,
        &drain_report(drained, started.elapsed().as_secs_f64()),
    )?;
    if drained < enqueued {
        return Err(format!(
            "{} of {enqueued} results never reached the producer",
            enqueued - drained
        )
        .into());
    }
    Ok(())
}
