//! What a shutdown reports.

use crate::operation::OpId;

/// An operation that was still unresolved when a shutdown deadline passed. Its
/// ticket resolved with [`Error::Abandoned`](crate::Error::Abandoned); its
/// payload is here, so the caller can keep it (write it to a file to replay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned<T, K = ()> {
    /// The operation's id.
    pub id: OpId,
    /// Its key.
    pub key: Option<K>,
    /// Its payload.
    pub payload: T,
    /// Its cost.
    pub cost: u32,
}

/// What happened between the start of a shutdown and its end.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport<T, K = ()> {
    /// Operations dispatched during the shutdown (retries count again).
    pub flushed: u64,
    /// Operations resolved with an output during the shutdown.
    pub completed: u64,
    /// Operations resolved with an error during the shutdown (not counting
    /// those abandoned).
    pub failed: u64,
    /// Operations still unresolved at the deadline. Empty when the shutdown
    /// had no deadline, or for every caller of `shutdown` but the first.
    pub abandoned: Vec<Abandoned<T, K>>,
}

impl<T, K> ShutdownReport<T, K> {
    /// Whether every operation held at the start was resolved by the handler.
    pub fn is_clean(&self) -> bool {
        self.abandoned.is_empty()
    }
}

impl<T, K> Default for ShutdownReport<T, K> {
    fn default() -> Self {
        ShutdownReport {
            flushed: 0,
            completed: 0,
            failed: 0,
            abandoned: Vec::new(),
        }
    }
}

impl<T, K> ShutdownReport<T, K> {
    /// The report without its abandoned payloads, for the callers after the
    /// first (the payloads are given once).
    pub(crate) fn clone_counts(&self) -> ShutdownReport<T, K> {
        ShutdownReport {
            flushed: self.flushed,
            completed: self.completed,
            failed: self.failed,
            abandoned: Vec::new(),
        }
    }
}
