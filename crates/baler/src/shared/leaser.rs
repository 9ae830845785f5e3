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
//! - Fair sharing only ever lowers what an instance wants (to its max-min
//!   share of the demands announced to the store); it never takes a
//!   partition that is not free, so it cannot break the invariants above.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::events::CapacityEvent;

use super::partitions::{fair_share, shuffled};
use super::source::{lock, Counted, State};
use super::store::{Acquired, Demand, LeaseStore, LeaseStoreError};

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
        announces: true,
        others: None,
        announced: None,
        next_announce: None,
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
    /// Whether the store keeps demands (see [`LeaseStore::announce`]).
    announces: bool,
    /// The other instances' demands, as the store last gave them.
    others: Option<Vec<Demand>>,
    /// The demand last announced.
    announced: Option<u32>,
    next_announce: Option<Instant>,
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
            if self.others.is_none() {
                // Learn the others' demands before taking anything.
                self.announce(now).await;
            }
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
            let before = self.wanted();
            self.announce(Instant::now()).await;
            self.publish();
            if self.wanted() != before {
                // The fair share changed: give back or take at once.
                continue;
            }
            self.sleep().await;
        }
    }

    /// The partitions the target needs.
    fn needed(&self) -> u32 {
        self.state.wanted.load(Ordering::SeqCst)
    }

    /// The partitions to hold: what the target needs, but no more than the
    /// fair share when the store keeps demands.
    fn wanted(&self) -> usize {
        let needed = self.needed();
        let Some(others) = &self.others else {
            return needed as usize;
        };
        let mut all = others.clone();
        all.push(Demand::new(&*self.owner, needed));
        fair_share(&self.owner, &all, self.state.plan.count).min(needed) as usize
    }

    /// Tells the store what this instance needs, and learns its fair share:
    /// when the need changed, and otherwise every renewal period (every retry
    /// period while it needs more than it holds, to notice sooner when
    /// another instance leaves).
    async fn announce(&mut self, now: Instant) {
        if !self.announces {
            return;
        }
        let needed = self.needed();
        let due = self.next_announce.is_none_or(|t| now >= t) || self.announced != Some(needed);
        if !due {
            return;
        }
        let t = self.timing;
        let result = match tokio::time::timeout(
            t.call_timeout,
            self.store.announce(&self.owner, needed, t.lease_time),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(timed_out(t.call_timeout)),
        };
        self.seen(&result);
        let every = if needed as usize > self.held.len() {
            t.retry_every
        } else {
            t.renew_every
        };
        let mut next = Instant::now() + every;
        match result {
            Ok(Some(demands)) => {
                let me: &str = &self.owner;
                let others: Vec<Demand> = demands.into_iter().filter(|d| d.owner != me).collect();
                // Announce again as soon as another's announcement runs out:
                // an instance that died stops announcing, and its share is
                // free from then on.
                if let Some(soonest) = others.iter().filter_map(|d| d.expires_in).min() {
                    next = next.min(just_after(soonest, &t));
                }
                self.others = Some(others);
                self.announced = Some(needed);
            }
            Ok(None) => {
                self.announces = false;
                self.others = None;
            }
            Err(_) => next = Instant::now() + t.retry_every,
        }
        self.next_announce = Some(next);
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
        if self.announces {
            if let Some(t) = self.next_announce {
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
        // Errors do not matter here: an unreleased lease expires, and so
        // does an announcement.
        let _ = self.calls(Call::Release, &all).await;
        if self.announces {
            let t = self.timing;
            let _ = tokio::time::timeout(
                t.call_timeout,
                self.store.announce(&self.owner, 0, t.lease_time),
            )
            .await;
        }
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
                Ok(Acquired::Granted) => {
                    self.held.insert(partition, self.fresh(sent));
                    self.event(CapacityEvent::LeaseRenewed { partition });
                }
                Ok(Acquired::Held { .. }) => {
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
        // When the first of the leases in the way runs out, by the store's
        // word: the next round starts then if that is sooner than the retry
        // period, so an instance that died loses its partitions to the
        // others as soon as its leases expire.
        let mut soonest_free: Option<Instant> = None;
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
                    Ok(Acquired::Granted) => {
                        self.held.insert(partition, self.fresh(sent));
                        self.event(CapacityEvent::LeaseAcquired { partition });
                    }
                    Ok(Acquired::Held { expires_in }) => {
                        if let Some(free) = expires_in.map(|e| just_after(e, &self.timing)) {
                            soonest_free = Some(soonest_free.map_or(free, |s| s.min(free)));
                        }
                    }
                    Err(_) => failed = true,
                }
            }
            self.sync_counted();
            self.publish();
            if failed {
                break;
            }
        }
        let retry = Instant::now() + self.timing.retry_every;
        self.next_round = Some(soonest_free.map_or(retry, |free| free.min(retry)));
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
    ) -> Vec<(u32, Instant, Result<Acquired, LeaseStoreError>)> {
        let mut set = JoinSet::new();
        for &partition in partitions {
            let store = self.store.clone();
            let owner = self.owner.clone();
            let t = self.timing;
            set.spawn(async move {
                let sent = Instant::now();
                // A renewal or release that took effect answers `Granted`;
                // a renewal of a lease no longer held answers `Held`.
                let future = async {
                    match call {
                        Call::Acquire => store.acquire(partition, &owner, t.lease_time).await,
                        Call::Renew => {
                            let renewed = store.renew(partition, &owner, t.lease_time).await?;
                            Ok(if renewed {
                                Acquired::Granted
                            } else {
                                Acquired::Held { expires_in: None }
                            })
                        }
                        Call::Release => {
                            store.release(partition, &owner).await?;
                            Ok(Acquired::Granted)
                        }
                    }
                };
                let result = match tokio::time::timeout(t.call_timeout, future).await {
                    Ok(result) => result,
                    Err(_) => Err(timed_out(t.call_timeout)),
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
    fn seen<T>(&mut self, result: &Result<T, LeaseStoreError>) {
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

/// A moment just after `expires_in` from now: what the store said runs out
/// then has surely run out (the store's answer took time to arrive, and it
/// counts whole milliseconds). Never sooner than a twentieth of the retry
/// period, so that a store that keeps answering "about to run out" cannot
/// drive the lease task into a busy loop.
fn just_after(expires_in: Duration, timing: &Timing) -> Instant {
    let wait = expires_in.saturating_add(Duration::from_millis(1));
    crate::time::later(Instant::now(), wait.max(timing.retry_every / 20))
}

fn timed_out(timeout: Duration) -> LeaseStoreError {
    LeaseStoreError::unreachable(format!("no answer within the call timeout of {timeout:?}"))
}
