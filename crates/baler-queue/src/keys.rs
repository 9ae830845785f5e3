//! Key names: every key of a queue, derived from the queue's name in one place.

use std::fmt;

/// The names of a queue's Redis keys. Every key carries the hash tag
/// `{<queue>}`, so that all keys of a queue live in one Redis Cluster slot and
/// one script may touch any of them.
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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Keys {
    /// The hash tag with its braces, `{q}`. A shard index, when queues are
    /// split into shards, belongs inside it (`{q.3}`), so every name below
    /// follows from this one field.
    tag: String,
}

impl Keys {
    /// The keys of the queue `name`. The name is not checked here; see
    /// [`QueueBuilder::build`](crate::QueueBuilder::build) for what is allowed.
    pub fn new(name: &str) -> Self {
        Keys {
            tag: format!("{{{name}}}"),
        }
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
