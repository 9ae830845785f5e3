//! The queue benchmark's runner: starts one redis-server, runs every
//! contender's chain and bulk scenarios against it (each contender a command
//! started in several processes, one role each; see docs/queue-benchmarks.md
//! for the protocol), and prints a markdown table per scenario.
//!
//! ```text
//! scripts/queue-bench                         # builds what is needed, then runs
//! scripts/queue-bench --quick --only baler
//! ```

mod procs;
mod redis;
mod table;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procs::{Proc, Reports};
use redis::{RedisServer, Target};

/// Workers and their concurrency per scenario, as the protocol fixes them.
const CHAIN_WORKERS: usize = 6;
const CHAIN_CONCURRENCY: u64 = 2;
const CHAINS: u64 = 5;
const BULK_WORKERS: usize = 4;
const BULK_CONCURRENCY: u64 = 50;
const BULK_BATCH: u64 = 1000;
/// How long workers may take to write their first report.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// Slack past the chain producer's own 10 s final wait before it counts as hung.
const CHAIN_SLACK: Duration = Duration::from_secs(60);

/// The libraries measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Baler,
    BeeQueue,
    Bullmq,
    BullmqRs,
    Apalis,
}

impl Contender {
    const ALL: [Contender; 5] = [
        Contender::Baler,
        Contender::BeeQueue,
        Contender::Bullmq,
        Contender::BullmqRs,
        Contender::Apalis,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Baler => "baler",
            Contender::BeeQueue => "bee-queue",
            Contender::Bullmq => "bullmq",
            Contender::BullmqRs => "bullmq-rs",
            Contender::Apalis => "apalis",
        }
    }

    fn parse(name: &str) -> Option<Contender> {
        Contender::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The command that runs one role, or why it cannot run here.
    fn command(self, dir: &Path) -> Result<procs::Command, String> {
        let native = |path: PathBuf, build: &str| {
            if path.is_file() {
                Ok(procs::Command {
                    program: path.into_os_string(),
                    args: Vec::new(),
                })
            } else {
                Err(format!("{} is missing: {build}", path.display()))
            }
        };
        let node = |script: &str| {
            let path = dir.join("node").join(script);
            if !path.is_file() {
                return Err(format!("{} is missing", path.display()));
            }
            if !dir.join("node/node_modules").is_dir() {
                return Err(format!(
                    "{} is missing: run `npm ci` in {}",
                    dir.join("node/node_modules").display(),
                    dir.join("node").display()
                ));
            }
            if facts::output("node", &["--version"]).is_none() {
                return Err("`node` is not on PATH: install Node.js 18 or later".into());
            }
            Ok(procs::Command {
                program: "node".into(),
                args: vec![path.into_os_string()],
            })
        };
        match self {
            Contender::Baler => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find the runner's own path: {e}"))?;
                let bin = exe.with_file_name("bq-baler");
                native(
                    bin,
                    "build it with `cargo build --release --manifest-path crates/baler-queue-bench/Cargo.toml`",
                )
            }
            Contender::BeeQueue => node("bee.js"),
            Contender::Bullmq => node("bullmq.js"),
            Contender::BullmqRs => native(
                dir.join("peers/bullmq-rs/target/release/bq-bullmq-rs"),
                "build it with `cargo build --release --manifest-path peers/bullmq-rs/Cargo.toml`",
            ),
            Contender::Apalis => native(
                dir.join("peers/apalis/target/release/bq-apalis"),
                "build it with `cargo build --release --manifest-path peers/apalis/Cargo.toml`",
            ),
        }
    }
}

/// A command line the runner cannot use, and what to change.
#[derive(Debug)]
enum ArgError {
    MissingValue(&'static str),
    NotANumber { flag: &'static str, value: String },
    Zero(&'static str),
    UnknownContender(String),
    NoContender,
    Unknown(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Contender::ALL.iter().map(|c| c.name()).collect();
        match self {
            ArgError::MissingValue(flag) => write!(f, "{flag} needs a value after it"),
            ArgError::NotANumber { flag, value } => {
                write!(
                    f,
                    "{flag} {value:?}: give a whole number (for example {flag} 60)"
                )
            }
            ArgError::Zero(flag) => write!(f, "{flag} must be at least 1"),
            ArgError::UnknownContender(name) => write!(
                f,
                "--only: no contender named {name:?}; the contenders are {}",
                names.join(", ")
            ),
            ArgError::NoContender => write!(
                f,
                "--only names no contender; give for example --only baler,bullmq"
            ),
            ArgError::Unknown(arg) => write!(f, "unknown argument {arg:?}; see --help"),
        }
    }
}

impl std::error::Error for ArgError {}

const HELP: &str = "queue-bench: baler's durable queue side by side with bee-queue, BullMQ,
bullmq-official (bullmq-rs) and apalis-redis on one redis-server.

Options:
  --chain-seconds N   how long the chain scenario runs (default 300)
  --bulk-jobs N       jobs in the bulk scenario (default 1000000)
  --bulk-timeout N    seconds the bulk scenario may take before it is called hung (default 1200)
  --quick             --chain-seconds 20 --bulk-jobs 20000 (flags given explicitly win)
  --only LIST         contenders to run, comma-separated: baler,bee-queue,bullmq,bullmq-rs,apalis
  --out FILE          write the markdown there instead of to stdout
  --shards            instead: baler's bulk scenario with 1 shard on one redis-server, then
                      with 3 shards on a 3-master Redis Cluster the runner makes (needs redis-cli)
";

#[derive(Debug)]
struct Args {
    chain_seconds: u64,
    bulk_jobs: u64,
    bulk_timeout: Duration,
    quick: bool,
    only: Vec<Contender>,
    out: Option<PathBuf>,
    shards: bool,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, ArgError> {
    fn number(flag: &'static str, value: Option<String>) -> Result<u64, ArgError> {
        let value = value.ok_or(ArgError::MissingValue(flag))?;
        match value.replace('_', "").parse::<u64>() {
            Ok(0) => Err(ArgError::Zero(flag)),
            Ok(n) => Ok(n),
            Err(_) => Err(ArgError::NotANumber { flag, value }),
        }
    }
    let (mut chain_seconds, mut bulk_jobs, mut bulk_timeout) = (None, None, 1200);
    let mut quick = false;
    let mut shards = false;
    let mut only = Contender::ALL.to_vec();
    let mut out = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--chain-seconds" => chain_seconds = Some(number("--chain-seconds", args.next())?),
            "--bulk-jobs" => bulk_jobs = Some(number("--bulk-jobs", args.next())?),
            "--bulk-timeout" => bulk_timeout = number("--bulk-timeout", args.next())?,
            "--quick" => quick = true,
            "--shards" => shards = true,
            "--only" => {
                let list = args.next().ok_or(ArgError::MissingValue("--only"))?;
                only = Vec::new();
                for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let c = Contender::parse(name)
                        .ok_or_else(|| ArgError::UnknownContender(name.to_owned()))?;
                    if !only.contains(&c) {
                        only.push(c);
                    }
                }
                if only.is_empty() {
                    return Err(ArgError::NoContender);
                }
            }
            "--out" => {
                out = Some(PathBuf::from(
                    args.next().ok_or(ArgError::MissingValue("--out"))?,
                ))
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(ArgError::Unknown(other.to_owned())),
        }
    }
    Ok(Some(Args {
        chain_seconds: chain_seconds.unwrap_or(if quick { 20 } else { 300 }),
        bulk_jobs: bulk_jobs.unwrap_or(if quick { 20_000 } else { 1_000_000 }),
        bulk_timeout: Duration::from_secs(bulk_timeout),
        quick,
        only,
        out,
        shards,
    }))
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return;
        }
        Err(e) => {
            eprintln!("queue-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("queue-bench: {e}");
        std::process::exit(1);
    }
}

/// What one contender's chain run gave.
#[derive(Debug, Clone)]
pub(crate) struct ChainResult {
    pub(crate) seconds: f64,
    pub(crate) enqueued: u64,
    pub(crate) advanced: u64,
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) ran: u64,
    pub(crate) calls: u64,
    pub(crate) rss_kb: Vec<u64>,
    pub(crate) top: Vec<(String, u64)>,
    /// Redis's `used_memory` at the end of the run, in bytes.
    pub(crate) redis_memory: u64,
}

/// What one contender's bulk run gave.
#[derive(Debug, Clone)]
pub(crate) struct BulkResult {
    pub(crate) jobs: u64,
    pub(crate) enqueued: u64,
    pub(crate) enqueue_seconds: f64,
    pub(crate) end_to_end: f64,
    pub(crate) producer_exit: f64,
    pub(crate) ran: u64,
    pub(crate) calls: u64,
    pub(crate) top: Vec<(String, u64)>,
    /// Redis's `used_memory` at the end of the run, in bytes.
    pub(crate) redis_memory: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let scratch = std::env::temp_dir().join(format!("baler-queue-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let mut contenders = Vec::new();
    let mut skipped = Vec::new();
    for c in &args.only {
        match c.command(&dir) {
            Ok(cmd) => contenders.push((*c, cmd)),
            Err(why) => {
                eprintln!("queue-bench: skipping {}: {why}", c.name());
                skipped.push((*c, why));
            }
        }
    }
    if contenders.is_empty() {
        return Err("no contender can run here (see the messages above)".into());
    }
    if args.shards {
        return run_shards(args, &dir, &scratch);
    }
    let server = Target::single(RedisServer::start(&scratch.join("redis"))?);
    eprintln!("queue-bench: redis-server on {}", server.url());
    let mut chain = Vec::new();
    let mut bulk = Vec::new();
    for (c, cmd) in &contenders {
        eprintln!("queue-bench: {} chain, {} s", c.name(), args.chain_seconds);
        let r = run_chain(&server, *c, cmd, &dir, &scratch, args.chain_seconds);
        match &r {
            Ok(r) => eprintln!(
                "queue-bench: {} chain: {:.0} jobs/s, {} ran − {} delivered, {} commands/job",
                c.name(),
                r.jobs_per_s(),
                r.ran,
                r.delivered,
                r.calls_per_job()
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or_else(|| "no".into())
            ),
            Err(e) => eprintln!("queue-bench: {} chain failed: {e}", c.name()),
        }
        chain.push((*c, r));
        eprintln!("queue-bench: {} bulk, {} jobs", c.name(), args.bulk_jobs);
        let r = run_bulk(
            &server,
            *c,
            cmd,
            &dir,
            &scratch,
            args.bulk_jobs,
            args.bulk_timeout,
        );
        match &r {
            Ok(r) => eprintln!(
                "queue-bench: {} bulk: {:.1} s end to end, {:.0} jobs/s, {} commands/job",
                c.name(),
                r.end_to_end,
                r.jobs_per_s(),
                r.calls_per_job()
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or_else(|| "no".into())
            ),
            Err(e) => eprintln!("queue-bench: {} bulk failed: {e}", c.name()),
        }
        bulk.push((*c, r));
    }
    let failed = chain.iter().any(|(_, r)| r.is_err()) || bulk.iter().any(|(_, r)| r.is_err());
    let markdown = table::render(&table::Run {
        args,
        dir: &dir,
        server_version: facts::output("redis-server", &["--version"]),
        chain: &chain,
        bulk: &bulk,
        skipped: &skipped,
    });
    drop(server);
    if failed {
        eprintln!(
            "queue-bench: logs of the failed runs are kept in {}",
            scratch.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    match &args.out {
        Some(path) => std::fs::write(path, &markdown)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{markdown}"),
    }
    if failed {
        return Err("some runs failed or hung: see \"Failures\" in the report".into());
    }
    Ok(())
}

/// baler's bulk scenario on one redis-server with one shard, then on a
/// 3-master Redis Cluster with three shards: what sharding gives on this
/// machine.
fn run_shards(args: &Args, dir: &Path, scratch: &Path) -> Result<(), String> {
    let cmd = Contender::Baler.command(dir)?;
    let mut rows = Vec::new();
    for masters in [1usize, 3] {
        let place = scratch.join(format!("shards-{masters}"));
        let target = if masters == 1 {
            Target::single(RedisServer::start(&place.join("redis"))?)
        } else {
            Target::cluster(&place.join("cluster"), masters)?
        };
        eprintln!(
            "queue-bench: baler bulk, {} jobs, {masters} shard(s) on {}",
            args.bulk_jobs,
            if masters == 1 {
                "one redis-server"
            } else {
                "a Redis Cluster"
            }
        );
        let r = run_bulk(
            &target,
            Contender::Baler,
            &cmd,
            dir,
            &place,
            args.bulk_jobs,
            args.bulk_timeout,
        )?;
        eprintln!(
            "queue-bench: {masters} shard(s): {:.1} s end to end, {:.0} jobs/s",
            r.end_to_end,
            r.jobs_per_s()
        );
        rows.push((masters, r));
    }
    let mut md = format!(
        "### Shards: baler's bulk scenario, {} jobs, 4 worker processes × concurrency 50\n\n\
         | setup | shards | enqueue (s) | end to end (s) | jobs/s | Redis commands/job | against 1 shard |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
        table::thousands(args.bulk_jobs)
    );
    let base = rows.first().map(|(_, r)| r.jobs_per_s()).unwrap_or(1.0);
    for (masters, r) in &rows {
        md.push_str(&format!(
            "| {} | {masters} | {:.2} | {:.2} | {:.0} | {} | {:.2}× |\n",
            if *masters == 1 {
                "one redis-server".to_owned()
            } else {
                format!("Redis Cluster, {masters} masters")
            },
            r.enqueue_seconds,
            r.end_to_end,
            r.jobs_per_s(),
            r.calls_per_job()
                .map(|x| format!("{x:.1}"))
                .unwrap_or_else(|| "–".into()),
            r.jobs_per_s() / base.max(f64::MIN_POSITIVE),
        ));
    }
    let _ = std::fs::remove_dir_all(scratch);
    match &args.out {
        Some(path) => std::fs::write(path, &md)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{md}"),
    }
    Ok(())
}

/// Flushes Redis, resets its counters, and starts `n` workers with
/// `concurrency`, waiting until each has written its first report.
fn start_workers(
    target: &Target,
    cmd: &procs::Command,
    dir: &Path,
    run_dir: &Path,
    env: &[(&str, String)],
    n: usize,
    concurrency: u64,
) -> Result<Vec<Proc>, String> {
    target.reset()?;
    let mut workers = Vec::new();
    for i in 0..n {
        let mut env = env.to_vec();
        env.push(("BQB_CONCURRENCY", concurrency.to_string()));
        workers.push(Proc::spawn(
            cmd,
            "worker",
            &format!("worker-{i}"),
            dir,
            run_dir,
            &env,
        )?);
    }
    let deadline = Instant::now() + READY_LIMIT;
    while !workers.iter().all(|w| w.report_path().exists()) {
        for w in &mut workers {
            w.check_running()?;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the workers did not write their first report within {} s",
                READY_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(workers)
}

fn scenario_env(target: &Target, queue: String) -> Vec<(&'static str, String)> {
    let mut env = target.env();
    env.push(("BQB_QUEUE", queue));
    env
}

fn run_chain(
    server: &Target,
    contender: Contender,
    cmd: &procs::Command,
    dir: &Path,
    scratch: &Path,
    seconds: u64,
) -> Result<ChainResult, String> {
    let run_dir = procs::run_dir(scratch, contender.name(), "chain")?;
    let env = scenario_env(server, format!("bqb-chain-{}", std::process::id()));
    let workers = start_workers(
        server,
        cmd,
        dir,
        &run_dir,
        &env,
        CHAIN_WORKERS,
        CHAIN_CONCURRENCY,
    )?;
    let mut workers = Reports(workers);
    let mut penv = env.clone();
    penv.push(("BQB_CHAINS", CHAINS.to_string()));
    penv.push(("BQB_SECONDS", seconds.to_string()));
    let mut producer = Proc::spawn(cmd, "chain", "producer", dir, &run_dir, &penv)?;
    let limit = Duration::from_secs(seconds + 10) + CHAIN_SLACK;
    producer.wait_exit(limit)?;
    let (calls, top) = server.commandstats()?;
    let redis_memory = server.used_memory()?;
    let ran = workers.stop()?;
    let report = producer.report()?;
    let field = |name: &str| procs::u64_field(&report, name);
    Ok(ChainResult {
        seconds: procs::f64_field(&report, "seconds")?,
        enqueued: field("enqueued")?,
        advanced: field("advanced")?,
        delivered: field("delivered")?,
        failed: field("failed")?,
        ran,
        calls,
        rss_kb: report
            .get("rss_kb")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as u64)
                    .collect()
            })
            .unwrap_or_default(),
        top,
        redis_memory,
    })
}

fn run_bulk(
    server: &Target,
    contender: Contender,
    cmd: &procs::Command,
    dir: &Path,
    scratch: &Path,
    jobs: u64,
    timeout: Duration,
) -> Result<BulkResult, String> {
    let run_dir = procs::run_dir(scratch, contender.name(), "bulk")?;
    let env = scenario_env(server, format!("bqb-bulk-{}", std::process::id()));
    let workers = start_workers(
        server,
        cmd,
        dir,
        &run_dir,
        &env,
        BULK_WORKERS,
        BULK_CONCURRENCY,
    )?;
    let mut workers = Reports(workers);
    let mut penv = env.clone();
    penv.push(("BQB_JOBS", jobs.to_string()));
    penv.push(("BQB_BATCH", BULK_BATCH.to_string()));
    let start = Instant::now();
    let mut producer = Proc::spawn(cmd, "bulk", "producer", dir, &run_dir, &penv)?;
    let mut end_to_end = None;
    let mut producer_exit = None;
    while end_to_end.is_none() || producer_exit.is_none() {
        if producer_exit.is_none() && producer.exited()? {
            producer_exit = Some(start.elapsed().as_secs_f64());
        }
        if end_to_end.is_none() {
            workers.check_running()?;
            if workers.ran() >= jobs {
                end_to_end = Some(start.elapsed().as_secs_f64());
            }
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "hung: after {} s the workers had run {} of {jobs} jobs and the producer {}",
                timeout.as_secs(),
                workers.ran(),
                if producer_exit.is_some() {
                    "had exited"
                } else {
                    "was still running"
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (calls, top) = server.commandstats()?;
    let redis_memory = server.used_memory()?;
    let ran = workers.stop()?;
    let report = producer.report()?;
    Ok(BulkResult {
        jobs,
        enqueued: procs::u64_field(&report, "enqueued")?,
        enqueue_seconds: procs::f64_field(&report, "seconds")?,
        end_to_end: end_to_end.unwrap_or_default(),
        producer_exit: producer_exit.unwrap_or_default(),
        ran,
        calls,
        top,
        redis_memory,
    })
}

/// Facts about the machine and the contenders, for the report.
mod facts {
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// The first line of a command's standard output, if it ran and succeeded.
    pub(crate) fn output(program: &str, args: &[&str]) -> Option<String> {
        let out = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().next().map(|l| l.trim().to_owned())
    }

    /// The version of an npm package installed in node/node_modules.
    pub(crate) fn npm_version(dir: &Path, package: &str) -> Option<String> {
        let text = std::fs::read_to_string(
            dir.join("node/node_modules")
                .join(package)
                .join("package.json"),
        )
        .ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json.get("version")?.as_str().map(str::to_owned)
    }

    /// The version of `package` in a Cargo.lock.
    pub(crate) fn locked_version(lock: &Path, package: &str) -> Option<String> {
        let text = std::fs::read_to_string(lock).ok()?;
        let needle = format!("name = \"{package}\"");
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == needle {
                let version = lines.next()?.trim();
                return version
                    .strip_prefix("version = \"")
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_owned);
            }
        }
        None
    }

    /// A line of /proc/cpuinfo or /proc/meminfo.
    pub(crate) fn proc_field(file: &str, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(file).ok()?;
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Option<Args>, ArgError> {
        parse_args(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn quick_shortens_both_scenarios_and_explicit_flags_win() {
        let a = parse("--quick").unwrap().unwrap();
        assert_eq!((a.chain_seconds, a.bulk_jobs), (20, 20_000));
        let a = parse("--bulk-jobs 5000 --quick").unwrap().unwrap();
        assert_eq!((a.chain_seconds, a.bulk_jobs), (20, 5000));
        let a = parse("").unwrap().unwrap();
        assert_eq!((a.chain_seconds, a.bulk_jobs), (300, 1_000_000));
        assert_eq!(a.only.len(), 5);
    }

    #[test]
    fn only_names_contenders_and_refuses_others() {
        let a = parse("--only bullmq,baler,bullmq").unwrap().unwrap();
        assert_eq!(a.only, vec![Contender::Bullmq, Contender::Baler]);
        let e = parse("--only baler,sidekiq").unwrap_err();
        assert!(
            matches!(&e, ArgError::UnknownContender(n) if n == "sidekiq"),
            "{e}"
        );
        assert!(e.to_string().contains("bee-queue"));
        assert!(matches!(
            parse("--only ,").unwrap_err(),
            ArgError::NoContender
        ));
        assert!(matches!(
            parse("--chain-seconds 0").unwrap_err(),
            ArgError::Zero(_)
        ));
        assert!(matches!(
            parse("--bulk-jobs x").unwrap_err(),
            ArgError::NotANumber { .. }
        ));
        assert!(matches!(
            parse("--out").unwrap_err(),
            ArgError::MissingValue("--out")
        ));
        assert!(parse("--help").unwrap().is_none());
    }

    #[test]
    fn a_missing_contender_says_how_to_get_it() {
        let empty = std::env::temp_dir().join(format!("bqb-empty-{}", std::process::id()));
        let e = Contender::Apalis.command(&empty).unwrap_err();
        assert!(
            e.contains("cargo build --release --manifest-path peers/apalis"),
            "{e}"
        );
        let e = Contender::Bullmq.command(&empty).unwrap_err();
        assert!(e.contains("bullmq.js is missing"), "{e}");
    }

    #[test]
    fn a_lock_file_gives_the_version() {
        let path = std::env::temp_dir().join(format!("bqb-lock-{}", std::process::id()));
        std::fs::write(
            &path,
            "[[package]]\nname = \"apalis\"\nversion = \"0.7.0\"\n\n[[package]]\nname = \"apalis-redis\"\nversion = \"1.0.2\"\n",
        )
        .unwrap();
        assert_eq!(
            facts::locked_version(&path, "apalis-redis").as_deref(),
            Some("1.0.2")
        );
        assert_eq!(facts::locked_version(&path, "redis"), None);
        let _ = std::fs::remove_file(&path);
    }
}
