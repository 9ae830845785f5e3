//! `BatcherService`: a `Batcher` behind tower's middleware, on tokio's paused
//! clock.

use std::sync::Arc;
use std::time::Duration;

use baler::service::{BatcherService, ServiceError};
use baler::{handler_fn, Batch, Batcher, Outcome, SubmitError};
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder, ServiceExt};

type Doubler = Batcher<u64, u64, std::io::Error>;

/// A batcher that doubles, after `delay`, or once `gate` lets each batch go.
fn doubler(delay: Duration, gate: Option<Arc<Semaphore>>, buffer: usize) -> Doubler {
    Batcher::builder()
        .max_batch_size(buffer.min(10))
        .linger(Duration::from_millis(5))
        .buffer_size(buffer)
        .build(handler_fn(move |batch: Batch<u64>| {
            let gate = gate.clone();
            async move {
                tokio::time::sleep(delay).await;
                if let Some(gate) = gate {
                    gate.acquire().await.expect("open").forget();
                }
                Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect())
            }
        }))
        .expect("a valid batcher")
}

#[tokio::test(start_paused = true)]
async fn each_call_gets_its_own_operations_output_through_the_layers() {
    let service = ServiceBuilder::new()
        .concurrency_limit(16)
        .timeout(Duration::from_secs(1))
        .service(BatcherService::new(doubler(
            Duration::from_millis(10),
            None,
            1000,
        )));
    let calls = (0..100_u64).map(|n| {
        let service = service.clone();
        tokio::spawn(async move { (n, service.oneshot(n.into()).await) })
    });
    for call in calls {
        let (n, answer) = call.await.expect("no panic");
        assert_eq!(answer.expect("answered"), n * 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_layer_ends_a_call_whose_batch_is_slower() {
    let batcher = doubler(Duration::from_secs(10), None, 1000);
    let mut service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .service(BatcherService::new(batcher.clone()));
    let started = tokio::time::Instant::now();
    let err = service
        .ready()
        .await
        .expect("ready")
        .call(1.into())
        .await
        .expect_err("the batch takes 10 s");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    // The operation itself was accepted and still completes.
    let report = batcher.shutdown(None).await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_call_waits_for_room_and_fail_when_full_refuses_with_the_payload() {
    let gate = Arc::new(Semaphore::new(0));
    // Room for 2; the handler holds each batch until the gate lets it go.
    let batcher = doubler(Duration::ZERO, Some(gate.clone()), 2);
    let waiting = BatcherService::new(batcher.clone());
    let first = tokio::spawn(waiting.clone().oneshot(1.into()));
    let second = tokio::spawn(waiting.clone().oneshot(2.into()));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let mut failing = BatcherService::fail_when_full(batcher.clone());
    let refused = failing.ready().await.expect("ready").call(3.into()).await;
    match refused {
        Err(ServiceError::Submit(SubmitError::Full(payload))) => assert_eq!(payload, 3),
        other => panic!("expected Full(3), got {other:?}"),
    }

    let mut third = tokio::spawn(waiting.clone().oneshot(4.into()));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        futures_poll_once(&mut third).await.is_none(),
        "the call waits while the buffer is full"
    );
    gate.add_permits(10);
    assert_eq!(first.await.expect("no panic").expect("answered"), 2);
    assert_eq!(second.await.expect("no panic").expect("answered"), 4);
    assert_eq!(third.await.expect("no panic").expect("answered"), 8);
}

#[tokio::test(start_paused = true)]
async fn a_call_after_shutdown_is_refused_with_its_payload() {
    let batcher = doubler(Duration::ZERO, None, 10);
    let service = BatcherService::new(batcher.clone());
    let report = batcher.shutdown(None).await;
    assert!(report.is_clean());
    match service.oneshot(7.into()).await {
        Err(ServiceError::Submit(SubmitError::Shutdown(payload))) => assert_eq!(payload, 7),
        other => panic!("expected Shutdown(7), got {other:?}"),
    }
}

/// Whether `handle` finished, without waiting for it.
async fn futures_poll_once<T>(handle: &mut tokio::task::JoinHandle<T>) -> Option<()> {
    tokio::select! {
        biased;
        _ = handle => Some(()),
        _ = std::future::ready(()) => None,
    }
}
