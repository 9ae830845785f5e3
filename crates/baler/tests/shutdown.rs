//! Pause, flush and shutdown: intake stops, everything buffered is flushed,
//! in-flight batches are awaited, and with a deadline whatever is left comes
//! back in the report. Nothing is ever left hanging.

mod common;

use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Dispatch, Error, Operation, Outcome, SubmitError};
use common::{advance, assert_target, settle, sizes, Recorder};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_everything_buffered_regardless_of_linger_and_min_size() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder()
        .linger(HOUR)
        .min_batch_size(50)
        .max_batch_size(100)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..10).map(|i| b.try_submit(i).unwrap()).collect();
    let start = Instant::now();
    let report = b.shutdown(None).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "no linger, no ticker");
    assert_eq!(
        (report.flushed, report.completed, report.failed),
        (10, 10, 0)
    );
    assert!(report.is_clean());
    assert_eq!(sizes(&log), vec![10]);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u32);
    }
    assert_eq!(assert_target(&b).target, 0);
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_starts_submits_fail_with_shutdown() {
    let (handler, _log) = Recorder::<u32, ()>::new(100 * MS);
    let b = Batcher::builder().build(handler).unwrap();
    let t = b.submit(1).await.unwrap();
    let b2 = b.clone();
    let shutting = tokio::spawn(async move { b2.shutdown(None).await });
    settle().await;
    assert!(b.is_shutting_down());
    assert!(matches!(b.try_submit(2), Err(SubmitError::Shutdown(2))));
    assert!(matches!(b.submit(3).await, Err(SubmitError::Shutdown(3))));
    assert!(matches!(
        b.submit_timeout(4, HOUR).await,
        Err(SubmitError::Shutdown(4))
    ));
    assert_eq!(t.await.unwrap(), 1);
    shutting.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_submit_waiting_for_room_when_shutdown_starts_fails_with_shutdown() {
    let (handler, _log) = Recorder::<u32, ()>::new(100 * MS);
    let b = Batcher::builder()
        .max_batch_size(1)
        .buffer_size(1)
        .build(handler)
        .unwrap();
    let t = b.submit(1).await.unwrap();
    let b2 = b.clone();
    let waiting = tokio::spawn(async move { b2.submit(2).await.map(|_| ()) });
    settle().await;
    let report = b.shutdown(None).await;
    assert!(matches!(
        waiting.await.unwrap(),
        Err(SubmitError::Shutdown(2))
    ));
    assert_eq!(t.await.unwrap(), 1);
    assert_eq!(report.completed, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_batches_in_flight() {
    let (handler, _log) = Recorder::<u32, ()>::new(250 * MS);
    let b = Batcher::builder().build(handler).unwrap();
    let t = b.submit(1).await.unwrap();
    settle().await;
    let start = Instant::now();
    let report = b.shutdown(None).await;
    assert_eq!(start.elapsed(), 250 * MS);
    assert_eq!(
        (report.flushed, report.completed),
        (0, 1),
        "dispatched before the shutdown"
    );
    assert_eq!(t.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_with_a_deadline_abandons_what_is_left_and_returns_it_in_the_report() {
    let b = Batcher::builder()
        .max_batch_size(2)
        .max_in_flight(1)
        .build(handler_fn(|batch: Batch<u32, &'static str>| async move {
            if batch.items()[0] >= 100 {
                tokio::time::sleep(HOUR).await; // a handler that hangs
            }
            Ok::<_, String>(batch.iter().map(|&n| Outcome::Done(n)).collect())
        }))
        .unwrap();
    let quick = b.try_submit(Operation::new(1).with_key("a")).unwrap();
    settle().await;
    let hung: Vec<_> = (100..104)
        .map(|i| {
            b.try_submit(Operation::new(i).with_key("a").with_cost(2))
                .unwrap()
        })
        .collect();
    let start = Instant::now();
    let report = b.shutdown(Duration::from_millis(500)).await;
    assert_eq!(start.elapsed(), 500 * MS);
    assert_eq!(quick.await.unwrap(), 1);
    for t in hung {
        assert!(matches!(t.await, Err(Error::Abandoned)));
    }
    // Two were in flight (their handler was dropped), two still buffered.
    let mut abandoned: Vec<_> = report
        .abandoned
        .iter()
        .map(|a| (a.payload, a.key, a.cost))
        .collect();
    abandoned.sort();
    assert_eq!(
        abandoned,
        vec![
            (100, Some("a"), 2),
            (101, Some("a"), 2),
            (102, Some("a"), 2),
            (103, Some("a"), 2)
        ]
    );
    assert!(!report.is_clean());
    let s = assert_target(&b);
    assert_eq!((s.target, s.pending(), s.in_flight_batches), (0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_paused_still_drains() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().build(handler).unwrap();
    b.pause();
    let t = b.try_submit(1).unwrap();
    settle().await;
    assert!(log.lock().unwrap().is_empty());
    let report = b.shutdown(None).await;
    assert_eq!(report.completed, 1);
    assert_eq!(t.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn pause_during_shutdown_does_not_stop_the_drain() {
    let (handler, _log) = Recorder::<u32, ()>::new(10 * MS);
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(1)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..5).map(|i| b.try_submit(i).unwrap()).collect();
    let b2 = b.clone();
    let shutting = tokio::spawn(async move { b2.shutdown(None).await });
    settle().await;
    b.pause();
    b.resume();
    b.pause();
    let report = shutting.await.unwrap();
    assert_eq!(report.completed, 5);
    for t in tickets {
        t.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn pause_holds_dispatch_and_resume_releases_it() {
    let (handler, log) = Recorder::<u32, ()>::new(Duration::ZERO);
    let b = Batcher::builder().build(handler).unwrap();
    b.pause();
    let t = b.try_submit(1).unwrap();
    advance(HOUR).await;
    assert!(log.lock().unwrap().is_empty());
    assert!(assert_target(&b).paused);
    b.resume();
    assert_eq!(t.await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn flush_dispatches_regardless_of_linger_and_pause_and_waits_for_the_outcomes() {
    let (handler, log) = Recorder::<u32, ()>::new(20 * MS);
    let b = Batcher::builder()
        .linger(HOUR)
        .min_batch_size(10)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    b.pause();
    let mut tickets: Vec<_> = (0..3).map(|i| b.try_submit(i).unwrap()).collect();
    let start = Instant::now();
    b.flush().await;
    assert_eq!(
        start.elapsed(),
        20 * MS,
        "it waited for the batch's outcome"
    );
    assert_eq!(sizes(&log), vec![3]);
    for t in &mut tickets {
        assert!(
            common::now_or_never(t).is_some(),
            "resolved before flush returned"
        );
    }
    assert_eq!(assert_target(&b).target, 0);
}

#[tokio::test(start_paused = true)]
async fn flush_waits_for_retries_of_the_operations_it_flushed() {
    let b = Batcher::builder()
        .max_attempts(3)
        .backoff(50 * MS, HOUR)
        .build(handler_fn(|batch: Batch<u32>| async move {
            let attempt = batch.info()[0].attempt;
            Ok::<_, String>(
                batch
                    .iter()
                    .map(|_| {
                        if attempt < 3 {
                            Outcome::Retry("again".into())
                        } else {
                            Outcome::Done(())
                        }
                    })
                    .collect(),
            )
        }))
        .unwrap();
    let mut t = b.try_submit(1).unwrap();
    b.flush().await;
    assert!(matches!(common::now_or_never(&mut t), Some(Ok(()))));
    assert_eq!(b.stats().retried, 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_drains_in_the_background() {
    let (handler, log) = Recorder::<u32, ()>::new(10 * MS);
    let b = Batcher::builder()
        .linger(HOUR)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..7).map(|i| b.try_submit(i).unwrap()).collect();
    let start = Instant::now();
    drop(b);
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i as u32);
    }
    assert_eq!(
        start.elapsed(),
        10 * MS,
        "flushed at once, not after the linger"
    );
    assert_eq!(sizes(&log), vec![7]);
}

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_waits_for_the_same_shutdown_and_the_earliest_deadline_wins() {
    let (handler, _log) = Recorder::<u32, ()>::new(HOUR);
    let b = Batcher::builder().build(handler).unwrap();
    let t = b.try_submit(1).unwrap();
    settle().await;
    let b2 = b.clone();
    let first = tokio::spawn(async move { b2.shutdown(None).await });
    settle().await;
    let start = Instant::now();
    let second = b.shutdown(Duration::from_secs(2)).await;
    let first = first.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(matches!(t.await, Err(Error::Abandoned)));
    // The first caller gets the payloads, the second the same counts.
    assert_eq!(first.abandoned.len(), 1);
    assert!(second.abandoned.is_empty());
    assert_eq!((first.completed, second.completed), (0, 0));
}

/// A shutdown called once the engine has stopped cannot ask it: it gets the
/// counts the finished shutdown reported (not its abandoned payloads, which
/// went to the first caller).
#[tokio::test(start_paused = true)]
async fn shutdown_after_the_engine_stopped_returns_the_finished_shutdowns_counts() {
    let (handler, log) = Recorder::<u32, ()>::answering(Duration::ZERO, |n| {
        if n % 2 == 0 {
            Outcome::Done(*n)
        } else {
            Outcome::Failed(format!("{n} is odd"))
        }
    });
    let b = Batcher::builder()
        .linger(HOUR)
        .dispatch(Dispatch::Linger)
        .build(handler)
        .unwrap();
    let tickets: Vec<_> = (0..5).map(|i| b.try_submit(i).unwrap()).collect();
    settle().await;
    assert!(
        sizes(&log).is_empty(),
        "held by the linger until the shutdown"
    );
    let first = b.shutdown(None).await;
    assert_eq!(
        (first.flushed, first.completed, first.failed),
        (5, 3, 2),
        "{first:?}"
    );
    assert!(first.abandoned.is_empty());
    for (i, t) in tickets.into_iter().enumerate() {
        assert_eq!(t.await.is_ok(), i % 2 == 0);
    }
    let again = b.shutdown(None).await;
    assert_eq!(again, first, "the same counts, from the finished shutdown");
    assert!(matches!(b.try_submit(1), Err(SubmitError::Shutdown(1))));
}
