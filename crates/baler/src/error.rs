//! Errors: what a ticket resolves with, why a submit was refused, and what is
//! wrong with a configuration. Each message says what happened and, where the
//! caller can do something about it, what to change.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why an operation did not produce an output. Its [`Ticket`](crate::Ticket)
/// resolves with exactly one of these, or with the output.
///
/// `E` is the handler's error type. A handler error is shared behind an
/// [`Arc`] because one whole-batch error reaches every operation of the batch.
#[non_exhaustive]
pub enum Error<E> {
    /// The handler failed this operation, or its whole batch.
    Handler(Arc<E>),
    /// The handler asked to retry this operation, and it has used all of its
    /// attempts (see [`Builder::max_attempts`](crate::Builder::max_attempts)).
    Exhausted {
        /// How many times the operation was dispatched.
        attempts: u32,
        /// The error of the last attempt.
        last: Arc<E>,
    },
    /// The batch ran past the maximum operation time and its handler was
    /// dropped (see [`Builder::max_operation_time`](crate::Builder::max_operation_time)).
    TimedOut {
        /// The time limit that was exceeded.
        after: Duration,
        /// How many times the operation was dispatched.
        attempts: u32,
    },
    /// The handler panicked while running this operation's batch.
    Panicked {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The handler returned a different number of outcomes than the batch had
    /// operations, so no outcome can be trusted to belong to this operation.
    OutcomeCount {
        /// The number of operations in the batch.
        expected: usize,
        /// The number of outcomes the handler returned.
        got: usize,
    },
    /// The shutdown deadline passed before this operation completed. Its
    /// payload is in the [`ShutdownReport`](crate::ShutdownReport).
    Abandoned,
    /// The engine stopped without resolving the operation: the tokio runtime
    /// it ran on was shut down.
    Stopped,
}

impl<E> Error<E> {
    /// Whether the handler itself failed the operation (as opposed to the
    /// engine resolving it on a limit, a panic or shutdown).
    pub fn is_handler(&self) -> bool {
        matches!(self, Error::Handler(_) | Error::Exhausted { .. })
    }

    /// The handler's error, if there is one.
    pub fn handler_error(&self) -> Option<&E> {
        match self {
            Error::Handler(e) | Error::Exhausted { last: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl<E> Clone for Error<E> {
    fn clone(&self) -> Self {
        match self {
            Error::Handler(e) => Error::Handler(e.clone()),
            Error::Exhausted { attempts, last } => Error::Exhausted {
                attempts: *attempts,
                last: last.clone(),
            },
            Error::TimedOut { after, attempts } => Error::TimedOut {
                after: *after,
                attempts: *attempts,
            },
            Error::Panicked { message } => Error::Panicked {
                message: message.clone(),
            },
            Error::OutcomeCount { expected, got } => Error::OutcomeCount {
                expected: *expected,
                got: *got,
            },
            Error::Abandoned => Error::Abandoned,
            Error::Stopped => Error::Stopped,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Handler(e) => write!(f, "the batch handler failed this operation: {e}"),
            Error::Exhausted { attempts, last } => write!(
                f,
                "the operation failed {attempts} attempt(s) and has no attempts left \
                 (raise max_attempts to retry more): {last}"
            ),
            Error::TimedOut { after, attempts } => write!(
                f,
                "the batch ran longer than the maximum operation time of {after:?} \
                 (attempt {attempts}); its handler was dropped"
            ),
            Error::Panicked { message } => {
                write!(f, "the batch handler panicked: {message}")
            }
            Error::OutcomeCount { expected, got } => write!(
                f,
                "the batch handler returned {got} outcome(s) for a batch of {expected} \
                 operation(s); it must return exactly one outcome per operation, in order"
            ),
            Error::Abandoned => write!(
                f,
                "the batcher's shutdown deadline passed before the operation completed; \
                 its payload is listed in the shutdown report; give shutdown() a longer \
                 deadline, or none"
            ),
            Error::Stopped => write!(
                f,
                "the batcher stopped without resolving the operation because its tokio \
                 runtime shut down"
            ),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Handler(e) => f.debug_tuple("Handler").field(e).finish(),
            Error::Exhausted { attempts, last } => f
                .debug_struct("Exhausted")
                .field("attempts", attempts)
                .field("last", last)
                .finish(),
            Error::TimedOut { after, attempts } => f
                .debug_struct("TimedOut")
                .field("after", after)
                .field("attempts", attempts)
                .finish(),
            Error::Panicked { message } => f
                .debug_struct("Panicked")
                .field("message", message)
                .finish(),
            Error::OutcomeCount { expected, got } => f
                .debug_struct("OutcomeCount")
                .field("expected", expected)
                .field("got", got)
                .finish(),
            Error::Abandoned => f.write_str("Abandoned"),
            Error::Stopped => f.write_str("Stopped"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display + 'static> std::error::Error for Error<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

/// Which limit made an operation too expensive to ever be dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CostLimit {
    /// [`Builder::max_batch_cost`](crate::Builder::max_batch_cost).
    MaxBatchCost,
    /// [`Builder::buffer_cost`](crate::Builder::buffer_cost).
    BufferCost,
    /// The most the [`Capacity`](crate::Capacity) can ever grant at once (its burst).
    Capacity,
}

impl fmt::Display for CostLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CostLimit::MaxBatchCost => "the maximum batch cost (Builder::max_batch_cost)",
            CostLimit::BufferCost => "the buffer's cost limit (Builder::buffer_cost)",
            CostLimit::Capacity => "the capacity's burst (the most it can grant at once)",
        })
    }
}

/// Why [`Batcher::submit`](crate::Batcher::submit) and its variants refused an
/// operation. The operation's payload is handed back, so nothing is lost.
#[non_exhaustive]
pub enum SubmitError<T> {
    /// The buffer is full ([`Batcher::try_submit`](crate::Batcher::try_submit)).
    Full(T),
    /// The buffer stayed full until the deadline
    /// ([`Batcher::submit_timeout`](crate::Batcher::submit_timeout)).
    Timeout(T),
    /// The batcher is shutting down or has stopped.
    Shutdown(T),
    /// The operation costs more than a limit that can never be exceeded, so it
    /// could never be dispatched.
    TooExpensive {
        /// The operation's cost.
        cost: u64,
        /// The limit it exceeds.
        limit: u64,
        /// Which limit that is.
        limited_by: CostLimit,
        /// The operation's payload.
        payload: T,
    },
}

impl<T> SubmitError<T> {
    /// Takes back the payload of the refused operation.
    pub fn into_payload(self) -> T {
        match self {
            SubmitError::Full(p) | SubmitError::Timeout(p) | SubmitError::Shutdown(p) => p,
            SubmitError::TooExpensive { payload, .. } => payload,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SubmitError::Full(_) => "Full",
            SubmitError::Timeout(_) => "Timeout",
            SubmitError::Shutdown(_) => "Shutdown",
            SubmitError::TooExpensive { .. } => "TooExpensive",
        }
    }
}

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Full(_) => f.write_str(
                "the batcher's buffer is full; wait with submit(), or raise buffer_size/buffer_cost",
            ),
            SubmitError::Timeout(_) => f.write_str(
                "the batcher's buffer stayed full until the submit deadline; the handler is \
                 slower than the submit rate",
            ),
            SubmitError::Shutdown(_) => {
                f.write_str("the batcher is shutting down and accepts no new operations")
            }
            SubmitError::TooExpensive {
                cost,
                limit,
                limited_by,
                ..
            } => write!(
                f,
                "the operation's cost {cost} exceeds {limited_by} of {limit}, so it could \
                 never be dispatched; lower its cost or raise that limit"
            ),
        }
    }
}

impl<T> fmt::Debug for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::TooExpensive {
                cost,
                limit,
                limited_by,
                ..
            } => f
                .debug_struct("TooExpensive")
                .field("cost", cost)
                .field("limit", limit)
                .field("limited_by", limited_by)
                .finish_non_exhaustive(),
            other => f.debug_tuple(other.kind()).finish_non_exhaustive(),
        }
    }
}

impl<T> std::error::Error for SubmitError<T> {}

/// A configuration that cannot work, found when the batcher or capacity is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size, count or limit that must be at least 1 was 0.
    #[error("{setting} must be at least 1, but it was 0; {hint}")]
    Zero {
        /// The setting's builder method.
        setting: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("{setting} must be longer than zero; {hint}")]
    ZeroDuration {
        /// The setting's builder method.
        setting: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// The minimum batch size is larger than the maximum.
    #[error(
        "min_batch_size ({min}) is larger than max_batch_size ({max}); a batch could never \
         reach its minimum; lower min_batch_size or raise max_batch_size"
    )]
    MinAboveMax {
        /// The configured minimum.
        min: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The buffer cannot hold one full batch.
    #[error(
        "buffer_size ({buffer}) is smaller than max_batch_size ({batch}); batches could never \
         fill; raise buffer_size or lower max_batch_size"
    )]
    BufferSmallerThanBatch {
        /// The configured buffer size.
        buffer: usize,
        /// The configured maximum batch size.
        batch: usize,
    },
    /// The backoff's maximum is below its base.
    #[error(
        "the retry backoff's maximum ({max:?}) is below its base ({base:?}); raise the maximum"
    )]
    BackoffMaxBelowBase {
        /// The base delay.
        base: Duration,
        /// The maximum delay.
        max: Duration,
    },
    /// A value is larger than baler can represent.
    #[error(
        "{setting} is {value}, above the largest supported value {max}; lower it to {max} or less"
    )]
    TooLarge {
        /// The setting's builder method.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The largest supported value.
        max: u64,
    },
    /// The batcher was built outside a tokio runtime.
    #[error(
        "a Batcher runs on the caller's tokio runtime, but build() was called outside one; \
         call it from within a runtime (for example inside #[tokio::main])"
    )]
    NoRuntime,
    /// A shared capacity was built outside a tokio runtime.
    #[error(
        "a shared capacity renews its leases on the caller's tokio runtime, but build() was \
         called outside one; call it from within a runtime (for example inside #[tokio::main])"
    )]
    CapacityNoRuntime,
    /// A shared capacity's lease timing would let a lease lapse before its
    /// renewal comes back.
    #[error(
        "the lease time ({lease_time:?}) must be at least the safety margin ({safety_margin:?}) \
         plus the renewal period ({renew_every:?}) plus the store call timeout \
         ({call_timeout:?}), or a lease could stop counting before it is renewed; lengthen \
         lease_time or shorten the others"
    )]
    LeaseTiming {
        /// The lease time.
        lease_time: Duration,
        /// The safety margin.
        safety_margin: Duration,
        /// The renewal period.
        renew_every: Duration,
        /// The store call timeout.
        call_timeout: Duration,
    },
    /// A shared capacity's lease time is one its lease store cannot grant
    /// (see [`LeaseStore::lease_times`](crate::shared::LeaseStore::lease_times)).
    #[error(
        "the lease time ({lease_time:?}) is not one this lease store can grant: it takes \
         {min:?} to {max:?}; set SharedCapacity::lease_time within that"
    )]
    LeaseTimeUnsupported {
        /// The lease time asked for.
        lease_time: Duration,
        /// The shortest lease the store grants.
        min: Duration,
        /// The longest lease the store grants.
        max: Duration,
    },
}
