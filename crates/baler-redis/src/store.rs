//! The Redis lease store and its connection.

use std::time::Duration;

use baler::shared::{Acquired, Demand, LeaseFuture, LeaseStore, LeaseStoreError};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use tokio::sync::Mutex;

use crate::scripts::{ACQUIRE, ANNOUNCE, RELEASE, RENEW};
use crate::tls;

/// How long connecting and each answer may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a [`RedisLeaseStore`] could not be made, or (as the source of a
/// [`LeaseStoreError::Unreachable`]) why its TLS connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL is not a Redis URL.
    #[error("{url:?} is not a Redis URL ({source}); write it as redis://host:port, or rediss://host:port for TLS, with /db after it if needed")]
    InvalidUrl {
        /// The URL given (with any password in it).
        url: String,
        /// What the Redis client said.
        source: RedisError,
    },
    /// The name of the shared capacity was empty.
    #[error("the shared capacity's name is empty; give every capacity shared through one Redis its own name, such as the datastore's")]
    EmptyName,
    /// A `rediss://` URL, but this build has no TLS.
    #[error("{url:?} asks for TLS, but baler-redis was built without its `tls` feature; enable it (it is on by default), or use a redis:// URL")]
    TlsNotEnabled {
        /// The URL given.
        url: String,
    },
    /// A `rediss://…#insecure` URL: certificate checks off.
    #[error("{url:?} asks to skip the server's certificate check (#insecure), which baler does not do; drop #insecure and trust the CA that signed the server's certificate instead (RedisLeaseStore::with_ca)")]
    Insecure {
        /// The URL given.
        url: String,
    },
    /// A CA certificate was given for a URL that is not `rediss://`.
    #[error("a CA certificate was given for {url:?}, which does not use TLS; write it as rediss://host:port (Redis's tls-port), or give no CA")]
    CaWithoutTls {
        /// The URL given.
        url: String,
    },
    /// The CA certificate given is not a PEM certificate.
    #[error("the CA certificate given for {url:?} is not usable: {reason}; give the PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the Redis server's certificate")]
    InvalidCa {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS handshake with the server failed.
    #[error("the TLS handshake with the Redis server at {server} failed: {reason}; {hint}")]
    TlsHandshake {
        /// The server, as host:port.
        server: String,
        /// What the TLS library said.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// A TLS connection was not answered: most often a plain (non-TLS) port.
    #[error("the Redis server at {server} did not complete a TLS handshake in time; check that the port is Redis's tls-port (rediss:// is for a TLS port, redis:// for a plain one)")]
    TlsNoAnswer {
        /// The server, as host:port.
        server: String,
    },
}

/// A [`LeaseStore`] in Redis: partition `n` of the capacity named `name` is
/// the key `baler:{name}:partition:{n}`, and the instances' demands (for
/// sharing the partitions fairly) are the hash `baler:{name}:demand`.
///
/// Every instance sharing a capacity must use the same Redis and the same
/// name. The connection is multiplexed (the parallel calls of one round share
/// it) and made again after an error.
pub struct RedisLeaseStore {
    client: Client,
    prefix: String,
    demand_key: String,
    config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisLeaseStore {
    /// A store for the shared capacity `name` in the Redis at `url`. Nothing
    /// is connected until the first call.
    ///
    /// `url` is `redis://host:port` or, for TLS, `rediss://host:port` (the
    /// server's `tls-port`), either with `/db` after it. Over TLS the
    /// server's certificate must be signed by a CA in the system's trust
    /// store and name the host of the URL; for a private CA, use
    /// [`with_ca`](RedisLeaseStore::with_ca).
    pub fn new(url: &str, name: &str) -> Result<Self, RedisStoreError> {
        let client = open(url, name)?;
        Ok(Self::with_client(client, name))
    }

    /// A store like [`new`](RedisLeaseStore::new) over TLS, that trusts the
    /// CA certificate(s) in `ca_pem` (PEM) instead of the system's: for a
    /// Redis whose certificate a private CA signed. `url` must be
    /// `rediss://`.
    ///
    /// ```no_run
    /// use baler_redis::RedisLeaseStore;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let store = RedisLeaseStore::with_ca("rediss://redis.internal:6380", "orders-db", &ca)?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn with_ca(url: &str, name: &str, ca_pem: &[u8]) -> Result<Self, RedisStoreError> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};

        let client = open(url, name)?;
        if !matches!(
            client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            return Err(RedisStoreError::CaWithoutTls {
                url: url.to_owned(),
            });
        }
        let invalid = |reason: String| RedisStoreError::InvalidCa {
            url: url.to_owned(),
            reason,
        };
        // Checked here, where the error can name the file's problem; the
        // Redis client would only fail at the first connection.
        let mut certificates = 0;
        for certificate in CertificateDer::pem_slice_iter(ca_pem) {
            certificate.map_err(|e| invalid(e.to_string()))?;
            certificates += 1;
        }
        if certificates == 0 {
            return Err(invalid("it holds no PEM certificate".into()));
        }
        let client = Client::build_with_tls(
            client.get_connection_info().clone(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca_pem.to_vec()),
            },
        )
        .map_err(|e| invalid(e.to_string()))?;
        Ok(Self::with_client(client, name))
    }

    fn with_client(client: Client, name: &str) -> Self {
        RedisLeaseStore {
            client,
            prefix: format!("baler:{name}:partition:"),
            demand_key: format!("baler:{name}:demand"),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(DEFAULT_TIMEOUT))
                .set_response_timeout(Some(DEFAULT_TIMEOUT)),
            connection: Mutex::new(None),
        }
    }

    /// How long connecting, and then each answer, may take before the call
    /// fails as unreachable (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        self
    }

    /// The key of `partition`.
    pub fn key(&self, partition: u32) -> String {
        format!("{}{partition}", self.prefix)
    }

    /// Who holds `partition` now, by Redis, if anyone.
    pub async fn holder(&self, partition: u32) -> Result<Option<String>, LeaseStoreError> {
        let mut connection = self.connection().await?;
        let holder: Option<String> = redis::cmd("GET")
            .arg(self.key(partition))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(holder)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, LeaseStoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| match tls::handshake_failure(&self.client, &e) {
                Some(tls) => LeaseStoreError::Unreachable(Box::new(tls)),
                None => LeaseStoreError::Unreachable(Box::new(e)),
            })?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Maps a Redis error, and drops a connection that is broken so that the
    /// next call makes a new one.
    fn failed(&self, error: RedisError) -> LeaseStoreError {
        let broken = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || error.is_unrecoverable_error();
        if broken {
            if let Ok(mut slot) = self.connection.try_lock() {
                *slot = None;
            }
            LeaseStoreError::Unreachable(Box::new(error))
        } else {
            LeaseStoreError::Protocol(Box::new(error))
        }
    }

    async fn run(
        &self,
        script: &Script,
        partition: u32,
        owner: &str,
        lease_time: Option<Duration>,
    ) -> Result<i64, LeaseStoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.key(self.key(partition));
        invocation.arg(owner);
        if let Some(lease_time) = lease_time {
            // PX takes whole milliseconds, at least 1.
            let millis = u64::try_from(lease_time.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            invocation.arg(millis);
        }
        let done: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(done)
    }
}

/// The client for `url`, after the checks that need no connection.
fn open(url: &str, name: &str) -> Result<Client, RedisStoreError> {
    if name.is_empty() {
        return Err(RedisStoreError::EmptyName);
    }
    let tls = url.starts_with("rediss://") || url.starts_with("valkeys://");
    if tls && !cfg!(feature = "tls") {
        return Err(RedisStoreError::TlsNotEnabled {
            url: url.to_owned(),
        });
    }
    if tls && url.ends_with("#insecure") {
        return Err(RedisStoreError::Insecure {
            url: url.to_owned(),
        });
    }
    if tls {
        tls::ensure_crypto_provider();
    }
    Client::open(url).map_err(|source| RedisStoreError::InvalidUrl {
        url: url.to_owned(),
        source,
    })
}

impl LeaseStore for RedisLeaseStore {
    fn acquire<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, Acquired> {
        Box::pin(async move {
            let answer = self
                .run(&ACQUIRE, partition, owner, Some(lease_time))
                .await?;
            match u64::try_from(answer) {
                Err(_) => Ok(Acquired::Granted),
                Ok(left) => Ok(Acquired::Held {
                    expires_in: Some(Duration::from_millis(left)),
                }),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        partition: u32,
        owner: &'a str,
        lease_time: Duration,
    ) -> LeaseFuture<'a, bool> {
        Box::pin(
            async move { Ok(self.run(&RENEW, partition, owner, Some(lease_time)).await? == 1) },
        )
    }

    fn release<'a>(&'a self, partition: u32, owner: &'a str) -> LeaseFuture<'a, ()> {
        Box::pin(async move {
            self.run(&RELEASE, partition, owner, None).await?;
            Ok(())
        })
    }

    fn announce<'a>(
        &'a self,
        owner: &'a str,
        wanted: u32,
        ttl: Duration,
    ) -> LeaseFuture<'a, Option<Vec<Demand>>> {
        Box::pin(async move {
            let mut connection = self.connection().await?;
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let flat: Vec<String> = ANNOUNCE
                .key(&self.demand_key)
                .arg(owner)
                .arg(wanted)
                .arg(millis)
                .invoke_async(&mut connection)
                .await
                .map_err(|e| self.failed(e))?;
            let mut demands = Vec::with_capacity(flat.len() / 3);
            for entry in flat.chunks(3) {
                let [owner, wanted, left] = entry else {
                    return Err(LeaseStoreError::protocol(
                        "the demand list has an owner without a count or an expiry",
                    ));
                };
                let wanted = wanted.parse().map_err(|_| {
                    LeaseStoreError::protocol(format!("{owner}'s demand {wanted:?} is not a count"))
                })?;
                let left = left.parse().map_err(|_| {
                    LeaseStoreError::protocol(format!(
                        "{owner}'s demand expiry {left:?} is not a number of milliseconds"
                    ))
                })?;
                demands.push(
                    Demand::new(owner.clone(), wanted).expires_in(Duration::from_millis(left)),
                );
            }
            Ok(Some(demands))
        })
    }
}

impl std::fmt::Debug for RedisLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLeaseStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
