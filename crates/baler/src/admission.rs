//! Admission: the bounded buffer's door. Owns the intake (where accepted
//! operations go), the buffer's permits (one per operation held, and one
//! per unit of cost when the buffer's cost is bounded), the closed flag, and
//! the count of submitters waiting for room.
//!
//! A submitter [reserves](Admission::try_reserve) room, then
//! [admits](Admission::admit) its operation with it; from then on the
//! permits are the engine's, which [releases](Admission::release) them when
//! the operation resolves or is cancelled. Nothing else touches a permit:
//! this is the one owner of the invariant that bounds baler's memory and
//! tells the engine when a shutdown is done.
//!
//! # Invariants
//!
//! - **Held = taken − released**: an operation holds one operation permit
//!   (and `cost` cost permits) from its reservation until the engine
//!   releases it. A reservation dropped before it was admitted gives its
//!   permits back; an admitted one never does (the engine will).
//! - **Released never exceeds taken**: after a release, no more permits are
//!   available than the buffer has (checked by `debug_assert!`).
//! - **Idle means nothing in transit**: when every permit is back and the
//!   engine holds nothing, no submitter is between its reservation and its
//!   push, so a shutdown may finish.
//! - **Closed is final**: once closed, no reservation succeeds and every
//!   waiting submitter is refused; a push racing the close is either handed
//!   over to the engine or refused (see [`Intake`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{AcquireError, Semaphore, SemaphorePermit, TryAcquireError};
use tokio::time::Instant;

use crate::intake::Intake;

/// A field on cache lines of its own: what threads write all the time (the
/// intake, the buffer's semaphore, the stats) must not share a line with
/// what every submit only reads.
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Why there is no room for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// The buffer is full.
    Full,
    /// The buffer is closed: a shutdown has started.
    Closed,
    /// The caller's deadline passed while it waited.
    Timeout,
}

/// Room for one operation, reserved but not used yet. Dropped, it gives
/// its permits back.
pub(crate) struct Reserved<'a> {
    // Held for their drop, which gives them back.
    _ops: SemaphorePermit<'a>,
    _cost: Option<SemaphorePermit<'a>>,
}

/// The wait for room of a submitter that found the buffer full.
pub(crate) type WaitForRoom<'a> =
    Pin<Box<dyn Future<Output = Result<Reserved<'a>, NoRoom>> + Send + 'a>>;

pub(crate) struct Admission<M> {
    intake: Padded<Intake<M>>,
    /// One permit per operation held.
    ops: Padded<Semaphore>,
    /// One permit per unit of cost held, when the buffer's cost is bounded.
    cost: Option<Semaphore>,
    closed: AtomicBool,
    buffer_size: usize,
    buffer_cost: usize,
    /// Submitters waiting for room.
    waiting: AtomicUsize,
    /// Whether the current full-buffer episode was reported.
    full_reported: AtomicBool,
}

impl<M> Admission<M> {
    pub(crate) fn new(buffer_size: usize, buffer_cost: Option<u64>) -> Self {
        let buffer_cost = buffer_cost.map(|c| usize::try_from(c).unwrap_or(Semaphore::MAX_PERMITS));
        Admission {
            intake: Padded(Intake::new()),
            ops: Padded(Semaphore::new(buffer_size)),
            cost: buffer_cost.map(Semaphore::new),
            closed: AtomicBool::new(false),
            buffer_size,
            buffer_cost: buffer_cost.unwrap_or(0),
            waiting: AtomicUsize::new(0),
            full_reported: AtomicBool::new(false),
        }
    }

    /// Reserves room for an operation of `cost` if there is room now.
    #[inline]
    pub(crate) fn try_reserve(&self, cost: u32) -> Result<Reserved<'_>, NoRoom> {
        let ops = self.ops.try_acquire().map_err(no_room)?;
        let cost = match &self.cost {
            None => None,
            Some(sem) => Some(sem.try_acquire_many(cost).map_err(no_room)?),
        };
        Ok(Reserved {
            _ops: ops,
            _cost: cost,
        })
    }

    /// Waits, first come first served, for room for an operation of `cost`,
    /// until `deadline` if there is one. Dropping the future gives up its
    /// place in line.
    pub(crate) fn wait_for_room(&self, cost: u32, deadline: Option<Instant>) -> WaitForRoom<'_>
    where
        M: Send,
    {
        Box::pin(async move {
            let _waiting = Waiting::new(&self.waiting);
            let ops = wait(self.ops.acquire(), deadline).await?;
            let cost = match &self.cost {
                Some(sem) => Some(wait(sem.acquire_many(cost), deadline).await?),
                None => None,
            };
            Ok(Reserved {
                _ops: ops,
                _cost: cost,
            })
        })
    }

    /// Hands an operation to the engine with the room reserved for it; gives
    /// it back if the engine is gone. From here the engine owns the permits.
    #[inline]
    pub(crate) fn admit(&self, reserved: Reserved<'_>, msg: M) -> Result<(), M> {
        self.intake.push(msg)?;
        // A permit forgotten is one whose drop, which would give it back,
        // never runs: the same as its `forget`, but without a call into
        // tokio per submit. The engine gives it back with `release`.
        std::mem::forget(reserved);
        Ok(())
    }

    /// Gives back the permits of operations that resolved or were
    /// cancelled. The engine's alone to call.
    pub(crate) fn release(&self, ops: u64, cost: u64) {
        if ops > 0 {
            // Read first: most releases find nothing to reset, and a store
            // would take the line from the submitters that read it.
            if self.full_reported.load(Ordering::Relaxed) {
                self.full_reported.store(false, Ordering::Relaxed);
            }
            self.ops.add_permits(ops as usize);
            debug_assert!(
                self.ops.available_permits() <= self.buffer_size,
                "released more operation permits than were taken"
            );
        }
        if let Some(sem) = &self.cost {
            if cost > 0 {
                sem.add_permits(cost as usize);
                debug_assert!(
                    sem.available_permits() <= self.buffer_cost,
                    "released more cost permits than were taken"
                );
            }
        }
    }

    /// Refuses every later reservation and every waiting submitter; returns
    /// whether this call closed it.
    pub(crate) fn close(&self) -> bool {
        let first = !self.closed.swap(true, Ordering::SeqCst);
        self.ops.close();
        if let Some(cost) = &self.cost {
            cost.close();
        }
        first
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Whether every permit is back: nothing is held and nothing is between
    /// its reservation and the engine.
    pub(crate) fn idle(&self) -> bool {
        self.ops.available_permits() == self.buffer_size
    }

    /// How many operations hold room.
    pub(crate) fn held(&self) -> usize {
        self.buffer_size
            .saturating_sub(self.ops.available_permits())
    }

    /// How many submitters wait for room.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Whether this is the first full buffer since room was last made: a
    /// full buffer is reported once per episode.
    pub(crate) fn first_full(&self) -> bool {
        !self.full_reported.swap(true, Ordering::Relaxed)
    }

    /// The engine's side of the intake: see [`Intake::poll_take`].
    #[inline]
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<M>) -> Poll<()> {
        self.intake.poll_take(cx, into)
    }

    /// The engine's side of the intake: see [`Intake::take`].
    #[inline]
    pub(crate) fn take(&self, into: &mut Vec<M>) {
        self.intake.take(into);
    }

    /// The engine is gone: later pushes are refused, and what was pushed
    /// but never taken is returned.
    pub(crate) fn shut_intake(&self) -> Vec<M> {
        self.intake.close()
    }
}

fn no_room(e: TryAcquireError) -> NoRoom {
    match e {
        TryAcquireError::Closed => NoRoom::Closed,
        TryAcquireError::NoPermits => NoRoom::Full,
    }
}

async fn wait<P>(
    acquire: impl Future<Output = Result<P, AcquireError>>,
    deadline: Option<Instant>,
) -> Result<P, NoRoom> {
    match deadline {
        None => acquire.await.map_err(|_| NoRoom::Closed),
        Some(deadline) => match tokio::time::timeout_at(deadline, acquire).await {
            Ok(result) => result.map_err(|_| NoRoom::Closed),
            Err(_) => Err(NoRoom::Timeout),
        },
    }
}

/// Counts a submitter while it waits for room.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
