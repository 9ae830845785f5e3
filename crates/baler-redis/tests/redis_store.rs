//! The Redis lease store against a real redis-server on a free loopback port.

mod common;

use std::time::{Duration, Instant};

use baler::{
    handler_fn,
    shared::{Acquired, LeaseStore, LeaseStoreError, SharedCapacity},
    Batch, Batcher, Operation, Outcome,
};
use baler_redis::{RedisLeaseStore, RedisStoreError};
use common::{free_port, RedisServer};

const MINUTE: Duration = Duration::from_secs(60);

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_partition_is_held_by_one_owner_at_a_time() {
    let server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "one-owner").unwrap();
    assert!(store.acquire(4, "a", MINUTE).await.unwrap().is_granted());
    assert!(
        store.acquire(4, "a", MINUTE).await.unwrap().is_granted(),
        "a's own"
    );
    match store.acquire(4, "b", MINUTE).await.unwrap() {
        Acquired::Held {
            expires_in: Some(left),
        } => assert!(
            left > MINUTE - Duration::from_secs(5) && left <= MINUTE,
            "{left:?}"
        ),
        other => panic!("b was told {other:?}"),
    }
    assert!(store.acquire(5, "b", MINUTE).await.unwrap().is_granted());
    assert_eq!(store.holder(4).await.unwrap().as_deref(), Some("a"));
    assert_eq!(store.holder(5).await.unwrap().as_deref(), Some("b"));
}

#[tokio::test]
async fn renew_and_release_by_another_owner_change_nothing() {
    let server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "others").unwrap();
    assert!(store.acquire(0, "a", MINUTE).await.unwrap().is_granted());
    assert!(!store.renew(0, "b", MINUTE).await.unwrap());
    store.release(0, "b").await.unwrap();
    assert_eq!(store.holder(0).await.unwrap().as_deref(), Some("a"));
    store.release(0, "a").await.unwrap();
    assert_eq!(store.holder(0).await.unwrap(), None);
    assert!(!store.renew(0, "a", MINUTE).await.unwrap(), "released");
    assert!(store.acquire(0, "b", MINUTE).await.unwrap().is_granted());
}

#[tokio::test]
async fn leases_expire_by_redis_clock() {
    let server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "clock").unwrap();
    assert!(store
        .acquire(1, "a", Duration::from_secs(30))
        .await
        .unwrap()
        .is_granted());
    let ttl = pttl(&server, &store.key(1)).await;
    assert!((29_000..=30_000).contains(&ttl), "PTTL {ttl}");
    assert!(store.renew(1, "a", Duration::from_secs(50)).await.unwrap());
    let ttl = pttl(&server, &store.key(1)).await;
    assert!((49_000..=50_000).contains(&ttl), "PTTL {ttl}");

    // A short lease runs out in Redis, and another owner may then take it.
    assert!(store
        .acquire(2, "a", Duration::from_millis(50))
        .await
        .unwrap()
        .is_granted());
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.holder(2).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.acquire(2, "b", MINUTE).await.unwrap().is_granted());
}

#[tokio::test]
async fn a_redis_that_cannot_be_reached_is_reported_as_unreachable() {
    let store = RedisLeaseStore::new(&format!("redis://127.0.0.1:{}", free_port()), "gone")
        .unwrap()
        .timeout(Duration::from_millis(500));
    let error = store.acquire(0, "a", MINUTE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Unreachable(_)), "{error}");
    assert!(error.to_string().contains("cannot be reached"), "{error}");
}

#[tokio::test]
async fn reconnects_when_redis_comes_back() {
    let mut server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "back").unwrap();
    assert!(store.acquire(0, "a", MINUTE).await.unwrap().is_granted());
    server.stop();
    let error = store.renew(0, "a", MINUTE).await.unwrap_err();
    assert!(matches!(error, LeaseStoreError::Unreachable(_)), "{error}");
    server.launch();
    // A new, empty Redis: the lease is gone, and the store works again.
    assert!(!store.renew(0, "a", MINUTE).await.unwrap());
    assert!(store.acquire(0, "a", MINUTE).await.unwrap().is_granted());
}

#[test]
fn a_bad_url_or_an_empty_name_is_refused() {
    let e = RedisLeaseStore::new("http://127.0.0.1:1", "x").unwrap_err();
    assert!(matches!(e, RedisStoreError::InvalidUrl { .. }), "{e}");
    assert!(e.to_string().contains("redis://host:port"), "{e}");
    let e = RedisLeaseStore::new("redis://127.0.0.1:1", "").unwrap_err();
    assert!(matches!(e, RedisStoreError::EmptyName));
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
async fn zero_to_full_capacity_of_10_partitions_is_one_round_trip_not_ten() {
    let server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "ramp").unwrap();
    let capacity = SharedCapacity::new(store)
        .shared(10_000, 1_000)
        .lease_time(Duration::from_secs(2))
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
        assert!(start.elapsed() < Duration::from_secs(10), "never full");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = start.elapsed();
    println!("zero to full capacity (10 partitions, Redis on loopback): {took:?}");
    // go-batcher took ~2.5 s, one partition every ~250 ms.
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn a_released_partition_is_taken_by_another_instance_at_once() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(30); // expiry is not what frees them here
    let build = || {
        SharedCapacity::new(RedisLeaseStore::new(&server.url(), "handover").unwrap())
            .shared(4_000, 1_000)
            .lease_time(lease)
            .retry_every(Duration::from_millis(50))
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
    while a.rate() != Some(4_000) {
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.rate(), Some(0), "a holds everything");
    a_leases.release_all().await;
    let released = Instant::now();
    while b.rate() != Some(4_000) {
        assert!(released.elapsed() < lease / 2, "b never took them");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a.rate(), Some(0));
}

#[tokio::test]
async fn demands_are_shared_and_expire_by_redis_clock() {
    let server = RedisServer::start();
    let store = RedisLeaseStore::new(&server.url(), "demand").unwrap();
    let mine = store.announce("a", 7, MINUTE).await.unwrap().unwrap();
    assert_eq!(mine.len(), 1);
    let short = Duration::from_millis(50);
    let both = store.announce("b", 3, short).await.unwrap().unwrap();
    let mut seen: Vec<(String, u32)> = both.iter().map(|d| (d.owner.clone(), d.wanted)).collect();
    seen.sort();
    assert_eq!(seen, [("a".to_owned(), 7), ("b".to_owned(), 3)]);
    // Each with how much longer it lives, by Redis's clock.
    for d in &both {
        let left = d.expires_in.expect("Redis tells how long a demand lives");
        let ttl = if d.owner == "a" { MINUTE } else { short };
        assert!(left <= ttl && left + Duration::from_secs(5) > ttl, "{d:?}");
    }
    // b's announcement runs out in Redis.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = store.announce("a", 7, MINUTE).await.unwrap().unwrap();
        if now.len() == 1 {
            assert_eq!(now[0].owner, "a");
            break;
        }
        assert!(Instant::now() < deadline, "b's demand never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(not(feature = "tls"))]
#[test]
fn rediss_without_the_tls_feature_says_which_feature_to_enable() {
    let err = RedisLeaseStore::new("rediss://127.0.0.1:6380", "n").unwrap_err();
    assert!(
        matches!(err, RedisStoreError::TlsNotEnabled { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`tls` feature"), "{err}");
}
