//! `bq-apalis`: the queue benchmark's contender for apalis with its Redis storage
//! (`apalis` + `apalis-redis` 1.0). One process plays one role, given as the first argument:
//!
//! - `worker`: an apalis worker on a Redis storage with `.concurrency(BQB_CONCURRENCY)`;
//!   runs tasks until SIGTERM, then stops the worker (which stops fetching, waits for the
//!   tasks it runs, acknowledges them and puts back the ones it had fetched but not started),
//!   writes its final report and exits 0. Report: `{"ran": n}`.
//! - `chain`: keeps `BQB_CHAINS` chains of tasks going for `BQB_SECONDS` seconds. Report:
//!   `{"enqueued", "advanced", "delivered", "failed", "seconds", "rss_kb"}`.
//! - `bulk`: pushes `BQB_JOBS` tasks with `TaskSink::push_bulk` in batches of `BQB_BATCH`,
//!   does not wait for them. Report: `{"enqueued": n, "seconds": s}`.
//!
//! Every role reads `BQB_REDIS`, `BQB_QUEUE` and `BQB_REPORT`, and writes its JSON report to
//! `BQB_REPORT` atomically (`<path>.tmp`, then rename) every 250 ms and once more at exit.
//! Errors are printed as one message and the process exits 1.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

const NAME: &str = "bq-apalis";
const REPORT_EVERY: Duration = Duration::from_millis(250);
/// How long a worker waits for the tasks it holds after SIGTERM (the protocol allows 5 s).
const WORKER_STOP: Duration = Duration::from_millis(4_500);
/// How long the chain producer waits for its outstanding tasks after `BQB_SECONDS`.
const FINAL_WAIT: Duration = Duration::from_secs(10);
/// How often an idle worker wakes to fetch (see `worker`).
const WORKER_POLL_EVERY: Duration = Duration::from_millis(100);

/// A job's payload: `{"c": <chain>, "n": <seq>}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    c: u64,
    n: u64,
}

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
    Redis {
        what: &'static str,
        source: String,
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
            BenchError::Redis { what, source } => write!(f, "{what}: {source}"),
            BenchError::Signal(source) => {
                write!(f, "cannot listen for SIGTERM: {source}")
            }
        }
    }
}

fn redis_err<E: fmt::Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |source| BenchError::Redis {
        what,
        source: source.to_string(),
    }
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

    /// A `RedisStorage` on a `ConnectionManager`, as the crate's README shows.
    async fn storage(&self, config: Config) -> Result<RedisStorage<Payload>, BenchError> {
        let conn = apalis_redis::connect(self.redis.as_str())
            .await
            .map_err(redis_err("cannot connect to Redis"))?;
        Ok(RedisStorage::new(conn).with_config(config.queue(&self.queue)))
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
/// the returned handle is dropped. The caller writes the final report itself.
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

/// The handler: no work, returns `{"n": n}`, counts itself in `ran`.
async fn handle(job: Payload, ran: Data<Arc<AtomicU64>>) -> Result<Value, BoxDynError> {
    ran.fetch_add(1, Ordering::Relaxed);
    Ok(json!({ "n": job.n }))
}

async fn worker() -> Result<(), BenchError> {
    let common = Common::from_env()?;
    let concurrency = env_count("BQB_CONCURRENCY")?;
    let ran = Arc::new(AtomicU64::new(0));

    let snapshot = {
        let ran = ran.clone();
        move || json!({ "ran": ran.load(Ordering::Relaxed) })
    };
    let reporter = start_reporter(&common.report, snapshot.clone())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(BenchError::Signal)?;

    // A worker's storage fetches when it is polled, and apalis polls it only when woken.
    // The crate's pubsub wake-up (`RedisStorageFactory`, subscribed to
    // `tasks:*:available`) never fires in apalis-redis 1.0.0: `push_tasks` clamps every
    // task's `run_at` up to "now", so its `batch_push` script always takes the "scheduled"
    // branch (ZADD to `<queue>:scheduled`, no PUBLISH); `fetch_next` promotes due scheduled
    // tasks when it runs. Without a poll strategy, a worker whose fetch came back empty would
    // fetch again only when one of its own tasks finishes or its heartbeat (30 s) is due. So
    // the worker uses apalis's own periodic wake-up, `BackendExt::poll_with_interval`, every
    // 100 ms (the interval apalis-redis's own `wait_for` polls at).
    //
    // `lock_tasks(false)`: `Config::lock_tasks` says it "can be turned off for tasks that last
    // shorter than a worker heartbeat" (30 s), as these do. With it on (the default), each
    // task the worker starts is leased by the `acquire_leases` script, which also runs
    // `LREM <queue>:active 1 <id>` for it: a scan of the whole waiting list for an id that
    // `fetch_next` already took off it, so the cost per task grows with the backlog (50,000
    // tasks with 4 workers: 42 s of Redis time, ~1,000 tasks/s). A fetched task is still in
    // the worker's inflight set either way, which is what re-enqueues it if the worker dies.
    let config = Config::default().lock_tasks(false);
    let backend = common
        .storage(config)
        .await?
        .poll_with_interval(WORKER_POLL_EVERY);

    // `.concurrency(n)` is apalis's own setting (a tower ConcurrencyLimit in front of the
    // handler): at most n tasks run at once; the worker stops fetching while n are running.
    // Tasks are fetched `Config::batch_size` (default 10) at a time.
    let worker_name = format!("{NAME}-{}", std::process::id());
    let stop = Arc::new(Notify::new());
    let stop_signal = {
        let stop = stop.clone();
        async move {
            stop.notified().await;
            Ok::<(), std::io::Error>(())
        }
    };
    let run = WorkerBuilder::new(worker_name)
        .backend(backend)
        .concurrency(usize::try_from(concurrency).unwrap_or(usize::MAX))
        .data(ran.clone())
        .build(handle)
        .run_until(stop_signal);
    let mut run = Box::pin(run);

    let outcome = tokio::select! {
        ended = &mut run => Some(ended),
        _ = sigterm.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
    };
    let result = match outcome {
        // The worker ended by itself: only an error does that.
        Some(ended) => ended.map_err(redis_err("the worker stopped")),
        None => {
            // Stop: no new tasks; the running ones finish and are acknowledged, the fetched
            // but not started ones are put back on the queue.
            stop.notify_one();
            match tokio::time::timeout(WORKER_STOP, &mut run).await {
                Ok(ended) => ended.map_err(redis_err("stopping the worker failed")),
                Err(_) => {
                    eprintln!(
                        "{NAME}: warning: the worker did not stop within {WORKER_STOP:?}; exiting"
                    );
                    Ok(())
                }
            }
        }
    };
    reporter.stop().await;
    write_report(&common.report, &snapshot())?;
    result
}

// ---------------------------------------------------------------------------------------
// chain
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct ChainCounts {
    enqueued: AtomicU64,
    advanced: AtomicU64,
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Successful results that came with a status other than `Done` (see `chain`).
    stale_status: AtomicU64,
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
    let storage = common.storage(Config::default()).await?;

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
    for c in 0..chains {
        let mut storage = storage.clone();
        let counts = counts.clone();
        let stopping = stopping.clone();
        chain_tasks.spawn(async move {
            let mut n: u64 = 0;
            while !stopping.load(Ordering::Relaxed) {
                // `push` does not return the task's id, so the producer gives the task its
                // id (a ULID, as the storage would) to be able to wait for it.
                let id = TaskId::from_ulid(ulid::Ulid::generate());
                let task = TaskBuilder::new(Payload { c, n })
                    .task_id(id.clone())
                    .build();
                storage
                    .push_task(task)
                    .await
                    .map_err(redis_err("pushing a task failed"))?;
                counts.enqueued.fetch_add(1, Ordering::Relaxed);

                // The one way apalis-redis gives a producer to learn a task's result:
                // `WaitForCompletion::wait_for_single`, which polls the task's status and
                // result (`HGET`s on its meta hash) at once and then every 100 ms until it is
                // Done or Failed. There is no other completion signal for the producer, so
                // the chain advances on it and `advanced` and `delivered` count the same.
                let mut results = WaitForCompletion::<Value>::wait_for_single(&mut storage, id);
                match tokio::time::timeout_at(give_up_at, results.next()).await {
                    // A result's `status` can be stale: `check_status` reads the task's
                    // `status` and `result` with separate HGETs, so when the worker's ack
                    // lands between them the result comes with the status from before
                    // (`Pending`, or `Running` when tasks are locked). The handler's outcome is
                    // `result`, so that is what is counted; stale statuses are counted apart.
                    Ok(Some(Ok(result))) => {
                        if result.result.is_ok() {
                            counts.advanced.fetch_add(1, Ordering::Relaxed);
                            counts.delivered.fetch_add(1, Ordering::Relaxed);
                            if result.status != Status::Done {
                                counts.stale_status.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            counts.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Err(e))) => {
                        return Err(redis_err("waiting for a task's result failed")(e));
                    }
                    // The stream ended without a result, or the final wait is over.
                    Ok(None) | Err(_) => break,
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
    let seconds_taken = start.elapsed().as_secs_f64();
    sampler.stop().await;
    *lock(&elapsed) = seconds_taken;
    let stale = counts.stale_status.load(Ordering::Relaxed);
    if stale > 0 {
        eprintln!(
            "{NAME}: note: {stale} successful results came with a stale status (Pending or \
             Running): apalis-redis reads a task's status and result with separate HGETs"
        );
    }
    reporter.stop().await;
    write_report(&common.report, &snapshot())?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
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

    // apalis-redis has no option that removes a task when it is done: a finished task keeps
    // its data (a field of `<queue>:data`), its meta hash (`<queue>:meta:<id>`, with the
    // result) and its id in `<queue>:done`. Its only clean-up is `Vacuum::vacuum` /
    // `vacuum_before`, a script that reads the whole data hash (HGETALL) and checks every
    // task's status, so running it during the run would scan up to a million entries each
    // time. None is set: finished tasks stay in Redis until the runner's FLUSHALL.
    let mut storage = common.storage(Config::default()).await?;

    let start = Instant::now();
    let mut next: u64 = 0;
    while next < jobs {
        let end = jobs.min(next + batch);
        // `push_bulk` buffers the batch and sends it as one call of the storage's
        // `batch_push` script.
        let payloads: Vec<Payload> = (next..end).map(|n| Payload { c: 0, n }).collect();
        storage
            .push_bulk(payloads)
            .await
            .map_err(redis_err("pushing a batch of tasks failed"))?;
        enqueued.store(end, Ordering::Relaxed);
        *lock(&elapsed) = start.elapsed().as_secs_f64();
        next = end;
    }
    *lock(&elapsed) = start.elapsed().as_secs_f64();

    reporter.stop().await;
    write_report(&common.report, &snapshot())
}
