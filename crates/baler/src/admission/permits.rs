//! The buffer's permits and the line of submitters waiting for them.
//!
//! One word holds the free operation permits and two flags (closed, someone
//! waits); a second word the free cost permits when the buffer's cost is
//! bounded. A submitter with room takes its permits with a compare-and-swap
//! and no lock. A submitter without room joins the line: a list of small
//! nodes in a slab under a mutex, one node per waiting submitter and
//! nothing else allocated for it. Permits given back go to the line's head
//! first, in order, so the line is first come first served and a newcomer
//! never passes a waiter (while anyone waits, the lock-free path refuses).
//!
//! A node is 32 bytes: the waiter's waker, the cost it needs, its links, and
//! its state. The waiter holds only the node's index, so its future need not
//! be pinned to stay in line, and a waiting submit costs its own future plus
//! one node.
//!
//! # Invariants
//!
//! - **Permits are counted once**: a permit is free (in the words), held by
//!   a granted node, or held by a reservation; a grant moves permits from the
//!   words to a node under the lock, and a node's permits go to its waiter
//!   or, if it left, back to the words.
//! - **No lost wake-up**: a waiter sets [`WAITERS`] before it looks for
//!   permits under the lock, and a release adds its permits before it reads
//!   [`WAITERS`] from the same word; so either the waiter sees the permits or
//!   the release sees the waiter and serves the line.
//! - **FIFO**: only the line's head is ever granted, and while the line is
//!   not empty the lock-free path takes nothing.
//! - **Closed is final**: [`CLOSED`] is never cleared; every waiter in line
//!   when it is set is refused, and no one joins after.
//!
//! The loom tests at the end of this file (run with `RUSTFLAGS="--cfg
//! baler_loom"`) check that a release is never missed by a submitter joining
//! the line, and that a submitter leaving as its turn comes neither keeps
//! nor loses the permits it was granted.

use std::task::{Context, Poll, Waker};

use super::Padded;

#[cfg(baler_loom)]
use loom::sync::{
    atomic::{AtomicUsize, Ordering::SeqCst},
    Mutex, MutexGuard,
};
#[cfg(not(baler_loom))]
use std::sync::{
    atomic::{AtomicUsize, Ordering::SeqCst},
    Mutex, MutexGuard,
};

/// The buffer is closed: no more permits are handed out.
const CLOSED: usize = 0b01;
/// Someone waits in line: the lock-free path must not take permits.
const WAITERS: usize = 0b10;
/// Free operation permits are counted above the flags.
const SHIFT: u32 = 2;
/// The most operation permits the word holds.
pub(crate) const MAX_PERMITS: usize = usize::MAX >> SHIFT;

/// No node.
const NIL: u32 = u32::MAX;
/// Nodes per slab chunk: chunks are never moved, so the slab grows without
/// copying, and it has at most one chunk more than it needs.
const CHUNK: usize = 1024;

/// What a waiting submitter is told when it looks at its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Its permits are taken for it.
    Granted,
    /// The buffer closed while it waited.
    Refused,
}

/// Why the lock-free path took nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Waiting,
    Granted,
    Refused,
}

struct Node {
    waker: Option<Waker>,
    cost: u32,
    prev: u32,
    /// The next node in line; for a free node, the next free one.
    next: u32,
    state: State,
}

const EMPTY: Node = Node {
    waker: None,
    cost: 0,
    prev: NIL,
    next: NIL,
    state: State::Free,
};

/// The line, under the lock.
struct Line {
    chunks: Vec<Box<[Node]>>,
    /// The first free node, chained through `next`.
    free: u32,
    /// Nodes never used yet start here.
    unused: u32,
    /// Nodes not free: in line, or granted or refused and not yet seen.
    live: usize,
    head: u32,
    tail: u32,
}

impl Line {
    fn node(&mut self, i: u32) -> &mut Node {
        let i = i as usize;
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn alloc(&mut self, node: Node) -> u32 {
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.node(i).next;
            i
        } else {
            let i = self.unused;
            if i as usize == self.chunks.len() * CHUNK {
                self.chunks.push(
                    (0..CHUNK)
                        .map(|_| EMPTY)
                        .collect::<Vec<_>>()
                        .into_boxed_slice(),
                );
            }
            self.unused += 1;
            i
        };
        *self.node(i) = node;
        self.live += 1;
        i
    }

    fn release_node(&mut self, i: u32) {
        let free = self.free;
        let node = self.node(i);
        debug_assert!(node.state != State::Free, "a node is freed once");
        *node = Node {
            next: free,
            ..EMPTY
        };
        self.free = i;
        self.live -= 1;
        if self.live == 0 && self.chunks.len() > 1 {
            // A backlog has drained: give its memory back.
            self.chunks.truncate(1);
            self.free = NIL;
            self.unused = 0;
        }
    }

    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        self.node(i).prev = tail;
        if tail == NIL {
            self.head = i;
        } else {
            self.node(tail).next = i;
        }
        self.tail = i;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let node = self.node(i);
            (node.prev, node.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.node(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.node(next).prev = prev;
        }
        let node = self.node(i);
        node.prev = NIL;
        node.next = NIL;
    }
}

/// The words every submit updates, on cache lines of their own: the line
/// and the waiting count, which the engine reads every turn, must not make
/// it fetch the line submitters are writing.
struct Words {
    /// Free operation permits `<< SHIFT`, and the flags.
    ops: AtomicUsize,
    /// Free cost permits, when the cost is bounded.
    cost: Option<AtomicUsize>,
}

/// The buffer's permits and their line.
pub(crate) struct Permits {
    words: Padded<Words>,
    line: Mutex<Line>,
    /// Submitters in line, for the stats (written under the lock).
    waiting: AtomicUsize,
}

impl Permits {
    pub(crate) fn new(ops: usize, cost: Option<usize>) -> Self {
        Permits {
            words: Padded(Words {
                ops: AtomicUsize::new(ops.min(MAX_PERMITS) << SHIFT),
                cost: cost.map(AtomicUsize::new),
            }),
            line: Mutex::new(Line {
                chunks: Vec::new(),
                free: NIL,
                unused: 0,
                live: 0,
                head: NIL,
                tail: NIL,
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // Nothing panics while the lock is held but an allocation failure,
        // which aborts, so a poisoned line is still consistent.
        self.line.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one operation permit and `cost` cost permits if they are free
    /// and nobody waits.
    #[inline]
    pub(crate) fn try_take(&self, cost: u32) -> Result<(), Refusal> {
        let mut cur = self.words.ops.load(SeqCst);
        loop {
            if cur & CLOSED != 0 {
                return Err(Refusal::Closed);
            }
            if cur & WAITERS != 0 || cur >> SHIFT == 0 {
                return Err(Refusal::Full);
            }
            match self
                .words
                .ops
                .compare_exchange_weak(cur, cur - (1 << SHIFT), SeqCst, SeqCst)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if let Some(free) = &self.words.cost {
            if !take_cost(free, cost) {
                self.give(1, 0);
                return Err(Refusal::Full);
            }
        }
        Ok(())
    }

    /// Gives permits back; the line's head gets them first.
    pub(crate) fn give(&self, ops: usize, cost: u64) {
        if let Some(free) = &self.words.cost {
            if cost > 0 {
                free.fetch_add(cost as usize, SeqCst);
            }
        }
        // After the cost: a waiter that sees these operation permits (or is
        // seen here) sees the cost permits too.
        let before = self.words.ops.fetch_add(ops << SHIFT, SeqCst);
        if before & WAITERS != 0 {
            let mut line = self.lock();
            self.serve(&mut line);
        }
    }

    /// Grants the line's head its permits, and the next, while they are free.
    fn serve(&self, line: &mut Line) {
        while line.head != NIL {
            let head = line.head;
            let cost = line.node(head).cost;
            if !self.take_for_waiter(cost) {
                break;
            }
            line.unlink(head);
            let node = line.node(head);
            node.state = State::Granted;
            self.waiting.fetch_sub(1, SeqCst);
            if let Some(waker) = node.waker.take() {
                waker.wake();
            }
        }
        if line.head == NIL {
            self.words.ops.fetch_and(!WAITERS, SeqCst);
        }
    }

    /// Takes the permits of a waiter: the lock-free path is shut out while
    /// anyone waits, so only releases move the words meanwhile, upwards.
    fn take_for_waiter(&self, cost: u32) -> bool {
        let mut cur = self.words.ops.load(SeqCst);
        loop {
            if cur >> SHIFT == 0 || cur & CLOSED != 0 {
                return false;
            }
            match self
                .words
                .ops
                .compare_exchange_weak(cur, cur - (1 << SHIFT), SeqCst, SeqCst)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if let Some(free) = &self.words.cost {
            if !take_cost(free, cost) {
                self.words.ops.fetch_add(1 << SHIFT, SeqCst);
                return false;
            }
        }
        true
    }

    /// Joins the line (or takes the permits at once if they came free since
    /// the lock-free path looked). Returns the place in line, or the turn.
    pub(crate) fn join(&self, cost: u32, cx: &mut Context<'_>) -> Result<u32, Turn> {
        let mut line = self.lock();
        if self.words.ops.load(SeqCst) & CLOSED != 0 {
            return Err(Turn::Refused);
        }
        if line.head == NIL && self.take_for_waiter(cost) {
            return Err(Turn::Granted);
        }
        let i = line.alloc(Node {
            waker: Some(cx.waker().clone()),
            cost,
            prev: NIL,
            next: NIL,
            state: State::Waiting,
        });
        line.push_back(i);
        self.waiting.fetch_add(1, SeqCst);
        // Seen by every release from here on; and what was released before
        // is seen by the look below.
        self.words.ops.fetch_or(WAITERS, SeqCst);
        self.serve(&mut line);
        match line.node(i).state {
            State::Waiting => Ok(i),
            state => {
                line.release_node(i);
                Err(turn(state))
            }
        }
    }

    /// Looks at a place in line: the turn if it came (the place is then
    /// given up), else the waker to wake when it comes.
    pub(crate) fn poll_turn(&self, place: u32, cx: &mut Context<'_>) -> Poll<Turn> {
        let mut line = self.lock();
        let node = line.node(place);
        match node.state {
            State::Waiting => {
                match &node.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => node.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            state => {
                line.release_node(place);
                Poll::Ready(turn(state))
            }
        }
    }

    /// Gives up a place in line. Permits granted to it and not yet seen go
    /// back, to the next in line.
    pub(crate) fn leave(&self, place: u32) {
        let mut line = self.lock();
        let node = line.node(place);
        let (state, cost) = (node.state, node.cost);
        match state {
            State::Waiting => {
                let was_head = line.head == place;
                line.unlink(place);
                line.release_node(place);
                self.waiting.fetch_sub(1, SeqCst);
                if was_head || line.head == NIL {
                    // The next in line may fit where this one did not.
                    self.serve(&mut line);
                }
            }
            State::Granted => {
                line.release_node(place);
                if let Some(free) = &self.words.cost {
                    free.fetch_add(cost as usize, SeqCst);
                }
                self.words.ops.fetch_add(1 << SHIFT, SeqCst);
                self.serve(&mut line);
            }
            State::Refused => line.release_node(place),
            State::Free => debug_assert!(false, "a place in line is left once"),
        }
    }

    /// Refuses every later taker and everyone in line. Returns whether this
    /// call closed it.
    pub(crate) fn close(&self) -> bool {
        let before = self.words.ops.fetch_or(CLOSED, SeqCst);
        let mut line = self.lock();
        while line.head != NIL {
            let head = line.head;
            line.unlink(head);
            let node = line.node(head);
            node.state = State::Refused;
            self.waiting.fetch_sub(1, SeqCst);
            if let Some(waker) = node.waker.take() {
                waker.wake();
            }
        }
        self.words.ops.fetch_and(!WAITERS, SeqCst);
        before & CLOSED == 0
    }

    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.words.ops.load(SeqCst) & CLOSED != 0
    }

    /// Free operation permits.
    pub(crate) fn free_ops(&self) -> usize {
        self.words.ops.load(SeqCst) >> SHIFT
    }

    /// Free cost permits (0 when the cost is not bounded).
    pub(crate) fn free_cost(&self) -> usize {
        self.words.cost.as_ref().map_or(0, |c| c.load(SeqCst))
    }

    /// Submitters in line.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(SeqCst)
    }
}

fn turn(state: State) -> Turn {
    match state {
        State::Granted => Turn::Granted,
        _ => Turn::Refused,
    }
}

fn take_cost(free: &AtomicUsize, cost: u32) -> bool {
    let cost = cost as usize;
    let mut cur = free.load(SeqCst);
    loop {
        if cur < cost {
            return false;
        }
        match free.compare_exchange_weak(cur, cur - cost, SeqCst, SeqCst) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

#[cfg(all(test, not(baler_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_node_is_32_bytes() {
        assert!(
            std::mem::size_of::<Node>() <= 32,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn permits_go_to_the_line_in_order_and_newcomers_wait_behind_it() {
        let p = Permits::new(1, None);
        assert_eq!(p.try_take(1), Ok(()));
        assert_eq!(p.try_take(1), Err(Refusal::Full));
        let (woken, w) = waker();
        let mut cx = Context::from_waker(&w);
        let first = p.join(1, &mut cx).expect("in line");
        let second = p.join(1, &mut cx).expect("in line");
        assert_eq!(p.waiting(), 2);
        p.give(1, 0);
        assert_eq!(woken.0.load(SeqCst), 1, "the head was woken");
        assert_eq!(p.try_take(1), Err(Refusal::Full), "no passing the line");
        assert_eq!(p.poll_turn(second, &mut cx), Poll::Pending);
        assert_eq!(p.poll_turn(first, &mut cx), Poll::Ready(Turn::Granted));
        p.give(1, 0);
        assert_eq!(p.poll_turn(second, &mut cx), Poll::Ready(Turn::Granted));
        assert_eq!(p.waiting(), 0);
        p.give(1, 0);
        assert_eq!(
            p.try_take(1),
            Ok(()),
            "an empty line lets the lock-free path through"
        );
    }

    #[test]
    fn a_head_that_leaves_lets_the_next_one_in_if_it_fits() {
        let p = Permits::new(2, Some(3));
        assert_eq!(p.try_take(3), Ok(()));
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let big = p.join(3, &mut cx).expect("in line");
        let small = p.join(1, &mut cx).expect("in line");
        p.give(0, 1);
        assert_eq!(
            p.poll_turn(small, &mut cx),
            Poll::Pending,
            "behind the head"
        );
        p.leave(big);
        assert_eq!(p.poll_turn(small, &mut cx), Poll::Ready(Turn::Granted));
        assert_eq!((p.free_ops(), p.free_cost()), (0, 0));
    }

    #[test]
    fn a_granted_place_given_up_passes_its_permits_on() {
        let p = Permits::new(1, None);
        assert_eq!(p.try_take(1), Ok(()));
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let first = p.join(1, &mut cx).expect("in line");
        let second = p.join(1, &mut cx).expect("in line");
        p.give(1, 0);
        p.leave(first);
        assert_eq!(p.poll_turn(second, &mut cx), Poll::Ready(Turn::Granted));
        assert_eq!(p.free_ops(), 0);
    }

    #[test]
    fn closing_refuses_the_line_and_every_later_taker() {
        let p = Permits::new(1, None);
        assert_eq!(p.try_take(1), Ok(()));
        let (woken, w) = waker();
        let mut cx = Context::from_waker(&w);
        let place = p.join(1, &mut cx).expect("in line");
        assert!(p.close());
        assert!(!p.close(), "closed once");
        assert_eq!(woken.0.load(SeqCst), 1);
        assert_eq!(p.poll_turn(place, &mut cx), Poll::Ready(Turn::Refused));
        assert_eq!(p.join(1, &mut cx), Err(Turn::Refused));
        p.give(1, 0);
        assert_eq!(p.try_take(1), Err(Refusal::Closed));
        assert_eq!(p.free_ops(), 1, "permits still come back after the close");
    }

    #[test]
    fn the_slab_gives_a_drained_backlog_back() {
        let p = Permits::new(0, None);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let places: Vec<u32> = (0..3 * CHUNK)
            .map(|_| p.join(1, &mut cx).expect("in line"))
            .collect();
        assert_eq!(p.lock().chunks.len(), 3);
        for place in places.into_iter().rev() {
            p.leave(place);
        }
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.lock().chunks.len(), 1);
        assert_eq!(p.join(1, &mut cx), Ok(0), "the first node is used again");
    }
}

#[cfg(all(test, baler_loom))]
mod loom_tests {
    //! The races between submitters joining or leaving the line and the
    //! engine giving permits back, explored exhaustively by loom. Run with
    //! `RUSTFLAGS="--cfg baler_loom" cargo test -p baler --lib --release loom`.

    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The only permit is given back while a submitter finds no room and
    /// joins the line: it always gets the permit (loom reports a deadlock
    /// if its wake-up is lost), and the permit is counted once.
    #[test]
    fn a_release_is_never_missed_by_a_submitter_joining_the_line() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1, Some(2)));
            assert_eq!(permits.try_take(2), Ok(()));
            let releaser = {
                let permits = permits.clone();
                thread::spawn(move || permits.give(1, 2))
            };
            loom::future::block_on(async {
                if permits.try_take(1).is_ok() {
                    return;
                }
                let mut place = None;
                std::future::poll_fn(|cx| match place {
                    None => match permits.join(1, cx) {
                        Ok(p) => {
                            place = Some(p);
                            Poll::Pending
                        }
                        Err(turn) => Poll::Ready(assert_eq!(turn, Turn::Granted)),
                    },
                    Some(p) => permits.poll_turn(p, cx).map(|turn| {
                        assert_eq!(turn, Turn::Granted);
                    }),
                })
                .await;
            });
            releaser.join().unwrap();
            assert_eq!((permits.free_ops(), permits.free_cost()), (0, 1));
            assert_eq!(permits.waiting(), 0);
        });
    }

    /// A submitter leaves the line just as the permit it waits for comes
    /// back: whether or not it was granted first, the permit ends up free,
    /// once.
    #[test]
    fn a_submitter_leaving_as_its_turn_comes_passes_the_permit_on() {
        loom::model(|| {
            let permits = Arc::new(Permits::new(1, None));
            assert_eq!(permits.try_take(1), Ok(()));
            let waker = futures_waker();
            let mut cx = Context::from_waker(&waker);
            let place = permits.join(1, &mut cx).expect("the buffer is full");
            let releaser = {
                let permits = permits.clone();
                thread::spawn(move || permits.give(1, 0))
            };
            permits.leave(place);
            releaser.join().unwrap();
            assert_eq!(permits.free_ops(), 1);
            assert_eq!(permits.waiting(), 0);
            assert_eq!(permits.try_take(1), Ok(()), "the line is empty again");
        });
    }

    fn futures_waker() -> Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        Waker::from(std::sync::Arc::new(Noop))
    }
}
