//! An in-memory store for the processor's tests: a map of keys to lists of
//! numbers, with delays, failures and panics to inject, and counters of what
//! the processor asked of it.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::processor::Store;

/// What the store failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDown(pub &'static str);

impl fmt::Display for StoreDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the store is down ({})", self.0)
    }
}

#[derive(Default)]
pub struct Inner {
    pub data: Mutex<HashMap<String, Vec<u32>>>,
    pub load_delay: Mutex<Duration>,
    pub save_delay: Mutex<Duration>,
    pub fail_load: AtomicBool,
    pub fail_save: AtomicBool,
    pub panic_load: AtomicBool,
    pub loads: AtomicU64,
    pub saves: AtomicU64,
    /// Batches of each key between the start of their load and the end of
    /// their save.
    pub active: Mutex<HashMap<String, usize>>,
    pub max_active_per_key: AtomicU64,
    pub active_total: AtomicU64,
    pub max_active_total: AtomicU64,
}

/// A cheap handle to the store, given to the processor and kept by the test.
#[derive(Clone, Default)]
pub struct Mem(pub Arc<Inner>);

impl Mem {
    pub fn new() -> Self {
        Mem::default()
    }

    pub fn with_delays(load: Duration, save: Duration) -> Self {
        let mem = Mem::default();
        *mem.0.load_delay.lock().unwrap() = load;
        *mem.0.save_delay.lock().unwrap() = save;
        mem
    }

    pub fn set_load_delay(&self, d: Duration) {
        *self.0.load_delay.lock().unwrap() = d;
    }

    pub fn set_save_delay(&self, d: Duration) {
        *self.0.save_delay.lock().unwrap() = d;
    }

    /// What was last saved for `key`.
    pub fn saved(&self, key: &str) -> Vec<u32> {
        self.0
            .data
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub fn loads(&self) -> u64 {
        self.0.loads.load(Ordering::SeqCst)
    }

    pub fn saves(&self) -> u64 {
        self.0.saves.load(Ordering::SeqCst)
    }

    fn enter(&self, key: &str) {
        let mut active = self.0.active.lock().unwrap();
        let n = active.entry(key.to_owned()).or_default();
        *n += 1;
        self.0
            .max_active_per_key
            .fetch_max(*n as u64, Ordering::SeqCst);
        let total = self.0.active_total.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_active_total.fetch_max(total, Ordering::SeqCst);
    }

    fn leave(&self, key: &str) {
        let mut active = self.0.active.lock().unwrap();
        if let Some(n) = active.get_mut(key) {
            *n -= 1;
        }
        self.0.active_total.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Store<String> for Mem {
    type Resource = Vec<u32>;
    type Error = StoreDown;

    async fn load(&self, key: &String) -> Result<Vec<u32>, StoreDown> {
        self.enter(key);
        let delay = *self.0.load_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.0.panic_load.load(Ordering::SeqCst) {
            self.leave(key);
            panic!("the load panicked");
        }
        if self.0.fail_load.load(Ordering::SeqCst) {
            self.leave(key);
            return Err(StoreDown("load"));
        }
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.saved(key))
    }

    async fn save(&self, key: &String, list: Vec<u32>) -> Result<(), StoreDown> {
        let delay = *self.0.save_delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.leave(key);
        if self.0.fail_save.load(Ordering::SeqCst) {
            return Err(StoreDown("save"));
        }
        self.0.saves.fetch_add(1, Ordering::SeqCst);
        self.0.data.lock().unwrap().insert(key.clone(), list);
        Ok(())
    }
}
