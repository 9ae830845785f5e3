//! The Redis lease store and its connection.

use std::time::Duration;

use baler::shared::{Acquired, Demand, LeaseFuture, LeaseStore, LeaseStoreError};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script};
use tokio::sync::Mutex;

use crate::scripts::{ACQUIRE, ANNOUNCE, RELEASE, RENEW};

/// How long connecting and each answer may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a [`RedisLeaseStore`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// The URL is not a Redis URL.
    #[error("{url:?} is not a Redis URL ({source}); write it as redis://host:port or redis://host:port/db")]
    InvalidUrl {
        /// The URL given (with any password in it).
        url: String,
        /// What the Redis client said.
        source: RedisError,
    },
    /// The name of the shared capacity was empty.
    #[error("the shared capacity's name is empty; give every capacity shared through one Redis its own name, such as the datastore's")]
    EmptyName,
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
    pub fn new(url: &str, name: &str) -> Result<Self, RedisStoreError> {
        if name.is_empty() {
            return Err(RedisStoreError::EmptyName);
        }
        let client = Client::open(url).map_err(|source| RedisStoreError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        Ok(RedisLeaseStore {
            client,
            prefix: format!("baler:{name}:partition:"),
            demand_key: format!("baler:{name}:demand"),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(DEFAULT_TIMEOUT))
                .set_response_timeout(Some(DEFAULT_TIMEOUT)),
            connection: Mutex::new(None),
        })
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
            .map_err(|e| LeaseStoreError::Unreachable(Box::new(e)))?;
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
