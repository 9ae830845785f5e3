//! Durability: a producer answered only once its jobs have reached the
//! copies it asks for, against a real master and replica.

mod common;

use std::time::Duration;

use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{ConfigError, ConnectError, Durability, EnqueueError, Queue};
use common::{connection, eventually, within, RedisServer};

const PATIENCE: Duration = Duration::from_secs(20);

async fn info(url: &str, section: &str) -> String {
    let mut conn = connection(url).await;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .expect("INFO")
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

async fn xlen(url: &str, key: &str) -> u64 {
    let mut conn = connection(url).await;
    redis::cmd("XLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_asking_for_a_replica_is_answered_once_one_has_the_job_and_told_when_none_does()
{
    let master = RedisServer::start();
    let port = master.port.to_string();
    let mut replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    let (m, r) = (master.url(), replica.url());
    eventually(PATIENCE, "the replica in sync", || {
        let r = r.clone();
        async move { field(&info(&r, "replication").await, "master_link_status") == Some("up") }
    })
    .await;

    let queue = Queue::builder(&m, "durable")
        .lease(Duration::from_millis(400))
        .durability(Durability::Replicated {
            replicas: 1,
            timeout: Duration::from_millis(300),
        })
        .build()
        .await
        .unwrap();
    let producer = queue.producer("p1").build::<u64, u64>().unwrap();
    let first = producer.enqueue(1).await.expect("confirmed by the replica");
    // Answered after the replica had it: it is there now, not eventually.
    assert_eq!(xlen(&r, &queue.keys().jobs()).await, 1);

    // With the replica gone, the job is added on the master but the
    // producer says it is not as durable as asked, naming the job.
    replica.kill();
    let orphan = match producer.enqueue(2).await {
        Err(EnqueueError::NotDurable {
            job_id,
            reached,
            payload,
            ..
        }) => {
            assert_eq!((reached.replicas, payload), (0, 2));
            job_id
        }
        other => panic!("expected NotDurable, got {other:?}"),
    };
    assert_eq!(xlen(&m, &queue.keys().jobs()).await, 2);

    // The job still runs, and its result is kept for a reattach.
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            let out: HandlerResult<u64, String> =
                Ok(batch.iter().map(|n| Outcome::Done(n * 10)).collect());
            out
        }))
        .unwrap();
    assert_eq!(within(PATIENCE, "the first result", first).await, Ok(10));
    let late = producer.reattach(orphan);
    assert_eq!(within(PATIENCE, "the orphan's result", late).await, Ok(20));
    worker.shutdown(Duration::from_secs(5)).await;
    assert!(producer
        .shutdown(Duration::from_secs(1))
        .await
        .outstanding
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_durability_is_refused_where_the_server_cannot_give_it() {
    let plain = RedisServer::start();
    let version = field(&info(&plain.url(), "server").await, "redis_version")
        .unwrap_or("")
        .to_owned();
    let waitaof = {
        let mut p = version.split('.').map(|n| n.parse::<u32>().unwrap_or(0));
        (p.next().unwrap_or(0), p.next().unwrap_or(0)) >= (7, 2)
    };
    let persisted = Durability::Persisted {
        replicas: 0,
        timeout: Duration::from_millis(300),
    };
    let built = Queue::builder(&plain.url(), "aof")
        .durability(persisted)
        .build()
        .await;
    match built {
        Err(ConnectError::DurabilityUnsupported { reason, .. }) => {
            let expected = if waitaof { "appendonly yes" } else { "7.2" };
            assert!(reason.contains(expected), "{reason}");
        }
        other => panic!("expected DurabilityUnsupported on {version}, got {other:?}"),
    }
    if waitaof {
        // A server that can: the job is answered once it is in the file.
        let durable = RedisServer::start_durable();
        let queue = Queue::builder(&durable.url(), "aof")
            .durability(persisted)
            .build()
            .await
            .unwrap();
        let producer = queue.producer("p1").build::<u64, u64>().unwrap();
        let _ticket = producer.enqueue(1).await.expect("written to the AOF");
    }
}

#[tokio::test]
async fn a_replicated_durability_of_no_replicas_is_a_setting_error() {
    let queue = Queue::builder("redis://127.0.0.1:1", "zero")
        .durability(Durability::Replicated {
            replicas: 0,
            timeout: Duration::from_millis(100),
        })
        .build()
        .await;
    assert!(matches!(
        queue,
        Err(ConnectError::Config(ConfigError::Zero { setting })) if setting.contains("replicas")
    ));
}
