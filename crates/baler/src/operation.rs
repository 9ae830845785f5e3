//! Operations: what callers submit.

use std::fmt;

/// A stable identifier of an operation, unique within one batcher.
///
/// The engine assigns it when it accepts the operation and keeps it across
/// retries; handlers see it in [`Batch::info`](crate::Batch::info).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op-{}", self.0)
    }
}

/// One unit of work: a payload, a cost (1 unless set) and an optional key.
///
/// Operations with different keys never share a batch. A plain payload
/// converts into an operation of cost 1 without a key, so
/// `batcher.submit(payload)` and `batcher.submit(Operation::new(payload))`
/// are the same.
///
/// ```
/// use baler::Operation;
///
/// let op: Operation<&str, u32> = Operation::new("row").with_cost(10).with_key(7);
/// assert_eq!(op.cost(), 10);
/// assert_eq!(op.key(), Some(&7));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation<T, K = ()> {
    pub(crate) payload: T,
    pub(crate) cost: u32,
    pub(crate) key: Option<K>,
}

impl<T, K> Operation<T, K> {
    /// An operation of cost 1 without a key.
    pub fn new(payload: T) -> Self {
        Operation {
            payload,
            cost: 1,
            key: None,
        }
    }

    /// Sets the cost: what dispatching this operation spends from the
    /// capacity and counts toward the batch's and buffer's cost limits.
    pub fn with_cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Sets the key. A batch only ever holds operations of one key.
    pub fn with_key(mut self, key: K) -> Self {
        self.key = Some(key);
        self
    }

    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The cost.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The key, if one was set.
    pub fn key(&self) -> Option<&K> {
        self.key.as_ref()
    }

    /// Takes the payload back.
    pub fn into_payload(self) -> T {
        self.payload
    }
}

impl<T, K> From<T> for Operation<T, K> {
    fn from(payload: T) -> Self {
        Operation::new(payload)
    }
}
