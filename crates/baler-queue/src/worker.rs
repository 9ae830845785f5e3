//! Workers: claim jobs in batches, run them through the user's handler by
//! way of a baler [`Batcher`], and complete each batch in one fenced script.
//!
//! A worker is three tasks per shard of the queue and the batcher:
//!
//! - the **claimer** reads new entries (`XREADGROUP .. COUNT n BLOCK t`)
//!   while it has room (at most `max_held` jobs held), each a job or a
//!   bundle of jobs (see [`crate::bundle`]), decodes their jobs and submits
//!   them to the batcher;
//! - the **keeper** renews the leases of held entries (fenced), reclaims
//!   entries whose lease ran out (`XAUTOCLAIM`; a reclaimed bundle's jobs
//!   are handed back one by one), dead-letters jobs delivered too often,
//!   and moves delayed jobs whose time came back to the jobs stream;
//! - the **completer** takes the outcome of every job as it resolves,
//!   gathers them per entry, and writes the entries whose jobs all have
//!   their outcome in batches, with one script call each. An entry's room
//!   is given back only once its completion is written (or found stale).
//!
//! Each shard has its own three, so that a shard whose Redis node is away
//! holds up no other shard: its claims, renewals and completions wait and
//! retry while the others go on. The room (`max_held`) and the batcher are
//! shared by all shards.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baler::{Batcher, Capacity, Handler};
use redis::{RedisError, Value};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::bundle;
use crate::codec::{Codec, Json};
use crate::error::ConfigError;
use crate::events::QueueEvent;
use crate::observe;
use crate::producer::stream_entries;
use crate::queue::{as_bytes, as_string, as_u64, pairs, Queue, Settings, Shared};
use crate::scripts::{COMPLETE, EXTEND, LEAVE, PROMOTE, PRUNE, RECLAIM, TRIM};
use crate::JobId;

/// A consumer holding nothing and silent for this many leases is taken for
/// dead and removed from the group.
const PRUNE_AFTER_LEASES: u32 = 10;
/// The most jobs written in one completion call (whole entries: a larger
/// bundle goes alone).
const COMPLETE_JOBS: usize = 1000;
/// How often a worker removes finished entries from the jobs stream. They
/// are acknowledged at once and cost only memory until then.
const TRIM_EVERY: Duration = Duration::from_secs(1);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A job this worker holds: what it read, and the fencing token of its claim.
#[derive(Debug, Clone)]
struct Held {
    /// The shard it was read from.
    shard: usize,
    entry: String,
    job_id: JobId,
    producer: String,
    /// Attempts made before this one.
    attempts: u32,
    /// The delivery count at claim: with the consumer name, the fencing token.
    deliveries: u64,
    /// The idempotency key it was enqueued with, empty if none.
    key: String,
    body: Vec<u8>,
}

/// An entry this worker holds.
#[derive(Debug)]
struct Hold {
    /// The delivery count at claim: with the consumer name, the fencing token.
    deliveries: u64,
    /// Its jobs: one, or a bundle's.
    jobs: usize,
    /// How many of them the queue's bundled-jobs count holds (a bundle's
    /// jobs beyond its first): taken off when the entry is completed.
    extra: u64,
    /// The room its jobs take, given back when the entry is completed.
    _room: Option<OwnedSemaphorePermit>,
}

impl Hold {
    /// Held, its room not yet taken.
    fn new(deliveries: u64, jobs: usize, extra: u64) -> Self {
        Hold {
            deliveries,
            jobs,
            extra,
            _room: None,
        }
    }
}

/// One entry read from the jobs stream, and its jobs.
struct Entry {
    shard: usize,
    id: String,
    deliveries: u64,
    jobs: Vec<Held>,
    /// The bundled-jobs count's share of it (see [`Hold::extra`]).
    extra: u64,
    /// Why it cannot be run, if it cannot: its one job is dead-lettered.
    malformed: Option<String>,
}

impl Entry {
    /// Reads an entry: one job (`id`, `p`, `a`, `k`, `b`) or a bundle of
    /// them (see [`crate::bundle`]).
    fn parse(shard: usize, id: String, fields: Vec<(String, Value)>, deliveries: u64) -> Entry {
        let mut fields: HashMap<String, Value> = fields.into_iter().collect();
        let mut text = |n: &str| fields.remove(n).and_then(|v| as_bytes(&v));
        let producer = text("p").map(|p| String::from_utf8_lossy(&p).into_owned());
        let attempts = text("a")
            .and_then(|a| std::str::from_utf8(&a).ok()?.parse().ok())
            .unwrap_or(0);
        let one = |job_id: Option<Vec<u8>>, key: Option<Vec<u8>>, body: Option<Vec<u8>>| Held {
            shard,
            entry: id.clone(),
            job_id: JobId(
                job_id
                    .map(|j| String::from_utf8_lossy(&j).into_owned())
                    .unwrap_or_else(|| id.clone()),
            ),
            producer: producer.clone().unwrap_or_default(),
            attempts,
            deliveries,
            key: key
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default(),
            body: body.unwrap_or_default(),
        };
        let Some(n) = text("n") else {
            let (job_id, key, body) = (text("id"), text("k"), text("b"));
            let malformed = (job_id.is_none() || body.is_none()).then(|| {
                "the entry has no job id or body; it was not written by a baler-queue producer"
                    .to_owned()
            });
            let job = one(job_id, key, body);
            return Entry {
                shard,
                id,
                deliveries,
                jobs: vec![job],
                extra: 0,
                malformed,
            };
        };
        let count = bundle::count(&n);
        let extra = count.as_ref().map_or(0, |n| n.saturating_sub(1) as u64);
        let (ids, lengths, bodies) = (text("ids"), text("l"), text("b"));
        let jobs = count.and_then(|n| {
            let missing = || "a bundle without its ids, lengths or bodies".to_owned();
            let (Some(ids), Some(lengths), Some(bodies)) = (&ids, &lengths, &bodies) else {
                return Err(missing());
            };
            let ids = bundle::split(ids, b'\n', n)?;
            let bodies = bundle::frames(lengths, bodies, n)?;
            Ok(ids
                .into_iter()
                .zip(bodies)
                .map(|(job, body)| one(Some(job.to_vec()), None, Some(body.to_vec())))
                .collect::<Vec<_>>())
        });
        match jobs {
            Ok(jobs) => Entry {
                shard,
                id,
                deliveries,
                jobs,
                extra,
                malformed: None,
            },
            Err(reason) => Entry {
                shard,
                id: id.clone(),
                deliveries,
                jobs: vec![one(None, None, bodies)],
                extra,
                malformed: Some(format!("a bundle of jobs that cannot be read: {reason}")),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ok,
    Failed,
    Retry,
    Dead,
    HandBack,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Ok => "ok",
            Kind::Failed => "failed",
            Kind::Retry => "retry",
            Kind::Dead => "dead",
            Kind::HandBack => "handback",
        }
    }
}

struct Completion {
    held: Held,
    kind: Kind,
    /// The encoded output, or the error message or dead-letter reason.
    data: Vec<u8>,
    /// Attempts made, this one included (unchanged for a hand-back).
    attempts: u32,
    delay: Duration,
}

impl Completion {
    fn new(held: Held, kind: Kind, attempts: u32, data: Vec<u8>) -> Self {
        Completion {
            held,
            kind,
            data,
            attempts,
            delay: Duration::ZERO,
        }
    }
}

/// Counts of what a worker did; see [`Worker::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Jobs held now: claimed and not yet completed.
    pub held: u64,
    /// Jobs claimed (new or reclaimed).
    pub claimed: u64,
    /// Results written with the handler's output.
    pub completed: u64,
    /// Results written as failed (for good, or attempts exhausted).
    pub failed: u64,
    /// Jobs scheduled for another attempt.
    pub retried: u64,
    /// Jobs moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Completions discarded because the claim had passed to another worker.
    pub stale_discarded: u64,
    /// Jobs taken over from a worker whose lease ran out.
    pub reclaimed: u64,
    /// Jobs handed back to the queue at shutdown.
    pub handed_back: u64,
    /// Renewals that found a claim no longer this worker's.
    pub leases_lost: u64,
}

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// The worker's consumer name.
    pub consumer: String,
    /// Its counts at the end.
    pub stats: WorkerStats,
    /// Jobs whose completion could not be written before the worker gave up
    /// (Redis unreachable): they stay claimed, and another worker reclaims
    /// them once their lease runs out. Nothing is lost.
    pub unwritten: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    stale: AtomicU64,
    reclaimed: AtomicU64,
    handed_back: AtomicU64,
    leases_lost: AtomicU64,
    unwritten: AtomicU64,
}

/// The type-erased half of a worker that knows the payload and handler types.
trait Runner: Send + Sync + 'static {
    /// Decodes and submits one job; its completion reaches `done`.
    fn run(&self, held: Held) -> BoxFuture<'_, ()>;
    /// Shuts the batcher down: whatever it could not finish by `deadline`
    /// resolves as abandoned and is handed back.
    fn stop(&self, deadline: Duration) -> BoxFuture<'_, ()>;
}

/// Where completions go: the completer of each job's shard.
#[derive(Clone)]
struct Done(Arc<[mpsc::UnboundedSender<Completion>]>);

impl Done {
    fn send(&self, completion: Completion) {
        if let Some(tx) = self.0.get(completion.held.shard) {
            // The completer ends only when the worker is dropped.
            let _ = tx.send(completion);
        }
    }
}

struct Core<C> {
    shared: Arc<Shared<C>>,
    consumer: String,
    /// Held entries by shard and entry id (entry ids are unique per stream
    /// only).
    held: Mutex<HashMap<(usize, String), Hold>>,
    room: Arc<Semaphore>,
    max_held: usize,
    claim_count: usize,
    block_time: Duration,
    stopping: AtomicBool,
    /// Set once, when shutdown begins: wakes the claimer if it waits for room.
    stop: tokio::sync::watch::Sender<bool>,
    /// Per shard, where the next reclaim's scan of the pending list starts.
    reclaim_cursors: Vec<Mutex<String>>,
    counters: Counters,
    done: Done,
}

impl<C: Codec> Core<C> {
    fn held(&self) -> MutexGuard<'_, HashMap<(usize, String), Hold>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reclaim_cursor(&self, shard: usize) -> MutexGuard<'_, String> {
        self.reclaim_cursors[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> WorkerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerStats {
            held: self.held().values().map(|h| h.jobs as u64).sum(),
            claimed: get(&c.claimed),
            completed: get(&c.completed),
            failed: get(&c.failed),
            retried: get(&c.retried),
            dead_lettered: get(&c.dead),
            stale_discarded: get(&c.stale),
            reclaimed: get(&c.reclaimed),
            handed_back: get(&c.handed_back),
            leases_lost: get(&c.leases_lost),
        }
    }

    /// Dead-letters a job before it runs. The delivery counts as an
    /// attempt: the job may have run (and stopped its worker) before.
    fn dead(&self, held: Held, reason: String) {
        let attempts = held.attempts + 1;
        self.done.send(Completion::new(
            held,
            Kind::Dead,
            attempts,
            reason.into_bytes(),
        ));
    }

    /// Takes one entry read from the jobs stream (its jobs already parsed),
    /// with the room for its jobs: checks them, then hands them to the
    /// runner. A bundle that was reclaimed is not run: its jobs are handed
    /// back one by one, each as an entry of its own, so that one of them
    /// that stops its worker every time is dead-lettered alone.
    async fn take(&self, runner: &dyn Runner, entry: Entry, room: Option<OwnedSemaphorePermit>) {
        let Entry {
            shard,
            id,
            deliveries,
            jobs,
            extra,
            malformed,
        } = entry;
        self.counters
            .claimed
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        self.held()
            .entry((shard, id))
            .or_insert_with(|| Hold::new(deliveries, jobs.len(), extra))
            ._room = room;
        let max = self.shared.settings.max_deliveries;
        let split = extra > 0 && deliveries > 1;
        for held in jobs {
            if let Some(reason) = &malformed {
                self.dead(held, reason.clone());
            } else if split {
                let attempts = held.attempts;
                self.done
                    .send(Completion::new(held, Kind::HandBack, attempts, Vec::new()));
            } else if deliveries > u64::from(max) {
                let reason = format!(
                    "delivered {deliveries} times, more than max_deliveries ({max}): it keeps \
                     stopping its workers before they complete it (crash, kill or stall)"
                );
                self.dead(held, reason);
            } else {
                runner.run(held).await;
            }
        }
    }

    /// The room for `jobs` jobs out of `pool`. What the pool lacks is
    /// waited for when `wait`: never more than the whole room, and not once
    /// the worker stops (jobs beyond it run without room, so that an entry
    /// larger than `max_held` cannot block the claimer for ever).
    ///
    /// A short pool is given back before the wait, which then asks for the
    /// whole amount at once: the semaphore serves waiters in order, so two
    /// claimers (one per shard) can never each hold part of the room while
    /// waiting for the rest.
    async fn room_for(
        &self,
        jobs: usize,
        pool: &mut Option<OwnedSemaphorePermit>,
        wait: bool,
    ) -> Option<OwnedSemaphorePermit> {
        if let Some(p) = pool {
            if p.num_permits() > jobs {
                return p.split(jobs);
            }
        }
        let got = pool.take();
        let want = jobs.min(self.max_held);
        if !wait || got.as_ref().map_or(0, |p| p.num_permits()) >= want {
            return got;
        }
        drop(got);
        let mut stop = self.stop.subscribe();
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        tokio::select! {
            p = self.room.clone().acquire_many_owned(want) => p.ok(),
            _ = stop.wait_for(|stopping| *stopping) => None,
        }
    }

    /// Claims new jobs of one shard, on a blocking connection of its own.
    async fn claim_loop(self: Arc<Self>, runner: Arc<dyn Runner>, shard: usize) {
        let keys = self.shared.keys(shard);
        let mut conn = None;
        let mut pause = Duration::from_millis(50);
        let mut stop = self.stop.subscribe();
        // Jobs per entry lately: a read asks for as many entries as its room
        // holds jobs of that size (bundles hold many).
        let mut per_entry = 1.0f64;
        while !self.stopping.load(Ordering::SeqCst) {
            // A worker whose room is all taken by jobs that will not finish
            // must still hear the shutdown.
            let first = tokio::select! {
                room = self.room.clone().acquire_owned() => room,
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            let Ok(mut pool) = first else {
                return;
            };
            let limit = self.read_limit();
            while pool.num_permits() < limit {
                match self.room.clone().try_acquire_owned() {
                    Ok(p) => pool.merge(p),
                    Err(_) => break,
                }
            }
            let count = ((pool.num_permits() as f64 / per_entry) as usize).clamp(1, limit);
            let mut pool = Some(pool);
            if conn.is_none() {
                match self.shared.blocking_connection(self.block_time).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "worker cannot connect; retrying");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let read: Result<Value, RedisError> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(keys.group())
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("BLOCK")
                .arg(self.block_time.as_millis() as u64)
                .arg("STREAMS")
                .arg(keys.jobs())
                .arg(">")
                .query_async(c)
                .await;
            match read {
                Ok(value) => {
                    pause = Duration::from_millis(50);
                    let entries = stream_entries(value);
                    if entries.is_empty() {
                        continue;
                    }
                    // A new delivery's count is 1.
                    let entries: Vec<Entry> = entries
                        .into_iter()
                        .map(|(id, fields)| Entry::parse(shard, id, fields, 1))
                        .collect();
                    // Held (so renewed) at once, also those that wait for
                    // room: a read may bring more jobs than it had room for.
                    {
                        let mut held = self.held();
                        for e in &entries {
                            held.insert(
                                (shard, e.id.clone()),
                                Hold::new(e.deliveries, e.jobs.len(), e.extra),
                            );
                        }
                    }
                    let n = entries.len();
                    let jobs: usize = entries.iter().map(|e| e.jobs.len()).sum();
                    for entry in entries {
                        let room = self.room_for(entry.jobs.len(), &mut pool, true).await;
                        self.take(&*runner, entry, room).await;
                    }
                    per_entry = (per_entry * 3.0 + jobs as f64 / n as f64) / 4.0;
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        self.create_group(shard).await;
                    }
                    tracing::warn!(error = %e, "worker's claim failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Makes the group again: a Redis that restarted without persistence
    /// comes back without it.
    async fn create_group(&self, shard: usize) {
        let keys = self.shared.keys(shard);
        let mut conn = self.shared.conn.clone();
        let _: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys.jobs())
            .arg(keys.group())
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
    }

    /// Renews, reclaims, promotes and prunes for one shard.
    async fn keep_loop(self: Arc<Self>, runner: Arc<dyn Runner>, shard: usize) {
        let s = &self.shared.settings;
        let renew_every = s.lease / 3;
        let reclaim_every = s.lease / 2;
        let promote_every = s
            .backoff_base
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        let tick = renew_every.min(promote_every);
        let prune_every = s.lease.saturating_mul(PRUNE_AFTER_LEASES);
        let (mut renewed, mut reclaimed, mut promoted, mut pruned, mut trimmed) = (
            Instant::now(),
            Instant::now(),
            Instant::now(),
            Instant::now(),
            Instant::now(),
        );
        loop {
            tokio::time::sleep(tick).await;
            if renewed.elapsed() >= renew_every {
                renewed = Instant::now();
                self.renew(shard).await;
            }
            if self.stopping.load(Ordering::SeqCst) {
                continue;
            }
            if reclaimed.elapsed() >= reclaim_every {
                reclaimed = Instant::now();
                self.reclaim(&*runner, shard).await;
            }
            if promoted.elapsed() >= promote_every {
                promoted = Instant::now();
                self.promote(shard).await;
            }
            if pruned.elapsed() >= prune_every {
                pruned = Instant::now();
                self.prune(shard).await;
            }
            if trimmed.elapsed() >= TRIM_EVERY {
                trimmed = Instant::now();
                self.trim(shard).await;
            }
        }
    }

    async fn renew(&self, shard: usize) {
        let held: Vec<(String, u64)> = self
            .held()
            .iter()
            .filter(|((s, _), _)| *s == shard)
            .map(|((_, entry), h)| (entry.clone(), h.deliveries))
            .collect();
        let keys = self.shared.keys(shard);
        for chunk in held.chunks(500) {
            let mut call = EXTEND.key(keys.jobs());
            call.arg(keys.group()).arg(&self.consumer);
            for (id, deliveries) in chunk {
                call.arg(id).arg(*deliveries);
            }
            let mut conn = self.shared.conn.clone();
            let answer: Result<Vec<i64>, RedisError> = call.invoke_async(&mut conn).await;
            match answer {
                Ok(kept) => {
                    let lost = kept.iter().filter(|k| **k == 0).count() as u64;
                    if lost > 0 {
                        self.counters.leases_lost.fetch_add(lost, Ordering::Relaxed);
                        tracing::warn!(lost, consumer = %self.consumer, "leases lost to another worker; their completions will be discarded");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying next round"),
            }
        }
    }

    /// How many places one blocking read may hold: never more than half of
    /// them (at least one), so that while the claimer waits in `XREADGROUP`
    /// the keeper still finds room to take over the jobs of a worker that
    /// died. A read that held every place would leave those jobs unclaimed
    /// for as long as no new job arrived.
    ///
    /// With several shards, each shard's claimer blocks at once: together
    /// they hold at most half, each its share.
    fn read_limit(&self) -> usize {
        let shards = self.shared.shards.len().max(1);
        self.claim_count.min((self.max_held / (2 * shards)).max(1))
    }

    async fn reclaim(&self, runner: &dyn Runner, shard: usize) {
        let mut pool: Option<OwnedSemaphorePermit> = None;
        while pool.as_ref().map_or(0, |p| p.num_permits()) < self.claim_count {
            match (self.room.clone().try_acquire_owned(), &mut pool) {
                (Ok(p), Some(pool)) => pool.merge(p),
                (Ok(p), None) => pool = Some(p),
                (Err(_), _) => break,
            }
        }
        let Some(count) = pool.as_ref().map(|p| p.num_permits()) else {
            return;
        };
        let keys = self.shared.keys(shard);
        let mut conn = self.shared.conn.clone();
        let cursor = self.reclaim_cursor(shard).clone();
        let answer: Result<Value, RedisError> = RECLAIM
            .key(keys.jobs())
            .arg(keys.group())
            .arg(&self.consumer)
            .arg(self.shared.settings.lease.as_millis() as u64)
            .arg(count)
            .arg(cursor)
            .invoke_async(&mut conn)
            .await;
        let Ok(Value::Array(answer)) = answer else {
            if let Err(e) = answer {
                tracing::warn!(error = %e, "reclaim failed; retrying next round");
            }
            return;
        };
        let mut answer = answer.into_iter();
        if let Some(next) = answer.next().as_ref().and_then(as_string) {
            *self.reclaim_cursor(shard) = next;
        }
        for item in answer {
            let Value::Array(parts) = item else { continue };
            let (Some(id), Some(fields), Some(deliveries)) = (
                parts.first().and_then(as_string),
                parts.get(1).map(pairs),
                parts.get(2).and_then(as_u64),
            ) else {
                continue;
            };
            let entry = Entry::parse(shard, id, fields, deliveries);
            let n = entry.jobs.len() as u64;
            self.counters.reclaimed.fetch_add(n, Ordering::Relaxed);
            observe::count("baler_queue_reclaimed_total", &self.shared.name, n);
            for held in &entry.jobs {
                self.shared.emit(QueueEvent::Reclaimed {
                    job_id: held.job_id.clone(),
                    deliveries,
                });
            }
            // The keeper does not wait for room: an entry larger than what
            // is left runs its surplus without room.
            let room = self.room_for(entry.jobs.len(), &mut pool, false).await;
            self.take(runner, entry, room).await;
        }
    }

    /// Keeps the group's consumer list from growing with every crashed
    /// process start.
    async fn prune(&self, shard: usize) {
        let keys = self.shared.keys(shard);
        let mut conn = self.shared.conn.clone();
        let idle = self
            .shared
            .settings
            .lease
            .saturating_mul(PRUNE_AFTER_LEASES);
        let removed: Result<i64, RedisError> = PRUNE
            .key(keys.jobs())
            .arg(keys.group())
            .arg(idle.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "pruning dead consumers failed; retrying later");
        }
    }

    /// Removes finished entries from one shard's jobs stream (see [`TRIM`]).
    async fn trim(&self, shard: usize) {
        let keys = self.shared.keys(shard);
        let mut conn = self.shared.conn.clone();
        let removed: Result<i64, RedisError> = TRIM
            .key(keys.jobs())
            .arg(keys.group())
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "trimming finished jobs failed; retrying later");
        }
    }

    async fn promote(&self, shard: usize) {
        let keys = self.shared.keys(shard);
        let mut conn = self.shared.conn.clone();
        let moved: Result<i64, RedisError> = PROMOTE
            .key(keys.jobs())
            .key(keys.delayed())
            .key(keys.parked())
            .arg(1000)
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = moved {
            tracing::warn!(error = %e, "moving due retries failed; retrying next round");
        }
    }

    /// Writes the completions of one shard: one script call per batch. The
    /// jobs of an entry are written together, once all of them have their
    /// outcome (a bundle is completed whole).
    async fn complete_loop(
        self: Arc<Self>,
        shard: usize,
        mut rx: mpsc::UnboundedReceiver<Completion>,
    ) {
        let mut away = false;
        // Outcomes of entries some of whose jobs are still running.
        let mut gathering: HashMap<String, Vec<Completion>> = HashMap::new();
        while let Some(first) = rx.recv().await {
            let mut ready: Vec<Vec<Completion>> = Vec::new();
            let mut jobs = 0;
            let mut next = Some(first);
            while let Some(c) = next.take() {
                let entry = c.held.entry.clone();
                let wanted = self
                    .held()
                    .get(&(shard, entry.clone()))
                    .map_or(1, |h| h.jobs);
                let list = gathering.entry(entry.clone()).or_default();
                list.push(c);
                if list.len() >= wanted {
                    if let Some(list) = gathering.remove(&entry) {
                        jobs += list.len();
                        ready.push(list);
                    }
                }
                if jobs < COMPLETE_JOBS {
                    next = rx.try_recv().ok();
                }
            }
            if ready.is_empty() {
                continue;
            }
            // Once a stopping worker has given up on its shard's Redis, it
            // tries each later batch once: a shard whose node is away must
            // not hold the shutdown for five tries per batch.
            let tries = if away { 1 } else { 5 };
            away = !self.write(shard, ready, tries).await;
        }
    }

    /// Writes one batch of entries' completions, retrying while Redis is
    /// away. A stopping worker gives up after `stopping_tries` tries: its
    /// claims stay pending and are reclaimed by others once their lease
    /// runs out. Answers whether the batch was written (false: given up).
    async fn write(&self, shard: usize, batch: Vec<Vec<Completion>>, stopping_tries: u32) -> bool {
        let keys = self.shared.keys(shard);
        let mut pause = Duration::from_millis(50);
        let mut tries = 0;
        // Each results stream and marker once, by its index in KEYS.
        #[derive(Default)]
        struct Names {
            list: Vec<String>,
            at: HashMap<String, usize>,
        }
        impl Names {
            /// `name`'s 1-based index, given one on its first use.
            fn index(&mut self, name: &str) -> usize {
                if let Some(i) = self.at.get(name) {
                    return *i;
                }
                self.list.push(name.to_owned());
                self.at.insert(name.to_owned(), self.list.len());
                self.list.len()
            }
        }
        let (mut results, mut markers) = (Names::default(), Names::default());
        let mut slots = Vec::new();
        for c in batch.iter().flatten() {
            let writes = matches!(c.kind, Kind::Ok | Kind::Failed | Kind::Dead);
            let r = if writes && !c.held.producer.is_empty() {
                results.index(&c.held.producer)
            } else {
                0
            };
            let m = if writes && !c.held.key.is_empty() {
                markers.index(&c.held.key)
            } else {
                0
            };
            slots.push((r, m));
        }
        let holds: Vec<(u64, u64)> = {
            let held = self.held();
            batch
                .iter()
                .map(|list| {
                    held.get(&(shard, list[0].held.entry.clone()))
                        .map_or((list[0].held.deliveries, 0), |h| (h.deliveries, h.extra))
                })
                .collect()
        };
        loop {
            let mut call = COMPLETE.key(keys.jobs());
            call.key(keys.delayed())
                .key(keys.parked())
                .key(keys.dead())
                .key(keys.bundled());
            for producer in &results.list {
                call.key(keys.results(producer));
            }
            for key in &markers.list {
                call.key(keys.idem(key));
            }
            call.arg(keys.group())
                .arg(&self.consumer)
                .arg(results.list.len())
                .arg(batch.len());
            for (list, (deliveries, extra)) in batch.iter().zip(&holds) {
                call.arg(&list[0].held.entry)
                    .arg(*deliveries)
                    .arg(list.len())
                    .arg(*extra);
            }
            for (c, (r, m)) in batch.iter().flatten().zip(&slots) {
                // The body goes back only where the job goes back.
                let body: &[u8] = match c.kind {
                    Kind::Retry | Kind::HandBack | Kind::Dead => &c.held.body,
                    Kind::Ok | Kind::Failed => b"",
                };
                call.arg(c.kind.as_str())
                    .arg(c.held.job_id.as_str())
                    .arg(&c.held.producer)
                    .arg(*r)
                    .arg(c.attempts)
                    .arg(&c.data[..])
                    .arg(c.delay.as_millis() as u64)
                    .arg(*m)
                    .arg(&c.held.key)
                    .arg(body);
            }
            let mut conn = self.shared.conn.clone();
            let answer: Result<Vec<i64>, RedisError> = call.invoke_async(&mut conn).await;
            match answer {
                Ok(written) => {
                    self.settle(shard, batch, &written);
                    return true;
                }
                Err(e) => {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "writing completions failed; retrying");
                    if self.stopping.load(Ordering::SeqCst) && tries >= stopping_tries {
                        let mut held = self.held();
                        let mut jobs = 0;
                        for list in &batch {
                            held.remove(&(shard, list[0].held.entry.clone()));
                            jobs += list.len() as u64;
                        }
                        self.counters.unwritten.fetch_add(jobs, Ordering::Relaxed);
                        return false;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn settle(&self, shard: usize, batch: Vec<Vec<Completion>>, written: &[i64]) {
        let name = &self.shared.name;
        let c = &self.counters;
        let mut held = self.held();
        for (i, list) in batch.into_iter().enumerate() {
            let fresh = written.get(i) == Some(&1);
            if let Some(first) = list.first() {
                // Drops its room: the claimer may take more.
                held.remove(&(shard, first.held.entry.clone()));
            }
            for done in list {
                let job_id = done.held.job_id.clone();
                if !fresh {
                    c.stale.fetch_add(1, Ordering::Relaxed);
                    observe::count("baler_queue_stale_discarded_total", name, 1);
                    self.shared.emit(QueueEvent::StaleCompletionDiscarded {
                        job_id,
                        consumer: self.consumer.clone(),
                    });
                    continue;
                }
                match done.kind {
                    Kind::Ok | Kind::Failed => {
                        let ok = done.kind == Kind::Ok;
                        if ok { &c.completed } else { &c.failed }.fetch_add(1, Ordering::Relaxed);
                        observe::count_status(
                            "baler_queue_completed_total",
                            name,
                            done.kind.as_str(),
                            1,
                        );
                        self.shared.emit(QueueEvent::Completed { job_id, ok });
                    }
                    Kind::Retry => {
                        c.retried.fetch_add(1, Ordering::Relaxed);
                        observe::count("baler_queue_retried_total", name, 1);
                        self.shared.emit(QueueEvent::Retried {
                            job_id,
                            attempts: done.attempts,
                        });
                    }
                    Kind::Dead => {
                        c.dead.fetch_add(1, Ordering::Relaxed);
                        observe::count("baler_queue_dead_lettered_total", name, 1);
                        self.shared.emit(QueueEvent::DeadLettered {
                            job_id,
                            reason: String::from_utf8_lossy(&done.data).into_owned(),
                        });
                    }
                    Kind::HandBack => {
                        c.handed_back.fetch_add(1, Ordering::Relaxed);
                        observe::count("baler_queue_handed_back_total", name, 1);
                        self.shared.emit(QueueEvent::HandedBack { job_id });
                    }
                }
            }
        }
        let jobs: usize = held.values().map(|h| h.jobs).sum();
        observe::gauge("baler_queue_held", name, jobs as f64);
    }
}

/// The half of a worker that knows `P` and the handler.
struct Typed<P, O, E, C> {
    shared: Arc<Shared<C>>,
    batcher: Batcher<P, O, E>,
    done: Done,
}

/// A failed attempt: another one after a backoff if attempts remain, else
/// the final failure.
fn retry_or_fail(s: &Settings, held: Held, message: String) -> Completion {
    let attempts = held.attempts + 1;
    if attempts >= s.max_attempts {
        return Completion::new(held, Kind::Failed, attempts, message.into_bytes());
    }
    let doubling = 1u32 << (attempts - 1).min(20);
    let mut retry = Completion::new(held, Kind::Retry, attempts, message.into_bytes());
    retry.delay = s.backoff_base.saturating_mul(doubling).min(s.backoff_max);
    retry
}

impl<P, O, E, C> Runner for Typed<P, O, E, C>
where
    P: DeserializeOwned + Send + Sync + 'static,
    O: Serialize + Send + 'static,
    E: fmt::Display + Send + Sync + 'static,
    C: Codec,
{
    fn run(&self, held: Held) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let payload: P = match self.shared.codec.decode(&held.body) {
                Ok(p) => p,
                Err(message) => {
                    // Never run: it could only fail the same way every time.
                    let reason = format!("undecodable payload: {message}");
                    let attempts = held.attempts;
                    self.done.send(Completion::new(
                        held,
                        Kind::Dead,
                        attempts,
                        reason.into_bytes(),
                    ));
                    return;
                }
            };
            let ticket = match self.batcher.submit(payload).await {
                Ok(t) => t,
                Err(_) => {
                    // The batcher is shutting down: another worker takes it.
                    let attempts = held.attempts;
                    self.done
                        .send(Completion::new(held, Kind::HandBack, attempts, Vec::new()));
                    return;
                }
            };
            let shared = self.shared.clone();
            let done = self.done.clone();
            // One task per job, so that the claimer goes on claiming while
            // the job runs. The batcher resolves the ticket whatever happens
            // (output, error, timeout, panic, shutdown): the task always ends.
            tokio::spawn(async move {
                let ran = held.attempts + 1;
                let completion = match ticket.await {
                    Ok(output) => match shared.codec.encode(&output) {
                        Ok(bytes) => Completion::new(held, Kind::Ok, ran, bytes),
                        Err(m) => Completion::new(
                            held,
                            Kind::Failed,
                            ran,
                            format!("the handler's output could not be encoded: {m}").into_bytes(),
                        ),
                    },
                    Err(baler::Error::Handler(e)) => {
                        Completion::new(held, Kind::Failed, ran, e.to_string().into_bytes())
                    }
                    // Cut off by the shutdown deadline: not an attempt.
                    Err(baler::Error::Abandoned) => {
                        let attempts = held.attempts;
                        Completion::new(held, Kind::HandBack, attempts, Vec::new())
                    }
                    Err(baler::Error::Exhausted { last, .. }) => {
                        retry_or_fail(&shared.settings, held, last.to_string())
                    }
                    // Timed out, panicked, wrong outcome count, engine stopped.
                    Err(other) => retry_or_fail(&shared.settings, held, other.to_string()),
                };
                done.send(completion);
            });
        })
    }

    fn stop(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.batcher.shutdown(deadline).await;
        })
    }
}

/// Settings for a [`Worker`]; see [`Queue::worker`].
pub struct WorkerBuilder<C = Json> {
    queue: Queue<C>,
    max_batch_size: usize,
    linger: Duration,
    max_in_flight: usize,
    max_operation_time: Option<Duration>,
    capacity: Option<Capacity>,
    claim_count: usize,
    max_held: Option<usize>,
    block_time: Duration,
    consumer: Option<String>,
}

impl<C> fmt::Debug for WorkerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("max_batch_size", &self.max_batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl<C: Codec> Queue<C> {
    /// Settings for a worker of this queue.
    pub fn worker(&self) -> WorkerBuilder<C> {
        WorkerBuilder {
            queue: self.clone(),
            max_batch_size: 100,
            linger: Duration::from_millis(1),
            max_in_flight: 4,
            max_operation_time: None,
            capacity: None,
            claim_count: 100,
            max_held: None,
            block_time: Duration::from_secs(1),
            consumer: None,
        }
    }
}

impl<C: Codec> WorkerBuilder<C> {
    /// The most jobs in one handler call (default 100).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// How long a batch may wait for more jobs while others run (default 1 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// The most handler calls running at once (default 4).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// A handler call running longer is dropped, and its jobs count a failed
    /// attempt (retried if attempts remain). Keep it below the lease.
    pub fn max_operation_time(mut self, limit: Duration) -> Self {
        self.max_operation_time = Some(limit);
        self
    }

    /// The capacity handler calls draw on (one job costs 1), possibly shared
    /// with other batchers or, through a lease store, other processes.
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The most jobs one claim reads (default 100).
    pub fn claim_count(mut self, n: usize) -> Self {
        self.claim_count = n;
        self
    }

    /// The most jobs held at once, claimed and not yet completed (default
    /// `max_batch_size × max_in_flight × 2`). A bundle (see
    /// [`ProducerBuilder::bundles`](crate::ProducerBuilder::bundles)) is
    /// taken whole: one larger than this is held alone, beyond it.
    pub fn max_held(mut self, n: usize) -> Self {
        self.max_held = Some(n);
        self
    }

    /// How long one claim waits for new jobs (default 1 s); also how long a
    /// shutdown may wait for the claim in progress.
    pub fn block_time(mut self, block: Duration) -> Self {
        self.block_time = block;
        self
    }

    /// The consumer name prefix (default `worker`); a unique suffix per
    /// start is always added, so that a restarted process never inherits
    /// its predecessor's claims without the lease having run out.
    pub fn consumer(mut self, prefix: impl Into<String>) -> Self {
        self.consumer = Some(prefix.into());
        self
    }

    /// Starts the worker with `handler`: it claims jobs until
    /// [`Worker::shutdown`].
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a zero setting, a lease too short for the block
    /// time, or batching settings baler refuses.
    pub fn start<P, H>(self, handler: H) -> Result<Worker<C>, ConfigError>
    where
        P: DeserializeOwned + Send + Sync + 'static,
        H: Handler<P>,
        H::Output: Serialize,
        H::Error: fmt::Display,
    {
        for (setting, n) in [
            ("max_batch_size", self.max_batch_size),
            ("max_in_flight", self.max_in_flight),
            ("claim_count", self.claim_count),
            ("max_held", self.max_held.unwrap_or(1)),
        ] {
            if n == 0 {
                return Err(ConfigError::Zero { setting });
            }
        }
        let shared = self.queue.shared.clone();
        if self.block_time.is_zero() {
            return Err(ConfigError::ZeroDuration {
                setting: "block_time",
            });
        }
        if shared.settings.lease < self.block_time * 3 {
            return Err(ConfigError::LeaseTooShort {
                lease: shared.settings.lease,
                block: self.block_time,
            });
        }
        let max_held = self.max_held.unwrap_or(
            self.max_batch_size
                .saturating_mul(self.max_in_flight)
                .saturating_mul(2),
        );
        let mut builder = Batcher::builder()
            .name(format!("baler-queue:{}:worker", shared.name))
            .max_batch_size(self.max_batch_size)
            .linger(self.linger)
            .max_in_flight(self.max_in_flight)
            .buffer_size(max_held.max(self.max_batch_size))
            // Retries go through Redis (delayed, with the queue's backoff),
            // so that another worker may take them: one attempt here.
            .max_attempts(1);
        if let Some(limit) = self.max_operation_time {
            builder = builder.max_operation_time(limit);
        }
        if let Some(capacity) = self.capacity {
            builder = builder.capacity(capacity);
        }
        let batcher = builder.build(handler)?;
        let shards = shared.shards.len();
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
        let done = Done(senders.into());
        let consumer = format!(
            "{}-{}-{:x}",
            self.consumer.as_deref().unwrap_or("worker"),
            std::process::id(),
            unique()
        );
        let core = Arc::new(Core {
            shared: shared.clone(),
            consumer: consumer.clone(),
            held: Mutex::new(HashMap::new()),
            room: Arc::new(Semaphore::new(max_held)),
            max_held,
            claim_count: self.claim_count.min(max_held),
            block_time: self.block_time,
            stopping: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
            reclaim_cursors: (0..shards).map(|_| Mutex::new("0-0".to_owned())).collect(),
            counters: Counters::default(),
            done: done.clone(),
        });
        let runner: Arc<dyn Runner> = Arc::new(Typed {
            shared,
            batcher,
            done,
        });
        let claimers = (0..shards)
            .map(|shard| tokio::spawn(core.clone().claim_loop(runner.clone(), shard)))
            .collect();
        let keepers = (0..shards)
            .map(|shard| tokio::spawn(core.clone().keep_loop(runner.clone(), shard)))
            .collect();
        let completers = receivers
            .into_iter()
            .enumerate()
            .map(|(shard, rx)| tokio::spawn(core.clone().complete_loop(shard, rx)))
            .collect();
        Ok(Worker {
            core,
            runner,
            claimers,
            keepers,
            completers,
        })
    }
}

/// A number unique to this worker start.
fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() & 0xffff_ffff
}

/// A running worker. [`shutdown`](Self::shutdown) stops it cleanly; dropping
/// it stops its tasks at once, as a crash would: the jobs it held are
/// reclaimed by other workers once their lease runs out.
///
/// A worker process in a few lines:
///
/// ```no_run
/// use std::time::Duration;
/// use baler::{handler_fn, Batch, Outcome};
/// use baler_queue::Queue;
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let queue = Queue::connect("redis://127.0.0.1:6379", "resize").await?;
///     let worker = queue.worker().start(handler_fn(|batch: Batch<String>| async move {
///         let sizes = batch.iter().map(|name| Outcome::Done(name.len() as u64)).collect();
///         Ok::<_, std::io::Error>(sizes)
///     }))?;
///     tokio::time::sleep(Duration::from_secs(60)).await; // or wait for a signal
///     let report = worker.shutdown(Duration::from_secs(10)).await;
///     println!("{report:?}");
///     Ok(())
/// }
/// ```
pub struct Worker<C = Json> {
    core: Arc<Core<C>>,
    runner: Arc<dyn Runner>,
    /// Per shard: emptied by shutdown, which waits for them.
    claimers: Vec<JoinHandle<()>>,
    keepers: Vec<JoinHandle<()>>,
    completers: Vec<JoinHandle<()>>,
}

impl<C> fmt::Debug for Worker<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.core.consumer)
            .finish()
    }
}

impl<C: Codec> Worker<C> {
    /// The worker's consumer name in the group (unique per start).
    pub fn consumer(&self) -> &str {
        &self.core.consumer
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.core.stats()
    }

    /// Stops claiming, lets the jobs held finish until `deadline`, hands
    /// back those that did not (at once available to other workers), writes
    /// every completion and reports.
    pub async fn shutdown(mut self, deadline: Duration) -> WorkerReport {
        let core = self.core.clone();
        core.stopping.store(true, Ordering::SeqCst);
        core.stop.send_replace(true);
        for claimer in std::mem::take(&mut self.claimers) {
            // The claim in progress ends within the block time; what it
            // brings is run or handed back like the rest.
            let _ = claimer.await;
        }
        self.runner.stop(deadline).await;
        // Every held job's room comes back once its completion is written.
        let max = u32::try_from(core.max_held).unwrap_or(u32::MAX);
        let _ = core.room.acquire_many(max).await;
        for task in self.keepers.iter().chain(&self.completers) {
            task.abort();
        }
        // A clean exit leaves no consumer behind in the group's list.
        for (shard, keys) in core.shared.shards.iter().enumerate() {
            let mut conn = core.shared.conn.clone();
            let _: Result<i64, RedisError> = LEAVE
                .key(keys.jobs())
                .arg(keys.group())
                .arg(&core.consumer)
                .invoke_async(&mut conn)
                .await;
            // Nor the entries it finished last.
            core.trim(shard).await;
        }
        WorkerReport {
            consumer: core.consumer.clone(),
            stats: core.stats(),
            unwritten: core.counters.unwritten.load(Ordering::Relaxed),
        }
    }
}

impl<C> Drop for Worker<C> {
    fn drop(&mut self) {
        for task in self
            .claimers
            .iter()
            .chain(&self.keepers)
            .chain(&self.completers)
        {
            task.abort();
        }
    }
}
