//! What every contender's handler shares with the harness: a gate that holds
//! batches back (for the memory workload) and counters of batches and keys.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The largest batch every contender is configured for.
pub const MAX_BATCH: usize = 100;
/// The linger (longest wait for a partial batch) every contender is
/// configured for, where it has one.
pub const LINGER: Duration = Duration::from_millis(1);
/// Room for waiting operations when a workload does not need more: baler's
/// default `buffer_size`, given to every contender that has such a bound.
pub const DEFAULT_BUFFER: usize = 10_000;

/// The error every adapter returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shared between the harness and one contender's handler for one
/// measurement.
#[derive(Debug, Default)]
pub struct Shared {
    closed: AtomicBool,
    notify: Notify,
    batches: AtomicU64,
    keys: AtomicU64,
}

impl Shared {
    /// A gate that is open.
    pub fn open() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A gate that is closed: handlers wait in [`Shared::batch`] until
    /// [`Shared::release`].
    pub fn closed() -> Arc<Self> {
        let s = Self::default();
        s.closed.store(true, Ordering::Release);
        Arc::new(s)
    }

    /// Opens the gate.
    pub fn release(&self) {
        self.closed.store(false, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Called by an async handler at the start of each batch of `keys`
    /// distinct keys: counts it and waits while the gate is closed. One
    /// atomic load and two relaxed adds when open.
    pub async fn batch(&self, keys: usize) {
        self.count(keys);
        while self.closed.load(Ordering::Acquire) {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.closed.load(Ordering::Acquire) {
                break;
            }
            notified.await;
        }
    }

    /// As [`Shared::batch`], for a handler that runs on a thread of its own.
    pub fn batch_blocking(&self, keys: usize) {
        self.count(keys);
        while self.closed.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn count(&self, keys: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.keys.fetch_add(keys as u64, Ordering::Relaxed);
    }

    /// Batches the handler saw.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Keys the handler saw, over all batches.
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }
}
