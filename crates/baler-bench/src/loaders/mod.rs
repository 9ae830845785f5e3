//! The loaders (DataLoader-style: callers ask for a key, concurrent asks are
//! batched, the keys of a batch are de-duplicated, one load call answers
//! them), each behind the small [`LoaderContender`] adapter.
//!
//! Adding one: write a file here with a type that
//! implements [`LoaderContender`] whose batch function calls [`load_keys`],
//! and add one line to [`all`]. Nothing caches across batches: every
//! contender is configured without a cache, so what is measured is batching
//! and de-duplication, not cache hits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use crate::shared::{BoxError, Shared};

mod async_graphql;
// Named by the `count` bin, which shares this module.
pub(crate) mod baler;
pub(crate) mod dataloader;
pub(crate) mod floor;

/// A loader under test: keys and values are `u64`, the load function is
/// [`load_keys`], batches hold at most [`MAX_BATCH`](crate::shared::MAX_BATCH)
/// keys, and partial batches wait at most [`LINGER`](crate::shared::LINGER)
/// where the contender has a linger.
pub trait LoaderContender: Send + Sync + 'static {
    /// What a caller holds to load (cheap to clone).
    type Handle: Clone + Send + Sync + 'static;

    /// The name in the tables.
    fn name(&self) -> &'static str;

    /// How it is configured, one line for the document.
    fn config(&self) -> &'static str;

    /// Starts one inside the current tokio runtime; its batch function calls
    /// [`load_keys`] with `shared`.
    fn start(&self, shared: &Arc<Shared>) -> Self::Handle;

    /// Loads one key and returns its value.
    fn load(handle: &Self::Handle, key: u64) -> impl Future<Output = Result<u64, BoxError>> + Send;

    /// Stops it, after every load has returned.
    fn stop(handle: Self::Handle) -> impl Future<Output = ()> + Send;
}

/// The value the load function gives `key`: callers check it.
pub fn value_of(key: u64) -> u64 {
    key.wrapping_mul(2).wrapping_add(1)
}

/// The no-op load function every contender calls: counts the batch and its
/// keys, and answers each key with [`value_of`].
pub async fn load_keys(keys: &[u64], shared: &Shared) -> HashMap<u64, u64> {
    shared.batch(keys.len()).await;
    keys.iter().map(|&k| (k, value_of(k))).collect()
}

/// Every loader, in the order of the tables. The floor comes first.
pub fn all() -> Vec<Box<dyn crate::workloads::LoaderRuns>> {
    vec![
        Box::new(floor::Floor),
        Box::new(baler::Baler::default_handlers()),
        Box::new(baler::Baler::one_handler()),
        Box::new(async_graphql::AsyncGraphql),
        Box::new(dataloader::Dataloader),
    ]
}
