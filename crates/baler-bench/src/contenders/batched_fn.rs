//! batched-fn: its `batched_fn!` macro makes one process-wide batched
//! function, whose handler runs on a thread of its own (not a tokio task),
//! fed by a flume channel. Being a static, it is started once per process
//! and lives across measurements; each measurement points it at its own
//! [`Shared`] counters.

use std::sync::{Arc, RwLock};

use batched_fn::batched_fn;

use super::{Contender, Setup};
use crate::shared::{BoxError, Shared};

pub struct BatchedFn;

/// The current measurement's counters and gate, read by the handler thread
/// once per batch.
static CURRENT: RwLock<Option<Arc<Shared>>> = RwLock::new(None);

fn on_batch(len: usize) {
    let shared = CURRENT.read().ok().and_then(|s| s.clone());
    if let Some(shared) = shared {
        shared.batch_blocking(len);
    }
}

async fn evaluate(x: u64) -> Result<(), batched_fn::Error> {
    let batched = batched_fn! {
        handler = |batch: Vec<u64>| -> Vec<()> {
            on_batch(batch.len());
            batch.iter().map(|_| ()).collect()
        };
        config = {
            max_batch_size: 100,
            max_delay: 1,
        };
        context = {};
    };
    batched(x).await
}

#[derive(Debug)]
struct Failed(batched_fn::Error);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batched-fn failed: {:?}", self.0)
    }
}

impl std::error::Error for Failed {}

impl Contender for BatchedFn {
    type Handle = ();

    fn name(&self) -> &'static str {
        "batched-fn"
    }

    fn config(&self) -> &'static str {
        "`batched_fn!` with `max_batch_size: 100, max_delay: 1` (ms), unbounded channel (its default), handler on its own thread"
    }

    fn start(&self, setup: &Setup) {
        if let Ok(mut current) = CURRENT.write() {
            *current = Some(setup.shared.clone());
        }
    }

    async fn call(_handle: &(), x: u64) -> Result<(), BoxError> {
        evaluate(x)
            .await
            .map_err(|e| Box::new(Failed(e)) as BoxError)
    }

    async fn stop(_handle: ()) {
        if let Ok(mut current) = CURRENT.write() {
            *current = None;
        }
    }

    fn abandon(_handle: ()) {
        if let Ok(mut current) = CURRENT.write() {
            *current = None;
        }
        // Its thread still answers what was queued (to dropped callers);
        // give it a moment so that it does not run into the next measurement.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
