//! How batches are formed: size, cost, linger, minimum size and the straggler
//! ticker, the dispatch policy, keys, and the in-flight limits.

mod common;

use std::time::Duration;

use baler::{Batcher, Dispatch, Operation};
use common::{advance, assert_target, settle, sizes, Recorder};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_batch_closes_at_max_batch_size() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .max_batch_size(10)
        .linger(Duration::from_secs(3600))
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..25 {
        tickets.push(b.submit(i).await.unwrap());
    }
    settle().await;
    assert_eq!(sizes(&log), vec![10, 10], "two full batches go at once");
    assert_eq!(assert_target(&b).buffered, 5, "the rest lingers");
    b.flush().await;
    assert_eq!(sizes(&log), vec![10, 10, 5]);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u32);
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_at_max_batch_cost() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .max_batch_cost(10)
        .linger(Duration::from_secs(3600))
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..6 {
        tickets.push(b.submit(Operation::new(i).with_cost(4)).await.unwrap());
    }
    settle().await;
    // 4 + 4 fits in 10, a third would not: two batches of cost 8 are full.
    // The last two could still take an operation of cost 2, so they linger.
    assert_eq!(sizes(&log), vec![2, 2]);
    b.flush().await;
    let log_now = log.lock().unwrap().clone();
    assert_eq!(log_now.len(), 3);
    assert!(log_now.iter().all(|s| s.cost == 8 && s.items.len() == 2));
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u32);
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_closes_when_its_linger_runs_out_counted_from_its_first_operation() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .linger(10 * MS)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let start = Instant::now();
    let t1 = b.submit(1).await.unwrap();
    settle().await;
    advance(6 * MS).await;
    let t2 = b.submit(2).await.unwrap();
    advance(3 * MS).await;
    assert!(
        log.lock().unwrap().is_empty(),
        "nothing before the linger ends"
    );
    advance(MS).await;
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].items, vec![1, 2]);
    assert_eq!(
        seen[0].at - start,
        10 * MS,
        "10 ms after the first operation, not the last"
    );
    assert_eq!((t1.await.unwrap(), t2.await.unwrap()), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn at_min_batch_size_a_batch_goes_without_waiting_for_the_ticker() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .min_batch_size(3)
        .linger(Duration::ZERO)
        .build(handler)
        .unwrap();
    let start = Instant::now();
    let mut tickets = Vec::new();
    for i in 0..3 {
        tickets.push(b.submit(i).await.unwrap());
    }
    settle().await;
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].items.len(), 3);
    assert_eq!(seen[0].at, start);
    for t in tickets {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn load_aware_dispatch_sends_a_lone_operation_at_once_and_fills_batches_under_load() {
    let (handler, log) = Recorder::<u32, ()>::new(50 * MS);
    let b = Batcher::builder()
        .linger(Duration::from_secs(1))
        .max_in_flight(4)
        .build(handler)
        .unwrap();
    let start = Instant::now();
    let first = b.submit(0).await.unwrap();
    settle().await;
    assert_eq!(log.lock().unwrap()[0].at, start, "idle: no linger");
    // While that batch is in flight, the next one fills up.
    let mut tickets = Vec::new();
    for i in 1..=30 {
        tickets.push(b.submit(i).await.unwrap());
        advance(MS).await;
    }
    assert_eq!(sizes(&log), vec![1], "in flight: the next batch waits");
    first.await.unwrap();
    settle().await;
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].at - start,
        50 * MS,
        "it goes when the key is idle again"
    );
    assert_eq!(seen[1].items.len(), 30);
}

#[tokio::test(start_paused = true)]
async fn linger_dispatch_waits_out_the_linger_even_when_idle() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .linger(5 * MS)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let start = Instant::now();
    b.submit(1).await.unwrap().await.unwrap();
    assert_eq!(log.lock().unwrap()[0].at - start, 5 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_batch_never_mixes_keys() {
    let (handler, log) = Recorder::<u32, &'static str>::new(Duration::ZERO);
    let b = Batcher::builder()
        .linger(5 * MS)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..30u32 {
        let key = ["a", "b", "c"][i as usize % 3];
        tickets.push(b.submit(Operation::new(i).with_key(key)).await.unwrap());
    }
    tickets.push(b.submit(99).await.unwrap()); // no key: its own batch
    for t in tickets {
        t.await.unwrap();
    }
    let seen = log.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for batch in &seen {
        match batch.key {
            Some(k) => {
                let want = ["a", "b", "c"].iter().position(|x| *x == k).unwrap() as u32;
                assert!(batch.items.iter().all(|i| i % 3 == want), "{batch:?}");
            }
            None => assert_eq!(batch.items, vec![99]),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_caps_the_batches_running_at_once() {
    let (handler, log) = Recorder::<u32, ()>::new(100 * MS);
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(3)
        .build(handler)
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..7 {
        tickets.push(b.submit(i).await.unwrap());
    }
    settle().await;
    assert_eq!(sizes(&log).len(), 3);
    assert_eq!(assert_target(&b).in_flight_batches, 3);
    advance(100 * MS).await;
    assert_eq!(sizes(&log).len(), 6);
    for t in tickets {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_per_key_caps_each_key_without_blocking_the_others() {
    let (handler, log) = Recorder::<u32, u8>::new(100 * MS);
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(10)
        .max_in_flight_per_key(1)
        .build(handler)
        .unwrap();
    let mut tickets = Vec::new();
    for i in 0..4 {
        tickets.push(b.submit(Operation::new(i).with_key(1)).await.unwrap());
    }
    tickets.push(b.submit(Operation::new(10).with_key(2)).await.unwrap());
    settle().await;
    let keys: Vec<_> = log.lock().unwrap().iter().map(|s| s.key).collect();
    assert_eq!(keys, vec![Some(1), Some(2)], "one batch per key in flight");
    for t in tickets {
        t.await.unwrap();
    }
    let starts: Vec<_> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.key == Some(1))
        .map(|s| s.at)
        .collect();
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= 100 * MS,
            "batches of one key never overlap"
        );
    }
}
