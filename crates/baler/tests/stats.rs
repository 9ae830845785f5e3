//! The stats snapshot: what a batcher holds and has done, consistent in itself.

mod common;

use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Capacity, Operation, Outcome};
use common::{advance, assert_target, settle};

#[tokio::test(start_paused = true)]
async fn stats_count_what_was_submitted_held_and_resolved() {
    let b = Batcher::builder()
        .max_batch_size(4)
        .max_in_flight(1)
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .capacity(Capacity::provisioned(1_000_000).unwrap())
        .build(handler_fn(|batch: Batch<u32>| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, String>(
                batch
                    .iter()
                    .zip(batch.info())
                    .map(|(&n, info)| match n % 3 {
                        0 => Outcome::Done(n),
                        1 => Outcome::Failed("no".to_owned()),
                        _ if info.attempt == 1 => Outcome::Retry("later".to_owned()),
                        _ => Outcome::Done(n),
                    })
                    .collect(),
            )
        }))
        .unwrap();
    let mut tickets: Vec<_> = (0..12)
        .map(|n| b.try_submit(Operation::new(n).with_cost(2)).unwrap())
        .collect();
    let cancelled = tickets.pop().unwrap(); // n = 11, still buffered
                                            // The capacity's bucket starts empty: the first batch waits 8 µs for it.
    settle().await;
    advance(Duration::from_millis(1)).await;
    let s = assert_target(&b);
    assert_eq!(
        (s.submitted, s.in_flight_batches, s.in_flight, s.buffered),
        (12, 1, 4, 8)
    );
    assert_eq!((s.target, s.capacity), (24, Some(1_000_000)));
    drop(cancelled);
    for t in tickets {
        let _ = t.await;
    }
    let s = assert_target(&b);
    // 0,3,6,9 done; 1,4,7,10 failed; 2,5,8 retried once, then done; 11 cancelled.
    assert_eq!(s.submitted, 12);
    assert_eq!(
        (s.completed, s.failed, s.retried, s.cancelled),
        (7, 4, 3, 1)
    );
    assert_eq!(s.submitted, s.completed + s.failed + s.cancelled);
    assert_eq!((s.target, s.pending(), s.in_flight_batches), (0, 0, 0));
    assert!(s.batches >= 3);
    assert!(!s.paused && !s.shutting_down);
}
