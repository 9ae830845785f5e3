//! A `Batcher` behind tower's middleware: each request is one key look-up,
//! the batcher turns concurrent look-ups into one query per batch, and a
//! `ServiceBuilder` puts a concurrency limit and a per-request timeout in
//! front, as a service's request path would.
//!
//! ```sh
//! cargo run -p baler --features tower --example tower
//! ```
//!
//! 2,000 requests from 200 concurrent callers; each request's answer is
//! checked against the key it asked for, and the run fails if any is missing,
//! wrong or late.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baler::service::BatcherService;
use baler::{handler_fn, Batch, Batcher, Outcome};
use tower::{BoxError, ServiceBuilder, ServiceExt};

const CALLERS: u64 = 200;
const REQUESTS_PER_CALLER: u64 = 10;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let queries = Arc::new(AtomicU64::new(0));
    let counted = queries.clone();
    // The "datastore": one round trip of 2 ms answers a whole batch of keys.
    let batcher = Batcher::builder()
        .max_batch_size(100)
        .linger(Duration::from_millis(2))
        .build(handler_fn(move |batch: Batch<u64>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, std::io::Error>(
                    batch
                        .iter()
                        .map(|key| Outcome::Done(format!("value-{key}")))
                        .collect(),
                )
            }
        }))?;

    let service = ServiceBuilder::new()
        .concurrency_limit(100)
        .timeout(Duration::from_secs(5))
        .service(BatcherService::new(batcher.clone()));

    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let service = service.clone();
            tokio::spawn(async move {
                for i in 0..REQUESTS_PER_CALLER {
                    let key = caller * REQUESTS_PER_CALLER + i;
                    let value = service.clone().oneshot(key.into()).await?;
                    if value != format!("value-{key}") {
                        return Err(format!("key {key} got {value:?}").into());
                    }
                }
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for caller in callers {
        caller.await??;
    }

    let requests = CALLERS * REQUESTS_PER_CALLER;
    let queries = queries.load(Ordering::Relaxed);
    println!("{requests} requests answered correctly with {queries} batched queries");
    if queries >= requests {
        return Err(format!("no batching: {queries} queries for {requests} requests").into());
    }
    let report = batcher.shutdown(Some(Duration::from_secs(5))).await;
    if !report.is_clean() {
        return Err(format!("shutdown was not clean: {report:?}").into());
    }
    Ok(())
}
