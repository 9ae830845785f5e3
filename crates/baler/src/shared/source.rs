//! The shared capacity as the engine sees it: a [`CapacitySource`] whose
//! rate is the reserved part plus the partitions counted as held.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capacity::{CapacityNotifier, CapacitySource};
use crate::diagnose::CapacityStatus;

use super::partitions::Plan;

/// What the engine and the lease task share.
pub(crate) struct State {
    pub(crate) plan: Plan,
    /// How many partitions the target needs.
    pub(crate) wanted: AtomicU32,
    /// The partitions counted as held, each with its worth and the moment it
    /// stops counting. [`State::rate`] ignores a lease past that moment even
    /// if the task has not yet looked, so a late task can never make two
    /// instances count the same partition.
    pub(crate) counted: Mutex<Vec<Counted>>,
    pub(crate) store_error: Mutex<Option<String>>,
    pub(crate) notifier: OnceLock<CapacityNotifier>,
    /// Wakes the lease task: the wanted count changed, or the capacity was
    /// dropped.
    pub(crate) wake: Notify,
    pub(crate) closed: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    pub(crate) worth: u64,
    pub(crate) until: Instant,
}

impl State {
    pub(crate) fn rate_at(&self, now: Instant) -> u64 {
        let counted = lock(&self.counted);
        let leased: u64 = counted
            .iter()
            .filter(|c| c.until > now)
            .map(|c| c.worth)
            .sum();
        self.plan.reserved.saturating_add(leased)
    }

    pub(crate) fn held_at(&self, now: Instant) -> u32 {
        let n = lock(&self.counted).iter().filter(|c| c.until > now).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The [`CapacitySource`] of a shared capacity. Dropping it (with the last
/// clone of its capacity) tells the lease task to give everything back.
pub(crate) struct SharedSource {
    state: Arc<State>,
}

impl SharedSource {
    pub(crate) fn new(plan: Plan) -> Self {
        SharedSource {
            state: Arc::new(State {
                plan,
                wanted: AtomicU32::new(0),
                counted: Mutex::new(Vec::new()),
                store_error: Mutex::new(None),
                notifier: OnceLock::new(),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    pub(crate) fn state(&self) -> Arc<State> {
        self.state.clone()
    }
}

impl CapacitySource for SharedSource {
    fn rate(&self) -> u64 {
        self.state.rate_at(Instant::now())
    }

    fn max_rate(&self) -> u64 {
        self.state
            .plan
            .reserved
            .saturating_add(self.state.plan.shared)
    }

    fn target_changed(&self, target: u64) {
        let wanted = self.state.plan.wanted(target);
        if self.state.wanted.swap(wanted, Ordering::SeqCst) != wanted {
            self.state.wake.notify_one();
        }
    }

    fn status(&self) -> CapacityStatus {
        CapacityStatus::new(
            Some(self.state.plan.reserved),
            Some((self.state.held_at(Instant::now()), self.state.plan.count)),
            lock(&self.state.store_error).clone(),
        )
    }

    fn attach(&self, notifier: CapacityNotifier) {
        let _ = self.state.notifier.set(notifier);
    }
}

impl Drop for SharedSource {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::SeqCst);
        self.state.wake.notify_one();
    }
}
