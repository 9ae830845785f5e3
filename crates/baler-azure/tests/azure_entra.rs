//! The Azure Blob lease store with Microsoft Entra ID bearer tokens, against a
//! real Azurite in OAuth mode over HTTPS on a free loopback port.

mod common;

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baler::shared::{LeaseStore, LeaseStoreError};
use baler_azure::{
    AccessToken, AzureAuthError, AzureLeaseStore, TokenFuture, TokenProvider, DEVELOPMENT_ACCOUNT,
    DEVELOPMENT_KEY, STORAGE_SCOPE,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::Azurite;

const LEASE: Duration = Duration::from_secs(15);
const AUDIENCE: &str = "https://storage.azure.com";
const ISSUER: &str = "https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/";

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A JWT with these claims; the emulator's basic OAuth does not check the
/// signature, so it is a placeholder.
fn jwt(audience: &str, issued: SystemTime, expires: SystemTime) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = format!(
        r#"{{"aud":"{audience}","iss":"{ISSUER}","iat":{iat},"nbf":{iat},"exp":{exp},"oid":"11059fcc-5514-4800-b5f8-49808b9cfab6"}}"#,
        iat = unix(issued),
        exp = unix(expires),
    );
    let claims = URL_SAFE_NO_PAD.encode(claims);
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// Hands out tokens for `audience` that live `lifetime`, counting calls.
#[derive(Debug)]
struct Issuer {
    audience: &'static str,
    lifetime: Duration,
    /// What the provider says the expiry is, against the token's own
    /// (a provider whose clock is wrong).
    claimed_lifetime: Duration,
    calls: AtomicUsize,
}

impl Issuer {
    fn new(audience: &'static str, lifetime: Duration) -> Arc<Self> {
        Arc::new(Issuer {
            audience,
            lifetime,
            claimed_lifetime: lifetime,
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Shared(Arc<Issuer>);

impl TokenProvider for Shared {
    fn token<'a>(&'a self, scope: &'a str) -> TokenFuture<'a> {
        Box::pin(async move {
            assert_eq!(scope, STORAGE_SCOPE);
            let issuer = &self.0;
            issuer.calls.fetch_add(1, Ordering::SeqCst);
            // Lets other requests run meanwhile, as a provider that asks an
            // identity endpoint would.
            tokio::task::yield_now().await;
            // Issued a minute ago, so that a token given a past expiry is
            // still well formed (issued before it expired).
            let now = SystemTime::now();
            let issued = now - Duration::from_secs(60);
            Ok(AccessToken::new(
                jwt(issuer.audience, issued, now + issuer.lifetime),
                now + issuer.claimed_lifetime,
            ))
        })
    }
}

fn store(server: &Azurite, issuer: &Arc<Issuer>, container: &str) -> AzureLeaseStore {
    AzureLeaseStore::with_token_provider(
        &server.https_endpoint(),
        Shared(issuer.clone()),
        container,
    )
    .unwrap()
    .trust_certificates(&server.ca_pem())
    .unwrap()
}

fn auth_error(e: &LeaseStoreError) -> &AzureAuthError {
    let LeaseStoreError::Protocol(source) = e else {
        panic!("not a protocol error: {e}");
    };
    source
        .downcast_ref::<AzureAuthError>()
        .unwrap_or_else(|| panic!("not an authorization error: {e} ({:?})", e.source()))
}

#[tokio::test]
async fn leases_are_acquired_renewed_and_released_with_a_bearer_token() {
    let server = Azurite::start_oauth();
    let issuer = Issuer::new(AUDIENCE, Duration::from_secs(3600));
    let store = store(&server, &issuer, "entra-leases");
    // The container and the blob do not exist yet: the first acquire makes them.
    assert!(store.acquire(3, "a", LEASE).await.unwrap().is_granted());
    assert!(store.is_leased(3).await.unwrap());
    assert!(!store.acquire(3, "b", LEASE).await.unwrap().is_granted());
    assert!(store.renew(3, "a", LEASE).await.unwrap());
    assert!(!store.renew(3, "b", LEASE).await.unwrap());
    store.release(3, "a").await.unwrap();
    assert!(!store.is_leased(3).await.unwrap());
    assert!(store.acquire(3, "b", LEASE).await.unwrap().is_granted());
    let demands = store.announce("b", 2, LEASE).await.unwrap();
    assert!(demands.is_some_and(|d| !d.is_empty()));
    assert_eq!(issuer.calls(), 1, "one token for every request");
}

#[tokio::test]
async fn the_same_server_refuses_requests_without_a_valid_token() {
    // The check is real: the same calls with the account key over HTTPS are
    // accepted, and a token for another audience is not.
    let server = Azurite::start_oauth();
    let wrong = Issuer::new("https://vault.azure.net", Duration::from_secs(3600));
    let store = store(&server, &wrong, "entra-audience");
    let e = store.acquire(0, "a", LEASE).await.unwrap_err();
    let key = AzureLeaseStore::from_connection_string(
        &format!(
            "AccountName={DEVELOPMENT_ACCOUNT};AccountKey={DEVELOPMENT_KEY};BlobEndpoint={}",
            server.https_endpoint()
        ),
        "entra-audience",
    )
    .unwrap()
    .trust_certificates(&server.ca_pem())
    .unwrap();
    assert!(key.acquire(0, "a", LEASE).await.unwrap().is_granted());
    let AzureAuthError::Refused { status, detail, .. } = auth_error(&e) else {
        panic!("not refused: {e}");
    };
    assert_eq!(*status, 403, "{e}");
    assert!(detail.contains("audience"), "{e}");
    assert!(
        e.to_string().contains("https://storage.azure.com"),
        "says what to change: {e}"
    );
    // A refused token is not kept: the next request asks for another.
    let again = store.is_leased(0).await.unwrap_err();
    assert!(matches!(auth_error(&again), AzureAuthError::Refused { .. }));
    assert_eq!(wrong.calls(), 2);
}

#[tokio::test]
async fn an_expired_token_is_refused_with_a_clear_error() {
    let server = Azurite::start_oauth();
    // The provider's clock says the token lives an hour; the token itself
    // expired 30 seconds ago.
    let issuer = Arc::new(Issuer {
        audience: AUDIENCE,
        lifetime: Duration::ZERO,
        claimed_lifetime: Duration::from_secs(3600),
        calls: AtomicUsize::new(0),
    });
    let store = store(&server, &issuer, "entra-expired");
    let e = store.acquire(0, "a", LEASE).await.unwrap_err();
    let AzureAuthError::Refused { detail, .. } = auth_error(&e) else {
        panic!("not refused: {e}");
    };
    assert!(detail.contains("expired"), "{e}");
    assert!(
        e.to_string().contains("unexpired"),
        "says what to change: {e}"
    );
}

#[tokio::test]
async fn a_token_is_fetched_again_before_it_expires() {
    let server = Azurite::start_oauth();
    // A minute's token is fetched again after half of it (tokio's clock,
    // moved by hand between requests; the service's is the wall clock, on
    // which the first token is still good: only the count tells).
    let issuer = Issuer::new(AUDIENCE, Duration::from_secs(60));
    let store = store(&server, &issuer, "entra-refresh");
    assert!(store.acquire(1, "a", LEASE).await.unwrap().is_granted());
    assert_eq!(issuer.calls(), 1);
    let advance = |by| async move {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    };
    advance(Duration::from_secs(29)).await;
    assert!(store.renew(1, "a", LEASE).await.unwrap());
    assert_eq!(issuer.calls(), 1, "still fresh");
    advance(Duration::from_secs(2)).await;
    assert!(store.renew(1, "a", LEASE).await.unwrap());
    assert_eq!(issuer.calls(), 2, "fetched again at half its life");
    store.release(1, "a").await.unwrap();
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test]
async fn concurrent_requests_wait_for_one_token() {
    let server = Azurite::start_oauth();
    let issuer = Issuer::new(AUDIENCE, Duration::from_secs(3600));
    let store = store(&server, &issuer, "entra-together");
    let calls: Vec<_> = (0..6u32)
        .map(|p| {
            let store = store.clone();
            tokio::spawn(async move { store.acquire(p, "a", LEASE).await })
        })
        .collect();
    for call in calls {
        assert!(call.await.unwrap().unwrap().is_granted());
    }
    assert_eq!(issuer.calls(), 1);
}

#[test]
fn a_bearer_token_is_never_sent_over_plain_http() {
    let issuer = Issuer::new(AUDIENCE, Duration::from_secs(3600));
    let e = AzureLeaseStore::with_token_provider(
        "http://127.0.0.1:10000/devstoreaccount1",
        Shared(issuer.clone()),
        "entra-plain",
    )
    .unwrap_err();
    assert!(
        matches!(e, baler_azure::AzureStoreError::BearerOverHttp { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("https://"), "{e}");
    assert_eq!(issuer.calls(), 0);
}

#[cfg(feature = "azure-identity")]
mod azure_sdk {
    use super::*;
    use azure_core::credentials::{AccessToken as SdkToken, TokenCredential, TokenRequestOptions};
    use azure_core::time::OffsetDateTime;
    use baler_azure::AzureCredential;

    /// An Azure SDK credential, as `azure_identity`'s are, handing out
    /// tokens the emulator accepts.
    #[derive(Debug)]
    struct Sdk(Arc<Issuer>);

    #[async_trait::async_trait]
    impl TokenCredential for Sdk {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<SdkToken> {
            assert_eq!(scopes, [STORAGE_SCOPE]);
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            let now = SystemTime::now();
            let expires = now + self.0.lifetime;
            Ok(SdkToken::new(
                jwt(self.0.audience, now - Duration::from_secs(60), expires),
                OffsetDateTime::from(expires),
            ))
        }
    }

    #[tokio::test]
    async fn an_azure_sdk_credential_is_a_token_provider() {
        let server = Azurite::start_oauth();
        let issuer = Issuer::new(AUDIENCE, Duration::from_secs(3600));
        let store = AzureLeaseStore::with_token_provider(
            &server.https_endpoint(),
            AzureCredential::new(Arc::new(Sdk(issuer.clone()))),
            "entra-sdk",
        )
        .unwrap()
        .trust_certificates(&server.ca_pem())
        .unwrap();
        assert!(store.acquire(2, "a", LEASE).await.unwrap().is_granted());
        assert!(store.renew(2, "a", LEASE).await.unwrap());
        store.release(2, "a").await.unwrap();
        assert!(!store.is_leased(2).await.unwrap());
        assert_eq!(issuer.calls(), 1);
    }
}
