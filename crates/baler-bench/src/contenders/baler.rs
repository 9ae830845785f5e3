//! baler's `Batcher` with its defaults, but for batch size, linger and
//! buffer size.

use baler::{handler_fn, Batch, Batcher};

use super::{Contender, Setup};
use crate::shared::{BoxError, LINGER, MAX_BATCH};

pub struct Baler;

type Handle = Batcher<u64, (), std::convert::Infallible>;

impl Contender for Baler {
    type Handle = Handle;

    fn name(&self) -> &'static str {
        "baler"
    }

    fn config(&self) -> &'static str {
        "`Batcher::builder().max_batch_size(100).linger(1 ms).buffer_size(buffer)`, default `Dispatch::LoadAware`, `max_in_flight` 8"
    }

    fn start(&self, setup: &Setup) -> Handle {
        let shared = setup.shared.clone();
        Batcher::builder()
            .max_batch_size(MAX_BATCH)
            .linger(LINGER)
            .buffer_size(setup.buffer)
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
