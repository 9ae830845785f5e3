//! The Azure Blob lease store: one zero-byte blob per partition, leased.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use baler::shared::{Acquired, Demand, LeaseFuture, LeaseStore, LeaseStoreError};
use reqwest::header::{HeaderMap, CONTENT_LENGTH};
use reqwest::{Client, Method, StatusCode};

use crate::account::{check_container, Account, Auth, AzureStoreError};
use crate::sign;
use crate::token::{AzureAuthError, TokenCache, TokenProvider};

/// The shortest lease the storage service grants.
pub const MIN_LEASE_TIME: Duration = Duration::from_secs(15);
/// The longest lease the storage service grants (but for infinite ones,
/// which a shared capacity has no use for).
pub const MAX_LEASE_TIME: Duration = Duration::from_secs(60);

/// How long each request may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The REST API version spoken.
const API_VERSION: &str = "2021-12-02";
/// The blob of partition `n` is `PARTITION_PREFIX{n}`.
const PARTITION_PREFIX: &str = "partition-";
/// The demand blob of an owner is `DEMAND_PREFIX{owner's lease id}`.
pub(crate) const DEMAND_PREFIX: &str = "demand-";

/// A [`LeaseStore`] in Azure Blob Storage: partition `n` of a shared
/// capacity is the zero-byte block blob `partition-{n}` in the capacity's own
/// container, and holding the partition is holding the blob's lease.
///
/// - **Provisioned on first use**: the container is created if it is
///   missing, and each partition's blob when it is first acquired (with
///   `If-None-Match: *`, so an existing blob, leased or not, is never
///   overwritten).
/// - **The service's clock**: a lease expires when the storage service says
///   so. Leases last 15 to 60 seconds
///   ([`lease_times`](LeaseStore::lease_times)); a lease time that is not a
///   whole number of seconds is rounded up, which only makes the lease
///   outlast what baler counts of it.
/// - **Lease ids from owner tokens**: each owner proposes the same GUID on
///   every acquire (a hash of its token), so acquiring a lease it already
///   holds succeeds and starts it again. Renewal restarts the lease for the
///   duration it was acquired with, as the service does: baler's lease task
///   always renews with the lease time it acquired with.
/// - **Demands** (for sharing the partitions fairly) are one blob per owner,
///   `demand-{lease id}`, whose metadata says how many partitions it wants and
///   for how long that holds; an announcement expires by the service's clock
///   (the blob's `Last-Modified` against the listing's `Date`). Both have a
///   resolution of one second.
///
/// Requests are signed with the account key (Shared Key), carry a shared
/// access signature, or a Microsoft Entra ID bearer token
/// ([`with_token_provider`](Self::with_token_provider)). Each is bounded by a
/// [`timeout`](Self::timeout); fetching a token, when one is due, by 30
/// seconds more, as identity endpoints are slower.
///
/// What a call returns:
///
/// - `acquire`: [`Acquired::Held`] when another owner holds the lease
///   (`409 LeaseAlreadyPresent`), without its expiry, which the service does
///   not tell; `renew`: `Ok(false)` when the lease is no
///   longer this owner's (another lease id, none, or no blob);
/// - [`LeaseStoreError::Unreachable`] when the service cannot be reached, does
///   not answer within the timeout, or answers that it is unavailable (a 5xx
///   status, such as `503 ServerBusy`);
/// - [`LeaseStoreError::Protocol`] for any other answer, with the service's
///   error code (`403 AuthenticationFailed` for a wrong key, say).
///
/// An announcement is two requests (the owner's demand blob written, the
/// demand blobs listed), made every renewal period, or every retry period
/// while an instance wants more than it holds.
///
/// ```
/// use baler::shared::LeaseStore;
/// use baler_azure::AzureLeaseStore;
///
/// # fn main() -> Result<(), baler_azure::AzureStoreError> {
/// let store = AzureLeaseStore::from_connection_string("UseDevelopmentStorage=true", "orders-db")?;
/// assert_eq!(store.blob_name(7), "partition-7");
/// let times = store.lease_times();
/// assert_eq!((times.start().as_secs(), times.end().as_secs()), (15, 60));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AzureLeaseStore {
    inner: Arc<Inner>,
    timeout: Duration,
}

struct Inner {
    account: Account,
    container: String,
    client: Client,
}

/// An answer of the storage service.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) code: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl AzureLeaseStore {
    /// A store for the shared capacity whose partitions are the blobs of
    /// `container`, in the account a connection string names:
    ///
    /// - `DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net`,
    ///   as the portal shows it;
    /// - with `BlobEndpoint=...` for another endpoint, such as a local
    ///   emulator's `http://127.0.0.1:10000/devstoreaccount1`;
    /// - `UseDevelopmentStorage=true` for the local emulator's development
    ///   account on its default port;
    /// - `BlobEndpoint=...;SharedAccessSignature=...` for a signature instead
    ///   of the account key (it must allow reading, writing and listing
    ///   blobs, and creating the container unless it exists).
    ///
    /// Nothing is sent until the first call. A malformed string, a key that
    /// is not base64, or a container name the service would refuse is an
    /// error naming the part to fix.
    pub fn from_connection_string(
        connection_string: &str,
        container: &str,
    ) -> Result<Self, AzureStoreError> {
        Self::with_account(
            Account::from_connection_string(connection_string)?,
            container,
        )
    }

    /// A store in the account `account` at its usual endpoint
    /// (`https://{account}.blob.core.windows.net`), signing requests with
    /// `key` (base64, as the portal shows it).
    pub fn with_shared_key(
        account: &str,
        key: &str,
        container: &str,
    ) -> Result<Self, AzureStoreError> {
        let endpoint = format!("https://{account}.blob.core.windows.net");
        Self::with_account(Account::shared_key(account, key, &endpoint)?, container)
    }

    /// A store at the blob endpoint `endpoint` (such as
    /// `https://acme.blob.core.windows.net`) whose requests carry the shared
    /// access signature `sas` (its query string, `sv=...&sig=...`).
    pub fn with_sas(endpoint: &str, sas: &str, container: &str) -> Result<Self, AzureStoreError> {
        Self::with_account(Account::sas(endpoint, sas)?, container)
    }

    /// A store at the blob endpoint `endpoint` (such as
    /// `https://acme.blob.core.windows.net`) whose requests carry a
    /// Microsoft Entra ID bearer token from `provider`, for accounts that
    /// allow no key.
    ///
    /// The store asks `provider` for [`STORAGE_SCOPE`](crate::STORAGE_SCOPE)
    /// when it first sends, keeps the token, and asks again shortly before it
    /// expires (once for all the requests waiting on it). The identity needs
    /// a data role on the container, such as Storage Blob Data Contributor.
    /// The endpoint must be `https://`: a token over plain HTTP is refused
    /// ([`AzureStoreError::BearerOverHttp`]), since anyone on the path could
    /// use it.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use baler_azure::{AccessToken, AzureLeaseStore, AzureStoreError, TokenFuture, TokenProvider};
    ///
    /// struct Fixed;
    /// impl TokenProvider for Fixed {
    ///     fn token<'a>(&'a self, _scope: &'a str) -> TokenFuture<'a> {
    ///         Box::pin(async { Ok(AccessToken::new("...", SystemTime::now() + Duration::from_secs(3600))) })
    ///     }
    /// }
    ///
    /// # fn main() -> Result<(), AzureStoreError> {
    /// let store = AzureLeaseStore::with_token_provider("https://acme.blob.core.windows.net", Fixed, "orders-db")?;
    /// # let _ = store;
    /// let refused = AzureLeaseStore::with_token_provider("http://127.0.0.1:10000/devstoreaccount1", Fixed, "orders-db");
    /// assert!(matches!(refused, Err(AzureStoreError::BearerOverHttp { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_token_provider(
        endpoint: &str,
        provider: impl TokenProvider,
        container: &str,
    ) -> Result<Self, AzureStoreError> {
        let cache = TokenCache::new(Arc::new(provider));
        Self::with_account(Account::bearer(endpoint, cache)?, container)
    }

    /// Trusts, besides the platform's certificate authorities, those in
    /// `pem` (PEM text), for an endpoint whose certificate a private
    /// authority signed (a local emulator over HTTPS, say).
    pub fn trust_certificates(self, pem: &[u8]) -> Result<Self, AzureStoreError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let invalid = |reason: String| AzureStoreError::InvalidCertificate { reason };
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(e.to_string()))?;
        if roots.is_empty() {
            return Err(invalid("no certificate was found in them".to_owned()));
        }
        let client = client(roots)?;
        Ok(AzureLeaseStore {
            inner: Arc::new(Inner {
                account: self.inner.account.clone(),
                container: self.inner.container.clone(),
                client,
            }),
            timeout: self.timeout,
        })
    }

    fn with_account(account: Account, container: &str) -> Result<Self, AzureStoreError> {
        check_container(container)?;
        Ok(AzureLeaseStore {
            inner: Arc::new(Inner {
                account,
                container: container.to_owned(),
                client: client(Vec::new())?,
            }),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long each request (connecting included) may take before the call
    /// fails as unreachable (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The container holding the partitions' blobs.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The name of `partition`'s blob.
    pub fn blob_name(&self, partition: u32) -> String {
        format!("{PARTITION_PREFIX}{partition}")
    }

    /// The lease id that `owner` proposes: a GUID made from a hash of its
    /// token, the same on every call.
    pub fn lease_id(owner: &str) -> String {
        sign::lease_id(owner)
    }

    /// Whether `partition`'s blob is leased now, by the service (`false` if
    /// it does not exist yet).
    pub async fn is_leased(&self, partition: u32) -> Result<bool, LeaseStoreError> {
        let blob = self.blob_name(partition);
        let reply = self.send(Method::HEAD, Some(&blob), &[], &[]).await?;
        match reply.status {
            StatusCode::OK => Ok(reply.header("x-ms-lease-state") == Some("leased")),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected("reading a partition's lease", &reply)),
        }
    }

    /// Sends one request to the container (`blob` None) or one of its blobs.
    pub(crate) async fn send(
        &self,
        method: Method,
        blob: Option<&str>,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Result<Reply, LeaseStoreError> {
        let inner = &*self.inner;
        let mut url = format!("{}/{}", inner.account.endpoint, inner.container);
        if let Some(blob) = blob {
            url.push('/');
            url.push_str(blob);
        }
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(n, v)| format!("{n}={}", encode(v)))
            .collect();
        if let Auth::Sas(sas) = &inner.account.auth {
            pairs.push(sas.clone());
        }
        if !pairs.is_empty() {
            url.push('?');
            url.push_str(&pairs.join("&"));
        }
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| LeaseStoreError::protocol(format!("the blob URL is invalid: {e}")))?;
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut headers: Vec<(&str, &str)> =
            vec![("x-ms-date", &date), ("x-ms-version", API_VERSION)];
        headers.extend_from_slice(extra);
        if method == Method::PUT || method == Method::DELETE {
            headers.push((CONTENT_LENGTH.as_str(), "0"));
        }
        let mut request = inner
            .client
            .request(method.clone(), parsed.clone())
            .timeout(self.timeout);
        for (name, value) in &headers {
            request = request.header(*name, *value);
        }
        match &inner.account.auth {
            Auth::SharedKey { account, key } => {
                let to_sign =
                    sign::string_to_sign(method.as_str(), account, parsed.path(), query, &headers);
                request =
                    request.header("authorization", sign::authorization(account, key, &to_sign));
            }
            Auth::Bearer(cache) => {
                let token = cache
                    .token()
                    .await
                    .map_err(|e| LeaseStoreError::Protocol(Box::new(e)))?;
                request = request.header("authorization", format!("Bearer {token}"));
            }
            Auth::Sas(_) => {}
        }
        let failed = |e: reqwest::Error| {
            LeaseStoreError::Unreachable(
                format!("{method} {}: {}", redacted(&parsed), e.without_url()).into(),
            )
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(failed)?;
        let code = headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| xml_value(&body, "Code").map(str::to_owned))
            .unwrap_or_default();
        let reply = Reply {
            status,
            code,
            headers,
            body,
        };
        if let (Auth::Bearer(cache), true) = (
            &inner.account.auth,
            status == StatusCode::UNAUTHORIZED
                || (status == StatusCode::FORBIDDEN
                    && matches!(
                        reply.code.as_str(),
                        "AuthenticationFailed" | "InvalidAuthenticationInfo"
                    )),
        ) {
            cache.forget();
            return Err(LeaseStoreError::Protocol(Box::new(
                AzureAuthError::Refused {
                    status: status.as_u16(),
                    code: reply.code.clone(),
                    message: service_message(&reply),
                    detail: xml_value(&reply.body, "AuthenticationErrorDetail")
                        .or_else(|| reply.header("www-authenticate"))
                        .map(|d| format!(": {}", d.trim().trim_end_matches('.')))
                        .unwrap_or_default(),
                },
            )));
        }
        if status.is_server_error() {
            return Err(LeaseStoreError::Unreachable(
                format!(
                    "{method} {}: the storage service is unavailable ({} {})",
                    redacted(&parsed),
                    status.as_u16(),
                    reply.code
                )
                .into(),
            ));
        }
        Ok(reply)
    }

    /// Creates the container unless it exists.
    pub(crate) async fn create_container(&self) -> Result<(), LeaseStoreError> {
        let reply = self
            .send(Method::PUT, None, &[("restype", "container")], &[])
            .await?;
        match (reply.status, reply.code.as_str()) {
            (StatusCode::CREATED, _) | (StatusCode::CONFLICT, "ContainerAlreadyExists") => Ok(()),
            _ => Err(unexpected("creating the container", &reply)),
        }
    }

    /// Creates a zero-byte block blob unless one of that name exists (leased
    /// or not: it is never overwritten), and the container first if needed.
    async fn create_blob(
        &self,
        blob: &str,
        metadata: &[(&str, &str)],
    ) -> Result<(), LeaseStoreError> {
        let mut headers = vec![("x-ms-blob-type", "BlockBlob"), ("if-none-match", "*")];
        headers.extend_from_slice(metadata);
        for _ in 0..2 {
            let reply = self.send(Method::PUT, Some(blob), &[], &headers).await?;
            match (reply.status, reply.code.as_str()) {
                (StatusCode::CREATED, _)
                | (StatusCode::CONFLICT, _)
                | (StatusCode::PRECONDITION_FAILED, _) => return Ok(()),
                (StatusCode::NOT_FOUND, "ContainerNotFound") => self.create_container().await?,
                _ => return Err(unexpected("creating a partition's blob", &reply)),
            }
        }
        Err(LeaseStoreError::protocol(
            "the container was created, but the storage service still says it is not found",
        ))
    }

    async fn lease(
        &self,
        partition: u32,
        action: &'static str,
        owner: &str,
        lease_time: Option<Duration>,
    ) -> Result<Reply, LeaseStoreError> {
        let blob = self.blob_name(partition);
        let id = sign::lease_id(owner);
        let seconds;
        let mut headers = vec![("x-ms-lease-action", action)];
        if action == "acquire" {
            headers.push(("x-ms-proposed-lease-id", &id));
            seconds = whole_seconds(lease_time.unwrap_or(MIN_LEASE_TIME)).to_string();
            headers.push(("x-ms-lease-duration", &seconds));
        } else {
            headers.push(("x-ms-lease-id", &id));
        }
        self.send(Method::PUT, Some(&blob), &[("comp", "lease")], &headers)
            .await
    }

    async fn acquire_lease(
        &self,
        partition: u32,
        owner: &str,
        lease_time: Duration,
    ) -> Result<Acquired, LeaseStoreError> {
        // At most: the blob is missing, then the container too.
        for _ in 0..3 {
            let reply = self
                .lease(partition, "acquire", owner, Some(lease_time))
                .await?;
            match (reply.status, reply.code.as_str()) {
                (StatusCode::CREATED | StatusCode::OK, _) => return Ok(Acquired::Granted),
                (StatusCode::CONFLICT, code) if code.starts_with("Lease") => {
                    return Ok(Acquired::Held { expires_in: None })
                }
                (StatusCode::NOT_FOUND, "BlobNotFound") => {
                    self.create_blob(&self.blob_name(partition), &[]).await?
                }
                (StatusCode::NOT_FOUND, "ContainerNotFound") => {
                    self.create_container().await?;
                    self.create_blob(&self.blob_name(partition), &[]).await?;
                }
                _ => return Err(unexpected("acquiring a partition's lease", &reply)),
            }
        }
        Err(LeaseStoreError::protocol(
            "the partition's blob was created, but the storage service still says it is not found",
        ))
    }

    async fn renew_lease(&self, partition: u32, owner: &str) -> Result<bool, LeaseStoreError> {
        let reply = self.lease(partition, "renew", owner, None).await?;
        match (reply.status, reply.code.as_str()) {
            (StatusCode::OK, _) => Ok(true),
            // Another owner's lease, none, a broken one, or no blob at all.
            (StatusCode::CONFLICT, code) if code.starts_with("Lease") => Ok(false),
            (StatusCode::NOT_FOUND, "BlobNotFound" | "ContainerNotFound") => Ok(false),
            _ => Err(unexpected("renewing a partition's lease", &reply)),
        }
    }

    async fn release_lease(&self, partition: u32, owner: &str) -> Result<(), LeaseStoreError> {
        let reply = self.lease(partition, "release", owner, None).await?;
        match (reply.status, reply.code.as_str()) {
            (StatusCode::OK, _) => Ok(()),
            (StatusCode::CONFLICT, code) if code.starts_with("Lease") => Ok(()),
            (StatusCode::NOT_FOUND, "BlobNotFound" | "ContainerNotFound") => Ok(()),
            _ => Err(unexpected("releasing a partition's lease", &reply)),
        }
    }
}

impl LeaseStore for AzureLeaseStore {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(self.acquire_lease(partition, owner, lease_time))
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        _lease_time: Duration,
    ) -> LeaseFuture<'a, bool> {
        Box::pin(self.renew_lease(partition, owner))
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(self.release_lease(partition, owner))
    }

    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        Box::pin(async move {
            crate::demand::announce(self, owner, wanted, ttl)
                .await
                .map(Some)
        })
    }

    fn lease_times(&self) -> RangeInclusive<Duration> {
        MIN_LEASE_TIME..=MAX_LEASE_TIME
    }
}

impl std::fmt::Debug for AzureLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLeaseStore")
            .field("endpoint", &self.inner.account.endpoint)
            .field("container", &self.inner.container)
            .field("auth", &self.inner.account.auth)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A lease time in whole seconds, rounded up.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An answer that no call expects, as a protocol error naming the service's
/// error code.
pub(crate) fn unexpected(what: &str, reply: &Reply) -> LeaseStoreError {
    let hint = match (reply.status, reply.code.as_str()) {
        // Only for a token: a wrong key is AuthorizationFailure on the emulator.
        (StatusCode::FORBIDDEN, "AuthorizationPermissionMismatch") => {
            "; the identity is known but may not do this: give it a data role on the container, \
             such as Storage Blob Data Contributor (roles take a few minutes to apply)"
        }
        (StatusCode::FORBIDDEN, _) => {
            "; check the account name and key (or the signature and what it allows), and that \
             this machine's clock is right"
        }
        (StatusCode::BAD_REQUEST, "InvalidHeaderValue" | "UnsupportedHeader") => {
            "; check that the service supports API version 2021-12-02"
        }
        _ => "",
    };
    let message = service_message(reply);
    LeaseStoreError::protocol(format!(
        "{what}: the storage service answered {} {}{message}{hint}",
        reply.status.as_u16(),
        if reply.code.is_empty() {
            "(no error code)"
        } else {
            &reply.code
        },
    ))
}

/// The first line of the service's message, after `: `, or nothing.
fn service_message(reply: &Reply) -> String {
    xml_value(&reply.body, "Message")
        .map(|m| {
            let first = m.lines().next().unwrap_or_default();
            format!(": {}", first.trim().trim_end_matches('.'))
        })
        .unwrap_or_default()
}

/// The HTTP client: rustls with the platform's authorities and `extra`.
fn client(
    extra: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Client, AzureStoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| AzureStoreError::Client(Box::new(e)))?,
    );
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AzureStoreError::Client(Box::new(e)))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(DEFAULT_TIMEOUT)
        .build()
        .map_err(|e| AzureStoreError::Client(Box::new(e)))
}

/// The URL without its query, where a signature would be.
fn redacted(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.to_string()
}

/// A query value, percent-encoded.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The text of the first `<tag>` element of `xml`.
pub(crate) fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(&xml[start..start + len])
}
