//! The queue handle: settings shared by producers and workers, the Redis
//! connection, stats and diagnosis.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Value};
use tokio::sync::broadcast;

use crate::codec::{Codec, Json};
use crate::conn::{Backend, ClusterNodes, Conn};
use crate::durability::Durability;
use crate::error::{ConfigError, ConnectError};
use crate::events::{QueueEvent, QueueEvents};
use crate::keys::{Keys, MAX_SHARDS};
use crate::observe::{ConsumerStats, QueueStats};
use crate::tls;

/// A job's id: made by the producer before the job is sent, unique across
/// producers and restarts (producer name, a random start nonce, a counter).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub(crate) String);

impl JobId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for JobId {
    fn from(id: String) -> Self {
        JobId(id)
    }
}

impl From<&str> for JobId {
    fn from(id: &str) -> Self {
        JobId(id.to_owned())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings every producer and worker of a queue share.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) lease: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_payload_bytes: usize,
    pub(crate) max_length: Option<u64>,
    pub(crate) idempotency_ttl: Duration,
    /// `None`: no resend markers (the default; see `resend_window`).
    pub(crate) resend_window: Option<Duration>,
    pub(crate) timeout: Duration,
    pub(crate) durability: Durability,
}

pub(crate) struct Shared<C> {
    pub(crate) url: String,
    pub(crate) name: String,
    /// The keys of each shard, in shard order (one for an unsharded queue).
    pub(crate) shards: Vec<Keys>,
    pub(crate) settings: Settings,
    pub(crate) backend: Backend,
    /// The connection every non-blocking command goes through.
    pub(crate) conn: Conn,
    pub(crate) codec: C,
    pub(crate) events: broadcast::Sender<QueueEvent>,
}

impl<C> Shared<C> {
    pub(crate) fn emit(&self, event: QueueEvent) {
        // No listener is not an error: events are for whoever cares.
        let _ = self.events.send(event);
    }

    /// A connection of its own, for a blocking read that must not hold up
    /// the shared connection's other commands (each blocking reader of each
    /// shard has one). `block` is added to the answer timeout.
    pub(crate) async fn blocking_connection(&self, block: Duration) -> Result<Conn, RedisError> {
        self.backend
            .connect(self.settings.timeout, self.settings.timeout + block)
            .await
    }

    /// The keys of shard `index` (shard 0 if there is no such shard, which
    /// the callers, holding indexes below the shard count, never ask for).
    pub(crate) fn keys(&self, index: usize) -> &Keys {
        &self.shards[index.min(self.shards.len() - 1)]
    }

    /// The most jobs one shard's stream may hold: the queue's bound spread
    /// over its shards (rounded up).
    pub(crate) fn shard_max_length(&self) -> Option<u64> {
        let n = self.shards.len() as u64;
        self.settings.max_length.map(|m| m.div_ceil(n.max(1)))
    }
}

/// Where a queue's Redis is.
#[derive(Debug, Clone)]
enum Target {
    /// One server, by its URL.
    Single(String),
    /// A Redis Cluster, by the URLs of some of its nodes.
    Cluster(Vec<String>),
}

/// Settings for a [`Queue`]; see [`Queue::builder`].
#[derive(Debug, Clone)]
pub struct QueueBuilder<C = Json> {
    target: Target,
    name: String,
    shards: usize,
    settings: Settings,
    codec: C,
    event_capacity: usize,
    /// PEM certificates of the CA(s) to trust instead of the system's.
    ca_pem: Option<Vec<u8>>,
}

impl QueueBuilder<Json> {
    fn new(target: Target, name: &str) -> Self {
        QueueBuilder {
            target,
            name: name.to_owned(),
            shards: 1,
            settings: Settings {
                lease: Duration::from_secs(30),
                max_deliveries: 5,
                max_attempts: 3,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(60),
                max_payload_bytes: 1 << 20,
                max_length: None,
                idempotency_ttl: Duration::from_secs(24 * 3600),
                resend_window: None,
                timeout: Duration::from_secs(2),
                durability: Durability::Applied,
            },
            codec: Json,
            event_capacity: 1024,
            ca_pem: None,
        }
    }
}

impl<C: Codec> QueueBuilder<C> {
    /// Splits the queue into `n` shards (default 1), each with keys of its
    /// own hash tag (see [`Keys`]), for a Redis Cluster: give it the number
    /// of masters, and each shard lives on a master of its own when the
    /// cluster's slots are split evenly (as `redis-cli --cluster create`
    /// does). Producers spread jobs over the shards (a job with an
    /// idempotency key always goes to the shard its key hashes to); workers
    /// claim from all of them. With one shard the keys are `{q}:…`, exactly
    /// as a queue that was never sharded.
    ///
    /// Every producer and worker of a queue must use the same number: the
    /// jobs of a shard nobody reads wait forever. [`max_length`](Self::max_length)
    /// is spread over the shards (each holds at most its share, rounded up).
    /// See the crate's docs, "Sharding on Redis Cluster", for what the loss
    /// of a master means for its shard.
    ///
    /// ```no_run
    /// use baler_queue::Queue;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let nodes = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"];
    /// let queue = Queue::cluster_builder(nodes, "mail").shards(3).build().await?;
    /// assert_eq!(queue.shards().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// How long a worker's claim on a job lasts without renewal (default
    /// 30 s). Live workers renew their claims every third of it; a job whose
    /// worker died is taken over by another once its lease has run out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How many times a job may be handed to a worker (default 5). A job
    /// reclaimed past this (it keeps killing its workers) is dead-lettered.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.settings.max_deliveries = n;
        self
    }

    /// How many times a job may run before a retryable failure is final
    /// (default 3).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n;
        self
    }

    /// The retry backoff: `base` doubled per attempt, at most `max`
    /// (default 1 s and 60 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.settings.backoff_base = base;
        self.settings.backoff_max = max;
        self
    }

    /// The largest encoded payload accepted (default 1 MiB). Larger ones are
    /// refused before they reach Redis.
    pub fn max_payload_bytes(mut self, n: usize) -> Self {
        self.settings.max_payload_bytes = n;
        self
    }

    /// The most jobs the jobs stream may hold, waiting or running (default:
    /// no bound). Enqueues past it wait (`enqueue`) or fail (`try_enqueue`).
    /// A bounded queue checks each job as it is added, so its producers send
    /// an entry per job, not bundles (see
    /// [`ProducerBuilder::bundles`](crate::ProducerBuilder::bundles)).
    pub fn max_length(mut self, n: u64) -> Self {
        self.settings.max_length = Some(n);
        self
    }

    /// How long an idempotency key is remembered (default 24 h).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.settings.idempotency_ttl = ttl;
        self
    }

    /// Remembers every job id without an idempotency key as added for
    /// `window`, so that an enqueue sent again after its reply was lost adds
    /// nothing twice. Off by default.
    ///
    /// Without it, a job whose enqueue reply was lost (the connection
    /// dropped during the call, and the producer sent the batch again) may
    /// be added twice and so run twice. Its ticket still resolves once, and
    /// the second result is deleted when it arrives. Jobs run at least once
    /// anyway (a worker that dies mid-job has its jobs run again), so most
    /// handlers already tolerate that. Where they do not, prefer an
    /// [idempotency key](crate::Job::idempotency_key), which also
    /// recognises a job enqueued twice by your own code.
    ///
    /// The price: each enqueue call becomes a script, and each job costs a
    /// small key for `window` plus one command. Keep `window` above the
    /// longest a producer retries
    /// ([`ProducerBuilder::redis_attempts`](crate::ProducerBuilder::redis_attempts)
    /// × up to 2 s each).
    pub fn resend_window(mut self, window: Duration) -> Self {
        self.settings.resend_window = Some(window);
        self
    }

    /// What a producer's jobs must reach before `enqueue` answers (default
    /// [`Durability::Applied`]): copied to replicas (`WAIT`) or written to
    /// the append-only files (`WAITAOF`, Redis 7.2+). See the
    /// [`durability`](crate::durability) module for what each Redis setting
    /// promises and what it does not.
    ///
    /// The wait runs on the queue's shared connection after each batch, so
    /// a slow replica holds up that connection's other commands for up to
    /// the timeout.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.settings.durability = durability;
        self
    }

    /// How long connecting and each Redis answer may take (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How many events a slow listener may fall behind before it misses some
    /// (default 1024).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Trusts the CA certificate(s) in `ca_pem` (PEM), instead of the
    /// system's trust store, for the server's certificate: for a Redis whose
    /// certificate a private CA signed. The URL must be `rediss://`; the
    /// file is checked by [`build`](Self::build).
    ///
    /// ```no_run
    /// use baler_queue::Queue;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let queue = Queue::builder("rediss://redis.internal:6380", "mail")
    ///     .with_ca(&ca)
    ///     .build()
    ///     .await?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn with_ca(mut self, ca_pem: &[u8]) -> Self {
        self.ca_pem = Some(ca_pem.to_vec());
        self
    }

    /// Uses `codec` for payloads and results instead of JSON.
    pub fn codec<D: Codec>(self, codec: D) -> QueueBuilder<D> {
        QueueBuilder {
            target: self.target,
            name: self.name,
            shards: self.shards,
            settings: self.settings,
            codec,
            event_capacity: self.event_capacity,
            ca_pem: self.ca_pem,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_name("queue", &self.name)?;
        let s = &self.settings;
        for (setting, d) in [
            ("lease", s.lease),
            ("backoff", s.backoff_base),
            ("idempotency_ttl", s.idempotency_ttl),
            (
                "resend_window",
                s.resend_window.unwrap_or(Duration::from_secs(1)),
            ),
            ("timeout", s.timeout),
            (
                "durability's timeout",
                s.durability.timeout().unwrap_or(Duration::from_secs(1)),
            ),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration { setting });
            }
        }
        for (setting, n) in [
            ("max_deliveries", u64::from(s.max_deliveries)),
            ("max_attempts", u64::from(s.max_attempts)),
            ("max_payload_bytes", s.max_payload_bytes as u64),
            ("max_length", s.max_length.unwrap_or(1)),
            ("event_capacity", self.event_capacity as u64),
            ("shards", self.shards as u64),
            (
                "durability's replicas",
                match s.durability {
                    Durability::Replicated { replicas, .. } => u64::from(replicas),
                    _ => 1,
                },
            ),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { setting });
            }
        }
        if self.shards > MAX_SHARDS {
            return Err(ConfigError::TooManyShards {
                shards: self.shards,
                max: MAX_SHARDS,
            });
        }
        if matches!(&self.target, Target::Cluster(urls) if urls.is_empty()) {
            return Err(ConfigError::NoClusterNodes);
        }
        Ok(())
    }

    /// The client for the target, and the URL(s) to name in errors.
    fn backend(&self) -> Result<(Backend, String), ConnectError> {
        let ca = self.ca_pem.as_deref();
        match &self.target {
            Target::Single(url) => Ok((Backend::Single(tls::client(url, ca)?), url.clone())),
            Target::Cluster(urls) => {
                // Each URL is checked as a single server's would be, for the
                // same errors (a bad URL, #insecure, a CA without TLS).
                for url in urls {
                    tls::client(url, ca)?;
                }
                let nodes = ClusterNodes {
                    urls: urls.clone(),
                    ca_pem: self.ca_pem.clone(),
                };
                let joined = urls.join(",");
                // Made here once to find what is wrong with the URLs early.
                let timeout = self.settings.timeout;
                nodes
                    .client(timeout, timeout)
                    .map_err(|source| ConnectError::InvalidUrl {
                        url: joined.clone(),
                        source,
                    })?;
                Ok((Backend::Cluster(nodes), joined))
            }
        }
    }

    /// Checks the settings, connects, and makes sure the jobs stream and its
    /// consumer group exist.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Unreachable`] (with the URL) when Redis does not
    /// answer, [`ConnectError::TlsHandshake`] or [`ConnectError::TlsNoAnswer`]
    /// when a `rediss://` connection fails in TLS,
    /// [`ConnectError::Config`] for a setting that cannot work, and the other
    /// variants for a URL or CA certificate that cannot work.
    pub async fn build(self) -> Result<Queue<C>, ConnectError> {
        self.validate()?;
        let (backend, url) = self.backend()?;
        let timeout = self.settings.timeout;
        let mut conn = backend.connect(timeout, timeout).await.map_err(|source| {
            let tls = match &backend {
                Backend::Single(client) => tls::handshake_failure(client, &source),
                Backend::Cluster(_) => None,
            };
            match tls {
                Some(tls) => tls,
                None => ConnectError::Unreachable {
                    url: url.clone(),
                    source,
                },
            }
        })?;
        let shards: Vec<Keys> = (0..self.shards)
            .map(|i| Keys::for_shard(&self.name, i, self.shards))
            .collect();
        for keys in &shards {
            // On a cluster, each shard's master is asked about itself.
            check_durability(&mut conn, keys.slot(), &url, &self.settings.durability).await?;
            let created: Result<Value, RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(keys.jobs())
                .arg(keys.group())
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            if let Err(source) = created {
                if source.code() != Some("BUSYGROUP") {
                    return Err(ConnectError::Refused { url, source });
                }
            }
        }
        let (events, _) = broadcast::channel(self.event_capacity);
        Ok(Queue {
            shared: Arc::new(Shared {
                url,
                name: self.name,
                shards,
                settings: self.settings,
                backend,
                conn,
                codec: self.codec,
                events,
            }),
        })
    }
}

/// Refuses a [`Durability::Persisted`] that the server cannot give: a
/// Redis older than 7.2 has no `WAITAOF`, and one without `appendonly`
/// has no file to wait for.
async fn check_durability(
    conn: &mut Conn,
    slot: u16,
    url: &str,
    durability: &Durability,
) -> Result<(), ConnectError> {
    if !matches!(durability, Durability::Persisted { .. }) {
        return Ok(());
    }
    let info: String = conn
        .query_at_slot(redis::cmd("INFO").arg("server").arg("persistence"), slot)
        .await
        .map_err(|source| ConnectError::Refused {
            url: url.to_owned(),
            source,
        })?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("")
            .to_owned()
    };
    let version = field("redis_version");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (7, 2) {
        return Err(ConnectError::DurabilityUnsupported {
            url: url.to_owned(),
            durability: *durability,
            reason: format!(
                "WAITAOF needs Redis 7.2 or newer, and this server is {version}; upgrade it, or \
                 ask for Durability::Replicated (WAIT) or Durability::Applied with \
                 appendfsync always"
            ),
        });
    }
    if field("aof_enabled") != "1" {
        return Err(ConnectError::DurabilityUnsupported {
            url: url.to_owned(),
            durability: *durability,
            reason: "the server writes no append-only file; set appendonly yes".into(),
        });
    }
    Ok(())
}

pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name
            .chars()
            .any(|c| matches!(c, '{' | '}' | '#' | '\n' | '\r' | ' ' | '\t'));
    if bad {
        return Err(ConfigError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// A durable queue on Redis Streams: the handle producers and workers are
/// made from. Cheap to clone.
///
/// ```no_run
/// use baler_queue::Queue;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = Queue::connect("redis://127.0.0.1:6379", "mail").await?;
/// println!("{:?}", queue.stats().await?);
/// # Ok(())
/// # }
/// ```
pub struct Queue<C = Json> {
    pub(crate) shared: Arc<Shared<C>>,
}

impl<C> Clone for Queue<C> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for Queue<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.name)
            .field("url", &self.shared.url)
            .finish()
    }
}

impl Queue<Json> {
    /// Settings for the queue `name` in the Redis at `url`:
    /// `redis://host:port`, or `rediss://host:port` for TLS (the server's
    /// `tls-port`), either with `/db` after it. See the crate's docs on TLS.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use baler_queue::Queue;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = Queue::builder("redis://127.0.0.1:6379", "mail")
    ///     .lease(Duration::from_secs(10))
    ///     .max_attempts(5)
    ///     .build()
    ///     .await?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(url: &str, name: &str) -> QueueBuilder<Json> {
        QueueBuilder::new(Target::Single(url.to_owned()), name)
    }

    /// Settings for the queue `name` in the Redis Cluster that the nodes at
    /// `urls` belong to (one is enough to find the others; give several in
    /// case one is down). The same settings as [`builder`](Self::builder),
    /// and [`QueueBuilder::shards`] to spread the queue over the cluster's
    /// masters. Commands go to the node that holds their keys, following
    /// the cluster as its slots move.
    ///
    /// ```no_run
    /// use baler_queue::Queue;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let queue = Queue::cluster_builder(
    ///     ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001", "redis://127.0.0.1:7002"],
    ///     "mail",
    /// )
    /// .shards(3)
    /// .build()
    /// .await?;
    /// # let _ = queue;
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster_builder<U: AsRef<str>>(
        urls: impl IntoIterator<Item = U>,
        name: &str,
    ) -> QueueBuilder<Json> {
        let urls = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        QueueBuilder::new(Target::Cluster(urls), name)
    }

    /// The queue `name` in the Redis at `url`, with default settings.
    ///
    /// # Errors
    ///
    /// As [`QueueBuilder::build`].
    pub async fn connect(url: &str, name: &str) -> Result<Queue<Json>, ConnectError> {
        Self::builder(url, name).build().await
    }
}

impl<C: Codec> Queue<C> {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The queue's key names (of its first shard: of the only one unless
    /// the queue is split; see [`shards`](Self::shards)).
    pub fn keys(&self) -> &Keys {
        self.shared.keys(0)
    }

    /// The key names of every shard, in shard order: one entry unless the
    /// queue was split with [`QueueBuilder::shards`].
    pub fn shards(&self) -> &[Keys] {
        &self.shared.shards
    }

    /// A listener for the queue's events (of the producers and workers made
    /// from this handle, in this process).
    pub fn events(&self) -> QueueEvents {
        QueueEvents::new(self.shared.events.subscribe())
    }

    /// The queue as Redis sees it now: lengths, pending claims, delayed and
    /// dead jobs, and every consumer with its idle time. For a split queue,
    /// the sums over its shards (a consumer's idle time is its shortest).
    ///
    /// # Errors
    ///
    /// The Redis error when it cannot be asked.
    pub async fn stats(&self) -> Result<QueueStats, RedisError> {
        let mut total = QueueStats {
            length: 0,
            pending: 0,
            waiting: 0,
            delayed: 0,
            dead: 0,
            consumers: Vec::new(),
        };
        for keys in &self.shared.shards {
            let shard = self.shard_stats(keys).await?;
            total.length += shard.length;
            total.pending += shard.pending;
            total.waiting += shard.waiting;
            total.delayed += shard.delayed;
            total.dead += shard.dead;
            // A worker is one consumer, of the same name, in every shard.
            for consumer in shard.consumers {
                match total.consumers.iter_mut().find(|c| c.name == consumer.name) {
                    Some(c) => {
                        c.pending += consumer.pending;
                        c.idle = c.idle.min(consumer.idle);
                    }
                    None => total.consumers.push(consumer),
                }
            }
        }
        Ok(total)
    }

    async fn shard_stats(&self, keys: &Keys) -> Result<QueueStats, RedisError> {
        let mut conn = self.shared.conn.clone();
        let (xlen, pending, delayed, dead, consumers, groups, bundled): (
            u64,
            Value,
            u64,
            u64,
            Value,
            Value,
            Option<i64>,
        ) = redis::pipe()
            .cmd("XLEN")
            .arg(keys.jobs())
            .cmd("XPENDING")
            .arg(keys.jobs())
            .arg(keys.group())
            .cmd("ZCARD")
            .arg(keys.delayed())
            .cmd("XLEN")
            .arg(keys.dead())
            .cmd("XINFO")
            .arg("CONSUMERS")
            .arg(keys.jobs())
            .arg(keys.group())
            .cmd("XINFO")
            .arg("GROUPS")
            .arg(keys.jobs())
            .cmd("GET")
            .arg(keys.bundled())
            .query_async(&mut conn)
            .await?;
        let pending = match pending {
            Value::Array(items) => items.first().and_then(as_u64).unwrap_or(0),
            _ => 0,
        };
        // Finished entries stay in the stream until a worker trims them, so
        // the stream's length overcounts; the group's lag (entries not yet
        // delivered) does not. Redis cannot give the lag after some
        // deletions, which baler never makes; then the length stands in.
        let lag = match groups {
            Value::Array(groups) => groups
                .iter()
                .map(pairs)
                .find(|g| {
                    g.iter()
                        .any(|(k, v)| k == "name" && as_string(v).as_deref() == Some(keys.group()))
                })
                .and_then(|g| g.into_iter().find(|(k, _)| k == "lag"))
                .and_then(|(_, v)| as_u64(&v)),
            _ => None,
        };
        let waiting = lag.unwrap_or_else(|| xlen.saturating_sub(pending));
        // A bundle is one entry for many jobs: the jobs beyond the first of
        // each unfinished bundle are counted apart.
        let bundled = bundled.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let length = waiting + pending + bundled;
        let mut list = Vec::new();
        if let Value::Array(consumers) = consumers {
            for consumer in consumers {
                let fields = pairs(&consumer);
                let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                list.push(ConsumerStats {
                    name: get("name").and_then(as_string).unwrap_or_default(),
                    pending: get("pending").and_then(as_u64).unwrap_or(0),
                    idle: Duration::from_millis(get("idle").and_then(as_u64).unwrap_or(0)),
                });
            }
        }
        Ok(QueueStats {
            length,
            pending,
            waiting,
            delayed,
            dead,
            consumers: list,
        })
    }

    /// Looks at [`stats`](Self::stats) for the signs of a stuck queue and
    /// says what they mean; see [`QueueDiagnosis`](crate::QueueDiagnosis).
    ///
    /// # Errors
    ///
    /// The Redis error when it cannot be asked.
    pub async fn diagnose(&self) -> Result<crate::QueueDiagnosis, RedisError> {
        let stats = self.stats().await?;
        Ok(crate::observe::diagnose(stats, self.shared.settings.lease))
    }
}

pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

/// A flat array or map of field/value pairs, as field names and values.
pub(crate) fn pairs(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((as_string(k)?, v.clone())),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, v.clone())))
            .collect(),
        _ => Vec::new(),
    }
}
