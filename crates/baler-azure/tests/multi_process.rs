//! Three processes share 6,000 per second through one real Azurite
//! (partitions of 1,000, nothing reserved, 15 s leases, the shortest the
//! service grants). Each wants more than the whole capacity and keeps a
//! ledger of what it spends. Then the biggest holder is killed, then Azurite
//! is stopped and started again (empty, as after a crash).
//!
//! Wall-clock by nature (real processes, a real emulator): about 60 s, most
//! of it waiting for 15 s leases to run out.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baler_azure::AzureLeaseStore;
use common::{scratch, Azurite};

const WORKERS: usize = 3;
const SHARED: u64 = 6_000;
const PARTITIONS: u32 = 6;
const COST: u64 = 100;
const LEASE_MS: u128 = 15_000;
/// The workers' retry period (the default, a tenth of the lease time, would
/// leave a released partition unused for up to 1.5 s).
const RETRY_MS: u128 = 250;
/// The resolution of the service's Last-Modified and Date, by which an
/// announced demand expires.
const CLOCK_MS: u128 = 1_000;
/// How often a worker samples its rate.
const SAMPLE_MS: u128 = 100;

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    ledger: PathBuf,
    stderr: PathBuf,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn spawn(i: usize, connection_string: &str, dir: &Path) -> Worker {
    let ledger = dir.join(format!("worker-{i}.ledger"));
    let stderr = dir.join(format!("worker-{i}.stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_baler-azure-ledger"))
        .args([
            "--connection-string",
            connection_string,
            "--container",
            "multi",
        ])
        .arg("--ledger")
        .arg(&ledger)
        .args(["--reserved", "0", "--shared", &SHARED.to_string()])
        .args(["--factor", "1000", "--lease-ms", &LEASE_MS.to_string()])
        .args(["--retry-ms", &RETRY_MS.to_string()])
        .args(["--cost", &COST.to_string()])
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

#[derive(Default)]
struct Ledger {
    /// (unix ms, cost)
    spends: Vec<(u128, u64)>,
    /// (unix ms, rate, partitions held, store reachable)
    rates: Vec<(u128, u64, u32, bool)>,
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

/// The first moment after `from` at which the latest rates of `who` add up
/// to `sum`, and how long after `from` that was.
fn first_sum(ledgers: &[Ledger], who: &[usize], from: u128, sum: u64) -> Option<u128> {
    let mut samples: Vec<(u128, usize, u64)> = who
        .iter()
        .flat_map(|&w| ledgers[w].rates.iter().map(move |r| (r.0, w, r.1)))
        .collect();
    samples.sort_unstable();
    let mut latest = BTreeMap::new();
    for (t, w, rate) in samples {
        latest.insert(w, rate);
        if t >= from && latest.len() == who.len() && latest.values().sum::<u64>() == sum {
            return Some(t - from);
        }
    }
    None
}

/// What all the workers spent in each whole unix second.
fn per_second(ledgers: &[Ledger]) -> BTreeMap<u128, Vec<u64>> {
    let mut seconds: BTreeMap<u128, Vec<u64>> = BTreeMap::new();
    for (w, ledger) in ledgers.iter().enumerate() {
        for &(t, cost) in &ledger.spends {
            seconds.entry(t / 1000).or_insert_with(|| vec![0; WORKERS])[w] += cost;
        }
    }
    seconds
}

/// The partitions of the test's container that are still leased.
fn leased_partitions(connection_string: &str) -> Vec<u32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = AzureLeaseStore::from_connection_string(connection_string, "multi").unwrap();
    runtime.block_on(async {
        let mut leased = Vec::new();
        for p in 0..PARTITIONS {
            if store.is_leased(p).await.unwrap() {
                leased.push(p);
            }
        }
        leased
    })
}

#[test]
fn three_processes_share_6000_per_second_through_azurite() {
    let mut server = Azurite::start();
    let dir = scratch("ledgers");
    let started = now_ms();
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|i| spawn(i, &server.connection_string(), &dir))
        .collect();

    // Phase 1: ramp up and share. The first to come takes everything, and
    // gives back what the others need once it renews and learns of them
    // (every quarter of the lease time).
    sleep(Duration::from_secs(10));

    // Phase 2: kill the worker holding the most partitions.
    let before: Vec<Ledger> = workers.iter().map(|w| read(&w.ledger)).collect();
    let last_rate = |l: &Ledger| l.rates.last().map_or(0, |r| r.1);
    let victim = (0..WORKERS).max_by_key(|&w| last_rate(&before[w])).unwrap();
    let victim_rate = last_rate(&before[victim]);
    let killed = now_ms();
    workers[victim].child.kill().unwrap();
    workers[victim].child.wait().unwrap();
    let survivors: Vec<usize> = (0..WORKERS).filter(|&w| w != victim).collect();
    sleep(Duration::from_secs(19));

    // Phase 3: Azurite goes away.
    let outage = now_ms();
    server.stop();
    sleep(Duration::from_secs(14));
    for &w in &survivors {
        let status = workers[w].child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "worker {w} exited during the outage: {status:?}"
        );
    }

    // Phase 4: Azurite comes back (empty, as after a crash).
    let back = now_ms();
    server.launch();
    sleep(Duration::from_secs(6));

    // Stop the survivors gracefully: they give their leases back.
    let stopping = now_ms();
    for &w in &survivors {
        drop(workers[w].stdin.take());
    }
    for &w in &survivors {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = workers[w].child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "worker {w} did not stop");
            sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "worker {w} exited with {status}");
    }
    let left = leased_partitions(&server.connection_string());

    let ledgers: Vec<Ledger> = workers.iter().map(|w| read(&w.ledger)).collect();
    for w in &workers {
        let stderr = std::fs::read_to_string(&w.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // The ledger, second by second.
    let seconds = per_second(&ledgers);
    let phase = |s: u128| match s * 1000 {
        t if t < killed => "shared by 3",
        t if t < outage => "one killed",
        t if t < back => "Azurite down",
        t if t < stopping => "Azurite back",
        _ => "stopping",
    };
    println!(
        "second  {}   total  phase",
        (0..WORKERS)
            .map(|w| format!("worker{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let first = started / 1000;
    let last = seconds.keys().next_back().copied().unwrap_or(first);
    for s in first..=last {
        let spent = seconds.get(&s).cloned().unwrap_or_else(|| vec![0; WORKERS]);
        let total: u64 = spent.iter().sum();
        let cells: Vec<String> = spent.iter().map(|c| format!("{c:>7}")).collect();
        println!(
            "{:>6}  {}  {total:>6}  {}",
            s - first,
            cells.join(" "),
            phase(s)
        );
    }

    // Never more than the shared capacity, plus one operation per instance
    // for batches that straddle a second's boundary.
    let limit = SHARED + WORKERS as u64 * COST;
    for (s, spent) in &seconds {
        let total: u64 = spent.iter().sum();
        assert!(total <= limit, "second {s}: spent {total}, above {limit}");
    }

    // At least 90% used once ramped up, in every whole second of each
    // steady window.
    let used = |from: u128, to: u128, what: &str| {
        let whole: Vec<u128> = (from.div_ceil(1000)..to / 1000).collect();
        assert!(!whole.is_empty(), "{what}: no whole second to judge");
        for s in whole {
            let total: u64 = seconds.get(&s).map_or(0, |v| v.iter().sum());
            assert!(
                total >= SHARED * 9 / 10,
                "{what}, second {s}: only {total} spent"
            );
        }
    };
    // Azurite and three processes starting on two cores, and the first
    // blobs being created: judged from 3 s on.
    used(started + 3_000, killed, "shared by three");

    // The killed worker's partitions are taken by the others once its leases
    // and its announced demand expire in the service: within a lease time of
    // its last renewal or announcement (at most a lease time before the
    // kill), plus the service's one-second clock resolution, plus the others'
    // retry period, plus the ledgers' resolution (a sample every 100 ms,
    // taken at any time within it).
    assert!(victim_rate > 0, "the victim held nothing");
    let took = first_sum(&ledgers, &survivors, killed, SHARED)
        .expect("the survivors never held the whole capacity");
    println!(
        "worker {victim} (holding {victim_rate}/s) killed: its partitions taken over after {took} ms"
    );
    assert!(
        took <= LEASE_MS + CLOCK_MS + RETRY_MS + 2 * SAMPLE_MS,
        "taken over after {took} ms"
    );
    used(killed + took + 1_000, outage, "after the kill");

    // Azurite down: each survivor falls back to its reserved capacity (0)
    // within one lease time, and spends nothing more.
    for &w in &survivors {
        let fell = ledgers[w]
            .rates
            .iter()
            .find(|r| r.0 >= outage && r.1 == 0 && !r.3)
            .map(|r| r.0 - outage)
            .unwrap_or_else(|| panic!("worker {w} never fell back"));
        println!("Azurite stopped: worker {w} fell back to reserved after {fell} ms");
        assert!(fell <= LEASE_MS, "worker {w} fell back after {fell} ms");
        let late: u64 = ledgers[w]
            .spends
            .iter()
            .filter(|s| s.0 > outage + LEASE_MS && s.0 < back)
            .map(|s| s.1)
            .sum();
        assert_eq!(late, 0, "worker {w} spent {late} with Azurite down");
    }

    // Azurite back: everyone recovers, the container and blobs made again.
    let recovered = first_sum(&ledgers, &survivors, back, SHARED)
        .expect("the survivors never recovered the whole capacity");
    println!("Azurite back: full capacity again after {recovered} ms");
    assert!(recovered <= 4_000, "recovered after {recovered} ms");
    used(
        back + recovered + 1_000,
        stopping,
        "after Azurite came back",
    );

    assert!(left.is_empty(), "leases left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
