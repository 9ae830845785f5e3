//! The document: `docs/benchmarks.md`, generated from one run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::waiting::{Waiter, Waiting};
use crate::workloads::worker_threads;
use crate::{loader_cases, Results, Settings};

/// Median, min and max of one row's repetitions.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of `results`' metric `f`: an error if it did not run or one
/// repetition failed.
pub fn summarize<T>(results: &[Result<T, String>], f: impl Fn(&T) -> f64) -> Result<Stat, String> {
    let mut values = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(v) => values.push(f(v)),
            Err(e) => return Err(e.clone()),
        }
    }
    if values.is_empty() {
        return Err("not run".to_owned());
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let median = if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    };
    Ok(Stat {
        median,
        min: values[0],
        max: values[values.len() - 1],
    })
}

/// 1234567.8 -> "1,234,568".
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if !(a.is_finite() && b.is_finite() && b > 0.0) {
        return "—".to_owned();
    }
    let x = a / b;
    if x >= 100.0 {
        format!("{}×", thousands(x))
    } else if x >= 0.1 {
        format!("{x:.2}×")
    } else {
        // Keep two significant digits: 0.0006× says more than 0.00×.
        let digits = (-x.log10()).ceil() as usize + 1;
        format!("{x:.digits$}×")
    }
}

/// What the document says about where and how it was made.
pub struct Meta {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub versions: Vec<(String, String)>,
    pub elapsed: Duration,
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3_600,
        (s / 60) % 60
    )
}

fn cpu() -> (String, usize) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_owned())
        .unwrap_or_else(|| "unknown (no /proc/cpuinfo)".to_owned());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    (model, cores)
}

fn memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb / 1_048_576.0))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The versions the lockfile resolved for the crates that matter here.
fn versions(lockfile: &Path) -> Vec<(String, String)> {
    const WANTED: &[&str] = &[
        "baler",
        "tokio",
        "tokio-stream",
        "batch-aint-one",
        "batched-fn",
        "flume",
        "async-graphql",
        "dataloader",
        "plotters",
    ];
    let text = std::fs::read_to_string(lockfile).unwrap_or_default();
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let Some(n) = name.take() {
                if WANTED.contains(&n.as_str()) {
                    out.push((n, v.trim_matches('"').to_owned()));
                }
            }
        }
    }
    out.sort_by_key(|(n, _)| WANTED.iter().position(|w| w == n));
    out
}

impl Meta {
    pub fn collect(_settings: &Settings, elapsed: Duration) -> Meta {
        let (cpu, cores) = cpu();
        let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Meta {
            date: utc_now(),
            cpu,
            cores,
            memory: memory(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| format!("Linux {}", k.trim()))
                .unwrap_or_else(|_| std::env::consts::OS.to_owned()),
            rustc,
            versions: versions(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")),
            elapsed,
        }
    }
}

/// The command as run, with the settings that differ from the defaults.
fn command() -> String {
    let mut env: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BALER_BENCH_") && k != "BALER_BENCH_OUT")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    env.push("./scripts/bench".to_owned());
    env.join(" ")
}

fn index_of(names: &[&str], name: &str) -> Option<usize> {
    names.iter().position(|n| *n == name)
}

/// Renders the document.
pub fn markdown(s: &Settings, meta: &Meta, r: &Results) -> String {
    let mut d = String::new();
    let w = &mut d;
    let floor = index_of(&r.names, "floor");
    let baler = index_of(&r.names, "baler");
    let window_ms = s.window.as_millis();

    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "baler against the batching crates Rust services use today, and against the raw \
         floor (a tokio mpsc + oneshot batching loop: the least an async batcher with \
         per-operation results can cost), measured side by side in one run. Every number \
         below comes from the run described here; the document and the chart are generated \
         by it, not written by hand. Ratios within this run are what count: the machine is \
         shared and noisy, so absolute figures vary from run to run.\n"
    );
    let _ = writeln!(w, "## The run\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| date | {} |", meta.date);
    let _ = writeln!(
        w,
        "| machine | {} cores, {} ({}), {} |",
        meta.cores, meta.cpu, meta.memory, meta.kernel
    );
    let _ = writeln!(w, "| compiler | {} (release profile) |", meta.rustc);
    let _ = writeln!(w, "| command | `{}` |", command());
    let _ = writeln!(
        w,
        "| repetitions | {} per row, interleaved; median, min and max over them{} |",
        s.reps,
        if s.reps >= 5 {
            ""
        } else {
            " (the default is 5, changed for this run)"
        }
    );
    let _ = writeln!(
        w,
        "| measurement | {window_ms} ms of closed-loop operations per throughput, latency and loader row{} |",
        if window_ms == 1000 { "" } else { " (the default is 1,000 ms, changed for this run)" }
    );
    let _ = writeln!(
        w,
        "| memory | {} operations waiting{} |",
        thousands(s.pending as f64),
        if s.pending == 1_000_000 {
            ""
        } else {
            " (the default is 1,000,000, changed for this run)"
        }
    );
    let _ = writeln!(
        w,
        "| runtime | a fresh tokio multi-thread runtime per measurement, {} worker threads |",
        worker_threads()
    );
    let _ = writeln!(
        w,
        "| waiting submitters | {} submitters waiting for room{} |",
        thousands(s.waiters as f64),
        if s.waiters == 1_000_000 {
            ""
        } else {
            " (the default is 1,000,000, changed for this run)"
        }
    );
    let t = r.steady;
    let _ = writeln!(
        w,
        "| slow stretches | a {} ms probe (the floor, {} submitters) before and after every timed \
         measurement; {} of {} measurements taken again ({} takes set aside) because a probe \
         around them ran below {:.0}% of the median probe of the last {} s{}; the probes' median: {} ops/s |",
        s.probe.as_millis(),
        crate::steady::PROBE_SUBMITTERS,
        t.retaken_measurements,
        t.measurements,
        t.retaken,
        crate::steady::STEADY * 100.0,
        crate::steady::MEMORY.as_secs(),
        if t.kept_slow == 0 {
            String::new()
        } else {
            format!(
                ", {} kept as measured after {} takes",
                t.kept_slow,
                crate::steady::RETAKES + 1
            )
        },
        thousands(t.median)
    );
    let _ = writeln!(w, "| took | {:.0} s |", meta.elapsed.as_secs_f64());
    let _ = writeln!(w);

    let _ = writeln!(w, "Crate versions, from `crates/baler-bench/Cargo.lock`:\n");
    let _ = writeln!(w, "| crate | version |\n|---|---|");
    for (n, v) in &meta.versions {
        let _ = writeln!(w, "| {n} | {v} |");
    }
    let _ = writeln!(w);

    let _ = writeln!(w, "## The contenders\n");
    let _ = writeln!(
        w,
        "Every handler is a no-op that answers each operation; batches hold at most 100 \
         operations, and a partial batch waits at most 1 ms where the contender has such a \
         setting. Everything else is each crate's default.\n"
    );
    let _ = writeln!(w, "| contender | configuration |\n|---|---|");
    for (n, c) in r.names.iter().zip(&r.configs) {
        let _ = writeln!(w, "| {n} | {c} |");
    }
    for (n, c) in r.loader_names.iter().zip(&r.loader_configs) {
        let _ = writeln!(w, "| {n} (loader) | {c} |");
    }
    let _ = writeln!(w);

    // Goals.
    let _ = writeln!(w, "## Goals, from this run\n");
    waiting_goal(w, r);
    goals(w, s, r, floor, baler);
    let _ = writeln!(w);

    let _ = writeln!(
        w,
        "![Throughput against submitters, log-log](benchmarks.svg)\n"
    );

    // Throughput.
    let _ = writeln!(w, "## Throughput\n");
    let _ = writeln!(
        w,
        "N closed-loop submitters, each submitting one operation and awaiting its result \
         before the next, for {window_ms} ms. Operations per second, higher is better; \
         the ratios compare medians.\n"
    );
    let _ = writeln!(
        w,
        "| submitters | contender | median ops/s | min | max | × floor | × baler | mean batch |"
    );
    let _ = writeln!(w, "|---:|---|---:|---:|---:|---:|---:|---:|");
    for (ni, &n) in s.submitters.iter().enumerate() {
        let med = |ci: Option<usize>| {
            ci.and_then(|ci| summarize(&r.throughput[ci][ni], |t| t.ops_per_sec).ok())
                .map(|s| s.median)
                .unwrap_or(f64::NAN)
        };
        let (f, b) = (med(floor), med(baler));
        for (ci, name) in r.names.iter().enumerate() {
            match summarize(&r.throughput[ci][ni], |t| t.ops_per_sec) {
                Ok(st) => {
                    let mb = mean_batch(&r.throughput[ci][ni]);
                    let _ = writeln!(
                        w,
                        "| {n} | {name} | {} | {} | {} | {} | {} | {mb:.1} |",
                        thousands(st.median),
                        thousands(st.min),
                        thousands(st.max),
                        ratio(st.median, f),
                        ratio(st.median, b),
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "| {n} | {name} | cannot: {e} | | | | | |");
                }
            }
        }
    }
    let _ = writeln!(w);

    // Mean batch at 256.
    if let Some(ni) = s.submitters.iter().position(|&n| n == 256) {
        let _ = writeln!(w, "## Batches formed at 256 submitters\n");
        let _ = writeln!(
            w,
            "The mean batch size each contender actually formed in the 256-submitter \
             throughput rows (operations over batches its handler saw, all repetitions).\n"
        );
        let _ = writeln!(w, "| contender | mean batch size |\n|---|---:|");
        for (ci, name) in r.names.iter().enumerate() {
            let _ = writeln!(w, "| {name} | {:.1} |", mean_batch(&r.throughput[ci][ni]));
        }
        let _ = writeln!(w);
    }

    // Latency.
    let _ = writeln!(w, "## Latency at low load\n");
    let _ = writeln!(
        w,
        "One submitter, one operation at a time, for {window_ms} ms: the time from submit to \
         result of each operation. Microseconds, lower is better; the median, min and max \
         are over the repetitions' percentiles.\n"
    );
    let _ = writeln!(
        w,
        "| contender | p50 µs (min–max) | p99 µs (min–max) | p50 × floor | p50 × baler | p99 × baler |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
    let lat = |ci: Option<usize>, p99: bool| {
        ci.and_then(|ci| summarize(&r.latency[ci], |l| if p99 { l.p99_us } else { l.p50_us }).ok())
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
    };
    for (ci, name) in r.names.iter().enumerate() {
        let p50 = summarize(&r.latency[ci], |l| l.p50_us);
        let p99 = summarize(&r.latency[ci], |l| l.p99_us);
        match (p50, p99) {
            (Ok(a), Ok(b)) => {
                let _ = writeln!(
                    w,
                    "| {name} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {} | {} | {} |",
                    a.median,
                    a.min,
                    a.max,
                    b.median,
                    b.min,
                    b.max,
                    ratio(a.median, lat(floor, false)),
                    ratio(a.median, lat(baler, false)),
                    ratio(b.median, lat(baler, true)),
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = writeln!(w, "| {name} | cannot: {e} | | | | |");
            }
        }
    }
    let _ = writeln!(w);

    // Loader.
    loader_section(w, s, r);

    // Memory.
    let _ = writeln!(w, "## Memory\n");
    let _ = writeln!(
        w,
        "Bytes per pending operation with {} operations waiting: the handler holds its \
         batches back, one task submits every operation (each a boxed future polled once, \
         so that it is submitted and waits for its result), and a counting allocator \
         reports the bytes allocated and not freed from before the first submit until \
         300 ms after the last. This counts the caller's side (the future holding the \
         result slot) and the batcher's (queues, channels, per-operation state). Lower is \
         better.\n",
        thousands(s.pending as f64)
    );
    let _ = writeln!(
        w,
        "| contender | median bytes/op | min | max | × floor | × baler | of which the caller's future |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|");
    let mem = |ci: Option<usize>| {
        ci.and_then(|ci| summarize(&r.memory[ci], |m| m.bytes_per_op).ok())
            .map(|s| s.median)
            .unwrap_or(f64::NAN)
    };
    for (ci, name) in r.names.iter().enumerate() {
        match summarize(&r.memory[ci], |m| m.bytes_per_op) {
            Ok(st) => {
                let fut = r.memory[ci].iter().flatten().map(|m| m.future_bytes).next();
                let _ = writeln!(
                    w,
                    "| {name} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} |",
                    st.median,
                    st.min,
                    st.max,
                    ratio(st.median, mem(floor)),
                    ratio(st.median, mem(baler)),
                    fut.unwrap_or(f64::NAN),
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {name} | cannot: {e} | | | | | |");
            }
        }
    }
    let _ = writeln!(w);

    waiting_section(w, s, r);

    methodology(w, s);

    let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("analysis.md");
    if let Ok(text) = std::fs::read_to_string(notes) {
        let _ = writeln!(w, "{}", text.trim_end());
    }
    d
}

fn mean_batch(samples: &[Result<crate::workloads::Throughput, String>]) -> f64 {
    let (ops, batches) = samples
        .iter()
        .flatten()
        .fold((0u64, 0u64), |(o, b), t| (o + t.ops, b + t.batches));
    ops as f64 / batches.max(1) as f64
}

/// baler's figure per waiting submitter may be at most this many times a
/// waiting tokio mpsc send's.
const WAITING_GOAL: f64 = 1.1;

/// The median bytes per waiting submitter of `waiter`, if it ran cleanly.
fn waiting_median(r: &Results, waiter: Waiter) -> Option<f64> {
    let i = r.waiters.iter().position(|&w| w == waiter)?;
    summarize(&r.waiting[i], |m| m.bytes_per_waiter)
        .ok()
        .map(|s| s.median)
}

fn waiting_goal(w: &mut String, r: &Results) {
    if r.waiting.iter().all(|rows| rows.is_empty()) {
        return;
    }
    match (
        waiting_median(r, Waiter::Baler),
        waiting_median(r, Waiter::TokioMpsc),
    ) {
        (Some(b), Some(t)) => {
            let x = b / t;
            let _ = writeln!(
                w,
                "- **A waiting submitter within {WAITING_GOAL}× of a waiting tokio mpsc send: {}** \
                 (baler {b:.0} bytes per waiting submitter, tokio mpsc {t:.0}: {x:.2}×).",
                if x <= WAITING_GOAL { "met" } else { "not met" },
            );
        }
        _ => {
            let _ = writeln!(
                w,
                "- A waiting submitter within {WAITING_GOAL}× of a waiting tokio mpsc send: not \
                 assessed (a row of the waiting-submitter table did not run or failed)."
            );
        }
    }
}

fn waiting_section(w: &mut String, s: &Settings, r: &Results) {
    let _ = writeln!(w, "## Waiting submitters\n");
    let _ = writeln!(
        w,
        "What one submitter costs while backpressure holds it. A bound of {} operations is \
         filled and never drains (baler's handler never returns; the channel's receiver never \
         reads), then {} tasks each wait for room, in `batcher.submit(op).await` or \
         `tx.send(op).await`. Bytes per waiting submitter beyond its task: the spawned \
         future's state plus whatever waiting allocates, on either side; a bare task's cost \
         is taken out (see how it is measured below). Lower is better.\n",
        thousands(crate::shared::DEFAULT_BUFFER as f64),
        thousands(s.waiters as f64),
    );
    let _ = writeln!(
        w,
        "| waiter | configuration | median bytes/waiter | min | max | × tokio mpsc | of which the future | of which `submit`/`send` | allocated while waiting | bare task beyond its future | with its task |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mpsc = waiting_median(r, Waiter::TokioMpsc).unwrap_or(f64::NAN);
    for (i, waiter) in r.waiters.iter().enumerate() {
        let name = waiter.name();
        let config = waiter.config();
        match summarize(&r.waiting[i], |m| m.bytes_per_waiter) {
            Ok(st) => {
                let field = |f: fn(&Waiting) -> f64| {
                    summarize(&r.waiting[i], f)
                        .map_or_else(|_| "—".to_owned(), |m| format!("{:.0}", m.median))
                };
                let _ = writeln!(
                    w,
                    "| {name} | {config} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    st.median,
                    st.min,
                    st.max,
                    ratio(st.median, mpsc),
                    field(|m| m.future_bytes as f64),
                    field(|m| m.call_bytes as f64),
                    field(|m| m.bytes_per_waiter - m.future_bytes as f64),
                    field(|m| m.task_bytes),
                    field(|m| m.bytes_per_waiter + m.task_bytes),
                );
            }
            Err(e) => {
                let _ = writeln!(w, "| {name} | {config} | cannot: {e} | | | | | | | | |");
            }
        }
    }
    let _ = writeln!(w);
}

fn goals(w: &mut String, s: &Settings, r: &Results, floor: Option<usize>, baler: Option<usize>) {
    let (Some(floor), Some(baler)) = (floor, baler) else {
        let _ = writeln!(w, "Not assessed: this run left out the floor or baler.");
        return;
    };
    if let Some(ni) = s.submitters.iter().position(|&n| n == 256) {
        let f = summarize(&r.throughput[floor][ni], |t| t.ops_per_sec);
        let b = summarize(&r.throughput[baler][ni], |t| t.ops_per_sec);
        if let Some(li) = index_of(&r.names, "baler (Linger)") {
            if let (Ok(f), Ok(l)) = (
                summarize(&r.throughput[floor][ni], |t| t.ops_per_sec),
                summarize(&r.throughput[li][ni], |t| t.ops_per_sec),
            ) {
                let _ = writeln!(
                    w,
                    "- baler with `Dispatch::Linger` at 256 submitters: {:.2}× the floor.",
                    l.median / f.median
                );
            }
        }
        if let (Ok(f), Ok(b)) = (f, b) {
            let x = b.median / f.median;
            let _ = writeln!(
                w,
                "- **At least 0.8× the floor's throughput at 256 submitters: {}** (baler {} ops/s, floor {} ops/s: {:.2}×).",
                if x >= 0.8 { "met" } else { "not met" },
                thousands(b.median),
                thousands(f.median),
                x
            );
        }
    }
    let mut behind = Vec::new();
    let mut rows = 0;
    for (ni, &n) in s.submitters.iter().enumerate() {
        let Ok(b) = summarize(&r.throughput[baler][ni], |t| t.ops_per_sec) else {
            continue;
        };
        for (ci, name) in r.names.iter().enumerate() {
            if ci == floor || name.starts_with("baler") {
                continue;
            }
            if let Ok(p) = summarize(&r.throughput[ci][ni], |t| t.ops_per_sec) {
                rows += 1;
                if p.median > b.median {
                    behind.push(format!(
                        "throughput at {n} submitters: {name} {:.2}× baler",
                        p.median / b.median
                    ));
                }
            }
        }
    }
    type Metric = fn(&crate::workloads::Latency) -> f64;
    let checks: [(&str, Metric); 2] = [("p50", |l| l.p50_us), ("p99", |l| l.p99_us)];
    for (label, f) in checks {
        if let Ok(b) = summarize(&r.latency[baler], f) {
            for (ci, name) in r.names.iter().enumerate() {
                if ci == floor || name.starts_with("baler") {
                    continue;
                }
                if let Ok(p) = summarize(&r.latency[ci], f) {
                    rows += 1;
                    if p.median < b.median {
                        behind.push(format!(
                            "latency {label}: {name} {:.1} µs against baler's {:.1} µs",
                            p.median, b.median
                        ));
                    }
                }
            }
        }
    }
    if let Ok(b) = summarize(&r.memory[baler], |m| m.bytes_per_op) {
        for (ci, name) in r.names.iter().enumerate() {
            if ci == floor || name.starts_with("baler") {
                continue;
            }
            if let Ok(p) = summarize(&r.memory[ci], |m| m.bytes_per_op) {
                rows += 1;
                if p.median < b.median {
                    behind.push(format!(
                        "memory: {name} {:.0} bytes/op against baler's {:.0}",
                        p.median, b.median
                    ));
                }
            }
        }
    }
    // The loader rows: baler's Loader (its default settings) against each
    // peer loader, case by case.
    let loader_floor = index_of(&r.loader_names, "floor");
    if let Some(bl) = r.loader_names.iter().position(|n| n.starts_with("baler")) {
        for (ki, &(n, pct)) in loader_cases(s).iter().enumerate() {
            let Ok(b) = summarize(&r.loader[bl][ki], |t| t.ops_per_sec) else {
                continue;
            };
            for (li, name) in r.loader_names.iter().enumerate() {
                if Some(li) == loader_floor || name.starts_with("baler") {
                    continue;
                }
                if let Ok(p) = summarize(&r.loader[li][ki], |t| t.ops_per_sec) {
                    rows += 1;
                    if p.median > b.median {
                        let keys = if pct == 0 {
                            "unique keys".to_owned()
                        } else {
                            format!("{pct}% repeated keys")
                        };
                        behind.push(format!(
                            "loader, {n} callers, {keys}: {name} {:.2}× baler's Loader",
                            p.median / b.median
                        ));
                    }
                }
            }
        }
    }
    if rows == 0 {
        let _ = writeln!(
            w,
            "- baler ahead of every peer on every row: not assessed (no row of this run compares baler with a peer)."
        );
    } else if behind.is_empty() {
        let _ = writeln!(
            w,
            "- **baler ahead of every peer on every row: met** ({rows} comparisons of throughput, latency, loaders and memory)."
        );
    } else {
        let _ = writeln!(
            w,
            "- **baler ahead of every peer on every row: not met.** baler is behind in {} of {rows} comparisons:",
            behind.len()
        );
        for b in behind {
            let _ = writeln!(w, "  - {b}");
        }
    }
    if r.loader_names.iter().all(|n| !n.starts_with("baler")) {
        let _ = writeln!(
            w,
            "- The loader rows have no baler contender yet: they show the peers and the floor."
        );
    }
}

fn loader_section(w: &mut String, s: &Settings, r: &Results) {
    let cases = loader_cases(s);
    let _ = writeln!(w, "## Loaders\n");
    let _ = writeln!(
        w,
        "N closed-loop callers, each loading one key and awaiting its value before the \
         next, for {} ms. With unique keys no two loads ask for the same key; with {}% \
         repeated keys, {}% of the loads ask for one of 32 hot keys (the others for keys \
         nobody else asks for), so a loader that de-duplicates the keys of a batch loads \
         fewer keys than it answers. No contender caches across batches. Loads per second, \
         higher is better. The batchers above cannot express this workload: they have no \
         keys to de-duplicate (they would load every repeated key again).\n",
        s.window.as_millis(),
        s.repeated_pct,
        s.repeated_pct
    );
    let _ = writeln!(
        w,
        "| callers | keys | contender | median loads/s | min | max | × floor | × baler | loads per batch | keys loaded per batch |"
    );
    let _ = writeln!(w, "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let floor = index_of(&r.loader_names, "floor");
    let baler = r.loader_names.iter().position(|n| n.starts_with("baler"));
    for (ki, &(n, pct)) in cases.iter().enumerate() {
        let keys = if pct == 0 {
            "unique".to_owned()
        } else {
            format!("{pct}% repeated")
        };
        let med = |li: Option<usize>| {
            li.and_then(|li| summarize(&r.loader[li][ki], |t| t.ops_per_sec).ok())
                .map(|s| s.median)
                .unwrap_or(f64::NAN)
        };
        let (f, b) = (med(floor), med(baler));
        for (li, name) in r.loader_names.iter().enumerate() {
            let samples = &r.loader[li][ki];
            match summarize(samples, |t| t.ops_per_sec) {
                Ok(st) => {
                    let (ops, batches, k) = samples.iter().flatten().fold((0, 0, 0), |a, t| {
                        (a.0 + t.ops, a.1 + t.batches, a.2 + t.keys)
                    });
                    let _ = writeln!(
                        w,
                        "| {n} | {keys} | {name} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
                        thousands(st.median),
                        thousands(st.min),
                        thousands(st.max),
                        ratio(st.median, f),
                        if baler.is_some() {
                            ratio(st.median, b)
                        } else {
                            "no baler loader yet".into()
                        },
                        ops as f64 / batches.max(1) as f64,
                        k as f64 / batches.max(1) as f64,
                    );
                }
                Err(e) => {
                    let _ = writeln!(w, "| {n} | {keys} | {name} | cannot: {e} | | | | | | |");
                }
            }
        }
    }
    let _ = writeln!(w);
}

fn methodology(w: &mut String, s: &Settings) {
    let _ = writeln!(w, "## How it is measured\n");
    let _ = writeln!(
        w,
        "- **One command.** `./scripts/bench` builds `crates/baler-bench` in release mode and \
           runs every workload on every contender, then writes this file and \
           `docs/benchmarks.svg`. The bench crate is a Cargo workspace of its own, excluded \
           from the root workspace, so the peers and plotters stay out of the default test \
           build.\n\
         - **Fresh runtime per measurement.** Each measurement builds its own tokio \
           multi-thread runtime ({} worker threads) and its own batcher, and tears both down \
           afterwards, so no timers, tasks or warm caches carry over from one contender to \
           the next. Building them is outside the timed section: it runs from spawning the \
           first submitter until the last one has its last result.\n\
         - **Closed loop for a fixed time.** Submitters run until the measurement window \
           ({} ms) ends, then finish the operation they are waiting on; throughput is the \
           operations completed over the time from the first spawn to the last completion. \
           A fixed time rather than a fixed count keeps contenders that wait 1 ms per \
           operation at low load from taking minutes.\n\
         - **Interleaved repetitions.** Each repetition runs every row for every contender; \
           the order of the contenders rotates from one repetition to the next, so drift \
           and noise spread over all of them. Before the repetitions, every contender runs \
           once for a fifth of the window as a warm-up.\n\
         - **Slow stretches taken again.** Other work on a shared machine can slow \
           everything by two to three times for many seconds; a stretch that hits one \
           contender's row in more repetitions than its neighbours' decides a median. So a \
           {} ms probe (the floor at {} submitters) runs right before and right after every \
           timed measurement. When either probe runs below {:.0}% of the median of the \
           probes around measurements of the last {} s, the machine was slow around the \
           measurement: the run waits for a steady probe (at most {} s) and takes the whole \
           measurement again, at most {} times, then keeps the last take as measured. No \
           number is scaled: a take is kept whole or set aside whole, and the table above \
           says how many were set aside.\n\
         - **Same work for all.** Each adapter's handler calls the same counter (one atomic \
           load and two relaxed adds per batch), from which the mean batch size comes. \
           Payloads are `u64`, results `()` (loaders: `u64` values, checked by the \
           caller).\n\
         - **Waiting submitters.** A fresh runtime, a bound filled until it refuses one \
           more (baler's `try_submit` answers `Full` again after a 50 ms pause; the \
           channel's `try_send` answers `Full`), then the counting allocator is zeroed and \
           {} tasks are spawned, each waiting in `submit` or `send`; once every task has \
           started, and {} ms more, the bytes allocated and not freed are read. A row fails \
           if any submitter got room. That count holds each task too: tokio's header, \
           scheduler handle and trailer, the future's room, and padding to the task's \
           alignment. So the same count of bare tasks is measured on a fresh runtime: each \
           runs a future that is never ready and has the size, alignment and output type of \
           the waiter's future (it holds an uninitialised one), so tokio allocates its task \
           exactly as the waiter's. The figure per waiter is the waiters' bytes less the bare \
           tasks', per task, plus the size of the waiter's future: its state, and everything \
           it or the batcher or channel allocated while it waits (a boxed wait, a queue \
           entry). The table also gives, from the same run, the future's size, the \
           `submit(op)` or `send(op)` future's alone, what was allocated beyond the future, \
           what the bare task cost beyond its future, and the two together: what a \
           waiting submitter costs with its task.\n\
         - **Settings.** `BALER_BENCH_REPS` (default 5), `BALER_BENCH_WINDOW_MS` (1000), \
           `BALER_BENCH_SUBMITTERS` (1,16,256,4096), `BALER_BENCH_LOADER_CALLERS` (16,256), \
           `BALER_BENCH_PENDING` (1000000), `BALER_BENCH_WAITERS` (1000000), `BALER_BENCH_PROBE_MS` (100, the probe's window). For profiling, `BALER_BENCH_ONLY=<name>[,<name>...]` (contenders whose name contains one of them) and \
           `BALER_BENCH_WORKLOADS=throughput,latency,loader,memory,waiting` run a subset and print \
           the tables without writing this file.\n",
        worker_threads(),
        s.window.as_millis(),
        s.probe.as_millis(),
        crate::steady::PROBE_SUBMITTERS,
        crate::steady::STEADY * 100.0,
        crate::steady::MEMORY.as_secs(),
        crate::steady::WAIT.as_secs(),
        crate::steady::RETAKES,
        thousands(s.waiters as f64),
        crate::waiting::SETTLE.as_millis(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting_results(baler: Result<f64, String>, mpsc: Result<f64, String>) -> Results {
        let row = |bytes: Result<f64, String>| {
            vec![bytes.map(|b| Waiting {
                bytes_per_waiter: b,
                future_bytes: 64,
                call_bytes: 48,
                task_bytes: 192.0,
            })]
        };
        Results {
            names: Vec::new(),
            configs: Vec::new(),
            throughput: Vec::new(),
            latency: Vec::new(),
            memory: Vec::new(),
            loader_names: Vec::new(),
            loader_configs: Vec::new(),
            loader: Vec::new(),
            waiters: vec![Waiter::Baler, Waiter::TokioMpsc],
            waiting: vec![row(baler), row(mpsc)],
            steady: crate::steady::Tally::default(),
        }
    }

    fn goal_line(r: &Results) -> String {
        let mut w = String::new();
        waiting_goal(&mut w, r);
        w
    }

    #[test]
    fn the_waiting_goal_is_met_within_a_tenth_of_tokio_and_not_beyond() {
        let met = goal_line(&waiting_results(Ok(211.0), Ok(192.0)));
        assert!(met.contains(": met** (baler 211 bytes"), "{met}");
        let missed = goal_line(&waiting_results(Ok(212.0), Ok(192.0)));
        assert!(missed.contains(": not met** (baler 212 bytes"), "{missed}");
    }

    #[test]
    fn a_failed_waiting_row_leaves_the_goal_unassessed() {
        let line = goal_line(&waiting_results(Err("got room".into()), Ok(192.0)));
        assert!(line.contains("not assessed"), "{line}");
        let mut section = String::new();
        let s = Settings {
            reps: 1,
            window: Duration::from_millis(1000),
            submitters: vec![256],
            loader_callers: vec![16],
            repeated_pct: 30,
            pending: 1_000,
            waiters: 10,
            probe: Duration::from_millis(100),
            only: None,
            workloads: vec!["waiting".into()],
            out_dir: std::path::PathBuf::from("unused"),
        };
        let r = waiting_results(Err("3 of 10 submitters got room".into()), Ok(192.0));
        waiting_section(&mut section, &s, &r);
        assert!(section.contains("| baler | "), "{section}");
        assert!(
            section.contains("cannot: 3 of 10 submitters got room"),
            "{section}"
        );
        assert!(
            section.contains("| 192 | 192 | 192 | 1.00× | 64 | 48 | 128 | 192 | 384 |"),
            "{section}"
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        let r: Vec<Result<f64, String>> = vec![Ok(4.0), Ok(1.0), Ok(3.0), Ok(2.0)];
        let s = summarize(&r, |x| *x).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn one_failed_repetition_fails_the_row() {
        let r: Vec<Result<f64, String>> = vec![Ok(1.0), Err("rejected".into())];
        assert_eq!(summarize(&r, |x| *x).unwrap_err(), "rejected");
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(20_417), (2025, 11, 25));
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(ratio(1.0, 2.0), "0.50×");
        assert_eq!(ratio(418.0, 741_741.0), "0.00056×");
        assert_eq!(ratio(2131.3, 0.4), "5,328×");
        assert_eq!(ratio(1.0, 0.0), "—");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
    }
}
