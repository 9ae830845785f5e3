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
        (
            Batcher::builder().max_in_flight_per_key(0),
            "max_in_flight_per_key",
        ),
        (Batcher::builder().buffer_size(0), "buffer_size"),
        (Batcher::builder().buffer_cost(0), "buffer_cost"),
        (Batcher::builder().max_attempts(0), "max_attempts"),
        (Batcher::builder().ticker(Duration::ZERO), "ticker"),
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
    assert!(matches!(
        refused(Batcher::builder().backoff(Duration::from_secs(2), Duration::from_secs(1))),
        ConfigError::BackoffMaxBelowBase { .. }
    ));
}

#[test]
fn absurd_durations_and_event_capacities_are_refused_not_a_later_panic() {
    let cases = [
        (
            Batcher::builder().backoff(Duration::from_millis(10), Duration::MAX),
            "backoff",
        ),
        (
            Batcher::builder().backoff(Duration::MAX, Duration::MAX),
            "backoff",
        ),
        (
            Batcher::builder().audit_interval(Some(Duration::MAX)),
            "audit_interval",
        ),
        (
            Batcher::builder().linger(Duration::from_secs(86_400) + Duration::from_millis(1)),
            "linger",
        ),
        (
            Batcher::builder().event_capacity((1 << 20) + 1),
            "event_capacity",
        ),
    ];
    for (builder, setting) in cases {
        let err = refused(builder);
        assert!(
            matches!(err, ConfigError::TooLarge { .. }),
            "{setting}: {err}"
        );
        let text = err.to_string();
        assert!(text.starts_with(setting), "{setting}: {text}");
        assert!(text.contains("lower it to"), "{setting}: {text}");
    }
}

#[test]
fn a_day_is_the_longest_duration_a_batcher_takes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let day = Duration::from_secs(86_400);
    Batcher::builder()
        .linger(day)
        .ticker(day)
        .backoff(day, day)
        .max_operation_time(day)
        .audit_interval(Some(day))
        .build(noop())
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_day_long_linger_and_backoff_are_waited_out_not_overflowed() {
    let day = Duration::from_secs(86_400);
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = tries.clone();
    let batcher = Batcher::builder()
        .dispatch(baler::Dispatch::Linger)
        .linger(day)
        .backoff(day, day)
        .max_attempts(2)
        .build(handler_fn(move |b: Batch<u8>| {
            let first = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            std::future::ready(Ok::<_, String>(if first {
                b.iter()
                    .map(|_| baler::Outcome::Retry("again".to_owned()))
                    .collect()
            } else {
                b.done_all(())
            }))
        }))
        .unwrap();
    let start = tokio::time::Instant::now();
    let ticket = batcher.submit(1u8).await.unwrap();
    ticket.await.unwrap();
    // One linger, a backoff of between half a day and a day, and the linger again.
    let took = start.elapsed();
    assert!(took >= 2 * day + day / 2 && took <= 3 * day, "{took:?}");
    assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn deadlines_of_duration_max_mean_no_deadline_not_a_panic() {
    let batcher = Batcher::builder().build(noop()).unwrap();
    let ticket = batcher.submit_timeout(1u8, Duration::MAX).await.unwrap();
    ticket.await.unwrap();
    let report = batcher.shutdown(Duration::MAX).await;
    assert!(report.abandoned.is_empty());
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
