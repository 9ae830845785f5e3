//! Four processes share 10,000 per second through one real redis-server
//! (partitions of 1,000, nothing reserved). Each wants more than the whole
//! capacity and keeps a ledger of what it spends. Then the biggest holder is
//! killed, then Redis is stopped and started again.
//!
//! Wall-clock by nature (real processes, a real Redis), kept short with 2 s
//! leases: about 25 s.

mod common;
#[path = "../../baler-redis/tests/common/mod.rs"]
mod server;

use std::time::Duration;

use baler_redis::RedisLeaseStore;
use common::{Scenario, SAMPLE_MS};
use server::RedisServer;

const WORKERS: usize = 4;
const SHARED: u64 = 10_000;
const COST: u64 = 100;
const LEASE_MS: u128 = 2_000;

#[test]
fn four_processes_share_10000_per_second_through_redis() {
    let mut server = RedisServer::start();
    let scenario = Scenario {
        workers: WORKERS,
        shared: SHARED,
        cost: COST,
        store: vec![
            "--redis".into(),
            server.url(),
            "--name".into(),
            "multi".into(),
        ],
        timing: vec!["--lease-ms".into(), LEASE_MS.to_string()],
        store_name: "Redis",
        ramp: Duration::from_secs(7),
        after_kill: Duration::from_secs(5),
        outage: Duration::from_millis(3_500),
        after_back: Duration::from_secs(5),
        stop_patience: Duration::from_secs(10),
    };
    let run = scenario.run(|up| if up { server.launch() } else { server.stop() });
    let left = leased(&server.url());
    run.print();

    // Never more than the shared capacity, plus one operation per instance
    // for batches that straddle a second's boundary.
    run.assert_never_above(SHARED + WORKERS as u64 * COST);

    // Shared fairly (3,000, 3,000, 2,000 and 2,000) within 3 s of the start:
    // four processes starting on two cores, and the first to come handing
    // over what the others ask for.
    let settled = run.assert_shared_fairly_within(3_000, 1_000);
    // From the next whole second on: at least 90% used, and nobody below
    // 1,500.
    run.assert_used(run.started + settled + 1_000, run.killed, "shared by four");
    for s in (run.started + settled + 1_000).div_ceil(1000)..run.killed / 1000 {
        let spent = &run.seconds[&s];
        assert!(spent.iter().all(|&c| c >= 1_500), "second {s}: {spent:?}");
    }

    // The killed worker's partitions are taken by the others as soon as its
    // leases and its announced demand run out in Redis (Redis tells them
    // when): within one lease time of the kill, since it renewed and
    // announced last before the kill. Plus the ledgers' resolution (a sample
    // every 100 ms, taken at any time within it) and as much again for the
    // processes' scheduling on a busy machine.
    let took = run.assert_taken_over_within(LEASE_MS + 2 * SAMPLE_MS);
    run.assert_used(run.killed + took + 1_000, run.outage, "after the kill");

    // Redis down: each survivor falls back to its reserved capacity (0)
    // within one lease time, and spends nothing more.
    run.assert_fell_back_within(LEASE_MS);

    // Redis back: everyone recovers.
    let recovered = run.assert_recovered_within(LEASE_MS);
    run.assert_used(
        run.back + recovered + 1_000,
        run.stopping,
        "after Redis came back",
    );

    assert!(left.is_empty(), "leases left behind: {left:?}");
}

/// The partitions still leased once every worker has stopped.
fn leased(url: &str) -> Vec<u32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = RedisLeaseStore::new(url, "multi").unwrap();
    runtime.block_on(async {
        let mut leased = Vec::new();
        for p in 0..(SHARED / 1_000) as u32 {
            if store.holder(p).await.unwrap().is_some() {
                leased.push(p);
            }
        }
        leased
    })
}
