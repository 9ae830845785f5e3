//! Random runs: batches of random sizes, bundled or not, from several
//! producers; workers of random batch sizes started, crashed (dropped, as a
//! killed process would leave their claims) and shut down at random; jobs
//! that fail and are retried. Every ticket must resolve exactly once, with
//! its own job's result, and nothing may be left over at the producers.
//! The seed is printed; `BALER_QUEUE_SEED` replays one.

mod common;

use std::time::Duration;

use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{JobError, Queue, Worker};
use common::{within, RedisServer};

const PATIENCE: Duration = Duration::from_secs(60);

/// xorshift64*: enough to pick sizes and events.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("BALER_QUEUE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        println!("seed {seed} (BALER_QUEUE_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Jobs whose number is a multiple of five always ask to be retried: they
/// end as failed after the queue's attempts. The others double.
fn start_worker(queue: &Queue, batch: usize) -> Worker {
    queue
        .worker()
        .max_batch_size(batch)
        .max_in_flight(2)
        .block_time(Duration::from_millis(50))
        .start(handler_fn(|batch: Batch<u64>| async move {
            // Long enough that crashes and shutdowns find jobs in hand.
            tokio::time::sleep(Duration::from_millis(3)).await;
            let out: HandlerResult<u64, String> = Ok(batch
                .iter()
                .map(|n| {
                    if n % 5 == 0 {
                        Outcome::Retry(format!("job {n} always fails"))
                    } else {
                        Outcome::Done(n * 2)
                    }
                })
                .collect());
            out
        }))
        .expect("worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_batches_crashes_and_shutdowns_resolve_every_ticket_once_with_its_own_result() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "random")
        .lease(Duration::from_millis(300))
        .backoff(Duration::from_millis(10), Duration::from_millis(40))
        .max_attempts(2)
        .build()
        .await
        .expect("queue");
    let mut rng = Rng::new();
    let producers: Vec<_> = (0..3)
        .map(|p| {
            queue
                .producer(&format!("p{p}"))
                .max_batch_size(1 + rng.below(40) as usize)
                .bundles(p != 2)
                .build::<u64, u64>()
                .expect("producer")
        })
        .collect();
    let mut workers = vec![start_worker(&queue, 1 + rng.below(30) as usize)];
    let (mut crashes, mut shutdowns) = (0, 0);
    let mut tickets = Vec::new();
    let mut next = 1u64;
    for _round in 0..40 {
        // A batch from a random producer, spread over concurrent enqueues
        // so that the batcher cuts it as it likes.
        let producer = producers[rng.below(3) as usize].clone();
        let size = 1 + rng.below(60);
        let jobs: Vec<u64> = (next..next + size).collect();
        next += size;
        tickets.push(tokio::spawn(async move {
            let answers = producer.enqueue_many(jobs.clone()).await;
            let mut out = Vec::new();
            for (n, t) in jobs.into_iter().zip(answers) {
                out.push((n, t.expect("enqueued").await));
            }
            out
        }));
        match rng.below(6) {
            0 | 1 => workers.push(start_worker(&queue, 1 + rng.below(30) as usize)),
            2 if workers.len() > 1 && crashes < 6 => {
                // Dropped as a killed process: its claims wait out the lease.
                let i = rng.below(workers.len() as u64) as usize;
                drop(workers.swap_remove(i));
                crashes += 1;
            }
            3 if workers.len() > 1 => {
                let i = rng.below(workers.len() as u64) as usize;
                let w = workers.swap_remove(i);
                let deadline = Duration::from_millis(rng.below(30));
                within(PATIENCE, "a worker's shutdown", w.shutdown(deadline)).await;
                shutdowns += 1;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
    }
    let mut resolved = 0;
    for t in tickets {
        for (n, result) in within(PATIENCE, "a batch's results", t)
            .await
            .expect("the batch's task")
        {
            match result {
                Ok(out) => assert_eq!((n, out), (n, n * 2)),
                Err(JobError::Failed { attempts, .. }) if n % 5 == 0 => {
                    assert_eq!((n, attempts), (n, 2));
                }
                Err(e) => panic!("job {n}: {e}"),
            }
            resolved += 1;
        }
    }
    assert_eq!(resolved, next - 1);
    for p in &producers {
        assert_eq!(p.outstanding(), 0);
        assert!(p.take_unclaimed().await.is_empty());
    }
    let reclaimed: u64 = workers.iter().map(|w| w.stats().reclaimed).sum();
    println!(
        "{resolved} jobs, {} workers left, {crashes} crashed, {shutdowns} shut down, \
         {reclaimed} jobs reclaimed by those left",
        workers.len()
    );
    for w in workers {
        within(
            PATIENCE,
            "a worker's shutdown",
            w.shutdown(Duration::from_secs(1)),
        )
        .await;
    }
    assert_eq!(queue.stats().await.expect("stats").length, 0);
}
