//! The event stream: what the engine did, typed; slow listeners never stall it.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{
    handler_fn, Batch, BatchFailure, Batcher, Capacity, CapacityEvent, CapacityNotifier,
    CapacitySource, Event, Events, Operation, Outcome, RecvError,
};
use common::settle;
use futures_core::Stream;

const MS: Duration = Duration::from_millis(1);

fn drain<K: Clone + Send + 'static>(events: &mut Events<Event<K>>) -> Vec<Event<K>> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = events.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn the_stream_tells_each_batch_dispatched_completed_failed_retried_and_timed_out() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .max_attempts(2)
        .backoff(MS, MS)
        .max_operation_time(100 * MS)
        .build(handler_fn(|batch: Batch<&'static str, u8>| async move {
            match batch.items()[0] {
                "fail" => Err("down".to_owned()),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(vec![Outcome::Done(())])
                }
                "retry" if batch.info()[0].attempt == 1 => Ok(vec![Outcome::Retry("busy".into())]),
                _ => Ok(vec![Outcome::Done(())]),
            }
        }))
        .unwrap();
    let mut events = b.events();
    for (i, what) in ["ok", "fail", "slow", "retry"].into_iter().enumerate() {
        let _ = b
            .submit(Operation::new(what).with_key(i as u8))
            .await
            .unwrap()
            .await;
    }
    let seen = drain(&mut events);
    let dispatched = seen
        .iter()
        .filter(|e| matches!(e, Event::BatchDispatched { .. }))
        .count();
    assert_eq!(dispatched, 5, "ok, fail, slow, and retry twice");
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::BatchCompleted {
            key: Some(0),
            completed: 1,
            failed: 0,
            retried: 0,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::BatchFailed {
            key: Some(1),
            reason: BatchFailure::Handler,
            size: 1,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(e,
        Event::BatchTimedOut { key: Some(2), after, .. } if *after == 100 * MS)));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::BatchRetried {
            key: Some(3),
            operations: 1,
            ..
        }
    )));
    assert!(seen.iter().any(|e| matches!(
        e,
        Event::BatchDispatched {
            key: Some(3),
            attempt: 2,
            ..
        }
    )));
}

#[tokio::test(start_paused = true)]
async fn the_stream_tells_cancellations_pauses_a_full_buffer_and_the_shutdown() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .buffer_size(2)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut events = b.events();
    b.pause();
    let t1 = b.try_submit(1).unwrap();
    let t2 = b.try_submit(2).unwrap();
    assert!(b.try_submit(3).is_err());
    assert!(b.try_submit(4).is_err());
    drop(t2);
    settle().await;
    b.resume();
    t1.await.unwrap();
    let report = b.shutdown(Duration::from_secs(1)).await;
    let seen = drain(&mut events);
    let position = |f: &dyn Fn(&Event<()>) -> bool| seen.iter().position(f);
    let paused = position(&|e| matches!(e, Event::Paused)).expect("paused");
    let resumed = position(&|e| matches!(e, Event::Resumed)).expect("resumed");
    assert!(paused < resumed);
    let fulls = seen
        .iter()
        .filter(|e| matches!(e, Event::BufferFull { operations: 2 }))
        .count();
    assert_eq!(fulls, 1, "one event per full episode, not per refusal");
    assert!(seen
        .iter()
        .any(|e| matches!(e, Event::OperationsCancelled { count: 1 })));
    let started = position(&|e| matches!(e, Event::ShutdownStarted { deadline: Some(_) })).unwrap();
    let finished =
        position(&|e| matches!(e, Event::ShutdownFinished { abandoned: 0, .. })).unwrap();
    assert!(started < finished);
    assert!(report.is_clean());
    assert!(matches!(events.recv().await, Err(RecvError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn target_changes_are_coalesced_not_reported_per_operation() {
    let b = Batcher::builder()
        .build(handler_fn(|batch: Batch<u32>| async move {
            tokio::time::sleep(10 * MS).await;
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut events = b.events();
    let tickets: Vec<_> = (0..1000).map(|i| b.try_submit(i).unwrap()).collect();
    for t in tickets {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let targets: Vec<u64> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::TargetChanged { target } => Some(target),
            _ => None,
        })
        .collect();
    assert!(targets.len() <= 5, "at most one per 100 ms: {targets:?}");
    assert_eq!(targets.first(), Some(&1000));
    assert_eq!(
        targets.last(),
        Some(&0),
        "the final value is always reported"
    );
}

#[tokio::test(start_paused = true)]
async fn a_listener_that_falls_behind_never_stalls_the_engine_and_learns_how_many_it_missed() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .event_capacity(8)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut never_reads = b.events();
    for i in 0..100 {
        b.submit(i).await.unwrap().await.unwrap();
    }
    assert_eq!(
        b.stats().completed,
        100,
        "the engine did not wait for the listener"
    );
    match never_reads.recv().await {
        Err(RecvError::Lagged(missed)) => assert!(missed >= 100, "{missed}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        never_reads.recv().await.is_ok(),
        "then it reads the oldest event still held"
    );
}

async fn next<T: Clone + Send + 'static>(events: &mut Events<T>) -> Option<Result<T, RecvError>> {
    std::future::poll_fn(|cx| Pin::new(&mut *events).poll_next(cx)).await
}

/// Read as a `Stream`, a listener that fell behind learns exactly what a
/// `recv` reader learns, a read waiting for an event is woken by it, a `recv`
/// given up on loses nothing, and the stream ends (instead of yielding
/// `Closed`) once the batcher has shut down.
#[tokio::test(start_paused = true)]
async fn as_a_stream_a_listener_learns_its_lag_is_woken_and_ends_at_shutdown() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .event_capacity(8)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut stream = b.events();
    let mut reader = b.events();
    for i in 0..100 {
        b.submit(i).await.unwrap().await.unwrap();
    }
    let missed = match next(&mut stream).await {
        Some(Err(RecvError::Lagged(missed))) => missed,
        other => panic!("expected a lag report, got {other:?}"),
    };
    assert!(missed >= 100, "{missed}");
    assert_eq!(reader.recv().await, Err(RecvError::Lagged(missed)));
    loop {
        let from_reader = reader.try_recv().unwrap();
        let from_stream = stream.try_recv().unwrap();
        assert_eq!(from_stream, from_reader);
        if from_reader.is_none() {
            break;
        }
    }

    // A recv given up on while it waited keeps its place.
    let gave_up = tokio::time::timeout(MS, reader.recv()).await;
    assert!(gave_up.is_err(), "nothing was sent yet: {gave_up:?}");
    let waiting = tokio::spawn(async move {
        let event = next(&mut stream).await;
        (event, stream)
    });
    settle().await;
    b.submit(7).await.unwrap().await.unwrap();
    let (event, mut stream) = waiting.await.unwrap();
    assert!(
        matches!(event, Some(Ok(Event::BatchDispatched { size: 1, .. }))),
        "{event:?}"
    );
    assert!(matches!(
        reader.recv().await,
        Ok(Event::BatchDispatched { size: 1, .. })
    ));

    b.shutdown(None).await;
    let mut last = None;
    while let Some(event) = next(&mut stream).await {
        last = Some(event.unwrap());
    }
    assert!(
        matches!(last, Some(Event::ShutdownFinished { .. })),
        "the stream ends after the last event: {last:?}"
    );
    assert_eq!(next(&mut stream).await, None, "and stays ended");
}

#[tokio::test(start_paused = true)]
async fn listeners_added_and_dropped_from_inside_a_listener_cannot_deadlock() {
    let b = Batcher::builder()
        .max_batch_size(1)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut events = b.events();
    let b2 = b.clone();
    let listener = tokio::spawn(async move {
        let mut extra = Vec::new();
        let mut seen = 0;
        while let Ok(event) = events.recv().await {
            seen += 1;
            extra.push(b2.events()); // subscribe from inside a listener
            if extra.len() > 3 {
                extra.remove(0); // and drop one
            }
            if matches!(event, Event::ShutdownFinished { .. }) {
                break;
            }
        }
        seen
    });
    for i in 0..50 {
        b.submit(i).await.unwrap().await.unwrap();
    }
    b.shutdown(None).await;
    assert!(listener.await.unwrap() >= 100);
}

/// A capacity source that reports a lease and a rate change.
struct OneLease {
    rate: AtomicU64,
    notifier: Mutex<Option<CapacityNotifier>>,
}

impl CapacitySource for OneLease {
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::SeqCst)
    }
    fn max_rate(&self) -> u64 {
        1_000
    }
    fn target_changed(&self, _target: u64) {}
    fn attach(&self, notifier: CapacityNotifier) {
        *self.notifier.lock().unwrap() = Some(notifier);
    }
}

#[tokio::test(start_paused = true)]
async fn lease_events_and_capacity_changes_reach_the_stream() {
    let source = Arc::new(OneLease {
        rate: AtomicU64::new(0),
        notifier: Mutex::new(None),
    });
    let capacity = Capacity::from_source(source.clone(), 100 * MS).unwrap();
    let b = Batcher::builder()
        .capacity(capacity)
        .build(handler_fn(|batch: Batch<u32>| async move {
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    let mut events = b.events();
    let ticket = b.try_submit(1).unwrap();
    settle().await;
    source.rate.store(1_000, Ordering::SeqCst);
    let notifier = source.notifier.lock().unwrap().clone().unwrap();
    notifier.event(CapacityEvent::LeaseAcquired { partition: 3 });
    notifier.rate_changed();
    ticket.await.unwrap();
    let seen = drain(&mut events);
    assert!(
        seen.contains(&Event::Capacity(CapacityEvent::LeaseAcquired {
            partition: 3
        }))
    );
    assert!(seen.contains(&Event::CapacityChanged { rate: Some(1_000) }));
}
