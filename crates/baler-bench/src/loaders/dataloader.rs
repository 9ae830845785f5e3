//! The `dataloader` crate's `non_cached::Loader` (tokio runtime feature),
//! `with_max_batch_size(100)`. It has no time-based linger: a caller yields
//! to the scheduler 10 times (its default) before it loads what has queued.

use std::collections::HashMap;
use std::sync::Arc;

use dataloader::non_cached::Loader;
use dataloader::BatchFn;

use super::{load_keys, LoaderContender};
use crate::shared::{BoxError, Shared, MAX_BATCH};

pub struct Dataloader;

pub struct NoOp {
    shared: Arc<Shared>,
}

impl BatchFn<u64, u64> for NoOp {
    async fn load(&mut self, keys: &[u64]) -> HashMap<u64, u64> {
        load_keys(keys, &self.shared).await
    }
}

impl LoaderContender for Dataloader {
    type Handle = Loader<u64, u64, NoOp>;

    fn name(&self) -> &'static str {
        "dataloader (non_cached)"
    }

    fn config(&self) -> &'static str {
        "`non_cached::Loader::new(f).with_max_batch_size(100)`, default yield count 10 (no time-based linger), `try_load`"
    }

    fn start(&self, shared: &Arc<Shared>) -> Self::Handle {
        Loader::new(NoOp {
            shared: shared.clone(),
        })
        .with_max_batch_size(MAX_BATCH)
    }

    async fn load(handle: &Self::Handle, key: u64) -> Result<u64, BoxError> {
        Ok(handle.try_load(key).await?)
    }

    async fn stop(handle: Self::Handle) {
        drop(handle);
    }
}
