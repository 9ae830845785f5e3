//! The result slot: the hand-off between one operation's resolver (held by the
//! engine, then by the task that runs its batch) and its [`Ticket`](crate::Ticket).
//!
//! It is a one-shot channel with one extra question the engine must be able to
//! ask: *has the caller given up?* The engine asks it when it forms a batch, and
//! only operations whose ticket is still alive are dispatched.
//!
//! # The hand-off
//!
//! Exactly one of these happens to every slot, decided by which bit reaches
//! its state word first:
//!
//! - the resolver stores a value ([`VALUE`]), and the ticket takes it (or
//!   drops it unseen);
//! - the ticket closes the slot first ([`CLOSED`]), and the resolver's `send`
//!   fails: the engine then treats the operation as cancelled if it has not
//!   dispatched it;
//! - the resolver is dropped without sending ([`ABANDONED`], the runtime
//!   itself is shutting down), and the ticket resolves with
//!   [`Error::Stopped`](crate::Error::Stopped).
//!
//! [`Receiver::close`] tells the ticket which of the first two won, so a ticket
//! only asks the engine to sweep its buffer when the operation was really left
//! unresolved.
//!
//! # The state word
//!
//! One atomic word, whose bits are only ever set, except [`RX_WAKER`], which
//! the receiver clears to replace its waker. Who may touch which cell:
//!
//! - `value`: the resolver writes it before it sets [`VALUE`] and takes it
//!   back if [`CLOSED`] was set first; after [`VALUE`], only the receiver
//!   touches it (to take it, or to drop it on close).
//! - `waker`: the receiver writes it only while [`RX_WAKER`] is clear and no
//!   value has arrived; while [`RX_WAKER`] is set, both sides only read it
//!   (the resolver to wake it, the receiver to compare it with its own).
//!
//! Two atomic operations per operation on the hot path (the resolver's
//! `fetch_or`, the receiver's registration) and no lock. The loom tests at
//! the end of this file (run with `RUSTFLAGS="--cfg baler_loom"`) check the
//! races between the three sides.

use std::task::{Context, Poll, Waker};

#[cfg(baler_loom)]
use loom::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering::*},
    Arc,
};
#[cfg(not(baler_loom))]
use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering::*},
    Arc,
};

/// The receiver left a waker in `waker`.
const RX_WAKER: usize = 0b0001;
/// The resolver stored a value in `value`.
const VALUE: usize = 0b0010;
/// The receiver closed the slot (its ticket was dropped).
const CLOSED: usize = 0b0100;
/// The resolver was dropped without sending.
const ABANDONED: usize = 0b1000;

/// An `UnsafeCell` that loom can check for concurrent access.
#[cfg(baler_loom)]
struct Cell<T>(loom::cell::UnsafeCell<T>);
#[cfg(not(baler_loom))]
struct Cell<T>(std::cell::UnsafeCell<T>);

impl<T> Cell<T> {
    fn new(value: T) -> Self {
        #[cfg(baler_loom)]
        {
            Cell(loom::cell::UnsafeCell::new(value))
        }
        #[cfg(not(baler_loom))]
        {
            Cell(std::cell::UnsafeCell::new(value))
        }
    }

    /// # Safety
    ///
    /// No one else may write the cell meanwhile.
    unsafe fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        #[cfg(baler_loom)]
        {
            self.0.with(|p| f(unsafe { &*p }))
        }
        #[cfg(not(baler_loom))]
        {
            f(unsafe { &*self.0.get() })
        }
    }

    /// # Safety
    ///
    /// No one else may read or write the cell meanwhile.
    unsafe fn with_mut<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(baler_loom)]
        {
            self.0.with_mut(|p| f(unsafe { &mut *p }))
        }
        #[cfg(not(baler_loom))]
        {
            f(unsafe { &mut *self.0.get() })
        }
    }
}

struct Inner<R> {
    state: AtomicUsize,
    value: Cell<Option<R>>,
    waker: Cell<Option<Waker>>,
}

// SAFETY: the cells are only accessed as the state word allows (see the
// module docs), which makes every access exclusive or read-only-shared; the
// value moves between threads, so it must be `Send`.
unsafe impl<R: Send> Send for Inner<R> {}
unsafe impl<R: Send> Sync for Inner<R> {}

/// Creates a connected resolver and receiver.
pub(crate) fn channel<R>() -> (Resolver<R>, Receiver<R>) {
    let inner = Arc::new(Inner {
        state: AtomicUsize::new(0),
        value: Cell::new(None),
        waker: Cell::new(None),
    });
    (
        Resolver {
            inner: Some(inner.clone()),
        },
        Receiver { inner },
    )
}

/// The sending half: resolves the operation exactly once.
pub(crate) struct Resolver<R> {
    inner: Option<Arc<Inner<R>>>,
}

impl<R> Resolver<R> {
    /// Stores the value. Returns it back if the ticket was already dropped.
    pub(crate) fn send(self, value: R) -> Result<(), R> {
        // Its reference is taken out here and released at the end of this
        // call, so there is nothing left for the resolver's drop to do.
        let Some(inner) = std::mem::ManuallyDrop::new(self).inner.take() else {
            return Err(value);
        };
        if inner.state.load(Acquire) & CLOSED != 0 {
            return Err(value);
        }
        // SAFETY: until VALUE is set, only the resolver touches `value`.
        unsafe { inner.value.with_mut(|v| *v = Some(value)) };
        let prev = inner.state.fetch_or(VALUE, AcqRel);
        if prev & CLOSED != 0 {
            // The ticket closed first and will never look at the value.
            // SAFETY: the receiver saw no VALUE when it closed, so it never
            // touches `value` again.
            let value = unsafe { inner.value.with_mut(Option::take) };
            return Err(value.expect("the value just stored"));
        }
        if prev & RX_WAKER != 0 {
            // SAFETY: RX_WAKER is set and VALUE now too, so the receiver
            // no longer writes the waker; reading it is shared.
            unsafe { inner.waker.with(|w| w.as_ref().map(Waker::wake_by_ref)) };
        }
        Ok(())
    }

    /// Whether the ticket has been dropped: the caller no longer wants a result.
    pub(crate) fn is_closed(&self) -> bool {
        match &self.inner {
            Some(inner) => inner.state.load(Acquire) & CLOSED != 0,
            None => true,
        }
    }
}

impl<R> Drop for Resolver<R> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let prev = inner.state.fetch_or(ABANDONED, AcqRel);
        if prev & (RX_WAKER | CLOSED) == RX_WAKER {
            // SAFETY: as in `send`, with ABANDONED in place of VALUE.
            unsafe { inner.waker.with(|w| w.as_ref().map(Waker::wake_by_ref)) };
        }
    }
}

/// What a receiver saw when it was closed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CloseOutcome {
    /// No value had arrived: the operation was left unresolved and may still
    /// be buffered, so the engine should be told.
    Unresolved,
    /// A value had arrived (or the resolver is gone): nothing to clean up.
    Settled,
}

/// Why a receive produced no value.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ResolverDropped;

/// The receiving half, owned by a ticket.
pub(crate) struct Receiver<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Receiver<R> {
    /// Polls for the value.
    ///
    /// # Panics
    ///
    /// If called again after it returned `Ready(Ok(_))`: a future must not
    /// be polled after it completed.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, ResolverDropped>> {
        let inner = &*self.inner;
        let mut state = inner.state.load(Acquire);
        loop {
            if state & (VALUE | ABANDONED) != 0 {
                return self.take(state);
            }
            if state & RX_WAKER != 0 {
                // SAFETY: RX_WAKER is set, so the waker is only read.
                let same = unsafe {
                    inner
                        .waker
                        .with(|w| w.as_ref().is_some_and(|w| w.will_wake(cx.waker())))
                };
                if same {
                    return Poll::Pending;
                }
                // Take the waker back to replace it, unless a value or the
                // resolver's end arrives first.
                match inner
                    .state
                    .compare_exchange(state, state & !RX_WAKER, AcqRel, Acquire)
                {
                    Ok(_) => {}
                    Err(actual) => {
                        state = actual;
                        continue;
                    }
                }
            }
            // SAFETY: RX_WAKER is clear: the resolver does not read the waker.
            unsafe { inner.waker.with_mut(|w| *w = Some(cx.waker().clone())) };
            let prev = inner.state.fetch_or(RX_WAKER, AcqRel);
            if prev & (VALUE | ABANDONED) != 0 {
                return self.take(prev);
            }
            return Poll::Pending;
        }
    }

    fn take(&mut self, state: usize) -> Poll<Result<R, ResolverDropped>> {
        if state & VALUE != 0 {
            // SAFETY: after VALUE, only the receiver touches the value.
            match unsafe { self.inner.value.with_mut(Option::take) } {
                Some(value) => Poll::Ready(Ok(value)),
                None => panic!("a baler ticket was polled after it had resolved"),
            }
        } else {
            Poll::Ready(Err(ResolverDropped))
        }
    }

    /// Closes the slot: a later `send` fails and `is_closed` turns true.
    pub(crate) fn close(&mut self) -> CloseOutcome {
        let prev = self.inner.state.fetch_or(CLOSED, AcqRel);
        if prev & VALUE != 0 {
            // A value that nobody will read is dropped here, not left for
            // whichever side lets go of the slot last.
            // SAFETY: after VALUE, only the receiver touches the value.
            drop(unsafe { self.inner.value.with_mut(Option::take) });
            CloseOutcome::Settled
        } else if prev & ABANDONED != 0 {
            CloseOutcome::Settled
        } else {
            CloseOutcome::Unresolved
        }
    }
}

/// How many tickets closed their slot unresolved, ever: what lets the engine
/// skip asking each operation whether its caller gave up.
///
/// Asking a slot is a cache miss per operation (the slot was last written on
/// the submitter's thread). So a ticket that closes its slot
/// [`Unresolved`](CloseOutcome::Unresolved) then [`report`](Self::report)s
/// it here, and the engine asks its operations only while the count is ahead
/// of what its last sweep covered. The order makes this safe: the report is a
/// release that follows the close, and [`reported`](Self::reported) an
/// acquire, so a drop whose report the engine has read is a slot the engine
/// finds closed. A drop not yet reported may still be dispatched: its send is
/// then refused and the result discarded, as for a ticket dropped just after
/// the dispatch.
pub(crate) struct CancelCount {
    count: AtomicU64,
}

impl CancelCount {
    pub(crate) fn new() -> Self {
        CancelCount {
            count: AtomicU64::new(0),
        }
    }

    /// Counts a slot that [`Receiver::close`] left unresolved; call it after
    /// the close.
    pub(crate) fn report(&self) {
        self.count.fetch_add(1, Release);
    }

    /// The drops reported so far. Every slot whose drop this count includes
    /// is seen closed by [`Resolver::is_closed`] after this call.
    pub(crate) fn reported(&self) -> u64 {
        self.count.load(Acquire)
    }
}

#[cfg(all(test, baler_loom))]
mod loom_tests {
    //! The races of the ticket/cancel hand-off, explored exhaustively by loom.
    //! Run with `RUSTFLAGS="--cfg baler_loom" cargo test -p baler --lib --release loom`.

    use super::*;
    use loom::sync::atomic::{AtomicBool, Ordering};
    use loom::thread;

    /// A ticket dropped while its operation is resolved: the value is either
    /// delivered (the ticket saw it: `Settled`) or refused (the ticket saw
    /// nothing: `Unresolved`, and the engine is told), never both or neither.
    #[test]
    fn close_and_send_agree_on_who_won() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let sender = thread::spawn(move || tx.send(7).is_ok());
            let closed = rx.close();
            let delivered = sender.join().unwrap();
            assert_eq!(delivered, closed == CloseOutcome::Settled);
        });
    }

    /// The engine's side: at dispatch it skips operations whose ticket is
    /// closed; otherwise the batch resolves them. A ticket dropped
    /// concurrently is accounted for exactly once: cancelled before dispatch,
    /// or resolved (its value discarded), and a ticket that reported
    /// `Unresolved` is always found closed by the sweep that follows.
    #[test]
    fn a_dropped_ticket_is_cancelled_or_resolved_exactly_once() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let cancelled = Arc::new(AtomicBool::new(false));
            let resolved = Arc::new(AtomicBool::new(false));
            let (c, r) = (cancelled.clone(), resolved.clone());
            let engine = thread::spawn(move || {
                if tx.is_closed() {
                    c.store(true, Ordering::SeqCst);
                    drop(tx);
                    None
                } else {
                    r.store(true, Ordering::SeqCst);
                    Some(tx.send(1).is_ok())
                }
            });
            let outcome = rx.close();
            let dispatched = engine.join().unwrap();
            let cancelled = cancelled.load(Ordering::SeqCst);
            let resolved = resolved.load(Ordering::SeqCst);
            assert!(cancelled ^ resolved, "accounted exactly once");
            match outcome {
                // The ticket left before any value: either the engine saw it
                // closed, or its send was refused.
                CloseOutcome::Unresolved => assert!(cancelled || dispatched == Some(false)),
                // A value arrived first, so the engine dispatched it.
                CloseOutcome::Settled => assert_eq!(dispatched, Some(true)),
            }
        });
    }

    /// A ticket that is polled again with another waker (the task moved)
    /// replaces its waker while the value arrives: the new waker is woken,
    /// or the poll sees the value itself.
    #[test]
    fn a_replaced_waker_is_woken() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let noop = futures_noop_waker();
            let mut first = Context::from_waker(&noop);
            let early = rx.poll_recv(&mut first);
            let sender = thread::spawn(move || {
                let _ = tx.send(5);
            });
            let got = match early {
                Poll::Ready(v) => v,
                Poll::Pending => {
                    loom::future::block_on(std::future::poll_fn(|cx| rx.poll_recv(cx)))
                }
            };
            assert_eq!(got, Ok(5));
            sender.join().unwrap();
        });
    }

    /// A ticket dropped while the resolver is dropped unsent: the ticket
    /// reports `Unresolved` only if it closed first, and nothing leaks or
    /// is freed twice.
    #[test]
    fn close_and_abandon_race_cleanly() {
        loom::model(|| {
            let (tx, mut rx) = channel::<String>();
            let dropper = thread::spawn(move || drop(tx));
            let _ = rx.close();
            dropper.join().unwrap();
        });
        loom::model(|| {
            let (tx, mut rx) = channel::<String>();
            let sender = thread::spawn(move || tx.send("value".to_owned()).is_ok());
            let outcome = rx.close();
            let delivered = sender.join().unwrap();
            assert_eq!(delivered, outcome == CloseOutcome::Settled);
            drop(rx);
        });
    }

    fn futures_noop_waker() -> Waker {
        use std::task::{RawWaker, RawWakerVTable};
        fn clone(_: *const ()) -> RawWaker {
            RawWaker::new(std::ptr::null(), &VTABLE)
        }
        fn noop(_: *const ()) {}
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
        // SAFETY: the vtable's functions do nothing and ignore the pointer.
        unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
    }

    /// A ticket waiting for its value is woken by the send, or by the
    /// resolver being dropped: it never hangs.
    #[test]
    fn a_waiting_ticket_is_always_woken() {
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let sender = thread::spawn(move || {
                let _ = tx.send(3);
            });
            let got = loom::future::block_on(std::future::poll_fn(|cx| rx.poll_recv(cx)));
            assert_eq!(got, Ok(3));
            sender.join().unwrap();
        });
        loom::model(|| {
            let (tx, mut rx) = channel::<u32>();
            let dropper = thread::spawn(move || drop(tx));
            let got = loom::future::block_on(std::future::poll_fn(|cx| rx.poll_recv(cx)));
            assert_eq!(got, Err(ResolverDropped));
            dropper.join().unwrap();
        });
    }

    /// The engine's shortcut: it asks its operations whether their ticket
    /// is gone only when the cancel count moved since its last sweep. A drop
    /// the count already includes is never dispatched: the engine that read
    /// it finds the slot closed; and a drop it does not include yet is
    /// accounted exactly once (refused at send, or found by the next sweep).
    #[test]
    fn a_counted_drop_is_never_dispatched() {
        loom::model(|| {
            let count = Arc::new(CancelCount::new());
            let (tx, mut rx) = channel::<u32>();
            let c = count.clone();
            let ticket = thread::spawn(move || {
                let outcome = rx.close();
                if outcome == CloseOutcome::Unresolved {
                    c.report();
                }
                outcome
            });
            // The engine's dispatch, its last sweep having covered 0 drops.
            let swept = 0;
            let reported = count.reported();
            let check = reported != swept;
            let dispatched = if check && tx.is_closed() {
                drop(tx);
                None
            } else {
                Some(tx.send(1).is_ok())
            };
            let outcome = ticket.join().unwrap();
            if reported == 1 {
                assert_eq!(dispatched, None, "a counted drop was dispatched");
            }
            match (dispatched, outcome) {
                // Found closed at dispatch: the ticket had left unresolved.
                (None, o) => assert_eq!(o, CloseOutcome::Unresolved),
                // Delivered: the ticket saw the value when it closed.
                (Some(true), o) => assert_eq!(o, CloseOutcome::Settled),
                // Refused: the ticket left first, and its report makes the
                // next sweep look (and find the slot closed).
                (Some(false), o) => {
                    assert_eq!(o, CloseOutcome::Unresolved);
                    assert_eq!(count.reported(), 1);
                }
            }
        });
    }
}
