//! batch-aint-one's `Batcher`, one key, under two of its policies:
//! `Duration(1 ms, OnFull::Process)` (a batch goes when full or when its
//! oldest item has waited 1 ms: its linger) and `Balanced { min_size_hint:
//! 100 }` (its load-aware policy, which has no linger).

use std::sync::Arc;

use batch_aint_one::{Batcher, BatchingPolicy, Limits, OnFull, Processor};

use super::{Contender, Setup};
use crate::shared::{BoxError, Shared, LINGER, MAX_BATCH};

pub struct BatchAintOne {
    balanced: bool,
}

impl BatchAintOne {
    pub fn duration() -> Self {
        Self { balanced: false }
    }

    pub fn balanced() -> Self {
        Self { balanced: true }
    }
}

#[derive(Clone)]
pub struct NoOp {
    shared: Arc<Shared>,
}

impl Processor for NoOp {
    type Key = ();
    type Input = u64;
    type Output = ();
    type Error = String;
    type Resources = ();

    async fn acquire_resources(&self, _key: ()) -> Result<(), String> {
        Ok(())
    }

    async fn process(
        &self,
        _key: (),
        inputs: impl Iterator<Item = u64> + Send,
        _resources: (),
    ) -> Result<Vec<()>, String> {
        let outputs: Vec<()> = inputs.map(|_| ()).collect();
        self.shared.batch(outputs.len()).await;
        Ok(outputs)
    }
}

impl Contender for BatchAintOne {
    type Handle = Batcher<NoOp>;

    fn name(&self) -> &'static str {
        if self.balanced {
            "batch-aint-one (Balanced)"
        } else {
            "batch-aint-one (Duration)"
        }
    }

    fn config(&self) -> &'static str {
        if self.balanced {
            "`BatchingPolicy::Balanced { min_size_hint: 100 }`, `max_batch_size(100)`, `max_key_queued_items(buffer)`, `max_items_awaiting_worker(buffer)`, one key, default `max_key_concurrency` 10"
        } else {
            "`BatchingPolicy::Duration(1 ms, OnFull::Process)`, `max_batch_size(100)`, `max_key_queued_items(buffer)`, `max_items_awaiting_worker(buffer)`, one key, default `max_key_concurrency` 10"
        }
    }

    fn start(&self, setup: &Setup) -> Batcher<NoOp> {
        let policy = if self.balanced {
            BatchingPolicy::Balanced {
                min_size_hint: MAX_BATCH,
            }
        } else {
            BatchingPolicy::Duration(LINGER, OnFull::Process)
        };
        Batcher::builder()
            .name("bench")
            .processor(NoOp {
                shared: setup.shared.clone(),
            })
            .limits(
                Limits::builder()
                    .max_batch_size(MAX_BATCH)
                    .max_key_queued_items(setup.buffer)
                    .max_items_awaiting_worker(setup.buffer)
                    .build(),
            )
            .batching_policy(policy)
            .build()
    }

    async fn call(handle: &Batcher<NoOp>, x: u64) -> Result<(), BoxError> {
        handle
            .add((), x)
            .await
            .map_err(|e| format!("batch-aint-one failed: {e}"))?;
        Ok(())
    }

    async fn stop(handle: Batcher<NoOp>) {
        let worker = handle.worker_handle();
        drop(handle);
        worker.shut_down().await;
        worker.wait_for_shutdown().await;
    }
}
