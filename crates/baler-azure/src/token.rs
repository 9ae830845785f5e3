//! Microsoft Entra ID: bearer tokens from a [`TokenProvider`], cached by the
//! store and fetched again before they expire.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The scope a storage token is asked for: every storage account the
/// identity may use.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// A token is fetched again this long before it expires at most (as the
/// Azure SDK does), so that a request never leaves with a token about to run
/// out.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// How long a provider may take to hand out a token before the request
/// fails: identity endpoints are slower than the storage service.
pub(crate) const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A bearer token and when it stops being accepted.
#[derive(Clone)]
pub struct AccessToken {
    /// The token, as sent after `Bearer `.
    pub token: String,
    /// When the service stops accepting it.
    pub expires_at: SystemTime,
}

impl AccessToken {
    /// A token `token` that expires at `expires_at`.
    pub fn new(token: impl Into<String>, expires_at: SystemTime) -> Self {
        AccessToken {
            token: token.into(),
            expires_at,
        }
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a [`TokenProvider`] returns.
pub type TokenFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send + 'a>>;

/// Why a [`TokenProvider`] has no token to give.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl TokenError {
    /// A token error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        TokenError(message.into().into())
    }
}

/// Where the store gets Microsoft Entra ID tokens: a managed identity, a
/// workload identity, a developer's sign-in, or anything else that hands out
/// OAuth bearer tokens for a scope.
///
/// The store asks for [`STORAGE_SCOPE`], keeps the token until shortly before
/// it expires (5 minutes, or half its lifetime for a shorter-lived one), and
/// asks once for all the requests that need a new one at the same time.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use baler_azure::{AccessToken, TokenFuture, TokenProvider};
///
/// struct FromEnvironment;
///
/// impl TokenProvider for FromEnvironment {
///     fn token<'a>(&'a self, _scope: &'a str) -> TokenFuture<'a> {
///         Box::pin(async {
///             let token = std::env::var("STORAGE_TOKEN")
///                 .map_err(|_| baler_azure::TokenError::new("set STORAGE_TOKEN"))?;
///             Ok(AccessToken::new(token, SystemTime::now() + Duration::from_secs(3600)))
///         })
///     }
/// }
/// ```
pub trait TokenProvider: Send + Sync + 'static {
    /// A token for `scope`, with its expiry.
    fn token<'a>(&'a self, scope: &'a str) -> TokenFuture<'a>;
}

/// Why a request could not be authorized with a bearer token. Carried as the
/// source of a [`LeaseStoreError`](baler::shared::LeaseStoreError), where
/// `downcast_ref` finds it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzureAuthError {
    /// The token provider failed or took too long.
    #[error(
        "no Microsoft Entra ID token for {scope}: {reason}; check the identity's configuration \
         (managed identity assigned to this machine, or the workload identity's environment)"
    )]
    NoToken {
        /// The scope asked for.
        scope: &'static str,
        /// What the provider said.
        reason: String,
    },
    /// The storage service refused the token.
    #[error(
        "the storage service refused the bearer token ({status} {code}{message}{detail}); the \
         token must \
         be for the audience https://storage.azure.com (scope {STORAGE_SCOPE}), unexpired, from \
         the storage account's tenant, and its identity needs a data role such as Storage Blob \
         Data Contributor on the container"
    )]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The service's error code.
        code: String,
        /// The service's message, with its leading `: `.
        message: String,
        /// Why the token was refused, when the service says (its
        /// `AuthenticationErrorDetail`, or the `WWW-Authenticate` header),
        /// with its leading `: `.
        detail: String,
    },
}

struct Cached {
    token: Arc<str>,
    /// When to fetch a new one, on tokio's clock.
    refresh_at: Instant,
}

/// A provider's tokens, cached; one fetch at a time.
pub(crate) struct TokenCache {
    provider: Arc<dyn TokenProvider>,
    // Held across a fetch, so that callers that find the token stale wait
    // for the one fetch and then take its token.
    cached: Mutex<Option<Cached>>,
}

impl TokenCache {
    pub(crate) fn new(provider: Arc<dyn TokenProvider>) -> Self {
        TokenCache {
            provider,
            cached: Mutex::new(None),
        }
    }

    /// Drops the cached token, which the service refused, so that the next
    /// request asks the provider again instead of sending it until it
    /// would have been refreshed.
    ///
    /// A fetch under way holds the lock; it brings a new token anyway, so
    /// there is nothing to forget then.
    pub(crate) fn forget(&self) {
        if let Ok(mut cached) = self.cached.try_lock() {
            *cached = None;
        }
    }

    /// A token that is not about to expire.
    pub(crate) async fn token(&self) -> Result<Arc<str>, AzureAuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if Instant::now() < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        let no_token = |reason: String| AzureAuthError::NoToken {
            scope: STORAGE_SCOPE,
            reason,
        };
        let fetched = tokio::time::timeout(TOKEN_TIMEOUT, self.provider.token(STORAGE_SCOPE))
            .await
            .map_err(|_| no_token(format!("the provider gave none within {TOKEN_TIMEOUT:?}")))?
            .map_err(|e| no_token(e.to_string()))?;
        let lifetime = fetched
            .expires_at
            .duration_since(SystemTime::now())
            .map_err(|_| no_token("the provider gave a token that has already expired".into()))?;
        let token: Arc<str> = fetched.token.into();
        *cached = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime - REFRESH_BEFORE.min(lifetime / 2),
        });
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        lifetime: Duration,
    }

    impl TokenProvider for Counting {
        fn token<'a>(&'a self, scope: &'a str) -> TokenFuture<'a> {
            Box::pin(async move {
                assert_eq!(scope, STORAGE_SCOPE);
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                // A slow provider, so that concurrent callers overlap.
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(AccessToken::new(
                    format!("token-{n}"),
                    SystemTime::now() + self.lifetime,
                ))
            })
        }
    }

    fn cache(lifetime: Duration) -> (Arc<Counting>, Arc<TokenCache>) {
        let provider = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime,
        });
        (provider.clone(), Arc::new(TokenCache::new(provider)))
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_fetch() {
        let (provider, cache) = cache(Duration::from_secs(3600));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.token().await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert_eq!(&*task.await.unwrap(), "token-1");
        }
        assert_eq!(provider.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_fetched_again_five_minutes_before_it_expires() {
        let (provider, cache) = cache(Duration::from_secs(3600));
        assert_eq!(&*cache.token().await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(3600 - 301)).await;
        assert_eq!(&*cache.token().await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(&*cache.token().await.unwrap(), "token-2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_lived_token_is_fetched_again_at_half_its_life() {
        let (provider, cache) = cache(Duration::from_secs(60));
        assert_eq!(&*cache.token().await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(&*cache.token().await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(&*cache.token().await.unwrap(), "token-2");
        assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
    }

    struct Expired;

    impl TokenProvider for Expired {
        fn token<'a>(&'a self, _scope: &'a str) -> TokenFuture<'a> {
            Box::pin(async {
                Ok(AccessToken::new(
                    "old",
                    SystemTime::now() - Duration::from_secs(1),
                ))
            })
        }
    }

    #[tokio::test]
    async fn an_expired_token_from_the_provider_is_an_error() {
        let cache = TokenCache::new(Arc::new(Expired));
        let e = cache.token().await.unwrap_err();
        assert!(
            matches!(e, AzureAuthError::NoToken { ref reason, .. } if reason.contains("expired")),
            "{e}"
        );
    }
}
