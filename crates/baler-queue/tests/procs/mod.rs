//! Child processes for the cross-process tests: the test binary runs itself
//! again with `--exact role` and an environment that says which part (a
//! worker, a producer) to play. Every child is held by a [`Proc`], which
//! kills it by its handle when dropped, so a failing test leaves none
//! behind; a child whose parent died anyway sees its stdin close and exits.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that names a child's part; its settings travel
/// in variables that start with [`PREFIX`].
pub const ROLE: &str = "BALER_QUEUE_PROC_ROLE";
/// The prefix of every setting passed to a child.
pub const PREFIX: &str = "BALER_QUEUE_PROC_";
/// The name of the test that plays a part when [`ROLE`] is set.
pub const ROLE_TEST: &str = "role";

/// A child process of the test. Dropping it kills the child (SIGKILL) and
/// reaps it.
pub struct Proc {
    pub what: String,
    child: Option<Child>,
}

impl Proc {
    /// Runs this test binary again as `role`, with `settings` (names without
    /// the prefix).
    pub fn spawn(role: &str, settings: &BTreeMap<&str, String>) -> Proc {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command
            .args(["--exact", ROLE_TEST, "--nocapture", "--include-ignored"])
            .env(ROLE, role)
            // A child notices its parent's death by its stdin reaching end of
            // file, even when the parent could not run its Drop guards.
            .stdin(Stdio::piped())
            // The harness's own lines ("running 1 test") are noise; panics
            // and diagnostics arrive on stderr.
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, value) in settings {
            command.env(format!("{PREFIX}{name}"), value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start a {role} process: {e}"));
        Proc {
            what: role.to_owned(),
            child: Some(child),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Kills the child at once (SIGKILL on Unix), as a crash would, and
    /// reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the child has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the child to exit; panics saying what was
    /// awaited otherwise (the guard then kills it).
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the {} process (pid {}) did not finish within {limit:?}",
                self.what,
                self.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// In a child: exits the process once the parent is gone (stdin closed).
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(3);
    });
}

/// A child's setting, or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(format!("{PREFIX}{name}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child's setting that must be present.
pub fn required(name: &str) -> String {
    std::env::var(format!("{PREFIX}{name}"))
        .unwrap_or_else(|_| panic!("the parent test passes {PREFIX}{name}"))
}

/// A directory of the test's own for files that children write, removed
/// when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "baler-queue-procs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `contents` so that a reader sees all of it or none of it.
pub fn write_whole(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write a scratch file");
    std::fs::rename(&tmp, path).expect("move a scratch file into place");
}

/// A small pseudo-random sequence (xorshift), seeded from the clock: the
/// test prints its seed so that a failing order of kills can be looked at.
pub struct Rng(u64);

impl Rng {
    pub fn from_clock() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
