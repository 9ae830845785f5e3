//! A model-based property test of the engine.
//!
//! Each case builds a fresh batcher with a random configuration on a
//! current-thread runtime with a paused clock, and plays a random script
//! against it: submits (`try_submit`, `submit_timeout`, `submit`), dropped
//! tickets and abandoned submits, clock advances, pause, resume and flush;
//! then a finale (nothing, a flush, or a resume and a long wait), and finally
//! a shutdown with or without a deadline.
//!
//! The handler's behaviour is scripted by the payloads: each operation says
//! what its handler should answer on each attempt (done, retry, fail), or that
//! its whole batch goes wrong (panic, too slow, wrong number of outcomes,
//! batch error). The handler writes every dispatch into a ledger (which
//! operations, which attempt, which key, what cost, when, and whether it ran
//! to the end) and checks the limits as it runs.
//!
//! Which batch an operation lands in depends on timing, so the reference model
//! does not guess it: it replays the ledger. Given the batches the engine
//! really formed, the handler's answers are deterministic, so the model knows
//! exactly what every ticket must resolve with, including the errors a
//! batch-mate's panic, timeout, batch error or wrong outcome count causes.
//!
//! # What is checked
//!
//! In the handler, for every batch: one key; at most `max_batch_size`
//! operations; cost within `max_batch_cost` and the burst unless it is a
//! single operation; no operation twice; attempts within `max_attempts`; at
//! most `max_in_flight` handlers running at once, and at most the per-key
//! limit of one key (counted from the handler's first poll until its future is
//! dropped); and the cost dispatched by time `t` at most `rate × t`.
//!
//! After every step: `target == buffered_cost + retrying_cost +
//! in_flight_cost`; in-flight batches within the limit; the capacity's
//! `spent()` within `rate × t` and at least what the handlers received;
//! refusals are the right kind (`TooExpensive` exactly for what exceeds a
//! limit, `Shutdown` only after shutdown, `Full` only when the buffer is full);
//! a dropped ticket of an operation not yet dispatched is cancelled at once;
//! and a flush returns only after everything accepted before it resolved.
//!
//! After the shutdown: every ticket not dropped has resolved, exactly as the
//! ledger says; every accepted operation reached the handler with attempts
//! 1, 2, ... and was dispatched again only after an answer that retries it;
//! op ids are unique; no operation reached the handler for a new attempt after
//! its ticket was dropped, nor at all if its submit was abandoned; the report
//! lists exactly the abandoned operations, payload included; the stats hold
//! nothing, `submitted == completed + failed + cancelled`, and `completed` and
//! `cancelled` match the ledger; a shutdown with a deadline returned by it.
//!
//! # Where the model is deliberately weaker
//!
//! - A shutdown deadline races with batches in flight: a batch whose handler
//!   did not run to its end may have been abandoned rather than answered, so
//!   both answers are accepted, and with a deadline `cancelled` is only
//!   bounded (a dropped ticket's operation waiting out a retry backoff is
//!   abandoned rather than cancelled when the deadline comes first).
//! - The driver cannot see the buffer's semaphore, so `Full` and acceptance
//!   are checked against bounds (places held, plus waiting submits that may
//!   have been promised one), and a `submit_timeout` that times out is only
//!   checked to be the timed variant.
//! - A ticket dropped while its batch may have been dispatched but not yet
//!   polled may see that one attempt reach the handler afterwards.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use baler::{
    handler_fn, Batch, Batcher, Capacity, Dispatch, Error, Execution, HandlerResult, Operation,
    Outcome, ShutdownReport, SubmitError, Ticket,
};
use common::{now_or_never, settle};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a scripted panic says, so the panic hook can keep it quiet.
const SCRIPTED_PANIC: &str = "scripted handler panic";

type Key = u8;
/// A successful output: the operation's model index and the attempt.
type Out = (usize, u32);
type SubmitResult = Result<Ticket<Out, Fail>, SubmitError<Payload>>;

// ----- the script -----------------------------------------------------------

/// What the handler does with one operation on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `Outcome::Done`.
    Ok,
    /// `Outcome::Retry`.
    Retry,
    /// `Outcome::Failed`.
    Fatal,
    /// The whole batch panics.
    Panic,
    /// The whole batch sleeps past the maximum operation time.
    TooSlow,
    /// The handler returns one outcome too few for the whole batch.
    WrongCount,
    /// The handler fails the whole batch.
    BatchError,
}

impl Step {
    fn is_batch_level(self) -> bool {
        matches!(
            self,
            Step::Panic | Step::TooSlow | Step::WrongCount | Step::BatchError
        )
    }
}

#[derive(Debug, Clone)]
struct Script {
    /// One step per attempt (max_attempts is at most 3).
    steps: [Step; 3],
    /// How long the handler of a batch holding this operation works.
    work_ms: u64,
}

impl Script {
    fn at(&self, attempt: u32) -> Step {
        let i = attempt as usize;
        if i == 0 {
            return Step::Ok;
        }
        self.steps.get(i - 1).copied().unwrap_or(Step::Ok)
    }
}

#[derive(Debug)]
struct Payload {
    op: usize,
    key: Option<Key>,
    cost: u32,
    script: Script,
}

/// The handler's error: whose it is, so the model can tell that a ticket got
/// its own operation's error and not a neighbour's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fail {
    Op { op: usize, attempt: u32 },
    Batch { first: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Try,
    Timeout(u64),
    Wait,
}

#[derive(Debug, Clone)]
enum Action {
    Submit {
        cost: u32,
        key: Option<Key>,
        how: How,
        script: Script,
    },
    DropTicket(Index),
    Advance(u64),
    Pause,
    Resume,
    Flush,
}

#[derive(Debug, Clone)]
struct Config {
    max_batch_size: usize,
    max_batch_cost: Option<u64>,
    min_batch_size: usize,
    linger_ms: u64,
    ticker_ms: u64,
    load_aware: bool,
    max_in_flight: usize,
    max_in_flight_per_key: Option<usize>,
    buffer_size: usize,
    max_attempts: u32,
    backoff_ms: u64,
    max_operation_ms: u64,
    retry_timeouts: bool,
    /// `Execution::Inline` rather than `Execution::Spawned`.
    inline: bool,
    /// Provisioned capacity: (cost per second, burst).
    capacity: Option<(u64, u64)>,
}

impl Config {
    fn per_key_limit(&self) -> usize {
        self.max_in_flight_per_key
            .unwrap_or(self.max_in_flight)
            .min(self.max_in_flight)
    }

    /// The most cost one batch of several operations may have.
    fn batch_cost_limit(&self) -> u64 {
        let burst = self.capacity.map_or(u64::MAX, |(_, burst)| burst.max(1));
        self.max_batch_cost.unwrap_or(u64::MAX).min(burst)
    }

    fn too_expensive(&self, cost: u32) -> bool {
        let cost = u64::from(cost);
        self.max_batch_cost.is_some_and(|max| cost > max)
            || self.capacity.is_some_and(|(_, burst)| cost > burst)
    }

    fn max_operation_time(&self) -> Duration {
        Duration::from_millis(self.max_operation_ms)
    }
}

/// What happens between the script and the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finale {
    /// Nothing: the shutdown finds the batcher as the script left it.
    Nothing,
    /// A flush, which must return in bounded (virtual) time whatever state
    /// the script left, paused or not.
    Flush,
    /// A resume, then time passes: everything must be dispatched and resolve
    /// on its own, by linger, ticker, backoff and capacity alone.
    Drain,
    /// Time passes without a resume: the flushes the script started must
    /// return on their own, paused or not. Then a final flush.
    ScriptFlushes,
}

#[derive(Debug, Clone)]
struct Case {
    config: Config,
    actions: Vec<Action>,
    /// What happens between the script and the shutdown.
    finale: Finale,
    /// The shutdown deadline, if any.
    deadline_ms: Option<u64>,
}

// ----- strategies -----------------------------------------------------------

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        24 => Just(Step::Ok),
        8 => Just(Step::Retry),
        3 => Just(Step::Fatal),
        1 => Just(Step::Panic),
        1 => Just(Step::TooSlow),
        1 => Just(Step::WrongCount),
        1 => Just(Step::BatchError),
    ]
}

fn script_strategy() -> impl Strategy<Value = Script> {
    (
        prop::array::uniform3(step_strategy()),
        prop_oneof![3 => Just(0u64), 2 => 1u64..=5],
    )
        .prop_map(|(steps, work_ms)| Script { steps, work_ms })
}

fn how_strategy() -> impl Strategy<Value = How> {
    prop_oneof![
        2 => Just(How::Try),
        1 => (0u64..=5).prop_map(How::Timeout),
        2 => Just(How::Wait),
    ]
}

fn action_strategy() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0u32..=4, prop::option::of(0u8..3), how_strategy(), script_strategy())
            .prop_map(|(cost, key, how, script)| Action::Submit { cost, key, how, script }),
        3 => any::<Index>().prop_map(Action::DropTicket),
        4 => (0u64..=25).prop_map(Action::Advance),
        2 => Just(Action::Pause),
        1 => Just(Action::Resume),
        2 => Just(Action::Flush),
    ]
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (1usize..=8)
        .prop_flat_map(|max| {
            (
                (
                    Just(max),
                    prop::option::of(1u64..=10),
                    prop_oneof![2 => Just(1usize), 1 => 1..=max],
                    max..=16usize,
                ),
                (
                    0u64..=20,
                    1u64..=20,
                    any::<bool>(),
                    1usize..=3,
                    prop::option::of(1usize..=3),
                ),
                (
                    1u32..=3,
                    1u64..=5,
                    20u64..=60,
                    any::<bool>(),
                    prop::option::of((200u64..=2000, 4u64..=16)),
                    any::<bool>(),
                ),
            )
        })
        .prop_map(
            |(
                (max_batch_size, max_batch_cost, min_batch_size, buffer_size),
                (linger_ms, ticker_ms, load_aware, max_in_flight, max_in_flight_per_key),
                (max_attempts, backoff_ms, max_operation_ms, retry_timeouts, capacity, inline),
            )| Config {
                max_batch_size,
                max_batch_cost,
                min_batch_size,
                linger_ms,
                ticker_ms,
                load_aware,
                max_in_flight,
                max_in_flight_per_key,
                buffer_size,
                max_attempts,
                backoff_ms,
                max_operation_ms,
                retry_timeouts,
                inline,
                capacity,
            },
        )
}

fn case_strategy(finale: impl Strategy<Value = Finale>) -> impl Strategy<Value = Case> {
    (
        config_strategy(),
        prop::collection::vec(action_strategy(), 0..=40),
        finale,
        prop::option::of(0u64..=60),
    )
        .prop_map(|(config, actions, finale, deadline_ms)| Case {
            config,
            actions,
            finale,
            deadline_ms,
        })
}

// ----- the handler and its ledger ---------------------------------------------

/// One operation as the handler saw it.
#[derive(Debug, Clone)]
struct Seen {
    op: usize,
    id: u64,
    attempt: u32,
    step: Step,
}

/// One batch as the handler saw it.
#[derive(Debug, Clone)]
struct Dispatched {
    /// Order among handler starts and ticket drops.
    seq: u64,
    at: Duration,
    key: Option<Key>,
    ops: Vec<Seen>,
    cost: u64,
    /// The batch-level step that decides the whole batch, if any.
    behaviour: Option<Step>,
    /// Whether the handler ran to its end (returned or panicked).
    finished: bool,
}

/// What every party of one case shares: the ledger, the handler's counters,
/// the accepted operations and the flushes that returned.
struct World {
    config: Config,
    t0: Instant,
    seq: AtomicU64,
    ledger: Mutex<Vec<Dispatched>>,
    running: Mutex<HashMap<Option<Key>, usize>>,
    violations: Mutex<Vec<String>>,
    accepted: Mutex<Vec<usize>>,
    flushes_done: Mutex<Vec<Vec<usize>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn accept(&self, op: usize) {
        lock(&self.accepted).push(op);
    }

    /// Writes the batch into the ledger and checks what can be checked at
    /// dispatch: keys, size, cost and capacity.
    fn record(&self, batch: &Batch<Payload, Key>) -> (usize, Option<Step>) {
        let cfg = &self.config;
        let at = Instant::now() - self.t0;
        let key = batch.key().copied();
        let ops: Vec<Seen> = batch
            .iter()
            .zip(batch.info())
            .map(|(p, info)| Seen {
                op: p.op,
                id: info.id.get(),
                attempt: info.attempt,
                step: p.script.at(info.attempt),
            })
            .collect();
        let cost = batch.cost();
        let mut problems = Vec::new();
        if batch.is_empty() || batch.len() > cfg.max_batch_size {
            problems.push(format!(
                "a batch of {} operations (max_batch_size {})",
                batch.len(),
                cfg.max_batch_size
            ));
        }
        if batch.len() > 1 && cost > cfg.batch_cost_limit() {
            problems.push(format!(
                "a batch of {} operations costs {cost}, above the limit {}",
                batch.len(),
                cfg.batch_cost_limit()
            ));
        }
        let mut in_batch = HashSet::new();
        for (p, info) in batch.iter().zip(batch.info()) {
            if p.key != key {
                problems.push(format!(
                    "op {} of key {:?} is in a batch of key {key:?}",
                    p.op, p.key
                ));
            }
            if info.cost != p.cost {
                problems.push(format!(
                    "op {} has cost {} but the batch says {}",
                    p.op, p.cost, info.cost
                ));
            }
            if info.attempt == 0 || info.attempt > cfg.max_attempts {
                problems.push(format!(
                    "op {} is on attempt {} (max_attempts {})",
                    p.op, info.attempt, cfg.max_attempts
                ));
            }
            if !in_batch.insert(p.op) {
                problems.push(format!("op {} is twice in one batch", p.op));
            }
        }
        let behaviour = ops.iter().map(|s| s.step).find(|s| s.is_batch_level());
        let mut ledger = lock(&self.ledger);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        ledger.push(Dispatched {
            seq,
            at,
            key,
            ops,
            cost,
            behaviour,
            finished: false,
        });
        let index = ledger.len() - 1;
        // The bucket starts empty: by any time, at most rate × elapsed was spent.
        if let Some((rate, _)) = cfg.capacity {
            let total: u64 = ledger.iter().map(|d| d.cost).sum();
            if u128::from(total) * 1_000_000_000 > u128::from(rate) * at.as_nanos() {
                problems.push(format!(
                    "{total} cost dispatched by {at:?}, more than {rate}/s allows"
                ));
            }
        }
        drop(ledger);
        for p in problems {
            self.violation(format!("dispatch {index}: {p}"));
        }
        (index, behaviour)
    }

    async fn handle(self: Arc<Self>, batch: Batch<Payload, Key>) -> HandlerResult<Out, Fail> {
        let _running = Running::enter(&self, batch.key().copied());
        let (index, behaviour) = self.record(&batch);
        if behaviour == Some(Step::TooSlow) {
            tokio::time::sleep(self.config.max_operation_time() + 10 * MS).await;
            self.violation(format!(
                "dispatch {index}: the handler ran past max_operation_time and was not dropped"
            ));
        } else {
            let work = batch.iter().map(|p| p.script.work_ms).max().unwrap_or(0);
            if work > 0 {
                tokio::time::sleep(ms(work)).await;
            }
        }
        lock(&self.ledger)[index].finished = true;
        let n = batch.len();
        match behaviour {
            Some(Step::Panic) => std::panic::panic_any(SCRIPTED_PANIC),
            Some(Step::WrongCount) => Ok((1..n).map(|_| Outcome::Done((usize::MAX, 0))).collect()),
            Some(Step::BatchError) => Err(Fail::Batch {
                first: batch.items()[0].op,
            }),
            _ => Ok(batch
                .iter()
                .zip(batch.info())
                .map(|(p, info)| {
                    let fail = Fail::Op {
                        op: p.op,
                        attempt: info.attempt,
                    };
                    match p.script.at(info.attempt) {
                        Step::Retry => Outcome::Retry(fail),
                        Step::Fatal => Outcome::Failed(fail),
                        _ => Outcome::Done((p.op, info.attempt)),
                    }
                })
                .collect()),
        }
    }
}

/// Counts a running handler, globally and per key, from its first poll until
/// its future is dropped.
struct Running {
    world: Arc<World>,
    key: Option<Key>,
}

impl Running {
    fn enter(world: &Arc<World>, key: Option<Key>) -> Self {
        let cfg = &world.config;
        let (total, of_key) = {
            let mut running = lock(&world.running);
            *running.entry(key).or_default() += 1;
            (running.values().sum::<usize>(), running[&key])
        };
        if total > cfg.max_in_flight {
            world.violation(format!(
                "{total} handlers run at once (max_in_flight {})",
                cfg.max_in_flight
            ));
        }
        if of_key > cfg.per_key_limit() {
            world.violation(format!(
                "{of_key} handlers of key {key:?} run at once (per-key limit {})",
                cfg.per_key_limit()
            ));
        }
        Running {
            world: world.clone(),
            key,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = lock(&self.world.running);
        if let Some(n) = running.get_mut(&self.key) {
            *n -= 1;
        }
    }
}

// ----- the model ------------------------------------------------------------

/// What a ticket resolved with, in a form the model can compare.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resolution {
    Done(Out),
    Failed(Fail),
    Exhausted { attempts: u32, last: Fail },
    TimedOut { attempts: u32 },
    Panicked,
    OutcomeCount { expected: usize, got: usize },
    Abandoned,
    Unexpected(String),
}

fn resolution(result: Result<Out, Error<Fail>>, cfg: &Config) -> Resolution {
    match result {
        Ok(out) => Resolution::Done(out),
        Err(Error::Handler(e)) => Resolution::Failed((*e).clone()),
        Err(Error::Exhausted { attempts, last }) => Resolution::Exhausted {
            attempts,
            last: (*last).clone(),
        },
        Err(Error::TimedOut { after, attempts }) if after == cfg.max_operation_time() => {
            Resolution::TimedOut { attempts }
        }
        Err(Error::Panicked { message }) if message == SCRIPTED_PANIC => Resolution::Panicked,
        Err(Error::OutcomeCount { expected, got }) => Resolution::OutcomeCount { expected, got },
        Err(Error::Abandoned) => Resolution::Abandoned,
        Err(other) => Resolution::Unexpected(format!("{other:?}")),
    }
}

/// What becomes of one operation of one dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    Resolve(Resolution),
    Retry,
}

/// What the handler's answer means for the operation at `pos` of `d`.
fn predicted(cfg: &Config, d: &Dispatched, pos: usize) -> Fate {
    let s = &d.ops[pos];
    let n = d.ops.len();
    match d.behaviour {
        Some(Step::Panic) => Fate::Resolve(Resolution::Panicked),
        Some(Step::WrongCount) => Fate::Resolve(Resolution::OutcomeCount {
            expected: n,
            got: n - 1,
        }),
        Some(Step::BatchError) => {
            Fate::Resolve(Resolution::Failed(Fail::Batch { first: d.ops[0].op }))
        }
        Some(Step::TooSlow) if cfg.retry_timeouts && s.attempt < cfg.max_attempts => Fate::Retry,
        Some(Step::TooSlow) => Fate::Resolve(Resolution::TimedOut {
            attempts: s.attempt,
        }),
        _ => {
            let fail = Fail::Op {
                op: s.op,
                attempt: s.attempt,
            };
            match s.step {
                Step::Retry if s.attempt < cfg.max_attempts => Fate::Retry,
                Step::Retry => Fate::Resolve(Resolution::Exhausted {
                    attempts: s.attempt,
                    last: fail,
                }),
                Step::Fatal => Fate::Resolve(Resolution::Failed(fail)),
                _ => Fate::Resolve(Resolution::Done((s.op, s.attempt))),
            }
        }
    }
}

/// Every fate the operation at `pos` of `d` may have had. Exactly the
/// handler's answer when the handler ran to its end; a batch dropped at its
/// time limit has its timeout answer, or, with a shutdown deadline, may have
/// been abandoned first; a batch dropped otherwise must have been abandoned.
fn possible(cfg: &Config, d: &Dispatched, pos: usize, deadline: bool) -> Result<Vec<Fate>, String> {
    let answer = predicted(cfg, d, pos);
    if d.finished {
        return Ok(vec![answer]);
    }
    let mut fates = Vec::new();
    if d.behaviour == Some(Step::TooSlow) {
        fates.push(answer);
    }
    if deadline {
        fates.push(Fate::Resolve(Resolution::Abandoned));
    }
    if fates.is_empty() {
        return Err(format!(
            "the handler of dispatch {d:?} was dropped before it finished, without a \
             time limit or shutdown deadline that could explain it"
        ));
    }
    Ok(fates)
}

// ----- the driver -----------------------------------------------------------

enum OpState {
    /// A spawned `submit` or `submit_timeout` that has not returned yet.
    Pending(JoinHandle<SubmitResult>),
    Live(Ticket<Out, Fail>),
    Resolved(Resolution),
    /// The ticket was dropped unresolved. `settled` says whether every batch
    /// dispatched by then had reached its handler, so that no attempt of the
    /// operation could still be on its way.
    Dropped {
        seq: u64,
        settled: bool,
    },
    Refused,
    /// The waiting submit was dropped (its task aborted).
    Aborted(JoinHandle<SubmitResult>),
}

struct Op {
    key: Option<Key>,
    cost: u32,
    how: How,
    state: OpState,
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

struct Run<'a> {
    case: &'a Case,
    world: Arc<World>,
    batcher: Batcher<Payload, Out, Fail, Key>,
    ops: Vec<Op>,
    flushes: Vec<JoinHandle<()>>,
    shutting_down: bool,
    /// Dropped tickets whose operation had certainly not been dispatched:
    /// the engine must have taken them out of the buffer by the next check.
    surely_cancelled: u64,
}

impl<'a> Run<'a> {
    fn new(case: &'a Case) -> Self {
        let cfg = &case.config;
        let world = Arc::new(World {
            config: cfg.clone(),
            t0: Instant::now(),
            seq: AtomicU64::new(0),
            ledger: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            violations: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            flushes_done: Mutex::new(Vec::new()),
        });
        let mut builder = Batcher::builder()
            .max_batch_size(cfg.max_batch_size)
            .min_batch_size(cfg.min_batch_size)
            .linger(ms(cfg.linger_ms))
            .ticker(ms(cfg.ticker_ms))
            .dispatch(if cfg.load_aware {
                Dispatch::LoadAware
            } else {
                Dispatch::Linger
            })
            .execution(if cfg.inline {
                Execution::Inline
            } else {
                Execution::Spawned
            })
            .max_in_flight(cfg.max_in_flight)
            .buffer_size(cfg.buffer_size)
            .max_attempts(cfg.max_attempts)
            .backoff(ms(cfg.backoff_ms), ms(4 * cfg.backoff_ms))
            .max_operation_time(cfg.max_operation_time())
            .retry_timeouts(cfg.retry_timeouts);
        if let Some(cost) = cfg.max_batch_cost {
            builder = builder.max_batch_cost(cost);
        }
        if let Some(n) = cfg.max_in_flight_per_key {
            builder = builder.max_in_flight_per_key(n);
        }
        if let Some((rate, burst)) = cfg.capacity {
            builder = builder.capacity(Capacity::provisioned_with_burst(rate, burst).unwrap());
        }
        let handler_world = world.clone();
        let batcher = builder
            .build(handler_fn(move |batch: Batch<Payload, Key>| {
                handler_world.clone().handle(batch)
            }))
            .unwrap();
        Run {
            case,
            world,
            batcher,
            ops: Vec::new(),
            flushes: Vec::new(),
            shutting_down: false,
            surely_cancelled: 0,
        }
    }

    fn cfg(&self) -> &Config {
        &self.case.config
    }

    async fn run(mut self) -> Result<(), String> {
        for action in &self.case.actions {
            self.act(action).await?;
            settle().await;
            self.observe()?;
        }
        match self.case.finale {
            Finale::Nothing => {}
            Finale::Flush => self.flush_in_bounded_time().await?,
            Finale::Drain => self.drain_on_its_own().await?,
            Finale::ScriptFlushes => {
                self.script_flushes_return().await?;
                self.flush_in_bounded_time().await?;
            }
        }
        let report = self.shut_down().await?;
        self.check_model(&report)
    }

    async fn act(&mut self, action: &Action) -> Result<(), String> {
        match action {
            Action::Submit {
                cost,
                key,
                how,
                script,
            } => self.submit(*cost, *key, *how, script)?,
            Action::DropTicket(index) => self.drop_ticket(index),
            Action::Advance(ms) => {
                for _ in 0..*ms {
                    tokio::time::advance(MS).await;
                    settle().await;
                    self.observe()?;
                }
            }
            Action::Pause => self.batcher.pause(),
            Action::Resume => self.batcher.resume(),
            Action::Flush => {
                let batcher = self.batcher.clone();
                let world = self.world.clone();
                self.flushes.push(tokio::spawn(async move {
                    // The snapshot and the flush's message go in one poll:
                    // these operations were accepted before the call.
                    let before = lock(&world.accepted).clone();
                    batcher.flush().await;
                    lock(&world.flushes_done).push(before);
                }));
            }
        }
        Ok(())
    }

    /// Operations holding a place in the buffer, as far as the driver can
    /// tell: accepted and not resolved in the engine's last snapshot.
    fn held(&self) -> Result<u64, String> {
        let s = self.batcher.stats();
        let accepted = lock(&self.world.accepted).len() as u64;
        let released = s.completed + s.failed + s.cancelled;
        ensure!(
            released <= accepted,
            "{released} operations resolved or cancelled, but only {accepted} were accepted: {s:?}"
        );
        Ok(accepted - released)
    }

    fn waiting_submits(&self) -> u64 {
        self.ops
            .iter()
            .filter(|op| matches!(&op.state, OpState::Pending(h) if !h.is_finished()))
            .count() as u64
    }

    fn submit(
        &mut self,
        cost: u32,
        key: Option<Key>,
        how: How,
        script: &Script,
    ) -> Result<(), String> {
        let id = self.ops.len();
        let payload = Payload {
            op: id,
            key,
            cost,
            script: script.clone(),
        };
        let mut op = Operation::new(payload).with_cost(cost);
        if let Some(k) = key {
            op = op.with_key(k);
        }
        let state = match how {
            How::Try => {
                let held = self.held()?;
                let waiting = self.waiting_submits();
                match self.batcher.try_submit(op) {
                    Ok(ticket) => {
                        ensure!(
                            held < self.cfg().buffer_size as u64,
                            "try_submit of op {id} accepted with {held} operations held \
                             (buffer_size {})",
                            self.cfg().buffer_size
                        );
                        ensure!(
                            !self.cfg().too_expensive(cost),
                            "op {id} of cost {cost} was accepted but is too expensive"
                        );
                        self.world.accept(id);
                        OpState::Live(ticket)
                    }
                    Err(e) => {
                        self.check_refusal(id, cost, how, e, Some(held + waiting))?;
                        OpState::Refused
                    }
                }
            }
            How::Timeout(ms) => {
                let batcher = self.batcher.clone();
                let world = self.world.clone();
                OpState::Pending(tokio::spawn(async move {
                    let result = batcher.submit_timeout(op, Duration::from_millis(ms)).await;
                    if result.is_ok() {
                        world.accept(id);
                    }
                    result
                }))
            }
            How::Wait => {
                let batcher = self.batcher.clone();
                let world = self.world.clone();
                OpState::Pending(tokio::spawn(async move {
                    let result = batcher.submit(op).await;
                    if result.is_ok() {
                        world.accept(id);
                    }
                    result
                }))
            }
        };
        self.ops.push(Op {
            key,
            cost,
            how,
            state,
        });
        Ok(())
    }

    /// Checks that a refusal was one the call could give. `full_bound` is,
    /// for `try_submit`, how many places were held or promised when it ran.
    fn check_refusal(
        &self,
        id: usize,
        cost: u32,
        how: How,
        e: SubmitError<Payload>,
        full_bound: Option<u64>,
    ) -> Result<(), String> {
        let cfg = self.cfg();
        let what = format!("{e:?}");
        let expensive = cfg.too_expensive(cost);
        match &e {
            SubmitError::TooExpensive { .. } => ensure!(
                expensive,
                "op {id} of cost {cost} was refused as {what}, but no limit is below its cost"
            ),
            SubmitError::Shutdown(_) => ensure!(
                self.shutting_down,
                "op {id} was refused with Shutdown before any shutdown"
            ),
            SubmitError::Full(_) => {
                let bound = full_bound.unwrap_or(0);
                ensure!(
                    how == How::Try && !expensive && bound >= cfg.buffer_size as u64,
                    "op {id} ({how:?}, cost {cost}) was refused as Full with at most {bound} \
                     places held or promised (buffer_size {})",
                    cfg.buffer_size
                );
            }
            SubmitError::Timeout(_) => ensure!(
                matches!(how, How::Timeout(_)) && !expensive,
                "op {id} ({how:?}, cost {cost}) was refused with Timeout"
            ),
            _ => return Err(format!("op {id} was refused with an unknown error {what}")),
        }
        ensure!(
            !expensive
                || matches!(
                    e,
                    SubmitError::TooExpensive { .. } | SubmitError::Shutdown(_)
                ),
            "op {id} of cost {cost} is too expensive but was refused as {what}"
        );
        let payload = e.into_payload();
        ensure!(
            payload.op == id,
            "the refusal of op {id} handed back the payload of op {}",
            payload.op
        );
        Ok(())
    }

    fn drop_ticket(&mut self, index: &Index) {
        let candidates: Vec<usize> = (0..self.ops.len())
            .filter(|&i| match &self.ops[i].state {
                OpState::Live(_) => true,
                OpState::Pending(h) => !h.is_finished(),
                _ => false,
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let i = candidates[index.index(candidates.len())];
        let seq = self.world.seq.fetch_add(1, Ordering::SeqCst);
        let settled = self.batcher.stats().batches == lock(&self.world.ledger).len() as u64;
        let state = std::mem::replace(&mut self.ops[i].state, OpState::Refused);
        self.ops[i].state = match state {
            OpState::Live(ticket) => {
                let dispatched = lock(&self.world.ledger)
                    .iter()
                    .any(|d| d.ops.iter().any(|s| s.op == i));
                if settled && !dispatched {
                    self.surely_cancelled += 1;
                }
                drop(ticket);
                OpState::Dropped { seq, settled }
            }
            OpState::Pending(handle) => {
                handle.abort();
                OpState::Aborted(handle)
            }
            other => other,
        };
    }

    /// Collects returned submits and resolved tickets, then checks the
    /// invariants that hold after every step.
    fn observe(&mut self) -> Result<(), String> {
        for id in 0..self.ops.len() {
            let finished = matches!(&self.ops[id].state, OpState::Pending(h) if h.is_finished());
            if !finished {
                continue;
            }
            let OpState::Pending(mut handle) =
                std::mem::replace(&mut self.ops[id].state, OpState::Refused)
            else {
                unreachable!()
            };
            match now_or_never(&mut handle) {
                Some(Ok(Ok(ticket))) => {
                    ensure!(
                        !self.cfg().too_expensive(self.ops[id].cost),
                        "op {id} of cost {} was accepted but is too expensive",
                        self.ops[id].cost
                    );
                    self.ops[id].state = OpState::Live(ticket);
                }
                Some(Ok(Err(e))) => {
                    let (cost, how) = (self.ops[id].cost, self.ops[id].how);
                    self.check_refusal(id, cost, how, e, None)?;
                }
                Some(Err(e)) => return Err(format!("the submit task of op {id} failed: {e}")),
                None => return Err(format!("the finished submit task of op {id} is pending")),
            }
        }

        // Flushes that returned before the tickets are polled: the tickets
        // they waited for were resolved before they returned.
        let flushed: Vec<Vec<usize>> = std::mem::take(&mut *lock(&self.world.flushes_done));
        let cfg = self.case.config.clone();
        for op in &mut self.ops {
            if let OpState::Live(ticket) = &mut op.state {
                if let Some(result) = now_or_never(ticket) {
                    op.state = OpState::Resolved(resolution(result, &cfg));
                }
            }
        }
        for before in flushed {
            for id in before {
                ensure!(
                    matches!(
                        self.ops[id].state,
                        OpState::Resolved(_) | OpState::Dropped { .. }
                    ),
                    "a flush returned before op {id}, accepted before it, resolved"
                );
            }
        }

        let s = self.batcher.stats();
        ensure!(
            s.target == s.buffered_cost + s.retrying_cost + s.in_flight_cost,
            "target {} != buffered_cost {} + retrying_cost {} + in_flight_cost {}: {s:?}",
            s.target,
            s.buffered_cost,
            s.retrying_cost,
            s.in_flight_cost
        );
        ensure!(
            s.in_flight_batches <= cfg.max_in_flight as u64,
            "{} batches in flight (max_in_flight {}): {s:?}",
            s.in_flight_batches,
            cfg.max_in_flight
        );
        ensure!(
            s.cancelled >= self.surely_cancelled,
            "{} tickets of buffered operations were dropped, but only {} operations were \
             cancelled: {s:?}",
            self.surely_cancelled,
            s.cancelled
        );
        let accepted = lock(&self.world.accepted).len() as u64;
        ensure!(
            s.submitted <= accepted,
            "the engine counts {} submitted, but only {accepted} submits returned Ok",
            s.submitted
        );
        self.held()?;
        let spent = self.batcher.capacity().spent();
        let elapsed = Instant::now() - self.world.t0;
        if let Some((rate, _)) = cfg.capacity {
            ensure!(
                u128::from(spent) * 1_000_000_000 <= u128::from(rate) * elapsed.as_nanos(),
                "the capacity granted {spent} by {elapsed:?}, more than {rate}/s allows"
            );
        }
        let dispatched: u64 = lock(&self.world.ledger).iter().map(|d| d.cost).sum();
        ensure!(
            dispatched <= spent,
            "handlers received {dispatched} cost but the capacity granted only {spent}"
        );
        let violations = lock(&self.world.violations);
        ensure!(violations.is_empty(), "handler saw: {violations:#?}");
        Ok(())
    }

    /// A flush dispatches everything regardless of linger, minimum size and
    /// pause, so it returns within any generous bound of virtual time.
    /// The flushes of the script return on their own, paused or not, without
    /// the help of a later flush, a resume or a shutdown.
    async fn script_flushes_return(&mut self) -> Result<(), String> {
        let limit = Duration::from_secs(60);
        let waited = tokio::time::timeout(limit, async {
            for flush in &mut self.flushes {
                let _ = flush.await;
            }
        })
        .await;
        ensure!(
            waited.is_ok(),
            "a flush of the script did not return within {limit:?} (virtual); stats {:?}",
            self.batcher.stats()
        );
        settle().await;
        self.observe()
    }

    async fn flush_in_bounded_time(&mut self) -> Result<(), String> {
        let limit = Duration::from_secs(60);
        let before = lock(&self.world.accepted).clone();
        let flushed = tokio::time::timeout(limit, self.batcher.flush()).await;
        ensure!(
            flushed.is_ok(),
            "a flush did not return within {limit:?} (virtual); stats {:?}",
            self.batcher.stats()
        );
        lock(&self.world.flushes_done).push(before);
        settle().await;
        self.observe()
    }

    /// Nothing waits forever: once resumed, and with no new work, everything
    /// buffered is dispatched and resolved by linger, ticker, backoff and
    /// capacity alone, without a flush or shutdown to push it.
    async fn drain_on_its_own(&mut self) -> Result<(), String> {
        self.batcher.resume();
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            settle().await;
            self.observe()?;
        }
        let s = self.batcher.stats();
        ensure!(
            s.pending() == 0,
            "60 s (virtual) after a resume, with nothing new submitted, operations are still \
             held: {s:?}"
        );
        for (i, flush) in self.flushes.iter().enumerate() {
            ensure!(
                flush.is_finished(),
                "flush {i} has not returned 60 s after a resume, with everything resolved"
            );
        }
        for (id, op) in self.ops.iter().enumerate() {
            match op.state {
                OpState::Live(_) => return Err(format!("op {id} is still unresolved after 60 s")),
                OpState::Pending(_) => {
                    return Err(format!("the submit of op {id} still waits after 60 s"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn shut_down(&mut self) -> Result<ShutdownReport<Payload, Key>, String> {
        self.shutting_down = true;
        let deadline = self.case.deadline_ms.map(Duration::from_millis);
        let limit = Duration::from_secs(3600);
        let start = Instant::now();
        let report = tokio::time::timeout(limit, self.batcher.shutdown(deadline)).await;
        let Ok(report) = report else {
            return Err(format!(
                "shutdown({deadline:?}) did not return within {limit:?} (virtual); stats {:?}",
                self.batcher.stats()
            ));
        };
        let took = start.elapsed();
        if let Some(deadline) = deadline {
            ensure!(
                took <= deadline,
                "shutdown({deadline:?}) returned only after {took:?}"
            );
        }
        for _ in 0..4 {
            settle().await;
        }
        self.observe()?;
        Ok(report)
    }

    /// After the shutdown: every ticket resolved as the ledger says it must,
    /// every count adds up, and nothing is held.
    fn check_model(&mut self, report: &ShutdownReport<Payload, Key>) -> Result<(), String> {
        let cfg = self.case.config.clone();
        let deadline = self.case.deadline_ms.is_some();

        for (id, op) in self.ops.iter_mut().enumerate() {
            match &mut op.state {
                OpState::Pending(_) => {
                    return Err(format!("the submit of op {id} still waits after shutdown"))
                }
                OpState::Live(_) => {
                    return Err(format!(
                        "the ticket of op {id} is unresolved after shutdown"
                    ))
                }
                OpState::Aborted(handle) => {
                    ensure!(
                        handle.is_finished(),
                        "the aborted submit of op {id} never finished"
                    );
                    match now_or_never(handle) {
                        Some(Err(e)) if e.is_cancelled() => {}
                        other => {
                            return Err(format!(
                                    "the aborted submit of op {id} was not cancelled: {:?}",
                                    other
                                        .map(|r| r
                                            .map(|r| r.map(|_| ()).map_err(|e| format!("{e:?}"))))
                                ))
                        }
                    }
                }
                _ => {}
            }
        }
        for (i, flush) in self.flushes.iter().enumerate() {
            ensure!(
                flush.is_finished(),
                "flush {i} never returned, even after shutdown"
            );
        }

        let accepted = lock(&self.world.accepted).clone();
        let accepted_set: HashSet<usize> = accepted.iter().copied().collect();
        ensure!(
            accepted_set.len() == accepted.len(),
            "an operation was accepted twice: {accepted:?}"
        );
        for (id, op) in self.ops.iter().enumerate() {
            let is_accepted = matches!(
                op.state,
                OpState::Resolved(_) | OpState::Dropped { .. } | OpState::Live(_)
            );
            ensure!(
                is_accepted == accepted_set.contains(&id),
                "op {id}: accepted {} but its submit says {is_accepted}",
                accepted_set.contains(&id)
            );
        }

        // Replay the ledger.
        let ledger = lock(&self.world.ledger).clone();
        let mut seen: BTreeMap<usize, Vec<(usize, usize)>> = BTreeMap::new();
        for (d, dispatch) in ledger.iter().enumerate() {
            for (pos, s) in dispatch.ops.iter().enumerate() {
                seen.entry(s.op).or_default().push((d, pos));
            }
        }
        if let Some((rate, _)) = cfg.capacity {
            let mut total = 0u64;
            for d in &ledger {
                total += d.cost;
                ensure!(
                    u128::from(total) * 1_000_000_000 <= u128::from(rate) * d.at.as_nanos(),
                    "{total} cost dispatched by {:?}, more than {rate}/s allows",
                    d.at
                );
            }
        }
        let mut owner_of_id: HashMap<u64, usize> = HashMap::new();
        let mut completed = 0u64;
        let mut may_be_cancelled = 0u64;
        for (id, op) in self.ops.iter().enumerate() {
            let apps = seen.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            ensure!(
                apps.is_empty() || accepted_set.contains(&id),
                "op {id} reached the handler but was never accepted ({} dispatches)",
                apps.len()
            );
            if !accepted_set.contains(&id) {
                continue;
            }
            for (k, &(d, pos)) in apps.iter().enumerate() {
                let s = &ledger[d].ops[pos];
                ensure!(
                    ledger[d].key == op.key,
                    "op {id} of key {:?} was in dispatch {d} of key {:?}",
                    op.key,
                    ledger[d].key
                );
                ensure!(
                    s.attempt as usize == k + 1,
                    "op {id} was dispatched as attempt {} on its dispatch number {} \
                     (dispatch {d}: {:?})",
                    s.attempt,
                    k + 1,
                    ledger[d]
                );
                let owner = *owner_of_id.entry(s.id).or_insert(id);
                ensure!(
                    owner == id,
                    "op id {} was given to ops {owner} and {id}",
                    s.id
                );
                let fates = possible(&cfg, &ledger[d], pos, deadline)?;
                if k + 1 < apps.len() {
                    ensure!(
                        fates.contains(&Fate::Retry),
                        "op {id} was dispatched again after dispatch {d} ({:?}), whose \
                         outcome for it was {fates:?}",
                        ledger[d]
                    );
                }
            }
            let last = apps
                .last()
                .map(|&(d, pos)| possible(&cfg, &ledger[d], pos, deadline))
                .transpose()?;
            if let Some([Fate::Resolve(Resolution::Done(_))]) = last.as_deref() {
                completed += 1;
            }
            let unresolved_by_handler = match &last {
                None => true,
                Some(fates) => fates.contains(&Fate::Retry),
            };
            match &op.state {
                OpState::Resolved(got) => {
                    let ok = match &last {
                        // Never reached a handler: only a deadline explains it.
                        None => deadline && *got == Resolution::Abandoned,
                        Some(fates) => {
                            fates.contains(&Fate::Resolve(got.clone()))
                                // Retried, then abandoned at the deadline
                                // before it was dispatched again.
                                || (deadline
                                    && *got == Resolution::Abandoned
                                    && fates.contains(&Fate::Retry))
                        }
                    };
                    ensure!(
                        ok,
                        "op {id} resolved with {got:?}, but its dispatches allow only {last:?} \
                         (deadline: {deadline}); dispatches: {:#?}",
                        apps.iter().map(|&(d, _)| &ledger[d]).collect::<Vec<_>>()
                    );
                }
                OpState::Dropped { seq, settled } => {
                    if unresolved_by_handler {
                        may_be_cancelled += 1;
                    }
                    // Once the ticket is gone, the operation may finish the
                    // attempt it was dispatched for, but never starts another.
                    // When every batch dispatched by then had reached its
                    // handler, the ledger already shows that attempt.
                    let before = apps
                        .iter()
                        .filter(|&&(d, _)| ledger[d].seq < *seq)
                        .map(|&(d, pos)| ledger[d].ops[pos].attempt)
                        .max()
                        .unwrap_or(0);
                    let allowed = if *settled { before } else { before + 1 };
                    for &(d, pos) in apps.iter().filter(|&&(d, _)| ledger[d].seq > *seq) {
                        let attempt = ledger[d].ops[pos].attempt;
                        ensure!(
                            attempt <= allowed,
                            "op {id} reached the handler for attempt {attempt} after its ticket \
                             was dropped, when {before} attempt(s) had reached it (all batches \
                             dispatched by then had started: {settled})"
                        );
                    }
                }
                _ => {}
            }
        }
        let mut ids: Vec<u64> = owner_of_id.keys().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ensure!(ids.len() == owner_of_id.len(), "duplicate op ids");

        // The shutdown report returns exactly the abandoned payloads.
        let mut abandoned = HashSet::new();
        for a in &report.abandoned {
            let id = a.payload.op;
            ensure!(
                abandoned.insert(id),
                "op {id} is abandoned twice in the report"
            );
            let op = &self.ops[id];
            ensure!(
                a.key == op.key && a.cost == op.cost,
                "op {id} is in the report with key {:?} cost {} instead of {:?} {}",
                a.key,
                a.cost,
                op.key,
                op.cost
            );
            if let Some(&owner) = owner_of_id.get(&a.id.get()) {
                ensure!(
                    owner == id,
                    "the report pairs op {id} with the id of op {owner}"
                );
            }
            ensure!(
                matches!(
                    op.state,
                    OpState::Resolved(Resolution::Abandoned) | OpState::Dropped { .. }
                ),
                "op {id} is in the report as abandoned but resolved otherwise"
            );
        }
        for (id, op) in self.ops.iter().enumerate() {
            if let OpState::Resolved(Resolution::Abandoned) = op.state {
                ensure!(
                    abandoned.contains(&id),
                    "op {id} resolved as Abandoned but its payload is not in the report"
                );
            }
        }

        let s = self.batcher.stats();
        ensure!(
            s.target == 0
                && s.buffered == 0
                && s.buffered_cost == 0
                && s.in_flight == 0
                && s.in_flight_cost == 0
                && s.in_flight_batches == 0
                && s.retrying == 0
                && s.retrying_cost == 0,
            "the batcher still holds something after shutdown: {s:?}"
        );
        ensure!(s.shutting_down, "stats do not say shutting down: {s:?}");
        ensure!(
            s.submitted == accepted.len() as u64,
            "{} operations accepted but the engine counts {} submitted",
            accepted.len(),
            s.submitted
        );
        ensure!(
            s.submitted == s.completed + s.failed + s.cancelled,
            "submitted {} != completed {} + failed {} + cancelled {}: {s:?}",
            s.submitted,
            s.completed,
            s.failed,
            s.cancelled
        );
        ensure!(
            s.completed == completed,
            "the engine counts {} completed, the ledger says {completed}: {s:?}",
            s.completed
        );
        if deadline {
            ensure!(
                s.cancelled <= may_be_cancelled,
                "{} cancelled, but at most {may_be_cancelled} dropped tickets were left \
                 unresolved by the handler",
                s.cancelled
            );
        } else {
            ensure!(
                s.cancelled == may_be_cancelled,
                "{} cancelled, but {may_be_cancelled} dropped tickets were left unresolved by \
                 the handler",
                s.cancelled
            );
        }
        ensure!(
            self.batcher.capacity().target() == 0,
            "the capacity still counts a target of {}",
            self.batcher.capacity().target()
        );
        ensure!(
            lock(&self.world.running).values().all(|&n| n == 0),
            "handlers still running after shutdown: {:?}",
            lock(&self.world.running)
        );
        match self.batcher.try_submit(Operation::new(Payload {
            op: usize::MAX,
            key: None,
            cost: 1,
            script: Script {
                steps: [Step::Ok; 3],
                work_ms: 0,
            },
        })) {
            Err(SubmitError::Shutdown(_)) => {}
            other => {
                return Err(format!(
                    "a submit after shutdown was not refused with Shutdown: {:?}",
                    other.map(|_| ())
                ))
            }
        }
        Ok(())
    }
}

fn quiet_scripted_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if message != Some(SCRIPTED_PANIC) {
                previous(info);
            }
        }));
    });
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    quiet_scripted_panics();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async { Run::new(case).run().await })
        .map_err(TestCaseError::fail)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // Failures are minimised and turned into named regression tests by
        // hand, rather than written to a file next to this one.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Every ticket that was not dropped resolves exactly once, with what the
    /// handler's answers for the batches it was really in say; every
    /// accepted operation is resolved or cancelled, never lost; batches never
    /// mix keys or exceed their size, cost, in-flight and capacity limits;
    /// the target always adds up; and a shutdown leaves nothing held.
    #[test]
    fn every_ticket_resolves_exactly_once_and_nothing_is_lost(
        case in case_strategy(prop_oneof![
            Just(Finale::Nothing),
            Just(Finale::Flush),
            Just(Finale::Drain),
        ])
    ) {
        run_case(&case)?;
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// `flush` dispatches what it waits for regardless of pause, so it
    /// returns on its own, without a resume, a later flush or a shutdown.
    /// (Plus everything the first property checks.)
    #[test]
    fn a_flush_returns_on_its_own_even_while_paused(
        case in case_strategy(Just(Finale::ScriptFlushes))
    ) {
        run_case(&case)?;
    }
}

/// The minimal case the property above once shrank to. A flush marks the
/// operations buffered at the call (`drain`) for dispatch regardless of pause.
/// Sweeping a cancelled operation accepted *after* the flush must not lower
/// that mark, or a flushed operation loses it and waits for a resume that may
/// never come.
#[tokio::test(start_paused = true)]
async fn a_paused_flush_returns_even_after_a_later_ticket_is_dropped() {
    let batcher = Batcher::builder()
        .max_batch_size(1)
        .max_in_flight(1)
        .build(handler_fn(|batch: Batch<u32>| async move {
            tokio::time::sleep(ms(5)).await;
            Ok::<_, String>(batch.done_all(()))
        }))
        .unwrap();
    batcher.pause();
    let first = batcher.try_submit(1).unwrap();
    let second = batcher.try_submit(2).unwrap();
    // The flush marks both for dispatch; with one batch in flight at a time,
    // the second waits for the first.
    let flusher = batcher.clone();
    let flush = tokio::spawn(async move { flusher.flush().await });
    settle().await;
    // Accepted after the flush, then cancelled while the first is in flight.
    let later = batcher.try_submit(3).unwrap();
    settle().await;
    drop(later);
    let flushed = tokio::time::timeout(Duration::from_secs(10), flush).await;
    assert!(
        flushed.is_ok(),
        "the flush did not return while paused: {:?}",
        batcher.stats()
    );
    first.await.unwrap();
    second.await.unwrap();
    batcher.shutdown(None).await;
}

/// Found by the property test: a shutdown with a 1 ms deadline, while an
/// operation that asked to be retried waits out its backoff, returned after
/// 2 ms.
#[test]
fn a_shutdown_deadline_is_kept_while_a_retry_waits_out_its_backoff() {
    fn op(cost: u32, key: Option<Key>, steps: [Step; 3], work_ms: u64) -> Action {
        Action::Submit {
            cost,
            key,
            how: How::Try,
            script: Script { steps, work_ms },
        }
    }
    const OK: [Step; 3] = [Step::Ok, Step::Ok, Step::Ok];
    const RETRY: [Step; 3] = [Step::Retry, Step::Ok, Step::Ok];
    let case = Case {
        config: Config {
            max_batch_size: 5,
            max_batch_cost: None,
            min_batch_size: 1,
            linger_ms: 0,
            ticker_ms: 1,
            load_aware: true,
            max_in_flight: 1,
            max_in_flight_per_key: None,
            buffer_size: 5,
            max_attempts: 2,
            backoff_ms: 1,
            max_operation_ms: 20,
            retry_timeouts: false,
            inline: false,
            capacity: Some((278, 8)),
        },
        actions: vec![
            op(0, None, OK, 0),
            Action::Advance(23),
            op(4, None, OK, 0),
            op(3, None, OK, 0),
            op(3, None, OK, 0),
            Action::Advance(21),
            op(1, None, RETRY, 0),
            op(4, Some(0), OK, 0),
            op(3, None, OK, 0),
            op(0, None, RETRY, 2),
            op(4, None, OK, 0),
            Action::Resume,
            Action::Advance(23),
            Action::Advance(13),
            op(0, None, OK, 0),
            Action::Advance(4),
        ],
        finale: Finale::Nothing,
        deadline_ms: Some(1),
    };
    run_case(&case).unwrap();
}
