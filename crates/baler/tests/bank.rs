//! The processor on a real database: 100 accounts in a SQLite file, 10,000
//! concurrent deposits and withdrawals. The final balances are exact, every
//! caller's answer is consistent with them, and the database is written once
//! per window, not once per operation.

mod sqlite_bank;

use std::collections::BTreeMap;
use std::time::Duration;

use baler::processor::{Processor, Store};
use sqlite_bank::{remove_db, temp_db, Account, Bank, BankError, Insufficient, Move, Rng};

const ACCOUNTS: u32 = 100;
const OPERATIONS: u32 = 10_000;
const INITIAL: i64 = 100;
const WINDOW: Duration = Duration::from_millis(100);
/// Operation i starts at i × STEP: 10,000 operations over 970 ms.
const STEP: Duration = Duration::from_micros(97);

/// The windows of length `window` a processor forms: per account, a window
/// opens at its first operation not yet in a window and takes every
/// operation that starts before it closes.
fn expected_windows(starts: &BTreeMap<u32, Vec<Duration>>, window: Duration) -> u64 {
    let mut windows = 0;
    for times in starts.values() {
        let mut close = None;
        for &t in times {
            if close.is_none_or(|c| t >= c) {
                windows += 1;
                close = Some(t + window);
            }
        }
    }
    windows
}

/// The bank, with extra (virtual) time spent in each load and save: a slow
/// database, on which batches of one account would overlap if they could.
#[derive(Clone)]
struct Slow {
    bank: Bank,
    load: Duration,
    save: Duration,
}

impl Store<u32> for Slow {
    type Resource = Account;
    type Error = BankError;

    async fn load(&self, id: &u32) -> Result<Account, BankError> {
        tokio::time::sleep(self.load).await;
        self.bank.load(id).await
    }

    async fn save(&self, id: &u32, account: Account) -> Result<(), BankError> {
        tokio::time::sleep(self.save).await;
        self.bank.save(id, account).await
    }
}

struct Run {
    saves: u64,
    /// The number of windows a tick longer and a tick shorter than `WINDOW`.
    windows: (u64, u64),
}

/// Runs 10,000 concurrent moves on 100 accounts and checks every balance
/// and every answer against a replay of the answers.
async fn ten_thousand_moves(name: &str, load: Duration, save: Duration) -> Run {
    let path = temp_db(name);
    let bank = Bank::create(&path, ACCOUNTS, INITIAL).unwrap();
    let processor = Processor::builder()
        .linger(WINDOW)
        .max_store_time(Duration::from_secs(1))
        // Places for every account, and more: no window waits for one.
        .max_in_flight(4 * ACCOUNTS as usize)
        .build(Slow {
            bank: bank.clone(),
            load,
            save,
        })
        .unwrap();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tasks = Vec::new();
    let mut starts: BTreeMap<u32, Vec<Duration>> = BTreeMap::new();
    for i in 0..OPERATIONS {
        let account = rng.below(u64::from(ACCOUNTS)) as u32;
        let amount = 1 + rng.below(60) as i64;
        let mv = if rng.below(2) == 0 {
            Move::Deposit(amount)
        } else {
            Move::Withdraw(amount)
        };
        let at = STEP * i;
        starts.entry(account).or_default().push(at);
        let processor = processor.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(at).await;
            let result = processor
                .run(account, move |acct: &mut Account| mv.apply(acct))
                .await;
            (i, account, mv, result)
        }));
    }

    // Replay every answer: what each account must hold, and the balance its
    // last operation saw.
    let mut expected = vec![INITIAL; ACCOUNTS as usize];
    let mut last_seen: BTreeMap<u32, i64> = BTreeMap::new();
    let mut refused = 0;
    for task in tasks {
        let (i, account, mv, result) = task.await.unwrap();
        let answer = result.unwrap_or_else(|e| panic!("operation {i} failed: {e}"));
        let balance = match (mv, answer) {
            (Move::Deposit(n), Ok(balance)) => {
                expected[account as usize] += n;
                balance
            }
            (Move::Withdraw(n), Ok(balance)) => {
                expected[account as usize] -= n;
                balance
            }
            (Move::Withdraw(n), Err(Insufficient { balance })) => {
                assert!(n > balance);
                refused += 1;
                balance
            }
            (Move::Deposit(_), Err(e)) => panic!("a deposit was refused: {e:?}"),
        };
        assert!(balance >= 0);
        last_seen.insert(account, balance);
    }

    let balances = bank.balances();
    assert_eq!(balances, expected, "every balance is exact");
    for (account, balance) in &last_seen {
        assert_eq!(
            balances[*account as usize], *balance,
            "the last operation of account {account} saw the final balance"
        );
    }
    assert!(refused > 0, "some withdrawals met an empty account");

    let saves = bank.saves() as u64;
    let stats = processor.stats();
    assert_eq!((stats.saves, stats.batches), (saves, saves));
    assert_eq!(stats.applied, u64::from(OPERATIONS));
    assert!(
        saves * 8 < u64::from(OPERATIONS),
        "{saves} saves for {OPERATIONS} operations"
    );
    processor.shutdown(None).await;
    drop((processor, bank));
    remove_db(&path);

    // tokio's timers tick in whole milliseconds, so a window may end up to a
    // tick early or late.
    let tick = Duration::from_millis(1);
    Run {
        saves,
        windows: (
            expected_windows(&starts, WINDOW + tick),
            expected_windows(&starts, WINDOW - tick),
        ),
    }
}

// SQLite runs on spawn_blocking, which holds the paused clock still while it
// works: the windows are exact in virtual time, and the database is real.
#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_moves_on_a_hundred_accounts_leave_exact_balances() {
    let run = ten_thousand_moves("bank-fast", Duration::ZERO, Duration::ZERO).await;
    // One save per window, not per operation.
    let (fewest, most) = run.windows;
    assert!(
        (fewest..=most).contains(&run.saves),
        "{} saves, expected {fewest} to {most} windows",
        run.saves
    );
}

#[tokio::test(start_paused = true)]
async fn on_a_slow_database_batches_of_an_account_wait_for_each_other() {
    // Load and save take 200 ms together, longer than a window: the next
    // window of an account closes while its previous batch still saves, and
    // must wait for that save, or it would load a stale balance.
    let run = ten_thousand_moves(
        "bank-slow",
        Duration::from_millis(30),
        Duration::from_millis(170),
    )
    .await;
    // Waiting only ever merges windows.
    assert!(run.saves <= run.windows.1);
}
