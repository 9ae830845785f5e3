//! Running one batch: call the handler, survive its panics and timeouts, and
//! resolve every operation of the batch exactly once.
//!
//! [`run_batch`] is one batch's future: it resolves the tickets itself, then
//! returns to the engine what is left for it to do: operations to retry,
//! payloads abandoned at a shutdown deadline, and the counts. Where it runs is
//! the [`Execution`](crate::Execution) setting: on a task of its own, which
//! sends the report to the engine as a message, or polled by the engine's own
//! task, which takes the report when the future completes. Either way the
//! engine releases the batch's in-flight slot only when it has the report,
//! which is after the handler's future has been dropped: the in-flight limit is
//! a hard cap even for batches that time out.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::events::{BatchFailure, BatchId, Ended};
use crate::handler::{Batch, BatchData, BoxFuture, ErasedHandler, HandlerResult, Outcome};
use crate::instruments::{self, BatchMetrics};
use crate::operation::OpId;
use crate::queued::{Queued, Res};
use crate::slot::Resolver;

/// What the task needs to know about each operation besides its payload.
pub(crate) struct Tracker<O, E> {
    pub(crate) resolver: Resolver<Res<O, E>>,
    pub(crate) id: u64,
    pub(crate) cost: u32,
    pub(crate) attempts: u32,
    pub(crate) epoch: u64,
    /// When it was accepted, in nanoseconds since `RunCtx::origin`.
    pub(crate) submitted: u64,
}

/// The task's report to the engine.
pub(crate) struct Done<T, O, E> {
    pub(crate) batch: usize,
    pub(crate) ended: Ended,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) retry: Vec<Queued<T, O, E>>,
    pub(crate) abandoned: Vec<(OpId, u32, T)>,
    pub(crate) abandoned_count: u64,
}

/// What one batch's task needs to know.
pub(crate) struct RunCtx<T, K, O, E> {
    pub(crate) batch: usize,
    pub(crate) id: BatchId,
    pub(crate) shared: Arc<RunShared<T, K, O, E>>,
}

/// What every batch of an engine shares, behind one reference count.
pub(crate) struct RunShared<T, K, O, E> {
    pub(crate) handler: Arc<dyn ErasedHandler<T, K, O, E>>,
    /// The engine's start, from which `Tracker::submitted` counts.
    pub(crate) origin: tokio::time::Instant,
    pub(crate) max_attempts: u32,
    pub(crate) max_time: Option<Duration>,
    pub(crate) retry_timeouts: bool,
    pub(crate) abort: CancellationToken,
    /// The batcher's name, for the batch's span.
    pub(crate) name: Arc<str>,
    pub(crate) metrics: BatchMetrics,
}

enum Finish<O, E> {
    Outcomes(Vec<Outcome<O, E>>),
    BatchError(E),
    Panicked(String),
    TimedOut(Duration),
    Abandoned,
}

/// What becomes of one operation once its batch has ended.
enum Fate<O, E> {
    Resolve(Res<O, E>),
    Retry(Res<O, E>),
    Abandon,
}

/// The fates of a batch's operations, produced one at a time in the
/// batch's order, so that no vector of them is built.
enum Fates<O, E> {
    /// One outcome per operation, from the handler.
    Each(std::vec::IntoIter<Outcome<O, E>>),
    /// The same error for every operation.
    All(Error<E>),
    /// The batch ran past its maximum operation time.
    TimedOut(Duration),
    /// The shutdown deadline passed.
    Abandon,
}

impl<O, E> Fates<O, E> {
    fn next<T, K>(&mut self, t: &Tracker<O, E>, ctx: &RunShared<T, K, O, E>) -> Fate<O, E> {
        match self {
            Fates::Each(outcomes) => match outcomes.next() {
                Some(Outcome::Done(o)) => Fate::Resolve(Ok(o)),
                Some(Outcome::Failed(e)) => Fate::Resolve(Err(Error::Handler(Arc::new(e)))),
                Some(Outcome::Retry(e)) if t.attempts < ctx.max_attempts => {
                    Fate::Retry(Err(retry_error(e, t.attempts, ctx)))
                }
                Some(Outcome::Retry(e)) => Fate::Resolve(Err(retry_error(e, t.attempts, ctx))),
                // There are as many outcomes as operations.
                None => Fate::Resolve(Err(Error::OutcomeCount {
                    expected: 0,
                    got: 0,
                })),
            },
            Fates::All(err) => Fate::Resolve(Err(err.clone())),
            Fates::TimedOut(after) => {
                let err = Error::TimedOut {
                    after: *after,
                    attempts: t.attempts,
                };
                if ctx.retry_timeouts && t.attempts < ctx.max_attempts {
                    Fate::Retry(Err(err))
                } else {
                    Fate::Resolve(Err(err))
                }
            }
            Fates::Abandon => Fate::Abandon,
        }
    }
}

pub(crate) async fn run_batch<T, K, O, E>(
    data: Arc<BatchData<T, K>>,
    trackers: Vec<Tracker<O, E>>,
    ctx: RunCtx<T, K, O, E>,
) -> Done<T, O, E>
where
    T: Send + Sync + 'static,
    K: std::fmt::Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    let RunCtx {
        batch: batch_index,
        id,
        shared,
    } = ctx;
    let ctx = &*shared;
    let span = tracing::info_span!(
        "batch",
        batcher = %ctx.name,
        id = id.get(),
        key = ?data.key,
        size = trackers.len(),
        cost = data.info.iter().map(|i| u64::from(i.cost)).sum::<u64>(),
        attempt = data.info.iter().map(|i| i.attempt).max().unwrap_or(1),
        outcome = tracing::field::Empty,
    );
    let handler_started = instruments::ENABLED.then(tokio::time::Instant::now);
    let ended = {
        let handler_future = CatchUnwind {
            inner: ctx.handler.call(Batch { data: data.clone() }),
        };
        let limited = async {
            match ctx.max_time {
                Some(limit) => match tokio::time::timeout(limit, handler_future).await {
                    Ok(result) => ended_from(result),
                    Err(_) => Finish::TimedOut(limit),
                },
                None => ended_from(handler_future.await),
            }
        };
        let raced = async {
            // As a select biased towards the abort, but registering for it
            // (a lock to register and one to deregister) only once the
            // handler has not ended on its first poll: until then, a look
            // at the token is enough.
            let mut cancelled = std::pin::pin!(ctx.abort.cancelled());
            let mut limited = std::pin::pin!(limited);
            let mut registered = false;
            std::future::poll_fn(|cx| {
                if registered {
                    if cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Finish::Abandoned);
                    }
                } else if ctx.abort.is_cancelled() {
                    return Poll::Ready(Finish::Abandoned);
                }
                if let Poll::Ready(ended) = limited.as_mut().poll(cx) {
                    return Poll::Ready(ended);
                }
                if !registered {
                    registered = true;
                    if cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Finish::Abandoned);
                    }
                }
                Poll::Pending
            })
            .await
        };
        if span.is_disabled() {
            // Nobody listens: no span to enter and leave at every poll.
            raced.await
        } else {
            tracing::Instrument::instrument(raced, span.clone()).await
        }
        // The handler's future is dropped here, before anything is resolved.
    };
    // Resolutions below are stamped with the time the handler ended.
    let handler_ended = instruments::ENABLED.then(tokio::time::Instant::now);
    if let (Some(start), Some(end)) = (handler_started, handler_ended) {
        ctx.metrics
            .handler_duration(end.saturating_duration_since(start));
    }
    let summary = match &ended {
        Finish::Outcomes(o) if o.len() == trackers.len() => Ended::Outcomes,
        Finish::Outcomes(_) => Ended::Failed(BatchFailure::OutcomeCount),
        Finish::BatchError(_) => Ended::Failed(BatchFailure::Handler),
        Finish::Panicked(_) => Ended::Failed(BatchFailure::Panicked),
        Finish::TimedOut(after) => Ended::TimedOut(*after),
        Finish::Abandoned => Ended::Abandoned,
    };
    span.record(
        "outcome",
        match summary {
            Ended::Outcomes => "outcomes",
            Ended::Failed(BatchFailure::Handler) => "handler-error",
            Ended::Failed(BatchFailure::Panicked) => "panicked",
            Ended::Failed(_) => "outcome-count",
            Ended::TimedOut(_) => "timed-out",
            Ended::Abandoned => "abandoned",
        },
    );

    let n = trackers.len();
    let mut fates = match ended {
        Finish::Outcomes(outcomes) if outcomes.len() == n => Fates::Each(outcomes.into_iter()),
        Finish::Outcomes(outcomes) => Fates::All(Error::OutcomeCount {
            expected: n,
            got: outcomes.len(),
        }),
        Finish::BatchError(e) => Fates::All(Error::Handler(Arc::new(e))),
        Finish::Panicked(message) => Fates::All(Error::Panicked { message }),
        Finish::TimedOut(after) => Fates::TimedOut(after),
        Finish::Abandoned => Fates::Abandon,
    };

    // Payloads come back only for operations that need them: retries and
    // shutdown abandonment. The handler's future is gone, so the batch's
    // payloads are ours again unless the handler leaked the batch.
    let needs_payloads = match &fates {
        Fates::Each(outcomes) => outcomes
            .as_slice()
            .iter()
            .zip(&trackers)
            .any(|(o, t)| matches!(o, Outcome::Retry(_)) && t.attempts < ctx.max_attempts),
        Fates::All(_) => false,
        Fates::TimedOut(_) => {
            ctx.retry_timeouts && trackers.iter().any(|t| t.attempts < ctx.max_attempts)
        }
        Fates::Abandon => true,
    };
    let mut payloads: Vec<Option<T>> = Vec::new();
    if needs_payloads {
        if let Ok(data) = Arc::try_unwrap(data) {
            payloads = data.items.into_iter().map(Some).collect();
        }
    }

    let mut done = Done {
        batch: batch_index,
        ended: summary,
        completed: 0,
        failed: 0,
        retry: Vec::new(),
        abandoned: Vec::new(),
        abandoned_count: 0,
    };
    // End-to-end latency, from submit to resolution, for every operation
    // this batch resolves (not those it hands back for a retry).
    let mut latencies = Latencies {
        metrics: &ctx.metrics,
        ended: handler_ended.map(|end| crate::time::nanos_since(ctx.origin, end)),
        submitted: 0,
        count: 0,
    };
    if payloads.is_empty() {
        if let Fates::Each(outcomes) = fates {
            // The common case, one outcome per operation and none queued
            // again: each outcome goes straight to its ticket. (Without its
            // payload an operation cannot be retried: it resolves with the
            // error it would have been retried for, as below.)
            for (t, outcome) in trackers.into_iter().zip(outcomes) {
                let result = match outcome {
                    Outcome::Done(o) => {
                        done.completed += 1;
                        Ok(o)
                    }
                    Outcome::Failed(e) => {
                        done.failed += 1;
                        Err(Error::Handler(Arc::new(e)))
                    }
                    Outcome::Retry(e) => {
                        done.failed += 1;
                        Err(retry_error(e, t.attempts, ctx))
                    }
                };
                latencies.add(t.submitted);
                let _ = t.resolver.send(result);
            }
            return done;
        }
    }
    for (i, t) in trackers.into_iter().enumerate() {
        let fate = fates.next(&t, ctx);
        let payload = payloads.get_mut(i).and_then(Option::take);
        match (fate, payload) {
            (Fate::Resolve(result), _) => {
                if result.is_ok() {
                    done.completed += 1;
                } else {
                    done.failed += 1;
                }
                latencies.add(t.submitted);
                let _ = t.resolver.send(result);
            }
            (Fate::Retry(_), Some(payload)) => done.retry.push(Queued {
                payload,
                resolver: t.resolver,
                id: t.id,
                cost: t.cost,
                attempts: t.attempts,
                epoch: t.epoch,
                enqueued: tokio::time::Instant::now(),
                submitted: t.submitted,
            }),
            (Fate::Retry(err), None) => {
                // The handler kept the batch alive, so the payload cannot be
                // queued again: resolve with the error it was retried for.
                done.failed += 1;
                latencies.add(t.submitted);
                let _ = t.resolver.send(err);
            }
            (Fate::Abandon, payload) => {
                done.abandoned_count += 1;
                latencies.add(t.submitted);
                let _ = t.resolver.send(Err(Error::Abandoned));
                if let Some(payload) = payload {
                    done.abandoned.push((OpId(t.id), t.cost, payload));
                }
            }
        }
    }
    done
}

/// The error of an operation whose handler asked for a retry after
/// `attempts` attempts: the handler's own while attempts are left (what the
/// ticket gets if the operation cannot be queued again), else
/// [`Error::Exhausted`].
fn retry_error<T, K, O, E>(e: E, attempts: u32, ctx: &RunShared<T, K, O, E>) -> Error<E> {
    if attempts < ctx.max_attempts {
        Error::Handler(Arc::new(e))
    } else {
        Error::Exhausted {
            attempts,
            last: Arc::new(e),
        }
    }
}

/// The end-to-end latencies of a batch's resolved operations, recorded when
/// it is dropped. Operations accepted in the same turn of the engine share
/// their acceptance time, and a batch's come from a few turns: one record per
/// run of equal times rather than one per operation.
struct Latencies<'a> {
    metrics: &'a BatchMetrics,
    /// When the handler ended, if the latencies are recorded at all.
    ended: Option<u64>,
    /// The acceptance time of the current run, and its length.
    submitted: u64,
    count: usize,
}

impl Latencies<'_> {
    #[inline]
    fn add(&mut self, submitted: u64) {
        if self.ended.is_none() {
            return;
        }
        if submitted != self.submitted {
            self.record();
            self.submitted = submitted;
        }
        self.count += 1;
    }

    fn record(&mut self) {
        if let (Some(end), 1..) = (self.ended, self.count) {
            self.metrics
                .latency_secs(end.saturating_sub(self.submitted) as f64 * 1e-9, self.count);
        }
        self.count = 0;
    }
}

impl Drop for Latencies<'_> {
    fn drop(&mut self) {
        self.record();
    }
}

fn ended_from<O, E>(result: Result<HandlerResult<O, E>, String>) -> Finish<O, E> {
    match result {
        Ok(Ok(outcomes)) => Finish::Outcomes(outcomes),
        Ok(Err(e)) => Finish::BatchError(e),
        Err(message) => Finish::Panicked(message),
    }
}

/// Turns a panic inside a handler's future into an error value.
struct CatchUnwind<'a, R> {
    inner: BoxFuture<'a, R>,
}

impl<R> Future for CatchUnwind<'_, R> {
    type Output = Result<R, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic_message(panic.as_ref()))),
        }
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}
