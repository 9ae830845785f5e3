//! The Redis lease store over TLS (`rediss://`), against a real redis-server
//! that speaks TLS only, with a certificate that each test makes.
#![cfg(feature = "tls")]

#[path = "common/certs.rs"]
mod certs;
mod common;

use std::time::Duration;

use baler::shared::{LeaseStore, LeaseStoreError};
use baler_redis::{RedisLeaseStore, RedisStoreError};
use certs::Certs;
use common::{RedisServer, TlsFiles};

const MINUTE: Duration = Duration::from_secs(60);

/// A TLS-only server whose certificate names `names`.
fn tls_server(names: &[&str]) -> RedisServer {
    RedisServer::start_tls(|dir| {
        let certs = Certs::make_for(dir, "redis", names);
        TlsFiles {
            ca: certs.ca,
            cert: certs.cert,
            key: certs.key,
        }
    })
}

/// A TLS-only server with a certificate for 127.0.0.1 and localhost.
fn tls_local() -> RedisServer {
    tls_server(&["127.0.0.1", "localhost"])
}

/// The handshake failure inside a failed call's error.
fn handshake(error: &LeaseStoreError) -> (&str, &str, &str) {
    let LeaseStoreError::Unreachable(source) = error else {
        panic!("not Unreachable: {error}");
    };
    match source.downcast_ref::<RedisStoreError>() {
        Some(RedisStoreError::TlsHandshake {
            server,
            reason,
            hint,
        }) => (server, reason, hint),
        _ => panic!("not a TLS handshake failure: {error}"),
    }
}

#[tokio::test]
async fn leases_are_taken_renewed_and_released_over_tls() {
    let server = tls_local();
    let store = RedisLeaseStore::with_ca(&server.url(), "tls", &server.ca_pem()).unwrap();
    assert!(store.acquire(3, "a", MINUTE).await.unwrap().is_granted());
    assert!(!store.acquire(3, "b", MINUTE).await.unwrap().is_granted());
    assert_eq!(store.holder(3).await.unwrap().as_deref(), Some("a"));
    assert!(store.renew(3, "a", MINUTE).await.unwrap());
    store.release(3, "a").await.unwrap();
    assert_eq!(store.holder(3).await.unwrap(), None);
    let demands = store.announce("a", 2, MINUTE).await.unwrap().unwrap();
    assert_eq!(demands.len(), 1);

    // A second store, as another process would have, sees the same leases.
    let other = RedisLeaseStore::with_ca(&server.url(), "tls", &server.ca_pem()).unwrap();
    assert!(other.acquire(3, "b", MINUTE).await.unwrap().is_granted());
    assert_eq!(store.holder(3).await.unwrap().as_deref(), Some("b"));
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused_naming_the_server_and_the_fix() {
    let server = tls_local();
    let server_addr = format!("127.0.0.1:{}", server.port);

    // The system's roots do not hold the test's CA.
    let store = RedisLeaseStore::new(&server.url(), "untrusted").unwrap();
    let err = store.acquire(0, "a", MINUTE).await.unwrap_err();
    let (at, reason, hint) = handshake(&err);
    assert_eq!(at, server_addr);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(
        hint.contains("with_ca") && hint.contains("--shared-ca"),
        "{hint}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&server_addr) && text.contains("TLS handshake"),
        "{text}"
    );

    // Nor does another CA.
    let stranger = std::fs::read(Certs::stranger(server.dir())).unwrap();
    let store = RedisLeaseStore::with_ca(&server.url(), "untrusted", &stranger).unwrap();
    let err = store.holder(0).await.unwrap_err();
    assert!(handshake(&err).1.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    // A certificate for another host only.
    let server = tls_server(&["redis.example"]);
    let url = server.url();
    let store = RedisLeaseStore::with_ca(&url, "name", &server.ca_pem()).unwrap();
    match store.holder(0).await {
        Err(err) => {
            let (_, reason, hint) = handshake(&err);
            assert!(reason.contains("not valid for name"), "{reason}");
            assert!(hint.contains("does not name the host"), "{hint}");
        }
        Ok(_) => panic!("a certificate for 127.0.0.1 was taken for 127.0.0.2"),
    }
}

#[tokio::test]
async fn tls_to_a_plain_port_says_to_check_the_port() {
    let plain = RedisServer::start();
    let url = format!("rediss://127.0.0.1:{}", plain.port);
    let store = RedisLeaseStore::new(&url, "plain")
        .unwrap()
        .timeout(Duration::from_millis(300));
    let err = store.holder(0).await.unwrap_err();
    let LeaseStoreError::Unreachable(source) = &err else {
        panic!("{err}");
    };
    assert!(
        matches!(
            source.downcast_ref::<RedisStoreError>(),
            Some(RedisStoreError::TlsNoAnswer { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tls-port"), "{err}");

    // The other way round, a plain client on the TLS port fails too (it is
    // not a TLS failure of the client's, so it is told as unreachable).
    let tls = tls_local();
    let url = format!("redis://127.0.0.1:{}", tls.port);
    let store = RedisLeaseStore::new(&url, "plain").unwrap();
    let err = store.holder(0).await.unwrap_err();
    assert!(matches!(err, LeaseStoreError::Unreachable(_)), "{err}");
}

#[test]
fn tls_settings_that_cannot_work_are_refused_when_the_store_is_made() {
    let ca = std::fs::read(Certs::make(&common::scratch("ca-only"), "ca-only").ca).unwrap();

    let err = RedisLeaseStore::with_ca("redis://127.0.0.1:6379", "n", &ca).unwrap_err();
    assert!(matches!(err, RedisStoreError::CaWithoutTls { .. }), "{err}");
    assert!(err.to_string().contains("rediss://"), "{err}");

    let err = RedisLeaseStore::with_ca("rediss://127.0.0.1:6380", "n", b"not a PEM").unwrap_err();
    assert!(matches!(err, RedisStoreError::InvalidCa { .. }), "{err}");
    assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");

    let err = RedisLeaseStore::new("rediss://127.0.0.1:6380/#insecure", "n").unwrap_err();
    assert!(matches!(err, RedisStoreError::Insecure { .. }), "{err}");
    assert!(err.to_string().contains("with_ca"), "{err}");
}
