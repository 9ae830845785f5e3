//! `baler ingest --input FILE` killed with SIGKILL at any moment, then run
//! again with the same command, ends with every record of the file in the
//! table exactly once: the sink itself records how far the file is written,
//! in the same transactions as the records.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{baler, wait_output, TempDir};

/// Lines in the input: enough that a run takes a while in a debug build.
const LINES: u64 = 20_000;

/// Writes `LINES` lines of JSON, one record per line, with a malformed line
/// and a blank line among them; returns the line numbers holding records.
fn write_input(path: &Path) -> Vec<u64> {
    let mut text = String::new();
    let mut records = Vec::new();
    for line in 1..=LINES {
        if line == 777 {
            text.push_str("{not json\n");
        } else if line == 1234 {
            text.push('\n');
        } else {
            text.push_str(&format!(
                "{{\"id\":{line},\"payload\":\"{}\"}}\n",
                "x".repeat(40)
            ));
            records.push(line);
        }
    }
    std::fs::write(path, text).unwrap();
    records
}

/// A small xorshift, seeded from the clock and printed, so that a failing
/// kill schedule can be told apart from a passing one.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill schedule seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Kills the same `baler ingest --input` with SIGKILL `kills` times at
/// random moments, then lets it finish; returns the last run's summary.
fn kill_and_rerun(dir: &Path, args: &[&str], kills: u32) -> serde_json::Value {
    let mut rng = Rng::new();
    for _ in 0..kills {
        let mut child = baler(dir, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // From before the table exists to well into the writes.
        let at = Duration::from_millis(rng.below(600));
        let started = Instant::now();
        while started.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let child = baler(dir, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_output(child);
    // 3 when this run read the malformed line; 0 when an earlier run got
    // past it (and reported it).
    assert!(matches!(run.code(), 0 | 3), "{}", run.stderr);
    run.json()
}

/// Checks the last run's summary against the table's ids.
fn check(summary: &serde_json::Value, ids: &[u64], records: &[u64]) {
    common::assert_each_once(ids, records);
    let produced = summary["produced"].as_u64().unwrap();
    let written = summary["written"].as_u64().unwrap();
    let already = summary["already_written"].as_u64().unwrap();
    let skipped = summary["skipped"].as_u64().unwrap();
    assert_eq!(summary["all_written"], true, "{summary}");
    assert_eq!(produced, written + already, "{summary}");
    assert_eq!(
        skipped + produced,
        records.len() as u64,
        "every record was either skipped as written or produced: {summary}"
    );
}

#[test]
fn sqlite_ingest_killed_at_random_moments_ends_with_every_record_once() {
    let dir = TempDir::new("resume-sqlite");
    let input = dir.path("in.jsonl");
    let records = write_input(&input);
    let input = input.display().to_string();
    let args = [
        "ingest",
        "--input",
        &input,
        "--sink",
        "out.db",
        "--batch-size",
        "50",
        "--max-in-flight",
        "4",
        "--bad-lines",
        "skip",
        "--json",
    ];
    let summary = kill_and_rerun(&dir.0, &args, 5);
    check(
        &summary,
        &common::ids(&dir.path("out.db"), "records"),
        &records,
    );
}

#[test]
fn a_rerun_after_a_kill_says_it_resumes_and_from_which_line() {
    let dir = TempDir::new("resume-says");
    let input = dir.path("in.jsonl");
    let records = write_input(&input);
    let input = input.display().to_string();
    let args = [
        "ingest",
        "--input",
        &input,
        "--sink",
        "out.db",
        "--batch-size",
        "50",
        "--bad-lines",
        "skip",
    ];
    // Kill once some records are surely committed.
    let mut child = baler(&dir.0, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let db = dir.path("out.db");
    let started = Instant::now();
    loop {
        let written = rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM records", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0);
        if written >= 500 || child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(started.elapsed() < common::PATIENCE, "nothing written");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let watermark: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT watermark FROM baler_progress", [], |r| r.get(0))
        .unwrap();
    let child = baler(&dir.0, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_output(child);
    assert!(
        watermark > 0 && (watermark as u64) < LINES,
        "killed mid-run: {watermark}"
    );
    assert!(
        run.stderr
            .contains(&format!("resuming: lines 1 to {watermark} of {input}"))
            && run
                .stderr
                .contains(&format!("going on from line {}", watermark + 1)),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains(&format!("resumed      after line {watermark}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("OK: produced == written"),
        "{}",
        run.stdout
    );
    common::assert_each_once(&common::ids(&db, "records"), &records);

    // A run after a complete one has nothing left to write, and says so.
    let mut again = args.to_vec();
    again.push("--json");
    let child = baler(&dir.0, &again)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let summary = wait_output(child).json();
    assert_eq!(summary["produced"], 0, "{summary}");
    assert_eq!(
        summary["skipped"].as_u64(),
        Some(records.len() as u64),
        "{summary}"
    );
    assert_eq!(summary["resumed_after"], LINES, "{summary}");
    common::assert_each_once(&common::ids(&db, "records"), &records);
}

/// The PostgreSQL test server: `BALER_TEST_POSTGRES_URL`, or the machine's
/// (`./scripts/test` starts it when it is not running).
fn postgres_url() -> String {
    std::env::var("BALER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs `f` with a client of the test server.
fn on_postgres<T, Fut: std::future::Future<Output = T>>(
    f: impl FnOnce(tokio_postgres::Client) -> Fut,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the PostgreSQL test server at {} cannot be reached ({e}); start it \
                     (./scripts/test does) or set BALER_TEST_POSTGRES_URL",
                    postgres_url()
                )
            });
        tokio::spawn(conn);
        f(client).await
    })
}

/// Drops the test's table, and its progress rows, however the test ends.
struct PgTable(String);

impl Drop for PgTable {
    fn drop(&mut self) {
        let table = self.0.clone();
        let _ = std::panic::catch_unwind(|| {
            on_postgres(|c| async move {
                let _ = c
                    .batch_execute(&format!(
                        "DROP TABLE IF EXISTS {table}; DELETE FROM baler_progress WHERE tbl = \
                         '{table}'"
                    ))
                    .await;
            })
        });
    }
}

#[test]
fn postgres_ingest_killed_at_random_moments_ends_with_every_record_once() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = PgTable(format!("baler_resume_{}_{nanos}", std::process::id()));
    let dir = TempDir::new("resume-postgres");
    let input = dir.path("in.jsonl");
    let records = write_input(&input);
    let input = input.display().to_string();
    let url = postgres_url();
    let args = [
        "ingest",
        "--input",
        &input,
        "--sink",
        &url,
        "--table",
        &table.0,
        "--batch-size",
        "50",
        "--max-in-flight",
        "4",
        "--bad-lines",
        "skip",
        "--json",
    ];
    let summary = kill_and_rerun(&dir.0, &args, 5);
    let sql = format!("SELECT body FROM {}", table.0);
    let mut ids: Vec<u64> = on_postgres(|c| async move {
        c.query(&sql, &[])
            .await
            .unwrap()
            .iter()
            .map(|r| common::id_of(r.get::<_, &str>(0)))
            .collect()
    });
    ids.sort_unstable();
    check(&summary, &ids, &records);
}
