//! A producer process: enqueues numbers and prints each one's result as it
//! comes back (run `--example worker` alongside).
//!
//! ```text
//! cargo run -p baler-queue --example producer -- redis://127.0.0.1:6379 double 1000
//! ```

use std::time::Duration;

use baler_queue::Queue;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let name = args.next().unwrap_or_else(|| "double".into());
    let count: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(100);

    let queue = Queue::builder(&url, &name)
        .lease(Duration::from_secs(5))
        .build()
        .await?;
    // The name picks the results stream: a restarted producer of the same
    // name receives the results of the jobs it enqueued before.
    let producer = queue.producer("example-producer").build::<u64, u64>()?;

    let mut tickets = Vec::new();
    for ticket in producer.enqueue_many(0..count).await {
        tickets.push(ticket?);
    }
    let mut sum = 0;
    for ticket in tickets {
        sum += ticket.await?;
    }
    println!("{count} jobs done; their results add up to {sum}");

    let report = producer.shutdown(Duration::from_secs(5)).await;
    assert!(report.outstanding.is_empty());
    Ok(())
}
