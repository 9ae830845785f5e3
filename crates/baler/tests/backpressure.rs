//! The bounded buffer and cancellation: submit waits in line, try_submit fails
//! at once, the deadline variant waits up to a limit, and a dropped ticket
//! takes its operation out of the buffer and the target.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{Batcher, Dispatch, Operation, SubmitError};
use common::{advance, assert_target, settle, sizes, Recorder};

const MS: Duration = Duration::from_millis(1);

fn slow_batcher(buffer: usize) -> (Batcher<u32, u32, String>, common::Log<u32, ()>) {
    let (handler, log) = Recorder::new(100 * MS);
    let b = Batcher::builder()
        .max_batch_size(2)
        .max_in_flight(1)
        .buffer_size(buffer)
        .build(handler)
        .unwrap();
    (b, log)
}

#[tokio::test(start_paused = true)]
async fn try_submit_fails_at_once_with_full_and_hands_the_payload_back() {
    let (b, _log) = slow_batcher(4);
    let mut tickets = Vec::new();
    for i in 0..4 {
        tickets.push(b.try_submit(i).unwrap());
    }
    match b.try_submit(99) {
        Err(SubmitError::Full(payload)) => assert_eq!(payload, 99),
        other => panic!("unexpected {other:?}"),
    }
    for t in tickets {
        t.await.unwrap();
    }
    // Room again once operations resolved.
    assert_eq!(b.try_submit(5).unwrap().await.unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn the_buffer_counts_operations_until_they_resolve_so_memory_stays_bounded() {
    let (b, _log) = slow_batcher(4);
    let mut tickets = Vec::new();
    for i in 0..4 {
        tickets.push(b.try_submit(i).unwrap());
    }
    settle().await;
    let s = assert_target(&b);
    assert_eq!((s.in_flight, s.buffered), (2, 2));
    assert!(
        matches!(b.try_submit(9), Err(SubmitError::Full(9))),
        "in flight still counts"
    );
    for t in tickets {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn submit_waits_for_room_first_come_first_served() {
    let (b, _log) = slow_batcher(2);
    let t0 = b.submit(0).await.unwrap();
    let t1 = b.submit(1).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 2..6u32 {
        let (b, order) = (b.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let t = b.submit(i).await.unwrap();
            order.lock().unwrap().push(i);
            t.await.unwrap()
        }));
        settle().await; // each waiter queues up before the next
    }
    assert!(
        order.lock().unwrap().is_empty(),
        "all wait while the buffer is full"
    );
    t0.await.unwrap();
    t1.await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![2, 3, 4, 5],
        "admitted in arrival order"
    );
}

#[tokio::test(start_paused = true)]
async fn submit_timeout_waits_up_to_its_limit_then_fails_with_timeout() {
    let (b, _log) = slow_batcher(2);
    let _t0 = b.submit(0).await.unwrap();
    let _t1 = b.submit(1).await.unwrap();
    let start = tokio::time::Instant::now();
    match b.submit_timeout(7, 30 * MS).await {
        Err(SubmitError::Timeout(payload)) => assert_eq!(payload, 7),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(start.elapsed(), 30 * MS);
    // With a limit long enough for the in-flight batch to finish, it gets in.
    let t = b.submit_timeout(8, Duration::from_secs(1)).await.unwrap();
    assert_eq!(t.await.unwrap(), 8);
    assert_eq!(assert_target(&b).submitted, 3);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiting_submit_frees_its_place_in_line() {
    let (b, _log) = slow_batcher(2);
    let t0 = b.submit(0).await.unwrap();
    let t1 = b.submit(1).await.unwrap();
    let b2 = b.clone();
    let first_in_line = tokio::spawn(async move { b2.submit(2).await.map(|_| ()) });
    settle().await;
    let b3 = b.clone();
    let second_in_line = tokio::spawn(async move { b3.submit(3).await.unwrap().await.unwrap() });
    settle().await;
    first_in_line.abort(); // gives up its place
    t0.await.unwrap();
    t1.await.unwrap();
    assert_eq!(second_in_line.await.unwrap(), 3);
    assert_eq!(
        b.stats().submitted,
        3,
        "the aborted submit was never accepted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_ticket_dropped_before_dispatch_takes_its_operation_out_of_the_buffer_and_target() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .linger(50 * MS)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let keep = b.submit(Operation::new(1).with_cost(3)).await.unwrap();
    let dropped = b.submit(Operation::new(2).with_cost(5)).await.unwrap();
    settle().await;
    assert_eq!(assert_target(&b).target, 8);
    drop(dropped);
    settle().await;
    let s = assert_target(&b);
    assert_eq!((s.target, s.buffered, s.cancelled), (3, 1, 1));
    assert_eq!(keep.await.unwrap(), 1);
    assert_eq!(
        log.lock().unwrap()[0].items,
        vec![1],
        "the handler never saw it"
    );
    assert_eq!(assert_target(&b).target, 0);
}

#[tokio::test(start_paused = true)]
async fn a_ticket_dropped_while_paused_still_leaves_the_target() {
    let (handler, _log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().build(handler).unwrap();
    b.pause();
    let tickets: Vec<_> = (0..10)
        .map(|i| b.try_submit(Operation::new(i).with_cost(2)).unwrap())
        .collect();
    settle().await;
    assert_eq!(assert_target(&b).target, 20);
    drop(tickets);
    settle().await;
    let s = assert_target(&b);
    assert_eq!((s.target, s.buffered, s.cancelled), (0, 0, 10));
    // And the buffer's room came back.
    assert!(b.try_submit(1).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_ticket_dropped_after_dispatch_only_discards_the_result() {
    let (handler, log) = Recorder::<u32, ()>::new(50 * MS);
    let b = Batcher::builder().build(handler).unwrap();
    let t = b.submit(1).await.unwrap();
    settle().await;
    assert_eq!(sizes(&log), vec![1]);
    drop(t);
    advance(50 * MS).await;
    let s = assert_target(&b);
    assert_eq!((s.completed, s.cancelled, s.target), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn buffer_cost_bounds_the_total_cost_held() {
    let (handler, _log) = Recorder::<u32, ()>::new(100 * MS);
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(1)
        .buffer_cost(10)
        .build(handler)
        .unwrap();
    let t1 = b.try_submit(Operation::new(1).with_cost(6)).unwrap();
    match b.try_submit(Operation::new(2).with_cost(5)) {
        Err(SubmitError::Full(2)) => {}
        other => panic!("unexpected {other:?}"),
    }
    let t2 = b.try_submit(Operation::new(3).with_cost(4)).unwrap();
    t1.await.unwrap();
    t2.await.unwrap();
}
