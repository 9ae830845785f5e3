//! Helpers for running the real `baler` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long any one wait in these tests may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("baler-cli-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The variables `baler` reads for its sink and Redis.
pub const VARIABLES: [&str; 4] = ["BALER_SINK", "DATABASE_URL", "BALER_REDIS", "REDIS_URL"];

/// `baler` with `args`, run in `dir`, without the variables that name its
/// sink and Redis (a DATABASE_URL in the test's environment must not send the
/// tests' records to that database).
pub fn baler(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baler"));
    cmd.current_dir(dir).args(args);
    for name in VARIABLES {
        cmd.env_remove(name);
    }
    cmd
}

/// What a finished run printed.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.status.code().expect("exited, not killed")
    }

    /// The `--json` summary.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `baler` to its end, with `stdin` as its input.
pub fn run(dir: &Path, args: &[&str], stdin: &str) -> Run {
    run_with_env(dir, args, &[], stdin)
}

/// Runs `baler` to its end with these variables set (on top of [`baler`]'s
/// environment), with `stdin` as its input.
pub fn run_with_env(dir: &Path, args: &[&str], vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = baler(dir, args);
    cmd.envs(vars.iter().copied());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let out = wait_output(child);
    writer.join().unwrap();
    out
}

/// Waits for `child` (stdout and stderr piped) to exit, at most [`PATIENCE`].
pub fn wait_output(mut child: Child) -> Run {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let status = wait(&mut child);
    Run {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` to exit, at most [`PATIENCE`]; kills it and fails after.
pub fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baler did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `baler` whose stderr is read line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stdout: std::thread::JoinHandle<String>,
}

impl Running {
    pub fn start(dir: &Path, args: &[&str]) -> Self {
        let mut child = baler(dir, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stdout,
        }
    }

    /// Waits for a stderr line containing `text`.
    pub fn wait_for_line(&mut self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no stderr line with {text:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends `signal` (e.g. "INT", "TERM") to the process.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Waits for the exit; returns the run with the stderr lines seen.
    pub fn finish(mut self) -> Run {
        let status = wait(&mut self.child);
        let stdout = self.stdout.join().unwrap();
        let rest: Vec<String> = self.lines.try_iter().collect();
        self.seen.extend(rest);
        Run {
            status,
            stdout,
            stderr: self.seen.join("\n"),
        }
    }
}

/// `SELECT count(*)` of `table` in a SQLite file.
pub fn count(db: &Path, table: &str) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as u64
}

/// The `id` field of every body in a SQLite table, sorted.
pub fn ids(db: &Path, table: &str) -> Vec<u64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn.prepare(&format!("SELECT body FROM {table}")).unwrap();
    let mut ids: Vec<u64> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|body| id_of(&body.unwrap()))
        .collect();
    ids.sort_unstable();
    ids
}

/// The `id` field of a synthetic record's body.
pub fn id_of(body: &str) -> u64 {
    let v: Value = serde_json::from_str(body).unwrap();
    v["id"].as_u64().unwrap()
}

/// Panics, with what is wrong in a few words, unless `ids` (sorted) holds
/// each of `expected` (sorted) exactly once and nothing else.
pub fn assert_each_once(ids: &[u64], expected: &[u64]) {
    let twice: Vec<u64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    let missing: Vec<u64> = expected
        .iter()
        .filter(|id| ids.binary_search(id).is_err())
        .copied()
        .collect();
    let extra: Vec<u64> = ids
        .iter()
        .filter(|id| expected.binary_search(id).is_err())
        .copied()
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty() && extra.is_empty(),
        "the table holds {} rows for {} records: {} written twice (first {:?}), {} missing \
         (first {:?}), {} not in the input (first {:?})",
        ids.len(),
        expected.len(),
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
    );
}
