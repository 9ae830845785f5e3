//! Property: `run` and `shutdown` called concurrently never race. Every `run`
//! either is processed and saved before `shutdown` returns, or fails with
//! `Stopped` and changes nothing; nothing hangs and nothing is lost.
//!
//! Runs on a multi-threaded runtime, so that runs and shutdowns really execute at
//! the same time; each case has a generous time limit that only a hang reaches.

mod memstore;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::processor::{Processor, ProcessorError};
use memstore::Mem;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    /// For each run: its key, and how many times it yields before calling `run`.
    runs: Vec<(u8, u8)>,
    /// How many times each stopper yields before calling `stop`.
    stoppers: Vec<u8>,
    /// The window, in microseconds.
    window_us: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((0u8..4, 0u8..40), 1..60),
        prop::collection::vec(0u8..40, 1..3),
        prop_oneof![Just(0u64), Just(50), Just(1_000)],
    )
        .prop_map(|(runs, stoppers, window_us)| Case {
            runs,
            stoppers,
            window_us,
        })
}

async fn yields(n: u8) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

fn snapshot(mem: &Mem) -> BTreeMap<String, Vec<u32>> {
    (0u8..4)
        .map(|k| (k.to_string(), mem.saved(&k.to_string())))
        .collect()
}

/// The processor of the case running, kept where the test can describe it if
/// the case hangs.
type Running = Arc<Mutex<Option<Processor<String, Vec<u32>, memstore::StoreDown>>>>;

async fn check(case: Case, running: Running) -> Result<(), TestCaseError> {
    let mem = Mem::new();
    let p = Processor::builder()
        .linger(Duration::from_micros(case.window_us))
        .max_store_time(Duration::from_secs(5))
        .max_in_flight(2)
        .build(mem.clone())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    *running.lock().unwrap() = Some(p.clone());

    let mut runs = Vec::new();
    for (id, (key, wait)) in case.runs.iter().copied().enumerate() {
        let p = p.clone();
        let id = id as u32;
        runs.push(tokio::spawn(async move {
            yields(wait).await;
            let result = p
                .run(key.to_string(), move |list: &mut Vec<u32>| {
                    list.push(id);
                    list.len()
                })
                .await;
            (id, key, result)
        }));
    }
    let mut stoppers = Vec::new();
    for wait in case.stoppers.iter().copied() {
        let (p, mem) = (p.clone(), mem.clone());
        stoppers.push(tokio::spawn(async move {
            yields(wait).await;
            p.shutdown(None).await;
            // What was saved when stop returned.
            snapshot(&mem)
        }));
    }
    let mut at_stop = Vec::new();
    for stopper in stoppers {
        at_stop.push(
            stopper
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
        );
    }

    let mut accepted = BTreeSet::new();
    let mut refused = BTreeSet::new();
    for run in runs {
        let (id, key, result) = run.await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        match result {
            Ok(len) => {
                // Its value is its place in the key's saved list.
                let saved = mem.saved(&key.to_string());
                prop_assert_eq!(saved.get(len - 1).copied(), Some(id));
                accepted.insert(id);
            }
            Err(ProcessorError::Stopped) => {
                refused.insert(id);
            }
            Err(other) => prop_assert!(false, "run {} failed with {:?}", id, other),
        }
    }
    let all: BTreeSet<u32> = (0..case.runs.len() as u32).collect();
    prop_assert_eq!(
        accepted.union(&refused).copied().collect::<BTreeSet<_>>(),
        all
    );

    // Every stopper saw the final state: everything accepted was saved before
    // stop returned, and nothing refused ever was.
    let last = snapshot(&mem);
    for seen in &at_stop {
        prop_assert_eq!(seen, &last);
    }
    let saved: BTreeSet<u32> = last.values().flatten().copied().collect();
    prop_assert_eq!(&saved, &accepted);
    let saved_count: usize = last.values().map(Vec::len).sum();
    prop_assert_eq!(saved_count, accepted.len(), "no operation was saved twice");

    // After stop, run fails at once and changes nothing.
    let late = p
        .run("0".to_owned(), |list: &mut Vec<u32>| list.push(9_999))
        .await;
    prop_assert!(matches!(late, Err(ProcessorError::Stopped)));
    prop_assert_eq!(snapshot(&mem), last);
    prop_assert_eq!(p.engine_stats().pending(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn run_and_stop_never_race(case in case()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = Running::default();
        let outcome = runtime.block_on(async {
            // Only a hang takes this long; a case normally ends in milliseconds.
            tokio::time::timeout(Duration::from_secs(60), check(case, running.clone())).await
        });
        match outcome {
            Ok(result) => result?,
            Err(_) => {
                // Say where it stood, for whoever has to find the hang.
                let p = running.lock().unwrap().clone();
                let state = p.map(|p| {
                    format!("{:?}; engine: {:?}; stopped: {}", p.stats(), p.engine_stats(), p.is_shutting_down())
                });
                prop_assert!(false, "run or stop hung; {:?}", state);
            }
        }
    }
}
