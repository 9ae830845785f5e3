//! baler's benchmarks against the batching crates Rust services use, in one
//! run: writes `docs/benchmarks.md` and `docs/benchmarks.svg`.
//!
//! This crate is its own Cargo workspace, excluded from the root one, so its
//! heavy dependencies (the peers, async-graphql, plotters) stay out of
//! `cargo test --workspace` and `cargo clippy --workspace`. Run it with
//! `./scripts/bench` (or `cargo run --release --manifest-path
//! crates/baler-bench/Cargo.toml`); see the crate's README for the settings.

mod alloc;
mod chart;
mod contenders;
mod loaders;
mod report;
mod shared;
mod steady;
mod waiting;
mod workloads;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use workloads::{Latency, Memory, Throughput};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub reps: usize,
    pub window: Duration,
    pub submitters: Vec<usize>,
    pub loader_callers: Vec<usize>,
    pub repeated_pct: u64,
    pub pending: usize,
    /// Submitters waiting for room in the waiting-submitter workload.
    pub waiters: usize,
    /// The window of the probe that brackets every timed measurement (see
    /// [`steady`]).
    pub probe: Duration,
    /// Only contenders whose name contains this (for profiling); the
    /// document is then not written.
    pub only: Option<String>,
    /// Workloads to run (all when unset): throughput, latency, memory,
    /// loader, waiting.
    pub workloads: Vec<String>,
    pub out_dir: PathBuf,
}

/// Every workload, in the order a repetition runs them.
const WORKLOADS: [&str; 5] = ["throughput", "latency", "loader", "memory", "waiting"];

fn env_number(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{name} must be a positive integer, got {v:?}")),
        Err(_) => Ok(default),
    }
}

fn env_list(name: &str, default: &str) -> Result<Vec<usize>, String> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    v.split(',')
        .map(|n| {
            n.trim()
                .replace('_', "")
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name}: {n:?} is not a positive count"))
        })
        .collect()
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let workloads = match std::env::var("BALER_BENCH_WORKLOADS") {
            Ok(v) => {
                let list: Vec<String> = v.split(',').map(|w| w.trim().to_owned()).collect();
                for w in &list {
                    if !WORKLOADS.contains(&w.as_str()) {
                        return Err(format!(
                            "BALER_BENCH_WORKLOADS: {w:?} is not one of {}",
                            WORKLOADS.join(", ")
                        ));
                    }
                }
                list
            }
            Err(_) => WORKLOADS.iter().map(|&w| w.to_owned()).collect(),
        };
        let default_out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        Ok(Settings {
            reps: env_number("BALER_BENCH_REPS", 5)? as usize,
            window: Duration::from_millis(env_number("BALER_BENCH_WINDOW_MS", 1000)?),
            submitters: env_list("BALER_BENCH_SUBMITTERS", "1,16,256,4096")?,
            loader_callers: env_list("BALER_BENCH_LOADER_CALLERS", "16,256")?,
            repeated_pct: 30,
            pending: env_number("BALER_BENCH_PENDING", 1_000_000)? as usize,
            waiters: env_number("BALER_BENCH_WAITERS", 1_000_000)? as usize,
            probe: Duration::from_millis(env_number("BALER_BENCH_PROBE_MS", 100)?),
            only: std::env::var("BALER_BENCH_ONLY").ok(),
            workloads,
            out_dir: std::env::var("BALER_BENCH_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|_| default_out.canonicalize().unwrap_or(default_out)),
        })
    }

    fn runs(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }

    fn wants(&self, name: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|o| name.contains(o.trim())))
    }
}

/// Every measurement of the run: `[contender][point][rep]`.
pub struct Results {
    pub names: Vec<&'static str>,
    pub configs: Vec<&'static str>,
    pub throughput: Vec<Vec<Vec<Result<Throughput, String>>>>,
    pub latency: Vec<Vec<Result<Latency, String>>>,
    pub memory: Vec<Vec<Result<Memory, String>>>,
    pub loader_names: Vec<&'static str>,
    pub loader_configs: Vec<&'static str>,
    /// `[loader][case][rep]`, cases as [`loader_cases`].
    pub loader: Vec<Vec<Vec<Result<Throughput, String>>>>,
    /// The rows of the waiting-submitter workload.
    pub waiters: Vec<waiting::Waiter>,
    /// `[waiter][rep]`.
    pub waiting: Vec<Vec<Result<waiting::Waiting, String>>>,
    /// What the probe of the machine's speed saw and did.
    pub steady: steady::Tally,
}

/// The loader cases: (callers, repeated %), unique keys first.
pub fn loader_cases(s: &Settings) -> Vec<(usize, u64)> {
    let mut cases = Vec::new();
    for &pct in &[0, s.repeated_pct] {
        for &n in &s.loader_callers {
            cases.push((n, pct));
        }
    }
    cases
}

/// Runs one measurement and logs it with the wall time it took.
fn timed<T: std::fmt::Debug>(
    what: &str,
    name: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    match &r {
        Ok(v) => eprintln!("  {what:<18} {name:<28} [{took:>8.2?}] {v:?}"),
        Err(e) => eprintln!("  {what:<18} {name:<28} [{took:>8.2?}] FAILED: {e}"),
    }
    r
}

fn run(settings: &Settings) -> Results {
    let contenders: Vec<_> = contenders::all()
        .into_iter()
        .filter(|c| settings.wants(c.name()))
        .collect();
    let loaders: Vec<_> = loaders::all()
        .into_iter()
        .filter(|l| settings.wants(l.name()))
        .collect();
    let waiters: Vec<_> = waiting::Waiter::ALL
        .into_iter()
        .filter(|w| settings.wants(w.name()))
        .collect();
    let cases = loader_cases(settings);
    let nc = contenders.len();
    let nl = loaders.len();
    let mut results = Results {
        names: contenders.iter().map(|c| c.name()).collect(),
        configs: contenders.iter().map(|c| c.config()).collect(),
        throughput: vec![vec![Vec::new(); settings.submitters.len()]; nc],
        latency: vec![Vec::new(); nc],
        memory: vec![Vec::new(); nc],
        loader_names: loaders.iter().map(|l| l.name()).collect(),
        loader_configs: loaders.iter().map(|l| l.config()).collect(),
        loader: vec![vec![Vec::new(); cases.len()]; nl],
        waiters: waiters.clone(),
        waiting: vec![Vec::new(); waiters.len()],
        steady: steady::Tally::default(),
    };

    // Warm-up: every contender once, short, at 256 submitters.
    let warm = settings.window / 5;
    for c in &contenders {
        timed("warm-up", c.name(), || c.throughput(256, warm)).ok();
    }
    for l in &loaders {
        timed("warm-up", l.name(), || l.throughput(256, 30, warm)).ok();
    }

    let mut steady = steady::Steady::new(settings);
    for rep in 0..settings.reps {
        let started = Instant::now();
        eprintln!("repetition {}/{}", rep + 1, settings.reps);
        // Rotate the order of the contenders from one repetition to the
        // next, so that drift and noise do not always hit the same one.
        let order: Vec<usize> = (0..nc).map(|i| (i + rep) % nc).collect();
        let lorder: Vec<usize> = (0..nl).map(|i| (i + rep) % nl.max(1)).collect();
        if settings.runs("throughput") {
            for (ni, &n) in settings.submitters.iter().enumerate() {
                for &ci in &order {
                    let c = &contenders[ci];
                    let r = steady.measure(|| {
                        timed(&format!("throughput N={n}"), c.name(), || {
                            c.throughput(n, settings.window)
                        })
                    });
                    results.throughput[ci][ni].push(r);
                }
            }
        }
        if settings.runs("latency") {
            for &ci in &order {
                let c = &contenders[ci];
                let r =
                    steady.measure(|| timed("latency", c.name(), || c.latency(settings.window)));
                results.latency[ci].push(r);
            }
        }
        if settings.runs("loader") {
            for (ki, &(n, pct)) in cases.iter().enumerate() {
                for &li in &lorder {
                    let l = &loaders[li];
                    let r = steady.measure(|| {
                        timed(&format!("loader N={n} {pct}%"), l.name(), || {
                            l.throughput(n, pct, settings.window)
                        })
                    });
                    results.loader[li][ki].push(r);
                }
            }
        }
        if settings.runs("memory") {
            for &ci in &order {
                let c = &contenders[ci];
                let r = timed("memory", c.name(), || c.memory(settings.pending));
                results.memory[ci].push(r);
            }
        }
        if settings.runs("waiting") {
            for i in 0..waiters.len() {
                let wi = (i + rep) % waiters.len();
                let w = waiters[wi];
                let r = timed("waiting", w.name(), || w.measure(settings.waiters));
                results.waiting[wi].push(r);
            }
        }
        eprintln!("repetition {} took {:?}", rep + 1, started.elapsed());
    }
    results.steady = steady.tally();
    results
}

fn main() {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baler-bench: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("baler-bench: {settings:?}");
    let started = Instant::now();
    let results = run(&settings);
    let meta = report::Meta::collect(&settings, started.elapsed());
    let markdown = report::markdown(&settings, &meta, &results);
    println!("{markdown}");
    if settings.only.is_some() || std::env::var("BALER_BENCH_WORKLOADS").is_ok() {
        eprintln!("baler-bench: a partial run (BALER_BENCH_ONLY or BALER_BENCH_WORKLOADS set): docs not written");
        return;
    }
    let written = std::fs::create_dir_all(&settings.out_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            chart::draw(
                &settings,
                &results,
                &settings.out_dir.join("benchmarks.svg"),
            )
        })
        .and_then(|()| {
            std::fs::write(settings.out_dir.join("benchmarks.md"), &markdown)
                .map_err(|e| e.to_string())
        });
    match written {
        Ok(()) => eprintln!(
            "baler-bench: wrote {} and benchmarks.svg",
            settings.out_dir.join("benchmarks.md").display()
        ),
        Err(e) => {
            eprintln!("baler-bench: cannot write the document: {e}");
            std::process::exit(1);
        }
    }
}
