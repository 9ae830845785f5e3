//! What each ticket resolves with: its own outcome, retries with backoff,
//! attempts, timeouts, panics and handler mistakes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Error, Outcome};
use common::{assert_target, settle};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn each_ticket_resolves_with_its_own_operations_outcome() {
    let b = Batcher::builder()
        .linger(10 * MS)
        .build(handler_fn(|batch: Batch<i32>| async move {
            // Odd payloads fail, even ones succeed: one outcome per operation.
            Ok::<_, String>(
                batch
                    .iter()
                    .map(|&n| {
                        if n % 2 == 0 {
                            Outcome::Done(n * 100)
                        } else {
                            Outcome::Failed(format!("odd {n}"))
                        }
                    })
                    .collect(),
            )
        }))
        .unwrap();
    let mut tickets = Vec::new();
    for n in 0..50 {
        tickets.push((n, b.submit(n).await.unwrap()));
    }
    for (n, t) in tickets {
        match t.await {
            Ok(v) => assert_eq!(v, n * 100),
            Err(Error::Handler(e)) => assert_eq!(*e, format!("odd {n}")),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    // The stats count a batch when its report reaches the engine, just
    // after its tickets resolved; a flush waits for that.
    b.flush().await;
    let s = assert_target(&b);
    assert_eq!((s.completed, s.failed, s.target), (25, 25, 0));
}

#[tokio::test(start_paused = true)]
async fn a_handler_returning_the_wrong_number_of_outcomes_fails_only_its_batch() {
    let b = Batcher::builder()
        .max_batch_size(3)
        .dispatch(baler::Dispatch::Linger)
        .build(handler_fn(|batch: Batch<i32>| async move {
            let mut out: Vec<Outcome<i32, String>> =
                batch.iter().map(|&n| Outcome::Done(n)).collect();
            match batch.items()[0] {
                0 => {
                    out.pop(); // one too few
                }
                3 => out.push(Outcome::Done(-1)), // one too many
                _ => {}
            }
            Ok(out)
        }))
        .unwrap();
    let mut tickets = Vec::new();
    for n in 0..9 {
        tickets.push(b.submit(n).await.unwrap());
    }
    for (n, t) in tickets.into_iter().enumerate() {
        let r = t.await;
        match n {
            0..=2 => assert!(
                matches!(
                    r,
                    Err(Error::OutcomeCount {
                        expected: 3,
                        got: 2
                    })
                ),
                "{r:?}"
            ),
            3..=5 => assert!(
                matches!(
                    r,
                    Err(Error::OutcomeCount {
                        expected: 3,
                        got: 4
                    })
                ),
                "{r:?}"
            ),
            _ => assert_eq!(r.unwrap(), n as i32),
        }
    }
    let msg = Error::<String>::OutcomeCount {
        expected: 3,
        got: 2,
    }
    .to_string();
    assert!(msg.contains("exactly one outcome per operation"), "{msg}");
}

#[tokio::test(start_paused = true)]
async fn a_whole_batch_error_reaches_every_operation_of_the_batch() {
    let b = Batcher::builder()
        .linger(MS)
        .dispatch(baler::Dispatch::Linger)
        .build(handler_fn(|_batch: Batch<i32>| async move {
            Err::<Vec<Outcome<(), String>>, _>("connection refused".to_owned())
        }))
        .unwrap();
    let mut tickets = Vec::new();
    for n in 0..5 {
        tickets.push(b.submit(n).await.unwrap());
    }
    let mut errors = Vec::new();
    for t in tickets {
        match t.await {
            Err(Error::Handler(e)) => errors.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(errors.iter().all(|e| **e == "connection refused"));
    assert!(
        errors.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])),
        "one error, shared"
    );
    assert_eq!(assert_target(&b).failed, 5);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_resolves_its_batch_with_panicked_and_the_engine_lives_on() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .build(handler_fn(|batch: Batch<i32>| async move {
            if batch.items()[0] == 13 {
                panic!("unlucky {}", batch.items()[0]);
            }
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let bad = b.submit(13).await.unwrap();
    match bad.await {
        Err(Error::Panicked { message }) => assert_eq!(message, "unlucky 13"),
        other => panic!("unexpected {other:?}"),
    }
    b.submit(1).await.unwrap().await.unwrap();
    let s = assert_target(&b);
    assert_eq!((s.completed, s.failed, s.in_flight_batches), (1, 1, 0));
}

/// When each attempt of each operation was dispatched.
type Attempts = Arc<Mutex<Vec<(i32, u32, Instant)>>>;

/// A handler that answers from a script: `Retry` for the attempts listed,
/// `Done` otherwise, and records when each attempt was dispatched.
fn scripted(
    retry_on: fn(i32, u32) -> bool,
) -> (
    impl baler::Handler<i32, Output = i32, Error = String>,
    Attempts,
) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let h = handler_fn(move |batch: Batch<i32>| {
        let seen = seen.clone();
        async move {
            let mut out = Vec::new();
            for (&n, info) in batch.iter().zip(batch.info()) {
                seen.lock().unwrap().push((n, info.attempt, Instant::now()));
                out.push(if retry_on(n, info.attempt) {
                    Outcome::Retry(format!("busy {n}"))
                } else {
                    Outcome::Done(n)
                });
            }
            Ok(out)
        }
    });
    (h, log)
}

#[tokio::test(start_paused = true)]
async fn only_retryable_operations_are_retried_after_an_exponential_backoff_with_jitter() {
    // Operation 1 fails retryably on its first two attempts; 2 never does.
    let (handler, log) = scripted(|n, attempt| n == 1 && attempt <= 2);
    let b = Batcher::builder()
        .max_attempts(5)
        .backoff(100 * MS, Duration::from_secs(10))
        .build(handler)
        .unwrap();
    let start = Instant::now();
    let t1 = b.submit(1).await.unwrap();
    let t2 = b.submit(2).await.unwrap();
    assert_eq!(t2.await.unwrap(), 2);
    assert_eq!(t1.await.unwrap(), 1);
    let seen = log.lock().unwrap().clone();
    let attempts_of = |n| {
        seen.iter()
            .filter(|(m, _, _)| *m == n)
            .map(|(_, a, t)| (*a, *t - start))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        attempts_of(2).len(),
        1,
        "a successful operation is not retried"
    );
    let one = attempts_of(1);
    assert_eq!(
        one.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // Backoff before attempt 2 is in [50, 100] ms, before attempt 3 in [100, 200] ms.
    let gap1 = one[1].1 - one[0].1;
    let gap2 = one[2].1 - one[1].1;
    assert!((50 * MS..=100 * MS).contains(&gap1), "{gap1:?}");
    assert!((100 * MS..=200 * MS).contains(&gap2), "{gap2:?}");
    let s = assert_target(&b);
    assert_eq!((s.retried, s.completed, s.failed, s.target), (2, 2, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_operation_retried_until_it_has_no_attempts_left_resolves_exhausted() {
    let (handler, log) = scripted(|_, _| true);
    let b = Batcher::builder().max_attempts(3).build(handler).unwrap();
    match b.submit(7).await.unwrap().await {
        Err(Error::Exhausted { attempts, last }) => {
            assert_eq!(attempts, 3);
            assert_eq!(*last, "busy 7");
        }
        other => panic!("unexpected {other:?}"),
    }
    let attempts: Vec<u32> = log.lock().unwrap().iter().map(|(_, a, _)| *a).collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3],
        "an attempt counts when it is dispatched"
    );
    let s = assert_target(&b);
    assert_eq!((s.retried, s.failed, s.retrying, s.target), (2, 1, 0, 0));
}

/// Counts live handler futures; a guard's drop marks the future as dropped.
struct Alive(Arc<AtomicUsize>, Arc<Mutex<Vec<Instant>>>);
impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        self.1.lock().unwrap().push(Instant::now());
    }
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_its_max_operation_time_is_dropped_and_its_operations_time_out() {
    let alive = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (a, d) = (alive.clone(), dropped.clone());
    let b = Batcher::builder()
        .max_operation_time(100 * MS)
        .build(handler_fn(move |_batch: Batch<i32>| {
            let guard = Alive(a.clone(), d.clone());
            a.fetch_add(1, Ordering::SeqCst);
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<Vec<Outcome<(), String>>, String>(Vec::new())
            }
        }))
        .unwrap();
    let start = Instant::now();
    let r = b.submit(1).await.unwrap().await;
    assert!(
        matches!(r, Err(Error::TimedOut { after, attempts: 1 }) if after == 100 * MS),
        "{r:?}"
    );
    assert_eq!(start.elapsed(), 100 * MS);
    assert_eq!(
        alive.load(Ordering::SeqCst),
        0,
        "the handler's future was dropped"
    );
    assert_eq!(dropped.lock().unwrap()[0] - start, 100 * MS);
    assert_eq!(assert_target(&b).target, 0);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_batch_holds_its_in_flight_slot_until_its_handler_is_dropped() {
    let alive = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let (a, m, d) = (alive.clone(), most.clone(), dropped.clone());
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(2)
        .max_attempts(1)
        .max_operation_time(100 * MS)
        .build(handler_fn(move |batch: Batch<u64>| {
            let now = a.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            let guard = Alive(a.clone(), d.clone());
            let sleep = Duration::from_millis(batch.items()[0]);
            async move {
                let _guard = guard;
                tokio::time::sleep(sleep).await;
                Ok::<_, String>(batch.done_all(()))
            }
        }))
        .unwrap();
    let mut tickets = Vec::new();
    // Every other batch runs forever; the in-flight cap of 2 must hold anyway.
    for i in 0..10u64 {
        tickets.push(
            b.submit(if i % 2 == 0 { 3_600_000 } else { 10 })
                .await
                .unwrap(),
        );
    }
    for (i, t) in tickets.into_iter().enumerate() {
        let r = t.await;
        if i % 2 == 0 {
            assert!(matches!(r, Err(Error::TimedOut { .. })), "{r:?}");
        } else {
            r.unwrap();
        }
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more than max_in_flight handlers alive"
    );
    assert_eq!(dropped.lock().unwrap().len(), 10);
}

#[tokio::test(start_paused = true)]
async fn with_retry_timeouts_a_timed_out_operation_is_retried_while_attempts_remain() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let b = Batcher::builder()
        .max_attempts(3)
        .retry_timeouts(true)
        .max_operation_time(100 * MS)
        .build(handler_fn(move |batch: Batch<i32>| {
            let call = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if call < 2 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok::<_, String>(batch.done_all(batch.info()[0].attempt))
            }
        }))
        .unwrap();
    assert_eq!(
        b.submit(1).await.unwrap().await.unwrap(),
        3,
        "succeeded on attempt 3"
    );
    assert_eq!(b.stats().retried, 2);
}

/// Every way an operation can end, side by side: each ticket resolves once,
/// with its own result, by the time its batch is over (none left pending),
/// and each resolution is counted once: `completed + failed == submitted`.
#[tokio::test(start_paused = true)]
async fn every_way_an_operation_ends_resolves_its_ticket_once_and_counts_it_once() {
    // One operation per batch; the payload says how its handler ends:
    // 0 done, 1 failed, 2 retried once then done, 3 retried until exhausted,
    // 4 a whole-batch error, 5 a panic, 6 past the max operation time.
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(8)
        .max_attempts(2)
        .backoff(10 * MS, 10 * MS)
        .max_operation_time(50 * MS)
        .build(handler_fn(|batch: Batch<u32>| async move {
            let (n, attempt) = (batch.items()[0], batch.info()[0].attempt);
            match n {
                0 => Ok(vec![Outcome::Done(n)]),
                1 => Ok(vec![Outcome::Failed(format!("{n} failed"))]),
                2 if attempt > 1 => Ok(vec![Outcome::Done(n)]),
                2 | 3 => Ok(vec![Outcome::Retry(format!("{n} busy"))]),
                4 => Err(format!("{n}'s batch failed")),
                5 => panic!("{n} panicked"),
                _ => std::future::pending().await,
            }
        }))
        .unwrap();
    let mut tickets = Vec::new();
    for n in 0..7 {
        tickets.push(b.submit(n).await.unwrap());
    }
    // Every batch is over by then: backoffs of 10 ms, a timeout at 50 ms.
    tokio::time::sleep(100 * MS).await;
    settle().await;
    let mut results = Vec::new();
    for (n, t) in tickets.iter_mut().enumerate() {
        match common::now_or_never(t) {
            Some(result) => results.push(result),
            None => panic!("the ticket of operation {n} never resolved"),
        }
    }
    assert!(matches!(results[0], Ok(0)), "{:?}", results[0]);
    assert!(matches!(&results[1], Err(Error::Handler(e)) if **e == "1 failed"));
    assert!(matches!(results[2], Ok(2)), "{:?}", results[2]);
    assert!(
        matches!(&results[3], Err(Error::Exhausted { attempts: 2, last }) if **last == "3 busy"),
        "{:?}",
        results[3]
    );
    assert!(matches!(&results[4], Err(Error::Handler(e)) if **e == "4's batch failed"));
    assert!(matches!(&results[5], Err(Error::Panicked { message }) if message == "5 panicked"));
    assert!(
        matches!(results[6], Err(Error::TimedOut { .. })),
        "{:?}",
        results[6]
    );
    let s = assert_target(&b);
    assert_eq!(
        (s.submitted, s.completed, s.failed, s.retried, s.cancelled),
        (7, 2, 5, 2, 0),
        "each resolution counted once: {s:?}"
    );
    // Nothing is left to resolve a ticket a second time.
    assert_eq!((s.buffered, s.retrying, s.in_flight), (0, 0, 0), "{s:?}");
}

/// `Execution::Inline` changes where handler futures are polled, not what
/// tickets resolve with: own outcomes, panics caught, timeouts enforced, and
/// batches still run concurrently up to the in-flight cap.
#[tokio::test(start_paused = true)]
async fn inline_execution_keeps_every_result_panic_and_timeout_semantic() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let b = Batcher::builder()
        .execution(baler::Execution::Inline)
        .max_batch_size(1)
        .max_in_flight(3)
        .max_operation_time(50 * MS)
        .build(handler_fn(move |batch: Batch<i32>| {
            let (running, most) = (r.clone(), m.clone());
            async move {
                let n = batch.items()[0];
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Decrements even when the future is dropped at its timeout.
                struct Leave(Arc<AtomicUsize>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leave = Leave(running);
                match n {
                    13 => panic!("unlucky {n}"),
                    99 => tokio::time::sleep(Duration::from_secs(60)).await,
                    _ => tokio::time::sleep(10 * MS).await,
                }
                Ok::<_, String>(vec![Outcome::Done(n * 2)])
            }
        }))
        .unwrap();
    let mut tickets = Vec::new();
    for n in [1, 2, 13, 99, 5, 6] {
        tickets.push((n, b.submit(n).await.unwrap()));
    }
    let started = Instant::now();
    for (n, ticket) in tickets {
        match (n, ticket.await) {
            (13, Err(Error::Panicked { message })) => assert_eq!(message, "unlucky 13"),
            (99, Err(Error::TimedOut { after, attempts })) => {
                assert_eq!((after, attempts), (50 * MS, 1));
            }
            (n, Ok(doubled)) if n != 13 && n != 99 => assert_eq!(doubled, n * 2),
            (n, other) => panic!("operation {n} resolved with {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the timeout was enforced"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "batches ran concurrently, up to the cap"
    );
    assert_eq!(
        running.load(Ordering::SeqCst),
        0,
        "every handler future was dropped"
    );
    let s = assert_target(&b);
    assert_eq!((s.completed, s.failed, s.in_flight_batches), (4, 2, 0));
    assert!(b.shutdown(None).await.is_clean());
}
