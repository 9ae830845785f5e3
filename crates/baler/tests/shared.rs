//! Shared capacity: partition leases taken, renewed, given back and lost,
//! against the in-memory store (and stores that are slow, refuse, or hang),
//! on tokio's paused clock.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baler::{
    handler_fn,
    shared::{
        Acquired, Demand, LeaseFuture, LeaseStore, LeaseStoreError, MemoryLeaseStore,
        SharedCapacity,
    },
    Batch, Batcher, Capacity, CapacityEvent, Code, ConfigError, Event, Operation, Outcome,
};
use tokio::sync::watch;
use tokio::time::{sleep, Instant};

const MS: Duration = Duration::from_millis(1);
const LEASE: Duration = Duration::from_secs(2);
// The defaults for a 2 s lease.
const MARGIN: Duration = Duration::from_millis(400);
const RETRY: Duration = Duration::from_millis(200);

const OK: u8 = 0;
const REFUSE: u8 = 1;
const HANG: u8 = 2;

/// A store in front of a [`MemoryLeaseStore`] that can be slowed down, made
/// to refuse every call, or to never answer.
#[derive(Clone)]
struct Flaky {
    inner: MemoryLeaseStore,
    mode: Arc<AtomicU8>,
    latency: Duration,
    calls: Arc<AtomicU64>,
}

impl Flaky {
    fn new(inner: MemoryLeaseStore, latency: Duration) -> Self {
        Flaky {
            inner,
            mode: Arc::new(AtomicU8::new(OK)),
            latency,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    async fn gate(&self) -> Result<(), LeaseStoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.latency.is_zero() {
            sleep(self.latency).await;
        }
        match self.mode.load(Ordering::SeqCst) {
            REFUSE => Err(LeaseStoreError::unreachable("connection refused")),
            HANG => std::future::pending().await,
            _ => Ok(()),
        }
    }
}

impl LeaseStore for Flaky {
    fn acquire<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, Acquired> {
        Box::pin(async move {
            self.gate().await?;
            self.inner.acquire(p, owner, t).await
        })
    }
    fn renew<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, bool> {
        Box::pin(async move {
            self.gate().await?;
            self.inner.renew(p, owner, t).await
        })
    }
    fn release<'a>(&'a self, p: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            self.gate().await?;
            self.inner.release(p, owner).await
        })
    }
    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        Box::pin(async move {
            self.gate().await?;
            self.inner.announce(owner, wanted, ttl).await
        })
    }
}

fn shared(store: impl LeaseStore, reserved: u64) -> Capacity {
    SharedCapacity::new(store)
        .reserved(reserved)
        .shared(10_000, 1_000)
        .lease_time(LEASE)
        .build()
        .unwrap()
}

type Held = Batcher<u64, u64, String>;

/// A batcher on `capacity` whose handler holds every batch until `open` is
/// sent `true`: its target stays the cost of everything submitted.
fn holding(capacity: &Capacity) -> (Held, watch::Sender<bool>) {
    let (open, gate) = watch::channel(false);
    let batcher = Batcher::builder()
        .capacity(capacity.clone())
        .build(handler_fn(move |batch: Batch<u64>| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, String>(batch.iter().map(|x| Outcome::Done(*x)).collect())
            }
        }))
        .unwrap();
    (batcher, open)
}

/// Submits operations worth `cost` in all (500 each).
fn want(batcher: &Held, cost: u64) -> Vec<baler::Ticket<u64, String>> {
    (0..cost / 500)
        .map(|i| {
            batcher
                .try_submit(Operation::new(i).with_cost(500))
                .unwrap()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn takes_the_partitions_the_target_needs_in_parallel_not_one_by_one() {
    // Every store call takes 50 ms: one at a time, 10 partitions would take 500 ms.
    let store = Flaky::new(MemoryLeaseStore::new(), 50 * MS);
    let capacity = shared(store.clone(), 0);
    let (batcher, _open) = holding(&capacity);
    sleep(LEASE).await; // up and running, with no work yet
    let start = Instant::now();
    let _tickets = want(&batcher, 10_000);
    while capacity.rate() != Some(10_000) {
        sleep(MS).await;
    }
    let took = start.elapsed();
    assert!(took <= 60 * MS, "full capacity after {took:?}");
    assert_eq!(store.inner.held(), 10);
    assert_eq!(capacity.status().partitions, Some((10, 10)));
}

#[tokio::test(start_paused = true)]
async fn takes_only_the_partitions_the_target_needs_above_the_reserved_part() {
    let store = MemoryLeaseStore::new();
    let capacity = shared(store.clone(), 1_000);
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 3_500); // 2,500 above the reserved 1,000: 3 partitions
    sleep(10 * MS).await;
    assert_eq!(store.held(), 3);
    assert_eq!(capacity.rate(), Some(4_000));
}

#[tokio::test(start_paused = true)]
async fn instances_start_from_random_partitions() {
    let mut first = BTreeSet::new();
    for _ in 0..10 {
        let store = MemoryLeaseStore::new();
        let capacity = SharedCapacity::new(store.clone())
            .shared(50_000, 1_000)
            .lease_time(LEASE)
            .build()
            .unwrap();
        let (batcher, _open) = holding(&capacity);
        let _tickets = want(&batcher, 500);
        sleep(10 * MS).await;
        let held: Vec<u32> = (0..50).filter(|&p| store.holder(p).is_some()).collect();
        assert_eq!(held.len(), 1);
        first.insert(held[0]);
    }
    // Ten instances on their own stores: with a fixed order they would all
    // have taken the same partition.
    assert!(first.len() >= 3, "took {first:?}");
}

#[tokio::test(start_paused = true)]
async fn renews_leases_for_as_long_as_they_are_needed() {
    let store = Flaky::new(MemoryLeaseStore::new(), Duration::ZERO);
    let capacity = shared(store.clone(), 0);
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 10_000);
    sleep(10 * MS).await;
    let owners: Vec<_> = (0..10).map(|p| store.inner.holder(p)).collect();
    for _ in 0..100 {
        sleep(100 * MS).await;
        assert_eq!(capacity.rate(), Some(10_000));
    }
    // Five lease times later: the same owners, renewed about every 500 ms.
    assert_eq!(
        (0..10).map(|p| store.inner.holder(p)).collect::<Vec<_>>(),
        owners
    );
    let calls = store.calls.load(Ordering::SeqCst);
    // 20 renewals of 10 leases, and 20 announcements of this instance's demand.
    assert!(
        (200 + 20..=220 + 22).contains(&calls),
        "{calls} store calls"
    );
}

#[tokio::test(start_paused = true)]
async fn gives_leases_back_as_soon_as_the_target_drops() {
    let store = MemoryLeaseStore::new();
    let capacity = shared(store.clone(), 0);
    let (batcher, open) = holding(&capacity);
    let mut events = batcher.events();
    let tickets = want(&batcher, 10_000);
    sleep(10 * MS).await;
    assert_eq!(store.held(), 10);
    open.send(true).unwrap();
    for t in tickets {
        t.await.unwrap();
    }
    sleep(MS).await;
    assert_eq!(store.held(), 0, "released without waiting for expiry");
    assert_eq!(capacity.rate(), Some(0));
    let mut released = 0;
    while let Ok(Some(e)) = events.try_recv() {
        if let Event::Capacity(CapacityEvent::LeaseReleased { .. }) = e {
            released += 1;
        }
    }
    assert_eq!(released, 10);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_capacity_gives_every_lease_back() {
    let store = MemoryLeaseStore::new();
    let capacity = shared(store.clone(), 0);
    let (batcher, open) = holding(&capacity);
    let _tickets = want(&batcher, 10_000);
    sleep(10 * MS).await;
    assert_eq!(store.held(), 10);
    open.send(true).unwrap();
    batcher.shutdown(None).await;
    drop(capacity);
    sleep(MS).await;
    assert_eq!(store.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn counts_a_lease_as_lost_a_safety_margin_before_it_expires() {
    let store = Flaky::new(MemoryLeaseStore::new(), Duration::ZERO);
    let capacity = shared(store.clone(), 0);
    let (batcher, _open) = holding(&capacity);
    let acquired = Instant::now();
    let _tickets = want(&batcher, 10_000);
    sleep(MS).await;
    assert_eq!(capacity.rate(), Some(10_000));
    // From now on no renewal gets through.
    store.set(REFUSE);
    let renewed_last = acquired; // the acquisition was the last successful call
    let stops_counting = renewed_last + LEASE - MARGIN;
    tokio::time::sleep_until(stops_counting - 5 * MS).await;
    assert_eq!(capacity.rate(), Some(10_000));
    tokio::time::sleep_until(stops_counting + MS).await;
    assert_eq!(capacity.rate(), Some(0));
    // The store still has the leases as this instance's: it stopped counting
    // them before anyone else could take them.
    assert!((0..10).all(|p| store.inner.holder(p).is_some()));
}

#[tokio::test(start_paused = true)]
async fn falls_back_to_reserved_when_the_store_is_unreachable_and_recovers() {
    let store = Flaky::new(MemoryLeaseStore::new(), Duration::ZERO);
    let capacity = shared(store.clone(), 500);
    let (batcher, _open) = holding(&capacity);
    let mut events = batcher.events();
    let _tickets = want(&batcher, 20_000);
    sleep(10 * MS).await;
    assert_eq!(capacity.rate(), Some(10_500));

    store.set(REFUSE);
    let outage = Instant::now();
    while capacity.rate() != Some(500) {
        sleep(10 * MS).await;
    }
    assert!(
        outage.elapsed() <= LEASE,
        "fell back after {:?}",
        outage.elapsed()
    );
    let status = capacity.status();
    assert!(status.store_error.unwrap().contains("connection refused"));
    assert_eq!(status.partitions, Some((0, 10)));

    store.set(OK);
    let back = Instant::now();
    while capacity.rate() != Some(10_500) {
        sleep(10 * MS).await;
    }
    assert!(
        back.elapsed() <= RETRY + 10 * MS,
        "recovered after {:?}",
        back.elapsed()
    );
    assert_eq!(capacity.status().store_error, None);

    let mut seen = Vec::new();
    while let Ok(Some(e)) = events.try_recv() {
        if let Event::Capacity(
            e @ (CapacityEvent::StoreUnreachable { .. } | CapacityEvent::StoreReachable),
        ) = e
        {
            seen.push(matches!(e, CapacityEvent::StoreReachable));
        }
    }
    assert_eq!(seen, [false, true], "one unreachable, then one reachable");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_never_answers_counts_as_unreachable() {
    let store = Flaky::new(MemoryLeaseStore::new(), Duration::ZERO);
    let capacity = shared(store.clone(), 100);
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 10_000);
    sleep(10 * MS).await;
    store.set(HANG);
    sleep(LEASE).await;
    assert_eq!(capacity.rate(), Some(100));
    let error = capacity.status().store_error.unwrap();
    assert!(error.contains("call timeout"), "{error}");
    store.set(OK);
    sleep(LEASE).await;
    assert_eq!(capacity.rate(), Some(10_100));
}

#[tokio::test(start_paused = true)]
async fn two_instances_never_count_the_same_partition() {
    // Both want all 10 partitions; a is cut off from the store half-way, and
    // b takes a's partitions once the store lets them go.
    let store = MemoryLeaseStore::new();
    let a_store = Flaky::new(store.clone(), 3 * MS);
    let b_store = Flaky::new(store.clone(), 5 * MS);
    let a = shared(a_store.clone(), 0);
    let b = shared(b_store, 0);
    let (a_batcher, _a_open) = holding(&a);
    let (b_batcher, _b_open) = holding(&b);
    let _a_tickets = want(&a_batcher, 10_000);
    let _b_tickets = want(&b_batcher, 10_000);
    let mut max_total = 0;
    let mut cut = None;
    let mut took_over = None;
    for step in 0..1_000 {
        if step == 300 {
            a_store.set(REFUSE);
            cut = Some(Instant::now());
        }
        let total = a.rate().unwrap() + b.rate().unwrap();
        max_total = max_total.max(total);
        if let Some(cut) = cut {
            if took_over.is_none() && b.rate() == Some(10_000) {
                took_over = Some(cut.elapsed());
            }
        }
        sleep(10 * MS).await;
    }
    assert!(max_total <= 10_000, "both counted {max_total}");
    let took_over = took_over.expect("b never took a's partitions");
    // a's leases expire in the store at most a lease time after the cut; b
    // tries again every retry period.
    assert!(
        took_over <= LEASE + RETRY + 20 * MS,
        "took over after {took_over:?}"
    );
    assert_eq!(a.rate(), Some(0));
}

#[tokio::test(start_paused = true)]
async fn diagnose_says_why_nothing_is_granted_when_no_partition_can_be_leased() {
    let store = Flaky::new(MemoryLeaseStore::new(), Duration::ZERO);
    store.set(REFUSE);
    let capacity = shared(store, 0);
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 1_000);
    sleep(LEASE).await;
    let d = batcher.diagnose().await;
    let f = d.find(Code::NoCapacity).expect("a no-capacity finding");
    assert!(f.message.contains("0 of 10 partitions are leased"), "{f}");
    assert!(f.message.contains("cannot be reached"), "{f}");
    assert_eq!(f.number("partitions"), Some(10.0));
}

#[tokio::test(start_paused = true)]
async fn lease_events_and_rate_changes_reach_the_batchers_events() {
    let store = MemoryLeaseStore::new();
    let capacity = shared(store, 0);
    let (batcher, _open) = holding(&capacity);
    let mut events = batcher.events();
    let _tickets = want(&batcher, 2_000);
    sleep(10 * MS).await;
    let mut acquired = BTreeSet::new();
    let mut rates = Vec::new();
    while let Ok(Some(e)) = events.try_recv() {
        match e {
            Event::Capacity(CapacityEvent::LeaseAcquired { partition }) => {
                acquired.insert(partition);
            }
            Event::CapacityChanged { rate } => rates.push(rate),
            _ => {}
        }
    }
    assert_eq!(acquired.len(), 2);
    assert_eq!(rates.last(), Some(&Some(2_000)));
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_with_what_to_change() {
    let store = MemoryLeaseStore::new;
    assert!(matches!(
        Capacity::shared(0, 10_000, 0, store()),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        Capacity::shared(0, 0, 1_000, store()),
        Err(ConfigError::Zero { .. })
    ));
    let e = Capacity::shared(0, 1_000_000, 1_000, store()).unwrap_err();
    assert!(
        matches!(
            e,
            ConfigError::TooLarge {
                value: 1_000,
                max: 500,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("raise the factor"), "{e}");
    let e = SharedCapacity::new(store())
        .shared(10_000, 1_000)
        .lease_time(LEASE)
        .safety_margin(Duration::from_secs(1))
        .renew_every(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(matches!(e, ConfigError::LeaseTiming { .. }), "{e}");
    for huge in [
        SharedCapacity::new(store()).safety_margin(Duration::MAX),
        SharedCapacity::new(store()).renew_every(Duration::MAX),
        SharedCapacity::new(store())
            .renew_every(Duration::from_secs(1))
            .call_timeout(Duration::MAX),
    ] {
        let e = huge
            .shared(10_000, 1_000)
            .lease_time(LEASE)
            .build()
            .unwrap_err();
        assert!(matches!(e, ConfigError::LeaseTiming { .. }), "{e}");
    }
    let e = SharedCapacity::new(store())
        .shared(10_000, 1_000)
        .lease_time(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    let e = SharedCapacity::new(store())
        .shared(10_000, 1_000)
        .retry_every(Duration::from_secs(60))
        .build()
        .unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    let e = SharedCapacity::new(store())
        .shared(10_000, 1_000)
        .burst_interval(Duration::MAX)
        .build()
        .unwrap_err();
    assert!(matches!(e, ConfigError::TooLarge { .. }), "{e}");
    assert!(
        e.to_string().starts_with("SharedCapacity::burst_interval"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn release_all_gives_every_lease_back_and_keeps_the_reserved_part() {
    let store = MemoryLeaseStore::new();
    let (capacity, leases) = SharedCapacity::new(store.clone())
        .reserved(300)
        .shared(10_000, 1_000)
        .lease_time(LEASE)
        .start()
        .unwrap();
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 10_000);
    sleep(10 * MS).await;
    assert_eq!(store.held(), 10);
    leases.release_all().await;
    assert_eq!(store.held(), 0);
    assert_eq!(capacity.rate(), Some(300));
}

#[tokio::test(start_paused = true)]
async fn instances_that_all_want_more_than_there_is_share_it_evenly() {
    let store = MemoryLeaseStore::new();
    let capacities: Vec<Capacity> = (0..4).map(|_| shared(store.clone(), 0)).collect();
    let held: Vec<_> = capacities.iter().map(holding).collect();
    let _tickets: Vec<_> = held.iter().map(|(b, _)| want(b, 20_000)).collect();
    let mut max_total = 0;
    for _ in 0..200 {
        sleep(10 * MS).await;
        max_total = max_total.max(capacities.iter().map(|c| c.rate().unwrap()).sum());
    }
    let mut rates: Vec<u64> = capacities.iter().map(|c| c.rate().unwrap()).collect();
    rates.sort_unstable();
    assert_eq!(rates, [2_000, 2_000, 3_000, 3_000]);
    assert!(max_total <= 10_000, "together they counted {max_total}");
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_gets_its_share_from_an_instance_that_held_everything() {
    let store = MemoryLeaseStore::new();
    let a = shared(store.clone(), 0);
    let (a_batcher, _a_open) = holding(&a);
    let _a_tickets = want(&a_batcher, 20_000);
    sleep(LEASE).await;
    assert_eq!(a.rate(), Some(10_000));

    let b = shared(store.clone(), 0);
    let (b_batcher, _b_open) = holding(&b);
    let _b_tickets = want(&b_batcher, 20_000);
    let joined = Instant::now();
    let mut max_total = 0;
    while b.rate() != Some(5_000) {
        max_total = max_total.max(a.rate().unwrap() + b.rate().unwrap());
        assert!(joined.elapsed() < LEASE, "b never got its share");
        sleep(10 * MS).await;
    }
    // a hears of b at its next announcement (every renewal period), gives
    // back its extra partitions, and b takes them at its next retry.
    assert!(
        joined.elapsed() <= Duration::from_millis(500) + RETRY + 20 * MS,
        "b got its share after {:?}",
        joined.elapsed()
    );
    assert_eq!(a.rate(), Some(5_000));
    assert!(max_total <= 10_000, "together they counted {max_total}");
}

/// A store that keeps leases but no demands (the trait's default announce).
struct NoDemands(MemoryLeaseStore);

impl LeaseStore for NoDemands {
    fn acquire<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, Acquired> {
        self.0.acquire(p, owner, t)
    }
    fn renew<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, bool> {
        self.0.renew(p, owner, t)
    }
    fn release<'a>(&'a self, p: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        self.0.release(p, owner)
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_without_demands_shares_safely_first_come_first_served() {
    let store = MemoryLeaseStore::new();
    let a = shared(NoDemands(store.clone()), 0);
    let (a_batcher, _a_open) = holding(&a);
    let _a_tickets = want(&a_batcher, 20_000);
    sleep(10 * MS).await;
    let b = shared(NoDemands(store.clone()), 0);
    let (b_batcher, _b_open) = holding(&b);
    let _b_tickets = want(&b_batcher, 20_000);
    for _ in 0..300 {
        sleep(10 * MS).await;
        assert!(a.rate().unwrap() + b.rate().unwrap() <= 10_000);
    }
    // Without demands nobody knows of b: a keeps what it renews.
    assert_eq!((a.rate(), b.rate()), (Some(10_000), Some(0)));
}

/// Whether the store still holds anything of an instance that died: its
/// announced demand (told by announcing nothing, for no time, as an
/// observer) or its leases (fewer than all 10 held means some ran out).
async fn victim_gone(store: &MemoryLeaseStore) -> bool {
    let demands = store
        .announce("observer", 0, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    demands.len() <= 1 && store.held() < 10
}

#[tokio::test(start_paused = true)]
async fn the_partitions_of_an_instance_that_died_are_taken_as_soon_as_its_leases_run_out() {
    // Out of step with the survivor's retry period by various amounts, so
    // that a survivor that only looked at its retry period would be late.
    for (start, death) in [(0, 0), (70, 0), (130, 290), (30, 444), (190, 120)] {
        let store = MemoryLeaseStore::new();
        let survivor = shared(store.clone(), 0);
        let (s_batcher, _s_open) = holding(&survivor);
        let _s_tickets = want(&s_batcher, 20_000);
        sleep(start * MS).await;
        // The victim reaches the store through a gate that stops answering
        // when it "dies": it renews, announces and releases nothing more.
        let victim_store = Flaky::new(store.clone(), Duration::ZERO);
        let victim = shared(victim_store.clone(), 0);
        let (v_batcher, _v_open) = holding(&victim);
        let _v_tickets = want(&v_batcher, 20_000);
        sleep(2 * LEASE + death * MS).await;
        assert_eq!(survivor.rate(), Some(5_000));
        assert_eq!(victim.rate(), Some(5_000));

        victim_store.set(HANG);
        let died = Instant::now();
        // Its leases and its announced demand run out in the store within
        // one lease time; the survivor, told by the store when they would,
        // takes its partitions at once rather than at its next retry.
        let mut gone = None;
        loop {
            if gone.is_none() && victim_gone(&store).await {
                gone = Some(Instant::now());
            }
            if survivor.rate() == Some(10_000) {
                break;
            }
            assert!(died.elapsed() <= 2 * LEASE, "never taken over");
            sleep(MS).await;
        }
        let case = format!("victim started at {start} ms, died {death} ms into a period");
        assert!(
            died.elapsed() <= LEASE + 5 * MS,
            "{case}: taken over {:?} after it died",
            died.elapsed()
        );
        let gone = gone.unwrap_or_else(Instant::now);
        assert!(
            gone.elapsed() <= 3 * MS,
            "{case}: taken over {:?} after its leases and demand ran out",
            gone.elapsed()
        );
    }
}

/// A store whose leases last 15 to 60 seconds, as a blob store's do.
struct Bounded(MemoryLeaseStore);

impl LeaseStore for Bounded {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        self.0.acquire(partition, owner, lease)
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease: Duration,
    ) -> LeaseFuture<'a, bool> {
        self.0.renew(partition, owner, lease)
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        self.0.release(partition, owner)
    }

    fn lease_times(&self) -> std::ops::RangeInclusive<Duration> {
        Duration::from_secs(15)..=Duration::from_secs(60)
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_time_the_store_cannot_grant_is_refused_when_built() {
    let build = |lease: Duration| {
        SharedCapacity::new(Arc::new(Bounded(MemoryLeaseStore::new())))
            .shared(10_000, 1_000)
            .lease_time(lease)
            .build()
    };
    for lease in [
        LEASE,
        Duration::from_millis(14_999),
        Duration::from_millis(60_001),
    ] {
        let e = build(lease).unwrap_err();
        assert_eq!(
            e,
            ConfigError::LeaseTimeUnsupported {
                lease_time: lease,
                min: Duration::from_secs(15),
                max: Duration::from_secs(60),
            }
        );
        assert!(e.to_string().contains("15s to 60s"), "{e}");
    }
    for lease in [Duration::from_secs(15), Duration::from_secs(60)] {
        assert!(build(lease).is_ok(), "{lease:?}");
    }
    // Stores that say nothing take any lease time.
    assert!(SharedCapacity::new(MemoryLeaseStore::new())
        .shared(10_000, 1_000)
        .lease_time(Duration::from_millis(1))
        .safety_margin(Duration::ZERO)
        .renew_every(Duration::from_micros(500))
        .retry_every(Duration::from_micros(100))
        .call_timeout(Duration::from_micros(100))
        .build()
        .is_ok());
}

/// A store that says, once, that partition 0 is held for `Duration::MAX`,
/// and that an instance that wants nothing announced itself for as long.
struct Forever {
    inner: MemoryLeaseStore,
    told: std::sync::atomic::AtomicBool,
}

impl LeaseStore for Forever {
    fn acquire<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, Acquired> {
        if p == 0 && !self.told.swap(true, Ordering::SeqCst) {
            return Box::pin(async {
                Ok(Acquired::Held {
                    expires_in: Some(Duration::MAX),
                })
            });
        }
        self.inner.acquire(p, owner, t)
    }
    fn renew<'a>(&'a self, p: u32, owner: &'a str, t: Duration) -> LeaseFuture<'a, bool> {
        self.inner.renew(p, owner, t)
    }
    fn release<'a>(&'a self, p: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        self.inner.release(p, owner)
    }
    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        Box::pin(async move {
            let mut demands = self.inner.announce(owner, wanted, ttl).await?;
            if let Some(demands) = demands.as_mut() {
                demands.push(Demand::new("idle", 0).expires_in(Duration::MAX));
            }
            Ok(demands)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn expiries_of_duration_max_from_the_store_do_not_stop_the_lease_task() {
    let store = Forever {
        inner: MemoryLeaseStore::new(),
        told: std::sync::atomic::AtomicBool::new(false),
    };
    let capacity = shared(store, 0);
    let (batcher, _open) = holding(&capacity);
    let _tickets = want(&batcher, 10_000);
    // Partition 0 is taken at the next round, a retry period later.
    sleep(2 * RETRY).await;
    assert_eq!(capacity.rate(), Some(10_000));
    // And the task goes on renewing.
    sleep(3 * LEASE).await;
    assert_eq!(capacity.rate(), Some(10_000));
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_takes_a_lease_time_of_duration_max() {
    let store = MemoryLeaseStore::new();
    assert!(store
        .acquire(1, "a", Duration::MAX)
        .await
        .unwrap()
        .is_granted());
    assert!(store.renew(1, "a", Duration::MAX).await.unwrap());
    assert_eq!(store.holder(1).as_deref(), Some("a"));
    let demands = store.announce("a", 1, Duration::MAX).await.unwrap();
    assert_eq!(demands.map(|d| d.len()), Some(1));
}
