//! async-graphql's `DataLoader` without a cache (`DataLoader::new`), spawned
//! on tokio, `max_batch_size(100)`, `delay(1 ms)`.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};

use super::{load_keys, LoaderContender};
use crate::shared::{BoxError, Shared, LINGER, MAX_BATCH};

pub struct AsyncGraphql;

pub struct NoOp {
    shared: Arc<Shared>,
}

impl Loader<u64> for NoOp {
    type Value = u64;
    type Error = String;

    async fn load(&self, keys: &[u64]) -> Result<HashMap<u64, u64>, String> {
        Ok(load_keys(keys, &self.shared).await)
    }
}

impl LoaderContender for AsyncGraphql {
    type Handle = Arc<DataLoader<NoOp>>;

    fn name(&self) -> &'static str {
        "async-graphql DataLoader"
    }

    fn config(&self) -> &'static str {
        "`DataLoader::new(loader, tokio::spawn).max_batch_size(100).delay(1 ms)` (no cache), `load_one`"
    }

    fn start(&self, shared: &Arc<Shared>) -> Self::Handle {
        Arc::new(
            DataLoader::new(
                NoOp {
                    shared: shared.clone(),
                },
                tokio::spawn,
            )
            .max_batch_size(MAX_BATCH)
            .delay(LINGER),
        )
    }

    async fn load(handle: &Self::Handle, key: u64) -> Result<u64, BoxError> {
        handle
            .load_one(key)
            .await?
            .ok_or_else(|| format!("async-graphql lost key {key}").into())
    }

    async fn stop(handle: Self::Handle) {
        drop(handle);
    }
}
