//! Errors, one enum per family: setting up ([`ConfigError`], [`ConnectError`]),
//! enqueuing ([`EnqueueError`]) and what a job's ticket resolves with
//! ([`JobError`]).

use std::time::Duration;

use crate::durability::{Durability, Reached};
use crate::JobId;

/// A setting that cannot work, found when a queue, producer or worker is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count or size that must be at least 1 was 0.
    #[error("{setting} must be at least 1, but it was 0")]
    Zero {
        /// The setting's builder method.
        setting: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("{setting} must be longer than zero")]
    ZeroDuration {
        /// The setting's builder method.
        setting: &'static str,
    },
    /// A name that goes into Redis key names has a character that would
    /// break them.
    #[error(
        "the {what} name {name:?} is empty or contains '{{', '}}', '#', a newline or a space; \
         use letters, digits, '-', '_', '.' or ':'"
    )]
    BadName {
        /// Which name: `queue` or `producer`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// The lease is too short for renewals to keep up.
    #[error(
        "the lease ({lease:?}) must be at least 3 times the block time of a claim \
         ({block:?}), or a worker waiting for jobs would let its leases lapse; \
         lengthen lease or shorten block_time"
    )]
    LeaseTooShort {
        /// The lease.
        lease: Duration,
        /// The claim's block time.
        block: Duration,
    },
    /// More shards than a queue may have.
    #[error(
        "a queue may have at most {max} shards, but {shards} were asked for; use about as \
         many shards as the cluster has masters (QueueBuilder::shards)"
    )]
    TooManyShards {
        /// The number asked for.
        shards: usize,
        /// The most allowed.
        max: usize,
    },
    /// A cluster builder was given no node URL.
    #[error(
        "no Redis Cluster node URL was given; pass at least one (redis://host:port) to \
         Queue::cluster_builder, or use Queue::builder for a single Redis"
    )]
    NoClusterNodes,
    /// The internal batcher refused its settings.
    #[error("the batching settings are invalid: {0}")]
    Batcher(#[from] baler::ConfigError),
}

/// Why a queue could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not a Redis URL.
    #[error("{url:?} is not a Redis URL ({source}); write it as redis://host:port, or rediss://host:port for TLS, with /db after it if needed")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// Nothing answered at the URL.
    #[error(
        "cannot reach Redis at {url} ({source}); check that redis-server is running there, \
         that host and port are right, and that no firewall is in the way"
    )]
    Unreachable {
        /// The URL given.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// A `rediss://` URL, but this build of baler-queue has no TLS.
    #[error("{url:?} asks for TLS, but baler-queue was built without its `tls` feature; enable it (it is on by default), or use a redis:// URL")]
    TlsNotEnabled {
        /// The URL given.
        url: String,
    },
    /// A `rediss://…#insecure` URL: the server's certificate unchecked.
    #[error("{url:?} asks to skip the server's certificate check (#insecure), which baler does not do; drop #insecure and trust the CA that signed the server's certificate instead (QueueBuilder::with_ca)")]
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
    /// A TLS connection that was never answered: most often a plain
    /// (non-TLS) port given as `rediss://`.
    #[error("the Redis server at {server} did not complete a TLS handshake in time; check that the port is Redis's tls-port (rediss:// is for a TLS port, redis:// for a plain one)")]
    TlsNoAnswer {
        /// The server, as host:port.
        server: String,
    },
    /// Redis answered but refused a setup command (an old version without
    /// streams, or a user without the rights).
    #[error("Redis at {url} refused to set up the queue ({source}); baler-queue needs Redis 7.0 or newer and a user allowed to run stream commands and scripts")]
    Refused {
        /// The URL given.
        url: String,
        /// What the Redis client said.
        source: redis::RedisError,
    },
    /// The server cannot give the [`Durability`] asked for.
    #[error("Redis at {url} cannot keep jobs {durability}: {reason}")]
    DurabilityUnsupported {
        /// The URL given.
        url: String,
        /// What was asked for.
        durability: Durability,
        /// Why not, and what to change.
        reason: String,
    },
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Why a job was not enqueued. Every variant hands the payload back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError<P> {
    /// The encoded payload is larger than the queue's maximum.
    #[error(
        "the job's payload is {size} bytes, above the queue's maximum of {max}; send a \
         reference to the data instead, or raise QueueBuilder::max_payload_bytes"
    )]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The maximum.
        max: usize,
        /// The payload, handed back.
        payload: P,
    },
    /// The payload could not be encoded.
    #[error("the job's payload could not be encoded: {message}")]
    Encode {
        /// What the codec said.
        message: String,
        /// The payload, handed back.
        payload: P,
    },
    /// The idempotency key is empty or has a newline (which the queue uses
    /// as a separator in Redis).
    #[error("the idempotency key {key:?} is empty or contains a newline; use a non-empty key without newlines")]
    InvalidKey {
        /// The key given.
        key: String,
        /// The payload, handed back.
        payload: P,
    },
    /// `try_enqueue` only: the producer already has its maximum of jobs
    /// outstanding.
    #[error(
        "the producer has {max} jobs outstanding, its maximum; await some tickets, use \
         enqueue (which waits), or raise ProducerBuilder::max_outstanding"
    )]
    Busy {
        /// The maximum.
        max: usize,
        /// The payload, handed back.
        payload: P,
    },
    /// `try_enqueue` only: the queue holds its maximum number of jobs.
    #[error(
        "the queue is full (QueueBuilder::max_length); add workers, use enqueue (which \
         waits for room), or raise the maximum"
    )]
    QueueFull {
        /// The payload, handed back.
        payload: P,
    },
    /// The producer is shutting down or was shut down.
    #[error("the producer is shut down; make a new one to enqueue more jobs")]
    Shutdown {
        /// The payload, handed back.
        payload: P,
    },
    /// Redis could not be reached for all of the producer's attempts, and
    /// the last attempt may or may not have added the job. Its id is known:
    /// [`Producer::reattach`](crate::Producer::reattach) waits for its result
    /// if it was added, and enqueuing it again with the same idempotency key
    /// cannot add it twice.
    #[error(
        "Redis did not confirm job {job_id} after {attempts} attempt(s) ({message}); it may \
         have been added: reattach to it, or enqueue again with an idempotency key"
    )]
    Unconfirmed {
        /// The job's id.
        job_id: JobId,
        /// How many times the producer tried.
        attempts: u32,
        /// The last error.
        message: String,
        /// The payload, handed back for a retry under an idempotency key.
        payload: P,
    },
    /// The job was added, but did not reach the copies that the queue's
    /// [`Durability`] asks for within its timeout: it may run, and
    /// [`Producer::reattach`](crate::Producer::reattach) waits for its
    /// result, but it could be lost with the server that holds it.
    #[error(
        "job {job_id} was added, but Redis confirmed it in {reached}, not {wanted}; it may \
         run (reattach to it for its result), but could be lost with its server: check the \
         replicas (INFO replication) and their links, or lengthen the timeout"
    )]
    NotDurable {
        /// The job's id.
        job_id: JobId,
        /// What the queue asks for.
        wanted: Durability,
        /// What was confirmed.
        reached: Reached,
        /// The payload, handed back.
        payload: P,
    },
}

impl<P> EnqueueError<P> {
    /// The payload, handed back.
    pub fn into_payload(self) -> P {
        match self {
            EnqueueError::TooLarge { payload, .. }
            | EnqueueError::Encode { payload, .. }
            | EnqueueError::Busy { payload, .. }
            | EnqueueError::InvalidKey { payload, .. }
            | EnqueueError::QueueFull { payload }
            | EnqueueError::Shutdown { payload }
            | EnqueueError::Unconfirmed { payload, .. }
            | EnqueueError::NotDurable { payload, .. } => payload,
        }
    }
}

/// Why a job has no output. A [`JobTicket`](crate::JobTicket) resolves with
/// exactly one of these, or with the output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// The handler failed the job for good, or it failed every attempt.
    #[error("job {job_id} failed after {attempts} attempt(s): {message}")]
    Failed {
        /// The job.
        job_id: JobId,
        /// How many times it ran.
        attempts: u32,
        /// The last error's message.
        message: String,
    },
    /// The job was moved to the dead-letter stream `{q}:dead`.
    #[error("job {job_id} was dead-lettered after {attempts} attempt(s): {reason}")]
    DeadLettered {
        /// The job.
        job_id: JobId,
        /// How many times it ran.
        attempts: u32,
        /// Why.
        reason: String,
    },
    /// The result arrived but is not the output type (producer and worker
    /// disagree on the types or the codec).
    #[error("the result of job {job_id} could not be decoded ({message}); producer and workers must agree on the output type and codec")]
    Undecodable {
        /// The job.
        job_id: JobId,
        /// What the codec said.
        message: String,
    },
    /// An idempotency key matched a job enqueued by another producer, which
    /// is the one that receives its result.
    #[error("the idempotency key matched job {job_id} of producer {producer:?}, which receives its result")]
    OtherProducer {
        /// The existing job.
        job_id: JobId,
        /// Its producer.
        producer: String,
    },
    /// The producer stopped before the result arrived. The result is kept in
    /// Redis: a producer of the same name can reattach to the job.
    #[error("the producer stopped before job {job_id} finished; a producer of the same name can reattach to it")]
    Shutdown {
        /// The job.
        job_id: JobId,
    },
}
