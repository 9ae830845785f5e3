//! `baler ingest` into SQLite, run as a user would run it: the real binary,
//! a temporary database file, and the summary checked against the table.

mod common;

use common::{count, id_of, ids, run, Running, TempDir};

#[test]
fn the_summary_matches_select_count_in_the_sqlite_file() {
    let dir = TempDir::new("count");
    let out = run(
        &dir.0,
        &["ingest", "--records", "5000", "--sink", "out.db", "--json"],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["produced"], 5000);
    assert_eq!(s["written"], 5000);
    assert_eq!(s["all_written"], true);
    assert_eq!(count(&dir.path("out.db"), "records"), 5000);
    assert_eq!(
        ids(&dir.path("out.db"), "records"),
        (1..=5000).collect::<Vec<_>>()
    );
    assert!(s["latency_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(s["latency_p99_ms"].as_f64() >= s["latency_p50_ms"].as_f64());
    assert!(
        s["batches"].as_u64().unwrap() >= 50,
        "batches of at most 100"
    );
}

#[test]
fn a_second_run_adds_to_the_table_it_created() {
    let dir = TempDir::new("twice");
    for _ in 0..2 {
        let out = run(
            &dir.0,
            &["ingest", "--records", "300", "--sink", "sqlite://t.db"],
            "",
        );
        assert_eq!(out.code(), 0, "{}", out.stderr);
        assert!(
            out.stdout.contains("OK: produced == written (300)"),
            "{}",
            out.stdout
        );
    }
    assert_eq!(count(&dir.path("t.db"), "records"), 600);
}

#[test]
fn json_lines_from_stdin_are_written_as_they_were_given() {
    let dir = TempDir::new("stdin");
    let out = run(
        &dir.0,
        &[
            "ingest", "--input", "-", "--sink", "in.db", "--table", "events", "--json",
        ],
        "{\"a\":1}\n\n[1,2]\n  \"text\"  \n",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 3);
    let conn = rusqlite::Connection::open(dir.path("in.db")).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT seq, body FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "{\"a\":1}".to_owned()),
            (3, "[1,2]".to_owned()),
            (4, "\"text\"".to_owned())
        ]
    );
}

const WITH_BAD_LINE: &str = "{\"id\":1}\n{\"id\":2}\n{\"id\":3,\n{\"id\":4}\n{\"id\":5}\n";

#[test]
fn a_malformed_line_stops_the_run_with_its_line_number_after_writing_the_lines_before_it() {
    let dir = TempDir::new("malformed-stop");
    std::fs::write(dir.path("in.jsonl"), WITH_BAD_LINE).unwrap();
    let out = run(
        &dir.0,
        &["ingest", "--input", "in.jsonl", "--sink", "m.db", "--json"],
        "",
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("line 3: malformed JSON") && out.stderr.contains("--bad-lines skip"),
        "{}",
        out.stderr
    );
    let s = out.json();
    assert_eq!(
        (s["produced"].as_u64(), s["written"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(s["rejected_lines"], 1);
    assert_eq!(s["last_produced"], 2, "resume after line 2");
    assert_eq!(ids(&dir.path("m.db"), "records"), vec![1, 2]);
}

#[test]
fn a_malformed_line_is_skipped_with_bad_lines_skip_and_the_rest_is_written() {
    let dir = TempDir::new("malformed-skip");
    std::fs::write(dir.path("in.jsonl"), WITH_BAD_LINE).unwrap();
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--input",
            "in.jsonl",
            "--sink",
            "m.db",
            "--bad-lines",
            "skip",
        ],
        "",
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("line 3: malformed JSON"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("skipped"), "{}", out.stderr);
    assert_eq!(ids(&dir.path("m.db"), "records"), vec![1, 2, 4, 5]);
}

#[test]
fn a_record_over_the_size_limit_is_refused_with_its_size_and_the_limit() {
    let dir = TempDir::new("oversized");
    let big = format!("{{\"id\":2,\"pad\":\"{}\"}}", "x".repeat(200));
    let input = format!("{{\"id\":1}}\n{big}\n{{\"id\":3}}\n");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--input",
            "-",
            "--sink",
            "o.db",
            "--max-record-size",
            "100",
            "--bad-lines",
            "skip",
        ],
        &input,
    );
    assert_eq!(out.code(), 3, "{}", out.stderr);
    let expected = format!(
        "line 2: record of {} bytes is larger than the limit of 100 bytes",
        big.len()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    assert_eq!(ids(&dir.path("o.db"), "records"), vec![1, 3]);
}

#[test]
fn synthetic_records_over_the_size_limit_are_refused_before_anything_is_produced() {
    let dir = TempDir::new("oversized-synthetic");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "10",
            "--record-size",
            "5000",
            "--max-record-size",
            "4096",
            "--sink",
            "s.db",
        ],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr
            .contains("--record-size 5000 is larger than --max-record-size 4096"),
        "{}",
        out.stderr
    );
    assert!(!dir.path("s.db").exists(), "nothing was opened");
}

#[test]
fn a_linger_of_centuries_is_refused_with_the_flag_named_not_a_panic() {
    let dir = TempDir::new("huge-linger");
    // 1.8e19 seconds: a Duration, but no Instant can be that far ahead.
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "10",
            "--linger",
            "300000000000000000m",
        ],
        "",
    );
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("linger (milliseconds) is"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--linger"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn an_unreachable_sqlite_database_is_reported_before_any_record_is_produced() {
    let dir = TempDir::new("unreachable-sqlite");
    let out = run(
        &dir.0,
        &["ingest", "--records", "10", "--sink", "no/such/dir/x.db"],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr
            .contains("cannot open the database sqlite no/such/dir/x.db"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("produced"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no summary: {}", out.stdout);
}

#[test]
fn a_file_that_is_not_a_database_is_reported_before_any_record_is_produced() {
    let dir = TempDir::new("not-a-db");
    std::fs::write(
        dir.path("notes.txt"),
        "just some text, long enough to be read",
    )
    .unwrap();
    let out = run(
        &dir.0,
        &["ingest", "--records", "10", "--sink", "notes.txt"],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(out.stderr.contains("not a database"), "{}", out.stderr);
}

#[test]
fn an_unreachable_postgres_server_is_reported_before_any_record_is_produced() {
    let dir = TempDir::new("unreachable-pg");
    // A loopback port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    let out = run(
        &dir.0,
        &["ingest", "--records", "10", "--sink", &url, "--json"],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr
            .contains(&format!("cannot connect to postgres 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(out.json()["error"].as_str().unwrap().contains("is running"));
}

#[test]
fn a_cost_above_what_the_capacity_allows_at_once_is_refused_before_producing() {
    let dir = TempDir::new("too-expensive");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "10",
            "--capacity",
            "100",
            "--cost",
            "50",
            "--sink",
            "c.db",
        ],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr
            .contains("--cost 50 is more than --capacity allows"),
        "{}",
        out.stderr
    );
}

/// A run slowed by its capacity, stopped with `signal` once it is under way:
/// it stops producing early and writes every record it produced.
fn graceful_stop(signal: &str) {
    let dir = TempDir::new("graceful");
    let mut baler = Running::start(
        &dir.0,
        &[
            "ingest",
            "--records",
            "1000000",
            "--capacity",
            "5000",
            "--buffer",
            "2000",
            "--sink",
            "g.db",
            "--progress",
            "plain",
            "--json",
        ],
    );
    baler.wait_for_line("| produced");
    baler.signal(signal);
    let out = baler.finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("SIG{signal}: stopping")),
        "{}",
        out.stderr
    );
    let s = out.json();
    let produced = s["produced"].as_u64().unwrap();
    assert!(
        produced > 0 && produced < 1_000_000,
        "stopped early: {produced}"
    );
    assert_eq!(s["written"].as_u64(), Some(produced));
    assert_eq!(s["stopped"], format!("SIG{signal}"));
    assert_eq!(
        s["last_produced"].as_u64(),
        Some(produced),
        "synthetic ids count from 1"
    );
    assert_eq!(count(&dir.path("g.db"), "records"), produced);
    assert_eq!(
        ids(&dir.path("g.db"), "records"),
        (1..=produced).collect::<Vec<_>>()
    );
}

#[test]
fn sigint_in_the_middle_stops_producing_and_writes_every_record_produced() {
    graceful_stop("INT");
}

#[test]
fn sigterm_in_the_middle_stops_producing_and_writes_every_record_produced() {
    graceful_stop("TERM");
}

#[test]
fn a_second_sigint_stops_waiting_and_saves_the_unwritten_records_for_replay() {
    let dir = TempDir::new("forced");
    // 5,000 records held against a capacity of 2,000 a second: the drain
    // after the first SIGINT takes seconds, and the second one cuts it short.
    let mut baler = Running::start(
        &dir.0,
        &[
            "ingest",
            "--records",
            "1000000",
            "--capacity",
            "2000",
            "--buffer",
            "5000",
            "--sink",
            "f.db",
            "--replay-file",
            "left.jsonl",
            "--progress",
            "plain",
            "--json",
        ],
    );
    baler.wait_for_line("| produced");
    baler.signal("INT");
    baler.wait_for_line("SIGINT: stopping");
    baler.signal("INT");
    let out = baler.finish();
    assert_eq!(out.code(), 1, "records were left unwritten: {}", out.stderr);
    assert!(
        out.stderr.contains("SIGINT again: no more waiting"),
        "{}",
        out.stderr
    );

    let s = out.json();
    let produced = s["produced"].as_u64().unwrap();
    let written = s["written"].as_u64().unwrap();
    let unwritten: Vec<u64> = s["unwritten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(!unwritten.is_empty());
    assert_eq!(s["forced"], true);
    assert_eq!(s["replay_file"], "left.jsonl");
    assert_eq!(written + unwritten.len() as u64, produced);
    assert_eq!(count(&dir.path("f.db"), "records"), written);

    // The replay file holds exactly the records missing from the table.
    let replay = std::fs::read_to_string(dir.path("left.jsonl")).unwrap();
    let replayed: Vec<u64> = replay.lines().map(id_of).collect();
    assert_eq!(replayed, unwritten);
    let mut all = ids(&dir.path("f.db"), "records");
    all.extend(&replayed);
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=produced).collect::<Vec<_>>(),
        "table + replay file"
    );

    // Replaying it completes the table, with no record twice.
    let again = run(
        &dir.0,
        &[
            "ingest",
            "--input",
            "left.jsonl",
            "--sink",
            "f.db",
            "--json",
        ],
        "",
    );
    assert_eq!(again.code(), 0, "{}", again.stderr);
    assert_eq!(
        again.json()["written"].as_u64(),
        Some(unwritten.len() as u64)
    );
    assert_eq!(
        ids(&dir.path("f.db"), "records"),
        (1..=produced).collect::<Vec<_>>()
    );
}

#[test]
fn a_plain_status_line_shows_capacity_allocated_of_needed_when_not_on_a_terminal() {
    let dir = TempDir::new("plain");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "3000",
            "--capacity",
            "2000",
            "--sink",
            "p.db",
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("| produced"))
        .unwrap_or_else(|| panic!("no status line:\n{}", out.stderr));
    assert!(line.contains("capacity 2000 allocated of"), "{line}");
    assert!(line.contains("needed"), "{line}");
    assert!(out.stdout.starts_with("summary"), "{}", out.stdout);
}

#[test]
fn a_stalled_run_prints_the_batchers_diagnosis_and_still_writes_everything() {
    let dir = TempDir::new("stalled");
    let db = dir.path("locked.db");
    let first = run(
        &dir.0,
        &["ingest", "--records", "1", "--sink", "locked.db"],
        "",
    );
    assert_eq!(first.code(), 0, "{}", first.stderr);
    // Another writer holds the database, so baler's first batch waits.
    let holder = rusqlite::Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut baler = Running::start(
        &dir.0,
        &[
            "ingest",
            "--records",
            "3000",
            "--sink",
            "locked.db",
            "--max-in-flight",
            "1",
            "--progress",
            "plain",
            "--json",
        ],
    );
    let line = baler.wait_for_line("nothing written for");
    assert!(line.contains("in-flight-cap-reached"), "{line}");
    // And what to do, in the command's own flags.
    let hint = baler.wait_for_line("baler ingest:");
    assert!(hint.contains("--max-in-flight"), "{hint}");
    holder.execute_batch("COMMIT").unwrap();
    let out = baler.finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 3000);
    assert_eq!(count(&db, "records"), 3001);
}

#[test]
fn a_missing_input_file_is_reported_before_the_database_is_opened() {
    let dir = TempDir::new("missing-input");
    let out = run(
        &dir.0,
        &["ingest", "--input", "nope.jsonl", "--sink", "never.db"],
        "",
    );
    assert_eq!(out.code(), 2);
    assert!(
        out.stderr.contains("cannot open the input file nope.jsonl"),
        "{}",
        out.stderr
    );
    assert!(!dir.path("never.db").exists());
}
