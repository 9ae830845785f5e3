//! The scenario both multi-process tests run: `baler-ledger` processes share
//! one capacity through a real store; the one holding the most is killed;
//! the store is stopped and started again; the survivors are stopped and give
//! their leases back. What each spent and held comes back from its ledger.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a worker samples its rate.
pub const SAMPLE_MS: u128 = 100;

pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// What to run, and for how long each phase lasts.
pub struct Scenario {
    pub workers: usize,
    /// The shared capacity per second.
    pub shared: u64,
    /// The cost of each operation.
    pub cost: u64,
    /// The store's flags (`--redis URL --name N` or `--azure CS --container N`).
    pub store: Vec<String>,
    /// The timing flags (`--lease-ms`, `--retry-ms`).
    pub timing: Vec<String>,
    /// What the store is called in the printed ledger ("Redis", "Azurite").
    pub store_name: &'static str,
    pub ramp: Duration,
    pub after_kill: Duration,
    pub outage: Duration,
    pub after_back: Duration,
    /// How long a survivor may take to stop once told to.
    pub stop_patience: Duration,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    ledger: PathBuf,
    stderr: PathBuf,
}

/// One worker's ledger.
#[derive(Default)]
pub struct Ledger {
    /// (unix ms, cost)
    pub spends: Vec<(u128, u64)>,
    /// (unix ms, rate, partitions held, store reachable)
    pub rates: Vec<(u128, u64, u32, bool)>,
}

fn read(path: &Path) -> Ledger {
    let mut ledger = Ledger::default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["spend", t, c] => ledger.spends.push((t.parse().unwrap(), c.parse().unwrap())),
            ["rate", t, r, h, ok] => ledger.rates.push((
                t.parse().unwrap(),
                r.parse().unwrap(),
                h.parse().unwrap(),
                *ok == "1",
            )),
            _ => {} // a line being written as the file was read
        }
    }
    ledger
}

/// A directory of its own for this test.
fn scratch() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("baler-ledger-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What happened, from the ledgers, with when each phase began (unix ms).
pub struct Run {
    pub workers: usize,
    pub shared: u64,
    pub store_name: &'static str,
    pub ledgers: Vec<Ledger>,
    pub started: u128,
    pub killed: u128,
    pub outage: u128,
    pub back: u128,
    pub stopping: u128,
    /// The worker killed, and the rate it held just before.
    pub victim: usize,
    pub victim_rate: u64,
    pub survivors: Vec<usize>,
    /// What all the workers spent in each whole unix second.
    pub seconds: BTreeMap<u128, Vec<u64>>,
    dir: PathBuf,
}

impl Scenario {
    fn spawn(&self, i: usize, dir: &Path) -> Worker {
        let ledger = dir.join(format!("worker-{i}.ledger"));
        let stderr = dir.join(format!("worker-{i}.stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_baler-ledger"))
            .args(&self.store)
            .arg("--ledger")
            .arg(&ledger)
            .args(["--reserved", "0", "--shared", &self.shared.to_string()])
            .args(["--factor", "1000", "--cost", &self.cost.to_string()])
            .args(&self.timing)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Worker {
            stdin: child.stdin.take(),
            child,
            ledger,
            stderr,
        }
    }

    /// Runs the phases; `store_up(false)` stops the store at once (as a
    /// crash would), `store_up(true)` starts it again, empty.
    pub fn run(&self, mut store_up: impl FnMut(bool)) -> Run {
        let dir = scratch();
        let started = now_ms();
        let mut workers: Vec<Worker> = (0..self.workers).map(|i| self.spawn(i, &dir)).collect();

        // Phase 1: ramp up and share.
        sleep(self.ramp);

        // Phase 2: kill the worker holding the most partitions.
        let before: Vec<Ledger> = workers.iter().map(|w| read(&w.ledger)).collect();
        let last_rate = |l: &Ledger| l.rates.last().map_or(0, |r| r.1);
        let victim = (0..self.workers)
            .max_by_key(|&w| last_rate(&before[w]))
            .unwrap();
        let victim_rate = last_rate(&before[victim]);
        let killed = now_ms();
        workers[victim].child.kill().unwrap();
        workers[victim].child.wait().unwrap();
        let survivors: Vec<usize> = (0..self.workers).filter(|&w| w != victim).collect();
        sleep(self.after_kill);

        // Phase 3: the store goes away.
        let outage = now_ms();
        store_up(false);
        sleep(self.outage);
        for &w in &survivors {
            let status = workers[w].child.try_wait().unwrap();
            assert!(
                status.is_none(),
                "worker {w} exited during the outage: {status:?}"
            );
        }

        // Phase 4: the store comes back (empty, as after a crash).
        let back = now_ms();
        store_up(true);
        sleep(self.after_back);

        // Stop the survivors gracefully: they give their leases back.
        let stopping = now_ms();
        for &w in &survivors {
            drop(workers[w].stdin.take());
        }
        for &w in &survivors {
            let deadline = Instant::now() + self.stop_patience;
            let status = loop {
                if let Some(status) = workers[w].child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "worker {w} did not stop");
                sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "worker {w} exited with {status}");
        }

        let ledgers: Vec<Ledger> = workers.iter().map(|w| read(&w.ledger)).collect();
        for w in &workers {
            let stderr = std::fs::read_to_string(&w.stderr).unwrap();
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        let mut seconds: BTreeMap<u128, Vec<u64>> = BTreeMap::new();
        for (w, ledger) in ledgers.iter().enumerate() {
            for &(t, cost) in &ledger.spends {
                seconds
                    .entry(t / 1000)
                    .or_insert_with(|| vec![0; self.workers])[w] += cost;
            }
        }
        Run {
            workers: self.workers,
            shared: self.shared,
            store_name: self.store_name,
            ledgers,
            started,
            killed,
            outage,
            back,
            stopping,
            victim,
            victim_rate,
            survivors,
            seconds,
            dir,
        }
    }
}

impl Run {
    /// Prints the ledger, second by second, with the phase of each.
    pub fn print(&self) {
        let phase = |s: u128| match s * 1000 {
            t if t < self.killed => format!("shared by {}", self.workers),
            t if t < self.outage => "one killed".to_owned(),
            t if t < self.back => format!("{} down", self.store_name),
            t if t < self.stopping => format!("{} back", self.store_name),
            _ => "stopping".to_owned(),
        };
        println!(
            "second  {}   total  phase",
            (0..self.workers)
                .map(|w| format!("worker{w}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let first = self.started / 1000;
        let last = self.seconds.keys().next_back().copied().unwrap_or(first);
        for s in first..=last {
            let spent = self
                .seconds
                .get(&s)
                .cloned()
                .unwrap_or_else(|| vec![0; self.workers]);
            let total: u64 = spent.iter().sum();
            let cells: Vec<String> = spent.iter().map(|c| format!("{c:>7}")).collect();
            println!(
                "{:>6}  {}  {total:>6}  {}",
                s - first,
                cells.join(" "),
                phase(s)
            );
        }
    }

    /// No second spent more than `limit`.
    pub fn assert_never_above(&self, limit: u64) {
        for (s, spent) in &self.seconds {
            let total: u64 = spent.iter().sum();
            assert!(total <= limit, "second {s}: spent {total}, above {limit}");
        }
    }

    /// At least 90% of the shared capacity spent in every whole second from
    /// `from` to `to`.
    pub fn assert_used(&self, from: u128, to: u128, what: &str) {
        let whole: Vec<u128> = (from.div_ceil(1000)..to / 1000).collect();
        assert!(!whole.is_empty(), "{what}: no whole second to judge");
        for s in whole {
            let total: u64 = self.seconds.get(&s).map_or(0, |v| v.iter().sum());
            assert!(
                total >= self.shared * 9 / 10,
                "{what}, second {s}: only {total} spent"
            );
        }
    }

    /// How long after the start every worker first held its fair share: all
    /// of them together the whole capacity, and none more than one partition
    /// (`factor`) above another. Until then the first to come holds what the
    /// others have yet to ask for, and hands it over as it learns of them:
    /// the ramp-up, which the 90% rule does not judge.
    pub fn assert_shared_fairly_within(&self, bound: u128, factor: u64) -> u128 {
        let mut samples: Vec<(u128, usize, u64)> = (0..self.workers)
            .flat_map(|w| self.ledgers[w].rates.iter().map(move |r| (r.0, w, r.1)))
            .filter(|&(t, _, _)| t < self.killed)
            .collect();
        samples.sort_unstable();
        let mut latest = BTreeMap::new();
        let settled = samples.into_iter().find_map(|(t, w, rate)| {
            latest.insert(w, rate);
            let (Some(low), Some(high)) = (latest.values().min(), latest.values().max()) else {
                return None;
            };
            (latest.len() == self.workers
                && latest.values().sum::<u64>() == self.shared
                && high - low <= factor)
                .then(|| t - self.started)
        });
        let settled = settled.expect("the workers never shared the capacity fairly");
        println!("shared fairly {settled} ms after the start");
        assert!(settled <= bound, "shared fairly only after {settled} ms");
        settled
    }

    /// How long after `from` the survivors' latest rates first added up to
    /// the whole shared capacity.
    pub fn survivors_full_after(&self, from: u128) -> Option<u128> {
        let mut samples: Vec<(u128, usize, u64)> = self
            .survivors
            .iter()
            .flat_map(|&w| self.ledgers[w].rates.iter().map(move |r| (r.0, w, r.1)))
            .collect();
        samples.sort_unstable();
        let mut latest = BTreeMap::new();
        for (t, w, rate) in samples {
            latest.insert(w, rate);
            if t >= from
                && latest.len() == self.survivors.len()
                && latest.values().sum::<u64>() == self.shared
            {
                return Some(t - from);
            }
        }
        None
    }

    /// The survivors held the whole capacity within `bound` ms of the kill;
    /// returns how long it took.
    pub fn assert_taken_over_within(&self, bound: u128) -> u128 {
        assert!(self.victim_rate > 0, "the victim held nothing");
        let took = self
            .survivors_full_after(self.killed)
            .expect("the survivors never held the whole capacity");
        println!(
            "worker {} (holding {}/s) killed: its partitions taken over after {took} ms",
            self.victim, self.victim_rate
        );
        assert!(took <= bound, "taken over after {took} ms");
        took
    }

    /// Each survivor said, within `lease_ms` of the outage, that it could
    /// not reach the store and had nothing left to spend (its reserved
    /// capacity is 0), and spent nothing from then until the store was back.
    pub fn assert_fell_back_within(&self, lease_ms: u128) {
        for &w in &self.survivors {
            let fell = self.ledgers[w]
                .rates
                .iter()
                .find(|r| r.0 >= self.outage && r.1 == 0 && !r.3)
                .map(|r| r.0 - self.outage)
                .unwrap_or_else(|| panic!("worker {w} never fell back"));
            println!(
                "{} stopped: worker {w} fell back to reserved after {fell} ms",
                self.store_name
            );
            assert!(fell <= lease_ms, "worker {w} fell back after {fell} ms");
            let late: u64 = self.ledgers[w]
                .spends
                .iter()
                .filter(|s| s.0 > self.outage + lease_ms && s.0 < self.back)
                .map(|s| s.1)
                .sum();
            assert_eq!(late, 0, "worker {w} spent {late} with the store down");
        }
    }

    /// The survivors held the whole capacity again within `bound` ms of the
    /// store's return; returns how long it took.
    pub fn assert_recovered_within(&self, bound: u128) -> u128 {
        let recovered = self
            .survivors_full_after(self.back)
            .expect("the survivors never recovered the whole capacity");
        println!(
            "{} back: full capacity again after {recovered} ms",
            self.store_name
        );
        assert!(recovered <= bound, "recovered after {recovered} ms");
        recovered
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
