//! A snapshot of what a batcher holds and has done.

/// What a batcher holds and has done, as of its engine's last step. All
/// fields come from one step, so they are consistent with each other: in
/// particular `target == buffered_cost + retrying_cost + in_flight_cost`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Operations accepted since the batcher started.
    pub submitted: u64,
    /// Operations waiting in the buffer for a batch.
    pub buffered: u64,
    /// Their total cost.
    pub buffered_cost: u64,
    /// Operations waiting out a retry backoff.
    pub retrying: u64,
    /// Their total cost.
    pub retrying_cost: u64,
    /// Batches whose handler is running.
    pub in_flight_batches: u64,
    /// Operations in those batches.
    pub in_flight: u64,
    /// Their total cost.
    pub in_flight_cost: u64,
    /// Operations resolved with an output.
    pub completed: u64,
    /// Operations resolved with an error.
    pub failed: u64,
    /// Times an operation was put back for another attempt.
    pub retried: u64,
    /// Operations taken out because their ticket was dropped before dispatch.
    pub cancelled: u64,
    /// Batches dispatched.
    pub batches: u64,
    /// The cost of everything held, buffered or in flight: what the batcher
    /// needs from its capacity.
    pub target: u64,
    /// The capacity's current rate in cost per second; `None` when unlimited.
    pub capacity: Option<u64>,
    /// Whether dispatching is paused.
    pub paused: bool,
    /// Whether a shutdown has started.
    pub shutting_down: bool,
}

impl Stats {
    /// Operations accepted and not yet resolved.
    pub fn pending(&self) -> u64 {
        self.buffered + self.retrying + self.in_flight
    }
}
