//! The Azure Blob lease store against a real Azurite on a free loopback port.

mod common;

use std::time::{Duration, Instant};

use baler::{
    handler_fn,
    shared::{LeaseStore, LeaseStoreError, SharedCapacity},
    Batch, Batcher, Operation, Outcome,
};
use baler_azure::{AzureLeaseStore, DEVELOPMENT_ACCOUNT};
use common::{connection_string, free_port, Azurite};

const LEASE: Duration = Duration::from_secs(15);
const MINUTE: Duration = Duration::from_secs(60);

fn store(server: &Azurite, container: &str) -> AzureLeaseStore {
    AzureLeaseStore::from_connection_string(&server.connection_string(), container).unwrap()
}

#[tokio::test]
async fn a_partition_is_held_by_one_owner_at_a_time() {
    let server = Azurite::start();
    // The container and the blobs do not exist yet: the first acquire makes them.
    let store = store(&server, "one-owner");
    assert!(!store.is_leased(4).await.unwrap());
    assert!(store.acquire(4, "a", LEASE).await.unwrap().is_granted());
    assert!(store.is_leased(4).await.unwrap());
    assert!(
        store.acquire(4, "a", MINUTE).await.unwrap().is_granted(),
        "a's own"
    );
    assert!(!store.acquire(4, "b", LEASE).await.unwrap().is_granted());
    assert!(store.acquire(5, "b", LEASE).await.unwrap().is_granted());
    assert!(!store.acquire(5, "a", LEASE).await.unwrap().is_granted());
    // Another store on the same container sees the same leases.
    let other =
        AzureLeaseStore::from_connection_string(&server.connection_string(), "one-owner").unwrap();
    assert!(!other.acquire(4, "c", LEASE).await.unwrap().is_granted());
}

#[tokio::test]
async fn renew_and_release_by_another_owner_change_nothing() {
    let server = Azurite::start();
    let store = store(&server, "others");
    assert!(store.acquire(0, "a", LEASE).await.unwrap().is_granted());
    assert!(!store.renew(0, "b", LEASE).await.unwrap());
    store.release(0, "b").await.unwrap();
    assert!(store.is_leased(0).await.unwrap());
    assert!(store.renew(0, "a", LEASE).await.unwrap());
    store.release(0, "a").await.unwrap();
    assert!(!store.is_leased(0).await.unwrap());
    assert!(!store.renew(0, "a", LEASE).await.unwrap(), "released");
    store.release(0, "a").await.unwrap(); // twice: nothing to do
    assert!(store.acquire(0, "b", LEASE).await.unwrap().is_granted());
    // Renewing a partition whose blob was never made: not held.
    assert!(!store.renew(9, "a", LEASE).await.unwrap());
    store.release(9, "a").await.unwrap();
}

#[tokio::test]
async fn leases_expire_by_the_services_clock_and_a_lost_lease_is_not_renewed() {
    let server = Azurite::start();
    let store = store(&server, "clock");
    let taken = Instant::now();
    assert!(store.acquire(1, "a", LEASE).await.unwrap().is_granted());
    // 14.5 s is rounded up to 15 s, which the service grants.
    assert!(store
        .acquire(2, "a", Duration::from_millis(14_500))
        .await
        .unwrap()
        .is_granted());
    let deadline = taken + LEASE + Duration::from_secs(10);
    while store.is_leased(1).await.unwrap() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expired_after = taken.elapsed();
    assert!(
        expired_after >= LEASE - Duration::from_secs(1),
        "expired after {expired_after:?}"
    );
    assert!(store.acquire(1, "b", LEASE).await.unwrap().is_granted());
    // a's lease was lost to b: renewing it fails, and b keeps it.
    assert!(!store.renew(1, "a", LEASE).await.unwrap());
    assert!(!store.acquire(1, "a", LEASE).await.unwrap().is_granted());
    assert!(store.renew(1, "b", LEASE).await.unwrap());
}

#[tokio::test]
async fn a_service_that_cannot_be_reached_is_reported_as_unreachable_quickly() {
    let port = free_port();
    let store = AzureLeaseStore::from_connection_string(&connection_string(port), "gone")
        .unwrap()
        .timeout(Duration::from_millis(500));
    let start = Instant::now();
    let error = store.acquire(0, "a", LEASE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Unreachable(_)), "{error}");
    assert!(error.to_string().contains("cannot be reached"), "{error}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_service_that_does_not_answer_in_time_is_unreachable() {
    // A listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let store = AzureLeaseStore::from_connection_string(&connection_string(port), "silent")
        .unwrap()
        .timeout(Duration::from_millis(300));
    let start = Instant::now();
    let error = store.renew(0, "a", LEASE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Unreachable(_)), "{error}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    drop(listener);
}

#[tokio::test]
async fn a_wrong_key_is_a_clear_error() {
    let server = Azurite::start();
    let wrong = format!(
        "AccountName={DEVELOPMENT_ACCOUNT};AccountKey=d3Jvbmcga2V5;\
         BlobEndpoint=http://127.0.0.1:{}/{DEVELOPMENT_ACCOUNT}",
        server.port
    );
    let store = AzureLeaseStore::from_connection_string(&wrong, "wrong-key").unwrap();
    let error = store.acquire(0, "a", LEASE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Protocol(_)), "{error}");
    let message = error.to_string();
    // The service says AuthenticationFailed; the emulator AuthorizationFailure.
    assert!(message.contains("answered 403 Auth"), "{message}");
    assert!(
        message.contains("check the account name and key"),
        "{message}"
    );
}

#[tokio::test]
async fn works_again_when_the_service_comes_back() {
    let mut server = Azurite::start();
    let store = store(&server, "back").timeout(Duration::from_secs(1));
    assert!(store.acquire(0, "a", LEASE).await.unwrap().is_granted());
    server.stop();
    let error = store.renew(0, "a", LEASE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Unreachable(_)), "{error}");
    server.launch();
    // A new, empty service: the lease is gone, and the store provisions again.
    assert!(!store.renew(0, "a", LEASE).await.unwrap());
    assert!(store.acquire(0, "a", LEASE).await.unwrap().is_granted());
}

#[tokio::test]
async fn demands_are_shared_and_expire_by_the_services_clock() {
    let server = Azurite::start();
    let store = store(&server, "demand");
    let mine = store.announce("a", 7, MINUTE).await.unwrap().unwrap();
    assert_eq!(mine.len(), 1);
    let both = store
        .announce("b/2", 3, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let mut seen: Vec<(String, u32)> = both.iter().map(|d| (d.owner.clone(), d.wanted)).collect();
    seen.sort();
    assert_eq!(seen, [("a".to_owned(), 7), ("b/2".to_owned(), 3)]);
    // Each says how long it lives, rounded up to the service's whole second.
    for d in &both {
        let ttl = if d.owner == "a" {
            MINUTE
        } else {
            Duration::from_secs(1)
        };
        let left = d
            .expires_in
            .expect("the store tells how long a demand lives");
        assert!(
            left > Duration::ZERO && left <= ttl + Duration::from_secs(2),
            "{d:?}"
        );
    }
    // b's announcement runs out by the service's clock (one-second resolution).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = store.announce("a", 6, MINUTE).await.unwrap().unwrap();
        if now.len() == 1 {
            assert_eq!((now[0].owner.as_str(), now[0].wanted), ("a", 6));
            break;
        }
        assert!(Instant::now() < deadline, "b's demand never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Announcing 0 withdraws the demand.
    assert_eq!(store.announce("a", 0, MINUTE).await.unwrap().unwrap(), []);
}

type Spender = Batcher<u32, (), String>;

fn spender(capacity: &baler::Capacity) -> Spender {
    Batcher::builder()
        .capacity(capacity.clone())
        .build(handler_fn(|batch: Batch<u32>| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, String>(batch.iter().map(|_| Outcome::Done(())).collect())
        }))
        .unwrap()
}

#[tokio::test]
async fn zero_to_full_capacity_of_10_partitions_takes_one_round_of_parallel_calls() {
    let server = Azurite::start();
    let capacity = SharedCapacity::new(store(&server, "ramp"))
        .shared(10_000, 1_000)
        .lease_time(LEASE)
        .build()
        .unwrap();
    let batcher = spender(&capacity);
    let start = Instant::now();
    let _tickets: Vec<_> = (0..20)
        .map(|i| {
            batcher
                .try_submit(Operation::new(i).with_cost(500))
                .unwrap()
        })
        .collect();
    while capacity.rate() != Some(10_000) {
        assert!(start.elapsed() < Duration::from_secs(20), "never full");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Each first acquire also creates the container and the partition's blob.
    println!(
        "zero to full capacity (10 partitions, Azurite on loopback, blobs created on the way): {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_released_partition_is_taken_by_another_instance_at_once() {
    let server = Azurite::start();
    let build = || {
        SharedCapacity::new(store(&server, "handover"))
            .shared(4_000, 1_000)
            .lease_time(MINUTE) // expiry is not what frees them here
            .retry_every(Duration::from_millis(100))
            .start()
            .unwrap()
    };
    let (a, a_leases) = build();
    let a_batcher = spender(&a);
    let _a_tickets: Vec<_> = (0..20)
        .map(|i| {
            a_batcher
                .try_submit(Operation::new(i).with_cost(250))
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    while a.rate() != Some(4_000) {
        assert!(start.elapsed() < Duration::from_secs(20), "a never full");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (b, _b_leases) = build();
    let b_batcher = spender(&b);
    let _b_tickets: Vec<_> = (0..20)
        .map(|i| {
            b_batcher
                .try_submit(Operation::new(i).with_cost(250))
                .unwrap()
        })
        .collect();
    // They share: each ends with 2 of the 4 partitions (fair sharing through
    // the demand blobs), a giving back what b needs.
    let start = Instant::now();
    while (a.rate(), b.rate()) != (Some(2_000), Some(2_000)) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never shared: {:?} {:?}",
            a.rate(),
            b.rate()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a_leases.release_all().await;
    let released = Instant::now();
    while b.rate() != Some(4_000) {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "b never took them"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.rate(), Some(0));
}
