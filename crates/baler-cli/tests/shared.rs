//! `baler ingest --shared`: real `baler` processes sharing one capacity
//! through a real `redis-server`, started by each test on a free loopback
//! port.

#[path = "../../baler-redis/tests/common/certs.rs"]
mod certs;
mod common;
#[path = "../../baler-redis/tests/common/mod.rs"]
mod redis_server;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{baler, count, ids, run, wait_output, Running, TempDir};
use redis_server::{free_port, RedisServer, TlsFiles};

/// The shared capacity of the two-process tests, its factor, and what each
/// process writes (cost 1 per record).
const SHARED: u64 = 2_000;
const FACTOR: u64 = 500;
const RECORDS: u64 = 2_000;
/// The most one capacity grants at once: 100 ms of its full rate.
const BURST: u64 = SHARED / 10;

fn shared_args<'a>(db: &'a str, url: &'a str, records: &'a str) -> Vec<&'a str> {
    vec![
        "ingest",
        "--records",
        records,
        "--cost",
        "1",
        "--sink",
        db,
        "--capacity",
        "2000",
        "--factor",
        "500",
        "--reserved",
        "0",
        "--shared",
        url,
        "--shared-name",
        "pair",
        "--progress",
        "plain",
        "--json",
    ]
}

/// The partition keys of the shared capacity `name` that Redis holds now.
fn partition_keys(server: &RedisServer, name: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("KEYS baler:{name}:partition:*\r\n").as_bytes())
        .unwrap();
    // The reply is an array header, "*N\r\n", then N bulk strings; the
    // header is all we need.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        s.read_exact(&mut byte).unwrap();
        reply.push(byte[0]);
    }
    let text = String::from_utf8(reply).unwrap();
    text.trim_start_matches('*').trim().parse().unwrap()
}

#[test]
fn two_processes_share_one_capacity_and_each_writes_every_record() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("shared-pair");
    let records = RECORDS.to_string();

    let started = Instant::now();
    let spawn = |db: &str| {
        baler(&dir.0, &shared_args(db, &url, &records))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("a.db"), spawn("b.db"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| wait_output(a));
        let b = s.spawn(|| wait_output(b));
        (a.join().unwrap(), b.join().unwrap())
    });
    let pair = started.elapsed();

    for (out, db) in [(&a, "a.db"), (&b, "b.db")] {
        assert_eq!(out.code(), 0, "{db}:\n{}", out.stderr);
        assert!(
            out.stderr
                .contains("2000/s shared through redis://127.0.0.1:"),
            "{db}: the first line names the shared capacity:\n{}",
            out.stderr
        );
        let s = out.json();
        assert_eq!(s["produced"].as_u64(), Some(RECORDS), "{db}: {s}");
        assert_eq!(s["written"].as_u64(), Some(RECORDS), "{db}: {s}");
        assert_eq!(count(&dir.path(db), "records"), RECORDS);
        assert_eq!(
            ids(&dir.path(db), "records"),
            (1..=RECORDS).collect::<Vec<_>>()
        );
    }

    // Together they spent 2 * 2,000 at no more than 2,000 per second, plus
    // at most one burst (100 ms of the full rate) each.
    let floor = Duration::from_secs_f64((2 * RECORDS - 2 * BURST) as f64 / SHARED as f64);
    assert!(
        pair >= floor,
        "the pair took {pair:?}, less than the shared capacity allows ({floor:?}):\n{}\n{}",
        a.stderr,
        b.stderr
    );

    // Each had a share, not the whole: alone, one process holding every
    // partition would write its 2,000 in about a second (2,000 per second);
    // sharing, neither can go that fast while the other wants capacity too.
    let alone = Duration::from_secs_f64((RECORDS - BURST) as f64 / SHARED as f64);
    for (out, name) in [(&a, "a"), (&b, "b")] {
        let elapsed = Duration::from_secs_f64(out.json()["elapsed_s"].as_f64().unwrap());
        assert!(
            elapsed >= alone + alone / 3,
            "{name} took {elapsed:?}: it held (nearly) all of the capacity while the other \
             waited:\n{}",
            out.stderr
        );
        let shares: Vec<u64> = out
            .stderr
            .lines()
            .filter(|l| l.contains("| produced"))
            .filter_map(|l| l.split("capacity ").nth(1))
            .filter_map(|c| c.split(' ').next()?.parse().ok())
            .collect();
        assert!(
            shares.iter().any(|c| (FACTOR..SHARED).contains(c)),
            "{name}: no status line shows a share of the capacity (at least one partition, \
             not all): {shares:?}\n{}",
            out.stderr
        );
    }

    assert_eq!(
        partition_keys(&server, "pair"),
        0,
        "both gave their leases back when they ended (a lease lasts 10 s otherwise)"
    );
}

#[test]
fn leases_are_given_back_after_ctrl_c() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("shared-sigint");
    let mut baler = Running::start(&dir.0, &shared_args("c.db", &url, "1000000"));
    // Under way, holding partitions.
    let line = baler.wait_for_line("| produced");
    assert!(line.contains("capacity 2000 allocated"), "{line}");
    assert!(partition_keys(&server, "pair") > 0, "it holds partitions");
    baler.signal("INT");
    let out = baler.finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["stopped"], "SIGINT");
    assert_eq!(s["written"], s["produced"]);
    assert_eq!(
        partition_keys(&server, "pair"),
        0,
        "the leases were given back at the end, not left to expire"
    );
}

#[test]
fn leases_are_given_back_after_a_second_ctrl_c_too() {
    let server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("shared-force");
    let mut args = shared_args("f.db", &url, "1000000");
    args.extend(["--replay-file", "rest.jsonl"]);
    let mut baler = Running::start(&dir.0, &args);
    baler.wait_for_line("capacity 2000 allocated");
    assert!(partition_keys(&server, "pair") > 0, "it holds partitions");
    baler.signal("INT");
    baler.wait_for_line("SIGINT: stopping");
    baler.signal("INT");
    let out = baler.finish();
    assert_eq!(
        out.code(),
        1,
        "records were left unwritten:\n{}",
        out.stderr
    );
    assert!(dir.path("rest.jsonl").exists(), "{}", out.stderr);
    assert_eq!(
        partition_keys(&server, "pair"),
        0,
        "the leases were given back at the end, not left to expire"
    );
}

#[test]
fn a_redis_outage_in_the_middle_is_reported_and_the_run_recovers_and_writes_everything() {
    let mut server = RedisServer::start();
    let url = server.url();
    let dir = TempDir::new("shared-outage");
    let mut baler = Running::start(&dir.0, &shared_args("o.db", &url, "1000000"));
    baler.wait_for_line("capacity 2000 allocated");
    server.stop();
    baler.wait_for_line("the shared capacity's Redis cannot be reached");
    server.launch();
    baler.wait_for_line("the shared capacity's Redis can be reached again");
    baler.wait_for_line("capacity 2000 allocated");
    baler.signal("INT");
    let out = baler.finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["written"], s["produced"], "{s}");
    assert_eq!(
        count(&dir.path("o.db"), "records"),
        s["written"].as_u64().unwrap()
    );
}

#[test]
fn an_unreachable_redis_is_reported_before_any_record_is_produced() {
    let dir = TempDir::new("shared-unreachable");
    let url = format!("redis://127.0.0.1:{}", free_port());
    let out = run(&dir.0, &shared_args("u.db", &url, "100"), "");
    assert_eq!(out.code(), 2, "setup errors exit with 2:\n{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "baler: error: --shared {url}: the lease store cannot be reached"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("nothing was produced"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("| produced"), "{}", out.stderr);
    assert!(!dir.path("u.db").exists(), "the database was not touched");
    assert_eq!(out.json()["exit_code"], 2);
}

#[test]
fn shared_flags_that_do_not_work_together_are_refused_naming_the_flag() {
    let dir = TempDir::new("shared-flags");
    let url = format!("redis://127.0.0.1:{}", free_port());
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec!["--shared", &url],
            "--shared needs --capacity: the capacity per second that the processes share",
        ),
        (
            vec!["--shared", &url, "--capacity", "0"],
            "--capacity 0 leaves nothing to share",
        ),
        (
            vec!["--shared", &url, "--capacity", "100", "--factor", "0"],
            "--factor 0 leaves nothing to share",
        ),
        (
            vec!["--shared", &url, "--capacity", "100000", "--factor", "10"],
            "makes 10000 partitions, more than the 500 allowed; raise --factor to at least 200",
        ),
        (
            vec![
                "--shared",
                "http://me:secret@127.0.0.1:1",
                "--capacity",
                "100",
            ],
            "--shared http://me:***@127.0.0.1:1 is not a Redis URL",
        ),
        (
            vec!["--capacity", "100", "--factor", "10"],
            "--shared [<redis://HOST:PORT>]",
        ),
    ];
    for (flags, message) in cases {
        let mut args = vec!["ingest", "--records", "10", "--sink", "f.db"];
        args.extend(&flags);
        let out = run(&dir.0, &args, "");
        assert_eq!(out.code(), 2, "{flags:?}:\n{}", out.stderr);
        assert!(
            out.stderr.contains(message),
            "{flags:?}: expected {message:?} in:\n{}",
            out.stderr
        );
        assert!(!dir.path("f.db").exists(), "{flags:?}: nothing was written");
        assert!(!out.stderr.contains("secret"), "{}", out.stderr);
    }
}

/// A TLS-only server with a certificate for 127.0.0.1 and localhost.
fn tls_server() -> RedisServer {
    RedisServer::start_tls(|dir| {
        let made = certs::Certs::make(dir, "redis");
        TlsFiles {
            ca: made.ca,
            cert: made.cert,
            key: made.key,
        }
    })
}

/// How many of the first `partitions` partitions of the shared capacity
/// `name` someone holds, asked over TLS.
fn held_over_tls(server: &RedisServer, name: &str, partitions: u32) -> usize {
    let store = baler_redis::RedisLeaseStore::with_ca(&server.url(), name, &server.ca_pem())
        .expect("a store for the test's TLS server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut held = 0;
        for partition in 0..partitions {
            if store.holder(partition).await.unwrap().is_some() {
                held += 1;
            }
        }
        held
    })
}

#[test]
fn a_shared_capacity_through_a_tls_only_redis_trusting_its_ca_writes_every_record() {
    let server = tls_server();
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = server.tls.as_ref().unwrap().ca.display().to_string();
    let dir = TempDir::new("shared-tls");
    let mut args = shared_args("t.db", &url, "1000000");
    args.extend(["--shared-ca", &ca]);
    let mut baler = Running::start(&dir.0, &args);
    // --reserved 0: all of this capacity comes from leases taken over TLS.
    let line = baler.wait_for_line("capacity 2000 allocated");
    assert!(line.contains("| produced"), "{line}");
    assert!(
        held_over_tls(&server, "pair", 4) > 0,
        "it holds partitions in the TLS Redis"
    );
    baler.signal("INT");
    let out = baler.finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("2000/s shared through rediss://127.0.0.1:"),
        "{}",
        out.stderr
    );
    let s = out.json();
    assert_eq!(s["written"], s["produced"], "{s}");
    assert_eq!(
        count(&dir.path("t.db"), "records"),
        s["written"].as_u64().unwrap()
    );
    assert_eq!(
        held_over_tls(&server, "pair", 4),
        0,
        "the leases were given back over TLS at the end"
    );
}

#[test]
fn a_tls_redis_whose_ca_is_not_trusted_is_refused_naming_the_server_and_the_flag() {
    let server = tls_server();
    let url = server.url();
    let dir = TempDir::new("shared-tls-untrusted");
    let stranger = certs::Certs::stranger(&dir.0).display().to_string();
    let at = format!(
        "the TLS handshake with the Redis server at 127.0.0.1:{}",
        server.port
    );
    for ca in [None, Some(stranger.as_str())] {
        let mut args = shared_args("x.db", &url, "100");
        if let Some(ca) = ca {
            args.extend(["--shared-ca", ca]);
        }
        let out = run(&dir.0, &args, "");
        assert_eq!(out.code(), 2, "{ca:?}:\n{}", out.stderr);
        for part in [at.as_str(), "failed", "UnknownIssuer", "--shared-ca FILE"] {
            assert!(
                out.stderr.contains(part),
                "{ca:?}: expected {part:?} in:\n{}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("| produced"), "{}", out.stderr);
        assert!(!dir.path("x.db").exists(), "the database was not touched");
    }
}

#[test]
fn a_shared_ca_that_cannot_be_used_is_refused_before_redis_is_asked() {
    let dir = TempDir::new("shared-tls-ca");
    std::fs::write(dir.path("junk.pem"), "not a certificate").unwrap();
    let tls = format!("rediss://127.0.0.1:{}", free_port());
    let plain = format!("redis://127.0.0.1:{}", free_port());
    let insecure = format!("{tls}/#insecure");
    let cases = [
        (
            &tls,
            Some("missing.pem"),
            "--shared-ca missing.pem: cannot read it",
        ),
        (&tls, Some("junk.pem"), "--shared-ca junk.pem:"),
        (&plain, Some("junk.pem"), "a CA is only used over TLS"),
        (
            &insecure,
            None,
            "does not skip the server's certificate check",
        ),
    ];
    for (url, ca, message) in cases {
        let mut args = shared_args("c.db", url, "10");
        if let Some(ca) = ca {
            args.extend(["--shared-ca", ca]);
        }
        let out = run(&dir.0, &args, "");
        assert_eq!(out.code(), 2, "{url} {ca:?}:\n{}", out.stderr);
        assert!(
            out.stderr.contains(message),
            "{url} {ca:?}: expected {message:?} in:\n{}",
            out.stderr
        );
        assert!(!dir.path("c.db").exists(), "nothing was written");
    }
}
