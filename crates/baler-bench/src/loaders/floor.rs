//! The loader floor: the batching floor (a tokio mpsc of `(key, oneshot)`,
//! `recv_many` up to 100) with the keys of each batch sorted and
//! de-duplicated before one call of the load function.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{load_keys, LoaderContender};
use crate::shared::{BoxError, Shared, DEFAULT_BUFFER, MAX_BATCH};

type Item = (u64, oneshot::Sender<u64>);

pub struct Floor;

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Item>,
}

impl LoaderContender for Floor {
    type Handle = Handle;

    fn name(&self) -> &'static str {
        "floor"
    }

    fn config(&self) -> &'static str {
        "tokio `mpsc::channel(10,000)` of `(key, oneshot)`; one task: `recv_many(.., 100)`, sort + dedup the keys, one load call, answer inline"
    }

    fn start(&self, shared: &Arc<Shared>) -> Handle {
        let (tx, mut rx) = mpsc::channel::<Item>(DEFAULT_BUFFER);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut batch: Vec<Item> = Vec::with_capacity(MAX_BATCH);
            let mut keys: Vec<u64> = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                keys.clear();
                keys.extend(batch.iter().map(|(k, _)| *k));
                keys.sort_unstable();
                keys.dedup();
                let values = load_keys(&keys, &shared).await;
                for (key, reply) in batch.drain(..) {
                    if let Some(&v) = values.get(&key) {
                        let _ = reply.send(v);
                    }
                }
            }
        });
        Handle { tx }
    }

    async fn load(handle: &Handle, key: u64) -> Result<u64, BoxError> {
        let (reply, result) = oneshot::channel();
        handle
            .tx
            .send((key, reply))
            .await
            .map_err(|_| "the floor's consumer stopped")?;
        Ok(result.await?)
    }

    async fn stop(handle: Handle) {
        drop(handle);
    }
}
