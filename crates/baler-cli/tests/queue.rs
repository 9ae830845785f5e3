//! `baler ingest --queue` and `baler work`: records through baler's durable
//! queue on a real `redis-server` (started by the test on a free loopback
//! port), written by two worker processes, one of which is killed with
//! SIGKILL mid-run.

mod common;
#[path = "../../baler-redis/tests/common/mod.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::{ids, Running, TempDir, PATIENCE};
use redis_server::RedisServer;

/// A `baler work` process, killed when the test ends however it ends.
struct WorkerProcess(Option<Running>);

impl WorkerProcess {
    fn start(dir: &std::path::Path, url: &str) -> Self {
        Self::start_with(dir, url, &[])
    }

    fn start_with(dir: &std::path::Path, url: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "work",
            "--queue",
            url,
            "--queue-name",
            "q",
            "--lease",
            "1s",
            "--sink",
            "out.db",
            "--max-in-flight",
            "2",
        ];
        args.extend_from_slice(extra);
        let mut running = Running::start(dir, &args);
        running.wait_for_line("baler work: worker");
        WorkerProcess(Some(running))
    }

    fn running(&mut self) -> &mut Running {
        self.0.as_mut().expect("still running")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(running) = &mut self.0 {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

#[test]
fn two_workers_one_killed_mid_run_write_every_record_once_and_the_producer_counts_them() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("queue-pair");
    let lines = 20_000u64;
    let text: String = (1..=lines)
        .map(|n| format!("{{\"id\":{n},\"payload\":\"{}\"}}\n", "y".repeat(40)))
        .collect();
    std::fs::write(dir.path("in.jsonl"), text).unwrap();

    let mut doomed = WorkerProcess::start(&dir.0, &url);
    let producer = Running::start(
        &dir.0,
        &[
            "ingest",
            "--input",
            "in.jsonl",
            "--queue",
            &url,
            "--queue-name",
            "q",
            "--batch-size",
            "50",
            "--json",
        ],
    );
    // The first worker takes the jobs as they come (a bundle of them per
    // enqueue batch) and is killed once it is writing, holding the jobs it
    // is in the middle of; a second one then takes them over.
    let db = dir.path("out.db");
    let started = Instant::now();
    loop {
        let written = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if written >= 2_000 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "the workers wrote nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    doomed.running().child.kill().unwrap();
    doomed.running().child.wait().unwrap();
    let mut survivor = WorkerProcess::start(&dir.0, &url);

    let run = producer.finish();
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["all_written"], true, "{summary}");
    assert_eq!(summary["produced"].as_u64(), Some(lines), "{summary}");
    assert_eq!(
        summary["written"].as_u64().unwrap() + summary["already_written"].as_u64().unwrap(),
        lines,
        "{summary}"
    );
    common::assert_each_once(&ids(&db, "records"), &(1..=lines).collect::<Vec<_>>());

    survivor.running().signal("TERM");
    let report = survivor.0.take().unwrap().finish();
    assert!(report.status.success(), "{}", report.stderr);
    // The killed worker held jobs (it was writing); the survivor ran them.
    let reclaimed: u64 = report
        .stdout
        .split(" reclaimed")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no reclaimed count in {}", report.stdout));
    assert!(reclaimed > 0, "{}", report.stdout);
}

#[test]
fn a_queue_split_into_shards_carries_every_record_once() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("queue-shards");
    let lines = 3_000u64;
    let text: String = (1..=lines)
        .map(|n| format!("{{\"id\":{n},\"payload\":\"z\"}}\n"))
        .collect();
    std::fs::write(dir.path("in.jsonl"), text).unwrap();
    let mut worker = WorkerProcess::start_with(&dir.0, &url, &["--queue-shards", "3"]);
    let run = Running::start(
        &dir.0,
        &[
            "ingest",
            "--input",
            "in.jsonl",
            "--queue",
            &url,
            "--queue-name",
            "q",
            "--queue-shards",
            "3",
            "--batch-size",
            "20",
            "--json",
        ],
    )
    .finish();
    assert_eq!(run.code(), 0, "{}", run.stderr);
    assert_eq!(run.json()["all_written"], true, "{}", run.stdout);
    common::assert_each_once(
        &ids(&dir.path("out.db"), "records"),
        &(1..=lines).collect::<Vec<_>>(),
    );
    // The jobs went through all three shards' streams.
    let mut conn = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .unwrap();
    for i in 0..3 {
        let keys = baler_queue::Keys::for_shard("q", i, 3);
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(keys.jobs())
            .query(&mut conn)
            .unwrap_or_else(|e| panic!("shard {i} has no jobs stream: {e}"));
        let read = groups
            .first()
            .and_then(|g| match g.get("entries-read") {
                Some(redis::Value::Int(n)) => Some(*n),
                _ => None,
            })
            .unwrap_or(0);
        assert!(read > 0, "shard {i} delivered no job: {groups:?}");
    }
    worker.running().signal("TERM");
    let report = worker.0.take().unwrap().finish();
    assert!(report.status.success(), "{}", report.stderr);
}

#[test]
fn zero_shards_are_refused_naming_the_flag() {
    let dir = TempDir::new("queue-zero-shards");
    std::fs::write(dir.path("in.jsonl"), "{\"id\":1}\n").unwrap();
    let server = RedisServer::start();
    let run = Running::start(
        &dir.0,
        &[
            "ingest",
            "--input",
            "in.jsonl",
            "--queue",
            &server.url(),
            "--queue-shards",
            "0",
        ],
    )
    .finish();
    assert_eq!(run.code(), 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--queue-shards must be at least 1"),
        "{}",
        run.stderr
    );
}
