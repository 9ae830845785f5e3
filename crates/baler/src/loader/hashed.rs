//! Keys hashed once per load.
//!
//! A load hashes its key with the loader's [`KeyHasher`] (std's randomly
//! keyed SipHash, as a `HashMap`'s), once, before any lock. The hash travels
//! with the key: into its flight, which the in-flight table files under it,
//! and through the engine as a [`Hashed`] operation, which the batch's index
//! files under it. Neither hashes the key again; maps keyed by a hash use
//! [`Prehashed`], which passes the hash through.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};

/// Hashes a loader's keys: one per loader, randomly keyed.
#[derive(Clone, Default)]
pub(crate) struct KeyHasher(RandomState);

impl KeyHasher {
    pub(crate) fn hash<K: Hash + ?Sized>(&self, key: &K) -> u64 {
        self.0.hash_one(key)
    }
}

/// A key and its hash: the loader's operation on the engine.
pub(crate) struct Hashed<K> {
    pub(crate) key: K,
    pub(crate) hash: u64,
}

/// A borrowed key with its hash, as a map key: hashed by its hash alone,
/// equal by its key.
pub(crate) struct ByHash<'a, K> {
    pub(crate) hash: u64,
    pub(crate) key: &'a K,
}

impl<K> Hash for ByHash<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<K: PartialEq> PartialEq for ByHash<'_, K> {
    fn eq(&self, other: &Self) -> bool {
        // Equal keys have equal hashes (one hasher hashed both).
        self.hash == other.hash && self.key == other.key
    }
}

impl<K: Eq> Eq for ByHash<'_, K> {}

/// The hasher of maps whose keys are already hashes: it passes them on.
pub(crate) type PassHash = BuildHasherDefault<Prehashed>;

/// See [`PassHash`].
#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is folded in rather than
        // lost.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn a_key_hashes_the_same_each_time_for_one_hasher() {
        let hasher = KeyHasher::default();
        assert_eq!(hasher.hash("k"), hasher.hash("k"));
        assert_eq!(hasher.clone().hash("k"), hasher.hash("k"));
    }

    #[test]
    fn keys_under_one_hash_are_told_apart_by_key() {
        let (a, b) = (1u32, 2u32);
        let mut map: HashMap<ByHash<'_, u32>, char, PassHash> = HashMap::default();
        map.insert(ByHash { hash: 7, key: &a }, 'a');
        map.insert(ByHash { hash: 7, key: &b }, 'b');
        assert_eq!(map.get(&ByHash { hash: 7, key: &1 }), Some(&'a'));
        assert_eq!(map.get(&ByHash { hash: 7, key: &2 }), Some(&'b'));
        assert_eq!(map.get(&ByHash { hash: 8, key: &1 }), None);
    }
}
