//! What a load resolves with when it has no value.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Why a [`Loader::load`](crate::loader::Loader::load) produced no value.
///
/// `E` is the batch function's error. One failed batch answers every key it
/// was asked for, so its error is shared behind an [`Arc`]: every caller of
/// the batch sees the same error value, not a copy.
#[non_exhaustive]
pub enum LoadError<E> {
    /// The batch function answered, but its answer had no value for this key.
    NotFound,
    /// The batch function failed the whole batch this key was in.
    Fetch(Arc<E>),
    /// The batch function ran past the loader's [`max_operation_time`](crate::loader::LoaderBuilder::max_operation_time)
    /// and was cancelled.
    TimedOut {
        /// The timeout that was exceeded.
        after: Duration,
    },
    /// The batch function panicked.
    Panicked {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The loader is shut down (or its tokio runtime stopped), so the load
    /// could not be queued or answered.
    Stopped,
    /// The loader's shutdown deadline passed before the key's batch finished.
    Abandoned,
}

impl<E> LoadError<E> {
    /// Whether the error says something about the key itself (it was not
    /// found, or the batch function failed on it), as opposed to the loader
    /// giving up on it (timeout, panic, shutdown). Only such errors are cached,
    /// and only with [`cache_errors`](crate::loader::LoaderBuilder::cache_errors).
    pub fn is_answer(&self) -> bool {
        matches!(self, LoadError::NotFound | LoadError::Fetch(_))
    }

    /// The batch function's error, if there is one.
    pub fn fetch_error(&self) -> Option<&Arc<E>> {
        match self {
            LoadError::Fetch(e) => Some(e),
            _ => None,
        }
    }

    /// Turns an engine error of the loader's batcher into a load error.
    pub(crate) fn from_engine(error: Error<FetchError<E>>) -> Self {
        match error {
            Error::Handler(e) | Error::Exhausted { last: e, .. } => match &*e {
                FetchError::NotFound => LoadError::NotFound,
                FetchError::Batch(e) => LoadError::Fetch(e.clone()),
            },
            Error::TimedOut { after, .. } => LoadError::TimedOut { after },
            Error::Panicked { message } => LoadError::Panicked { message },
            Error::Abandoned => LoadError::Abandoned,
            Error::Stopped => LoadError::Stopped,
            // The loader's handler answers every key of its batch, so the
            // engine never sees a wrong count from it.
            Error::OutcomeCount { expected, got } => LoadError::Panicked {
                message: format!(
                    "baler's loader answered {got} of {expected} keys; this is a bug in baler, \
                     please report it"
                ),
            },
        }
    }
}

/// The loader's handler error: what the engine carries for one key.
pub(crate) enum FetchError<E> {
    /// The answer had no value for the key.
    NotFound,
    /// The batch function failed; every key of the batch shares the error.
    Batch(Arc<E>),
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::NotFound => LoadError::NotFound,
            LoadError::Fetch(e) => LoadError::Fetch(e.clone()),
            LoadError::TimedOut { after } => LoadError::TimedOut { after: *after },
            LoadError::Panicked { message } => LoadError::Panicked {
                message: message.clone(),
            },
            LoadError::Stopped => LoadError::Stopped,
            LoadError::Abandoned => LoadError::Abandoned,
        }
    }
}

impl<E: PartialEq> PartialEq for LoadError<E> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (LoadError::NotFound, LoadError::NotFound)
            | (LoadError::Stopped, LoadError::Stopped)
            | (LoadError::Abandoned, LoadError::Abandoned) => true,
            (LoadError::Fetch(a), LoadError::Fetch(b)) => a == b,
            (LoadError::TimedOut { after: a }, LoadError::TimedOut { after: b }) => a == b,
            (LoadError::Panicked { message: a }, LoadError::Panicked { message: b }) => a == b,
            _ => false,
        }
    }
}

impl<E: fmt::Display> fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound => f.write_str(
                "the batch function's answer had no value for this key; if the key may \
                 legitimately be absent, treat NotFound as \"no such item\", otherwise make the \
                 batch function return an entry for every key it is given",
            ),
            LoadError::Fetch(e) => write!(f, "the batch function failed this key's batch: {e}"),
            LoadError::TimedOut { after } => write!(
                f,
                "the batch function ran longer than the loader's max_operation_time of {after:?} and was \
                 cancelled; raise LoaderBuilder::max_operation_time or make the batch function faster"
            ),
            LoadError::Panicked { message } => {
                write!(f, "the batch function panicked: {message}")
            }
            LoadError::Stopped => f.write_str(
                "the loader is shut down and answers no new loads; load before calling \
                 shutdown(), or build a new loader",
            ),
            LoadError::Abandoned => f.write_str(
                "the loader's shutdown deadline passed before this key's batch finished; give \
                 shutdown() a longer deadline, or none",
            ),
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for LoadError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound => f.write_str("NotFound"),
            LoadError::Fetch(e) => f.debug_tuple("Fetch").field(e).finish(),
            LoadError::TimedOut { after } => {
                f.debug_struct("TimedOut").field("after", after).finish()
            }
            LoadError::Panicked { message } => f
                .debug_struct("Panicked")
                .field("message", message)
                .finish(),
            LoadError::Stopped => f.write_str("Stopped"),
            LoadError::Abandoned => f.write_str("Abandoned"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}
