//! A client waiting on jobs that worker processes run: the producer keeps a
//! few chains of jobs going (each result makes its chain enqueue the next
//! job) and checks that every result comes back; the workers run the jobs.
//! A result written before the producer looked for it still arrives, because
//! it waits in a Redis stream, not in a pub/sub message.
//!
//! Against a local redis-server (`REDIS_URL` overrides the address), in
//! three terminals:
//!
//! ```text
//! redis-server --port 6379 --bind 127.0.0.1 --save "" --appendonly no
//! cargo run -p baler-queue --example queue_chains -- worker      # twice, in two terminals
//! cargo run -p baler-queue --example queue_chains -- producer 2000
//! ```
//!
//! Kill a worker with `kill -9` while the producer runs: its jobs are run by
//! the other worker once their lease (2 s here) has run out, and the
//! producer still gets every result. Stop a worker with Ctrl-C: it finishes
//! or hands back what it holds.

use std::time::Duration;

use baler::{handler_fn, Batch, Outcome};
use baler_queue::Queue;

const CHAINS: u64 = 5;

#[tokio::main]
async fn main() {
    // Errors are shown by their message, which says what to change.
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mut args = std::env::args().skip(1);
    let role = args.next().unwrap_or_default();
    let queue = Queue::builder(&url, "chains")
        .lease(Duration::from_secs(2))
        .build()
        .await?;
    match role.as_str() {
        "worker" => worker(queue).await,
        "producer" => {
            let jobs = match args.next() {
                Some(n) => n
                    .parse()
                    .map_err(|e| format!("the job count {n:?} is not a number ({e})"))?,
                None => 1000,
            };
            producer(queue, jobs).await
        }
        other => Err(format!(
            "unknown role {other:?}: run `queue_chains worker` or `queue_chains producer [JOBS]`"
        )
        .into()),
    }
}

/// Squares numbers, a batch at a time, until Ctrl-C.
async fn worker(queue: Queue) -> Result<(), Box<dyn std::error::Error>> {
    let worker = queue
        .worker()
        .max_in_flight(2)
        // A third of the lease at most, so that a waiting worker renews in time.
        .block_time(Duration::from_millis(500))
        .start(handler_fn(|batch: Batch<u64>| async move {
            // Stands for real work, so that a kill -9 finds jobs in hand.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, std::io::Error>(batch.iter().map(|n| Outcome::Done(n * n)).collect())
        }))?;
    eprintln!("worker {} running; Ctrl-C to stop", worker.consumer());
    tokio::signal::ctrl_c().await?;
    let report = worker.shutdown(Duration::from_secs(10)).await;
    eprintln!("{report:?}");
    Ok(())
}

/// Keeps `CHAINS` chains going until `jobs` jobs have been enqueued, checking
/// each result.
async fn producer(queue: Queue, jobs: u64) -> Result<(), Box<dyn std::error::Error>> {
    // The name picks the results stream: a producer restarted under the same
    // name receives the results of the jobs it enqueued before.
    let producer = queue.producer("chains-client").build::<u64, u64>()?;
    let mut chains = tokio::task::JoinSet::new();
    for chain in 0..CHAINS {
        let producer = producer.clone();
        chains.spawn(async move {
            let mut done = 0u64;
            let mut n = chain;
            while n < jobs {
                let out = producer.enqueue(n).await?.await?;
                if out != n * n {
                    return Err(format!("job {n} gave {out}, not {}", n * n).into());
                }
                done += 1;
                n += CHAINS;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(done)
        });
    }
    let mut done = 0;
    while let Some(chain) = chains.join_next().await {
        done += chain?.map_err(|e| e.to_string())?;
    }
    // Nothing is held for jobs whose results arrived.
    println!(
        "{done} results received in {CHAINS} chains; {} jobs still awaited",
        producer.outstanding()
    );
    let report = producer.shutdown(Duration::from_secs(5)).await;
    if !report.outstanding.is_empty() {
        return Err(format!("jobs left without a result: {:?}", report.outstanding).into());
    }
    Ok(())
}
