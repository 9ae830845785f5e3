//! What `Processor::run` fails with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

/// Why a batch's handler failed an operation: the handler's error type inside
/// the engine, turned into a [`ProcessorError`] by `run`.
pub(crate) enum Failure<E> {
    Load(Arc<E>),
    LoadTimedOut(Duration),
    Save(Arc<E>),
    SaveTimedOut(Duration),
    Panicked(String),
    Aborted(String),
    Cancelled,
}

/// Why [`Processor::run`](crate::processor::Processor::run) returned no value.
///
/// `E` is the [`Store`](crate::processor::Store)'s error type; one load or save error
/// reaches every operation of its batch, so it is shared behind an [`Arc`].
///
/// Only an `Ok` from `run` means the operation's effect was saved. Of the
/// errors, only [`SaveTimedOut`](Self::SaveTimedOut) leaves it open whether
/// the save happened.
#[non_exhaustive]
pub enum ProcessorError<E> {
    /// Loading the resource failed; no operation of the batch ran.
    Load(Arc<E>),
    /// Loading the resource took longer than
    /// [`max_store_time`](crate::processor::ProcessorBuilder::max_store_time); no operation
    /// of the batch ran.
    LoadTimedOut {
        /// The limit.
        after: Duration,
    },
    /// Saving the resource failed: the operation ran, but its effect (and
    /// that of every other operation of its batch) was **not persisted**.
    Save(Arc<E>),
    /// Saving the resource took longer than
    /// [`max_store_time`](crate::processor::ProcessorBuilder::max_store_time) and the save
    /// was dropped. Whether it was persisted depends on the store: a save that
    /// commits in one step was either applied whole or not at all.
    SaveTimedOut {
        /// The limit.
        after: Duration,
    },
    /// This operation panicked. Its batch's resource may have been half
    /// changed, so it was thrown away unsaved: no operation of the batch was
    /// persisted.
    Panicked {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// Another operation of this batch (or the store) panicked, so the batch
    /// was thrown away unsaved: this operation's effect, if it ran, was not
    /// persisted. Running it again is safe.
    Aborted {
        /// The panic's message, when it was a string.
        message: String,
    },
    /// The caller gave up (its deadline passed) before the operation ran; it
    /// did not run and never will.
    Cancelled,
    /// The processor is shut down (or shutting down) and accepts no new
    /// operations.
    Stopped,
    /// The deadline of [`Processor::shutdown`](crate::processor::Processor::shutdown)
    /// passed before the operation's batch finished. Whether its effect was
    /// persisted depends on how far the batch got: its save may have been
    /// under way.
    Abandoned,
    /// The engine failed the operation in a way a processor does not expect
    /// (for example the tokio runtime shut down under it).
    Engine {
        /// The engine's message.
        message: String,
    },
}

impl<E> ProcessorError<E> {
    /// Whether the operation's effect was certainly not persisted (every
    /// error but [`SaveTimedOut`](Self::SaveTimedOut),
    /// [`Abandoned`](Self::Abandoned) and [`Engine`](Self::Engine)), so that running it again cannot apply it
    /// twice.
    pub fn is_not_persisted(&self) -> bool {
        !matches!(
            self,
            ProcessorError::SaveTimedOut { .. }
                | ProcessorError::Abandoned
                | ProcessorError::Engine { .. }
        )
    }

    /// The store's error, for [`Load`](Self::Load) and [`Save`](Self::Save).
    pub fn store_error(&self) -> Option<&E> {
        match self {
            ProcessorError::Load(e) | ProcessorError::Save(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn from_engine(error: Error<Failure<E>>) -> Self {
        match error {
            Error::Handler(failure) => match &*failure {
                Failure::Load(e) => ProcessorError::Load(e.clone()),
                Failure::LoadTimedOut(after) => ProcessorError::LoadTimedOut { after: *after },
                Failure::Save(e) => ProcessorError::Save(e.clone()),
                Failure::SaveTimedOut(after) => ProcessorError::SaveTimedOut { after: *after },
                Failure::Panicked(message) => ProcessorError::Panicked {
                    message: message.clone(),
                },
                Failure::Aborted(message) => ProcessorError::Aborted {
                    message: message.clone(),
                },
                Failure::Cancelled => ProcessorError::Cancelled,
            },
            // The store's load or save panicked; the engine caught it.
            Error::Panicked { message } => ProcessorError::Aborted { message },
            Error::Stopped => ProcessorError::Stopped,
            Error::Abandoned => ProcessorError::Abandoned,
            other => ProcessorError::Engine {
                message: describe(&other),
            },
        }
    }
}

fn describe<E>(error: &Error<E>) -> String {
    match error {
        Error::TimedOut { after, .. } => format!("the batch ran longer than {after:?}"),
        Error::OutcomeCount { expected, got } => {
            format!("the batch returned {got} outcome(s) for {expected} operation(s)")
        }
        _ => "the batch failed".to_owned(),
    }
}

impl<E> Clone for ProcessorError<E> {
    fn clone(&self) -> Self {
        match self {
            ProcessorError::Load(e) => ProcessorError::Load(e.clone()),
            ProcessorError::LoadTimedOut { after } => {
                ProcessorError::LoadTimedOut { after: *after }
            }
            ProcessorError::Save(e) => ProcessorError::Save(e.clone()),
            ProcessorError::SaveTimedOut { after } => {
                ProcessorError::SaveTimedOut { after: *after }
            }
            ProcessorError::Panicked { message } => ProcessorError::Panicked {
                message: message.clone(),
            },
            ProcessorError::Aborted { message } => ProcessorError::Aborted {
                message: message.clone(),
            },
            ProcessorError::Cancelled => ProcessorError::Cancelled,
            ProcessorError::Stopped => ProcessorError::Stopped,
            ProcessorError::Abandoned => ProcessorError::Abandoned,
            ProcessorError::Engine { message } => ProcessorError::Engine {
                message: message.clone(),
            },
        }
    }
}

impl<E: fmt::Display> fmt::Display for ProcessorError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessorError::Load(e) => write!(
                f,
                "loading the resource failed, so no operation of the batch ran: {e}"
            ),
            ProcessorError::LoadTimedOut { after } => write!(
                f,
                "loading the resource took longer than max_store_time ({after:?}), so no \
                 operation of the batch ran; make the load faster or raise max_store_time"
            ),
            ProcessorError::Save(e) => write!(
                f,
                "saving the resource failed, so the operation's effect was not persisted: {e}"
            ),
            ProcessorError::SaveTimedOut { after } => write!(
                f,
                "saving the resource took longer than max_store_time ({after:?}) and was \
                 dropped; whether it was persisted depends on the store; make the save \
                 faster or raise max_store_time"
            ),
            ProcessorError::Panicked { message } => write!(
                f,
                "the operation panicked ({message}); its batch was thrown away unsaved"
            ),
            ProcessorError::Aborted { message } => write!(
                f,
                "another operation of the batch, or the store, panicked ({message}); the \
                 batch was thrown away unsaved, so this operation's effect was not persisted \
                 and it is safe to run it again"
            ),
            ProcessorError::Cancelled => f.write_str(
                "the caller gave up before the operation ran; it did not run and never will",
            ),
            ProcessorError::Stopped => {
                f.write_str("the processor is shut down and accepts no new operations")
            }
            ProcessorError::Abandoned => f.write_str(
                "the processor's shutdown deadline passed before this operation's batch \
                 finished; its effect may or may not have been saved; give shutdown() a \
                 longer deadline, or none",
            ),
            ProcessorError::Engine { message } => {
                write!(f, "the processor's engine failed the operation: {message}")
            }
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for ProcessorError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessorError::Load(e) => f.debug_tuple("Load").field(e).finish(),
            ProcessorError::LoadTimedOut { after } => f
                .debug_struct("LoadTimedOut")
                .field("after", after)
                .finish(),
            ProcessorError::Save(e) => f.debug_tuple("Save").field(e).finish(),
            ProcessorError::SaveTimedOut { after } => f
                .debug_struct("SaveTimedOut")
                .field("after", after)
                .finish(),
            ProcessorError::Panicked { message } => f
                .debug_struct("Panicked")
                .field("message", message)
                .finish(),
            ProcessorError::Aborted { message } => {
                f.debug_struct("Aborted").field("message", message).finish()
            }
            ProcessorError::Cancelled => f.write_str("Cancelled"),
            ProcessorError::Stopped => f.write_str("Stopped"),
            ProcessorError::Abandoned => f.write_str("Abandoned"),
            ProcessorError::Engine { message } => {
                f.debug_struct("Engine").field("message", message).finish()
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ProcessorError<E> {}
