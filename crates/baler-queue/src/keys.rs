//! Key names: every key of a queue, derived from the queue's name in one place,
//! and the choice of each shard's hash tag.

use std::fmt;

/// The number of Redis Cluster hash slots.
pub(crate) const SLOTS: u16 = 16384;

/// The most shards a queue may have: each shard's tag must fall in a slot
/// range of its own, a few slots wide.
pub(crate) const MAX_SHARDS: usize = 1024;

/// CRC16-XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster
/// computes a key's slot.
pub(crate) fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in data {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of a key; see [`Keys::slot_of`].
fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % SLOTS
}

/// The shard an idempotency key's jobs go to: the same in every process, so
/// that enqueuing the key again finds the marker the first enqueue left.
pub(crate) fn shard_of_key(key: &str, shards: usize) -> usize {
    usize::from(crc16(key.as_bytes())) % shards.max(1)
}

/// The slots shard `index` of `count` aims at: the `index`-th of `count`
/// equal ranges of the 16384 slots, without its first and last slot, so that
/// however a tool rounds when it splits the slots evenly between masters,
/// the tag stays in the range of the `index`-th master.
fn target_slots(index: usize, count: usize) -> std::ops::Range<u16> {
    let slots = usize::from(SLOTS);
    let lo = index * slots / count;
    let hi = (index + 1) * slots / count;
    // At most 1024 shards: a range is 16 slots wide at least.
    let lo = u16::try_from(lo + 1).unwrap_or(SLOTS);
    let hi = u16::try_from(hi.saturating_sub(1)).unwrap_or(SLOTS);
    lo..hi
}

/// The names of a queue's Redis keys. Every key carries the hash tag
/// `{<queue>}` (a tag per shard for a queue split into shards, `{q}` in the
/// table below), so that all keys of a queue (of a shard) live in one Redis
/// Cluster slot and one script may touch any of them.
///
/// | key | type | holds |
/// |---|---|---|
/// | `{q}:jobs` | stream + consumer group `workers` | jobs waiting or being run |
/// | `{q}:delayed` | sorted set | ids of jobs waiting out a retry backoff, scored by when they are due (ms) |
/// | `{q}:parked` | hash | the bodies of those delayed jobs |
/// | `{q}:dead` | stream | dead letters, with the reason |
/// | `{q}:res:<producer>` | stream | results for one producer, read and deleted by it |
/// | `{q}:idem:<key>` | string with a TTL | the producer and job id an idempotency key was first enqueued as, and the job's result once it has finished |
/// | `{q}:sent:<job id>` | string with a short TTL | only with a [`resend_window`](crate::QueueBuilder::resend_window): marks a job id as added, so that an enqueue retried after a lost reply adds nothing twice |
///
/// ```
/// use baler_queue::Keys;
///
/// let keys = Keys::new("mail");
/// assert_eq!(keys.jobs(), "{mail}:jobs");
/// assert_eq!(keys.results("api-1"), "{mail}:res:api-1");
/// ```
///
/// # Shards
///
/// A queue of one shard (the default) has the tag `{q}`. A queue split into
/// `n > 1` shards (see [`QueueBuilder::shards`](crate::QueueBuilder::shards))
/// gives shard `i` a tag of its own, chosen so that its slot falls in the
/// `i`-th of `n` equal ranges of Redis Cluster's 16384 slots (leaving out
/// each range's first and last slot): `{q#i}` if its slot is there, else
/// the first of `{q#i#1}`, `{q#i#2}`, … that is. (`#` cannot appear in a
/// queue's name, so no other queue's tag can be one of these.) On a cluster whose slots
/// are split evenly between `n` masters, as `redis-cli --cluster create`
/// does, each shard then lives on a master of its own. The choice is made
/// by the client alone and is the same in every process.
///
/// ```
/// use baler_queue::Keys;
///
/// let shards: Vec<Keys> = (0..3).map(|i| Keys::for_shard("mail", i, 3)).collect();
/// assert!(shards[0].tag().starts_with("{mail#0"));
/// assert!(shards[0].slot() < 5461);
/// assert!((5461..10923).contains(&shards[1].slot()));
/// assert!(shards[2].slot() >= 10923);
/// assert_eq!(shards[1].jobs(), format!("{}:jobs", shards[1].tag()));
/// // One shard: the plain tag.
/// assert_eq!(Keys::for_shard("mail", 0, 1), Keys::new("mail"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keys {
    /// The hash tag with its braces, `{q}`. A shard index, when queues are
    /// split into shards, belongs inside it (`{q#3}`), so every name below
    /// follows from this one field.
    tag: String,
    /// The shard these keys belong to (0 when there is one).
    shard: usize,
}

impl Keys {
    /// The keys of the queue `name` (of its only shard). The name is not
    /// checked here; see [`QueueBuilder::build`](crate::QueueBuilder::build)
    /// for what is allowed.
    pub fn new(name: &str) -> Self {
        Keys {
            tag: format!("{{{name}}}"),
            shard: 0,
        }
    }

    /// The keys of shard `index` of the queue `name` split into `count`
    /// shards (see the type's docs for how its tag is chosen). With `count`
    /// at most 1, the keys of [`new`](Self::new). `count` above 1024 is
    /// taken as 1024, and `index` at or above `count` as `count - 1`; a
    /// [`QueueBuilder`](crate::QueueBuilder) never asks for either.
    pub fn for_shard(name: &str, index: usize, count: usize) -> Self {
        if count <= 1 {
            return Keys::new(name);
        }
        let count = count.min(MAX_SHARDS);
        let index = index.min(count - 1);
        let slots = target_slots(index, count);
        let first = format!("{name}#{index}");
        // A range is at least 14 slots wide and CRC16 spreads names evenly:
        // the search ends after about 16384 / 14 tries at worst.
        let tag = std::iter::once(first.clone())
            .chain((1u64..).map(|n| format!("{first}#{n}")))
            .find(|t| slots.contains(&(crc16(t.as_bytes()) % SLOTS)))
            .unwrap_or(first);
        Keys {
            tag: format!("{{{tag}}}"),
            shard: index,
        }
    }

    /// The shard these keys belong to: 0 for a queue of one shard.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// The Redis Cluster slot of every key here (that of the tag).
    pub fn slot(&self) -> u16 {
        slot_of(&self.tag)
    }

    /// The Redis Cluster slot of `key`, as `CLUSTER KEYSLOT` answers it:
    /// that of the text between its first `{` and the next `}` when that is
    /// not empty, else that of the whole key.
    ///
    /// ```
    /// use baler_queue::Keys;
    ///
    /// assert_eq!(Keys::slot_of("foo"), 12182);
    /// assert_eq!(Keys::slot_of("{mail}:jobs"), Keys::slot_of("mail"));
    /// ```
    pub fn slot_of(key: &str) -> u16 {
        slot_of(key)
    }

    /// The hash tag shared by every key, braces included.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The jobs stream.
    pub fn jobs(&self) -> String {
        format!("{}:jobs", self.tag)
    }

    /// The sorted set of delayed job ids.
    pub fn delayed(&self) -> String {
        format!("{}:delayed", self.tag)
    }

    /// The hash of delayed jobs' bodies.
    pub fn parked(&self) -> String {
        format!("{}:parked", self.tag)
    }

    /// The dead-letter stream.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.tag)
    }

    /// The number of jobs that bundles in the jobs stream hold beyond their
    /// first (a bundle is one entry for many jobs; see
    /// [`ProducerBuilder::bundles`](crate::ProducerBuilder::bundles)), so
    /// that the queue's length counts jobs, not entries.
    pub fn bundled(&self) -> String {
        format!("{}:bundled", self.tag)
    }

    /// The results stream of the producer named `producer`.
    pub fn results(&self, producer: &str) -> String {
        format!("{}:res:{producer}", self.tag)
    }

    /// The key that remembers an idempotency key.
    pub fn idem(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.tag)
    }

    /// The key that marks a job id as added.
    pub fn sent(&self, job_id: &str) -> String {
        format!("{}:sent:{job_id}", self.tag)
    }

    /// The consumer group of the jobs stream.
    pub fn group(&self) -> &'static str {
        "workers"
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Keys").field(&self.tag).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_xmodem_as_redis_cluster_uses_it() {
        // The check value of CRC16-XMODEM, and slots from Redis's docs.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("somekey"), 11058);
        assert_eq!(slot_of("{user1000}.following"), slot_of("user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of("{}foo"), crc16(b"{}foo") % SLOTS);
    }

    #[test]
    fn one_shard_keeps_the_plain_tag() {
        let keys = Keys::for_shard("mail", 0, 1);
        assert_eq!(keys.tag(), "{mail}");
        assert_eq!(keys.shard(), 0);
        assert_eq!(keys, Keys::new("mail"));
    }

    #[test]
    fn each_shard_lands_in_its_own_slot_range() {
        for count in [2usize, 3, 4, 5, 7, 16, 100, 1024] {
            let mut tags = std::collections::HashSet::new();
            for index in 0..count {
                let keys = Keys::for_shard("q", index, count);
                let slot = usize::from(keys.slot());
                let lo = index * 16384 / count;
                let hi = (index + 1) * 16384 / count;
                assert!(
                    slot > lo && slot + 1 < hi,
                    "shard {index} of {count}: slot {slot} not inside {lo}..{hi}"
                );
                assert_eq!(keys.shard(), index);
                let tag = keys.tag();
                assert!(
                    tag == format!("{{q#{index}}}") || tag.starts_with(&format!("{{q#{index}#")),
                    "{tag}"
                );
                assert!(tags.insert(tag.to_owned()), "{tag} used twice");
            }
        }
    }

    #[test]
    fn the_choice_is_deterministic_and_tries_the_plain_index_first() {
        assert_eq!(Keys::for_shard("mail", 2, 3), Keys::for_shard("mail", 2, 3));
        // Whichever tag is chosen, no earlier candidate was in range.
        let keys = Keys::for_shard("mail", 1, 3);
        let range = target_slots(1, 3);
        let candidates =
            std::iter::once("mail#1".to_owned()).chain((1..).map(|n| format!("mail#1#{n}")));
        for candidate in candidates {
            if format!("{{{candidate}}}") == keys.tag() {
                break;
            }
            assert!(
                !range.contains(&slot_of(&candidate)),
                "{candidate} was in range"
            );
        }
    }

    #[test]
    fn three_shards_match_redis_cli_even_split() {
        // redis-cli --cluster create gives 3 masters 0-5460, 5461-10922, 10923-16383.
        let ranges = [0..5461u16, 5461..10923, 10923..16384];
        for (i, range) in ranges.iter().enumerate() {
            assert!(range.contains(&Keys::for_shard("chain", i, 3).slot()));
        }
    }

    #[test]
    fn idempotency_keys_go_to_a_fixed_shard() {
        assert_eq!(shard_of_key("order-9", 1), 0);
        let a = shard_of_key("order-9", 3);
        assert_eq!(a, usize::from(crc16(b"order-9")) % 3);
        assert!(a < 3);
        let spread: std::collections::HashSet<usize> = (0..100)
            .map(|n| shard_of_key(&format!("k{n}"), 3))
            .collect();
        assert_eq!(spread.len(), 3);
    }
}
