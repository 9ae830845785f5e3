//! A real `redis-server` on a free loopback port, started and stopped by the
//! test that owns it (by its process handle, never by name), and a few
//! helpers the queue's tests share.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A redis-server child process. Dropping it kills the server and removes
/// its directory, so a failing test never leaves one behind.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    aof: bool,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// A directory of its own, removed when the server is dropped.
fn scratch() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "baler-queue-redis-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> Self {
        Self::with(false)
    }

    /// A server that appends every write to its AOF and fsyncs it before
    /// answering (`--appendonly yes --appendfsync always`), so that a
    /// restart in the same directory keeps everything acknowledged.
    pub fn start_durable() -> Self {
        Self::with(true)
    }

    /// A server without persistence, with more command-line arguments
    /// (`["--replicaof", "127.0.0.1", "6379"]`).
    #[allow(dead_code)]
    pub fn start_with(extra: &[&str]) -> Self {
        Self::build(false, extra)
    }

    fn with(aof: bool) -> Self {
        Self::build(aof, &[])
    }

    fn build(aof: bool, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            port: free_port(),
            dir: scratch(),
            aof,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.launch();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and directory) and waits
    /// until it answers.
    pub fn launch(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""]);
        if self.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): install it with \
                     `apt-get install -y redis-server`, or run ./scripts/test, which does"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain connection for the test's own look-ups.
pub async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis-server")
}

/// Calls of `command` so far, from `INFO commandstats` (0 if none).
pub async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    stat(conn, command, "calls").await
}

/// Calls of `command` that did not fail: a script's first `EVALSHA` fails
/// with `NOSCRIPT` and is sent again as `EVAL`, which is one call made.
pub async fn calls_ok(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let calls = stat(conn, command, "calls").await;
    let failed = stat(conn, command, "failed_calls").await;
    calls.saturating_sub(failed)
}

async fn stat(conn: &mut redis::aio::MultiplexedConnection, command: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    let line = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits up to `limit` for `check` to hold, polling; panics with `what`
/// otherwise. For conditions that real Redis timing decides.
/// The results a results stream holds: an entry is one result, or a bundle
/// of them whose field `n` says how many.
pub async fn results_stored(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    entries
        .iter()
        .map(|(_, f)| f.get("n").map_or(1, |n| n.parse::<u64>().expect("a count")))
        .sum()
}

pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `f` for at most `limit`, panicking with `what` if it does not end:
/// a test that hangs says what it waited for.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for: {what}"),
    }
}
