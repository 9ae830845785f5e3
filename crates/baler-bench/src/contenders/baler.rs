//! baler's `Batcher` with its defaults, but for batch size, linger and
//! buffer size.

use baler::{handler_fn, Batch, Batcher, Dispatch, Execution};

use super::{Contender, Setup};
use crate::shared::{BoxError, LINGER, MAX_BATCH};

pub struct Baler {
    dispatch: Dispatch,
    execution: Execution,
}

impl Baler {
    /// Its default: a batch goes at once when nothing is in flight.
    pub fn load_aware() -> Self {
        Self {
            dispatch: Dispatch::LoadAware,
            execution: Execution::Spawned,
        }
    }

    /// Load-aware, with the engine polling the handler futures itself.
    pub fn inline() -> Self {
        Self {
            dispatch: Dispatch::LoadAware,
            execution: Execution::Inline,
        }
    }

    /// Like the peers' lingers: a partial batch always waits out its linger.
    pub fn linger() -> Self {
        Self {
            dispatch: Dispatch::Linger,
            execution: Execution::Spawned,
        }
    }
}

type Handle = Batcher<u64, (), std::convert::Infallible>;

impl Contender for Baler {
    type Handle = Handle;

    fn name(&self) -> &'static str {
        match (self.dispatch, self.execution) {
            (Dispatch::Linger, _) => "baler (Linger)",
            (_, Execution::Inline) => "baler (Inline)",
            _ => "baler",
        }
    }

    fn config(&self) -> &'static str {
        match (self.dispatch, self.execution) {
            (Dispatch::Linger, _) => "as baler, with `.dispatch(Dispatch::Linger)`: a partial batch always waits out its linger",
            (_, Execution::Inline) => "as baler, with `.execution(Execution::Inline)`: the engine polls the handler futures itself, no task per batch",
            _ => "`Batcher::builder().max_batch_size(100).linger(1 ms).buffer_size(buffer)`; defaults: `Dispatch::LoadAware`, `max_in_flight` 8",
        }
    }

    fn start(&self, setup: &Setup) -> Handle {
        let shared = setup.shared.clone();
        Batcher::builder()
            .max_batch_size(MAX_BATCH)
            .linger(LINGER)
            .buffer_size(setup.buffer)
            .dispatch(self.dispatch)
            .execution(self.execution)
            .build(handler_fn(move |batch: Batch<u64>| {
                let shared = shared.clone();
                async move {
                    shared.batch(batch.len()).await;
                    Ok::<_, std::convert::Infallible>(batch.done_all(()))
                }
            }))
            .expect("a valid baler configuration")
    }

    async fn call(handle: &Handle, x: u64) -> Result<(), BoxError> {
        let ticket = handle.submit(x).await?;
        ticket.await?;
        Ok(())
    }

    async fn stop(handle: Handle) {
        let report = handle.shutdown(None).await;
        assert!(report.is_clean(), "baler's shutdown lost operations");
    }
}
