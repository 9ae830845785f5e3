//! The batchers, each behind the small [`Contender`] adapter.
//!
//! Adding one: write a file here with a type that implements [`Contender`]
//! (start it inside the current tokio runtime, submit one `u64` and wait for
//! its result, stop it), and add one line to [`all`].

use std::future::Future;
use std::sync::Arc;

use crate::shared::{BoxError, Shared};

mod baler;
mod batch_aint_one;
mod batched_fn;
mod chunks_timeout;
mod floor;

/// What a measurement asks of a contender when it starts one.
pub struct Setup {
    /// Room for this many waiting operations, where the contender has a bound.
    pub buffer: usize,
    /// The handler calls `shared.batch(len)` at the start of every batch.
    pub shared: Arc<Shared>,
}

/// A batcher under test: operations are `u64` payloads, the handler is a
/// no-op answering `()` to each, batches hold at most
/// [`MAX_BATCH`](crate::shared::MAX_BATCH) operations and partial batches
/// wait at most [`LINGER`](crate::shared::LINGER) where the contender has a
/// linger.
pub trait Contender: Send + Sync + 'static {
    /// What a submitter holds to submit (cheap to clone).
    type Handle: Clone + Send + Sync + 'static;

    /// The name in the tables and the chart.
    fn name(&self) -> &'static str;

    /// How it is configured, one line for the document.
    fn config(&self) -> &'static str;

    /// Why it cannot run the one-submitter memory workload, if it cannot.
    fn memory_unsupported(&self) -> Option<&'static str> {
        None
    }

    /// Starts one inside the current tokio runtime.
    fn start(&self, setup: &Setup) -> Self::Handle;

    /// Submits `x` and waits for its result.
    fn call(handle: &Self::Handle, x: u64) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Stops it, after every call has returned.
    fn stop(handle: Self::Handle) -> impl Future<Output = ()> + Send;

    /// Lets it go with operations still waiting (their calls were dropped),
    /// without processing them: the memory workload's teardown. Processing a
    /// million queued operations one batch at a time can take minutes with
    /// some contenders, and measures nothing.
    fn abandon(handle: Self::Handle) {
        drop(handle);
    }
}

/// The floor alone: the probe of the machine's speed (see `steady`).
pub fn floor() -> Box<dyn crate::workloads::Runs> {
    Box::new(floor::Floor)
}

/// Every contender, in the order of the tables. The floor comes first.
pub fn all() -> Vec<Box<dyn crate::workloads::Runs>> {
    vec![
        Box::new(floor::Floor),
        Box::new(baler::Baler::load_aware()),
        Box::new(baler::Baler::inline()),
        Box::new(baler::Baler::linger()),
        Box::new(batch_aint_one::BatchAintOne::duration()),
        Box::new(batch_aint_one::BatchAintOne::balanced()),
        Box::new(batched_fn::BatchedFn),
        Box::new(chunks_timeout::ChunksTimeout),
    ]
}
