//! `baler ingest` into PostgreSQL over TLS: each test starts a PostgreSQL
//! server of its own (initdb into a scratch directory, then `postgres` on a
//! free loopback port with `ssl=on` and a certificate the test makes), which
//! accepts connections over TLS only, and stops it at the end, failed or not.

#[path = "../../baler-redis/tests/common/certs.rs"]
mod certs;
mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certs::Certs;
use common::{run, TempDir};

/// A PostgreSQL server of the test's own, stopped (by its pid) on drop.
struct PgServer {
    port: u16,
    certs: Certs,
    child: Option<Child>,
    log: PathBuf,
    // Last: removed after the server has stopped.
    _dir: TempDir,
}

/// The newest installed PostgreSQL's bin directory.
fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: install it with \
             `apt-get install -y postgresql`, or run ./scripts/test, which does"
        )
    })
}

/// PostgreSQL refuses to run as root: as root, the server runs as the
/// `postgres` user (or `nobody`), and its files are made theirs.
fn server_user() -> Option<(u32, u32)> {
    let id = |flag: &str, user: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    ["postgres", "nobody"]
        .iter()
        .find_map(|user| Some((id("-u", user)?, id("-g", user)?)))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// A server whose certificate names `names`, signed by a CA of its own,
    /// that accepts TCP connections over TLS only.
    fn start(names: &[&str]) -> PgServer {
        PgServer::launch(names, true)
    }

    /// A server without TLS (`ssl=off`), that accepts plain connections.
    fn start_plain() -> PgServer {
        PgServer::launch(&["127.0.0.1"], false)
    }

    fn launch(names: &[&str], ssl: bool) -> PgServer {
        let bin = pg_bin();
        let dir = TempDir::new("pg-tls");
        let certs = Certs::make_for(&dir.0, "pg", names);
        let data = dir.path("data");
        let user = server_user();
        let as_user = |command: &mut Command| {
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
        };
        if let Some((uid, gid)) = user {
            for path in [&dir.0, &certs.ca, &certs.cert, &certs.key] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }
        // The server refuses a key that others can read.
        std::fs::set_permissions(
            &certs.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();

        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["--auth=trust", "--username=postgres", "--no-sync"])
            .env("LC_ALL", "C")
            .stdout(Stdio::null());
        as_user(&mut initdb);
        let out = initdb.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // With TLS, TLS or nothing over TCP: a plain connection is turned
        // away, so a run that writes went over TLS.
        let hba = if ssl {
            "local all all trust\n\
             hostssl all baler_scram 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n"
        } else {
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        };
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();

        let port = free_port();
        let log = dir.path("server.log");
        let mut postgres = Command::new(bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(&dir.0)
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(if ssl { "ssl=on" } else { "ssl=off" })
            .arg("-c")
            .arg(format!("ssl_cert_file={}", certs.cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", certs.key.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=20"])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        as_user(&mut postgres);
        let child = postgres.spawn().unwrap();
        let mut server = PgServer {
            port,
            certs,
            child: Some(child),
            log,
            _dir: dir,
        };
        server.wait_ready(&bin);
        if ssl {
            // A role that logs in with a password (SCRAM), over the socket.
            let out = Command::new(bin.join("psql"))
                .args(["-q", "-h"])
                .arg(&server._dir.0)
                .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
                .args([
                    "-c",
                    "CREATE ROLE baler_scram LOGIN PASSWORD 'baler-test'; \
                     GRANT CREATE ON SCHEMA public TO baler_scram",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        server
    }

    fn wait_ready(&mut self, bin: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "the test's PostgreSQL server did not start ({exited:?}); its log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `--sink` URL of a role with a password (SCRAM), with `query`.
    fn scram_url(&self, query: &str) -> String {
        format!(
            "postgres://baler_scram:baler-test@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// The `--sink` URL with `query` after `?`.
    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown: its backends end with it.
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `baler ingest` of `records` synthetic records into `sink`.
fn ingest(dir: &TempDir, sink: &str, records: u64) -> common::Run {
    ingest_into(dir, sink, records, "tls_records")
}

/// The same into `table`.
fn ingest_into(dir: &TempDir, sink: &str, records: u64, table: &str) -> common::Run {
    run(
        &dir.0,
        &[
            "ingest",
            "--records",
            &records.to_string(),
            "--batch-size",
            "100",
            "--sink",
            sink,
            "--table",
            table,
            "--json",
        ],
        "",
    )
}

#[test]
fn sslmode_require_and_prefer_write_every_record_over_tls_and_disable_is_turned_away() {
    let server = PgServer::start(&["127.0.0.1", "localhost"]);
    let dir = TempDir::new("pg-require");

    let out = ingest(&dir, &server.url("127.0.0.1", "sslmode=require"), 3000);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stderr.contains("sslmode require"), "{}", out.stderr);
    let s = out.json();
    assert_eq!(s["written"], 3000, "{s}");
    assert_eq!(s["table_rows"], 3000, "{s}");

    // No sslmode is libpq's prefer: TLS, as the server offers it.
    let out = ingest(&dir, &server.url("127.0.0.1", ""), 1000);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.stderr.contains("sslmode prefer"), "{}", out.stderr);
    assert_eq!(out.json()["table_rows"], 4000);

    // The server turns plain connections away: the runs above used TLS.
    let out = ingest(&dir, &server.url("127.0.0.1", "sslmode=disable"), 10);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("no encryption"), "{}", out.stderr);
}

#[test]
fn verify_full_with_the_servers_ca_writes_every_record_and_a_wrong_ca_is_refused() {
    let server = PgServer::start(&["127.0.0.1", "localhost"]);
    let dir = TempDir::new("pg-verify");
    let ca = server.certs.ca.display().to_string();

    for host in ["127.0.0.1", "localhost"] {
        let url = server.url(host, &format!("sslmode=verify-full&sslrootcert={ca}"));
        let out = ingest(&dir, &url, 2000);
        assert_eq!(out.code(), 0, "{host}: {}", out.stderr);
        assert!(out.stderr.contains("sslmode verify-full"), "{}", out.stderr);
        assert_eq!(out.json()["written"], 2000);
    }

    // A password login whose SCRAM exchange is bound to this TLS session.
    let url = server.scram_url(&format!(
        "sslmode=verify-full&sslrootcert={ca}&channel_binding=require"
    ));
    let out = ingest_into(&dir, &url, 500, "scram_records");
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 500);
    assert!(!out.stderr.contains("baler-test"), "{}", out.stderr);

    let stranger = Certs::stranger(&dir.0).display().to_string();
    let url = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={stranger}"),
    );
    let out = ingest(&dir, &url, 10);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let at = format!(
        "the TLS handshake with postgres 127.0.0.1:{} (database postgres, user postgres, \
         sslmode verify-full) failed",
        server.port
    );
    for part in [at.as_str(), "UnknownIssuer", "sslrootcert=FILE"] {
        assert!(
            out.stderr.contains(part),
            "expected {part:?} in:\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("| produced"), "{}", out.stderr);
    assert_eq!(out.json()["exit_code"], 2);
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    // A certificate for another host than the one connected to.
    let server = PgServer::start(&["db.example"]);
    let dir = TempDir::new("pg-name");
    let ca = server.certs.ca.display().to_string();

    let full = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let out = ingest(&dir, &full, 10);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    for part in ["not valid for name", "does not name the host of --sink"] {
        assert!(
            out.stderr.contains(part),
            "expected {part:?} in:\n{}",
            out.stderr
        );
    }

    let chain = server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    let out = ingest(&dir, &chain, 500);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 500);

    // libpq: require with a root CA checks the chain as verify-ca does.
    let stranger = Certs::stranger(&dir.0).display().to_string();
    let out = ingest(
        &dir,
        &server.url(
            "127.0.0.1",
            &format!("sslmode=require&sslrootcert={stranger}"),
        ),
        10,
    );
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("sslmode verify-ca"), "{}", out.stderr);
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
}

#[test]
fn prefer_goes_on_without_tls_where_the_server_has_none_and_require_says_so() {
    let server = PgServer::start_plain();
    let dir = TempDir::new("pg-plain");

    let out = ingest(&dir, &server.url("127.0.0.1", "sslmode=prefer"), 500);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.json()["written"], 500);

    let out = ingest(&dir, &server.url("127.0.0.1", "sslmode=require"), 10);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    for part in [
        "the TLS handshake with postgres 127.0.0.1:",
        "server does not support TLS",
        "turn ssl on in its postgresql.conf, or use sslmode=prefer or sslmode=disable",
    ] {
        assert!(
            out.stderr.contains(part),
            "expected {part:?} in:\n{}",
            out.stderr
        );
    }
}
