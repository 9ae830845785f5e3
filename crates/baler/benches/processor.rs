//! Operations and saves per second of a `Processor` over a SQLite file,
//! against the naive way on the same kind of file: load, change and save the
//! account for every single operation.
//!
//! Run with `cargo bench -p baler --bench processor`. Environment:
//!
//! - `BALER_BENCH_OPS`: operations per processor measurement (default 20,000);
//! - `BALER_BENCH_NAIVE_OPS`: operations per naive measurement (default
//!   1,000 with durable commits, else `BALER_BENCH_OPS`): the naive way is
//!   slow enough that its rate is steady long before 20,000;
//! - `BALER_BENCH_KEYS`: comma-separated key counts (default 1,100,10000);
//! - `BALER_BENCH_DURABLE`: `1` (default) to sync every commit to disk
//!   (`synchronous = FULL`), `0` for `synchronous = NORMAL` (WAL mode either way).
//!
//! # What is measured
//!
//! The accounts are the keys; every operation deposits 1 on a random one.
//! Both contenders share one SQLite connection, used from blocking threads.
//!
//! - **processor**: all operations are submitted at once by their own tasks;
//!   the default window of 100 ms and the default cap on active keys, and a
//!   buffer that holds the whole burst (so no caller waits to submit). Its
//!   time runs from the first submit to the last answer, so it includes one
//!   window of waiting.
//! - **naive**: 64 concurrent callers; each operation takes the connection,
//!   reads the account, writes it back (one commit), and lets go.
//!
//! Both check at the end that the balances add up to the operations. Under
//! `cargo test` (no `--bench` argument) it runs a few hundred operations as a
//! smoke test.

#[path = "../tests/sqlite_bank/mod.rs"]
mod sqlite_bank;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baler::processor::Processor;
use sqlite_bank::{remove_db, temp_db, Account, Bank, Rng};

const NAIVE_CALLERS: u32 = 64;

struct Measure {
    ops: u32,
    elapsed: Duration,
    saves: u64,
}

impl Measure {
    fn ops_per_sec(&self) -> f64 {
        f64::from(self.ops) / self.elapsed.as_secs_f64()
    }
    fn saves_per_sec(&self) -> f64 {
        self.saves as f64 / self.elapsed.as_secs_f64()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn keys_of(ops: u32, keys: u32, seed: u64) -> Vec<u32> {
    let mut rng = Rng(seed);
    (0..ops)
        .map(|_| rng.below(u64::from(keys)) as u32)
        .collect()
}

fn check(bank: &Bank, keys: u32, ops: u32) {
    let total: i64 = bank.balances().iter().sum();
    assert_eq!(total, i64::from(keys) * 1_000 + i64::from(ops));
}

fn processor(keys: u32, ops: u32, durable: bool) -> Measure {
    let path = temp_db("bench-processor");
    let bank = Bank::create_with(&path, keys, 1_000, durable).expect("a database");
    let rt = runtime();
    let (elapsed, saves) = rt.block_on(async {
        let processor = Processor::builder()
            // Room for the whole burst, so no caller waits to submit.
            .buffer_size((ops as usize).max(10_000))
            .build(bank.clone())
            .expect("a processor");
        let started = Instant::now();
        let tasks: Vec<_> = keys_of(ops, keys, 7)
            .into_iter()
            .map(|key| {
                let processor = processor.clone();
                tokio::spawn(async move {
                    processor
                        .run(key, |account: &mut Account| account.balance += 1)
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a task").expect("an operation");
        }
        let elapsed = started.elapsed();
        processor.shutdown(None).await;
        (elapsed, processor.stats().saves)
    });
    drop(rt);
    check(&bank, keys, ops);
    assert_eq!(saves as i64, bank.saves());
    drop(bank);
    remove_db(&path);
    Measure {
        ops,
        elapsed,
        saves,
    }
}

fn naive(keys: u32, ops: u32, durable: bool) -> Measure {
    let path = temp_db("bench-naive");
    let bank = Bank::create_with(&path, keys, 1_000, durable).expect("a database");
    let rt = runtime();
    let order = Arc::new(keys_of(ops, keys, 7));
    let next = Arc::new(AtomicU32::new(0));
    let elapsed = rt.block_on(async {
        let started = Instant::now();
        let callers: Vec<_> = (0..NAIVE_CALLERS)
            .map(|_| {
                let (bank, order, next) = (bank.clone(), order.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&key) = order.get(i as usize) else {
                            break;
                        };
                        let bank = bank.clone();
                        tokio::task::spawn_blocking(move || {
                            bank.update_now(key, |account| account.balance += 1)
                        })
                        .await
                        .expect("a blocking task")
                        .expect("an update");
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.await.expect("a caller");
        }
        started.elapsed()
    });
    drop(rt);
    check(&bank, keys, ops);
    let saves = bank.saves() as u64;
    drop(bank);
    remove_db(&path);
    Measure {
        ops,
        elapsed,
        saves,
    }
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let durable = std::env::var("BALER_BENCH_DURABLE").map_or(true, |v| v != "0");
    let ops = env_u32("BALER_BENCH_OPS", if smoke { 300 } else { 20_000 });
    let naive_default = match (smoke, durable) {
        (true, _) => 30,
        (false, true) => 1_000,
        (false, false) => ops,
    };
    let naive_ops = env_u32("BALER_BENCH_NAIVE_OPS", naive_default);
    let keys: Vec<u32> = std::env::var("BALER_BENCH_KEYS")
        .ok()
        .map(|v| v.split(',').filter_map(|k| k.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if smoke {
                vec![1, 100]
            } else {
                vec![1, 100, 10_000]
            }
        });

    println!(
        "processor vs naive on SQLite ({}), window 100 ms, {} CPUs",
        if durable {
            "synchronous = FULL: every commit synced"
        } else {
            "synchronous = NORMAL"
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>6} {:<10} {:>7} {:>9} {:>12} {:>8} {:>11} {:>8}",
        "keys", "contender", "ops", "time", "ops/s", "saves", "saves/s", "speedup"
    );
    for &k in &keys {
        let n = naive(k, naive_ops, durable);
        let p = processor(k, ops, durable);
        for (name, m) in [("naive", &n), ("processor", &p)] {
            let speedup = m.ops_per_sec() / n.ops_per_sec();
            println!(
                "{:>6} {:<10} {:>7} {:>8.2}s {:>12.0} {:>8} {:>11.0} {:>7.1}x",
                k,
                name,
                m.ops,
                m.elapsed.as_secs_f64(),
                m.ops_per_sec(),
                m.saves,
                m.saves_per_sec(),
                speedup
            );
        }
    }
}
