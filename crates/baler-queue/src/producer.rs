//! Producers: enqueue jobs in batches, and receive their results from a
//! results stream of their own.
//!
//! A producer registers a job's ticket before the job is sent, so a worker
//! that finishes at once still finds someone waiting; and a result is an
//! entry in `{q}:res:<producer>`, which stays there until this producer has
//! resolved the ticket and deleted it. Nothing is published and forgotten.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use baler::{Batch, Batcher, Dispatch, Handler, HandlerResult, Outcome};
use redis::{RedisError, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::bundle;
use crate::codec::{Codec, Json};
use crate::durability::Reached;
use crate::error::{ConfigError, EnqueueError, JobError};
use crate::events::QueueEvent;
use crate::keys::shard_of_key;
use crate::observe;
use crate::queue::{as_bytes, as_string, check_name, Queue, Shared};
use crate::scripts::{BUNDLE, ENQUEUE};
use crate::JobId;

/// A job to enqueue: a payload and, optionally, an idempotency key. A plain
/// payload converts into a job without a key.
///
/// ```
/// use baler_queue::Job;
///
/// let job = Job::new("welcome mail for 42").idempotency_key("welcome-42");
/// # let _ = job;
/// ```
#[derive(Debug, Clone)]
pub struct Job<P> {
    payload: P,
    key: Option<String>,
}

impl<P> Job<P> {
    /// A job without an idempotency key.
    pub fn new(payload: P) -> Self {
        Job { payload, key: None }
    }

    /// While `key` is remembered (see
    /// [`QueueBuilder::idempotency_ttl`](crate::QueueBuilder::idempotency_ttl)),
    /// enqueuing another job with the same key adds nothing and hands back a
    /// ticket for the first job: one that resolves with the first job's
    /// result, which is kept with the key once the job has finished. While
    /// the first job still runs, only a producer of the same name can wait
    /// for it; another one gets [`JobError::OtherProducer`].
    ///
    /// The key must be non-empty and free of newlines.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl<P> From<P> for Job<P> {
    fn from(payload: P) -> Self {
        Job::new(payload)
    }
}

/// A job's result as stored in the results stream, before decoding.
#[derive(Debug, Clone)]
struct RawResult {
    /// The results stream entry it came in; none for a result read from an
    /// idempotency key's marker.
    entry: Option<Arc<ResultEntry>>,
    status: String,
    attempts: u32,
    data: Vec<u8>,
}

/// An entry of a results stream: one result, or a bundle of them (see
/// [`crate::bundle`]). It is deleted once every result in it has been
/// delivered (or found to be a second copy); one kept as unclaimed keeps
/// its entry in Redis until it is taken, so that the next start of this
/// producer finds it again if this one stops first.
#[derive(Debug)]
struct ResultEntry {
    shard: usize,
    id: String,
    /// Results in it not yet delivered.
    left: AtomicUsize,
}

impl ResultEntry {
    /// One of its results is done with; answers the entry to delete once
    /// none is left.
    fn release(&self) -> Option<(usize, String)> {
        (self.left.fetch_sub(1, Ordering::AcqRel) == 1).then(|| (self.shard, self.id.clone()))
    }
}

/// The entries whose last result `raws` held.
fn release_all<'a>(raws: impl IntoIterator<Item = &'a RawResult>) -> Vec<(usize, String)> {
    raws.into_iter()
        .filter_map(|r| r.entry.as_ref()?.release())
        .collect()
}

fn decode<O: DeserializeOwned, C: Codec>(
    codec: &C,
    id: &JobId,
    raw: &RawResult,
) -> Result<O, JobError> {
    let text = || String::from_utf8_lossy(&raw.data).into_owned();
    match raw.status.as_str() {
        "ok" => codec
            .decode(&raw.data)
            .map_err(|message| JobError::Undecodable {
                job_id: id.clone(),
                message,
            }),
        "dead" => Err(JobError::DeadLettered {
            job_id: id.clone(),
            attempts: raw.attempts,
            reason: text(),
        }),
        _ => Err(JobError::Failed {
            job_id: id.clone(),
            attempts: raw.attempts,
            message: text(),
        }),
    }
}

struct Waiter<O> {
    tx: oneshot::Sender<Result<O, JobError>>,
    /// The id it was registered under (it moves when an idempotency key
    /// turns out to name an earlier job), to find it again.
    origin: JobId,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The producer's whole bookkeeping of results: who waits for which job, and
/// results nobody waits for. One lock, so that a result and a reattach can
/// never pass each other.
struct Book<O> {
    waiting: Waiting<O>,
    unclaimed: VecDeque<(JobId, RawResult)>,
    /// Jobs of this run whose enqueue failed although they may have been
    /// added ([`EnqueueError::Unconfirmed`], [`EnqueueError::NotDurable`]).
    orphans: HashSet<JobId>,
}

/// Who waits for which job, with their number kept as they come and go
/// (the outstanding gauge reads it after every enqueue: summing over a map
/// of a million jobs each time would cost more than the enqueue).
struct Waiting<O> {
    map: HashMap<JobId, Vec<Waiter<O>>>,
    count: usize,
}

impl<O> Default for Waiting<O> {
    fn default() -> Self {
        Waiting {
            map: HashMap::new(),
            count: 0,
        }
    }
}

impl<O> Waiting<O> {
    fn push(&mut self, id: JobId, waiter: Waiter<O>) {
        self.map.entry(id).or_default().push(waiter);
        self.count += 1;
    }

    fn remove(&mut self, id: &JobId) -> Option<Vec<Waiter<O>>> {
        let waiters = self.map.remove(id)?;
        self.count -= waiters.len();
        Some(waiters)
    }

    /// The waiter registered under `origin`, out of those of `id`.
    fn take(&mut self, id: &JobId, origin: &JobId) -> Option<Waiter<O>> {
        let waiters = self.map.get_mut(id)?;
        let at = waiters.iter().position(|w| w.origin == *origin)?;
        let waiter = waiters.remove(at);
        if waiters.is_empty() {
            self.map.remove(id);
        }
        self.count -= 1;
        Some(waiter)
    }

    fn drain(&mut self) -> Vec<(JobId, Vec<Waiter<O>>)> {
        self.count = 0;
        self.map.drain().collect()
    }
}

struct Results<O, C> {
    shared: Arc<Shared<C>>,
    producer: String,
    /// The prefix of the job ids this run of the producer makes
    /// (`<name>-<nonce>-`). A result for one of them that nobody waits for
    /// is a second copy of a job already resolved (added twice after a lost
    /// reply): it is deleted, not kept as unclaimed.
    own: String,
    book: Mutex<Book<O>>,
    max_unclaimed: usize,
    /// Woken whenever a ticket resolves, for shutdown to wait on.
    resolved: Notify,
    /// Delivered results not yet deleted from Redis.
    deletions: Mutex<Deletions>,
}

impl<O: DeserializeOwned + Send + 'static, C: Codec> Results<O, C> {
    fn book(&self) -> MutexGuard<'_, Book<O>> {
        // A panic while holding the lock cannot leave the map half-updated
        // in a way that matters more than losing the producer: go on.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deletions(&self) -> MutexGuard<'_, Deletions> {
        self.deletions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn outstanding(&self) -> usize {
        self.book().waiting.count
    }

    /// Delivers what one read brought; answers the entry ids that may be
    /// deleted.
    fn deliver(&self, results: Vec<(JobId, RawResult)>) -> Vec<(usize, String)> {
        let mut done = Vec::new();
        let mut book = self.book();
        for (id, raw) in results {
            match book.waiting.remove(&id) {
                Some(waiters) => {
                    for w in waiters {
                        let _ = w.tx.send(decode(&self.shared.codec, &id, &raw));
                    }
                    let status = match raw.status.as_str() {
                        "ok" => "ok",
                        "dead" => "dead",
                        _ => "failed",
                    };
                    observe::count_status(
                        "baler_queue_results_total",
                        &self.shared.name,
                        status,
                        1,
                    );
                    done.extend(release_all([&raw]));
                }
                None if id.as_str().starts_with(&self.own) && !book.orphans.remove(&id) => {
                    observe::count("baler_queue_duplicate_results_total", &self.shared.name, 1);
                    done.extend(release_all([&raw]));
                }
                None => {
                    // Kept in Redis: if it falls out of memory here, the
                    // next start of this producer reads it again.
                    if book.unclaimed.len() >= self.max_unclaimed {
                        book.unclaimed.pop_front();
                    }
                    book.unclaimed.push_back((id, raw));
                }
            }
        }
        drop(book);
        self.resolved.notify_waiters();
        done
    }

    /// Deletes delivered results: one `XDEL` per shard they are on.
    async fn delete(&self, entries: Vec<(usize, String)>) {
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); self.shared.shards.len()];
        for (shard, entry) in entries {
            if let Some(list) = by_shard.get_mut(shard) {
                list.push(entry);
            }
        }
        for (shard, entries) in by_shard.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let mut conn = self.shared.conn.clone();
            let key = self.shared.keys(shard).results(&self.producer);
            // A failed delete leaves a result that was already delivered; the
            // next start of this producer finds no ticket for it and reports it
            // as unclaimed, which is harmless, so one try is enough.
            let _: Result<Value, RedisError> = redis::cmd("XDEL")
                .arg(&key)
                .arg(&entries)
                .query_async(&mut conn)
                .await;
        }
    }
}

/// Reads one shard's results stream for ever: each shard has a reader (and
/// a blocking connection) of its own, so that a shard whose node is away
/// holds up no other shard's results.
async fn read_results<O: DeserializeOwned + Send + 'static, C: Codec>(
    results: Arc<Results<O, C>>,
    shard: usize,
    block: Duration,
) {
    let key = results.shared.keys(shard).results(&results.producer);
    let mut cursor = String::from("0-0");
    let mut conn = None;
    let mut pause = Duration::from_millis(50);
    loop {
        if conn.is_none() {
            match results.shared.blocking_connection(block).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "results reader cannot connect; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let read: Result<Value, RedisError> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&cursor)
            .query_async(c)
            .await;
        let value = match read {
            Ok(Value::Nil) => {
                // Nothing came within the block time: a quiet moment to
                // delete what is due.
                let due = results.deletions().take();
                results.delete(due).await;
                pause = Duration::from_millis(50);
                continue;
            }
            Ok(v) => {
                pause = Duration::from_millis(50);
                v
            }
            Err(e) => {
                tracing::warn!(error = %e, "results reader failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let entries = stream_entries(value);
        if let Some((last, _)) = entries.last() {
            cursor = last.clone();
        }
        let mut parsed = Vec::with_capacity(entries.len());
        for (entry, fields) in entries {
            match parse_results(shard, entry, fields) {
                Ok(found) => parsed.extend(found),
                Err(message) => {
                    // Not written by a baler-queue worker: left in place,
                    // for whoever wrote it to look at.
                    tracing::warn!(%message, stream = %key, "a results entry could not be read; it is left in the stream");
                }
            }
        }
        let done = results.deliver(parsed);
        let due = results.deletions().add(done);
        if let Some(due) = due {
            results.delete(due).await;
        }
    }
}

/// The results one entry of a results stream holds: a plain one (`id`, `s`,
/// `a`, `r`) or a bundle (see [`crate::bundle`]).
fn parse_results(
    shard: usize,
    entry: String,
    fields: Vec<(String, Value)>,
) -> Result<Vec<(JobId, RawResult)>, String> {
    let mut fields: HashMap<String, Value> = fields.into_iter().collect();
    let mut take = |n: &str| match fields.remove(n) {
        Some(Value::BulkString(b)) => Ok(b),
        Some(other) => as_bytes(&other).ok_or_else(|| format!("its field {n} is not a string")),
        None => Err(format!("it has no field {n}")),
    };
    let Ok(count) = take("n") else {
        let id = take("id")?;
        let raw = RawResult {
            entry: Some(Arc::new(ResultEntry {
                shard,
                id: entry,
                left: AtomicUsize::new(1),
            })),
            status: String::from_utf8_lossy(&take("s").unwrap_or_default()).into_owned(),
            attempts: parse_attempts(&take("a").unwrap_or_default()),
            data: take("r").unwrap_or_default(),
        };
        return Ok(vec![(
            JobId(String::from_utf8_lossy(&id).into_owned()),
            raw,
        )]);
    };
    let n = bundle::count(&count)?;
    let (ids, statuses, attempts, lengths, data) =
        (take("ids")?, take("s")?, take("a")?, take("l")?, take("r")?);
    let ids = bundle::split(&ids, b'\n', n)?;
    let statuses = bundle::split(&statuses, b'\n', n)?;
    let attempts = bundle::split(&attempts, b',', n)?;
    let data = bundle::frames(&lengths, &data, n)?;
    let shared = Arc::new(ResultEntry {
        shard,
        id: entry,
        left: AtomicUsize::new(n),
    });
    Ok((0..n)
        .map(|i| {
            let raw = RawResult {
                entry: Some(shared.clone()),
                status: String::from_utf8_lossy(statuses[i]).into_owned(),
                attempts: parse_attempts(attempts[i]),
                data: data[i].to_vec(),
            };
            (JobId(String::from_utf8_lossy(ids[i]).into_owned()), raw)
        })
        .collect())
}

fn parse_attempts(text: &[u8]) -> u32 {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Result entries already delivered, waiting to be deleted in one `XDEL`.
///
/// Deleting after every read would cost one command per read, which is one
/// per job when jobs come one at a time. They are deleted together once
/// [`DELETE_EVERY`] have gathered, or [`DELETE_AFTER`] has passed since the
/// first of them, or the stream is quiet, or the producer shuts down.
/// A producer killed before that leaves them in Redis: its next start
/// reads them again, finds no ticket for them and keeps them as unclaimed
/// (see [`Producer::take_unclaimed`]), so a crash can deliver a result a
/// second time, never lose one.
#[derive(Default)]
struct Deletions {
    /// Each with its shard.
    entries: Vec<(usize, String)>,
    since: Option<tokio::time::Instant>,
}

/// How many delivered results are deleted in one `XDEL` at most.
const DELETE_EVERY: usize = 500;
/// How long a delivered result may wait in Redis to be deleted.
const DELETE_AFTER: Duration = Duration::from_millis(500);

impl Deletions {
    /// Adds delivered entries; answers the batch to delete if one is due.
    fn add(&mut self, entries: Vec<(usize, String)>) -> Option<Vec<(usize, String)>> {
        if entries.is_empty() && self.entries.is_empty() {
            return None;
        }
        self.since.get_or_insert_with(tokio::time::Instant::now);
        self.entries.extend(entries);
        let due = self.entries.len() >= DELETE_EVERY
            || self.since.is_some_and(|t| t.elapsed() >= DELETE_AFTER);
        due.then(|| self.take())
    }

    fn take(&mut self) -> Vec<(usize, String)> {
        self.since = None;
        std::mem::take(&mut self.entries)
    }
}

/// The entries of the first stream of an XREAD answer: (id, fields). Takes
/// the answer by value and moves its parts out: a read brings up to a
/// thousand entries, and copying them showed in a busy producer's profile.
pub(crate) fn stream_entries(value: Value) -> Vec<(String, Vec<(String, Value)>)> {
    let first = match value {
        Value::Array(streams) => streams.into_iter().next(),
        Value::Map(streams) => streams
            .into_iter()
            .next()
            .map(|(k, v)| Value::Array(vec![k, v])),
        _ => None,
    };
    let Some(Value::Array(stream)) = first else {
        return Vec::new();
    };
    match stream.into_iter().nth(1) {
        Some(Value::Array(entries)) => entries.into_iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// One stream entry, `[id, [field, value, ...]]`.
fn entry(value: Value) -> Option<(String, Vec<(String, Value)>)> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = as_string(&parts.next()?)?;
    let fields = match parts.next()? {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                if let Some(k) = as_string(&k) {
                    out.push((k, v));
                }
            }
            out
        }
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(k, v)| Some((as_string(&k)?, v)))
            .collect(),
        _ => Vec::new(),
    };
    Some((id, fields))
}

/// A job on its way in: its position in the answers, its shard, payload,
/// id, idempotency key, body and the receiving half of its registered ticket.
type Outgoing<P, O> = (
    usize,
    usize,
    P,
    JobId,
    Option<String>,
    Vec<u8>,
    oneshot::Receiver<Result<O, JobError>>,
);

/// What one job of an enqueue batch came to.
#[derive(Debug, Clone)]
enum Ack {
    Added,
    /// Added, but not confirmed as durable as the queue asks.
    NotDurable(Reached),
    Full,
    /// The marker already existed: the job it names, and its result if it
    /// has finished.
    Duplicate {
        producer: String,
        job_id: JobId,
        result: Option<RawResult>,
    },
}

/// Reads a marker's value: `<producer>\n<id>`, then
/// `\n<status>\n<attempts>\n<data>` once the job has finished.
fn parse_marker(value: &[u8]) -> (String, JobId, Option<RawResult>) {
    let mut parts = value.splitn(5, |b| *b == b'\n');
    let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (producer, id) = (text(), JobId(text()));
    let status = text();
    let attempts = text();
    let data = parts.next().map(<[u8]>::to_vec);
    let result = data.map(|data| RawResult {
        entry: None,
        status,
        attempts: attempts.parse().unwrap_or(0),
        data,
    });
    (producer, id, result)
}

struct Item {
    id: JobId,
    body: Vec<u8>,
    key: Option<String>,
}

/// Sends the batches of one shard.
struct EnqueueHandler<C> {
    shared: Arc<Shared<C>>,
    shard: usize,
    producer: String,
    /// Whether a batch of jobs without keys goes as one entry.
    bundle: bool,
}

/// Why an enqueue call did not give one answer per job.
enum SendError {
    /// Redis did not answer (or failed): the outcome is unknown.
    Redis(RedisError),
    /// The script answered, but not one ack per job.
    Answer(String),
}

/// Sends one batch of jobs to one shard: one ack per job, in order. Jobs
/// that need nothing but an `XADD` (no idempotency key, no resend marker, no
/// bound on the queue's length) go as one bundle (see [`crate::bundle`];
/// several when their bodies pass [`BUNDLE_BYTES`]), or, when the producer
/// does not bundle, as a pipeline of `XADD`s. Otherwise the batch is one
/// script call that adds an entry per job.
async fn send<C>(
    shared: &Shared<C>,
    shard: usize,
    producer: &str,
    items: &[Item],
    bundle: bool,
) -> Result<Vec<Ack>, SendError> {
    let keys = shared.keys(shard);
    let jobs = keys.jobs();
    let s = &shared.settings;
    let plain = s.max_length.is_none()
        && s.resend_window.is_none()
        && items.iter().all(|i| i.key.is_none());
    if plain && bundle && items.len() > 1 {
        // Large payloads make several bundles, each far below what Redis
        // takes in one argument (512 MB by default).
        let mut start = 0;
        while start < items.len() {
            let mut end = start + 1;
            let mut bytes = items[start].body.len();
            while end < items.len() && bytes + items[end].body.len() <= BUNDLE_BYTES {
                bytes += items[end].body.len();
                end += 1;
            }
            add_bundle(shared, shard, producer, &items[start..end]).await?;
            start = end;
        }
        return Ok(items.iter().map(|_| Ack::Added).collect());
    }
    if plain {
        let mut pipe = redis::pipe();
        for item in items {
            pipe.add_command(plain_entry(&jobs, producer, item));
        }
        let mut conn = shared.conn.clone();
        let ids: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(SendError::Redis)?;
        if ids.len() != items.len() {
            return Err(SendError::Answer(format!(
                "Redis answered {} entry ids for {} jobs",
                ids.len(),
                items.len()
            )));
        }
        return Ok(items.iter().map(|_| Ack::Added).collect());
    }
    let mut invocation = ENQUEUE.key(&jobs);
    invocation
        .key(keys.bundled())
        .arg(shared.shard_max_length().unwrap_or(0))
        .arg(producer)
        .arg(keys.group());
    for item in items {
        // Each job's marker and how long it lives. One that only guards
        // against a resend lives only as long as a resend can come: one per
        // job for a day would be most of Redis's memory on a busy queue.
        // Without a marker the jobs key stands in, and the script skips it
        // (TTL 0).
        let (marker, ttl) = match (&item.key, s.resend_window) {
            (Some(k), _) => (keys.idem(k), s.idempotency_ttl.as_millis() as u64),
            (None, Some(window)) => (keys.sent(item.id.as_str()), window.as_millis() as u64),
            (None, None) => (jobs.clone(), 0),
        };
        invocation
            .key(marker)
            .arg(item.id.as_str())
            .arg(ttl)
            .arg(item.key.as_deref().unwrap_or(""))
            .arg(&item.body[..]);
    }
    let mut conn = shared.conn.clone();
    let acks: Vec<Vec<u8>> = invocation
        .invoke_async(&mut conn)
        .await
        .map_err(SendError::Redis)?;
    if acks.len() != items.len() {
        return Err(SendError::Answer(format!(
            "the enqueue script answered {} acks for {} jobs",
            acks.len(),
            items.len()
        )));
    }
    Ok(acks
        .into_iter()
        .map(|a| match &a[..] {
            b"ok" => Ack::Added,
            b"full" => Ack::Full,
            other => {
                let (producer, job_id, result) =
                    parse_marker(other.strip_prefix(b"dup:").unwrap_or(other));
                Ack::Duplicate {
                    producer,
                    job_id,
                    result,
                }
            }
        })
        .collect())
}

/// The most bytes of job bodies in one bundle.
const BUNDLE_BYTES: usize = 4 << 20;

/// The `XADD` of one job as an entry of its own (no attempts made yet).
fn plain_entry(jobs: &str, producer: &str, item: &Item) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(jobs)
        .arg("*")
        .arg("id")
        .arg(item.id.as_str())
        .arg("p")
        .arg(producer)
        .arg("a")
        .arg("0")
        .arg("b")
        .arg(&item.body[..]);
    cmd
}

/// Adds `items` as one entry: a bundle, or the plain entry of a lone job.
async fn add_bundle<C>(
    shared: &Shared<C>,
    shard: usize,
    producer: &str,
    items: &[Item],
) -> Result<(), SendError> {
    let keys = shared.keys(shard);
    let mut conn = shared.conn.clone();
    if let [item] = items {
        let _entry: Value = plain_entry(&keys.jobs(), producer, item)
            .query_async(&mut conn)
            .await
            .map_err(SendError::Redis)?;
        return Ok(());
    }
    let mut ids = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            ids.push('\n');
        }
        ids.push_str(item.id.as_str());
    }
    let lengths = bundle::lengths(items.iter().map(|i| i.body.len()));
    let bodies: Vec<u8> = items.iter().flat_map(|i| &i.body[..]).copied().collect();
    let _entry: Value = BUNDLE
        .key(keys.jobs())
        .key(keys.bundled())
        .arg(producer)
        .arg(items.len())
        .arg(ids)
        .arg(lengths)
        .arg(bodies)
        .invoke_async(&mut conn)
        .await
        .map_err(SendError::Redis)?;
    Ok(())
}

/// Waits until what this connection wrote is as durable as the queue asks
/// (`WAIT` or `WAITAOF`); answers what was reached when it falls short.
async fn wait_durable<C>(shared: &Shared<C>, shard: usize) -> Option<Reached> {
    let durability = shared.settings.durability;
    let cmd = durability.wait_command()?;
    let mut conn = shared.conn.clone();
    // On a cluster, the wait is for the shard's own master (which took the
    // writes), not for every master.
    let slot = shared.keys(shard).slot();
    match conn.query_at_slot::<Value>(&cmd, slot).await {
        Ok(answer) => durability.shortfall(&answer),
        Err(e) => {
            tracing::warn!(error = %e, "waiting for durability failed");
            Some(Reached {
                local: matches!(durability, crate::Durability::Persisted { .. }).then_some(false),
                replicas: 0,
            })
        }
    }
}

impl<C: Codec> Handler<Item> for EnqueueHandler<C> {
    type Output = Ack;
    type Error = String;

    async fn handle(&self, batch: Batch<Item>) -> HandlerResult<Ack, String> {
        match send(
            &self.shared,
            self.shard,
            &self.producer,
            batch.items(),
            self.bundle,
        )
        .await
        {
            Ok(acks) => {
                let acks = match wait_durable(&self.shared, self.shard).await {
                    None => acks,
                    Some(reached) => acks
                        .into_iter()
                        .map(|a| match a {
                            Ack::Added => Ack::NotDurable(reached),
                            other => other,
                        })
                        .collect(),
                };
                Ok(acks.into_iter().map(Outcome::Done).collect())
            }
            Err(SendError::Answer(message)) => Err(message),
            // The outcome is unknown: send again. A job with a marker (an
            // idempotency key, or a resend window) is not added twice; one
            // without may be (see `QueueBuilder::resend_window`).
            Err(SendError::Redis(e)) => Ok(batch
                .iter()
                .map(|_| Outcome::Retry(e.to_string()))
                .collect()),
        }
    }
}

/// Settings for a [`Producer`]; see [`Queue::producer`].
pub struct ProducerBuilder<C = Json> {
    queue: Queue<C>,
    name: String,
    max_outstanding: usize,
    max_batch_size: usize,
    linger: Duration,
    dispatch: Dispatch,
    max_unclaimed: usize,
    redis_attempts: u32,
    block_time: Duration,
    bundles: bool,
}

impl<C> fmt::Debug for ProducerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerBuilder")
            .field("name", &self.name)
            .field("max_outstanding", &self.max_outstanding)
            .finish()
    }
}

impl<C: Codec> Queue<C> {
    /// Settings for a producer named `name`. The name says whose results
    /// stream results go to: give each live producer its own, and give a
    /// restarted producer its old one to receive the results of the jobs it
    /// enqueued before (see [`Producer::reattach`]).
    ///
    /// Two live producers must never share a name: each would take results
    /// meant for the other. A name that is never used again leaves the
    /// results of its last jobs in `{q}:res:<name>`; prefer names that come
    /// back (a host name, a pod's stable name) to names made per start.
    pub fn producer(&self, name: &str) -> ProducerBuilder<C> {
        ProducerBuilder {
            queue: self.clone(),
            name: name.to_owned(),
            max_outstanding: 10_000,
            max_batch_size: 100,
            linger: Duration::from_millis(1),
            dispatch: Dispatch::default(),
            max_unclaimed: 10_000,
            redis_attempts: 20,
            block_time: Duration::from_secs(1),
            bundles: true,
        }
    }
}

impl<C: Codec> ProducerBuilder<C> {
    /// The most jobs whose results this producer waits for at once (default
    /// 10 000). `enqueue` waits for room; `try_enqueue` fails with
    /// [`EnqueueError::Busy`].
    pub fn max_outstanding(mut self, n: usize) -> Self {
        self.max_outstanding = n;
        self
    }

    /// The most jobs sent to Redis in one script call (default 100).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// How long a batch of enqueues may wait for more while others are in
    /// flight (default 1 ms; an idle producer sends at once).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// When a batch of enqueues that has not filled up is sent (default
    /// [`Dispatch::LoadAware`]: at once when no call is in flight, so that a
    /// lone job is not held back; [`Dispatch::Linger`] always waits out the
    /// linger, for the fewest calls).
    pub fn dispatch(mut self, policy: Dispatch) -> Self {
        self.dispatch = policy;
        self
    }

    /// The most results held for jobs nobody holds a ticket for (default
    /// 10 000); see [`Producer::take_unclaimed`].
    pub fn max_unclaimed(mut self, n: usize) -> Self {
        self.max_unclaimed = n;
        self
    }

    /// How many times an enqueue is sent while Redis cannot be reached
    /// before it fails with [`EnqueueError::Unconfirmed`] (default 20, with
    /// a backoff from 50 ms to 2 s: about half a minute).
    pub fn redis_attempts(mut self, n: u32) -> Self {
        self.redis_attempts = n;
        self
    }

    /// How long one read of the results stream waits for new results
    /// (default 1 s).
    pub fn block_time(mut self, block: Duration) -> Self {
        self.block_time = block;
        self
    }

    /// Whether the jobs of one enqueue batch that have no idempotency key go
    /// to Redis as one entry, a bundle (default `true`; the queue must have
    /// no [`max_length`](crate::QueueBuilder::max_length) and no
    /// [`resend_window`](crate::QueueBuilder::resend_window), which check
    /// jobs one by one).
    ///
    /// A bundle is claimed, run and completed by one worker, and its results
    /// come back together, in one entry: Redis handles one entry per batch
    /// instead of one per job, which is most of a busy queue's cost. The
    /// price: a bundle's results arrive when its last job has finished; a
    /// worker that dies holding a bundle loses the runs of all its jobs
    /// (they are handed back one by one, each as a job of its own, once
    /// the lease runs out, so that a job that stops its worker is
    /// dead-lettered alone); and [`QueueStats`](crate::QueueStats) counts a
    /// bundle once where it counts entries. Turn it off for jobs that take
    /// long and whose results are wanted as soon as each is done.
    pub fn bundles(mut self, on: bool) -> Self {
        self.bundles = on;
        self
    }

    /// Starts the producer: its enqueue batcher and its results reader.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a bad name or a zero setting.
    pub fn build<P, O>(self) -> Result<Producer<P, O, C>, ConfigError>
    where
        P: Serialize + Send + 'static,
        O: DeserializeOwned + Send + 'static,
    {
        check_name("producer", &self.name)?;
        for (setting, n) in [
            ("max_outstanding", self.max_outstanding),
            ("max_batch_size", self.max_batch_size),
            ("max_unclaimed", self.max_unclaimed),
            ("redis_attempts", self.redis_attempts as usize),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { setting });
            }
        }
        if self.block_time.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "block_time",
            });
        }
        let shared = self.queue.shared.clone();
        // A batcher per shard: a shard's batch is one round trip to its
        // node, and a shard whose node is away holds up only its own jobs.
        let mut batchers = Vec::with_capacity(shared.shards.len());
        for shard in 0..shared.shards.len() {
            batchers.push(
                Batcher::builder()
                    .name(format!("baler-queue:{}:producer", shared.name))
                    .max_batch_size(self.max_batch_size)
                    .buffer_size(self.max_batch_size.max(self.max_outstanding))
                    .linger(self.linger)
                    .dispatch(self.dispatch)
                    .max_attempts(self.redis_attempts)
                    .backoff(Duration::from_millis(50), Duration::from_secs(2))
                    .build(EnqueueHandler {
                        shared: shared.clone(),
                        shard,
                        producer: self.name.clone(),
                        bundle: self.bundles,
                    })?,
            );
        }
        let nonce = nonce();
        let results = Arc::new(Results {
            shared: shared.clone(),
            producer: self.name.clone(),
            own: job_id_prefix(&self.name, nonce),
            book: Mutex::new(Book {
                waiting: Waiting::default(),
                unclaimed: VecDeque::new(),
                orphans: HashSet::new(),
            }),
            max_unclaimed: self.max_unclaimed,
            resolved: Notify::new(),
            deletions: Mutex::new(Deletions::default()),
        });
        let readers = (0..shared.shards.len())
            .map(|shard| tokio::spawn(read_results(results.clone(), shard, self.block_time)))
            .collect();
        Ok(Producer {
            inner: Arc::new(Inner {
                shared,
                name: self.name,
                nonce,
                seq: AtomicU64::new(0),
                permits: Arc::new(Semaphore::new(self.max_outstanding)),
                max_outstanding: self.max_outstanding,
                batchers,
                next_shard: AtomicUsize::new(0),
                results,
                readers,
                closed: AtomicBool::new(false),
            }),
            _payload: PhantomData,
        })
    }
}

/// What every job id of one run of a producer starts with.
fn job_id_prefix(name: &str, nonce: u64) -> String {
    format!("{name}-{nonce:016x}-")
}

/// A number that differs between process starts, for job ids.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

struct Inner<O, C> {
    shared: Arc<Shared<C>>,
    name: String,
    nonce: u64,
    seq: AtomicU64,
    permits: Arc<Semaphore>,
    max_outstanding: usize,
    /// One per shard, in shard order.
    batchers: Vec<Batcher<Item, Ack, String>>,
    /// Where the next job without an idempotency key goes.
    next_shard: AtomicUsize,
    results: Arc<Results<O, C>>,
    /// One results reader per shard.
    readers: Vec<JoinHandle<()>>,
    closed: AtomicBool,
}

impl<O, C> Drop for Inner<O, C> {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
    }
}

/// The sending side of a queue: enqueues jobs and hands back a
/// [`JobTicket`] per job. Cheap to clone; the last clone dropped stops its
/// results reader (results stay in Redis for a producer of the same name).
///
/// ```no_run
/// use baler_queue::Queue;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let queue = Queue::connect("redis://127.0.0.1:6379", "resize").await?;
/// let producer = queue.producer("web-1").build::<String, u64>()?;
/// let ticket = producer.enqueue("cat.png".to_owned()).await?;
/// let id = ticket.id().clone();
/// println!("job {id} made {} bytes", ticket.await?);
/// let report = producer.shutdown(std::time::Duration::from_secs(5)).await;
/// assert!(report.outstanding.is_empty());
/// # Ok(())
/// # }
/// ```
pub struct Producer<P, O, C = Json> {
    inner: Arc<Inner<O, C>>,
    _payload: PhantomData<fn(P)>,
}

impl<P, O, C> Clone for Producer<P, O, C> {
    fn clone(&self) -> Self {
        Producer {
            inner: self.inner.clone(),
            _payload: PhantomData,
        }
    }
}

impl<P, O, C> fmt::Debug for Producer<P, O, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// What [`Producer::shutdown`] left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProducerReport {
    /// Jobs whose results had not arrived by the deadline. Their results
    /// will still be written to this producer's results stream: a producer
    /// of the same name can [`reattach`](Producer::reattach) to them.
    pub outstanding: Vec<JobId>,
}

/// A future that resolves exactly once with a job's output or a
/// [`JobError`]. Dropping it discards the result (the job still runs).
#[must_use = "a ticket is how the job's result arrives"]
pub struct JobTicket<O> {
    id: JobId,
    shard: Option<usize>,
    rx: oneshot::Receiver<Result<O, JobError>>,
}

impl<O> JobTicket<O> {
    /// The job's id.
    pub fn id(&self) -> &JobId {
        &self.id
    }

    /// The shard the job was sent to (always 0 for a queue of one shard;
    /// see [`QueueBuilder::shards`](crate::QueueBuilder::shards)); unknown
    /// for a ticket from [`Producer::reattach`].
    pub fn shard(&self) -> Option<usize> {
        self.shard
    }
}

impl<O> Future for JobTicket<O> {
    type Output = Result<O, JobError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = self.id.clone();
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(JobError::Shutdown { job_id: id })))
    }
}

impl<O> fmt::Debug for JobTicket<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobTicket").field("id", &self.id).finish()
    }
}

impl<P, O, C> Producer<P, O, C>
where
    P: Serialize + Send + 'static,
    O: DeserializeOwned + Send + 'static,
    C: Codec,
{
    /// The producer's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How many jobs this producer waits on. It holds nothing for jobs whose
    /// results arrived.
    pub fn outstanding(&self) -> usize {
        self.inner.results.outstanding()
    }

    /// Enqueues a job, waiting for room (this producer's outstanding bound,
    /// the queue's length bound) and retrying while Redis cannot be reached.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::TooLarge`], [`EnqueueError::Encode`],
    /// [`EnqueueError::Shutdown`] (payload handed back), or
    /// [`EnqueueError::Unconfirmed`] once Redis stayed away for every
    /// attempt.
    pub async fn enqueue(&self, job: impl Into<Job<P>>) -> Result<JobTicket<O>, EnqueueError<P>> {
        let mut all = self.enqueue_all(vec![job.into()], true).await;
        all.pop()
            .unwrap_or_else(|| unreachable!("one job in, one answer out"))
    }

    /// Enqueues several jobs; they travel together, in as few round trips
    /// as the batch size allows. One answer per job, in order.
    pub async fn enqueue_many(
        &self,
        jobs: impl IntoIterator<Item = impl Into<Job<P>>>,
    ) -> Vec<Result<JobTicket<O>, EnqueueError<P>>> {
        self.enqueue_all(jobs.into_iter().map(Into::into).collect(), true)
            .await
    }

    /// Enqueues a job or fails at once when the producer or the queue is
    /// full, handing the payload back.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Self::enqueue), plus [`EnqueueError::Busy`] and
    /// [`EnqueueError::QueueFull`].
    pub async fn try_enqueue(
        &self,
        job: impl Into<Job<P>>,
    ) -> Result<JobTicket<O>, EnqueueError<P>> {
        let mut all = self.enqueue_all(vec![job.into()], false).await;
        all.pop()
            .unwrap_or_else(|| unreachable!("one job in, one answer out"))
    }

    /// A ticket for a job enqueued earlier under this producer's name, by
    /// this process or one before it. If its result already arrived and
    /// nobody held a ticket, the ticket is ready at once.
    ///
    /// ```no_run
    /// # async fn example(queue: baler_queue::Queue, earlier: baler_queue::JobId)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// // The same name as before the restart: the same results stream.
    /// let producer = queue.producer("web-1").build::<String, u64>()?;
    /// let bytes = producer.reattach(earlier).await?;
    /// # let _ = bytes;
    /// # Ok(())
    /// # }
    /// ```
    pub fn reattach(&self, job_id: impl Into<JobId>) -> JobTicket<O> {
        let id = job_id.into();
        let (tx, rx) = oneshot::channel();
        let results = &self.inner.results;
        let mut book = results.book();
        book.orphans.remove(&id);
        if let Some(at) = book.unclaimed.iter().position(|(j, _)| *j == id) {
            if let Some((_, raw)) = book.unclaimed.remove(at) {
                drop(book);
                let _ = tx.send(decode(&self.inner.shared.codec, &id, &raw));
                let results = results.clone();
                let entries = release_all([&raw]);
                tokio::spawn(async move { results.delete(entries).await });
                return JobTicket {
                    id,
                    shard: None,
                    rx,
                };
            }
        }
        book.waiting.push(
            id.clone(),
            Waiter {
                tx,
                origin: id.clone(),
                _permit: None,
            },
        );
        JobTicket {
            id,
            shard: None,
            rx,
        }
    }

    /// Takes the results that arrived for jobs nobody holds a ticket for
    /// (typically jobs of an earlier run of this producer that were not
    /// reattached), and deletes them from Redis. At most
    /// [`max_unclaimed`](ProducerBuilder::max_unclaimed) are held in memory;
    /// older ones stay in Redis for the next start.
    pub async fn take_unclaimed(&self) -> Vec<(JobId, Result<O, JobError>)> {
        let taken: Vec<(JobId, RawResult)> =
            self.inner.results.book().unclaimed.drain(..).collect();
        let entries = release_all(taken.iter().map(|(_, r)| r));
        let out = taken
            .iter()
            .map(|(id, raw)| (id.clone(), decode(&self.inner.shared.codec, id, raw)))
            .collect();
        self.inner.results.delete(entries).await;
        out
    }

    /// Stops accepting jobs, sends what is buffered, waits up to `deadline`
    /// for the results of every outstanding job, and reports those that did
    /// not arrive (their tickets resolve with [`JobError::Shutdown`]).
    pub async fn shutdown(&self, deadline: Duration) -> ProducerReport {
        self.inner.closed.store(true, Ordering::SeqCst);
        let inner = &self.inner;
        let _ = tokio::time::timeout(deadline, async {
            for batcher in &inner.batchers {
                batcher.shutdown(None).await;
            }
            loop {
                let notified = inner.results.resolved.notified();
                if inner.results.outstanding() == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
        let left: Vec<(JobId, Vec<Waiter<O>>)> = inner.results.book().waiting.drain();
        for reader in &inner.readers {
            reader.abort();
        }
        let delivered = inner.results.deletions().take();
        inner.results.delete(delivered).await;
        let mut outstanding = Vec::new();
        for (id, waiters) in left {
            for w in waiters {
                let _ = w.tx.send(Err(JobError::Shutdown { job_id: id.clone() }));
            }
            outstanding.push(id);
        }
        outstanding.sort();
        ProducerReport { outstanding }
    }

    fn next_id(&self) -> JobId {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        JobId(format!(
            "{}{seq}",
            job_id_prefix(&self.inner.name, self.inner.nonce)
        ))
    }

    fn register(
        &self,
        id: &JobId,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Result<O, JobError>> {
        let (tx, rx) = oneshot::channel();
        self.inner.results.book().waiting.push(
            id.clone(),
            Waiter {
                tx,
                origin: id.clone(),
                _permit: Some(permit),
            },
        );
        observe::gauge(
            "baler_queue_outstanding",
            &self.inner.shared.name,
            self.inner.results.outstanding() as f64,
        );
        rx
    }

    fn unregister(&self, id: &JobId) {
        self.inner.results.book().waiting.remove(id);
    }

    /// Drops the ticket of a job that may have been added although its
    /// enqueue failed: its result, if it comes, is kept as unclaimed for
    /// [`reattach`](Self::reattach), not taken for a second copy.
    fn orphan(&self, id: &JobId) {
        let mut book = self.inner.results.book();
        book.waiting.remove(id);
        book.orphans.insert(id.clone());
    }

    /// Moves the waiters of `from` to `to` (an idempotency key matched an
    /// earlier job of this producer).
    fn rebind(&self, from: &JobId, to: &JobId) {
        let mut book = self.inner.results.book();
        if let Some(waiters) = book.waiting.remove(from) {
            for w in waiters {
                book.waiting.push(to.clone(), w);
            }
        }
    }

    /// Takes the waiter registered under `origin` out of those of `id`.
    fn take_waiter(&self, id: &JobId, origin: &JobId) -> Option<Waiter<O>> {
        self.inner.results.book().waiting.take(id, origin)
    }

    /// Waits for an earlier job of this producer that an idempotency key
    /// named: moves the new ticket's waiter to it, then looks at the key's
    /// marker once more, because the job may have finished (and its result
    /// been delivered to the earlier ticket) since the enqueue script
    /// answered. Whoever takes the waiter out resolves it: exactly once.
    async fn join_earlier(&self, id: &JobId, earlier: &JobId, shard: usize, key: Option<&str>) {
        self.rebind(id, earlier);
        let Some(key) = key else { return };
        let mut conn = self.inner.shared.conn.clone();
        let marker: Result<Option<Vec<u8>>, RedisError> = redis::cmd("GET")
            .arg(self.inner.shared.keys(shard).idem(key))
            .query_async(&mut conn)
            .await;
        if let Ok(Some(value)) = marker {
            if let (_, _, Some(raw)) = parse_marker(&value) {
                if let Some(w) = self.take_waiter(earlier, id) {
                    let _ = w.tx.send(decode(&self.inner.shared.codec, earlier, &raw));
                }
            }
        }
    }

    async fn enqueue_all(
        &self,
        jobs: Vec<Job<P>>,
        wait: bool,
    ) -> Vec<Result<JobTicket<O>, EnqueueError<P>>> {
        let max = self.inner.shared.settings.max_payload_bytes;
        let mut answers: Vec<Option<Result<JobTicket<O>, EnqueueError<P>>>> =
            Vec::with_capacity(jobs.len());
        let mut ready: Vec<Outgoing<P, O>> = Vec::new();
        for (i, job) in jobs.into_iter().enumerate() {
            answers.push(None);
            if self.inner.closed.load(Ordering::SeqCst) {
                answers[i] = Some(Err(EnqueueError::Shutdown {
                    payload: job.payload,
                }));
                continue;
            }
            if let Some(key) = &job.key {
                if key.is_empty() || key.contains('\n') {
                    answers[i] = Some(Err(EnqueueError::InvalidKey {
                        key: key.clone(),
                        payload: job.payload,
                    }));
                    continue;
                }
            }
            let body = match self.inner.shared.codec.encode(&job.payload) {
                Ok(b) => b,
                Err(message) => {
                    answers[i] = Some(Err(EnqueueError::Encode {
                        message,
                        payload: job.payload,
                    }));
                    continue;
                }
            };
            if body.len() > max {
                answers[i] = Some(Err(EnqueueError::TooLarge {
                    size: body.len(),
                    max,
                    payload: job.payload,
                }));
                continue;
            }
            let permit = if wait {
                self.inner.permits.clone().acquire_owned().await.ok()
            } else {
                self.inner.permits.clone().try_acquire_owned().ok()
            };
            let Some(permit) = permit else {
                answers[i] = Some(Err(EnqueueError::Busy {
                    max: self.inner.max_outstanding,
                    payload: job.payload,
                }));
                continue;
            };
            // The ticket exists before the job can reach any worker.
            let id = self.next_id();
            let rx = self.register(&id, permit);
            let shard = self.shard_for(job.key.as_deref());
            ready.push((i, shard, job.payload, id, job.key, body, rx));
        }
        let mut pause = Duration::from_millis(10);
        while !ready.is_empty() {
            let mut sent = Vec::with_capacity(ready.len());
            for (i, shard, payload, id, key, body, rx) in ready.drain(..) {
                let item = Item {
                    id: id.clone(),
                    body: body.clone(),
                    key: key.clone(),
                };
                match self.inner.batchers[shard].submit(item).await {
                    Ok(ticket) => sent.push((i, shard, payload, id, key, body, rx, ticket)),
                    Err(_) => {
                        self.unregister(&id);
                        answers[i] = Some(Err(EnqueueError::Shutdown { payload }));
                    }
                }
            }
            for (i, shard, payload, id, key, body, rx, ticket) in sent {
                match ticket.await {
                    Ok(Ack::Added) => {
                        self.added(&id);
                        answers[i] = Some(Ok(JobTicket {
                            id,
                            shard: Some(shard),
                            rx,
                        }));
                    }
                    Ok(Ack::Duplicate { job_id, .. }) if job_id == id => {
                        // Our own earlier attempt went through; its reply was lost.
                        self.added(&id);
                        answers[i] = Some(Ok(JobTicket {
                            id,
                            shard: Some(shard),
                            rx,
                        }));
                    }
                    Ok(Ack::Duplicate {
                        job_id,
                        result: Some(raw),
                        ..
                    }) => {
                        // The job finished: its result was kept with the key.
                        self.unregister(&id);
                        let (tx, rx) = oneshot::channel();
                        let _ = tx.send(decode(&self.inner.shared.codec, &job_id, &raw));
                        answers[i] = Some(Ok(JobTicket {
                            id: job_id,
                            shard: Some(shard),
                            rx,
                        }));
                    }
                    Ok(Ack::Duplicate {
                        producer, job_id, ..
                    }) => {
                        if producer == self.inner.name {
                            self.join_earlier(&id, &job_id, shard, key.as_deref()).await;
                            answers[i] = Some(Ok(JobTicket {
                                id: job_id,
                                shard: Some(shard),
                                rx,
                            }));
                        } else {
                            self.unregister(&id);
                            let (tx, rx) = oneshot::channel();
                            let _ = tx.send(Err(JobError::OtherProducer {
                                job_id: job_id.clone(),
                                producer,
                            }));
                            answers[i] = Some(Ok(JobTicket {
                                id: job_id,
                                shard: Some(shard),
                                rx,
                            }));
                        }
                    }
                    Ok(Ack::NotDurable(reached)) => {
                        self.added(&id);
                        self.orphan(&id);
                        answers[i] = Some(Err(EnqueueError::NotDurable {
                            job_id: id,
                            wanted: self.inner.shared.settings.durability,
                            reached,
                            payload,
                        }));
                    }
                    Ok(Ack::Full) if wait => ready.push((i, shard, payload, id, key, body, rx)),
                    Ok(Ack::Full) => {
                        self.unregister(&id);
                        answers[i] = Some(Err(EnqueueError::QueueFull { payload }));
                    }
                    Err(e) => {
                        self.orphan(&id);
                        let attempts = match &e {
                            baler::Error::Exhausted { attempts, .. } => *attempts,
                            _ => 1,
                        };
                        answers[i] = Some(Err(EnqueueError::Unconfirmed {
                            job_id: id,
                            attempts,
                            message: match e.handler_error() {
                                Some(m) => m.clone(),
                                None => e.to_string(),
                            },
                            payload,
                        }));
                    }
                }
            }
            if !ready.is_empty() {
                // The queue is full: give workers time to make room.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| unreachable!("every job is answered")))
            .collect()
    }

    /// The shard a job goes to: the one its idempotency key hashes to, so
    /// that enqueuing the key again meets the marker the first enqueue
    /// left; else the next in turn.
    fn shard_for(&self, key: Option<&str>) -> usize {
        let n = self.inner.batchers.len();
        match key {
            Some(key) => shard_of_key(key, n),
            None => self.inner.next_shard.fetch_add(1, Ordering::Relaxed) % n.max(1),
        }
    }

    fn added(&self, id: &JobId) {
        observe::count("baler_queue_enqueued_total", &self.inner.shared.name, 1);
        self.inner
            .shared
            .emit(QueueEvent::Enqueued { job_id: id.clone() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_common as common;

    fn item(id: &str, key: Option<&str>) -> Item {
        Item {
            id: JobId(id.to_owned()),
            body: b"1".to_vec(),
            key: key.map(str::to_owned),
        }
    }

    async fn jobs(server: &common::RedisServer, queue: &Queue) -> u64 {
        let mut conn = common::connection(&server.url()).await;
        redis::cmd("XLEN")
            .arg(queue.keys().jobs())
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_sent_again_after_a_lost_reply_adds_nothing_twice() {
        let server = common::RedisServer::start();
        let queue = Queue::builder(&server.url(), "lost")
            .resend_window(Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        let items = [item("p-1", None), item("p-2", Some("order-9"))];
        let first = send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        assert!(matches!(first[..], [Ack::Added, Ack::Added]));
        // The same call again, as a retry after its reply was lost: every
        // job is recognised as its own, nothing is added.
        let again = send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        for (ack, it) in again.iter().zip(&items) {
            match ack {
                Ack::Duplicate {
                    producer, job_id, ..
                } => {
                    assert_eq!((producer.as_str(), job_id), ("p", &it.id));
                }
                other => panic!("expected a duplicate, got {other:?}"),
            }
        }
        assert_eq!(jobs(&server, &queue).await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resend_marker_lives_for_the_resend_window_and_a_key_for_its_ttl() {
        let server = common::RedisServer::start();
        let queue = Queue::builder(&server.url(), "ttl")
            .resend_window(Duration::from_secs(60))
            .idempotency_ttl(Duration::from_secs(3600))
            .build()
            .await
            .unwrap();
        let items = [item("p-1", None), item("p-2", Some("order-9"))];
        send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        let mut conn = common::connection(&server.url()).await;
        let keys = queue.keys();
        for (key, max) in [
            (keys.sent("p-1"), 60_000),
            (keys.idem("order-9"), 3_600_000),
        ] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > max - 10_000 && ttl <= max, "{key}: {ttl} ms");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_bodies_make_several_bundles_and_a_lone_one_a_plain_entry() {
        let server = common::RedisServer::start();
        let queue = Queue::connect(&server.url(), "big").await.unwrap();
        let big = |id: &str| Item {
            id: JobId(id.to_owned()),
            body: vec![b'x'; BUNDLE_BYTES / 2],
            key: None,
        };
        let items = [big("a"), big("b"), big("c")];
        let acks = send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        assert!(matches!(acks[..], [Ack::Added, Ack::Added, Ack::Added]));
        // A bundle of two (exactly BUNDLE_BYTES), then the third alone.
        let mut conn = common::connection(&server.url()).await;
        let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(queue.keys().jobs())
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].1["n"], b"2");
        assert_eq!(entries[1].1["id"], b"c");
        assert_eq!(queue.stats().await.unwrap().length, 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_per_job_within_one_call() {
        let server = common::RedisServer::start();
        let queue = Queue::builder(&server.url(), "full")
            .max_length(2)
            .build()
            .await
            .unwrap();
        let items = [item("a", None), item("b", None), item("c", None)];
        let acks = send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        assert!(matches!(acks[..], [Ack::Added, Ack::Added, Ack::Full]));
        assert_eq!(jobs(&server, &queue).await, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_job_leaves_no_marker_behind() {
        let server = common::RedisServer::start();
        let queue = Queue::builder(&server.url(), "full-key")
            .max_length(1)
            .build()
            .await
            .unwrap();
        let items = [item("a", None), item("b", Some("order-1"))];
        let acks = send(&queue.shared, 0, "p", &items, true)
            .await
            .ok()
            .unwrap();
        assert!(matches!(acks[..], [Ack::Added, Ack::Full]));
        // The key was not taken by the refused job: once there is room, the
        // same key is added, not reported as a duplicate of a job that never was.
        let mut conn = common::connection(&server.url()).await;
        let _: () = redis::cmd("DEL")
            .arg(queue.keys().jobs())
            .query_async(&mut conn)
            .await
            .unwrap();
        let acks = send(&queue.shared, 0, "p", &[item("c", Some("order-1"))], true)
            .await
            .ok()
            .unwrap();
        assert!(matches!(acks[..], [Ack::Added]), "{acks:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_resend_window_keyless_jobs_are_plain_adds_and_keys_still_dedupe() {
        let server = common::RedisServer::start();
        let queue = Queue::connect(&server.url(), "plain").await.unwrap();
        let mut conn = common::connection(&server.url()).await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        let keyless = [item("p-1", None), item("p-2", None)];
        let acks = send(&queue.shared, 0, "p", &keyless, false)
            .await
            .ok()
            .unwrap();
        assert!(matches!(acks[..], [Ack::Added, Ack::Added]));
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Two XADDs and nothing else: no script, no marker.
        let called: Vec<&str> = stats
            .lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split(':').next())
            .filter(|c| {
                !c.starts_with("config") && !matches!(*c, "info" | "hello" | "client" | "ping")
            })
            .collect();
        assert_eq!(called, ["xadd"], "{stats}");
        assert!(stats.contains("cmdstat_xadd:calls=2,"), "{stats}");
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.sort();
        assert_eq!(keys, [queue.keys().jobs()]);
        // A keyed job in a mixed batch is still recognised when sent again.
        let mixed = [item("p-3", None), item("p-4", Some("order-9"))];
        send(&queue.shared, 0, "p", &mixed, false)
            .await
            .ok()
            .unwrap();
        let again = send(&queue.shared, 0, "p", &mixed, false)
            .await
            .ok()
            .unwrap();
        assert!(
            matches!(again[..], [Ack::Added, Ack::Duplicate { .. }]),
            "{again:?}"
        );
        assert_eq!(jobs(&server, &queue).await, 5);
    }
}
