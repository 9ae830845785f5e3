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
//! - **First come, first served**: a submitter that finds no room joins a
//!   line ([`permits`]); room given back goes to the line's head, and while
//!   anyone waits no newcomer takes room. Leaving the line (a dropped or
//!   timed-out submit) passes any room it was granted to the next.

mod permits;

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use crate::intake::Intake;
use permits::{Permits, Refusal, Turn, MAX_PERMITS};

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
}

/// Room for one operation, reserved but not used yet. Dropped, it gives
/// its permits back.
pub(crate) struct Reserved<'a> {
    permits: &'a Permits,
    cost: u32,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.permits.give(1, u64::from(self.cost));
    }
}

/// A submitter's place in the line for room. Given up with
/// [`Admission::leave`] unless [`Admission::poll_place`] has answered.
#[derive(Debug)]
pub(crate) struct Place(u32);

pub(crate) struct Admission<M> {
    intake: Padded<Intake<M>>,
    permits: Permits,
    buffer_size: usize,
    buffer_cost: usize,
    /// Whether the current full-buffer episode was reported.
    full_reported: AtomicBool,
}

impl<M> Admission<M> {
    pub(crate) fn new(buffer_size: usize, buffer_cost: Option<u64>) -> Self {
        let buffer_size = buffer_size.min(MAX_PERMITS);
        let buffer_cost = buffer_cost.map(|c| usize::try_from(c).unwrap_or(usize::MAX));
        Admission {
            intake: Padded(Intake::new()),
            permits: Permits::new(buffer_size, buffer_cost),
            buffer_size,
            buffer_cost: buffer_cost.unwrap_or(0),
            full_reported: AtomicBool::new(false),
        }
    }

    /// Reserves room for an operation of `cost` if there is room now and
    /// nobody waits for it.
    #[inline]
    pub(crate) fn try_reserve(&self, cost: u32) -> Result<Reserved<'_>, NoRoom> {
        match self.permits.try_take(cost) {
            Ok(()) => Ok(self.reserved(cost)),
            Err(Refusal::Full) => Err(NoRoom::Full),
            Err(Refusal::Closed) => Err(NoRoom::Closed),
        }
    }

    fn reserved(&self, cost: u32) -> Reserved<'_> {
        Reserved {
            permits: &self.permits,
            cost,
        }
    }

    /// Joins the line for room for an operation of `cost`, first come first
    /// served; `cx` is woken when its turn comes. If room came free since
    /// [`try_reserve`](Self::try_reserve) looked, or the buffer closed,
    /// that is the answer instead.
    pub(crate) fn join(
        &self,
        cost: u32,
        cx: &mut Context<'_>,
    ) -> Result<Place, Result<Reserved<'_>, NoRoom>> {
        match self.permits.join(cost, cx) {
            Ok(place) => Ok(Place(place)),
            Err(turn) => Err(self.answer(turn, cost)),
        }
    }

    /// Whether the turn of a place in line has come. Once it answers, the
    /// place is used up.
    pub(crate) fn poll_place(
        &self,
        place: &Place,
        cost: u32,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Reserved<'_>, NoRoom>> {
        self.permits
            .poll_turn(place.0, cx)
            .map(|turn| self.answer(turn, cost))
    }

    fn answer(&self, turn: Turn, cost: u32) -> Result<Reserved<'_>, NoRoom> {
        match turn {
            Turn::Granted => Ok(self.reserved(cost)),
            Turn::Refused => Err(NoRoom::Closed),
        }
    }

    /// Gives up a place in line (its submitter stopped waiting).
    pub(crate) fn leave(&self, place: Place) {
        self.permits.leave(place.0);
    }

    /// Hands an operation to the engine with the room reserved for it; gives
    /// it back if the engine is gone. From here the engine owns the permits.
    #[inline]
    pub(crate) fn admit(&self, reserved: Reserved<'_>, msg: M) -> Result<(), M> {
        self.intake.push(msg)?;
        // The engine gives the permits back with `release` when the
        // operation resolves.
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
        }
        self.permits.give(ops as usize, cost);
        debug_assert!(
            self.permits.free_ops() <= self.buffer_size,
            "released more operation permits than were taken"
        );
        debug_assert!(
            self.permits.free_cost() <= self.buffer_cost,
            "released more cost permits than were taken"
        );
    }

    /// Refuses every later reservation and every waiting submitter; returns
    /// whether this call closed it.
    pub(crate) fn close(&self) -> bool {
        self.permits.close()
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.permits.is_closed()
    }

    /// Whether every permit is back: nothing is held and nothing is between
    /// its reservation and the engine.
    pub(crate) fn idle(&self) -> bool {
        self.permits.free_ops() == self.buffer_size
    }

    /// How many operations hold room.
    pub(crate) fn held(&self) -> usize {
        self.buffer_size.saturating_sub(self.permits.free_ops())
    }

    /// How many submitters wait for room.
    pub(crate) fn waiting(&self) -> usize {
        self.permits.waiting()
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
