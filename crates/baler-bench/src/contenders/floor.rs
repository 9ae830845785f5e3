//! The floor: the least an async batcher with per-operation results can
//! cost. A bounded tokio mpsc channel of `(payload, oneshot sender)` and one
//! consumer task that takes what is queued (`recv_many`, up to 100) and
//! answers every operation of the batch inline.
//!
//! It never waits for a linger: with an inline no-op handler nothing is ever
//! in flight when it forms a batch, and a load-aware batcher (baler's
//! default) sends a batch at once when nothing is in flight. Waiting would
//! make it slower than baler, not a floor.

use tokio::sync::{mpsc, oneshot};

use super::{Contender, Setup};
use crate::shared::{BoxError, MAX_BATCH};

type Item = (u64, oneshot::Sender<()>);

pub struct Floor;

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Item>,
}

impl Contender for Floor {
    type Handle = Handle;

    fn name(&self) -> &'static str {
        "floor"
    }

    fn config(&self) -> &'static str {
        "tokio `mpsc::channel(buffer)` of `(u64, oneshot::Sender<()>)`; one consumer task: `recv_many(.., 100)`, answers inline"
    }

    fn start(&self, setup: &Setup) -> Handle {
        let (tx, mut rx) = mpsc::channel::<Item>(setup.buffer);
        let shared = setup.shared.clone();
        tokio::spawn(async move {
            let mut batch: Vec<Item> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                shared.batch(batch.len()).await;
                for (_x, reply) in batch.drain(..) {
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
            .map_err(|_| "the floor's consumer stopped")?;
        result.await?;
        Ok(())
    }

    async fn stop(handle: Handle) {
        drop(handle);
    }
}
