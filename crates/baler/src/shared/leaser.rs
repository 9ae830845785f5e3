//! The lease task: takes, renews and gives back partition leases as the
//! target changes.
//!
//! # Invariants
//!
//! - A lease counts (in [`State::counted`]) from the moment its acquire or
//!   renew request was sent until `sent + lease_time - safety_margin`. The
//!   store set its expiry to `lease_time` after it *received* the request, so
//!   by then the lease is still this instance's, with `safety_margin` to
//!   spare for clock drift. [`State::rate_at`] enforces the end itself, so a
//!   task that runs late cannot stretch it.
//! - A lease stops counting *before* its release is sent.
//! - An acquire that fails or times out counts nothing: the store may have
//!   granted it, but then nobody else can have it either until it expires.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::events::CapacityEvent;

use super::partitions::shuffled;
use super::source::{lock, Counted, State};
use super::store::{LeaseStore, LeaseStoreError};

/// How leases are timed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) lease_time: Duration,
    pub(crate) safety_margin: Duration,
    pub(crate) renew_every: Duration,
    pub(crate) retry_every: Duration,
    pub(crate) call_timeout: Duration,
}

pub(crate) fn start(
    runtime: &Handle,
    state: Arc<State>,
    store: Arc<dyn LeaseStore>,
    owner: String,
    timing: Timing,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    let leaser = Leaser {
        state,
        store,
        owner: owner.into(),
        timing,
        seed: seed | 1,
        held: BTreeMap::new(),
        reachable: true,
        next_round: None,
        last_round_wanted: 0,
        published_rate: None,
    };
    runtime.spawn(leaser.run())
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// When the lease stops counting.
    until: Instant,
    /// When to renew it.
    renew_at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Acquire,
    Renew,
    Release,
}

struct Leaser {
    state: Arc<State>,
    store: Arc<dyn LeaseStore>,
    owner: Arc<str>,
    timing: Timing,
    seed: u64,
    held: BTreeMap<u32, Held>,
    reachable: bool,
    /// No acquire round before this, unless the target grows.
    next_round: Option<Instant>,
    last_round_wanted: usize,
    published_rate: Option<u64>,
}

impl Leaser {
    async fn run(mut self) {
        loop {
            if self.state.closed.load(Ordering::SeqCst) {
                self.release_all().await;
                return;
            }
            let now = Instant::now();
            self.expire(now);
            let wanted = self.wanted();
            if self.held.len() > wanted {
                self.release_extra(wanted).await;
            }
            self.renew_due(now).await;
            let wanted = self.wanted();
            let round_due = self.next_round.is_none_or(|t| Instant::now() >= t);
            if self.held.len() < wanted && (round_due || wanted > self.last_round_wanted) {
                self.acquire_round().await;
            }
            self.publish();
            self.sleep().await;
        }
    }

    fn wanted(&self) -> usize {
        self.state.wanted.load(Ordering::SeqCst) as usize
    }

    /// Sleeps until the next renewal, expiry or acquire round, or until the
    /// target's needs change.
    async fn sleep(&mut self) {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for held in self.held.values() {
            consider(held.until);
            consider(held.renew_at);
        }
        if self.held.len() < self.wanted() {
            if let Some(t) = self.next_round {
                consider(t);
            }
        }
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = self.state.wake.notified() => {}
                }
            }
            None => self.state.wake.notified().await,
        }
    }

    /// Drops the leases that stopped counting without a renewal.
    fn expire(&mut self, now: Instant) {
        let lost: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(p, _)| *p)
            .collect();
        for partition in lost {
            self.held.remove(&partition);
            self.event(CapacityEvent::LeaseLost { partition });
        }
        self.sync_counted();
    }

    async fn release_extra(&mut self, wanted: usize) {
        let extra: Vec<u32> = self
            .held
            .keys()
            .rev()
            .take(self.held.len() - wanted)
            .copied()
            .collect();
        for p in &extra {
            self.held.remove(p);
        }
        // Stop counting them before the store hands them to someone else.
        self.sync_counted();
        self.publish();
        for (partition, _, result) in self.calls(Call::Release, &extra).await {
            self.seen(&result);
            self.event(CapacityEvent::LeaseReleased { partition });
        }
    }

    async fn release_all(&mut self) {
        let all: Vec<u32> = self.held.keys().copied().collect();
        self.held.clear();
        self.sync_counted();
        // Errors do not matter here: an unreleased lease expires.
        let _ = self.calls(Call::Release, &all).await;
    }

    async fn renew_due(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.renew_at <= now)
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        for (partition, sent, result) in self.calls(Call::Renew, &due).await {
            self.seen(&result);
            match result {
                Ok(true) => {
                    self.held.insert(partition, self.fresh(sent));
                    self.event(CapacityEvent::LeaseRenewed { partition });
                }
                Ok(false) => {
                    self.held.remove(&partition);
                    self.event(CapacityEvent::LeaseLost { partition });
                }
                Err(_) => {
                    // Keep counting it until it would expire; try again soon.
                    let retry = Instant::now() + self.timing.retry_every;
                    if let Some(h) = self.held.get_mut(&partition) {
                        h.renew_at = retry.min(h.until);
                    }
                }
            }
        }
        self.sync_counted();
    }

    /// Tries the partitions not held, in a random order, in waves of as many
    /// as are missing, all of a wave at once, until the target is covered or
    /// every partition has been tried.
    async fn acquire_round(&mut self) {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let candidates: Vec<u32> = shuffled(self.state.plan.count, self.seed)
            .into_iter()
            .filter(|p| !self.held.contains_key(p))
            .collect();
        self.last_round_wanted = self.wanted();
        let mut next = 0;
        loop {
            let wanted = self.wanted();
            if self.held.len() >= wanted
                || next >= candidates.len()
                || self.state.closed.load(Ordering::SeqCst)
            {
                break;
            }
            let end = (next + wanted - self.held.len()).min(candidates.len());
            let wave = &candidates[next..end];
            next = end;
            let mut failed = false;
            for (partition, sent, result) in self.calls(Call::Acquire, wave).await {
                self.seen(&result);
                match result {
                    Ok(true) => {
                        self.held.insert(partition, self.fresh(sent));
                        self.event(CapacityEvent::LeaseAcquired { partition });
                    }
                    Ok(false) => {}
                    Err(_) => failed = true,
                }
            }
            self.sync_counted();
            self.publish();
            if failed {
                break;
            }
        }
        self.next_round = Some(Instant::now() + self.timing.retry_every);
    }

    fn fresh(&self, sent: Instant) -> Held {
        let t = self.timing;
        Held {
            until: sent + t.lease_time - t.safety_margin,
            renew_at: sent + t.renew_every,
        }
    }

    /// Runs one call per partition, all at once, each bounded by the call
    /// timeout; returns each partition with when its call was sent.
    async fn calls(
        &self,
        call: Call,
        partitions: &[u32],
    ) -> Vec<(u32, Instant, Result<bool, LeaseStoreError>)> {
        let mut set = JoinSet::new();
        for &partition in partitions {
            let store = self.store.clone();
            let owner = self.owner.clone();
            let t = self.timing;
            set.spawn(async move {
                let sent = Instant::now();
                let future = async {
                    match call {
                        Call::Acquire => store.acquire(partition, &owner, t.lease_time).await,
                        Call::Renew => store.renew(partition, &owner, t.lease_time).await,
                        Call::Release => store.release(partition, &owner).await.map(|()| true),
                    }
                };
                let result = match tokio::time::timeout(t.call_timeout, future).await {
                    Ok(result) => result,
                    Err(_) => Err(LeaseStoreError::unreachable(format!(
                        "no answer within the call timeout of {:?}",
                        t.call_timeout
                    ))),
                };
                (partition, sent, result)
            });
        }
        let mut results = Vec::with_capacity(partitions.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => {
                    // The store's future panicked: the call's partition is
                    // unknown here; leases it held keep counting only until
                    // they would expire, and it counts as a failed call.
                    let error =
                        LeaseStoreError::protocol(format!("a lease store call failed: {e}"));
                    self.mark_unreachable(&error);
                }
            }
        }
        results
    }

    /// Records whether the store answered.
    fn seen(&mut self, result: &Result<bool, LeaseStoreError>) {
        match result {
            Ok(_) if !self.reachable => {
                self.reachable = true;
                *lock(&self.state.store_error) = None;
                self.event(CapacityEvent::StoreReachable);
            }
            Ok(_) => {}
            Err(error) => {
                if self.reachable {
                    self.reachable = false;
                    self.event(CapacityEvent::StoreUnreachable {
                        error: error.to_string(),
                    });
                }
                self.mark_unreachable(error);
            }
        }
    }

    fn mark_unreachable(&self, error: &LeaseStoreError) {
        *lock(&self.state.store_error) = Some(error.to_string());
    }

    fn sync_counted(&self) {
        let plan = self.state.plan;
        let counted: Vec<Counted> = self
            .held
            .iter()
            .map(|(&partition, h)| Counted {
                worth: plan.worth(partition),
                until: h.until,
            })
            .collect();
        *lock(&self.state.counted) = counted;
    }

    /// Tells the batchers when the rate changed.
    fn publish(&mut self) {
        let rate = self.state.rate_at(Instant::now());
        if self.published_rate != Some(rate) {
            self.published_rate = Some(rate);
            if let Some(notifier) = self.state.notifier.get() {
                notifier.rate_changed();
            }
        }
    }

    fn event(&self, event: CapacityEvent) {
        if let Some(notifier) = self.state.notifier.get() {
            notifier.event(event);
        }
    }
}
