//! A queue split into shards on a real 3-master Redis Cluster: each test
//! starts its own cluster (three `redis-server --cluster-enabled yes` on free
//! loopback ports, joined by `redis-cli --cluster create`), and a guard kills
//! every node by its pid when the test ends, pass or fail.
//!
//! The single-Redis path (one shard) is what `tests/queue.rs` covers,
//! unchanged.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baler::{handler_fn, Batch, HandlerResult, Outcome};
use baler_queue::{ConfigError, ConnectError, Job, JobError, Queue, Worker};
use common::{eventually, within};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(30);

fn install_hint(program: &str, e: &std::io::Error) -> String {
    format!(
        "cannot run {program} ({e}): the cluster tests need redis-server and redis-cli; \
         install Debian's redis-server and redis-tools (`apt-get install -y redis-server \
         redis-tools`), or run ./scripts/test setup, which does"
    )
}

/// A loopback port that is free, and whose cluster bus port (+10000) is too.
fn free_cluster_port() -> u16 {
    loop {
        let Ok(listener) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster of `redis-server` children. Dropping it kills every node
/// still running (by its process handle) and removes their directory.
struct Cluster {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    /// Three masters, no replicas, slots split evenly by `redis-cli`.
    fn start() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "baler-queue-cluster-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            free_cluster_port()
        ));
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        let mut cluster = Cluster {
            dir,
            ports: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..3 {
            let port = free_cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(cluster.dir.join(format!("nodes-{port}.conf")))
                // The other masters go on serving their slots while one is
                // down: the point of sharding.
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{}", install_hint("redis-server", &e)));
            cluster.ports.push(port);
            cluster.children.push(Some(child));
        }
        for port in cluster.ports.clone() {
            cluster.wait_for(port, "PING", "PONG");
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}", install_hint("redis-cli", &e)));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for port in cluster.ports.clone() {
            cluster.wait_for(port, "CLUSTER INFO", "cluster_state:ok");
        }
        cluster
    }

    /// Runs `command` with redis-cli against `port` until its answer holds
    /// `expect` (for at most 20 s).
    fn wait_for(&self, port: u16, command: &str, expect: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(command.split(' '))
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{}", install_hint("redis-cli", &e)));
            if String::from_utf8_lossy(&out.stdout).contains(expect) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {port} never answered {command} with {expect}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Kills the node on `port` at once (SIGKILL, by its pid), as a crash would.
    fn kill(&mut self, port: u16) {
        let at = self.ports.iter().position(|p| *p == port);
        if let Some(mut child) = at.and_then(|i| self.children[i].take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain connection to one node.
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    common::connection(&format!("redis://127.0.0.1:{port}")).await
}

/// The port of the master that serves `slot`, from `CLUSTER NODES`.
async fn owner_of(port: u16, slot: u16) -> u16 {
    let mut conn = node(port).await;
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 9 || !fields[2].contains("master") {
            continue;
        }
        let serves = fields[8..].iter().any(|range| {
            let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
            match (ends.next().flatten(), ends.next().flatten()) {
                (Some(lo), Some(hi)) => (lo..=hi).contains(&slot),
                (Some(one), None) => one == slot,
                _ => false,
            }
        });
        if serves {
            let address = fields[1].split('@').next().unwrap_or_default();
            let owner = address.rsplit(':').next().and_then(|p| p.parse().ok());
            return owner.expect("a node's port");
        }
    }
    panic!("no master serves slot {slot}:\n{nodes}");
}

async fn sharded_queue(cluster: &Cluster, name: &str) -> Queue {
    Queue::cluster_builder(cluster.urls(), name)
        .shards(3)
        .lease(Duration::from_millis(1500))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .timeout(Duration::from_millis(500))
        .build()
        .await
        .expect("a queue on the cluster")
}

fn doubler() -> impl baler::Handler<u64, Output = u64, Error = String> {
    handler_fn(|batch: Batch<u64>| async move {
        let out: HandlerResult<u64, String> =
            Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect());
        out
    })
}

fn start_doubler(queue: &Queue) -> Worker {
    queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(doubler())
        .expect("worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_land_on_three_different_masters() {
    let cluster = Cluster::start();
    // Several names: plain `{q#0}`, `{q#1}`, `{q#2}` tags would share a
    // master for most of them.
    for name in ["spread", "mail", "resize", "chains"] {
        let queue = sharded_queue(&cluster, name).await;
        assert_eq!(queue.shards().len(), 3);
        assert_shards_on_distinct_masters(&cluster, &queue).await;
    }
}

async fn assert_shards_on_distinct_masters(cluster: &Cluster, queue: &Queue) {
    let mut conn = node(cluster.ports[0]).await;
    let mut owners = HashSet::new();
    for (i, keys) in queue.shards().iter().enumerate() {
        assert_eq!(keys.shard(), i);
        // Redis agrees with the slot the client computed.
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(keys.jobs())
            .query_async(&mut conn)
            .await
            .expect("CLUSTER KEYSLOT");
        assert_eq!(slot, keys.slot(), "{keys:?}");
        let owner = owner_of(cluster.ports[0], slot).await;
        // The shard's stream (made by build) is on that master itself.
        let mut on_owner = node(owner).await;
        let exists: u64 = redis::cmd("EXISTS")
            .arg(keys.jobs())
            .query_async(&mut on_owner)
            .await
            .expect("EXISTS on the owner");
        assert_eq!(exists, 1, "{} on node {owner}", keys.jobs());
        owners.insert(owner);
    }
    assert_eq!(owners.len(), 3, "shards share a master: {owners:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_and_many_jobs_over_three_shards_resolve_every_ticket_exactly_once() {
    let cluster = Cluster::start();
    let queue = sharded_queue(&cluster, "chains").await;
    let workers: Vec<Worker> = (0..3).map(|_| start_doubler(&queue)).collect();
    let shards_used = Arc::new(std::sync::Mutex::new(HashMap::<usize, u64>::new()));
    let mut tasks = Vec::new();
    // Two producers with a burst of jobs each.
    for p in 0..2u64 {
        let producer = queue
            .producer(&format!("burst{p}"))
            .build::<u64, u64>()
            .unwrap();
        let shards_used = shards_used.clone();
        tasks.push(tokio::spawn(async move {
            let base = p * 1_000;
            let tickets = producer.enqueue_many(base..base + 300).await;
            let mut seen = Vec::new();
            for (n, ticket) in (base..).zip(tickets) {
                let ticket = ticket.expect("enqueued");
                let shard = ticket.shard().expect("a fresh ticket knows its shard");
                *shards_used.lock().unwrap().entry(shard).or_default() += 1;
                let id = ticket.id().clone();
                assert_eq!(ticket.await, Ok(n * 2), "job {id}");
                seen.push(id);
            }
            assert_eq!(
                producer.shutdown(Duration::from_secs(5)).await.outstanding,
                []
            );
            seen
        }));
    }
    // A producer keeping 8 chains going: each result is the next step's input.
    let chains = queue.producer("chains").build::<u64, u64>().unwrap();
    for c in 0..8u64 {
        let producer = chains.clone();
        tasks.push(tokio::spawn(async move {
            let mut value = c + 1;
            let mut seen = Vec::new();
            for _ in 0..10 {
                let ticket = producer.enqueue(value).await.expect("enqueued");
                seen.push(ticket.id().clone());
                let doubled = ticket.await.expect("a step's result");
                assert_eq!(doubled, value * 2);
                value = doubled % 1_000_003;
            }
            seen
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        for id in within(PATIENCE, "every ticket", task).await.unwrap() {
            assert!(ids.insert(id), "a job id was handed out twice");
        }
    }
    assert_eq!(ids.len(), 600 + 80);
    assert_eq!(
        chains.shutdown(Duration::from_secs(5)).await.outstanding,
        []
    );
    let used = shards_used.lock().unwrap().clone();
    assert_eq!(used.len(), 3, "jobs went to every shard: {used:?}");
    assert!(
        used.values().all(|n| *n >= 150),
        "jobs spread evenly: {used:?}"
    );
    let mut completed = 0;
    for worker in workers {
        let report = within(
            PATIENCE,
            "worker shutdown",
            worker.shutdown(Duration::from_secs(5)),
        )
        .await;
        assert_eq!(report.stats.stale_discarded, 0);
        completed += report.stats.completed;
    }
    // Every job ran exactly once, and nothing is left in any shard.
    assert_eq!(completed, 680);
    let stats = queue.stats().await.expect("stats over every shard");
    assert_eq!((stats.length, stats.pending, stats.dead), (0, 0, 0));
    for keys in queue.shards() {
        let owner = owner_of(cluster.ports[0], keys.slot()).await;
        let mut conn = node(owner).await;
        for producer in ["burst0", "burst1", "chains"] {
            let left: u64 = redis::cmd("XLEN")
                .arg(keys.results(producer))
                .query_async(&mut conn)
                .await
                .expect("XLEN");
            assert_eq!(left, 0, "{} still holds results", keys.results(producer));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_goes_to_one_shard_and_is_recognised_there() {
    let cluster = Cluster::start();
    let queue = sharded_queue(&cluster, "idem").await;
    let producer = queue.producer("p").build::<u64, u64>().unwrap();
    let mut first = Vec::new();
    for k in 0..6 {
        let key = format!("order-{k}");
        first.push(
            producer
                .enqueue(Job::new(k).idempotency_key(&key))
                .await
                .unwrap(),
        );
    }
    let used: HashSet<Option<usize>> = first.iter().map(|t| t.shard()).collect();
    assert!(used.len() > 1, "six keys all hashed to one shard: {used:?}");
    let mut again = Vec::new();
    for k in 0..6 {
        let key = format!("order-{k}");
        let ticket = producer
            .enqueue(Job::new(k).idempotency_key(&key))
            .await
            .unwrap();
        assert_eq!(
            ticket.id(),
            first[k as usize].id(),
            "{key} was enqueued twice"
        );
        assert_eq!(ticket.shard(), first[k as usize].shard());
        again.push(ticket);
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.length, 6);
    let worker = start_doubler(&queue);
    for (k, (a, b)) in first.into_iter().zip(again).enumerate() {
        assert_eq!(within(PATIENCE, "first", a).await, Ok(k as u64 * 2));
        assert_eq!(within(PATIENCE, "again", b).await, Ok(k as u64 * 2));
    }
    let report = within(
        PATIENCE,
        "worker shutdown",
        worker.shutdown(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(report.stats.completed, 6);
    producer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_stops_only_its_shard_and_its_tickets_end_at_shutdown() {
    let mut cluster = Cluster::start();
    let queue = sharded_queue(&cluster, "loss").await;
    // Jobs from 1000 on wait at the gate until it opens.
    let (open, gate) = watch::channel(false);
    let handler = handler_fn(move |batch: Batch<u64>| {
        let mut gate = gate.clone();
        async move {
            if batch.iter().any(|n| *n >= 1000) {
                let _ = gate.wait_for(|open| *open).await;
            }
            let out: HandlerResult<u64, String> =
                Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect());
            out
        }
    });
    let worker = queue
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler)
        .expect("worker");
    let producer = queue.producer("p").build::<u64, u64>().unwrap();

    // A first round runs everywhere.
    let warm: Vec<_> = producer.enqueue_many(0..30u64).await;
    for (n, ticket) in (0..).zip(warm) {
        let ticket = ticket.expect("enqueued");
        assert_eq!(within(PATIENCE, "a warm-up job", ticket).await, Ok(n * 2));
    }
    // The second is claimed, then one master dies while it runs.
    let tickets: Vec<_> = producer
        .enqueue_many(1000..1300u64)
        .await
        .into_iter()
        .map(|t| t.expect("enqueued"))
        .collect();
    eventually(PATIENCE, "every job claimed", || async {
        worker.stats().held == 300
    })
    .await;
    let dead_shard = 1;
    let dead_port = owner_of(cluster.ports[0], queue.shards()[dead_shard].slot()).await;
    cluster.kill(dead_port);
    open.send_replace(true);

    let mut lost = HashSet::new();
    let mut waiting = Vec::new();
    for ticket in tickets {
        match ticket.shard() {
            Some(s) if s == dead_shard => {
                lost.insert(ticket.id().clone());
                waiting.push(ticket);
            }
            _ => {
                // The other shards go on: every result arrives.
                let id = ticket.id().clone();
                let out = within(PATIENCE, "a job on a live shard", ticket).await;
                assert!(matches!(out, Ok(n) if n >= 2000), "job {id}: {out:?}");
            }
        }
    }
    assert!(
        (50..=150).contains(&lost.len()),
        "{} jobs on the dead shard",
        lost.len()
    );

    // The dead shard's results cannot arrive: shutdown ends them, bounded.
    let report = within(
        PATIENCE,
        "producer shutdown",
        producer.shutdown(Duration::from_secs(2)),
    )
    .await;
    let outstanding: HashSet<_> = report.outstanding.into_iter().collect();
    assert_eq!(outstanding, lost);
    for ticket in waiting {
        let id = ticket.id().clone();
        assert_eq!(
            within(PATIENCE, "a dead shard's ticket", ticket).await,
            Err(JobError::Shutdown { job_id: id })
        );
    }
    // The worker stops too, bounded, without writing what it cannot.
    let report = within(
        Duration::from_secs(90),
        "worker shutdown",
        worker.shutdown(Duration::from_secs(2)),
    )
    .await;
    assert_eq!(report.stats.completed, 30 + 300 - lost.len() as u64);
    assert_eq!(report.unwritten, lost.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_restarted_under_its_name_gets_its_results_from_every_shard() {
    let cluster = Cluster::start();
    let queue = sharded_queue(&cluster, "restart").await;
    let before = queue.producer("api").build::<u64, u64>().unwrap();
    let mut ids = Vec::new();
    let mut shards = HashSet::new();
    for t in before.enqueue_many(1..=9u64).await {
        let t = t.unwrap();
        ids.push(t.id().clone());
        shards.insert(t.shard());
    }
    assert_eq!(shards.len(), 3);
    drop(before); // no shutdown: as if the process had died

    let worker = start_doubler(&queue);
    // Each shard's results stream holds its own jobs' results.
    let mut owners = Vec::new();
    for keys in queue.shards() {
        owners.push((
            keys.results("api"),
            owner_of(cluster.ports[0], keys.slot()).await,
        ));
    }
    // Results stored, each of a bundle counted (a shard's three jobs went
    // as one bundle, and their results come back as one entry).
    let stored = || async {
        let mut total = 0;
        for (key, port) in &owners {
            let mut conn = node(*port).await;
            total += common::results_stored(&mut conn, key).await;
        }
        total
    };
    eventually(PATIENCE, "the nine results stored", || async {
        stored().await == 9
    })
    .await;

    let after = queue.producer("api").build::<u64, u64>().unwrap();
    for (n, id) in (1..=5u64).zip(&ids) {
        let t = after.reattach(id.clone());
        assert_eq!(within(PATIENCE, "a reattached result", t).await, Ok(n * 2));
    }
    // The four results nobody reattached are held for the taking.
    let mut rest = HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while rest.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "unclaimed results did not arrive"
        );
        for (id, r) in after.take_unclaimed().await {
            rest.insert(id, r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, id) in (6..=9u64).zip(&ids[5..]) {
        assert_eq!(rest[id], Ok(n * 2));
    }
    assert_eq!(after.outstanding(), 0);
    eventually(PATIENCE, "every shard's results stream emptied", || async {
        stored().await == 0
    })
    .await;
    within(
        PATIENCE,
        "worker shutdown",
        worker.shutdown(Duration::from_secs(5)),
    )
    .await;
}

#[tokio::test]
async fn shard_settings_that_cannot_work_are_config_errors() {
    let zero = Queue::builder("redis://127.0.0.1:1", "q")
        .shards(0)
        .build()
        .await;
    match zero {
        Err(ConnectError::Config(e @ ConfigError::Zero { setting: "shards" })) => {
            assert!(e.to_string().contains("shards must be at least 1"), "{e}");
        }
        other => panic!("expected a zero-shards error, got {other:?}"),
    }
    let many = Queue::builder("redis://127.0.0.1:1", "q")
        .shards(5000)
        .build()
        .await;
    assert!(
        matches!(
            many,
            Err(ConnectError::Config(ConfigError::TooManyShards {
                shards: 5000,
                ..
            }))
        ),
        "{many:?}"
    );
    let none = Queue::cluster_builder(Vec::<String>::new(), "q")
        .build()
        .await;
    assert!(
        matches!(none, Err(ConnectError::Config(ConfigError::NoClusterNodes))),
        "{none:?}"
    );
    let bad = Queue::cluster_builder(["redis://127.0.0.1:1", "nonsense"], "q")
        .build()
        .await;
    assert!(
        matches!(bad, Err(ConnectError::InvalidUrl { .. })),
        "{bad:?}"
    );
}
