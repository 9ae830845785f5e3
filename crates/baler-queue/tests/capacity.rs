//! Workers spend one capacity: jobs run only as fast as the capacity a
//! worker was given allows, and a capacity shared between worker processes
//! (partition leases in Redis) is one budget for all of them.
//!
//! No assertion here is about time: "nothing ran" is checked after the
//! workers' lease stores have been refused several whole rounds of
//! acquisitions, counted by the stores themselves.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baler::shared::{Acquired, Demand, LeaseFuture, LeaseStore, SharedCapacity};
use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{Queue, Worker};
use baler_redis::RedisLeaseStore;
use common::{eventually, within, RedisServer};

const PATIENCE: Duration = Duration::from_secs(20);
/// 1,000 per second in partitions of 100: ten partitions.
const PARTITIONS: u32 = 10;
const BUDGET: &str = "orders-db";

/// A lease store that counts the acquisitions it was refused, so that a
/// test can wait for "tried and refused, several times" instead of a time.
struct Counting {
    inner: RedisLeaseStore,
    refused: Arc<AtomicU64>,
}

impl LeaseStore for Counting {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(async move {
            let got = self.inner.acquire(partition, owner, lease_time).await?;
            if !got.is_granted() {
                self.refused.fetch_add(1, Ordering::SeqCst);
            }
            Ok(got)
        })
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, bool> {
        self.inner.renew(partition, owner, lease_time)
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        self.inner.release(partition, owner)
    }

    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        self.inner.announce(owner, wanted, ttl)
    }
}

/// One worker "process": its own queue handle, its own shared capacity over
/// the common Redis lease store, a handler that counts the jobs it runs.
async fn worker(server: &RedisServer, ran: &Arc<AtomicU64>) -> (Worker, Arc<AtomicU64>) {
    let queue = Queue::builder(&server.url(), "budgeted")
        .lease(Duration::from_millis(400))
        .build()
        .await
        .expect("queue");
    let refused = Arc::new(AtomicU64::new(0));
    let store = Counting {
        inner: RedisLeaseStore::new(&server.url(), BUDGET).expect("lease store"),
        refused: refused.clone(),
    };
    let capacity = SharedCapacity::new(store)
        .shared(1_000, 100)
        .lease_time(Duration::from_secs(15))
        .retry_every(Duration::from_millis(50))
        .build()
        .expect("shared capacity");
    let ran = ran.clone();
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .capacity(capacity)
        .start(handler_fn(move |batch: Batch<u64>| {
            let ran = ran.clone();
            async move {
                ran.fetch_add(batch.len() as u64, Ordering::SeqCst);
                let out: HandlerResult<u64, String> =
                    Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect());
                out
            }
        }))
        .expect("worker");
    (worker, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sharing_a_capacity_run_nothing_while_another_holds_it_all_then_run_every_job() {
    let server = RedisServer::start();
    // Someone else (another service on the same budget) holds every
    // partition, and this capacity has nothing reserved.
    let other = RedisLeaseStore::new(&server.url(), BUDGET).expect("lease store");
    for p in 0..PARTITIONS {
        let got = other
            .acquire(p, "another-service", Duration::from_secs(60))
            .await
            .expect("acquire");
        assert!(
            got.is_granted(),
            "partition {p} should be free at the start"
        );
    }

    let ran = Arc::new(AtomicU64::new(0));
    let (first, refused_first) = worker(&server, &ran).await;
    let (second, refused_second) = worker(&server, &ran).await;

    let queue = Queue::connect(&server.url(), "budgeted")
        .await
        .expect("queue");
    let producer = queue.producer("p").build::<u64, u64>().expect("producer");
    let mut tickets = Vec::new();
    for n in 0..40u64 {
        tickets.push((n, producer.enqueue(n).await.expect("enqueue")));
    }

    // Every job is claimed by a worker, and both workers' stores have been
    // refused many times over (each round asks for every partition it
    // needs): the capacity was asked for, again and again, and said no.
    eventually(PATIENCE, "all 40 jobs claimed by the workers", || async {
        let ran = ran.load(Ordering::SeqCst);
        assert_eq!(
            ran, 0,
            "{ran} jobs ran while another service held the whole capacity"
        );
        queue
            .stats()
            .await
            .map(|s| s.pending == 40)
            .unwrap_or(false)
    })
    .await;
    eventually(
        PATIENCE,
        "both workers refused leases repeatedly",
        || async {
            refused_first.load(Ordering::SeqCst) >= 3 * u64::from(PARTITIONS)
                && refused_second.load(Ordering::SeqCst) >= 3 * u64::from(PARTITIONS)
        },
    )
    .await;
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no job may run while another service holds the whole shared capacity"
    );

    // The budget comes free: the workers lease it and every job runs once,
    // its result back at its ticket.
    for p in 0..PARTITIONS {
        other.release(p, "another-service").await.expect("release");
    }
    for (n, ticket) in tickets {
        let out = within(PATIENCE, "a job's result", ticket)
            .await
            .expect("the job's result");
        assert_eq!(out, n * 2);
    }
    assert_eq!(ran.load(Ordering::SeqCst), 40, "each job ran exactly once");

    producer.shutdown(Duration::from_secs(5)).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
}
