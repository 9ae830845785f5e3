//! Specifications of the keyed batch processor, on tokio's paused clock.

mod memstore;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baler::{
    processor::{BatchOutcome, Processor, ProcessorBuilder, ProcessorError, Store},
    ConfigError,
};
use memstore::{Mem, StoreDown};
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_millis(100);

type Proc = Processor<String, Vec<u32>, StoreDown>;

fn builder() -> ProcessorBuilder {
    Processor::builder().linger(WINDOW)
}

fn start(mem: &Mem) -> Proc {
    builder().build(mem.clone()).unwrap()
}

fn key(k: &str) -> String {
    k.to_owned()
}

/// An operation that appends `n` and answers with the list's length after it.
fn push(n: u32) -> impl FnOnce(&mut Vec<u32>) -> usize + Send + 'static {
    move |list: &mut Vec<u32>| {
        list.push(n);
        list.len()
    }
}

/// Spawns `run(key, push(n))`.
fn spawn_push(
    p: &Proc,
    k: &str,
    n: u32,
) -> tokio::task::JoinHandle<Result<usize, ProcessorError<StoreDown>>> {
    let p = p.clone();
    let k = key(k);
    tokio::spawn(async move { p.run(k, push(n)).await })
}

// ----- batching -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn operations_of_one_window_share_one_load_and_one_save() {
    let mem = Mem::new();
    let p = start(&mem);
    let runs: Vec<_> = (0..5).map(|n| spawn_push(&p, "a", n)).collect();
    let mut lengths = Vec::new();
    for run in runs {
        lengths.push(run.await.unwrap().unwrap());
    }
    assert_eq!(lengths, vec![1, 2, 3, 4, 5]);
    assert_eq!(mem.saved("a"), vec![0, 1, 2, 3, 4]);
    assert_eq!((mem.loads(), mem.saves()), (1, 1));
    assert_eq!(p.stats().batches, 1);
}

#[tokio::test(start_paused = true)]
async fn operations_of_a_key_run_in_arrival_order_across_windows() {
    let mem = Mem::with_delays(Duration::from_millis(7), Duration::from_millis(13));
    let p = start(&mem);
    let mut runs = Vec::new();
    for n in 0..60 {
        runs.push(spawn_push(&p, "a", n));
        tokio::time::sleep(Duration::from_millis(9)).await;
    }
    for (n, run) in runs.into_iter().enumerate() {
        // Each operation saw every earlier one: its length is its position.
        assert_eq!(run.await.unwrap().unwrap(), n + 1);
    }
    assert_eq!(mem.saved("a"), (0..60).collect::<Vec<_>>());
    assert!(
        mem.saves() > 1,
        "60 operations over 540 ms span several windows"
    );
}

#[tokio::test(start_paused = true)]
async fn the_window_closes_its_linger_after_its_first_operation() {
    let mem = Mem::new();
    let p = start(&mem);
    let t0 = Instant::now();
    let first = spawn_push(&p, "a", 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let second = spawn_push(&p, "a", 2);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let third = spawn_push(&p, "a", 3);

    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(second.await.unwrap().unwrap(), 2);
    // The third arrived after the first window closed (at 100 ms): it opened
    // a window of its own, from 120 ms to 220 ms.
    assert_eq!(third.await.unwrap().unwrap(), 3);
    assert_eq!(t0.elapsed(), Duration::from_millis(220));
    assert_eq!(mem.saves(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_run_answers_one_window_plus_load_and_save_after_it_started() {
    let mem = Mem::with_delays(Duration::from_millis(5), Duration::from_millis(8));
    let p = start(&mem);
    let t0 = Instant::now();
    p.run(key("a"), push(1)).await.unwrap();
    assert_eq!(t0.elapsed(), WINDOW + Duration::from_millis(13));
}

#[tokio::test(start_paused = true)]
async fn a_full_window_closes_early_at_max_batch_size() {
    let mem = Mem::new();
    let p = builder().max_batch_size(3).build(mem.clone()).unwrap();
    let t0 = Instant::now();
    let runs: Vec<_> = (0..3).map(|n| spawn_push(&p, "a", n)).collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(mem.saves(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_resource_is_changed_in_place_so_no_update_is_lost() {
    // The resource is a plain value (not a pointer): every operation must see
    // the changes of the ones before it, and the save must see all of them.
    let total: Arc<std::sync::Mutex<i64>> = Arc::default();
    let saved = total.clone();
    let p = Processor::builder()
        .linger(WINDOW)
        .build(baler::processor::store_fn(
            |_k: u8| async move { Ok::<i64, StoreDown>(0) },
            move |_k: u8, sum: i64| {
                *saved.lock().unwrap() = sum;
                async move { Ok(()) }
            },
        ))
        .unwrap();
    let runs: Vec<_> = (1..=10)
        .map(|n| {
            let p = p.clone();
            tokio::spawn(async move {
                p.run(0, move |sum: &mut i64| {
                    *sum += n;
                    *sum
                })
                .await
            })
        })
        .collect();
    let mut seen = Vec::new();
    for run in runs {
        seen.push(run.await.unwrap().unwrap());
    }
    assert_eq!(seen, vec![1, 3, 6, 10, 15, 21, 28, 36, 45, 55]);
    assert_eq!(*total.lock().unwrap(), 55);
}

// ----- keys -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn two_batches_of_one_key_never_overlap() {
    // The save takes longer than a window, so the next window of the key
    // closes while the previous batch still saves.
    let mem = Mem::with_delays(Duration::from_millis(30), Duration::from_millis(150));
    let p = start(&mem);
    let mut runs = Vec::new();
    for n in 0..40 {
        runs.push(spawn_push(&p, "a", n));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, run) in runs.into_iter().enumerate() {
        assert_eq!(run.await.unwrap().unwrap(), n + 1);
    }
    assert_eq!(mem.0.max_active_per_key.load(Ordering::SeqCst), 1);
    assert_eq!(mem.saved("a"), (0..40).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_slow_key_does_not_block_other_keys() {
    // One key's load takes 10 s (its hash would share a worker with others
    // in a fixed pool); the other keys finish in one window.
    struct SlowForOne(Mem);
    impl Store<String> for SlowForOne {
        type Resource = Vec<u32>;
        type Error = StoreDown;
        async fn load(&self, key: &String) -> Result<Vec<u32>, StoreDown> {
            if key == "slow" {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            self.0.load(key).await
        }
        async fn save(&self, key: &String, list: Vec<u32>) -> Result<(), StoreDown> {
            self.0.save(key, list).await
        }
    }
    let mem = Mem::new();
    let p = builder()
        .max_store_time(Duration::from_secs(60))
        .max_in_flight(2)
        .build(SlowForOne(mem.clone()))
        .unwrap();
    let slow = {
        let p = p.clone();
        tokio::spawn(async move { p.run(key("slow"), push(0)).await })
    };
    let t0 = Instant::now();
    let fast: Vec<_> = (0..20)
        .map(|n| {
            let p = p.clone();
            tokio::spawn(async move { p.run(format!("fast-{}", n % 5), push(n)).await })
        })
        .collect();
    for run in fast {
        run.await.unwrap().unwrap();
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "the fast keys waited {:?} behind the slow one",
        t0.elapsed()
    );
    slow.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn max_in_flight_bounds_the_keys_processed_at_once() {
    let mem = Mem::with_delays(Duration::from_millis(50), Duration::from_millis(50));
    let p = builder().max_in_flight(3).build(mem.clone()).unwrap();
    let runs: Vec<_> = (0..20)
        .map(|n| spawn_push(&p, &format!("k{n}"), n))
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    assert_eq!(mem.0.max_active_total.load(Ordering::SeqCst), 3);
    assert_eq!(mem.saves(), 20);
}

// ----- failures -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_load_error_fails_every_operation_of_the_batch_and_none_runs() {
    let mem = Mem::new();
    mem.0.fail_load.store(true, Ordering::SeqCst);
    let p = start(&mem);
    let ran = Arc::new(AtomicU32::new(0));
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (p, ran) = (p.clone(), ran.clone());
            tokio::spawn(async move {
                p.run(key("a"), move |_: &mut Vec<u32>| {
                    ran.fetch_add(1, Ordering::SeqCst);
                })
                .await
            })
        })
        .collect();
    for run in runs {
        let err = run.await.unwrap().unwrap_err();
        assert_eq!(err.store_error(), Some(&StoreDown("load")));
        assert!(matches!(err, ProcessorError::Load(_)));
        assert!(err.to_string().contains("no operation of the batch ran"));
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(mem.saves(), 0);
    assert_eq!(p.stats().load_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_save_error_fails_every_operation_and_nothing_is_persisted() {
    let mem = Mem::new();
    let p = start(&mem);
    p.run(key("a"), push(1)).await.unwrap();

    mem.0.fail_save.store(true, Ordering::SeqCst);
    let runs: Vec<_> = (2..5).map(|n| spawn_push(&p, "a", n)).collect();
    for run in runs {
        let err = run.await.unwrap().unwrap_err();
        assert!(matches!(err, ProcessorError::Save(_)), "{err:?}");
        assert!(err.is_not_persisted());
        assert!(err.to_string().contains("not persisted"));
    }
    assert_eq!(mem.saved("a"), vec![1]);

    // The next batch starts again from what was saved last.
    mem.0.fail_save.store(false, Ordering::SeqCst);
    assert_eq!(p.run(key("a"), push(9)).await.unwrap(), 2);
    assert_eq!(mem.saved("a"), vec![1, 9]);
    assert_eq!(p.stats().save_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn a_load_past_max_store_time_times_out_and_no_operation_runs() {
    let mem = Mem::with_delays(Duration::from_millis(500), Duration::ZERO);
    let p = builder()
        .max_store_time(Duration::from_millis(200))
        .build(mem.clone())
        .unwrap();
    let t0 = Instant::now();
    let err = p.run(key("a"), push(1)).await.unwrap_err();
    assert!(
        matches!(err, ProcessorError::LoadTimedOut { after } if after == Duration::from_millis(200))
    );
    assert_eq!(t0.elapsed(), WINDOW + Duration::from_millis(200));
    assert_eq!(mem.saves(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_save_past_max_store_time_times_out() {
    let mem = Mem::with_delays(Duration::ZERO, Duration::from_millis(500));
    // By default max_store_time is twice linger.
    let p = start(&mem);
    let t0 = Instant::now();
    let err = p.run(key("a"), push(1)).await.unwrap_err();
    assert!(matches!(err, ProcessorError::SaveTimedOut { after } if after == 2 * WINDOW));
    assert!(!err.is_not_persisted());
    assert_eq!(t0.elapsed(), 3 * WINDOW);
    assert_eq!(mem.saves(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_operation_fails_with_panicked_and_its_batch_is_not_saved() {
    let mem = Mem::new();
    let p = start(&mem);
    p.run(key("a"), push(1)).await.unwrap();

    let after_ran = Arc::new(AtomicBool::new(false));
    let before = spawn_push(&p, "a", 2);
    tokio::task::yield_now().await;
    let panics = {
        let p = p.clone();
        tokio::spawn(async move {
            p.run(key("a"), |list: &mut Vec<u32>| {
                list.push(666); // a half-done change
                panic!("boom");
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    let after = {
        let (p, after_ran) = (p.clone(), after_ran.clone());
        tokio::spawn(async move {
            p.run(key("a"), move |_: &mut Vec<u32>| {
                after_ran.store(true, Ordering::SeqCst);
            })
            .await
        })
    };
    let other_key = spawn_push(&p, "b", 7);

    let panicked = panics.await.unwrap().unwrap_err();
    assert!(
        matches!(&panicked, ProcessorError::Panicked { message } if message == "boom"),
        "{panicked:?}"
    );
    let before = before.await.unwrap().unwrap_err();
    assert!(matches!(&before, ProcessorError::Aborted { message } if message == "boom"));
    assert!(before.is_not_persisted());
    let after = after.await.unwrap().unwrap_err();
    assert!(matches!(after, ProcessorError::Aborted { .. }));
    assert!(
        !after_ran.load(Ordering::SeqCst),
        "no operation runs after a panic"
    );

    // Neither the half-done change nor the operation before it was saved.
    assert_eq!(mem.saved("a"), vec![1]);
    // Other keys and later batches carry on.
    assert_eq!(other_key.await.unwrap().unwrap(), 1);
    assert_eq!(p.run(key("a"), push(3)).await.unwrap(), 2);
    assert_eq!(mem.saved("a"), vec![1, 3]);
    assert_eq!(p.stats().panics, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_load_aborts_its_batch_and_the_processor_carries_on() {
    let mem = Mem::new();
    mem.0.panic_load.store(true, Ordering::SeqCst);
    let p = start(&mem);
    let err = p.run(key("a"), push(1)).await.unwrap_err();
    assert!(matches!(&err, ProcessorError::Aborted { message } if message == "the load panicked"));
    mem.0.panic_load.store(false, Ordering::SeqCst);
    assert_eq!(p.run(key("a"), push(2)).await.unwrap(), 1);
}

// ----- giving up ----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_before_its_operation_ran_gets_cancelled_and_it_never_runs() {
    let mem = Mem::new();
    let p = start(&mem);
    let ran = Arc::new(AtomicBool::new(false));
    let stays = spawn_push(&p, "a", 1);
    let t0 = Instant::now();
    let flag = ran.clone();
    let err = p
        .run_timeout(
            key("a"),
            move |list: &mut Vec<u32>| {
                flag.store(true, Ordering::SeqCst);
                list.push(99);
            },
            Duration::from_millis(40),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProcessorError::Cancelled));
    assert_eq!(t0.elapsed(), Duration::from_millis(40));

    assert_eq!(stays.await.unwrap().unwrap(), 1);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(mem.saved("a"), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_while_its_batch_loads_withdraws_its_operation() {
    // The batch is formed at 100 ms and loads for 50 ms; the caller drops its
    // `run` at 120 ms, after dispatch but before the operation ran.
    let mem = Mem::with_delays(Duration::from_millis(50), Duration::ZERO);
    let p = start(&mem);
    let mut events = p.events();
    let ran = Arc::new(AtomicBool::new(false));
    let stays = spawn_push(&p, "a", 1);
    let flag = ran.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(120),
        p.run(key("a"), move |list: &mut Vec<u32>| {
            flag.store(true, Ordering::SeqCst);
            list.push(99);
        }),
    )
    .await;
    assert!(gave_up.is_err());
    assert_eq!(
        p.engine_stats().in_flight,
        2,
        "the operation was already dispatched"
    );

    assert_eq!(stays.await.unwrap().unwrap(), 1);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(mem.saved("a"), vec![1]);
    let report = events.recv().await.unwrap();
    assert_eq!(
        (report.operations, report.applied, report.cancelled),
        (2, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_that_passes_while_the_batch_loads_cancels_the_operation() {
    let mem = Mem::with_delays(Duration::from_millis(50), Duration::ZERO);
    let p = start(&mem);
    let ran = Arc::new(AtomicBool::new(false));
    let stays = spawn_push(&p, "a", 1);
    let flag = ran.clone();
    let t0 = Instant::now();
    let err = p
        .run_timeout(
            key("a"),
            move |list: &mut Vec<u32>| {
                flag.store(true, Ordering::SeqCst);
                list.push(99);
            },
            Duration::from_millis(130),
        )
        .await
        .unwrap_err();
    // Dispatched at 100 ms, still loading at 130 ms: too early to have run.
    assert!(matches!(err, ProcessorError::Cancelled));
    assert_eq!(t0.elapsed(), Duration::from_millis(130));
    assert_eq!(stays.await.unwrap().unwrap(), 1);
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(mem.saved("a"), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_batch_whose_callers_all_gave_up_is_neither_loaded_nor_saved() {
    let mem = Mem::with_delays(Duration::from_millis(50), Duration::ZERO);
    let p = start(&mem);
    let gave_up = tokio::time::timeout(Duration::from_millis(120), p.run(key("a"), push(1))).await;
    assert!(gave_up.is_err());
    // Let the batch finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(mem.saves(), 0);
    assert_eq!(mem.saved("a"), Vec::<u32>::new());
    let stats = p.stats();
    assert_eq!((stats.batches, stats.saves, stats.cancelled), (1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn run_timeout_waits_for_the_save_once_its_operation_started() {
    let mem = Mem::with_delays(Duration::ZERO, Duration::from_millis(50));
    let p = start(&mem);
    let t0 = Instant::now();
    // The operation runs at 100 ms; the deadline passes during the save.
    let len = p
        .run_timeout(key("a"), push(1), Duration::from_millis(120))
        .await
        .unwrap();
    assert_eq!(len, 1);
    assert_eq!(t0.elapsed(), Duration::from_millis(150));
    assert_eq!(mem.saved("a"), vec![1]);
}

// ----- shutdown -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shutdown_saves_the_open_windows_at_once_and_returns_when_done() {
    let mem = Mem::with_delays(Duration::from_millis(5), Duration::from_millis(5));
    let p = start(&mem);
    let runs: Vec<_> = (0..6)
        .map(|n| spawn_push(&p, &format!("k{}", n % 3), n))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t0 = Instant::now();
    let report = p.shutdown(None).await;
    // The windows closed at the shutdown, not 100 ms after they opened.
    assert_eq!(t0.elapsed(), Duration::from_millis(10));
    assert_eq!(mem.saves(), 3);
    assert_eq!(
        (report.flushed, report.completed, report.failed),
        (6, 6, 0),
        "{report:?}"
    );
    assert!(report.abandoned.is_empty(), "{report:?}");
    for run in runs {
        assert!(run.await.unwrap().is_ok());
    }
    assert_eq!(mem.saved("k0"), vec![0, 3]);
}

#[tokio::test(start_paused = true)]
async fn run_after_shutdown_fails_with_stopped() {
    let mem = Mem::new();
    let p = start(&mem);
    p.shutdown(None).await;
    assert!(p.is_shutting_down());
    let err = p.run(key("a"), push(1)).await.unwrap_err();
    assert!(matches!(err, ProcessorError::Stopped));
    assert_eq!(
        err.to_string(),
        "the processor is shut down and accepts no new operations"
    );
    // Shutting down again returns at once.
    p.shutdown(None).await;
}

// ----- figures --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_batch_reports_its_operations_and_its_load_and_save_times() {
    let mem = Mem::with_delays(Duration::from_millis(7), Duration::from_millis(11));
    let p = start(&mem);
    let mut events = p.events();
    let runs: Vec<_> = (0..3).map(|n| spawn_push(&p, "a", n)).collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    let report = events.recv().await.unwrap();
    assert_eq!(report.key, "a");
    assert_eq!(report.operations, 3);
    assert_eq!(report.applied, 3);
    assert_eq!(report.load_time, Duration::from_millis(7));
    assert_eq!(report.save_time, Some(Duration::from_millis(11)));
    assert_eq!(report.outcome, BatchOutcome::Saved);

    p.run(key("b"), push(1)).await.unwrap();
    let stats = p.stats();
    assert_eq!(
        (stats.batches, stats.loads, stats.saves, stats.applied),
        (2, 2, 2, 4)
    );
    assert_eq!(stats.load_time, Duration::from_millis(14));
    assert_eq!(stats.save_time, Duration::from_millis(22));
}

// ----- configuration ----------------------------------------------------------

#[tokio::test]
async fn settings_that_cannot_work_are_refused_with_the_setting_named() {
    let zero_window = Processor::builder()
        .linger(Duration::ZERO)
        .build(Mem::new())
        .unwrap_err();
    assert!(matches!(
        zero_window,
        ConfigError::ZeroDuration {
            setting: "max_store_time",
            ..
        }
    ));
    // A zero window is fine with an explicit max_store_time.
    Processor::builder()
        .linger(Duration::ZERO)
        .max_store_time(Duration::from_millis(10))
        .build(Mem::new())
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn absurd_durations_and_event_capacities_are_refused_not_a_later_panic() {
    let cases = [(
        Processor::builder().max_store_time(Duration::MAX),
        "max_store_time",
    )];
    for (builder, setting) in cases {
        let err = builder.build(Mem::new()).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { .. }), "{err}");
        assert!(err.to_string().starts_with(setting), "{setting}: {err}");
    }
    // A day's window is the longest, and its default max_store_time of two
    // days is not held against it.
    Processor::builder()
        .linger(Duration::from_secs(86_400))
        .build(Mem::new())
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn run_timeout_of_duration_max_waits_without_a_deadline() {
    let mem = Mem::new();
    let p = start(&mem);
    let len = p
        .run_timeout(key("a"), push(1), Duration::MAX)
        .await
        .unwrap();
    assert_eq!(len, 1);
    assert_eq!(mem.saved("a"), vec![1]);
}
