//! The durable queue over TLS (`rediss://`), against a real redis-server that
//! speaks TLS only (`--port 0 --tls-port …` on 127.0.0.1), with a CA and a
//! server certificate that each test makes, stopped by its handle when the
//! test ends.
//!
//! The TLS server and the certificates come from baler-redis's test harness,
//! which its own TLS tests use: one harness for both crates' TLS tests.

#[cfg(feature = "tls")]
#[path = "../../baler-redis/tests/common/certs.rs"]
mod certs;
mod common;
#[cfg(feature = "tls")]
#[path = "../../baler-redis/tests/common/mod.rs"]
mod tls_harness;

#[cfg(feature = "tls")]
use std::time::Duration;

use baler_queue::{ConnectError, Queue};

/// How long a test waits for what a real server decides, before it fails
/// saying what it waited for.
#[cfg(feature = "tls")]
const PATIENCE: Duration = Duration::from_secs(20);

/// A TLS-only server whose certificate names `names`.
#[cfg(feature = "tls")]
fn tls_server(names: &[&str]) -> tls_harness::RedisServer {
    tls_harness::RedisServer::start_tls(|dir| {
        let certs = certs::Certs::make_for(dir, "redis", names);
        tls_harness::TlsFiles {
            ca: certs.ca,
            cert: certs.cert,
            key: certs.key,
        }
    })
}

/// The handshake failure in `result`: which server, what rustls said, the hint.
#[cfg(feature = "tls")]
fn handshake(result: Result<Queue, ConnectError>) -> (String, String, &'static str) {
    match result {
        Err(ConnectError::TlsHandshake {
            server,
            reason,
            hint,
        }) => (server, reason, hint),
        Err(other) => panic!("not a TLS handshake failure: {other:?}"),
        Ok(queue) => panic!("{queue:?} connected"),
    }
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_and_a_worker_round_trip_jobs_over_tls() {
    use baler::{handler_fn, Batch, HandlerResult, Outcome};

    let server = tls_server(&["127.0.0.1", "localhost"]);
    let ca = server.ca_pem();
    // Two handles, as two processes would have: each makes its own
    // connections, and the worker its blocking reads, all over TLS.
    let open = || {
        Queue::builder(&server.url(), "tls")
            .lease(Duration::from_secs(5))
            .with_ca(&ca)
            .build()
    };
    let worker_side = open().await.expect("the worker's queue over TLS");
    let producer_side = open().await.expect("the producer's queue over TLS");

    let worker = worker_side
        .worker()
        .block_time(Duration::from_millis(100))
        .start(handler_fn(|batch: Batch<u64>| async move {
            let out: HandlerResult<u64, String> =
                Ok(batch.iter().map(|n| Outcome::Done(n * 2)).collect());
            out
        }))
        .expect("worker");
    let producer = producer_side.producer("p1").build::<u64, u64>().unwrap();

    let tickets = producer.enqueue_many(1..=40u64).await;
    for (n, ticket) in (1..=40u64).zip(tickets) {
        let ticket = ticket.expect("enqueued over TLS");
        let result = common::within(PATIENCE, "a result over TLS", ticket).await;
        assert_eq!(result, Ok(n * 2), "job {n}");
    }

    let stats = producer_side.stats().await.unwrap();
    assert_eq!(
        (stats.length, stats.pending, stats.delayed, stats.dead),
        (0, 0, 0, 0),
        "every job acknowledged and deleted"
    );
    let report = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.stats.completed, 40);
    assert!(producer
        .shutdown(Duration::from_secs(1))
        .await
        .outstanding
        .is_empty());
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_server_and_the_fix() {
    let server = tls_server(&["127.0.0.1", "localhost"]);
    let server_addr = format!("127.0.0.1:{}", server.port);

    let stranger = std::fs::read(certs::Certs::stranger(server.dir())).unwrap();
    let result = Queue::builder(&server.url(), "untrusted")
        .with_ca(&stranger)
        .build()
        .await;
    let text = match &result {
        Err(err) => err.to_string(),
        Ok(_) => String::new(),
    };
    let (at, reason, hint) = handshake(result);
    assert_eq!(at, server_addr);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(hint.contains("QueueBuilder::with_ca"), "{hint}");
    assert!(
        text.contains(&server_addr) && text.contains("TLS handshake"),
        "{text}"
    );

    // Nor do the system's roots hold the test's CA.
    let (_, reason, _) = handshake(Queue::connect(&server.url(), "untrusted").await);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let server = tls_server(&["redis.example"]);
    let result = Queue::builder(&server.url(), "name")
        .with_ca(&server.ca_pem())
        .build()
        .await;
    let (_, reason, hint) = handshake(result);
    assert!(reason.contains("not valid for name"), "{reason}");
    assert!(hint.contains("does not name the host"), "{hint}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_to_a_plain_port_says_to_check_the_port() {
    // The short timeout bounds how long the unanswered handshake is waited for.
    let connect = |scheme: &str, port: u16| {
        Queue::builder(&format!("{scheme}://127.0.0.1:{port}"), "plain")
            .timeout(Duration::from_millis(300))
            .build()
    };
    let plain = common::RedisServer::start();
    let err = connect("rediss", plain.port).await.unwrap_err();
    let server = format!("127.0.0.1:{}", plain.port);
    assert!(
        matches!(&err, ConnectError::TlsNoAnswer { server: at } if *at == server),
        "{err:?}"
    );
    assert!(err.to_string().contains("tls-port"), "{err}");

    // The other way round, a plain client on the TLS port: the server drops
    // it, and as no TLS of the client's failed it is told as unreachable.
    let tls = tls_server(&["127.0.0.1"]);
    let err = connect("redis", tls.port).await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable { .. }), "{err:?}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_settings_that_cannot_work_are_refused_before_connecting() {
    // Nothing listens on these ports: each error must come before a
    // connection is tried.
    let port = common::free_port();
    let dir = tls_harness::scratch("queue-ca-only");
    let ca = std::fs::read(certs::Certs::make(&dir, "ca-only").ca).unwrap();

    let with_ca = |scheme: &str, ca: &[u8]| {
        Queue::builder(&format!("{scheme}://127.0.0.1:{port}"), "q")
            .with_ca(ca)
            .build()
    };

    let err = with_ca("redis", &ca).await.unwrap_err();
    assert!(matches!(err, ConnectError::CaWithoutTls { .. }), "{err:?}");
    assert!(err.to_string().contains("rediss://"), "{err}");

    let err = with_ca("rediss", b"not a PEM").await.unwrap_err();
    assert!(matches!(err, ConnectError::InvalidCa { .. }), "{err:?}");
    assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");

    let err = Queue::connect(&format!("rediss://127.0.0.1:{port}/#insecure"), "q")
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Insecure { .. }), "{err:?}");
    assert!(err.to_string().contains("with_ca"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn rediss_is_refused_when_built_without_tls() {
    let url = format!("rediss://127.0.0.1:{}", common::free_port());
    let err = Queue::connect(&url, "q").await.unwrap_err();
    assert!(matches!(err, ConnectError::TlsNotEnabled { .. }), "{err:?}");
    assert!(err.to_string().contains("`tls` feature"), "{err}");
}
