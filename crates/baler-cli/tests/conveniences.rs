//! What `baler` offers around a run: the sink and Redis from environment
//! variables, libpq keyword strings, rounded JSON figures, shell completions.
//! The real binary, run as a user would run it.

mod common;

use common::{count, run, run_with_env, TempDir};

/// A loopback port nobody listens on: bound, then closed.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn baler_sink_names_the_database_when_sink_is_not_given() {
    let dir = TempDir::new("env-sink");
    let out = run_with_env(
        &dir.0,
        &["ingest", "--records", "20", "--json"],
        &[("BALER_SINK", "from-env.db")],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(count(&dir.path("from-env.db"), "records"), 20);
    assert!(!dir.path("baler.db").exists(), "not the default file");
}

#[test]
fn database_url_is_the_fallback_and_baler_sink_and_the_flag_come_first() {
    let dir = TempDir::new("env-order");
    let out = run_with_env(
        &dir.0,
        &["ingest", "--records", "5"],
        &[("DATABASE_URL", "sqlite://database-url.db")],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(count(&dir.path("database-url.db"), "records"), 5);

    let both = [
        ("DATABASE_URL", "database-url.db"),
        ("BALER_SINK", "baler-sink.db"),
    ];
    let out = run_with_env(&dir.0, &["ingest", "--records", "6"], &both, "");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(count(&dir.path("baler-sink.db"), "records"), 6);

    let out = run_with_env(
        &dir.0,
        &["ingest", "--records", "7", "--sink", "flag.db"],
        &both,
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(count(&dir.path("flag.db"), "records"), 7);
    assert_eq!(count(&dir.path("baler-sink.db"), "records"), 6, "untouched");
    assert_eq!(
        count(&dir.path("database-url.db"), "records"),
        5,
        "untouched"
    );
}

#[test]
fn help_names_the_variables_and_never_shows_their_values() {
    let dir = TempDir::new("env-help");
    let secret = "postgres://me:hunter2-secret@127.0.0.1/test";
    let out = run_with_env(
        &dir.0,
        &["ingest", "--help"],
        &[
            ("BALER_SINK", secret),
            ("REDIS_URL", "redis://:hunter3@127.0.0.1"),
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for name in [
        "[env: BALER_SINK",
        "DATABASE_URL",
        "BALER_REDIS",
        "REDIS_URL",
    ] {
        assert!(out.stdout.contains(name), "{name} missing:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("hunter"), "{}", out.stdout);
}

#[test]
fn a_libpq_keyword_string_is_postgres_not_a_sqlite_file() {
    let dir = TempDir::new("libpq");
    let port = closed_port();
    let sink = format!("host=127.0.0.1 port={port} user=postgres dbname=test");
    let out = run(&dir.0, &["ingest", "--records", "10", "--sink", &sink], "");
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("cannot connect to postgres 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    let files: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(files.is_empty(), "no SQLite file made: {files:?}");
}

#[test]
fn a_mistyped_libpq_keyword_is_refused_saying_how_to_mean_a_file() {
    let dir = TempDir::new("libpq-typo");
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "10",
            "--sink",
            "hots=127.0.0.1 dbname=test",
        ],
        "",
    );
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("hots"), "{}", out.stderr);
    assert!(
        out.stderr.contains("sqlite://hots=127.0.0.1 dbname=test"),
        "{}",
        out.stderr
    );
    let files: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(files.is_empty(), "no SQLite file made: {files:?}");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn shared_without_a_url_takes_redis_url_from_the_environment() {
    let dir = TempDir::new("env-redis");
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let args = [
        "ingest",
        "--records",
        "10",
        "--sink",
        "r.db",
        "--capacity",
        "1000",
        "--shared",
    ];
    let out = run_with_env(&dir.0, &args, &[("REDIS_URL", &url)], "");
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("--shared {url}: ")),
        "the Redis of REDIS_URL was the one tried:\n{}",
        out.stderr
    );

    let out = run(&dir.0, &args, "");
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("neither BALER_REDIS nor REDIS_URL is set"),
        "{}",
        out.stderr
    );
    assert!(!dir.path("r.db").exists(), "the database was not touched");
}

#[test]
fn redis_url_alone_does_not_turn_sharing_on() {
    let dir = TempDir::new("env-redis-off");
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let out = run_with_env(
        &dir.0,
        &["ingest", "--records", "10", "--sink", "r.db", "--json"],
        &[("REDIS_URL", &url), ("BALER_REDIS", &url)],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 10);
}

/// How many digits `field` has after the decimal point in the raw JSON.
fn decimals(json: &str, field: &str) -> usize {
    let key = format!("\"{field}\":");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("{field} in {json}"))
        + key.len();
    let number: String = json[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
        .collect();
    number.split_once('.').map_or(0, |(_, f)| f.len())
}

#[test]
fn json_figures_are_rounded_per_field() {
    let dir = TempDir::new("json-round");
    // 1000 records in batches of 7: the mean batch size is a long fraction.
    let out = run(
        &dir.0,
        &[
            "ingest",
            "--records",
            "1000",
            "--batch-size",
            "7",
            "--sink",
            "j.db",
            "--json",
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let raw = out.stdout.trim();
    for (field, most) in [
        ("mean_batch_size", 2),
        ("mean_write_ms", 3),
        ("elapsed_s", 6),
        ("records_per_second", 1),
        ("latency_p50_ms", 3),
        ("latency_p99_ms", 3),
    ] {
        let got = decimals(raw, field);
        assert!(
            got <= most,
            "{field} has {got} decimals, at most {most}: {raw}"
        );
    }
    let s = out.json();
    let mean = s["mean_batch_size"].as_f64().unwrap();
    let exact = 1000.0 / s["batches"].as_f64().unwrap();
    assert!((mean - exact).abs() <= 0.005, "{mean} is {exact} rounded");
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let dir = TempDir::new("completions");
    for (shell, marker) in [
        ("bash", "complete -F _baler"),
        ("zsh", "#compdef baler"),
        ("fish", "complete -c baler"),
    ] {
        let out = run(&dir.0, &["completions", shell], "");
        assert_eq!(out.code(), 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(marker), "{shell}:\n{}", out.stdout);
        assert!(out.stdout.contains("ingest"), "{shell}:\n{}", out.stdout);
        assert!(
            out.stdout.contains("max-in-flight"),
            "{shell}:\n{}",
            out.stdout
        );
    }
    let out = run(&dir.0, &["completions", "tcsh"], "");
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("bash"),
        "lists the shells: {}",
        out.stderr
    );
}
