//! Key slots: the buffer, one queue per key.
//!
//! Owns the queues of operations waiting for a batch, each key's share of
//! the in-flight and retry counts, and the map from key to slot. Slot 0 is
//! the queue of operations without a key and is never freed; a keyed slot
//! is freed (and its index reused) as soon as it holds nothing, so memory
//! does not grow with the number of keys ever seen.
//!
//! # Invariants
//!
//! - `cost` is the sum of the costs in `queue`.
//! - A slot is freed only when its queue is empty, nothing of its key is in
//!   flight or waiting out a retry, and it is not in the ready queue: every
//!   reference to a slot by index (a batch in flight, a retry, the ready
//!   queue) keeps it alive. Its `generation` moves on when it is freed, so a
//!   timer armed for its previous key is recognised as stale.
//! - `drain <= queue.len()`: the front operations a flush marked.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::ops::{Index, IndexMut};

use tokio::time::Instant;

use crate::queued::Queued;

/// The operations of one key.
pub(super) struct KeySlot<T, K, O, E> {
    pub(super) key: Option<K>,
    pub(super) generation: u32,
    pub(super) queue: VecDeque<Queued<T, O, E>>,
    /// Total cost of `queue`.
    pub(super) cost: u64,
    pub(super) in_flight: usize,
    /// Operations of this key waiting out a retry backoff.
    pub(super) retrying: usize,
    /// Whether the slot is in the ready queue.
    pub(super) listed: bool,
    /// The deadline of its live timer entry.
    pub(super) armed: Option<Instant>,
    /// Operations at the front to dispatch regardless of linger: a flush.
    pub(super) drain: usize,
    pub(super) live: bool,
}

impl<T, K, O, E> KeySlot<T, K, O, E> {
    fn new(key: Option<K>) -> Self {
        KeySlot {
            key,
            generation: 0,
            queue: VecDeque::new(),
            cost: 0,
            in_flight: 0,
            retrying: 0,
            listed: false,
            armed: None,
            drain: 0,
            live: true,
        }
    }

    /// How many operations from the front form the next batch, and their
    /// cost: at most `max` operations, and at most `cost_limit` of cost
    /// unless a single operation costs more (it then goes alone).
    pub(super) fn head_batch(&self, max: usize, cost_limit: u64) -> (usize, u64) {
        if self.cost <= cost_limit {
            // The whole queue is within the cost limit, so any front of it
            // is: the batch is as many as the size allows.
            if self.queue.len() <= max {
                return (self.queue.len(), self.cost);
            }
            let cost = self.queue.range(..max).map(|op| u64::from(op.cost)).sum();
            return (max, cost);
        }
        let mut count = 0;
        let mut cost = 0u64;
        for op in self.queue.iter().take(max) {
            let c = u64::from(op.cost);
            if count > 0 && cost + c > cost_limit {
                break;
            }
            count += 1;
            cost += c;
        }
        (count, cost)
    }

    /// Adds an operation at the back of the queue.
    #[inline]
    pub(super) fn push(&mut self, op: Queued<T, O, E>) {
        self.cost += u64::from(op.cost);
        self.queue.push_back(op);
    }
}

/// Every key's slot, by index, and the index of each key.
pub(super) struct KeySlots<T, K, O, E> {
    slots: Vec<KeySlot<T, K, O, E>>,
    free: Vec<usize>,
    index: HashMap<K, usize>,
}

impl<T, K: Eq + Hash + Clone, O, E> KeySlots<T, K, O, E> {
    pub(super) fn new() -> Self {
        KeySlots {
            // Slot 0 is the queue of operations without a key.
            slots: vec![KeySlot::new(None)],
            free: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// The number of slot indices, live or free.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The number of keys held.
    pub(super) fn keys(&self) -> usize {
        self.index.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &KeySlot<T, K, O, E>> {
        self.slots.iter()
    }

    /// The slot of a key, created if it has none; 0 without a key.
    #[inline]
    pub(super) fn slot_for(&mut self, key: Option<K>) -> usize {
        match key {
            None => 0,
            Some(key) => self.slot_for_key(key),
        }
    }

    fn slot_for_key(&mut self, key: K) -> usize {
        if let Some(&slot) = self.index.get(&key) {
            return slot;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                let s = &mut self.slots[slot];
                debug_assert!(!s.live && s.queue.is_empty(), "a free slot holds nothing");
                s.key = Some(key.clone());
                s.live = true;
                slot
            }
            None => {
                self.slots.push(KeySlot::new(Some(key.clone())));
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        slot
    }

    /// Frees a keyed slot that holds nothing.
    pub(super) fn maybe_free(&mut self, slot: usize) {
        if slot == 0 {
            return;
        }
        let s = &mut self.slots[slot];
        if !s.live || !s.queue.is_empty() || s.in_flight > 0 || s.retrying > 0 || s.listed {
            return;
        }
        debug_assert_eq!(s.cost, 0, "an empty queue costs nothing");
        if let Some(key) = s.key.take() {
            self.index.remove(&key);
        }
        s.live = false;
        s.generation = s.generation.wrapping_add(1);
        s.armed = None;
        s.drain = 0;
        self.free.push(slot);
    }
}

impl<T, K, O, E> Index<usize> for KeySlots<T, K, O, E> {
    type Output = KeySlot<T, K, O, E>;

    #[inline]
    fn index(&self, slot: usize) -> &Self::Output {
        &self.slots[slot]
    }
}

impl<T, K, O, E> IndexMut<usize> for KeySlots<T, K, O, E> {
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut Self::Output {
        &mut self.slots[slot]
    }
}
