//! Scenarios that every face of the engine shares (the [`Batcher`], the
//! [`Loader`] and the [`Processor`]), each written once as a table over the
//! faces, so that one setting behaves the same under one name everywhere.
//! What only one face has is specified in that face's own file.

mod memstore;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::loader::{batch_fn, Loader};
use baler::processor::{store_fn, Processor};
use baler::shared::MemoryLeaseStore;
use baler::{handler_fn, Batch, Batcher, Capacity, ConfigError, Dispatch, Outcome};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

const MS: Duration = Duration::from_millis(1);

/// A setting given to whichever faces have it.
#[derive(Debug, Clone, Copy)]
enum Setting {
    MaxInFlight(usize),
    Linger(Duration),
    Ticker(Duration),
    MaxOperationTime(Duration),
    EventCapacity(usize),
    /// `min_batch_size`, then `max_batch_size`.
    MinAndMaxBatchSize(usize, usize),
    /// `buffer_size`, then `max_batch_size`.
    BufferAndMaxBatchSize(usize, usize),
}

const FACES: [&str; 3] = ["Batcher", "Loader", "Processor"];

/// Builds `face` with `setting`; `None` if the face has no such setting.
fn build(face: &str, setting: Setting) -> Option<Result<(), ConfigError>> {
    use Setting::*;
    match face {
        "Batcher" => {
            let b = Batcher::builder();
            let b = match setting {
                MaxInFlight(n) => b.max_in_flight(n),
                Linger(d) => b.linger(d),
                Ticker(d) => b.ticker(d),
                MaxOperationTime(d) => b.max_operation_time(d),
                EventCapacity(n) => b.event_capacity(n),
                MinAndMaxBatchSize(min, max) => b.min_batch_size(min).max_batch_size(max),
                BufferAndMaxBatchSize(buffer, max) => b.buffer_size(buffer).max_batch_size(max),
            };
            Some(
                b.build(handler_fn(|batch: Batch<u8>| async move {
                    Ok::<_, String>(batch.done_all(()))
                }))
                .map(drop),
            )
        }
        "Loader" => {
            let b = Loader::builder();
            let b = match setting {
                MaxInFlight(n) => b.max_in_flight(n),
                Linger(d) => b.linger(d),
                Ticker(d) => b.ticker(d),
                MaxOperationTime(d) => b.max_operation_time(d),
                MinAndMaxBatchSize(min, max) => b.min_batch_size(min).max_batch_size(max),
                EventCapacity(_) | BufferAndMaxBatchSize(..) => return None,
            };
            Some(
                b.build(batch_fn(|keys: Vec<u8>| async move {
                    Ok::<_, String>(keys.into_iter().map(|k| (k, ())).collect::<Vec<_>>())
                }))
                .map(drop),
            )
        }
        "Processor" => {
            let b = Processor::builder();
            let b = match setting {
                MaxInFlight(n) => b.max_in_flight(n),
                Linger(d) => b.linger(d),
                EventCapacity(n) => b.event_capacity(n),
                BufferAndMaxBatchSize(buffer, max) => b.buffer_size(buffer).max_batch_size(max),
                Ticker(_) | MaxOperationTime(_) | MinAndMaxBatchSize(..) => return None,
            };
            Some(
                b.build(store_fn(
                    |_key: u8| async move { Ok::<u8, String>(0) },
                    |_key: u8, _value: u8| async move { Ok::<(), String>(()) },
                ))
                .map(drop),
            )
        }
        other => unreachable!("no face {other}"),
    }
}

/// Builds every face with `setting` and checks that exactly `faces` have it
/// and refuse it; returns their errors.
#[track_caller]
fn refused_by(setting: Setting, faces: &[&str]) -> Vec<(&'static str, ConfigError)> {
    let mut errors = Vec::new();
    for face in FACES {
        match build(face, setting) {
            Some(Err(err)) => errors.push((face, err)),
            Some(Ok(())) => panic!("{face} accepted {setting:?}"),
            None => assert!(
                !faces.contains(&face),
                "{face} should have the setting of {setting:?}"
            ),
        }
    }
    let refusing: Vec<_> = errors.iter().map(|(face, _)| *face).collect();
    assert_eq!(refusing, faces, "the faces that have {setting:?}");
    errors
}

#[tokio::test(start_paused = true)]
async fn an_in_flight_limit_of_zero_is_refused_by_every_face_under_one_name() {
    for (face, err) in refused_by(Setting::MaxInFlight(0), &FACES) {
        assert!(
            matches!(
                err,
                ConfigError::Zero {
                    setting: "max_in_flight",
                    ..
                }
            ),
            "{face}: {err:?}"
        );
        assert!(
            err.to_string().starts_with("max_in_flight"),
            "{face}: {err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_max_operation_time_is_refused_with_the_setting_named() {
    let errors = refused_by(
        Setting::MaxOperationTime(Duration::ZERO),
        &["Batcher", "Loader"],
    );
    for (face, err) in errors {
        let text = err.to_string();
        assert!(text.starts_with("max_operation_time"), "{face}: {text}");
    }
}

#[tokio::test(start_paused = true)]
async fn absurd_durations_and_event_capacities_are_refused_by_every_face_that_has_them() {
    let cases = [
        (Setting::Linger(Duration::MAX), "linger", &FACES[..]),
        (
            Setting::Ticker(Duration::MAX),
            "ticker",
            &["Batcher", "Loader"][..],
        ),
        (
            Setting::MaxOperationTime(Duration::MAX),
            "max_operation_time",
            &["Batcher", "Loader"][..],
        ),
        (
            Setting::EventCapacity(usize::MAX),
            "event_capacity",
            &["Batcher", "Processor"][..],
        ),
    ];
    for (setting, name, faces) in cases {
        for (face, err) in refused_by(setting, faces) {
            assert!(
                matches!(err, ConfigError::TooLarge { .. }),
                "{face}, {name}: {err}"
            );
            let text = err.to_string();
            assert!(text.starts_with(name), "{face}, {name}: {text}");
            assert!(text.contains("lower it to"), "{face}, {name}: {text}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn batch_sizes_that_contradict_each_other_are_refused() {
    for (face, err) in refused_by(Setting::MinAndMaxBatchSize(10, 5), &["Batcher", "Loader"]) {
        assert_eq!(err, ConfigError::MinAboveMax { min: 10, max: 5 }, "{face}");
    }
    for (face, err) in refused_by(
        Setting::BufferAndMaxBatchSize(10, 11),
        &["Batcher", "Processor"],
    ) {
        assert_eq!(
            err,
            ConfigError::BufferSmallerThanBatch {
                buffer: 10,
                batch: 11
            },
            "{face}"
        );
    }
}

#[test]
fn building_outside_a_tokio_runtime_is_refused_not_a_panic() {
    for face in FACES {
        match build(face, Setting::Linger(Duration::from_millis(1))) {
            Some(Err(err)) => {
                assert_eq!(err, ConfigError::NoRuntime, "{face}");
                assert!(err.to_string().contains("#[tokio::main]"), "{face}: {err}");
            }
            other => panic!("{face}: {other:?}"),
        }
    }
    let loader: Result<Loader<u8, (), String>, _> =
        Loader::new(batch_fn(|keys: Vec<u8>| async move {
            Ok::<_, String>(keys.into_iter().map(|k| (k, ())).collect::<Vec<_>>())
        }));
    assert_eq!(loader.unwrap_err(), ConfigError::NoRuntime, "Loader::new");
    let err = Capacity::shared(0, 10_000, 1_000, MemoryLeaseStore::new()).unwrap_err();
    assert_eq!(err, ConfigError::CapacityNoRuntime);
}

/// The calls of a handler or batch function: when (since the start) and
/// with which items, sorted.
type Calls = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

fn record(calls: &Calls, start: Instant, items: &[u32]) {
    let mut items = items.to_vec();
    items.sort_unstable();
    calls.lock().unwrap().push((start.elapsed(), items));
}

/// Starts `face` with a minimum batch size of 20 and everything else at its
/// defaults; returns a way to submit `k` (answered with `k`) that tells how
/// long the caller waited.
#[allow(clippy::type_complexity)]
fn with_a_minimum_of_20(
    face: &str,
    calls: &Calls,
    start: Instant,
) -> Box<dyn Fn(u32) -> JoinHandle<(Duration, u32)>> {
    let calls = calls.clone();
    match face {
        "Batcher" => {
            let b = Batcher::builder()
                .min_batch_size(20)
                .linger(Duration::ZERO)
                .build(handler_fn(move |batch: Batch<u32>| {
                    record(&calls, start, batch.items());
                    let outcomes: Vec<_> = batch.iter().map(|&k| Outcome::Done(k)).collect();
                    async move { Ok::<_, String>(outcomes) }
                }))
                .unwrap();
            Box::new(move |k| {
                let submitted = Instant::now();
                let ticket = b.try_submit(k).unwrap();
                tokio::spawn(async move {
                    let answer = ticket.await.unwrap();
                    (submitted.elapsed(), answer)
                })
            })
        }
        "Loader" => {
            let loader: Loader<u32, u32, String> =
                Loader::builder()
                    .min_batch_size(20)
                    .build(batch_fn(move |keys: Vec<u32>| {
                        record(&calls, start, &keys);
                        async move {
                            Ok::<_, String>(keys.into_iter().map(|k| (k, k)).collect::<Vec<_>>())
                        }
                    }))
                    .unwrap();
            Box::new(move |k| {
                let submitted = Instant::now();
                let load = loader.load(k);
                tokio::spawn(async move {
                    let answer = load.await.unwrap();
                    (submitted.elapsed(), answer)
                })
            })
        }
        other => unreachable!("no face {other} with a minimum batch size"),
    }
}

/// The Go dataloader batcher's example: with a minimum batch size of 20, 19
/// items arrive and the 20th only 200 ms later. The 19 go at the straggler
/// ticker (17 ms), not when the 20th arrives; the 20th, alone below the
/// minimum, goes at the next tick (204 ms = 12 × 17).
#[tokio::test(start_paused = true)]
async fn below_the_minimum_nineteen_go_at_the_ticker_not_with_the_twentieth() {
    for face in ["Batcher", "Loader"] {
        let calls = Calls::default();
        let start = Instant::now();
        let submit = with_a_minimum_of_20(face, &calls, start);
        let first: Vec<_> = (0..19).map(&submit).collect();
        sleep(MS).await;
        assert!(
            calls.lock().unwrap().is_empty(),
            "{face}: below the minimum, nothing goes at once"
        );
        sleep(199 * MS).await;
        let twentieth = submit(19);
        for (k, run) in (0..19).zip(first) {
            let (waited, answer) = run.await.unwrap();
            assert_eq!(answer, k, "{face}");
            assert_eq!(
                waited,
                17 * MS,
                "{face}: item {k} waited for the ticker only"
            );
        }
        let (waited, answer) = twentieth.await.unwrap();
        assert_eq!((waited, answer), (4 * MS, 19), "{face}");
        assert_eq!(
            *calls.lock().unwrap(),
            vec![(17 * MS, (0..19).collect()), (204 * MS, vec![19])],
            "{face}"
        );
    }
}

/// What a shutdown with a deadline did to two operations still waiting for
/// their batch, whose handling then hangs past it, in terms every face
/// shares.
#[derive(Debug, PartialEq)]
struct Abandonment {
    /// How long the shutdown took.
    returned_after: Duration,
    /// The report's counts: flushed, completed, failed.
    counts: (u64, u64, u64),
    /// The report's abandoned operations: what names each (its payload, or
    /// for a processor its key) and its cost.
    abandoned: Vec<(String, u32)>,
    /// When each caller got its error, counted from the shutdown's start,
    /// and whether the error is the face's `Abandoned`.
    callers: Vec<(Duration, bool)>,
}

const DEADLINE: Duration = Duration::from_secs(1);
const HANG: Duration = Duration::from_secs(60);

async fn abandon_two(face: &str) -> Abandonment {
    let (returned_after, report_counts, mut abandoned, callers) = match face {
        "Batcher" => {
            let b = Batcher::builder()
                .dispatch(Dispatch::Linger)
                .linger(HANG)
                .build(handler_fn(|batch: Batch<u32>| async move {
                    sleep(HANG).await;
                    Ok::<_, String>(batch.done_all(()))
                }))
                .unwrap();
            let runs: Vec<_> = (1..=2)
                .map(|n| {
                    let ticket = b.try_submit(n).unwrap();
                    tokio::spawn(async move {
                        ticket
                            .await
                            .map_err(|e| (matches!(e, baler::Error::Abandoned), e.to_string()))
                    })
                })
                .collect();
            sleep(10 * MS).await;
            let start = Instant::now();
            let report = b.shutdown(DEADLINE).await;
            let abandoned = report
                .abandoned
                .iter()
                .map(|a| (a.payload.to_string(), a.cost))
                .collect::<Vec<_>>();
            (
                start.elapsed(),
                (report.flushed, report.completed, report.failed),
                abandoned,
                (runs, start),
            )
        }
        "Loader" => {
            let loader: Loader<u32, (), String> = Loader::builder()
                .min_batch_size(10)
                .ticker(HANG)
                .build(batch_fn(|keys: Vec<u32>| async move {
                    sleep(HANG).await;
                    Ok::<_, String>(keys.into_iter().map(|k| (k, ())).collect::<Vec<_>>())
                }))
                .unwrap();
            let runs: Vec<_> = (1..=2)
                .map(|k| {
                    let load = loader.load(k);
                    tokio::spawn(async move {
                        load.await.map(drop).map_err(|e| {
                            (
                                matches!(e, baler::loader::LoadError::Abandoned),
                                e.to_string(),
                            )
                        })
                    })
                })
                .collect();
            sleep(10 * MS).await;
            let start = Instant::now();
            let report = loader.shutdown(DEADLINE).await;
            let abandoned = report
                .abandoned
                .iter()
                .map(|a| (a.payload.to_string(), a.cost))
                .collect::<Vec<_>>();
            (
                start.elapsed(),
                (report.flushed, report.completed, report.failed),
                abandoned,
                (runs, start),
            )
        }
        "Processor" => {
            let mem = memstore::Mem::with_delays(Duration::ZERO, HANG);
            let p = Processor::builder()
                .max_store_time(2 * HANG)
                .build(mem)
                .unwrap();
            let runs: Vec<_> = (1..=2)
                .map(|n: u32| {
                    let p = p.clone();
                    tokio::spawn(async move {
                        p.run("slow".to_owned(), move |list: &mut Vec<u32>| list.push(n))
                            .await
                            .map_err(|e| {
                                assert!(!e.is_not_persisted(), "the save may have landed: {e:?}");
                                (
                                    matches!(e, baler::processor::ProcessorError::Abandoned),
                                    e.to_string(),
                                )
                            })
                    })
                })
                .collect();
            sleep(10 * MS).await;
            let start = Instant::now();
            let report = p.shutdown(DEADLINE).await;
            let abandoned = report
                .abandoned
                .iter()
                .map(|a| (format!("{:?}", a.key), a.cost))
                .collect::<Vec<_>>();
            (
                start.elapsed(),
                (report.flushed, report.completed, report.failed),
                abandoned,
                (runs, start),
            )
        }
        other => unreachable!("no face {other}"),
    };
    let (runs, start) = callers;
    let mut callers = Vec::new();
    for run in runs {
        let result = run.await.unwrap();
        let (is_abandoned, message) = result.expect_err("the operation should have been abandoned");
        assert!(
            message.contains("shutdown deadline passed")
                && message.contains("give shutdown() a longer deadline, or none"),
            "{face}: {message}"
        );
        callers.push((start.elapsed(), is_abandoned));
    }
    abandoned.sort();
    Abandonment {
        returned_after,
        counts: report_counts,
        abandoned,
        callers,
    }
}

/// A shutdown with a deadline dispatches what is still waiting (below the
/// minimum, or in an open window) at once, and returns at the deadline
/// however long its handling would take: each such operation resolves with
/// the face's `Abandoned` error (which says the deadline passed and how to
/// avoid it), and the
/// report counts it as flushed, neither completed nor failed, and lists it.
#[tokio::test(start_paused = true)]
async fn a_shutdown_deadline_abandons_what_still_runs_and_the_report_lists_it() {
    for (face, named) in [
        ("Batcher", ["1", "2"]),
        ("Loader", ["1", "2"]),
        ("Processor", ["Some(\"slow\")", "Some(\"slow\")"]),
    ] {
        assert_eq!(
            abandon_two(face).await,
            Abandonment {
                returned_after: DEADLINE,
                counts: (2, 0, 0),
                abandoned: named.iter().map(|n| (n.to_string(), 1)).collect(),
                callers: vec![(DEADLINE, true); 2],
            },
            "{face}"
        );
    }
}
