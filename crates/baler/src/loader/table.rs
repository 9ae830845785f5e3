//! The table of keys in flight: for each key being fetched, the flight that
//! its new callers join.
//!
//! # The model
//!
//! A key is hashed once per load (see [`hashed`](super::hashed)), before
//! the table's lock is taken. The hash goes into the flight, and the table
//! files flights under it: finding a key compares the keys of the flights filed under its
//! hash, and taking a flight out (its result arrived, or its last caller
//! left) finds it by its stored hash and its identity, without hashing the
//! key again and without a copy of the key as the table's own.
//!
//! # Invariants
//!
//! - A flight is filed under the hash of its key, at most once.
//! - Two flights filed under one hash (a collision of 64-bit hashes) are
//!   told apart by their keys when looking up, and by identity when taking
//!   one out. Taking out a flight that is no longer filed (it was cleared,
//!   and the key may be in flight again under the same hash) leaves the
//!   table as it is.

use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

use crate::loader::flight::Flight;
use crate::loader::hashed::PassHash;

/// Keys in flight, filed under their hashes.
pub(crate) struct Table<K, V, E> {
    flights: HashMap<u64, Filed<K, V, E>, PassHash>,
}

/// The flights filed under one hash: almost always one.
enum Filed<K, V, E> {
    One(Arc<Flight<K, V, E>>),
    Many(Vec<Arc<Flight<K, V, E>>>),
}

impl<K, V, E> Default for Table<K, V, E> {
    fn default() -> Self {
        Table {
            flights: HashMap::default(),
        }
    }
}

impl<K: Eq, V, E> Table<K, V, E> {
    /// The flight of `key` (whose hash is `hash`), if it is in flight.
    pub(crate) fn find(&self, hash: u64, key: &K) -> Option<&Arc<Flight<K, V, E>>> {
        match self.flights.get(&hash)? {
            Filed::One(flight) => (flight.key == *key).then_some(flight),
            Filed::Many(flights) => flights.iter().find(|f| f.key == *key),
        }
    }

    /// Files `flight` under its hash. Its key must not be in flight.
    pub(crate) fn insert(&mut self, flight: Arc<Flight<K, V, E>>) {
        match self.flights.entry(flight.hash) {
            Entry::Vacant(e) => {
                e.insert(Filed::One(flight));
            }
            Entry::Occupied(mut e) => {
                let filed = e.get_mut();
                match filed {
                    Filed::One(other) => *filed = Filed::Many(vec![other.clone(), flight]),
                    Filed::Many(flights) => flights.push(flight),
                }
            }
        }
    }

    /// Takes `flight` out, if it is still filed. Returns whether it was.
    pub(crate) fn remove(&mut self, flight: &Arc<Flight<K, V, E>>) -> bool {
        let Entry::Occupied(mut e) = self.flights.entry(flight.hash) else {
            return false;
        };
        match e.get_mut() {
            Filed::One(found) if Arc::ptr_eq(found, flight) => {
                e.remove();
                true
            }
            Filed::One(_) => false,
            Filed::Many(flights) => {
                let Some(i) = flights.iter().position(|f| Arc::ptr_eq(f, flight)) else {
                    return false;
                };
                flights.swap_remove(i);
                if flights.is_empty() {
                    e.remove();
                }
                true
            }
        }
    }

    /// Takes the flight of `key` (whose hash is `hash`) out, if it is in
    /// flight.
    pub(crate) fn remove_key(&mut self, hash: u64, key: &K) -> Option<Arc<Flight<K, V, E>>> {
        let flight = self.find(hash, key)?.clone();
        self.remove(&flight);
        Some(flight)
    }

    /// Takes every flight out.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Arc<Flight<K, V, E>>> + '_ {
        self.flights.drain().flat_map(|(_, filed)| {
            let (one, many) = match filed {
                Filed::One(flight) => (Some(flight), Vec::new()),
                Filed::Many(flights) => (None, flights),
            };
            one.into_iter().chain(many)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::flight::Stage;

    type TestFlight = Flight<u32, u32, ()>;

    fn flight(key: u32, hash: u64) -> Arc<TestFlight> {
        Arc::new(Flight::new(key, hash, Stage::Over))
    }

    #[test]
    fn flights_filed_under_one_hash_are_told_apart_by_key_and_identity() {
        let mut table = Table::default();
        let (a, b) = (flight(1, 7), flight(2, 7));
        table.insert(a.clone());
        table.insert(b.clone());
        assert!(Arc::ptr_eq(table.find(7, &1).unwrap(), &a));
        assert!(Arc::ptr_eq(table.find(7, &2).unwrap(), &b));
        assert!(table.find(7, &3).is_none());
        assert!(table.find(8, &1).is_none());
        // A replaced flight of key 1 is not taken out in its replacement's
        // place.
        let stale = flight(1, 7);
        assert!(!table.remove(&stale));
        assert!(table.remove(&a));
        assert!(table.find(7, &1).is_none());
        assert!(Arc::ptr_eq(&table.remove_key(7, &2).unwrap(), &b));
        assert!(table.flights.is_empty());
    }

    #[test]
    fn drain_takes_every_flight() {
        let mut table = Table::default();
        for (key, hash) in [(1, 1), (2, 2), (3, 2)] {
            table.insert(flight(key, hash));
        }
        let mut keys: Vec<u32> = table.drain().map(|f| f.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec![1, 2, 3]);
        assert!(table.flights.is_empty());
    }
}
