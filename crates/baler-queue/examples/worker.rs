//! A worker process: doubles the numbers of a queue until Ctrl-C, then
//! finishes what it holds (or hands it back) and exits with a report.
//!
//! ```text
//! cargo run -p baler-queue --example worker -- redis://127.0.0.1:6379 double
//! ```
//!
//! Start several; kill one with SIGKILL and its jobs are run by the others
//! once their lease has run out.

use std::time::Duration;

use baler::{handler_fn, Batch, Outcome};
use baler_queue::Queue;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let name = args.next().unwrap_or_else(|| "double".into());

    let queue = Queue::builder(&url, &name)
        .lease(Duration::from_secs(5))
        .build()
        .await?;
    let worker = queue
        .worker()
        .start(handler_fn(|batch: Batch<u64>| async move {
            Ok::<_, std::io::Error>(batch.iter().map(|n| Outcome::Done(n * 2)).collect())
        }))?;
    eprintln!(
        "worker {} on queue {name} at {url}; Ctrl-C to stop",
        worker.consumer()
    );

    tokio::signal::ctrl_c().await?;
    let report = worker.shutdown(Duration::from_secs(10)).await;
    eprintln!("{report:?}");
    Ok(())
}
