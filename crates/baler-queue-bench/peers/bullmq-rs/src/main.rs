//! `bq-bullmq-rs`: the queue benchmark's contender for `bullmq-official`, BullMQ's own Rust
//! port (library name `bullmq`). One process plays one role, given as the first argument:
//!
//! - `worker`: a `bullmq::Worker` with `concurrency = BQB_CONCURRENCY`; runs jobs until
//!   SIGTERM, then closes the worker (which stops fetching and waits for the jobs it holds),
//!   writes its final report and exits 0. Report: `{"ran": n}`.
//! - `chain`: keeps `BQB_CHAINS` chains of jobs going for `BQB_SECONDS` seconds. Report:
//!   `{"enqueued", "advanced", "delivered", "failed", "seconds", "rss_kb"}`.
//! - `bulk`: adds `BQB_JOBS` jobs with `Queue::add_bulk` in batches of `BQB_BATCH`, does not
//!   wait for them. Report: `{"enqueued": n, "seconds": s}`.
//!
//! Every role reads `BQB_REDIS`, `BQB_QUEUE` and `BQB_REPORT`, and writes its JSON report to
//! `BQB_REPORT` atomically (`<path>.tmp`, then rename) every 250 ms and once more at exit.
//! Errors are printed as one message and the process exits 1.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bullmq::options::RedisConnectionOptions;
use bullmq::types::RemoveOnFinish;
use bullmq::{
    BulkJob, Job, JobOptions, Queue, QueueEvent, QueueEvents, QueueEventsOptions, QueueOptions,
    Worker, WorkerOptions,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

const NAME: &str = "bq-bullmq-rs";
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How long a worker waits for the jobs it holds after SIGTERM (the protocol allows 5 s).
const WORKER_CLOSE_MS: u64 = 4_000;
/// How long the chain producer waits for its outstanding jobs after `BQB_SECONDS`.
const FINAL_WAIT: Duration = Duration::from_secs(10);
/// How often the chain producer polls one job for its result (see `poll_result`).
const RESULT_POLL_EVERY: Duration = Duration::from_millis(100);
const JOB_NAME: &str = "bench";

/// Everything that can stop this program, each with a message that says what to change.
#[derive(Debug)]
enum BenchError {
    Usage(String),
    MissingEnv(&'static str),
    BadEnv {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    Report {
        path: String,
        source: std::io::Error,
    },
    Queue {
        what: &'static str,
        source: bullmq::Error,
    },
    Signal(std::io::Error),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(got) => write!(
                f,
                "expected one argument, the role: `worker`, `chain` or `bulk` (got {got})"
            ),
            BenchError::MissingEnv(name) => {
                write!(f, "environment variable {name} is not set; set it")
            }
            BenchError::BadEnv {
                name,
                value,
                expected,
            } => write!(f, "{name}={value:?} is not {expected}; set it to one"),
            BenchError::Report { path, source } => {
                write!(f, "cannot write the report file {path}: {source}")
            }
            BenchError::Queue { what, source } => write!(f, "{what}: {source}"),
            BenchError::Signal(source) => {
                write!(f, "cannot listen for SIGTERM: {source}")
            }
        }
    }
}

fn queue_err(what: &'static str) -> impl FnOnce(bullmq::Error) -> BenchError {
    move |source| BenchError::Queue { what, source }
}

fn main() {
    let role = std::env::args().nth(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{NAME}: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match role.as_deref() {
            Some("worker") => worker().await,
            Some("chain") => chain().await,
            Some("bulk") => bulk().await,
            Some(other) => Err(BenchError::Usage(format!("{other:?}"))),
            None => Err(BenchError::Usage("nothing".to_string())),
        }
    });
    // Background tasks (the queue's connections) are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(200));
    if let Err(e) = result {
        eprintln!("{NAME}: error: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Environment and reports
// ---------------------------------------------------------------------------------------

fn env_string(name: &'static str) -> Result<String, BenchError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) | Err(std::env::VarError::NotPresent) => Err(BenchError::MissingEnv(name)),
        Err(std::env::VarError::NotUnicode(v)) => Err(BenchError::BadEnv {
            name,
            value: v.to_string_lossy().into_owned(),
            expected: "valid UTF-8",
        }),
    }
}

/// A whole number of at least 1.
fn env_count(name: &'static str) -> Result<u64, BenchError> {
    let value = env_string(name)?;
    match value.trim().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(BenchError::BadEnv {
            name,
            value,
            expected: "a whole number of at least 1",
        }),
    }
}

/// The settings every role shares.
struct Common {
    redis: String,
    queue: String,
    report: String,
}

impl Common {
    fn from_env() -> Result<Self, BenchError> {
        let redis = env_string("BQB_REDIS")?;
        if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return Err(BenchError::BadEnv {
                name: "BQB_REDIS",
                value: redis,
                expected: "a redis:// URL",
            });
        }
        Ok(Self {
            redis,
            queue: env_string("BQB_QUEUE")?,
            report: env_string("BQB_REPORT")?,
        })
    }

    fn connection(&self) -> RedisConnectionOptions {
        RedisConnectionOptions::new().url(self.redis.clone())
    }
}

fn write_report(path: &str, report: &Value) -> Result<(), BenchError> {
    let tmp = format!("{path}.tmp");
    let err = |source| BenchError::Report {
        path: path.to_string(),
        source,
    };
    std::fs::write(&tmp, report.to_string()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes `snapshot()` to `path` now (so a bad path fails at once), then every 250 ms until
/// the returned handle is dropped or aborted. The caller writes the final report itself.
fn start_reporter<F>(path: &str, snapshot: F) -> Result<AbortOnDrop, BenchError>
where
    F: Fn() -> Value + Send + 'static,
{
    write_report(path, &snapshot())?;
    let path = path.to_string();
    let handle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = write_report(&path, &snapshot()) {
                eprintln!("{NAME}: warning: {e}");
            }
        }
    });
    Ok(AbortOnDrop::new(handle))
}

/// A spawned task that is aborted when this is dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    fn new(handle: tokio::task::JoinHandle<()>) -> Self {
        Self(Some(handle))
    }

    /// Aborts the task and waits until it is gone, so that it writes nothing afterwards.
    async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This process's resident memory in KiB (VmRSS of /proc/self/status), 0 if unreadable.
fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|kb| kb.parse().ok())
            })
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// worker
// ---------------------------------------------------------------------------------------

async fn worker() -> Result<(), BenchError> {
    let common = Common::from_env()?;
    let concurrency = env_count("BQB_CONCURRENCY")?;
    let ran = Arc::new(AtomicU64::new(0));

    let snapshot = {
        let ran = ran.clone();
        move || json!({ "ran": ran.load(Ordering::Relaxed) })
    };
    let reporter = start_reporter(&common.report, snapshot.clone())?;
    // Listen before the worker starts, so an early SIGTERM is not missed.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(BenchError::Signal)?;

    let counter = ran.clone();
    let processor = move |job: Job, _token| {
        let counter = counter.clone();
        async move {
            let n = job.data().get("n").cloned().unwrap_or(Value::Null);
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(json!({ "n": n }))
        }
    };
    // `concurrency` is the library's own setting: how many jobs this Worker runs at once.
    let options = WorkerOptions::new()
        .connection(common.connection())
        .concurrency(usize::try_from(concurrency).unwrap_or(usize::MAX));
    let worker = Arc::new(
        Worker::with_options(&common.queue, processor, options)
            .await
            .map_err(queue_err("cannot start the worker"))?,
    );

    // The Worker sends its in-process events (active, completed, ...) into an unbounded
    // channel; nobody here needs them, so drain it, or it grows by two events per job.
    let drain = {
        let worker = worker.clone();
        AbortOnDrop::new(tokio::spawn(async move {
            while worker.next_event().await.is_some() {}
        }))
    };

    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // `close` stops fetching, waits for the jobs this worker holds (up to the timeout),
    // then stops the fetch loop. When idle, that loop sits in a BZPOPMIN of up to
    // `drain_delay` (5 s by default) that `close` waits for up to the timeout.
    worker
        .close(WORKER_CLOSE_MS)
        .await
        .map_err(queue_err("closing the worker failed"))?;
    drop(drain);
    reporter.stop().await;
    write_report(&common.report, &snapshot())
}

// ---------------------------------------------------------------------------------------
// chain
// ---------------------------------------------------------------------------------------

/// How one job ended, as the producer learns it.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Completed,
    Failed,
}

/// Routes the `QueueEvents` completion events to the chains waiting for them.
///
/// A job may complete before `Queue::add` has returned its id to the chain, so an event for
/// an id nobody waits for yet is kept in `early` until the chain asks for it.
#[derive(Default)]
struct Router {
    waiting: HashMap<String, oneshot::Sender<Outcome>>,
    early: HashMap<String, Outcome>,
}

impl Router {
    fn wait_for(this: &Mutex<Self>, id: String) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let mut router = lock(this);
        match router.early.remove(&id) {
            Some(outcome) => {
                let _ = tx.send(outcome);
            }
            None => {
                router.waiting.insert(id, tx);
            }
        }
        rx
    }

    fn finished(this: &Mutex<Self>, id: String, outcome: Outcome) {
        let mut router = lock(this);
        match router.waiting.remove(&id) {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => {
                router.early.insert(id, outcome);
            }
        }
    }
}

#[derive(Default)]
struct ChainCounts {
    enqueued: AtomicU64,
    advanced: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
}

async fn chain() -> Result<(), BenchError> {
    let common = Common::from_env()?;
    let chains = env_count("BQB_CHAINS")?;
    let seconds = env_count("BQB_SECONDS")?;

    let counts = Arc::new(ChainCounts::default());
    let rss = Arc::new(Mutex::new(Vec::<u64>::new()));
    let elapsed = Arc::new(Mutex::new(0.0f64));
    let snapshot = {
        let counts = counts.clone();
        let rss = rss.clone();
        let elapsed = elapsed.clone();
        move || {
            json!({
                "enqueued": counts.enqueued.load(Ordering::Relaxed),
                "advanced": counts.advanced.load(Ordering::Relaxed),
                "delivered": counts.delivered.load(Ordering::Relaxed),
                "failed": counts.failed.load(Ordering::Relaxed),
                "seconds": *lock(&elapsed),
                "rss_kb": lock(&rss).clone(),
            })
        }
    };
    let reporter = start_reporter(&common.report, snapshot.clone())?;

    // Jobs are kept once completed (no removeOnComplete): the per-job result poll below reads
    // the completed job's hash, and a chain run adds far fewer jobs than the bulk run.
    let queue = Queue::with_options(
        &common.queue,
        QueueOptions::new().connection(common.connection()),
    )
    .await
    .map_err(queue_err("cannot open the queue"))?;

    // The chain advances on `QueueEvents` `completed`, the cross-process completion signal
    // BullMQ gives a producer (what Node's `waitUntilFinished` is built on). `QueueEvents`
    // starts reading in a spawned task with no "ready" notice, and by default from `$` (only
    // events after its first XREAD), so a job finishing before that read would be missed.
    // The queue is fresh for each run, so it reads the stream from its start (`0`) instead.
    let events = QueueEvents::with_options(
        &common.queue,
        QueueEventsOptions {
            connection: common.connection(),
            last_event_id: Some("0".to_string()),
            ..QueueEventsOptions::default()
        },
    )
    .await
    .map_err(queue_err("cannot open the queue's events"))?;
    let events = Arc::new(events);
    let router = Arc::new(Mutex::new(Router::default()));
    let listener = {
        let events = events.clone();
        let router = router.clone();
        AbortOnDrop::new(tokio::spawn(async move {
            while let Some(entry) = events.next_event().await {
                match entry.event {
                    QueueEvent::Completed { job_id, .. } => {
                        Router::finished(&router, job_id, Outcome::Completed)
                    }
                    QueueEvent::Failed { job_id, .. } => {
                        Router::finished(&router, job_id, Outcome::Failed)
                    }
                    QueueEvent::Error { message } => {
                        eprintln!("{NAME}: warning: queue events: {message}")
                    }
                    _ => {}
                }
            }
        }))
    };

    let start = Instant::now();
    let stop_at = start + Duration::from_secs(seconds);
    let give_up_at = stop_at + FINAL_WAIT;
    let stopping = Arc::new(AtomicBool::new(false));

    let sampler = {
        let rss = rss.clone();
        let elapsed = elapsed.clone();
        AbortOnDrop::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                lock(&rss).push(rss_kb());
                *lock(&elapsed) = start.elapsed().as_secs_f64();
            }
        }))
    };

    let mut chain_tasks = JoinSet::new();
    // Result polls still running (spawned tasks, not a JoinSet, which would keep every
    // finished task until it is joined).
    let polling = Arc::new(AtomicU64::new(0));
    for c in 0..chains {
        let queue = queue.clone();
        let router = router.clone();
        let counts = counts.clone();
        let stopping = stopping.clone();
        let polling = polling.clone();
        chain_tasks.spawn(async move {
            let mut n: u64 = 0;
            while !stopping.load(Ordering::Relaxed) {
                let job = queue
                    .add(JOB_NAME, json!({ "c": c, "n": n }))
                    .await
                    .map_err(queue_err("adding a job failed"))?;
                counts.enqueued.fetch_add(1, Ordering::Relaxed);
                let id = job.id().to_string();
                let done = Router::wait_for(&router, id.clone());
                polling.fetch_add(1, Ordering::Relaxed);
                let poll = poll_result(queue.clone(), id, counts.clone());
                let polling = polling.clone();
                tokio::spawn(async move {
                    poll.await;
                    polling.fetch_sub(1, Ordering::Relaxed);
                });
                match tokio::time::timeout_at(give_up_at, done).await {
                    Ok(Ok(Outcome::Completed)) => {
                        counts.advanced.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(Outcome::Failed)) => {
                        counts.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    // The listener ended, or the final wait is over.
                    Ok(Err(_)) | Err(_) => break,
                }
                n += 1;
            }
            Ok::<(), BenchError>(())
        });
    }

    tokio::time::sleep_until(stop_at).await;
    stopping.store(true, Ordering::Relaxed);
    let mut first_error = None;
    while let Some(joined) = chain_tasks.join_next().await {
        if let Ok(Err(e)) = joined {
            first_error.get_or_insert(e);
        }
    }
    // Whatever result polls are still open get the rest of the final wait.
    while polling.load(Ordering::Relaxed) > 0 && Instant::now() < give_up_at {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds_taken = start.elapsed().as_secs_f64();
    sampler.stop().await;
    *lock(&elapsed) = seconds_taken;
    drop(listener);
    reporter.stop().await;
    events.close().await;
    queue.close().await;
    write_report(&common.report, &snapshot())?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The per-job way to get one job's result with `bullmq-official`.
///
/// The crate has no `Job::wait_until_finished` (its README lists it as not ported), so a
/// caller who wants the result of the job it added reads the job back until it is finished:
/// `Queue::get_job` (one HGETALL) every 100 ms (the interval apalis-redis's own `wait_for`
/// polls at) until `finishedOn` is set; the return value is then in `returnvalue`.
/// Counts `delivered` when a completed job's result is read.
async fn poll_result(queue: Queue, id: String, counts: Arc<ChainCounts>) {
    loop {
        tokio::time::sleep(RESULT_POLL_EVERY).await;
        match queue.get_job(&id).await {
            Ok(Some(job)) if job.finished_on().is_some() => {
                if job.failed_reason().is_empty() && !job.returnvalue().is_empty() {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            // Not finished yet.
            Ok(Some(_)) => {}
            // Removed: its result can no longer be read.
            Ok(None) => return,
            Err(e) => {
                eprintln!("{NAME}: warning: polling job {id} failed: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// bulk
// ---------------------------------------------------------------------------------------

async fn bulk() -> Result<(), BenchError> {
    let common = Common::from_env()?;
    let jobs = env_count("BQB_JOBS")?;
    let batch = env_count("BQB_BATCH")?;

    let enqueued = Arc::new(AtomicU64::new(0));
    let elapsed = Arc::new(Mutex::new(0.0f64));
    let snapshot = {
        let enqueued = enqueued.clone();
        let elapsed = elapsed.clone();
        move || {
            json!({
                "enqueued": enqueued.load(Ordering::Relaxed),
                "seconds": *lock(&elapsed),
            })
        }
    };
    let reporter = start_reporter(&common.report, snapshot.clone())?;

    // `removeOnComplete: true` as the queue's default job option, so that each job is deleted
    // when it completes and a million finished jobs do not pile up in Redis.
    let defaults = JobOptions::new().remove_on_complete(RemoveOnFinish::Bool(true));
    let queue = Queue::with_options(
        &common.queue,
        QueueOptions::new()
            .connection(common.connection())
            .default_job_options(defaults),
    )
    .await
    .map_err(queue_err("cannot open the queue"))?;

    let start = Instant::now();
    let mut next: u64 = 0;
    while next < jobs {
        let end = jobs.min(next + batch);
        // `add_bulk` is the crate's bulk API. Unlike Node's addBulk (one MULTI), it runs one
        // add script per job, concurrently over its multiplexed connection.
        let batch_jobs: Vec<BulkJob> = (next..end)
            .map(|n| BulkJob::new(JOB_NAME, json!({ "c": 0, "n": n })))
            .collect();
        queue
            .add_bulk(batch_jobs)
            .await
            .map_err(queue_err("adding a batch of jobs failed"))?;
        enqueued.store(end, Ordering::Relaxed);
        *lock(&elapsed) = start.elapsed().as_secs_f64();
        next = end;
    }
    *lock(&elapsed) = start.elapsed().as_secs_f64();

    reporter.stop().await;
    queue.close().await;
    write_report(&common.report, &snapshot())
}
