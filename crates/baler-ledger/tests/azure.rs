//! Three processes share 6,000 per second through one real Azurite
//! (partitions of 1,000, nothing reserved, 15 s leases, the shortest the
//! service grants). Each wants more than the whole capacity and keeps a
//! ledger of what it spends. Then the biggest holder is killed, then Azurite
//! is stopped and started again (empty, as after a crash).
//!
//! Wall-clock by nature (real processes, a real emulator): about 60 s, most
//! of it waiting for 15 s leases to run out.

mod common;
#[path = "../../baler-azure/tests/common/mod.rs"]
mod server;

use std::time::Duration;

use baler_azure::AzureLeaseStore;
use common::{Scenario, SAMPLE_MS};
use server::Azurite;

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

#[test]
fn three_processes_share_6000_per_second_through_azurite() {
    let mut server = Azurite::start();
    let scenario = Scenario {
        workers: WORKERS,
        shared: SHARED,
        cost: COST,
        store: vec![
            "--azure".into(),
            server.connection_string(),
            "--container".into(),
            "multi".into(),
        ],
        timing: vec![
            "--lease-ms".into(),
            LEASE_MS.to_string(),
            "--retry-ms".into(),
            RETRY_MS.to_string(),
        ],
        store_name: "Azurite",
        // The first to come takes everything, and gives back what the others
        // need once it learns of them.
        ramp: Duration::from_secs(11),
        after_kill: Duration::from_secs(19),
        outage: Duration::from_secs(14),
        after_back: Duration::from_secs(6),
        stop_patience: Duration::from_secs(20),
    };
    let run = scenario.run(|up| if up { server.launch() } else { server.stop() });
    let left = leased(&server.connection_string());
    run.print();

    // Never more than the shared capacity, plus one operation per instance
    // for batches that straddle a second's boundary.
    run.assert_never_above(SHARED + WORKERS as u64 * COST);

    // Azurite and three processes starting on two cores, the first blobs
    // being created, and the first to come handing over what the others ask
    // for once it next announces (every renewal period, 3.75 s): 2,000 each
    // within 7 s. From the next whole second on, at least 90% used.
    let settled = run.assert_shared_fairly_within(7_000, 1_000);
    run.assert_used(run.started + settled + 1_000, run.killed, "shared by three");

    // The killed worker's partitions are taken by the others once its leases
    // and its announced demand expire in the service: within a lease time of
    // its last renewal or announcement (at most a lease time before the
    // kill), plus the service's one-second clock resolution, plus the others'
    // retry period (the service does not say when a lease runs out), plus
    // the ledgers' resolution (a sample every 100 ms, taken at any time
    // within it).
    let took = run.assert_taken_over_within(LEASE_MS + CLOCK_MS + RETRY_MS + 2 * SAMPLE_MS);
    run.assert_used(run.killed + took + 1_000, run.outage, "after the kill");

    // Azurite down: each survivor falls back to its reserved capacity (0)
    // within one lease time, and spends nothing more.
    run.assert_fell_back_within(LEASE_MS);

    // Azurite back: everyone recovers, the container and blobs made again.
    let recovered = run.assert_recovered_within(4_000);
    run.assert_used(
        run.back + recovered + 1_000,
        run.stopping,
        "after Azurite came back",
    );

    assert!(left.is_empty(), "leases left behind: {left:?}");
}

/// The partitions of the test's container still leased once every worker
/// has stopped.
fn leased(connection_string: &str) -> Vec<u32> {
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
