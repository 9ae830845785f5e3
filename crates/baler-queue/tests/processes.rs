//! The queue across real processes: worker processes and a producer process
//! (this test binary run again in another part, see `procs`) against a real
//! redis-server on a loopback port.
//!
//! The scenario the queue exists for: a client enqueues jobs, worker
//! processes run them, and the client waits for each result. A result must
//! reach the client even when the job finished before the client looked for
//! it, when workers are killed mid-job, and when the client itself is killed
//! and started again under its name; and the client must hold nothing for
//! jobs that finished.
//!
//! Every job is counted at two layers that do not share code: the producer
//! process counts the tickets it saw resolve (and with what), and the
//! workers' handler records every run of every job in a Redis hash of the
//! test's own (`HINCRBY`), so duplicates are counted, not hidden.
//!
//! The number of jobs can be raised with `BALER_QUEUE_PROC_JOBS`.

mod common;
mod procs;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{handler_fn, Batch, Outcome};
use baler_queue::{JobId, Queue};
use redis::Commands;
use serde::{Deserialize, Serialize};

use common::RedisServer;
use procs::{exit_with_parent, required, setting, write_whole, Proc, Rng, Scratch, ROLE};

/// The hash where workers record each run: job number → runs.
const RUNS: &str = "test:runs";
/// The hash where each worker shows its latest counts: consumer → stats.
const WORKER_STATS: &str = "test:worker-stats";
/// The set of worker processes (pids) that are running their worker.
const READY: &str = "test:ready";
/// How long any one result may take before the producer calls it missing.
const RESULT_LIMIT: Duration = Duration::from_secs(30);
/// How long a whole producer run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Tests share two cores with many processes each: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What a job's output must be: workers compute it, producers check it.
fn output_of(n: u64) -> u64 {
    n * 2 + 1
}

/// The job number of chain `chain`'s step `step`.
fn job_number(chain: u64, step: u64) -> u64 {
    chain * 1_000_000 + step
}

// ---------------------------------------------------------------------------
// The parts children play.

/// Plays the part named by the environment; returns at once in a normal test
/// run, where nothing names one.
#[test]
#[ignore = "a part for the cross-process tests, run by them as a child process"]
fn role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    exit_with_parent();
    // A child's warnings (a failed reclaim, a lost lease) explain a failure
    // of the parent's checks.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match role.as_str() {
        "worker" => runtime.block_on(play_worker()),
        "producer" => runtime.block_on(play_producer()),
        "resume" => runtime.block_on(play_resume()),
        other => panic!("no part called {other:?}"),
    }
}

async fn open_queue() -> Queue {
    Queue::builder(&required("URL"), &required("QUEUE"))
        .lease(Duration::from_millis(500))
        // Workers are killed over and over: a job must not be dead-lettered
        // for having been on a killed worker a few times.
        .max_deliveries(50)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .await
        .expect("connect the child to the test's redis-server")
}

/// A worker process with concurrency 2: records each run of each job, takes
/// `WORK_MS` per batch, and runs until it is killed.
async fn play_worker() {
    let queue = open_queue().await;
    let work = Duration::from_millis(setting("WORK_MS", 0));
    let record = common::connection(&required("URL")).await;
    let worker = queue
        .worker()
        .max_in_flight(2)
        .max_batch_size(setting("BATCH", 10))
        .claim_count(setting("CLAIM", 100))
        .block_time(Duration::from_millis(100))
        .consumer("proc")
        .start(handler_fn(move |batch: Batch<u64>| {
            let mut record = record.clone();
            async move {
                tokio::time::sleep(work).await;
                let mut pipe = redis::pipe();
                for n in batch.iter() {
                    pipe.hincr(RUNS, *n, 1).ignore();
                }
                // A run that could not be recorded is retried, so that every
                // result the producer sees has its run on record.
                pipe.query_async::<()>(&mut record)
                    .await
                    .map_err(|e| format!("recording the runs failed: {e}"))?;
                Ok::<_, String>(batch.iter().map(|n| Outcome::Done(output_of(*n))).collect())
            }
        }))
        .expect("start the worker");
    // The parent ends every worker with SIGKILL; the limit only bounds a
    // worker whose parent vanished without closing its stdin. Until then the
    // worker shows its counts, for a failure's diagnosis.
    let mut conn = common::connection(&required("URL")).await;
    let _: () = redis::cmd("SADD")
        .arg(READY)
        .arg(std::process::id())
        .query_async(&mut conn)
        .await
        .expect("announce the worker");
    for _ in 0..3000 {
        let stats = format!("{:?}", worker.stats());
        let _: Result<(), _> = redis::cmd("HSET")
            .arg(WORKER_STATS)
            .arg(worker.consumer())
            .arg(stats)
            .query_async(&mut conn)
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a producer process saw, for its parent to check.
#[derive(Serialize, Deserialize, Debug, Default)]
struct ProducerSummary {
    /// Job numbers enqueued.
    enqueued: Vec<u64>,
    /// Job numbers whose ticket resolved with the right output, each as
    /// often as it resolved.
    resolved: Vec<u64>,
    /// Tickets that resolved with another output, an error, or not in time.
    wrong: Vec<String>,
    /// Enqueues that failed.
    refused: Vec<String>,
    /// `outstanding()` once every chain had ended.
    outstanding: usize,
    /// Results that arrived for jobs no ticket waited for.
    unclaimed: Vec<String>,
    /// Jobs `shutdown` reported without a result.
    shutdown_left: usize,
}

/// A line-per-event log a producer keeps so that its successor knows the
/// jobs it left: `intent <n>` before an enqueue, `id <n> <job id>` once
/// enqueued, `done <n>` once its result was in hand.
struct JobLog(Option<Mutex<std::fs::File>>);

impl JobLog {
    fn line(&self, line: String) {
        use std::io::Write;
        if let Some(file) = &self.0 {
            let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
            // One write per line: a kill leaves whole lines or a torn last one.
            file.write_all(format!("{line}\n").as_bytes())
                .expect("append to the job log");
        }
    }
}

/// A producer process keeping `CHAINS` chains going: each result makes its
/// chain enqueue the next job, until `JOBS` jobs were enqueued in all.
async fn play_producer() {
    let queue = open_queue().await;
    let jobs: u64 = setting("JOBS", 1000);
    let chains: u64 = setting("CHAINS", 5);
    let producer = queue
        .producer(&required("NAME"))
        .block_time(Duration::from_millis(200))
        .build::<u64, u64>()
        .expect("build the producer");
    let log = Arc::new(JobLog(
        std::env::var(format!("{}LOG", procs::PREFIX))
            .ok()
            .map(|path| {
                Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the job log"),
                )
            }),
    ));
    let started = Arc::new(AtomicU64::new(0));
    let summary = Arc::new(Mutex::new(ProducerSummary::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for chain in 0..chains {
        let (producer, log, started, summary) = (
            producer.clone(),
            log.clone(),
            started.clone(),
            summary.clone(),
        );
        tasks.spawn(async move {
            let note = |f: &dyn Fn(&mut ProducerSummary)| {
                f(&mut summary.lock().unwrap_or_else(|e| e.into_inner()));
            };
            for step in 0.. {
                if started.fetch_add(1, Ordering::SeqCst) >= jobs {
                    break;
                }
                let n = job_number(chain, step);
                log.line(format!("intent {n}"));
                let ticket = match producer.enqueue(n).await {
                    Ok(ticket) => ticket,
                    Err(e) => {
                        note(&|s| s.refused.push(format!("job {n}: {e}")));
                        break;
                    }
                };
                log.line(format!("id {n} {}", ticket.id()));
                note(&|s| s.enqueued.push(n));
                match tokio::time::timeout(RESULT_LIMIT, ticket).await {
                    Ok(Ok(out)) if out == output_of(n) => {
                        log.line(format!("done {n}"));
                        note(&|s| s.resolved.push(n));
                    }
                    Ok(Ok(out)) => note(&|s| s.wrong.push(format!("job {n} gave {out}"))),
                    Ok(Err(e)) => note(&|s| s.wrong.push(format!("job {n}: {e}"))),
                    Err(_) => note(&|s| {
                        s.wrong
                            .push(format!("job {n}: no result within {RESULT_LIMIT:?}"))
                    }),
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut summary = std::mem::take(&mut *summary.lock().unwrap_or_else(|e| e.into_inner()));
    summary.outstanding = producer.outstanding();
    summary.unclaimed = producer
        .take_unclaimed()
        .await
        .into_iter()
        .map(|(id, r)| format!("{id}: {r:?}"))
        .collect();
    summary.shutdown_left = producer
        .shutdown(Duration::from_secs(5))
        .await
        .outstanding
        .len();
    write_summary(&summary);
}

fn write_summary<T: Serialize>(summary: &T) {
    let path = required("SUMMARY");
    let json = serde_json::to_vec(summary).expect("a summary encodes");
    write_whole(std::path::Path::new(&path), &json);
}

/// What the log of a killed producer says.
#[derive(Default, Debug)]
struct LogRead {
    intents: BTreeSet<u64>,
    ids: BTreeMap<u64, String>,
    done: BTreeSet<u64>,
}

fn read_log(path: &std::path::Path) -> LogRead {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut read = LogRead::default();
    // The last line may be torn by the kill; a torn line fails to parse or
    // lacks its newline, and is skipped either way.
    let whole = text.rsplit_once('\n').map_or("", |(w, _)| w);
    for line in whole.lines() {
        let mut parts = line.split(' ');
        let (kind, n) = (parts.next(), parts.next().and_then(|n| n.parse().ok()));
        match (kind, n, parts.next()) {
            (Some("intent"), Some(n), None) => {
                read.intents.insert(n);
            }
            (Some("id"), Some(n), Some(id)) => {
                read.ids.insert(n, id.to_owned());
            }
            (Some("done"), Some(n), None) => {
                read.done.insert(n);
            }
            _ => {}
        }
    }
    read
}

/// What a restarted producer received.
#[derive(Serialize, Deserialize, Debug, Default)]
struct ResumeSummary {
    /// Jobs reattached by id whose ticket resolved with the right output.
    reattached: Vec<u64>,
    /// Results that arrived for jobs nobody reattached (their ids were not
    /// logged, or their results were in hand but not yet deleted when the
    /// first producer died): job numbers, from the output.
    unclaimed: Vec<u64>,
    /// Anything that resolved wrongly or not at all.
    wrong: Vec<String>,
    /// `outstanding()` at the end.
    outstanding: usize,
}

/// The producer started again under the killed one's name: reattaches every
/// job the log names without a result, collects the results of the jobs it
/// could not name, and waits until the queue has run everything.
async fn play_resume() {
    let queue = open_queue().await;
    let producer = queue
        .producer(&required("NAME"))
        .block_time(Duration::from_millis(200))
        .build::<u64, u64>()
        .expect("build the producer");
    let log = read_log(std::path::Path::new(&required("LOG")));
    let mut summary = ResumeSummary::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (&n, id) in &log.ids {
        if log.done.contains(&n) {
            continue;
        }
        let ticket = producer.reattach(JobId::from(id.as_str()));
        tasks.spawn(async move { (n, tokio::time::timeout(RESULT_LIMIT, ticket).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a reattach task") {
            (n, Ok(Ok(out))) if out == output_of(n) => summary.reattached.push(n),
            (n, Ok(Ok(out))) => summary.wrong.push(format!("job {n} gave {out}")),
            (n, Ok(Err(e))) => summary.wrong.push(format!("job {n}: {e}")),
            (n, Err(_)) => summary
                .wrong
                .push(format!("job {n}: no result within {RESULT_LIMIT:?}")),
        }
    }
    let take = |summary: &mut ResumeSummary, taken: Vec<(JobId, Result<u64, _>)>| {
        for (id, r) in taken {
            match r {
                Ok(out) if out % 2 == 1 => summary.unclaimed.push((out - 1) / 2),
                other => summary.wrong.push(format!("unclaimed {id}: {other:?}")),
            }
        }
    };
    // Jobs enqueued without their id in the log still run; their results
    // arrive for nobody. Wait until the queue holds no job, then give the
    // results reader a few reads to bring in the last results.
    let deadline = tokio::time::Instant::now() + RESULT_LIMIT;
    loop {
        take(&mut summary, producer.take_unclaimed().await);
        let stats = queue.stats().await.expect("the queue's stats");
        if stats.length == 0 && stats.delayed == 0 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            summary.wrong.push(format!(
                "the queue still held jobs after {RESULT_LIMIT:?}: {stats:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        take(&mut summary, producer.take_unclaimed().await);
    }
    summary.outstanding = producer.outstanding();
    producer.shutdown(Duration::from_secs(5)).await;
    write_summary(&summary);
}

// ---------------------------------------------------------------------------
// The tests.

fn settings(
    server: &RedisServer,
    queue: &str,
    scratch: &Scratch,
) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("URL", server.url()),
        ("QUEUE", queue.to_owned()),
        ("NAME", "client".to_owned()),
        (
            "SUMMARY",
            scratch.path("summary.json").display().to_string(),
        ),
    ])
}

fn with(
    mut base: BTreeMap<&'static str, String>,
    extra: &[(&'static str, String)],
) -> BTreeMap<&'static str, String> {
    base.extend(extra.iter().cloned());
    base
}

fn jobs(default: u64) -> u64 {
    std::env::var("BALER_QUEUE_PROC_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Every run the workers recorded: job number → runs.
fn recorded_runs(server: &RedisServer) -> HashMap<u64, u64> {
    let mut conn = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test's redis-server");
    conn.hgetall(RUNS)
        .expect("read the runs the workers recorded")
}

fn read_summary<T: for<'de> Deserialize<'de>>(scratch: &Scratch) -> T {
    let path = scratch.path("summary.json");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("the producer wrote no summary at {}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("a summary the producer wrote")
}

/// Checks a chain producer's summary against the workers' record: every job
/// enqueued resolved once with its output, none resolved that was not
/// enqueued, every job ran at least once, and the producer holds nothing.
/// Returns the number of duplicate runs.
fn check_chains(
    server: &RedisServer,
    queue: &str,
    summary: &ProducerSummary,
    runs: &HashMap<u64, u64>,
    total: u64,
) -> u64 {
    assert!(
        summary.refused.is_empty(),
        "enqueues failed: {:?}",
        summary.refused
    );
    assert!(
        summary.wrong.is_empty(),
        "results wrong or missing: {:?}\nwhere the queue stands: {}",
        summary.wrong,
        where_things_stand(server, queue, summary, runs)
    );
    assert_eq!(summary.enqueued.len() as u64, total, "jobs enqueued");
    let enqueued: BTreeSet<u64> = summary.enqueued.iter().copied().collect();
    assert_eq!(
        enqueued.len(),
        summary.enqueued.len(),
        "a job number was enqueued twice"
    );
    let mut resolved = summary.resolved.clone();
    resolved.sort_unstable();
    let once: Vec<u64> = enqueued.iter().copied().collect();
    assert_eq!(
        resolved, once,
        "tickets resolved (each exactly once) versus jobs enqueued"
    );
    let ran: BTreeSet<u64> = runs.keys().copied().collect();
    assert_eq!(
        ran, enqueued,
        "jobs the workers recorded versus jobs enqueued"
    );
    assert_eq!(
        summary.outstanding, 0,
        "the producer still holds state for finished jobs"
    );
    assert!(
        summary.unclaimed.is_empty(),
        "results no ticket waited for: {:?}",
        summary.unclaimed
    );
    assert_eq!(summary.shutdown_left, 0, "jobs left at shutdown");
    runs.values().map(|r| r - 1).sum()
}

/// The queue's keys as Redis holds them, and the recorded runs of the jobs
/// that went wrong: what a failure needs to be understood.
fn where_things_stand(
    server: &RedisServer,
    queue: &str,
    summary: &ProducerSummary,
    runs: &HashMap<u64, u64>,
) -> String {
    let Ok(mut conn) = redis::Client::open(server.url()).and_then(|c| c.get_connection()) else {
        return "Redis cannot be reached".into();
    };
    let mut out = String::new();
    let keys = baler_queue::Keys::new(queue);
    for (what, cmd) in [
        ("XLEN jobs", redis::cmd("XLEN").arg(keys.jobs()).clone()),
        (
            "XPENDING jobs",
            redis::cmd("XPENDING")
                .arg(keys.jobs())
                .arg(keys.group())
                .clone(),
        ),
        (
            "XINFO GROUPS",
            redis::cmd("XINFO").arg("GROUPS").arg(keys.jobs()).clone(),
        ),
        (
            "XPENDING jobs (id, owner, idle ms, deliveries)",
            redis::cmd("XPENDING")
                .arg(keys.jobs())
                .arg(keys.group())
                .arg("-")
                .arg("+")
                .arg(5)
                .clone(),
        ),
        (
            "XINFO CONSUMERS",
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(keys.jobs())
                .arg(keys.group())
                .clone(),
        ),
        (
            "live workers' stats",
            redis::cmd("HGETALL").arg(WORKER_STATS).clone(),
        ),
        (
            "XLEN results",
            redis::cmd("XLEN").arg(keys.results("client")).clone(),
        ),
        ("XLEN dead", redis::cmd("XLEN").arg(keys.dead()).clone()),
        (
            "ZCARD delayed",
            redis::cmd("ZCARD").arg(keys.delayed()).clone(),
        ),
        (
            "XRANGE jobs",
            redis::cmd("XRANGE")
                .arg(keys.jobs())
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(5)
                .clone(),
        ),
        (
            "XRANGE results",
            redis::cmd("XRANGE")
                .arg(keys.results("client"))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(5)
                .clone(),
        ),
    ] {
        let v: redis::RedisResult<redis::Value> = cmd.query(&mut conn);
        out.push_str(&format!("\n  {what}: {v:?}"));
    }
    let stuck: Vec<(u64, Option<u64>)> = summary
        .enqueued
        .iter()
        .filter(|n| !summary.resolved.contains(n))
        .take(10)
        .map(|n| (*n, runs.get(n).copied()))
        .collect();
    out.push_str(&format!(
        "\n  unresolved jobs and their recorded runs: {stuck:?}"
    ));
    out
}

/// Six worker processes (concurrency 2 each) and a producer process keeping
/// five chains going: no result is lost, and the producer ends holding
/// nothing.
#[test]
fn chains_across_processes_lose_no_result_and_leave_no_state() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    let scratch = Scratch::new("chains");
    let total = jobs(3000);
    let base = settings(&server, "chains", &scratch);
    let _workers: Vec<Proc> = (0..6).map(|_| Proc::spawn("worker", &base)).collect();
    let mut producer = Proc::spawn(
        "producer",
        &with(base, &[("JOBS", total.to_string()), ("CHAINS", "5".into())]),
    );
    let status = producer.wait_exit(RUN_LIMIT);
    assert!(status.success(), "the producer process failed: {status}");
    let summary: ProducerSummary = read_summary(&scratch);
    let runs = recorded_runs(&server);
    let duplicates = check_chains(&server, "chains", &summary, &runs, total);
    println!(
        "{total} jobs in 5 chains on 6 worker processes: {} resolved at the producer, \
         {} recorded by the workers, {duplicates} duplicate runs",
        summary.resolved.len(),
        runs.len()
    );
}

/// Worker processes killed with SIGKILL every few hundred milliseconds and
/// replaced, while thousands of jobs run: every ticket resolves exactly
/// once, every job ran at least once; duplicate runs are counted and shown.
#[test]
fn workers_killed_over_and_over_lose_no_job_and_resolve_each_ticket_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    let scratch = Scratch::new("kills");
    let total = jobs(3000);
    let base = settings(&server, "kills", &scratch);
    // The default claim count (100) is above a worker's 40 places (2 batches
    // of 10 in flight, twice over): a blocking read holds at most half of
    // them, so that the keeper always finds room to take over a killed
    // worker's jobs even while no new job arrives. BALER_QUEUE_PROC_KILL_CLAIM
    // sets another claim count.
    let claim = std::env::var("BALER_QUEUE_PROC_KILL_CLAIM").unwrap_or_else(|_| "100".into());
    let worker_settings = with(base.clone(), &[("WORK_MS", "20".into()), ("CLAIM", claim)]);
    let mut workers: Vec<Proc> = (0..4)
        .map(|_| Proc::spawn("worker", &worker_settings))
        .collect();
    let mut producer = Proc::spawn(
        "producer",
        &with(
            base,
            &[("JOBS", total.to_string()), ("CHAINS", "20".into())],
        ),
    );
    let mut rng = Rng::from_clock();
    println!("kill order seed {}", rng.seed());
    let mut conn = redis::Client::open(server.url())
        .and_then(|c| c.get_connection())
        .expect("connect to the test's redis-server");
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    let mut kills = 0;
    let status = loop {
        if let Some(status) = producer.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the producer did not finish within {RUN_LIMIT:?} ({kills} workers killed)\n\
             where the queue stands: {}",
            where_things_stand(
                &server,
                "kills",
                &ProducerSummary::default(),
                &HashMap::new()
            )
        );
        std::thread::sleep(Duration::from_millis(250));
        // Only a worker that got going is worth killing: a process killed
        // while it starts up holds nothing, and on a loaded machine start-up
        // can outlast a few rounds of kills.
        let ready: Vec<usize> = (0..workers.len())
            .filter(|&i| conn.sismember(READY, workers[i].id()).unwrap_or(false))
            .collect();
        if ready.is_empty() {
            continue;
        }
        let victim = ready[rng.below(ready.len())];
        workers[victim].kill();
        workers[victim] = Proc::spawn("worker", &worker_settings);
        kills += 1;
    };
    assert!(status.success(), "the producer process failed: {status}");
    let summary: ProducerSummary = read_summary(&scratch);
    let runs = recorded_runs(&server);
    let duplicates = check_chains(&server, "kills", &summary, &runs, total);
    let most = runs.values().max().copied().unwrap_or(0);
    println!(
        "{total} jobs, {kills} workers killed with SIGKILL: {} tickets resolved once each, \
         {} jobs recorded by the workers, {duplicates} duplicate runs (at most {most} runs of one job)",
        summary.resolved.len(),
        runs.len()
    );
    assert!(
        kills > 0,
        "no worker was killed: the producer finished too early for the test to mean anything"
    );
}

/// The producer process killed with SIGKILL mid-run and started again under
/// its name: every job it had enqueued and not yet seen the result of
/// resolves at the restarted producer.
#[test]
fn a_producer_killed_and_restarted_under_its_name_receives_every_outstanding_result() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = RedisServer::start();
    let scratch = Scratch::new("restart");
    let log_path = scratch.path("jobs.log");
    let base = with(
        settings(&server, "restart", &scratch),
        &[("LOG", log_path.display().to_string())],
    );
    // Slow workers keep many jobs outstanding at the moment of the kill.
    let worker_settings = with(base.clone(), &[("WORK_MS", "40".into())]);
    let _workers: Vec<Proc> = (0..3)
        .map(|_| Proc::spawn("worker", &worker_settings))
        .collect();
    let mut first = Proc::spawn(
        "producer",
        &with(
            base.clone(),
            &[("JOBS", "1000000".into()), ("CHAINS", "100".into())],
        ),
    );
    let wanted_done = jobs(3000) / 10;
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while read_log(&log_path).done.len() < wanted_done as usize {
        assert!(
            first.exited().is_none(),
            "the first producer exited before it was killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the first producer did not see {wanted_done} results within {RUN_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    let before = read_log(&log_path);
    let named: BTreeSet<u64> = before
        .ids
        .keys()
        .filter(|n| !before.done.contains(n))
        .copied()
        .collect();
    let unnamed: BTreeSet<u64> = before
        .intents
        .iter()
        .filter(|n| !before.ids.contains_key(n))
        .copied()
        .collect();

    let mut second = Proc::spawn("resume", &base);
    let status = second.wait_exit(RUN_LIMIT);
    assert!(status.success(), "the restarted producer failed: {status}");
    let summary: ResumeSummary = read_summary(&scratch);
    assert!(
        summary.wrong.is_empty(),
        "results wrong or missing: {:?}",
        summary.wrong
    );
    assert_eq!(
        summary.outstanding, 0,
        "the restarted producer still holds state"
    );

    let reattached: BTreeSet<u64> = summary.reattached.iter().copied().collect();
    assert_eq!(
        reattached, named,
        "results of the jobs the first producer named and had not seen"
    );
    let runs = recorded_runs(&server);
    let unclaimed: BTreeSet<u64> = summary.unclaimed.iter().copied().collect();
    for n in runs.keys() {
        assert!(
            before.intents.contains(n),
            "job {n} ran but the first producer never meant to enqueue it"
        );
    }
    // A job enqueued by the first producer but killed before its id reached
    // the log ran all the same; its result must arrive, for nobody.
    let lost: Vec<u64> = unnamed
        .iter()
        .filter(|n| runs.contains_key(n) && !unclaimed.contains(n))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "results of jobs enqueued without a logged id never arrived: {lost:?}"
    );
    let done_again = unclaimed.iter().filter(|n| before.done.contains(n)).count();
    println!(
        "first producer killed with {} results in hand and {} outstanding ({} of them enqueued \
         without the id in its log): the restarted producer reattached {}, received {} results \
         for nobody ({} of them already in the first producer's hands, delivered again)",
        before.done.len(),
        named.len() + unnamed.len(),
        unnamed.len(),
        reattached.len(),
        unclaimed.len(),
        done_again
    );
}
