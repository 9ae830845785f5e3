//! Builder validation: settings that cannot work are refused with a typed
//! error that names the setting and says what to change.

use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Builder, ConfigError, Error, HandlerFn};

type Noop = HandlerFn<fn(Batch<u8>) -> std::future::Ready<baler::HandlerResult<(), String>>>;

fn noop() -> Noop {
    handler_fn(|b: Batch<u8>| std::future::ready(Ok(b.done_all(()))))
}

#[track_caller]
fn refused(builder: Builder) -> ConfigError {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    match builder.build(noop()) {
        Err(e) => e,
        Ok(_) => panic!("the configuration should have been refused"),
    }
}

#[test]
fn zero_sizes_and_limits_are_refused_with_the_setting_named() {
    let cases = [
        (Batcher::builder().max_batch_size(0), "max_batch_size"),
        (Batcher::builder().max_batch_cost(0), "max_batch_cost"),
        (Batcher::builder().min_batch_size(0), "min_batch_size"),
        (Batcher::builder().max_in_flight(0), "max_in_flight"),
        (
            Batcher::builder().max_in_flight_per_key(0),
            "max_in_flight_per_key",
        ),
        (Batcher::builder().buffer_size(0), "buffer_size"),
        (Batcher::builder().buffer_cost(0), "buffer_cost"),
        (Batcher::builder().max_attempts(0), "max_attempts"),
        (Batcher::builder().ticker(Duration::ZERO), "ticker"),
        (
            Batcher::builder().max_operation_time(Duration::ZERO),
            "max_operation_time",
        ),
        (
            Batcher::builder().backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff",
        ),
    ];
    for (builder, setting) in cases {
        let err = refused(builder);
        assert!(err.to_string().starts_with(setting), "{setting}: {err}");
    }
}

#[test]
fn inconsistent_settings_are_refused() {
    assert_eq!(
        refused(Batcher::builder().min_batch_size(20).max_batch_size(10)),
        ConfigError::MinAboveMax { min: 20, max: 10 }
    );
    assert_eq!(
        refused(Batcher::builder().buffer_size(50).max_batch_size(100)),
        ConfigError::BufferSmallerThanBatch {
            buffer: 50,
            batch: 100
        }
    );
    assert!(matches!(
        refused(Batcher::builder().backoff(Duration::from_secs(2), Duration::from_secs(1))),
        ConfigError::BackoffMaxBelowBase { .. }
    ));
}

#[test]
fn building_outside_a_tokio_runtime_is_refused_not_a_panic() {
    let err = Batcher::builder().build(noop()).unwrap_err();
    assert_eq!(err, ConfigError::NoRuntime);
    assert!(err.to_string().contains("#[tokio::main]"));
}

#[test]
fn a_runtime_that_shuts_down_resolves_pending_tickets_with_stopped() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (batcher, ticket) = rt.block_on(async {
        let b = Batcher::builder()
            .build(handler_fn(|b: Batch<u8>| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, String>(b.done_all(()))
            }))
            .unwrap();
        let t = b.submit(1).await.unwrap();
        tokio::task::yield_now().await;
        (b, t)
    });
    drop(rt);
    let other = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(matches!(other.block_on(ticket), Err(Error::Stopped)));
    // Submitting to a stopped engine hands the payload back.
    let _g = other.enter();
    assert!(matches!(
        batcher.try_submit(2),
        Err(baler::SubmitError::Shutdown(2))
    ));
}
