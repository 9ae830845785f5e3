//! A [`Batcher`] as a tower [`Service`] (feature `tower`).
//!
//! [`BatcherService`] takes one [`Operation`] per call (a payload, `.into()`
//! one, or with its cost and key) and answers with that operation's own
//! output, so tower's middleware (timeouts, concurrency limits, load
//! shedding, retries) composes in front of the batching:
//!
//! ```
//! use std::time::Duration;
//! use baler::service::BatcherService;
//! use baler::{handler_fn, Batch, Batcher, Operation, Outcome};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let batcher = Batcher::builder().build(handler_fn(|batch: Batch<u64>| async move {
//!     Ok::<_, std::io::Error>(batch.iter().map(|n| Outcome::Done(n * 10)).collect())
//! }))?;
//! let mut service = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(1))
//!     .service(BatcherService::new(batcher));
//! assert_eq!(service.ready().await?.call(4.into()).await?, 40);
//! assert_eq!(service.ready().await?.call(Operation::new(5).with_cost(2)).await?, 50);
//! # Ok(())
//! # }
//! ```
//!
//! # Readiness and backpressure
//!
//! [`poll_ready`](Service::poll_ready) is always ready, and the waiting happens
//! in the response future: a call is a [`Batcher::submit`] (which waits for
//! room in the buffer, first come first served) followed by the ticket. Tower
//! gives `poll_ready` no request, so it cannot know an operation's cost, and a
//! reservation taken there would hold buffer room for a call that may never
//! come; waiting in the call keeps the buffer's one queue fair and exact. The
//! buffer still bounds what the batcher holds: with the buffer full, a call
//! waits, holding only its own payload in its future.
//!
//! To bound how many calls wait, put a `concurrency_limit` in front; to fail
//! at once instead of waiting when the buffer is full (and let a caller shed
//! load), use [`BatcherService::fail_when_full`], which submits with
//! [`Batcher::try_submit`] and answers [`SubmitError::Full`].

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::{Batcher, Error, Operation, SubmitError};

/// A [`Batcher`] as a tower [`Service`]: each call submits one operation and
/// resolves with its own output. See the [module docs](self) for readiness.
pub struct BatcherService<T, O, E, K = ()> {
    batcher: Batcher<T, O, E, K>,
    wait_for_room: bool,
}

impl<T, O, E, K> BatcherService<T, O, E, K> {
    /// A service whose calls wait for room in the buffer, as
    /// [`Batcher::submit`] does.
    pub fn new(batcher: Batcher<T, O, E, K>) -> Self {
        BatcherService {
            batcher,
            wait_for_room: true,
        }
    }

    /// A service whose calls fail with [`SubmitError::Full`] when the buffer
    /// has no room, as [`Batcher::try_submit`] does.
    pub fn fail_when_full(batcher: Batcher<T, O, E, K>) -> Self {
        BatcherService {
            batcher,
            wait_for_room: false,
        }
    }

    /// The batcher behind the service (to shut it down, read its stats, ...).
    pub fn batcher(&self) -> &Batcher<T, O, E, K> {
        &self.batcher
    }

    /// Takes the batcher back.
    pub fn into_inner(self) -> Batcher<T, O, E, K> {
        self.batcher
    }
}

impl<T, O, E, K> Clone for BatcherService<T, O, E, K> {
    fn clone(&self) -> Self {
        BatcherService {
            batcher: self.batcher.clone(),
            wait_for_room: self.wait_for_room,
        }
    }
}

impl<T, O, E, K> fmt::Debug for BatcherService<T, O, E, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatcherService")
            .field("wait_for_room", &self.wait_for_room)
            .finish_non_exhaustive()
    }
}

/// Why a call to a [`BatcherService`] has no output.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError<T, E> {
    /// The operation was not accepted (buffer full, shutting down, too
    /// expensive); its payload is inside.
    #[error(transparent)]
    Submit(SubmitError<T>),
    /// The operation was accepted and resolved with an error.
    #[error(transparent)]
    Operation(Error<E>),
}

// By hand: a derive would ask for a `Debug` payload, which `SubmitError`'s own
// `Debug` does not show.
impl<T, E: fmt::Debug> fmt::Debug for ServiceError<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Submit(e) => f.debug_tuple("Submit").field(e).finish(),
            ServiceError::Operation(e) => f.debug_tuple("Operation").field(e).finish(),
        }
    }
}

type Response<T, O, E> = Result<O, ServiceError<T, E>>;

/// The response future of a [`BatcherService`]: the operation's output.
pub struct ResponseFuture<T, O, E> {
    inner: Pin<Box<dyn Future<Output = Response<T, O, E>> + Send>>,
}

impl<T, O, E> Future for ResponseFuture<T, O, E> {
    type Output = Result<O, ServiceError<T, E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T, O, E> fmt::Debug for ResponseFuture<T, O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// One request type, not every `Into<Operation>`: with a single impl, tower's
// `ready()` and `oneshot()` infer the request without annotations.
impl<T, O, E, K> Service<Operation<T, K>> for BatcherService<T, O, E, K>
where
    T: Send + Sync + 'static,
    K: Eq + Hash + Clone + fmt::Debug + Send + Sync + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    type Response = O;
    type Error = ServiceError<T, E>;
    type Future = ResponseFuture<T, O, E>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the waiting for room is in the call (module docs).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, operation: Operation<T, K>) -> Self::Future {
        let batcher = self.batcher.clone();
        let wait_for_room = self.wait_for_room;
        ResponseFuture {
            inner: Box::pin(async move {
                let ticket = if wait_for_room {
                    batcher.submit(operation).await
                } else {
                    batcher.try_submit(operation)
                }
                .map_err(ServiceError::Submit)?;
                ticket.await.map_err(ServiceError::Operation)
            }),
        }
    }
}
