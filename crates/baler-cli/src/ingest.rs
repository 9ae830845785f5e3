//! `baler ingest`: a producer, a batcher and a writer, with a shutdown that
//! loses nothing.
//!
//! ```text
//!  source ──► producer ──submit──► Batcher ──batches──► Writer ──► SQLite / PostgreSQL
//!               │ (waits while the buffer is full)            (one transaction per batch)
//!               └──tickets──► one small task each: written, latency, records not written
//! ```
//!
//! - **Backpressure.** `submit` waits while the batcher holds `--buffer`
//!   records, so the producer (and a reader of stdin behind it) runs exactly
//!   as fast as the database takes batches, and memory stays bounded.
//! - **Pace.** `--capacity` is a token bucket in cost units per second; each
//!   record costs `--cost`. Batches go when they hold `--batch-size` records
//!   or their `--linger` ran out, at most `--max-in-flight` at a time. With
//!   `--shared redis://…`, `--capacity` is shared with the other processes
//!   using the same Redis and name, through partition leases (see
//!   [`crate::shared`]); the leases are given back when the run ends.
//! - **Stopping.** The first SIGINT or SIGTERM stops the producer (a record
//!   it was waiting to submit is not produced), then the batcher shuts down
//!   without a deadline: everything produced is written, and the summary says
//!   `produced == written`. A second signal gives the shutdown a deadline of
//!   now: what is still buffered or being written is abandoned, and every
//!   record produced and not committed is saved to the replay file.
//! - **Resuming.** With `--input FILE`, the sink keeps, in the same
//!   transaction as each batch, the line up to which the file is written
//!   (see [`crate::sink::Progress`] and [`Writer::tracking`]); a run killed
//!   at any moment and started again goes on from there, and writes of
//!   records an earlier run committed above that line are passed over.
//! - **Watching.** Progress comes from [`Batcher::stats`]; write times,
//!   retries and failed batches from [`Batcher::events`]; and when nothing has
//!   been written for a few seconds while records wait, the findings of
//!   [`Batcher::diagnose`] are printed (capacity exhausted, in-flight limit
//!   reached, a batch running long), with the flags that change them.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baler::{
    Batcher, Capacity, CapacityEvent, Code, Diagnosis, Event, Operation, RecvError, Ticket,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{BadLines, IngestArgs};
use crate::input::{InputError, Item, Source};
use crate::latency::Histogram;
use crate::progress::{Progress, Snapshot};
use crate::shared::{SharedError, SharedPlan};
use crate::sink::{Sink, SinkError, SinkSpec};
use crate::summary::{Ended, Summary, Unwritten};
use crate::writer::Writer;

/// The synthetic record count when neither `--records` nor `--input` is given.
pub const DEFAULT_RECORDS: u64 = 10_000;

/// How long nothing may be written, with records waiting, before the
/// engine's diagnosis is printed.
const STALL: Duration = Duration::from_millis(2500);

/// How long to wait, after a forced stop, for writes already running.
const SETTLE: Duration = Duration::from_secs(10);

/// Why `baler ingest` could not start. Nothing was produced.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The input cannot be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The database cannot be used.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The batching flags do not work together.
    #[error(
        "the batching flags do not work together: {0} (the flags are --batch-size, --buffer, \
         --max-in-flight, --max-attempts, --linger and --capacity)"
    )]
    Config(#[from] baler::ConfigError),
    /// One record costs more than the capacity could ever grant.
    #[error(
        "--cost {cost} is more than --capacity allows at once ({limit} per burst of 100 ms), so \
         no record could ever be written; lower --cost or raise --capacity"
    )]
    TooExpensive {
        /// The cost per record.
        cost: u32,
        /// The capacity's burst.
        limit: u64,
    },
    /// The `--shared` flags cannot be used, or Redis cannot be reached.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The signal handlers could not be installed.
    #[error("cannot listen for SIGINT and SIGTERM: {0}")]
    Signals(std::io::Error),
    /// The `--queue` flags cannot be used, or its Redis cannot be reached.
    #[error("{0}")]
    Queue(String),
}

/// What the tickets said, added up.
#[derive(Default)]
struct Collected {
    written: u64,
    failed: u64,
    abandoned: u64,
    /// Failures printed so far (the first few are).
    reported: u32,
    latency: Histogram,
    unwritten: Vec<(u64, Arc<str>, String)>,
}

/// Where each ticket's task adds its outcome. A task per ticket, rather than
/// one loop awaiting them in order, so that one slow batch never holds up the
/// accounting of those after it (nor, through it, the producer).
#[derive(Clone)]
struct Collector {
    collected: Arc<Mutex<Collected>>,
    tasks: TaskTracker,
    progress: Arc<Progress>,
}

/// What the event listener added up.
#[derive(Default)]
struct Tally {
    dispatched_batches: u64,
    dispatched_records: u64,
    write_batches: u64,
    write_time: Duration,
    lagged: bool,
}

/// The signals received so far.
#[derive(Default)]
struct Signals {
    stop: CancellationToken,
    force: CancellationToken,
    first: Mutex<Option<&'static str>>,
}

/// Runs `baler ingest` to its end and returns its summary.
///
/// # Errors
///
/// An [`IngestError`] if the run could not start: nothing was produced then.
pub async fn run(args: IngestArgs) -> Result<Summary, IngestError> {
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
    if let Some(limit) = capacity.max_burst() {
        if u64::from(args.cost) > limit {
            return Err(IngestError::TooExpensive {
                cost: args.cost,
                limit,
            });
        }
    }
    let (source, source_text) = match &args.input {
        Some(path) => (
            Source::json_lines(path, args.max_record_size)?,
            if path == Path::new("-") {
                "JSON lines from stdin".to_owned()
            } else {
                format!("JSON lines from {}", path.display())
            },
        ),
        None => {
            let n = args.records.unwrap_or(DEFAULT_RECORDS);
            (
                Source::synthetic(n, args.record_size, args.max_record_size)?,
                format!("{n} synthetic records of {} bytes", args.record_size),
            )
        }
    };

    let mut sink = Sink::open(&spec, &args.table, args.max_in_flight).await?;
    // A file can be read again: its records are written idempotently and the
    // sink keeps, with them, how far the file is written. Stdin cannot be.
    let tracked = match &args.input {
        Some(path) if path != Path::new("-") => {
            let identity = input_identity(path)?;
            Some((path.clone(), sink.track(&identity).await?))
        }
        _ => None,
    };
    let resume_after = tracked.as_ref().map_or(0, |(_, p)| p.watermark);
    let writer = match &tracked {
        Some(_) => Writer::tracking(sink, resume_after),
        None => Writer::new(sink),
    };
    let batcher: Batcher<_, Instant, SinkError> = Batcher::builder()
        .name("baler-ingest")
        .max_batch_size(args.batch_size)
        .linger(args.linger)
        .max_in_flight(args.max_in_flight)
        .buffer_size(args.buffer)
        .max_attempts(args.max_attempts)
        .event_capacity(16_384)
        .capacity(capacity)
        .build(writer.clone())?;

    let progress = Arc::new(Progress::new(args.progress, source.len_hint()));
    let signals = Arc::new(Signals::default());
    listen_for_signals(signals.clone(), progress.clone())?;
    progress.log(&format!(
        "baler ingest: {source_text} -> {}, table {} | batches of {}, linger {:?}, {} in flight, \
         buffer {}, cost {} per record, capacity {}",
        spec.describe(),
        args.table,
        args.batch_size,
        args.linger,
        args.max_in_flight,
        args.buffer,
        args.cost,
        match (&shared, args.capacity) {
            (Some(plan), _) => plan.describe(),
            (None, Some(c)) => format!("{c}/s"),
            (None, None) => "unlimited".to_owned(),
        },
    ));

    if let Some((path, p)) = &tracked {
        if p.watermark > 0 {
            progress.log(&format!(
                "baler ingest: resuming: lines 1 to {} of {} are in table {} already (an earlier \
                 run wrote them); going on from line {}",
                p.watermark,
                path.display(),
                args.table,
                p.watermark + 1
            ));
        }
    }

    let start = Instant::now();
    let produced = Arc::new(AtomicU64::new(0));
    let last_produced = Arc::new(AtomicU64::new(0));
    let done = CancellationToken::new();

    let events = tokio::spawn(listen_to_events(batcher.clone(), progress.clone()));
    let status = tokio::spawn(show_progress(
        batcher.clone(),
        progress.clone(),
        produced.clone(),
        start,
        done.clone(),
    ));
    let collector = Collector {
        collected: Arc::default(),
        tasks: TaskTracker::new(),
        progress: progress.clone(),
    };
    let skipped = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn(produce(
        (source, resume_after, skipped.clone(), writer.clone()),
        batcher.clone(),
        args.cost,
        args.bad_lines,
        collector.clone(),
        (produced.clone(), last_produced.clone()),
        progress.clone(),
        signals.stop.clone(),
    ));

    let (ended, rejected_lines) = producer
        .await
        .unwrap_or_else(|e| (Ended::Refused(format!("the producer failed: {e}")), 0));
    let ended = match ended {
        Ended::Signal(_) => Ended::Signal(
            signals
                .first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or("signal"),
        ),
        other => other,
    };

    // Write everything produced; a second signal stops the waiting.
    let mut forced = false;
    let report = {
        let shutdown = batcher.shutdown(None);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                report = &mut shutdown => break report,
                () = signals.force.cancelled(), if !forced => {
                    forced = true;
                    let batcher = batcher.clone();
                    tokio::spawn(async move { batcher.shutdown(Duration::ZERO).await });
                }
            }
        }
    };
    // Every ticket has resolved now; wait for their tasks to have counted.
    collector.tasks.close();
    collector.tasks.wait().await;
    let mut collected = std::mem::take(&mut *lock(&collector.collected));
    done.cancel();
    let _ = status.await;
    let tally = events.await.unwrap_or_default();
    let settled = writer.settle(SETTLE).await;
    if let Err(e) = writer.save_progress().await {
        progress.log(&format!(
            "baler: the input's progress could not be saved ({e}); a run again passes over the \
             last records written"
        ));
    }
    if let Some(leases) = leases {
        if !leases.release().await {
            progress.log(
                "baler: Redis did not confirm that the leases were given back; they expire on \
                 their own",
            );
        }
    }
    let elapsed = start.elapsed();
    progress.finish();

    // Records the engine abandoned whose write committed all the same are
    // written, not to be replayed.
    if forced {
        let late: std::collections::HashSet<u64> = writer.late_commits().into_iter().collect();
        let before = collected.unwritten.len();
        collected
            .unwritten
            .retain(|(seq, _, _)| !late.contains(seq));
        let moved = (before - collected.unwritten.len()) as u64;
        collected.written += moved;
        collected.abandoned = collected.abandoned.saturating_sub(moved);
    }
    // Every record abandoned came back in the report too; the collector's
    // list has their bodies and reasons already.
    drop(report);

    collected.unwritten.sort_by_key(|(seq, _, _)| *seq);
    let (replay_file, replay_error) = if collected.unwritten.is_empty() {
        (None, None)
    } else {
        match save_replay(args.replay_file.as_deref(), &collected.unwritten) {
            Ok(path) => (Some(path), None),
            Err(e) => (None, Some(e)),
        }
    };

    let stats = batcher.stats();
    let mean_batch_size = if !tally.lagged && tally.dispatched_batches > 0 {
        tally.dispatched_records as f64 / tally.dispatched_batches as f64
    } else if stats.batches > 0 {
        (stats.completed + stats.failed) as f64 / stats.batches as f64
    } else {
        0.0
    };
    let table_rows = tokio::time::timeout(Duration::from_secs(5), writer.sink().count())
        .await
        .ok()
        .and_then(Result::ok);
    // Records the sink passed over were written by an earlier run: the
    // tickets said committed, and they are, but not by this run.
    let already = writer.passed_over().min(collected.written);
    collected.written -= already;
    Ok(Summary {
        resumed_after: tracked.as_ref().map(|_| resume_after).filter(|&n| n > 0),
        skipped: skipped.load(Ordering::SeqCst),
        already_written: already,
        source: source_text,
        sink: spec.describe(),
        table: args.table.clone(),
        ended,
        forced,
        produced: produced.load(Ordering::SeqCst),
        last_produced: Some(last_produced.load(Ordering::SeqCst)).filter(|&n| n > 0),
        numbered_by_line: args.input.is_some(),
        written: collected.written,
        failed: collected.failed,
        abandoned: collected.abandoned,
        rejected_lines,
        batches: stats.batches,
        mean_batch_size,
        mean_write: (tally.write_batches > 0)
            .then(|| tally.write_time / u32::try_from(tally.write_batches).unwrap_or(u32::MAX)),
        elapsed,
        p50: collected.latency.percentile(50.0),
        p99: collected.latency.percentile(99.0),
        unwritten: collected
            .unwritten
            .iter()
            .map(|(seq, _, reason)| Unwritten {
                seq: *seq,
                reason: reason.clone(),
            })
            .collect(),
        replay_file,
        replay_error,
        unsettled: !settled,
        table_rows,
    })
}

/// The first SIGINT/SIGTERM cancels `stop`; the second cancels `force`.
fn listen_for_signals(signals: Arc<Signals>, progress: Arc<Progress>) -> Result<(), IngestError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).map_err(IngestError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(IngestError::Signals)?;
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            let name = tokio::select! {
                Some(()) = interrupt.recv() => "SIGINT",
                Some(()) = terminate.recv() => "SIGTERM",
                else => return,
            };
            count += 1;
            if count == 1 {
                *signals.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
                progress.log(&format!(
                    "{name}: stopping; no new records, writing every record produced \
                     (Ctrl-C again to stop waiting and save the rest to a replay file)"
                ));
                signals.stop.cancel();
            } else if count == 2 {
                progress.log(&format!(
                    "{name} again: no more waiting; records not written go to the replay file"
                ));
                signals.force.cancel();
            }
        }
    });
    Ok(())
}

/// Reads the source and submits its records until it ends, a bad line stops
/// it, or `stop` is cancelled. Returns why it ended and how many lines it
/// refused.
#[allow(clippy::too_many_arguments)]
async fn produce(
    (mut source, resume_after, skipped, writer): (Source, u64, Arc<AtomicU64>, Writer),
    batcher: Batcher<crate::input::Record, Instant, SinkError>,
    cost: u32,
    bad_lines: BadLines,
    collector: Collector,
    (produced, last_produced): (Arc<AtomicU64>, Arc<AtomicU64>),
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> (Ended, u64) {
    let mut rejected = 0;
    loop {
        let item = tokio::select! {
            biased;
            () = stop.cancelled() => return (Ended::Signal("signal"), rejected),
            item = source.next() => item,
        };
        let record = match item {
            None => return (Ended::InputDone, rejected),
            Some(Item::Record(record)) if record.seq <= resume_after => {
                skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // Refused (and counted) by the run that got past it.
            Some(Item::Bad(bad)) if bad.line() <= resume_after => continue,
            Some(Item::Record(record)) => record,
            Some(Item::Bad(bad)) => {
                rejected += 1;
                match bad_lines {
                    BadLines::Skip => {
                        progress.log(&format!("baler: {bad}; skipped (--bad-lines skip)"));
                        continue;
                    }
                    BadLines::Stop => {
                        progress.log(&format!(
                            "baler: {bad}; stopping: the records before it are written \
                             (pass --bad-lines skip to skip bad lines instead)"
                        ));
                        return (Ended::BadLine(bad.to_string()), rejected);
                    }
                }
            }
            Some(Item::Failed(e)) => {
                progress.log(&format!("baler: {e}; stopping"));
                return (Ended::InputFailed(e.to_string()), rejected);
            }
        };
        let (seq, body) = (record.seq, record.body.clone());
        writer.produced(seq);
        let submitted = Instant::now();
        let result = tokio::select! {
            biased;
            // A record still waiting for room is not produced.
            () = stop.cancelled() => return (Ended::Signal("signal"), rejected),
            result = batcher.submit(Operation::new(record).with_cost(cost)) => result,
        };
        match result {
            Ok(ticket) => {
                produced.fetch_add(1, Ordering::SeqCst);
                last_produced.store(seq, Ordering::SeqCst);
                collector.watch(ticket, seq, body, submitted);
            }
            Err(e) => {
                progress.log(&format!("baler: record {seq} refused: {e}"));
                return (Ended::Refused(format!("record {seq}: {e}")), rejected);
            }
        }
    }
}

impl Collector {
    /// Awaits `ticket` on a task of its own and adds up its outcome. Holding
    /// the ticket until it resolves matters: a ticket dropped before its
    /// record is dispatched cancels the record.
    fn watch(
        &self,
        ticket: Ticket<Instant, SinkError>,
        seq: u64,
        body: Arc<str>,
        submitted: Instant,
    ) {
        let this = self.clone();
        self.tasks.spawn(async move {
            let result = ticket.await;
            let mut c = lock(&this.collected);
            match result {
                Ok(committed) => {
                    c.written += 1;
                    c.latency
                        .record(committed.saturating_duration_since(submitted));
                }
                Err(baler::Error::Abandoned) => {
                    c.abandoned += 1;
                    let reason =
                        "baler stopped waiting (second signal) before it was written".to_owned();
                    c.unwritten.push((seq, body, reason));
                }
                Err(e) => {
                    c.failed += 1;
                    let report = c.reported < 3;
                    if report {
                        c.reported += 1;
                    }
                    c.unwritten.push((seq, body, e.to_string()));
                    drop(c);
                    if report {
                        this.progress
                            .log(&format!("baler: record {seq} not written: {e}"));
                    }
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds up write times and batch sizes, and reports failed batches.
async fn listen_to_events(
    batcher: Batcher<crate::input::Record, Instant, SinkError>,
    progress: Arc<Progress>,
) -> Tally {
    let mut events = batcher.events();
    drop(batcher);
    let mut t = Tally::default();
    loop {
        match events.recv().await {
            Ok(Event::BatchDispatched { size, .. }) => {
                t.dispatched_batches += 1;
                t.dispatched_records += size as u64;
            }
            Ok(Event::BatchCompleted { duration, .. }) => {
                t.write_batches += 1;
                t.write_time += duration;
            }
            Ok(Event::BatchFailed {
                batch,
                reason,
                size,
                ..
            }) => {
                progress.log(&format!(
                    "baler: batch {batch} of {size} records failed ({reason:?})"
                ));
            }
            Ok(Event::BatchRetried {
                batch, operations, ..
            }) => {
                progress.log(&format!(
                    "baler: batch {batch}: {operations} records will be tried again"
                ));
            }
            Ok(Event::Capacity(CapacityEvent::StoreUnreachable { error })) => {
                progress.log(&format!(
                    "baler: the shared capacity's Redis cannot be reached ({error}); writing at \
                     the --reserved rate until it can"
                ));
            }
            Ok(Event::Capacity(CapacityEvent::StoreReachable)) => {
                progress.log("baler: the shared capacity's Redis can be reached again");
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => t.lagged = true,
            Err(RecvError::Closed) => return t,
            Err(_) => t.lagged = true,
        }
    }
}

/// Shows progress until `done`; prints the engine's diagnosis when nothing
/// has been written for a while with records waiting.
async fn show_progress(
    batcher: Batcher<crate::input::Record, Instant, SinkError>,
    progress: Arc<Progress>,
    produced: Arc<AtomicU64>,
    start: Instant,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(progress.interval());
    tick.tick().await;
    let mut window: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut last_change = (Instant::now(), 0);
    let mut diagnosed = false;
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let stats = batcher.stats();
        window.push_back((now, stats.completed));
        while window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(1))
        {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some((t0, c0)), Some((t1, c1))) if t1 > t0 => {
                (c1 - c0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => stats.completed as f64 / start.elapsed().as_secs_f64().max(1e-3),
        };
        if stats.completed != last_change.1 {
            last_change = (now, stats.completed);
            diagnosed = false;
        }
        let stalled = stats.pending() > 0 && now.duration_since(last_change.0) >= STALL;
        progress.update(&Snapshot {
            elapsed: start.elapsed(),
            produced: produced.load(Ordering::SeqCst),
            stats,
            rate,
        });
        if stalled && !diagnosed {
            diagnosed = true;
            let diagnosis = batcher.diagnose().await;
            progress.log(&format!(
                "baler: nothing written for {:.0}s; the batcher says: {diagnosis}{}",
                now.duration_since(last_change.0).as_secs_f64(),
                flag_hints(&diagnosis)
            ));
        }
    }
}

/// The findings' advice in this command's terms: the flag that sets what a
/// finding names by its builder setting.
fn flag_hints(diagnosis: &Diagnosis) -> String {
    let mut hints: Vec<&str> = Vec::new();
    for finding in &diagnosis.findings {
        let hint = match finding.code {
            Code::InFlightCapReached => {
                "every write slot is busy: the database is slow to answer, or raise --max-in-flight"
            }
            Code::NoCapacity | Code::CapacityBound => {
                "--capacity sets the pace (with --shared: --reserved, and the partitions this \
                 process holds)"
            }
            Code::BufferFull => "producing waits for room: --buffer sets how many records are held",
            Code::RetryStorm => {
                "writes are failing and being retried: --max-attempts sets how often"
            }
            Code::SmallBatches => "--linger lets a batch wait longer to fill, up to --batch-size",
            _ => continue,
        };
        if !hints.contains(&hint) {
            hints.push(hint);
        }
    }
    hints
        .iter()
        .map(|h| format!("\n  baler ingest: {h}"))
        .collect()
}

/// What says that a file is the same input as a run before: its full path,
/// its size and a hash of its first 64 KiB. A file changed in place (or
/// grown) is a new input, written from its first line.
pub(crate) fn input_identity(path: &Path) -> Result<String, InputError> {
    use std::io::Read;
    let open = |source| InputError::Open {
        path: path.to_owned(),
        source,
    };
    let full = std::fs::canonicalize(path).map_err(open)?;
    let mut file = std::fs::File::open(&full).map_err(open)?;
    let size = file.metadata().map_err(open)?.len();
    let mut block = Vec::with_capacity(1 << 16);
    (&mut file)
        .take(1 << 16)
        .read_to_end(&mut block)
        .map_err(open)?;
    // FNV-1a: stable across builds and Rust versions, unlike std's hasher.
    let hash = block.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Ok(format!("{} size={size} fnv64={hash:016x}", full.display()))
}

/// Writes the records not written as JSON lines, in input order, to `path`
/// or to a new `baler-unwritten-UNIXTIME.jsonl`.
fn save_replay(
    path: Option<&Path>,
    records: &[(u64, Arc<str>, String)],
) -> Result<PathBuf, String> {
    let (file, path) = match path {
        Some(p) => (
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p),
            p.to_owned(),
        ),
        None => {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut n = 0;
            loop {
                let name = if n == 0 {
                    format!("baler-unwritten-{secs}.jsonl")
                } else {
                    format!("baler-unwritten-{secs}-{n}.jsonl")
                };
                let p = PathBuf::from(name);
                match OpenOptions::new().write(true).create_new(true).open(&p) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                    other => break (other, p),
                }
            }
        }
    };
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut out = BufWriter::new(file.map_err(fail)?);
    for (_, body, _) in records {
        out.write_all(body.as_bytes()).map_err(fail)?;
        out.write_all(b"\n").map_err(fail)?;
    }
    out.into_inner()
        .map_err(|e| fail(e.into_error()))?
        .sync_all()
        .map_err(fail)?;
    Ok(path)
}
