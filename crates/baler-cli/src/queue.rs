//! `baler ingest --queue` and `baler work`: the records go through baler's
//! durable queue on Redis Streams, and worker processes write them.
//!
//! ```text
//!  baler ingest --queue ──job per --batch-size records──► {q}:jobs ──► baler work ──► Batcher ──► sink
//!        ▲                                                               (one or many)
//!        └──────────── each job's result: rows inserted, rows already there ──┘
//! ```
//!
//! - **A job per batch of records**, not per record: a job costs the queue
//!   a few Redis commands (enqueue script, claim, completion script, result
//!   read), so a job of 100 records costs a hundredth of that per record.
//! - **Idempotent writes.** A job carries its input's id (`source`) with its
//!   records, and a worker writes them with insert-or-ignore on the unique
//!   `(source, seq)`. A worker killed after its commit and before the job's
//!   completion leaves the job to be run again by another worker: its
//!   records are passed over then, and its result says they were already in
//!   the table. So `produced == written + already in the table` at the end,
//!   and the table holds each record once.
//! - **Pace.** A worker feeds the records of the jobs it claims into a
//!   [`Batcher`] whose cost is one per record, so `--capacity` (and
//!   `--shared`) count records per second as `baler ingest` does; a job
//!   larger than the capacity's burst is split into pieces that fit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baler::{Batch, Batcher, Capacity, Handler, HandlerResult, Operation, Outcome};
use baler_queue::Queue;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cli::{BadLines, IngestArgs};
use crate::ingest::{input_identity, IngestError, DEFAULT_RECORDS};
use crate::input::{Item, Record, Source};
use crate::shared::SharedPlan;
use crate::sink::{Sink, SinkError, SinkSpec};
use crate::summary::{Ended, Summary, Unwritten};

/// A job: the input's id and a batch of its records, `(seq, body)`.
pub type JobPayload = (i64, Vec<(u64, String)>);

/// A job's result: rows inserted, and rows that were in the table already.
pub type JobOutput = (u64, u64);

fn queue_err(what: &str, e: impl std::fmt::Display) -> IngestError {
    IngestError::Queue(format!("--queue: {what}: {e}"))
}

/// A 63-bit id for an input: stable for a file (its identity), fresh for
/// synthetic records and stdin, which are a new input on every run.
fn source_id(args: &IngestArgs) -> Result<i64, IngestError> {
    let text = match &args.input {
        Some(path) if path != Path::new("-") => input_identity(path)?,
        _ => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("run {} {nanos}", std::process::id())
        }
    };
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Positive, and never a small number that baler_progress ids use.
    Ok(i64::try_from(hash >> 1).unwrap_or(i64::MAX).max(1 << 32))
}

/// Opens the queue that --queue names, with --queue-name, --lease,
/// --queue-shards and --queue-cluster.
async fn open_queue(args: &IngestArgs, url: &str) -> Result<Queue, IngestError> {
    if args.queue_shards == 0 {
        return Err(IngestError::Queue(
            "--queue-shards must be at least 1 (the default: one shard)".to_owned(),
        ));
    }
    let builder = if args.queue_cluster {
        let nodes = url.split(',').map(str::trim).filter(|n| !n.is_empty());
        Queue::cluster_builder(nodes, &args.queue_name)
    } else {
        Queue::builder(url, &args.queue_name)
    };
    builder
        .lease(args.lease)
        .shards(args.queue_shards)
        .build()
        .await
        .map_err(|e| queue_err(url, e))
}

/// Runs `baler ingest --queue URL`: enqueues the records as jobs and waits
/// for every job's result.
///
/// # Errors
///
/// An [`IngestError`] if the run could not start.
pub async fn produce(args: IngestArgs, url: &str) -> Result<Summary, IngestError> {
    let (mut source, source_text) = match &args.input {
        Some(path) => (
            Source::json_lines(path, args.max_record_size)?,
            format!("JSON lines from {}", path.display()),
        ),
        None => {
            let n = args.records.unwrap_or(DEFAULT_RECORDS);
            (
                Source::synthetic(n, args.record_size, args.max_record_size)?,
                format!("{n} synthetic records of {} bytes", args.record_size),
            )
        }
    };
    if args.batch_size == 0 {
        return Err(queue_err("--batch-size", "give 1 or more records per job"));
    }
    if args.capacity.is_some() || args.shared.is_some() {
        // The producer writes nothing; a pace given here would be ignored.
        return Err(IngestError::Queue(
            "with --queue, the workers write: give --capacity and --shared to baler work, not \
             to baler ingest"
                .to_owned(),
        ));
    }
    let id = source_id(&args)?;
    let queue = open_queue(&args, url).await?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let producer = queue
        .producer(&format!("baler-ingest-{}-{nanos}", std::process::id()))
        .build::<JobPayload, JobOutput>()
        .map_err(|e| queue_err("the producer", e))?;
    eprintln!(
        "baler ingest: {source_text} -> jobs of {} records on queue {} at {url}; `baler work` \
         processes write them",
        args.batch_size, args.queue_name
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let force = tokio_util::sync::CancellationToken::new();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(IngestError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(IngestError::Signals)?;
        let (stop, force) = (stop.clone(), force.clone());
        tokio::spawn(async move {
            for (second, token) in [(false, stop), (true, force)] {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                if second {
                    eprintln!(
                        "baler: no more waiting; the jobs still on the queue stay there for the \
                         workers"
                    );
                } else {
                    eprintln!(
                        "baler: stopping; no new records, waiting for the results of the jobs \
                         enqueued (again to stop waiting)"
                    );
                }
                token.cancel();
            }
        });
    }

    let start = Instant::now();
    let written = Arc::new(AtomicU64::new(0));
    let already = Arc::new(AtomicU64::new(0));
    let unwritten: Arc<Mutex<Vec<Unwritten>>> = Arc::default();
    let pending: Pending = Arc::default();
    let tasks = TaskTracker::new();
    let (mut produced, mut rejected, mut last, mut jobs) = (0u64, 0u64, None, 0u64);
    let mut chunk: Vec<(u64, String)> = Vec::with_capacity(args.batch_size);
    let ended = loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => break Ended::Signal("signal"),
            item = source.next() => item,
        };
        let record = match item {
            None => break Ended::InputDone,
            Some(Item::Record(record)) => Some(record),
            Some(Item::Bad(bad)) => {
                rejected += 1;
                eprintln!("baler: {bad}");
                if args.bad_lines == BadLines::Stop {
                    break Ended::BadLine(bad.to_string());
                }
                None
            }
            Some(Item::Failed(e)) => break Ended::InputFailed(e.to_string()),
        };
        if let Some(record) = record {
            chunk.push((record.seq, record.body.to_string()));
        }
        if chunk.len() >= args.batch_size {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(args.batch_size));
            match enqueue(
                &producer, id, full, &tasks, &written, &already, &unwritten, &pending,
            )
            .await
            {
                Ok((n, seq)) => {
                    produced += n;
                    last = Some(seq);
                    jobs += 1;
                }
                Err(e) => break Ended::Refused(e),
            }
        }
    };
    if !chunk.is_empty() && !matches!(ended, Ended::Refused(_)) {
        match enqueue(
            &producer, id, chunk, &tasks, &written, &already, &unwritten, &pending,
        )
        .await
        {
            Ok((n, seq)) => {
                produced += n;
                last = Some(seq);
                jobs += 1;
            }
            Err(e) => eprintln!("baler: {e}"),
        }
    }
    tasks.close();
    let mut forced = false;
    let mut heard = 0;
    let mut tick = tokio::time::interval(STALL);
    tick.tick().await;
    loop {
        tokio::select! {
            () = tasks.wait() => break,
            () = force.cancelled() => {
                forced = true;
                break;
            }
            _ = tick.tick() => {
                let now = written.load(Ordering::SeqCst) + already.load(Ordering::SeqCst);
                let waiting = lock(&pending).len();
                if now == heard && waiting > 0 {
                    eprintln!(
                        "baler: no job result for {}s, {waiting} jobs waiting: is a `baler work \
                         --queue {url} --queue-name {}` running?",
                        STALL.as_secs(),
                        args.queue_name
                    );
                }
                heard = now;
            }
        }
    }
    let mut abandoned = 0;
    if forced {
        let reason = "baler stopped waiting for its job's result; the job stays on the queue, and \
                      a baler work writes it"
            .to_owned();
        let mut unwritten = lock(&unwritten);
        for (_, seqs) in lock(&pending).drain() {
            abandoned += seqs.len() as u64;
            unwritten.extend(seqs.into_iter().map(|seq| Unwritten {
                seq,
                reason: reason.clone(),
            }));
        }
    }
    // After a forced stop the results are not wanted; they stay in Redis.
    let _ = producer
        .shutdown(if forced {
            Duration::ZERO
        } else {
            Duration::from_secs(5)
        })
        .await;
    let mut unwritten = std::mem::take(&mut *unwritten.lock().unwrap_or_else(|p| p.into_inner()));
    unwritten.sort_by_key(|u| u.seq);
    let failed = unwritten.len() as u64 - abandoned;
    Ok(Summary {
        source: source_text,
        sink: format!("queue {} at {url} (written by baler work)", args.queue_name),
        table: args.table.clone(),
        ended,
        forced,
        produced,
        last_produced: last,
        numbered_by_line: args.input.is_some(),
        written: written.load(Ordering::SeqCst),
        resumed_after: None,
        skipped: 0,
        already_written: already.load(Ordering::SeqCst),
        failed,
        abandoned,
        rejected_lines: rejected,
        batches: jobs,
        mean_batch_size: if jobs > 0 {
            produced as f64 / jobs as f64
        } else {
            0.0
        },
        mean_write: None,
        elapsed: start.elapsed(),
        p50: None,
        p99: None,
        unwritten,
        replay_file: None,
        replay_error: None,
        unsettled: false,
        table_rows: None,
    })
}

/// How long without a job result, jobs waiting, before asking whether a
/// worker runs.
const STALL: Duration = Duration::from_secs(5);

/// The record numbers of the jobs whose result has not come, by job.
type Pending = Arc<Mutex<std::collections::HashMap<u64, Vec<u64>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Enqueues one job and watches its result on a task of its own. Returns
/// the job's record count and last record number.
#[allow(clippy::too_many_arguments)]
async fn enqueue(
    producer: &baler_queue::Producer<JobPayload, JobOutput>,
    id: i64,
    records: Vec<(u64, String)>,
    tasks: &TaskTracker,
    written: &Arc<AtomicU64>,
    already: &Arc<AtomicU64>,
    unwritten: &Arc<Mutex<Vec<Unwritten>>>,
    pending: &Pending,
) -> Result<(u64, u64), String> {
    let n = records.len() as u64;
    let seqs: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    let last = seqs.last().copied().unwrap_or(0);
    let ticket = producer
        .enqueue((id, records))
        .await
        .map_err(|e| format!("a job of {n} records could not be enqueued: {e}"))?;
    let (written, already, unwritten) = (written.clone(), already.clone(), unwritten.clone());
    let pending = pending.clone();
    // The first record's number is unique to the job.
    let key = seqs.first().copied().unwrap_or(0);
    lock(&pending).insert(key, seqs);
    tasks.spawn(async move {
        let result = ticket.await;
        // Taken by a forced stop already: counted as abandoned there.
        let Some(seqs) = lock(&pending).remove(&key) else {
            return;
        };
        match result {
            Ok((inserted, there)) => {
                written.fetch_add(inserted, Ordering::SeqCst);
                already.fetch_add(there, Ordering::SeqCst);
            }
            Err(e) => {
                let reason = e.to_string();
                unwritten
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(seqs.into_iter().map(|seq| Unwritten {
                        seq,
                        reason: reason.clone(),
                    }));
            }
        }
    });
    Ok((n, last))
}

/// One piece of a job for the worker's batcher: its input and records.
type Piece = (i64, Vec<Record>);

/// Writes pieces of jobs into the sink, each in one transaction, passing over
/// records already there. Its output per piece: rows inserted.
struct PieceWriter {
    sink: Arc<Sink>,
}

impl Handler<Piece> for PieceWriter {
    type Output = u64;
    type Error = SinkError;

    async fn handle(&self, batch: Batch<Piece>) -> HandlerResult<u64, SinkError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for (source, rows) in batch.iter() {
            outcomes.push(match self.sink.write_for(*source, rows.clone()).await {
                Ok(inserted) => Outcome::Done(inserted),
                Err(e) if e.is_transient() => Outcome::Retry(e),
                Err(e) => Outcome::Failed(e),
            });
        }
        Ok(outcomes)
    }
}

/// The queue worker's handler: splits each job into pieces that fit the
/// capacity, runs them through the batcher, and adds up their results.
struct JobHandler {
    batcher: Batcher<Piece, u64, SinkError>,
    piece: usize,
    records: Arc<AtomicU64>,
}

impl Handler<JobPayload> for JobHandler {
    type Output = JobOutput;
    type Error = String;

    async fn handle(&self, batch: Batch<JobPayload>) -> HandlerResult<JobOutput, String> {
        // Every piece of every job is submitted before any is awaited, so
        // that the batcher can write pieces of several jobs side by side.
        let mut jobs = Vec::with_capacity(batch.len());
        for (source, records) in batch.iter() {
            let mut tickets = Vec::new();
            let mut refused = None;
            for piece in records.chunks(self.piece) {
                let rows: Vec<Record> = piece
                    .iter()
                    .map(|(seq, body)| Record {
                        seq: *seq,
                        body: body.as_str().into(),
                    })
                    .collect();
                let cost = u32::try_from(rows.len()).unwrap_or(u32::MAX);
                match self
                    .batcher
                    .submit(Operation::new((*source, rows)).with_cost(cost))
                    .await
                {
                    Ok(ticket) => tickets.push(ticket),
                    Err(e) => {
                        refused = Some(e.to_string());
                        break;
                    }
                }
            }
            jobs.push((records.len() as u64, tickets, refused));
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        for (total, tickets, refused) in jobs {
            let mut inserted = 0;
            let mut failed = refused;
            for ticket in tickets {
                match ticket.await {
                    Ok(n) => inserted += n,
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            outcomes.push(match failed {
                // The pieces written stay written; the job runs again and
                // passes over them.
                Some(e) => Outcome::Retry(e),
                None => {
                    self.records.fetch_add(total, Ordering::Relaxed);
                    Outcome::Done((inserted, total - inserted.min(total)))
                }
            });
        }
        Ok(outcomes)
    }
}

/// Runs `baler work`: claims jobs and writes their records until SIGINT or
/// SIGTERM, then finishes or hands back what it holds.
///
/// # Errors
///
/// An [`IngestError`] if the worker could not start.
pub async fn work(args: IngestArgs) -> Result<WorkReport, IngestError> {
    let Some(url) = args.queue.clone() else {
        return Err(queue_err(
            "missing",
            "baler work needs --queue redis://HOST:PORT, the queue baler ingest --queue fills",
        ));
    };
    if args.input.is_some() || args.records.is_some() {
        return Err(IngestError::Queue(
            "baler work takes its records from --queue; --input and --records belong to baler \
             ingest"
                .to_owned(),
        ));
    }
    let spec = SinkSpec::parse(&args.sink())?.password_from(|name| std::env::var(name).ok());
    let shared = SharedPlan::from_args(&args)?;
    let (capacity, leases) = match (&shared, args.capacity) {
        (Some(plan), _) => {
            let (capacity, leases) = plan.start().await?;
            (capacity, Some(leases))
        }
        (None, Some(rate)) => (Capacity::provisioned(rate)?, None),
        (None, None) => (Capacity::unlimited(), None),
    };
    let piece = capacity
        .max_burst()
        .map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX))
        .max(1);
    let sink = Sink::open(&spec, &args.table, args.max_in_flight).await?;
    sink.prepare_sources().await?;
    let sink = Arc::new(sink);
    let batcher: Batcher<Piece, u64, SinkError> = Batcher::builder()
        .name("baler-work")
        .max_batch_size(args.max_in_flight.max(1))
        .linger(Duration::ZERO)
        .max_in_flight(args.max_in_flight)
        .buffer_size(args.buffer)
        .max_attempts(args.max_attempts)
        .capacity(capacity)
        .build(PieceWriter { sink: sink.clone() })?;
    let queue = open_queue(&args, &url).await?;
    let records = Arc::new(AtomicU64::new(0));
    let worker = queue
        .worker()
        .max_in_flight(args.max_in_flight)
        // A claim waits at most a quarter of the lease, so that a worker
        // waiting for jobs renews its leases in time whatever --lease is.
        .block_time((args.lease / 4).clamp(Duration::from_millis(1), Duration::from_secs(1)))
        .start(JobHandler {
            batcher: batcher.clone(),
            piece,
            records: records.clone(),
        })
        .map_err(|e| queue_err("the worker", e))?;
    eprintln!(
        "baler work: worker {} on queue {} at {url} -> {}, table {}; SIGINT or SIGTERM to stop",
        worker.consumer(),
        args.queue_name,
        spec.describe(),
        args.table
    );
    let start = Instant::now();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(IngestError::Signals)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(IngestError::Signals)?;
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
    let report = worker.shutdown(Duration::from_secs(10)).await;
    let _ = batcher.shutdown(Duration::from_secs(10)).await;
    if let Some(leases) = leases {
        let _ = leases.release().await;
    }
    Ok(WorkReport {
        queue: format!("{} at {url}", args.queue_name),
        consumer: report.consumer,
        sink: spec.describe(),
        table: args.table.clone(),
        jobs: report.stats.completed,
        failed: report.stats.failed,
        reclaimed: report.stats.reclaimed,
        handed_back: report.stats.handed_back,
        records: records.load(Ordering::SeqCst),
        unwritten: report.unwritten,
        elapsed: start.elapsed(),
        table_rows: sink.count().await.ok(),
    })
}

/// What one `baler work` process did, printed when it stops.
#[derive(Debug, Clone)]
pub struct WorkReport {
    /// The queue and its Redis.
    pub queue: String,
    /// The worker's consumer name.
    pub consumer: String,
    /// The database written to.
    pub sink: String,
    /// The table.
    pub table: String,
    /// Jobs whose records this worker wrote (or found written).
    pub jobs: u64,
    /// Jobs whose result it wrote as failed.
    pub failed: u64,
    /// Jobs it took over from workers whose lease ran out.
    pub reclaimed: u64,
    /// Jobs it gave back to the queue when it stopped.
    pub handed_back: u64,
    /// Records of the jobs it completed.
    pub records: u64,
    /// Jobs whose completion it could not record before it stopped (Redis
    /// unreachable): another worker runs them once their lease runs out.
    pub unwritten: u64,
    /// From start to stop.
    pub elapsed: Duration,
    /// Rows in the table at the end (every worker's and earlier runs').
    pub table_rows: Option<u64>,
}

impl WorkReport {
    /// The report for a person.
    pub fn to_text(&self) -> String {
        format!(
            "baler work ({} on queue {} -> {}, table {})\n  jobs         {} completed ({} \
             records), {} failed, {} reclaimed from stopped workers, {} handed back, {} not \
             recorded (run again elsewhere)\n  elapsed      {:.2}s\n  table rows   {}\n",
            self.consumer,
            self.queue,
            self.sink,
            self.table,
            self.jobs,
            self.records,
            self.failed,
            self.reclaimed,
            self.handed_back,
            self.unwritten,
            self.elapsed.as_secs_f64(),
            self.table_rows
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        )
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "queue": self.queue,
            "consumer": self.consumer,
            "sink": self.sink,
            "table": self.table,
            "jobs": self.jobs,
            "failed": self.failed,
            "reclaimed": self.reclaimed,
            "handed_back": self.handed_back,
            "records": self.records,
            "unwritten": self.unwritten,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "table_rows": self.table_rows,
        })
    }
}
