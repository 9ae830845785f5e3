//! The contenders' processes: started with their role and environment,
//! their reports read, and stopped by pid. A `Proc` dropped while its
//! process runs kills it, so a failing run leaves nothing behind; and every
//! child dies with the runner (PR_SET_PDEATHSIG), also when the runner is
//! itself killed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How a contender is started: the program and the arguments before the role.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
}

/// Makes a child receive SIGKILL when the runner's thread that started it
/// ends, so that no process outlives a runner that was killed.
pub(crate) fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A fresh directory for one contender's scenario: reports and logs.
pub(crate) fn run_dir(scratch: &Path, contender: &str, scenario: &str) -> Result<PathBuf, String> {
    let dir = scratch.join(format!("{contender}-{scenario}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// One running role of a contender.
pub(crate) struct Proc {
    name: String,
    child: Child,
    report: PathBuf,
    stderr: PathBuf,
    status: Option<std::process::ExitStatus>,
}

impl Proc {
    pub(crate) fn spawn(
        cmd: &Command,
        role: &str,
        name: &str,
        cwd: &Path,
        run_dir: &Path,
        env: &[(&str, String)],
    ) -> Result<Proc, String> {
        let report = run_dir.join(format!("{name}.json"));
        let stderr = run_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&stderr)
            .map_err(|e| format!("cannot create {}: {e}", stderr.display()))?;
        let out = log
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", stderr.display()))?;
        let mut command = std::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .arg(role)
            .current_dir(cwd)
            .env("BQB_REPORT", &report)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {} {role}: {e}", cmd.program.to_string_lossy()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            report,
            stderr,
            status: None,
        })
    }

    pub(crate) fn report_path(&self) -> &Path {
        &self.report
    }

    /// Whether the process has exited; an exit other than 0 is an error that
    /// carries the end of its log.
    pub(crate) fn exited(&mut self) -> Result<bool, String> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| format!("{}: {e}", self.name))?;
        }
        match self.status {
            None => Ok(false),
            Some(s) if s.success() => Ok(true),
            Some(s) => Err(format!("{} exited with {s}{}", self.name, self.log_tail())),
        }
    }

    /// An error if the process is no longer running.
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
        if self.exited()? {
            return Err(format!("{} exited early{}", self.name, self.log_tail()));
        }
        Ok(())
    }

    /// Waits for the process to exit by itself; past `limit` it is killed and
    /// reported as hung.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        while !self.exited()? {
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "hung: {} did not exit within {} s{}",
                    self.name,
                    limit.as_secs(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub(crate) fn terminate(&self) {
        if self.status.is_none() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: a plain syscall on our own child's pid, which we
                // have not reaped yet, so it cannot name another process.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// The process's latest report.
    pub(crate) fn report(&self) -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(&self.report).map_err(|e| {
            format!(
                "{}: no report at {} ({e})",
                self.name,
                self.report.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{}: its report is not JSON ({e}): {text:?}", self.name))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its output ends with:\n    {tail}")
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A scenario's worker processes.
pub(crate) struct Reports(pub(crate) Vec<Proc>);

impl Reports {
    pub(crate) fn check_running(&mut self) -> Result<(), String> {
        self.0.iter_mut().try_for_each(Proc::check_running)
    }

    /// Σ `ran` over the workers' latest reports (a report being replaced
    /// counts as 0 for this look).
    pub(crate) fn ran(&self) -> u64 {
        self.0
            .iter()
            .filter_map(|w| w.report().ok())
            .filter_map(|r| r.get("ran").and_then(serde_json::Value::as_u64))
            .sum()
    }

    /// SIGTERMs every worker, waits for them to exit (SIGKILL after 10 s),
    /// and sums `ran` from their final reports.
    pub(crate) fn stop(&mut self) -> Result<u64, String> {
        for w in &self.0 {
            w.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut problems = Vec::new();
        for w in &mut self.0 {
            loop {
                match w.exited() {
                    Ok(true) => break,
                    Ok(false) if Instant::now() > deadline => {
                        w.kill();
                        problems.push(format!(
                            "{} ignored SIGTERM for 10 s and was killed",
                            w.name
                        ));
                        break;
                    }
                    Ok(false) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => {
                        problems.push(e);
                        break;
                    }
                }
            }
        }
        let mut ran = 0;
        for w in &self.0 {
            ran += u64_field(&w.report()?, "ran")?;
        }
        if problems.is_empty() {
            Ok(ran)
        } else {
            Err(problems.join("; "))
        }
    }
}

pub(crate) fn u64_field(report: &serde_json::Value, name: &str) -> Result<u64, String> {
    report
        .get(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
        .ok_or_else(|| format!("the report has no whole number {name:?}: {report}"))
}

pub(crate) fn f64_field(report: &serde_json::Value, name: &str) -> Result<f64, String> {
    report
        .get(name)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("the report has no number {name:?}: {report}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        Command {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "contender".into()],
        }
    }

    fn scratch(name: &str) -> PathBuf {
        run_dir(
            &std::env::temp_dir().join(format!("bqb-procs-{}", std::process::id())),
            name,
            "test",
        )
        .unwrap()
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the pid exists.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[test]
    fn a_producer_that_does_not_exit_is_killed_and_reported_hung() {
        let dir = scratch("hung");
        let mut p = Proc::spawn(
            &sh("echo waiting; exec sleep 100"),
            "chain",
            "producer",
            &dir,
            &dir,
            &[],
        )
        .unwrap();
        let pid = p.child.id();
        let e = p.wait_exit(Duration::from_millis(300)).unwrap_err();
        assert!(e.starts_with("hung: producer did not exit"), "{e}");
        assert!(e.contains("waiting"), "the log's tail is shown: {e}");
        assert!(!alive(pid));
    }

    #[test]
    fn a_failing_role_is_an_error_with_its_output() {
        let dir = scratch("fails");
        let mut p = Proc::spawn(
            &sh("echo \"no role $1\" >&2; exit 3"),
            "bulk",
            "producer",
            &dir,
            &dir,
            &[],
        )
        .unwrap();
        let e = p.wait_exit(Duration::from_secs(10)).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("no role bulk"),
            "{e}"
        );
    }

    #[test]
    fn workers_stop_on_sigterm_and_one_that_ignores_it_is_killed() {
        let dir = scratch("stop");
        let good = sh(r#"trap 'echo "{\"ran\": 5}" > "$BQB_REPORT"; exit 0' TERM
            echo '{"ran": 0}' > "$BQB_REPORT"
            while :; do sleep 0.05; done"#);
        let mut workers = Reports(vec![
            Proc::spawn(&good, "worker", "w0", &dir, &dir, &[]).unwrap(),
            Proc::spawn(&good, "worker", "w1", &dir, &dir, &[]).unwrap(),
        ]);
        while !workers.0.iter().all(|w| w.report_path().exists()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(workers.ran(), 0);
        assert_eq!(workers.stop().unwrap(), 10);

        let deaf = sh(r#"trap '' TERM; echo '{"ran": 1}' > "$BQB_REPORT"; exec sleep 100"#);
        let mut workers = Reports(vec![
            Proc::spawn(&deaf, "worker", "w2", &dir, &dir, &[]).unwrap()
        ]);
        let pid = workers.0[0].child.id();
        while !workers.0[0].report_path().exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = workers.stop().unwrap_err();
        assert!(e.contains("w2 ignored SIGTERM"), "{e}");
        assert!(!alive(pid));
    }
}
