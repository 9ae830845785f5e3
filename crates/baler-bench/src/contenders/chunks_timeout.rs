//! What users hand-roll: a tokio mpsc channel of `(payload, oneshot)`,
//! turned into a stream and cut with tokio-stream's
//! `chunks_timeout(100, 1 ms)`, answered inline.

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::{Contender, Setup};
use crate::shared::{BoxError, LINGER, MAX_BATCH};

type Item = (u64, oneshot::Sender<()>);

pub struct ChunksTimeout;

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Item>,
}

impl Contender for ChunksTimeout {
    type Handle = Handle;

    fn name(&self) -> &'static str {
        "tokio-stream chunks_timeout"
    }

    fn config(&self) -> &'static str {
        "`ReceiverStream::new(mpsc::channel(buffer)).chunks_timeout(100, 1 ms)`, one consumer task, oneshot per operation, answers inline"
    }

    fn start(&self, setup: &Setup) -> Handle {
        let (tx, rx) = mpsc::channel::<Item>(setup.buffer);
        let shared = setup.shared.clone();
        tokio::spawn(async move {
            let chunks = ReceiverStream::new(rx).chunks_timeout(MAX_BATCH, LINGER);
            tokio::pin!(chunks);
            while let Some(batch) = chunks.next().await {
                shared.batch(batch.len()).await;
                for (_x, reply) in batch {
                    let _ = reply.send(());
                }
            }
        });
        Handle { tx }
    }

    async fn call(handle: &Handle, x: u64) -> Result<(), BoxError> {
        let (reply, result) = oneshot::channel();
        handle
            .tx
            .send((x, reply))
            .await
            .map_err(|_| "the consumer stopped")?;
        result.await?;
        Ok(())
    }

    async fn stop(handle: Handle) {
        drop(handle);
    }
}
