//! baler's `Loader`: `max_batch_size(100)`, `linger(1 ms)`, no cache, and
//! either the default 8 batch calls at once or one at a time.

use std::collections::HashMap;
use std::sync::Arc;

use baler::loader::{BatchFn, Loader};

use super::{load_keys, LoaderContender};
use crate::shared::{BoxError, Shared, LINGER, MAX_BATCH};

pub struct Baler {
    /// `max_in_flight`: how many batch calls may run at once.
    handlers: usize,
}

impl Baler {
    /// The default of 8 batch calls at once.
    pub fn default_handlers() -> Self {
        Self { handlers: 8 }
    }

    /// One batch call at a time, as the peers run theirs: while one runs,
    /// the next batch fills.
    pub fn one_handler() -> Self {
        Self { handlers: 1 }
    }
}

pub struct NoOp {
    shared: Arc<Shared>,
}

impl BatchFn<u64, u64> for NoOp {
    type Error = String;
    type Values = HashMap<u64, u64>;

    async fn load(&self, keys: Vec<u64>) -> Result<HashMap<u64, u64>, String> {
        Ok(load_keys(&keys, &self.shared).await)
    }
}

impl LoaderContender for Baler {
    type Handle = Loader<u64, u64, String>;

    fn name(&self) -> &'static str {
        if self.handlers == 1 {
            "baler Loader (1 handler)"
        } else {
            "baler Loader"
        }
    }

    fn config(&self) -> &'static str {
        if self.handlers == 1 {
            "as baler Loader, with `.max_in_flight(1)`"
        } else {
            "`Loader::builder().max_batch_size(100).linger(1 ms).no_cache()`, default `max_in_flight` 8, `load`"
        }
    }

    fn start(&self, shared: &Arc<Shared>) -> Self::Handle {
        Loader::builder()
            .max_batch_size(MAX_BATCH)
            .linger(LINGER)
            .max_in_flight(self.handlers)
            .no_cache()
            .build(NoOp {
                shared: shared.clone(),
            })
            .expect("a valid loader configuration")
    }

    async fn load(handle: &Self::Handle, key: u64) -> Result<u64, BoxError> {
        Ok(handle.load(key).await.map_err(|e| e.to_string())?)
    }

    async fn stop(handle: Self::Handle) {
        handle.shutdown(None).await;
    }
}
