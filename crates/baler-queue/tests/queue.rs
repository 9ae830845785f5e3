//! The durable queue against real `redis-server`s, each started by its test
//! on a free loopback port and killed by its handle when the test ends.
//!
//! Leases here are short real durations (a few hundred ms), because Redis
//! measures them on its own clock; the tests wait for conditions with a
//! bounded patience and never assert how long anything took.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{
    ConnectError, EnqueueError, Job, JobError, Queue, QueueCode, QueueEvent, Worker,
};
use common::{calls, calls_ok, connection, eventually, results_stored, within, RedisServer};

const PATIENCE: Duration = Duration::from_secs(20);

fn doubler() -> impl baler::Handler<u64, Output = u64, Error = String> {
    handler_fn(|batch: Batch<u64>| async move {
        let out: HandlerResult<u64, String> =
            Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect());
        out
    })
}

async fn quick_queue(server: &RedisServer, name: &str) -> Queue {
    Queue::builder(&server.url(), name)
        .lease(Duration::from_millis(400))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .await
        .expect("queue")
}

fn start_doubler(queue: &Queue) -> Worker {
    queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(doubler())
        .expect("worker")
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(key)
        .query_async(conn)
        .await
        .expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_to_a_worker_and_its_result_comes_back_and_nothing_is_left_behind() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "roundtrip").await;
    let worker = start_doubler(&queue);
    let producer = queue.producer("p1").build::<u64, u64>().unwrap();

    let ticket = producer.enqueue(21).await.unwrap();
    assert_eq!(within(PATIENCE, "the result", ticket).await, Ok(42));
    assert_eq!(producer.outstanding(), 0);

    let conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    eventually(PATIENCE, "jobs and results streams emptied", || {
        let mut conn = conn.clone();
        let keys = keys.clone();
        async move {
            xlen(&mut conn, &keys.jobs()).await == 0
                && xlen(&mut conn, &keys.results("p1")).await == 0
        }
    })
    .await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.length, stats.pending, stats.delayed, stats.dead),
        (0, 0, 0, 0)
    );
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.stats.completed, 1);
    assert_eq!(report.stats.held, 0);
    assert!(producer
        .shutdown(Duration::from_secs(1))
        .await
        .outstanding
        .is_empty());
}

async fn script_calls(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    calls_ok(conn, "evalsha").await + calls_ok(conn, "eval").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_reach_redis_as_one_call_per_batch() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "batched").await;
    // Every batch waits out its linger, so the 50 jobs gather into one.
    let producer = queue
        .producer("p1")
        .dispatch(baler::Dispatch::Linger)
        .linger(Duration::from_millis(300))
        .max_batch_size(100)
        .build::<u64, u64>()
        .unwrap();
    // Loads the script, so that what follows is counted as plain calls.
    let _warm = producer
        .enqueue(Job::new(0).idempotency_key("warm"))
        .await
        .unwrap();
    let mut conn = connection(&server.url()).await;
    let before = script_calls(&mut conn).await;
    // Jobs with idempotency keys go through the enqueue script: one call
    // for the whole batch.
    let keyed = (1..=50u64).map(|n| Job::new(n).idempotency_key(format!("k-{n}")));
    let tickets = producer.enqueue_many(keyed).await;
    assert!(tickets.iter().all(|t| t.is_ok()));
    let after = script_calls(&mut conn).await;
    assert_eq!(
        after - before,
        1,
        "50 enqueues took {} script calls",
        after - before
    );
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 51);

    // Jobs without one go as one bundle: one entry, one script call.
    let tickets = producer.enqueue_many(51..=100u64).await;
    assert!(tickets.iter().all(|t| t.is_ok()));
    assert_eq!(script_calls(&mut conn).await, after + 1);
    assert_eq!(calls(&mut conn, "xadd").await, 52);
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 52);
    // The queue's length still counts jobs.
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.length, stats.waiting), (101, 52));

    // Without bundles they need no script: one XADD each, in one pipeline.
    let single = queue
        .producer("p2")
        .dispatch(baler::Dispatch::Linger)
        .linger(Duration::from_millis(300))
        .max_batch_size(100)
        .bundles(false)
        .build::<u64, u64>()
        .unwrap();
    let tickets = single.enqueue_many(101..=150u64).await;
    assert!(tickets.iter().all(|t| t.is_ok()));
    assert_eq!(
        script_calls(&mut conn).await,
        after + 1,
        "plain jobs ran a script"
    );
    assert_eq!(calls(&mut conn, "xadd").await, 102);
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 102);
    assert_eq!(queue.stats().await.unwrap().length, 151);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_producers_and_workers_resolve_every_ticket_exactly_once_with_its_own_result() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "many").await;
    let workers: Vec<Worker> = (0..3).map(|_| start_doubler(&queue)).collect();
    let mut tasks = Vec::new();
    for p in 0..3u64 {
        let producer = queue
            .producer(&format!("p{p}"))
            .build::<u64, u64>()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let base = p * 1_000;
            let tickets = producer.enqueue_many(base..base + 300).await;
            let mut seen = Vec::new();
            for (n, ticket) in (base..).zip(tickets) {
                let ticket = ticket.expect("enqueued");
                let id = ticket.id().clone();
                assert_eq!(ticket.await, Ok(n * 2), "job {id}");
                seen.push(id);
            }
            assert_eq!(producer.outstanding(), 0);
            seen
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        for id in within(PATIENCE, "every producer's results", task)
            .await
            .unwrap()
        {
            assert!(ids.insert(id), "a job id was handed out twice");
        }
    }
    assert_eq!(ids.len(), 900);
    let mut completed = 0;
    for worker in workers {
        let report = worker.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.stats.stale_discarded, 0);
        completed += report.stats.completed;
    }
    // No crash, no lapsed lease: every job ran exactly once.
    assert_eq!(completed, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_finished_at_once_by_waiting_workers_still_reach_their_tickets() {
    // bee-queue lost the `succeeded` event of a job a worker finished before
    // the client had registered it. Here workers wait on the stream and
    // answer at once, and each ticket exists before its job is sent.
    let server = RedisServer::start();
    let queue = quick_queue(&server, "race").await;
    let _workers: Vec<Worker> = (0..3).map(|_| start_doubler(&queue)).collect();
    let producer = queue.producer("client").build::<u64, u64>().unwrap();
    for n in 0..300u64 {
        let ticket = producer.enqueue(n).await.unwrap();
        assert_eq!(
            within(PATIENCE, "a fast job's result", ticket).await,
            Ok(n * 2)
        );
    }
    assert_eq!(producer.outstanding(), 0);
    assert!(producer.take_unclaimed().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_runs_again_after_its_backoff_and_succeeds() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "retry").await;
    let runs = Arc::new(Mutex::new(0u32));
    let counted = runs.clone();
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            let runs = counted.clone();
            async move {
                let mut runs = runs.lock().unwrap();
                let out: HandlerResult<u64, String> = Ok(batch
                    .iter()
                    .map(|n| {
                        *runs += 1;
                        if *runs < 3 {
                            Outcome::Retry(format!("not yet ({runs})"))
                        } else {
                            Outcome::Done(*n + 1)
                        }
                    })
                    .collect());
                out
            }
        }))
        .unwrap();
    let mut events = queue.events();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(9).await.unwrap();
    assert_eq!(within(PATIENCE, "the retried job", ticket).await, Ok(10));
    assert_eq!(*runs.lock().unwrap(), 3);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.stats.retried, report.stats.completed), (2, 1));
    let mut retried = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
        if let QueueEvent::Retried { attempts, .. } = event {
            retried.push(attempts);
        }
    }
    assert_eq!(retried, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_resolves_with_its_attempts_and_last_message() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "exhaust")
        .lease(Duration::from_millis(400))
        .max_attempts(3)
        .backoff(Duration::from_millis(20), Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let runs = Arc::new(Mutex::new(0u32));
    let counted = runs.clone();
    let _worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            let runs = counted.clone();
            async move {
                let mut runs = runs.lock().unwrap();
                let out: HandlerResult<u64, String> = Ok(batch
                    .iter()
                    .map(|_| {
                        *runs += 1;
                        Outcome::Retry(format!("flaky upstream, run {runs}"))
                    })
                    .collect());
                out
            }
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(1).await.unwrap();
    let id = ticket.id().clone();
    let result = within(PATIENCE, "the exhausted job", ticket).await;
    assert_eq!(
        result,
        Err(JobError::Failed {
            job_id: id,
            attempts: 3,
            message: "flaky upstream, run 3".into()
        })
    );
    assert_eq!(*runs.lock().unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_is_not_retried() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "permanent").await;
    let _worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            let out: HandlerResult<u64, String> = Ok(batch
                .iter()
                .map(|n| {
                    if *n == 13 {
                        Outcome::Failed("13 is not accepted".to_owned())
                    } else {
                        Outcome::Done(*n)
                    }
                })
                .collect());
            out
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let tickets = producer.enqueue_many([12u64, 13, 14]).await;
    let mut results = Vec::new();
    for t in tickets {
        results.push(within(PATIENCE, "results", t.unwrap()).await);
    }
    // One bad job never fails its batch-mates.
    assert_eq!(results[0], Ok(12));
    assert!(
        matches!(&results[1], Err(JobError::Failed { attempts: 1, message, .. }) if message == "13 is not accepted")
    );
    assert_eq!(results[2], Ok(14));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_payload_is_dead_lettered_with_its_reason_and_the_worker_goes_on() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "undecodable").await;
    let worker = start_doubler(&queue);
    // A producer whose payload type the workers do not expect.
    let wrong = queue.producer("wrong").build::<String, u64>().unwrap();
    let right = queue.producer("right").build::<u64, u64>().unwrap();

    let bad = wrong.enqueue("not a number".to_owned()).await.unwrap();
    let result = within(PATIENCE, "the dead letter", bad).await;
    match result {
        Err(JobError::DeadLettered { reason, .. }) => {
            assert!(reason.contains("undecodable payload"), "{reason}")
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
    let good = right.enqueue(4).await.unwrap();
    assert_eq!(within(PATIENCE, "the next job", good).await, Ok(8));

    let mut conn = connection(&server.url()).await;
    assert_eq!(xlen(&mut conn, &queue.keys().dead()).await, 1);
    let diagnosis = queue.diagnose().await.unwrap();
    assert!(
        diagnosis.find(QueueCode::DeadLetters).is_some(),
        "{diagnosis:?}"
    );
    assert_eq!(worker.stats().dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_stopping_its_workers_is_dead_lettered_on_reclaim() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "poison")
        .lease(Duration::from_millis(300))
        .max_deliveries(1)
        .build()
        .await
        .unwrap();
    // A worker whose handler never returns, dropped without shutdown: as if
    // the job had killed its process.
    let hangs = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|_batch: Batch<u64>| async move {
            std::future::pending::<HandlerResult<u64, String>>().await
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(7).await.unwrap();
    eventually(PATIENCE, "the first worker holds the job", || {
        let held = hangs.stats().held;
        async move { held == 1 }
    })
    .await;
    let dead_consumer = hangs.consumer().to_owned();
    drop(hangs);
    eventually(
        PATIENCE,
        "diagnose to see the dead worker's lease run out",
        || {
            let queue = queue.clone();
            async move {
                let d = queue.diagnose().await.unwrap();
                d.find(QueueCode::LeasesExpiring).is_some()
            }
        },
    )
    .await;

    let ran = Arc::new(Mutex::new(0u32));
    let counted = ran.clone();
    let second = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            *counted.lock().unwrap() += batch.len() as u32;
            async move { Ok::<_, String>(batch.done_all(0u64)) }
        }))
        .unwrap();
    match within(PATIENCE, "the poison job's dead letter", ticket).await {
        Err(JobError::DeadLettered { reason, .. }) => {
            assert!(reason.contains("max_deliveries"), "{reason}")
        }
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(*ran.lock().unwrap(), 0, "the poison job ran again");
    assert_eq!(second.stats().reclaimed, 1);
    // The dead worker, holding nothing now, is pruned from the group.
    eventually(PATIENCE, "the dead consumer pruned", || {
        let queue = queue.clone();
        let dead = dead_consumer.clone();
        async move {
            let consumers = queue.stats().await.unwrap().consumers;
            !consumers.iter().any(|c| c.name == dead)
        }
    })
    .await;
    let mut conn = connection(&server.url()).await;
    assert_eq!(xlen(&mut conn, &queue.keys().dead()).await, 1);
}

/// A worker whose handler answers 1 for every job, once `gate` lets it:
/// until then it holds what it claimed, with room for `max_held` jobs.
fn gated_worker(queue: &Queue, max_held: usize) -> (Worker, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let released = gate.clone();
    let worker = queue
        .worker()
        .max_held(max_held)
        .block_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            let gate = released.clone();
            async move {
                let _pass = gate.acquire().await;
                Ok::<_, String>(batch.done_all(1u64))
            }
        }))
        .unwrap();
    (worker, gate)
}

/// The group's pending entries: (entry id, consumer, idle ms, deliveries).
async fn pending_entries(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &baler_queue::Keys,
) -> Vec<(String, String, u64, u64)> {
    redis::cmd("XPENDING")
        .arg(keys.jobs())
        .arg(keys.group())
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(conn)
        .await
        .unwrap()
}

/// Takes `entry` over for a consumer that never renews it, as a reclaim
/// after a lapsed lease would.
async fn steal(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &baler_queue::Keys,
    entry: &str,
) {
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(keys.jobs())
        .arg(keys.group())
        .arg("thief")
        .arg(0)
        .arg(entry)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_claim_passed_on_cannot_complete_the_job_and_its_batch_mate_still_completes()
{
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "fencing")
        .lease(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    // Room for two jobs: the stale worker cannot reclaim a job itself while
    // its first runs still hold the room.
    let (stale, gate) = gated_worker(&queue, 2);
    let mut events = queue.events();
    // One entry per job: a claim passes on one job at a time.
    let producer = queue
        .producer("p")
        .bundles(false)
        .build::<u64, u64>()
        .unwrap();
    let mut tickets: HashMap<_, _> = producer
        .enqueue_many([5u64, 6])
        .await
        .into_iter()
        .map(|t| {
            let t = t.unwrap();
            (t.id().to_string(), t)
        })
        .collect();
    eventually(PATIENCE, "the stale worker holds both jobs", || {
        let held = stale.stats().held;
        async move { held == 2 }
    })
    .await;

    // Another consumer takes one claim over, as a reclaim after a lapsed
    // lease would: the stale worker is fenced off that job only.
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    let pending = pending_entries(&mut conn, &keys).await;
    let entry = pending[0].0.clone();
    let fields: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys.jobs())
        .arg(&entry)
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    let stolen_id = fields[0].1["id"].clone();
    steal(&mut conn, &keys, &entry).await;
    let stolen = tickets.remove(&stolen_id).unwrap();
    let (_, kept) = tickets.into_iter().next().unwrap();

    // The thief never renews: a live worker reclaims the job after the lease.
    let fresh = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            Ok::<_, String>(batch.done_all(2u64))
        }))
        .unwrap();
    assert_eq!(
        within(PATIENCE, "the new owner's result", stolen).await,
        Ok(2)
    );

    gate.add_permits(10);
    assert_eq!(
        within(PATIENCE, "the batch-mate's result", kept).await,
        Ok(1)
    );
    eventually(PATIENCE, "the stale completion to be discarded", || {
        let n = stale.stats().stale_discarded;
        async move { n == 1 }
    })
    .await;
    // A worker counts a completion when its script's answer is back, which
    // may be after the producer already has the result.
    eventually(PATIENCE, "one completion counted by each worker", || {
        let counts = (stale.stats().completed, fresh.stats().completed);
        async move { counts == (1, 1) }
    })
    .await;
    let mut discarded = Vec::new();
    while let Ok(Some(event)) = events.try_recv() {
        if let QueueEvent::StaleCompletionDiscarded { job_id, consumer } = event {
            assert_eq!(consumer, stale.consumer());
            discarded.push(job_id.to_string());
        }
    }
    assert_eq!(discarded, [stolen_id]);
    // Nothing of the stale run reached the producer's stream.
    assert!(producer.take_unclaimed().await.is_empty());
    eventually(PATIENCE, "the results stream emptied", || {
        let mut conn = conn.clone();
        let key = keys.results("p");
        async move { xlen(&mut conn, &key).await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_enqueues_once_and_both_tickets_get_the_result() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "idem").await;
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let first = producer
        .enqueue(Job::new(3).idempotency_key("order-77"))
        .await
        .unwrap();
    let again = producer
        .enqueue(Job::new(3).idempotency_key("order-77"))
        .await
        .unwrap();
    assert_eq!(first.id(), again.id());
    let mut conn = connection(&server.url()).await;
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 1);

    let worker = start_doubler(&queue);
    assert_eq!(within(PATIENCE, "first", first).await, Ok(6));
    assert_eq!(within(PATIENCE, "again", again).await, Ok(6));
    assert_eq!(producer.outstanding(), 0);
    assert_eq!(
        worker
            .shutdown(Duration::from_secs(5))
            .await
            .stats
            .completed,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_at_its_outstanding_bound_waits_or_hands_the_payload_back() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "outstanding").await;
    let producer = queue
        .producer("p")
        .max_outstanding(2)
        .build::<u64, u64>()
        .unwrap();
    let a = producer.enqueue(1).await.unwrap();
    let b = producer.enqueue(2).await.unwrap();
    match producer.try_enqueue(3).await {
        Err(EnqueueError::Busy { max: 2, payload: 3 }) => {}
        other => panic!("expected Busy with the payload, got {other:?}"),
    }
    let waiting = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.enqueue(4).await })
    };
    let _worker = start_doubler(&queue);
    assert_eq!(within(PATIENCE, "a", a).await, Ok(2));
    assert_eq!(within(PATIENCE, "b", b).await, Ok(4));
    let c = within(PATIENCE, "room for the waiting enqueue", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(within(PATIENCE, "c", c).await, Ok(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_try_enqueue_and_makes_enqueue_wait_for_room() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "bounded")
        .lease(Duration::from_millis(400))
        .max_length(2)
        .build()
        .await
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let a = producer.enqueue(1).await.unwrap();
    let b = producer.enqueue(2).await.unwrap();
    match producer.try_enqueue(3).await {
        Err(EnqueueError::QueueFull { payload: 3 }) => {}
        other => panic!("expected QueueFull with the payload, got {other:?}"),
    }
    assert_eq!(
        producer.outstanding(),
        2,
        "a refused job leaves no ticket behind"
    );
    let waiting = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.enqueue(4).await })
    };
    let _worker = start_doubler(&queue);
    let c = within(PATIENCE, "room in the queue", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(within(PATIENCE, "a", a).await, Ok(2));
    assert_eq!(within(PATIENCE, "b", b).await, Ok(4));
    assert_eq!(within(PATIENCE, "c", c).await, Ok(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_payload_is_refused_before_it_reaches_redis() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "size")
        .max_payload_bytes(16)
        .build()
        .await
        .unwrap();
    let producer = queue.producer("p").build::<String, u64>().unwrap();
    let mut conn = connection(&server.url()).await;
    let before = calls(&mut conn, "evalsha").await + calls(&mut conn, "eval").await;
    let big = "x".repeat(100);
    match producer.enqueue(big.clone()).await {
        Err(
            e @ EnqueueError::TooLarge {
                size: 102, max: 16, ..
            },
        ) => {
            assert!(e.to_string().contains("max_payload_bytes"));
            assert_eq!(e.into_payload(), big);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let after = calls(&mut conn, "evalsha").await + calls(&mut conn, "eval").await;
    assert_eq!(before, after);
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 0);
    assert_eq!(producer.outstanding(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_typed_error_that_names_the_url() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = Queue::builder(&url, "nowhere")
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&url) && message.contains("redis-server is running"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_config_errors() {
    let server = RedisServer::start();
    let err = Queue::builder(&server.url(), "a{b}")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ConnectError::Config(baler_queue::ConfigError::BadName { .. })
    ));
    // '#' separates a shard's index from the queue's name in its hash tag:
    // a name with one could share another queue's shard keys.
    let err = Queue::builder(&server.url(), "mail#1")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ConnectError::Config(baler_queue::ConfigError::BadName { .. })
    ));
    let err = Queue::builder(&server.url(), "q")
        .max_attempts(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ConnectError::Config(baler_queue::ConfigError::Zero {
            setting: "max_attempts"
        })
    ));
    let queue = Queue::builder(&server.url(), "q")
        .lease(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let err = queue
        .worker()
        .block_time(Duration::from_secs(1))
        .start(doubler())
        .unwrap_err();
    assert!(matches!(
        err,
        baler_queue::ConfigError::LeaseTooShort { .. }
    ));
    let err = queue.producer("").build::<u64, u64>().unwrap_err();
    assert!(matches!(err, baler_queue::ConfigError::BadName { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_restarted_under_its_name_gets_the_results_of_its_earlier_jobs() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "restart").await;
    let before = queue.producer("api").build::<u64, u64>().unwrap();
    let mut ids = Vec::new();
    for t in before.enqueue_many(1..=5u64).await {
        let t = t.unwrap();
        ids.push(t.id().clone());
        drop(t);
    }
    drop(before); // no shutdown: as if the process had died

    let _worker = start_doubler(&queue);
    let conn = connection(&server.url()).await;
    let key = queue.keys().results("api");
    eventually(PATIENCE, "the five results stored", || {
        let mut conn = conn.clone();
        let key = key.clone();
        // One bundle of five results, as the five jobs went as one bundle.
        async move { results_stored(&mut conn, &key).await == 5 }
    })
    .await;

    let after = queue.producer("api").build::<u64, u64>().unwrap();
    for (n, id) in (1..=3u64).zip(&ids) {
        let t = after.reattach(id.clone());
        assert_eq!(within(PATIENCE, "a reattached result", t).await, Ok(n * 2));
    }
    // The two results nobody reattached are held for the taking.
    let mut rest = HashMap::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while rest.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "unclaimed results did not arrive"
        );
        for (id, r) in after.take_unclaimed().await {
            rest.insert(id, r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rest[&ids[3]], Ok(8));
    assert_eq!(rest[&ids[4]], Ok(10));
    assert_eq!(after.outstanding(), 0);
    eventually(PATIENCE, "the results stream emptied", || {
        let mut conn = conn.clone();
        let key = key.clone();
        async move { xlen(&mut conn, &key).await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_shutting_down_hands_back_what_it_could_not_finish() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "handback").await;
    // Room for three: the fourth job waits in the stream, and the worker
    // waits for room it will never get until it is told to stop.
    let stuck = queue
        .worker()
        .max_held(3)
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|_batch: Batch<u64>| async move {
            std::future::pending::<HandlerResult<u64, String>>().await
        }))
        .unwrap();
    // One entry per job, so that the room of three leaves the fourth unread.
    let producer = queue
        .producer("p")
        .bundles(false)
        .build::<u64, u64>()
        .unwrap();
    let tickets: Vec<_> = producer
        .enqueue_many([1u64, 2, 3, 4])
        .await
        .into_iter()
        .map(|t| t.unwrap())
        .collect();
    eventually(PATIENCE, "the worker holds the three jobs", || {
        let held = stuck.stats().held;
        async move { held == 3 }
    })
    .await;
    let report = within(
        PATIENCE,
        "the shutdown",
        stuck.shutdown(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(report.stats.handed_back, 3);
    assert_eq!(report.unwritten, 0);
    // Handed back means waiting again, claimed by nobody: no lease to wait out.
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.length, stats.pending), (4, 0));

    let _next = start_doubler(&queue);
    for (n, t) in (1u64..).zip(tickets) {
        assert_eq!(within(PATIENCE, "a handed-back job", t).await, Ok(n * 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_shutting_down_reports_the_jobs_still_outstanding() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "pshutdown").await;
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let a = producer.enqueue(1).await.unwrap();
    let b = producer.enqueue(2).await.unwrap();
    let mut expected = vec![a.id().clone(), b.id().clone()];
    expected.sort();
    let report = producer.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.outstanding, expected);
    assert!(matches!(a.await, Err(JobError::Shutdown { .. })));
    assert!(matches!(b.await, Err(JobError::Shutdown { .. })));
    assert!(matches!(
        producer.enqueue(3).await,
        Err(EnqueueError::Shutdown { payload: 3 })
    ));
    assert_eq!(producer.outstanding(), 0);

    // No worker has read the queue: diagnose says so.
    let diagnosis = queue.diagnose().await.unwrap();
    let finding = diagnosis
        .find(QueueCode::NoLiveConsumer)
        .expect("no consumer finding");
    assert!(finding.message.contains("start a worker"), "{finding}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_run_loses_nothing_acknowledged_and_workers_reconnect() {
    let mut server = RedisServer::start_durable();
    let queue = quick_queue(&server, "restarts").await;
    let producer = queue.producer("p").build::<u64, u64>().unwrap();

    // Acknowledged while no worker runs: these live only in Redis.
    let waiting: Vec<_> = producer
        .enqueue_many(0..200u64)
        .await
        .into_iter()
        .map(|t| t.expect("enqueued"))
        .collect();
    server.restart();

    // Workers started after the first restart run them; a second restart
    // while they run tests that they reconnect and that claims, completions
    // and results in flight survive.
    let workers: Vec<Worker> = (0..2).map(|_| start_doubler(&queue)).collect();
    let more: Vec<_> = producer
        .enqueue_many(200..400u64)
        .await
        .into_iter()
        .map(|t| t.expect("enqueued"))
        .collect();
    eventually(PATIENCE, "the workers to be under way", || {
        let done: u64 = workers.iter().map(|w| w.stats().completed).sum();
        async move { done > 0 }
    })
    .await;
    server.restart();
    // Enqueues right after the restart wait for Redis to come back.
    let last: Vec<_> = producer
        .enqueue_many(400..500u64)
        .await
        .into_iter()
        .map(|t| t.expect("enqueued across the restart"))
        .collect();

    for (n, t) in (0u64..).zip(waiting.into_iter().chain(more).chain(last)) {
        assert_eq!(
            within(PATIENCE, "a result across restarts", t).await,
            Ok(n * 2)
        );
    }
    assert_eq!(producer.outstanding(), 0);
    // A completion whose reply the restart cut off is retried and found
    // already written (the claim is gone): it counts as discarded then.
    let mut written = 0;
    for w in workers {
        let stats = w.shutdown(Duration::from_secs(5)).await.stats;
        written += stats.completed + stats.stale_discarded;
    }
    assert!(written >= 500, "{written} completions for 500 jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_told_to_give_up_on_a_missing_redis_reports_the_job_unconfirmed() {
    let mut server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "gone")
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let producer = queue
        .producer("p")
        .redis_attempts(2)
        .build::<u64, u64>()
        .unwrap();
    server.kill();
    match within(PATIENCE, "the enqueue to give up", producer.enqueue(1)).await {
        Err(e @ EnqueueError::Unconfirmed { attempts: 2, .. }) => {
            assert!(e.to_string().contains("reattach"), "{e}");
            assert_eq!(e.into_payload(), 1);
        }
        other => panic!("expected Unconfirmed, got {other:?}"),
    }
    assert_eq!(producer.outstanding(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_overdue_handler_counts_a_failed_attempt_and_the_job_is_retried() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "panics").await;
    let runs = Arc::new(Mutex::new(0u32));
    let counted = runs.clone();
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .max_operation_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            let run = {
                let mut runs = counted.lock().unwrap();
                *runs += 1;
                *runs
            };
            async move {
                match run {
                    1 => panic!("the handler fell over"),
                    2 => std::future::pending::<()>().await,
                    _ => {}
                }
                Ok::<_, String>(batch.iter().map(|n| Outcome::Done(n + 100)).collect())
            }
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(1).await.unwrap();
    assert_eq!(within(PATIENCE, "the third run", ticket).await, Ok(101));
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.stats.retried, report.stats.completed), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_keeps_a_job_that_runs_longer_than_its_lease() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "renewal")
        .lease(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let slow = queue
        .worker()
        .block_time(Duration::from_millis(50))
        .start(handler_fn(|batch: Batch<u64>| async move {
            // Several leases long: only renewals keep the claim.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            Ok::<_, String>(batch.done_all(1u64))
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(1).await.unwrap();
    eventually(PATIENCE, "the slow worker holds the job", || {
        let held = slow.stats().held;
        async move { held == 1 }
    })
    .await;
    // A second worker, ready to reclaim anything whose lease ran out.
    let other = queue
        .worker()
        .block_time(Duration::from_millis(50))
        .start(handler_fn(|batch: Batch<u64>| async move {
            Ok::<_, String>(batch.done_all(2u64))
        }))
        .unwrap();
    assert_eq!(within(PATIENCE, "the slow result", ticket).await, Ok(1));
    let (slow, other) = (
        slow.shutdown(Duration::from_secs(5)).await,
        other.shutdown(Duration::from_secs(5)).await,
    );
    assert_eq!(
        (
            slow.stats.completed,
            slow.stats.stale_discarded,
            slow.stats.leases_lost
        ),
        (1, 0, 0)
    );
    assert_eq!((other.stats.reclaimed, other.stats.completed), (0, 0));
    // Both left the group cleanly.
    assert!(queue.stats().await.unwrap().consumers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_not_written_by_a_producer_is_dead_lettered_and_the_worker_goes_on() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "foreign").await;
    let worker = start_doubler(&queue);
    let mut conn = connection(&server.url()).await;
    let _: String = redis::cmd("XADD")
        .arg(queue.keys().jobs())
        .arg("*")
        .arg("hello")
        .arg("world")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead_key = queue.keys().dead();
    eventually(PATIENCE, "the foreign entry dead-lettered", || {
        let mut conn = conn.clone();
        let key = dead_key.clone();
        async move { xlen(&mut conn, &key).await == 1 }
    })
    .await;
    let reason: redis::Value = redis::cmd("XRANGE")
        .arg(&dead_key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(format!("{reason:?}").contains("not written by a baler-queue producer"));
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let t = producer.enqueue(5).await.unwrap();
    assert_eq!(within(PATIENCE, "the next job", t).await, Ok(10));
    assert_eq!(worker.stats().dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_enqueued_again_after_its_job_finished_gets_the_kept_result() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "idem-done").await;
    let runs = Arc::new(Mutex::new(0u32));
    let counted = runs.clone();
    // The first run asks for a retry: the key must survive the trip through
    // the delayed set.
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(move |batch: Batch<u64>| {
            let runs = counted.clone();
            async move {
                let mut runs = runs.lock().unwrap();
                *runs += 1;
                let out: HandlerResult<u64, String> = Ok(batch
                    .iter()
                    .map(|n| match *runs {
                        1 => Outcome::Retry("once more".to_owned()),
                        _ => Outcome::Done(n * 10),
                    })
                    .collect());
                out
            }
        }))
        .unwrap();
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let first = producer
        .enqueue(Job::new(4).idempotency_key("invoice-1"))
        .await
        .unwrap();
    let id = first.id().clone();
    assert_eq!(within(PATIENCE, "the first result", first).await, Ok(40));

    // Long after, from another producer even: the same job and its result,
    // and nothing runs again.
    let later = queue.producer("q").build::<u64, u64>().unwrap();
    let again = later
        .enqueue(Job::new(4).idempotency_key("invoice-1"))
        .await
        .unwrap();
    assert_eq!(again.id(), &id);
    assert_eq!(within(PATIENCE, "the kept result", again).await, Ok(40));
    assert_eq!(later.outstanding(), 0);
    assert_eq!(*runs.lock().unwrap(), 2);
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((report.stats.retried, report.stats.completed), (1, 1));

    match producer
        .enqueue(Job::new(5).idempotency_key("two\nlines"))
        .await
    {
        Err(EnqueueError::InvalidKey { payload: 5, .. }) => {}
        other => panic!("expected InvalidKey, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_count_against_neither_the_bound_nor_the_stats_and_are_trimmed() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "trimmed")
        .lease(Duration::from_millis(400))
        .max_length(3)
        .build()
        .await
        .unwrap();
    let producer = queue.producer("p1").build::<u64, u64>().unwrap();
    let first: Vec<_> = producer.enqueue_many(1..=3u64).await;
    assert!(first.iter().all(Result::is_ok));
    // Three jobs finished as a worker finishes them (read, acknowledged),
    // with no worker left to trim them away.
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    let _: Result<(), _> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.jobs())
        .arg(keys.group())
        .arg("0")
        .query_async::<()>(&mut conn)
        .await;
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(keys.group())
        .arg("gone")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(keys.jobs())
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = redis::cmd("XRANGE")
        .arg(keys.jobs())
        .arg("-")
        .arg("+")
        .query_async::<Vec<(String, HashMap<String, redis::Value>)>>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 3, "{read:?}");
    let acked: u64 = redis::cmd("XACK")
        .arg(keys.jobs())
        .arg(keys.group())
        .arg(&ids)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(acked, 3);
    assert_eq!(xlen(&mut conn, &keys.jobs()).await, 3);
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.length, stats.waiting, stats.pending), (0, 0, 0));

    // The stream holds three entries, but none unfinished: the bound of
    // three has room for three more.
    let mut second = Vec::new();
    for n in 4..=6u64 {
        match producer.try_enqueue(n).await {
            Ok(t) => second.push(t),
            Err(e) => panic!("job {n} refused with finished jobs in the stream: {e}"),
        }
    }
    assert!(matches!(
        producer.try_enqueue(7).await,
        Err(EnqueueError::QueueFull { .. })
    ));
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.length, stats.waiting), (3, 3));

    // A worker runs them and trims every finished entry away.
    let worker = start_doubler(&queue);
    for (n, t) in (4u64..).zip(second) {
        assert_eq!(within(PATIENCE, "a result", t).await, Ok(n * 2));
    }
    let check = connection(&server.url()).await;
    eventually(PATIENCE, "finished entries trimmed", || {
        let mut conn = check.clone();
        let jobs = keys.jobs();
        async move { xlen(&mut conn, &jobs).await == 0 }
    })
    .await;
    worker.shutdown(Duration::from_secs(5)).await;
    producer.shutdown(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_added_twice_resolves_its_ticket_once_and_its_second_result_is_deleted() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "twice").await;
    let producer = queue.producer("p1").build::<u64, u64>().unwrap();
    let ticket = producer.enqueue(21).await.unwrap();
    // A second copy of the job, as a batch sent again after a lost reply
    // would add it.
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(keys.jobs())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let mut copy = redis::cmd("XADD");
    copy.arg(keys.jobs()).arg("*");
    for (field, value) in &entries[0].1 {
        copy.arg(field).arg(&value[..]);
    }
    let _: String = copy.query_async(&mut conn).await.unwrap();

    let worker = start_doubler(&queue);
    assert_eq!(within(PATIENCE, "the result", ticket).await, Ok(42));
    let check = conn.clone();
    eventually(PATIENCE, "both copies run and both results gone", || {
        let mut conn = check.clone();
        let keys = keys.clone();
        async move {
            xlen(&mut conn, &keys.jobs()).await == 0
                && xlen(&mut conn, &keys.results("p1")).await == 0
        }
    })
    .await;
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.stats.completed, 2, "both copies ran");
    // The second result was nobody's: not kept as unclaimed either.
    assert!(producer.take_unclaimed().await.is_empty());
    producer.shutdown(Duration::from_secs(1)).await;
}

/// A producer whose enqueues go as bundles of exactly `n`: a batch is sent
/// when full (the linger is far longer than any test).
fn bundling_producer(queue: &Queue, name: &str, n: usize) -> baler_queue::Producer<u64, u64> {
    queue
        .producer(name)
        .dispatch(baler::Dispatch::Linger)
        .linger(Duration::from_secs(600))
        .max_batch_size(n)
        .build::<u64, u64>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_one_entry_run_whole_and_its_results_come_back_as_one_entry() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "bundle").await;
    let producer = bundling_producer(&queue, "p1", 10);
    let tickets = producer.enqueue_many(1..=10u64).await;
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    assert_eq!(xlen(&mut conn, &keys.jobs()).await, 1, "one entry");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.length, stats.waiting), (10, 1));

    // Handler calls of three: the bundle is split between calls and
    // completed once its last job is done.
    let worker = queue
        .worker()
        .max_batch_size(3)
        .block_time(Duration::from_millis(100))
        .start(doubler())
        .unwrap();
    for (n, t) in (1u64..).zip(tickets) {
        assert_eq!(within(PATIENCE, "a result", t.unwrap()).await, Ok(n * 2));
    }
    let report = within(
        PATIENCE,
        "the shutdown",
        worker.shutdown(Duration::from_secs(5)),
    )
    .await;
    assert_eq!((report.stats.claimed, report.stats.completed), (10, 10));
    assert_eq!(queue.stats().await.unwrap().length, 0);
    // Nothing is left: the results entry is deleted once delivered, the
    // count of bundled jobs is back to zero.
    producer.shutdown(Duration::from_secs(1)).await;
    assert_eq!(xlen(&mut conn, &keys.results("p1")).await, 0);
    let bundled: Option<u64> = redis::cmd("GET")
        .arg(keys.bundled())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bundled, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaimed_bundle_is_handed_back_job_by_job_and_its_stale_worker_writes_nothing() {
    let server = RedisServer::start();
    let queue = Queue::builder(&server.url(), "bundle-fence")
        .lease(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    // Room for the bundle and no more: the stale worker cannot reclaim it
    // itself while its own run holds the room.
    let (stale, gate) = gated_worker(&queue, 3);
    let producer = bundling_producer(&queue, "p", 3);
    let tickets = producer.enqueue_many([5u64, 6, 7]).await;
    eventually(PATIENCE, "the stale worker holds the bundle", || {
        let held = stale.stats().held;
        async move { held == 3 }
    })
    .await;

    // Another consumer takes the bundle over, as a reclaim after a lapsed
    // lease would, and then never renews it.
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    let pending = pending_entries(&mut conn, &keys).await;
    assert_eq!(pending.len(), 1, "one entry for three jobs");
    steal(&mut conn, &keys, &pending[0].0).await;

    // A live worker reclaims it after the lease: it does not run the bundle
    // but hands each job back as an entry of its own, then runs them.
    let fresh = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            Ok::<_, String>(batch.done_all(2u64))
        }))
        .unwrap();
    for t in tickets {
        assert_eq!(
            within(PATIENCE, "the new owner's result", t.unwrap()).await,
            Ok(2)
        );
    }
    eventually(PATIENCE, "the new owner's counts", || {
        let s = fresh.stats();
        async move { (s.reclaimed, s.handed_back, s.completed) == (3, 3, 3) }
    })
    .await;

    // The stale worker finishes its run of the bundle: all three
    // completions are refused, none reaches the producer.
    gate.add_permits(10);
    eventually(PATIENCE, "the stale completions to be discarded", || {
        let n = stale.stats().stale_discarded;
        async move { n == 3 }
    })
    .await;
    assert_eq!(stale.stats().completed, 0);
    assert!(producer.take_unclaimed().await.is_empty());
    assert_eq!(queue.stats().await.unwrap().length, 0);
    stale.shutdown(Duration::from_secs(1)).await;
    fresh.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_that_cannot_be_read_is_dead_lettered_with_the_reason() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "bad-bundle").await;
    let worker = start_doubler(&queue);
    let mut conn = connection(&server.url()).await;
    let keys = queue.keys().clone();
    // Two ids, but lengths that do not fit the bodies.
    let _: String = redis::cmd("XADD")
        .arg(keys.jobs())
        .arg("*")
        .arg("n")
        .arg(2)
        .arg("ids")
        .arg("x-1\nx-2")
        .arg("p")
        .arg("")
        .arg("a")
        .arg(0)
        .arg("l")
        .arg("1,5")
        .arg("b")
        .arg("12")
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(PATIENCE, "the bundle dead-lettered", || {
        let dead = worker.stats().dead_lettered;
        async move { dead == 1 }
    })
    .await;
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(keys.dead())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reason = &dead[0].1["reason"];
    assert!(
        reason.contains("a bundle of jobs that cannot be read") && reason.contains("more than"),
        "{reason}"
    );
    // The worker goes on with good jobs.
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let t = producer.enqueue(4).await.unwrap();
    assert_eq!(within(PATIENCE, "a result", t).await, Ok(8));
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_larger_than_a_workers_room_are_taken_whole_one_after_the_other() {
    let server = RedisServer::start();
    let queue = quick_queue(&server, "bundle-room").await;
    // Two bundles of three before the worker starts: its first read may
    // bring both (six jobs) into a room of four.
    let producer = bundling_producer(&queue, "p", 3);
    let tickets = producer.enqueue_many(1..=6u64).await;
    let mut conn = connection(&server.url()).await;
    assert_eq!(xlen(&mut conn, &queue.keys().jobs()).await, 2);
    let worker = queue
        .worker()
        .max_held(4)
        .block_time(Duration::from_millis(100))
        .start(doubler())
        .unwrap();
    for (n, t) in (1u64..).zip(tickets) {
        assert_eq!(within(PATIENCE, "a result", t.unwrap()).await, Ok(n * 2));
    }
    // And one bundle larger than the whole room: held alone, run whole.
    let big = bundling_producer(&queue, "big", 9);
    let tickets = big.enqueue_many(10..=18u64).await;
    for (n, t) in (10u64..).zip(tickets) {
        assert_eq!(within(PATIENCE, "a result", t.unwrap()).await, Ok(n * 2));
    }
    let report = within(
        PATIENCE,
        "the shutdown",
        worker.shutdown(Duration::from_secs(5)),
    )
    .await;
    assert_eq!((report.stats.completed, report.stats.held), (15, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_queue_counts_the_jobs_of_bundles_other_producers_sent() {
    let server = RedisServer::start();
    // A producer without the bound sends a bundle of five: one entry.
    let open = quick_queue(&server, "bound-bundles").await;
    let bundler = bundling_producer(&open, "free", 5);
    let _five = bundler.enqueue_many(1..=5u64).await;
    // One with a bound of six sees five jobs, not one entry.
    let bounded = Queue::builder(&server.url(), "bound-bundles")
        .max_length(6)
        .build()
        .await
        .unwrap();
    let producer = bounded.producer("bounded").build::<u64, u64>().unwrap();
    let sixth = producer.try_enqueue(6).await;
    assert!(sixth.is_ok(), "{sixth:?}");
    assert!(matches!(
        producer.try_enqueue(7).await,
        Err(EnqueueError::QueueFull { payload: 7 })
    ));
    assert_eq!(bounded.stats().await.unwrap().length, 6);
}
