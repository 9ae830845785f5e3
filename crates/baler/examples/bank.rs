//! A bank on SQLite, with baler's `Processor`: 100 accounts, 10,000
//! concurrent deposits and withdrawals, and one database write per account
//! per window instead of one per operation.
//!
//! ```sh
//! cargo run --release -p baler --example bank
//! ```
//!
//! Each operation is a closure that gets the loaded account by `&mut` and
//! returns the new balance (or refuses a withdrawal larger than the balance).
//! The processor gathers an account's operations for 100 ms, loads the
//! account once, applies them in arrival order, saves once, and then answers
//! every caller. At the end the program checks every balance against a replay
//! of the answers and reads the number of saves from the database itself.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baler::processor::{Processor, Store};
use rusqlite::{params, Connection};

const ACCOUNTS: u32 = 100;
const OPERATIONS: u32 = 10_000;
const INITIAL: i64 = 100;

/// An account, as loaded from the database.
#[derive(Debug, Clone, Copy)]
struct Account {
    balance: i64,
}

/// A withdrawal larger than the balance; the account is left unchanged.
#[derive(Debug)]
struct Insufficient;

/// The bank's store: one SQLite connection, used from blocking threads.
#[derive(Clone)]
struct Bank {
    conn: Arc<Mutex<Connection>>,
}

#[derive(Debug)]
struct BankError(String);

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the bank's database failed: {}", self.0)
    }
}

impl std::error::Error for BankError {}

impl Bank {
    fn create(path: &Path) -> Result<Bank, rusqlite::Error> {
        let _ = std::fs::remove_file(path);
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE accounts (
                 id      INTEGER PRIMARY KEY,
                 balance INTEGER NOT NULL CHECK (balance >= 0),
                 version INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        for id in 0..ACCOUNTS {
            conn.execute(
                "INSERT INTO accounts (id, balance) VALUES (?1, ?2)",
                params![id, INITIAL],
            )?;
        }
        Ok(Bank {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BankError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| BankError(e.to_string()))?
        .map_err(|e| BankError(e.to_string()))
    }
}

impl Store<u32> for Bank {
    type Resource = Account;
    type Error = BankError;

    async fn load(&self, id: &u32) -> Result<Account, BankError> {
        let id = *id;
        self.with(move |conn| {
            conn.prepare_cached("SELECT balance FROM accounts WHERE id = ?1")?
                .query_row(params![id], |row| row.get(0))
                .map(|balance| Account { balance })
        })
        .await
    }

    async fn save(&self, id: &u32, account: Account) -> Result<(), BankError> {
        let id = *id;
        self.with(move |conn| {
            conn.prepare_cached(
                "UPDATE accounts SET balance = ?2, version = version + 1 WHERE id = ?1",
            )?
            .execute(params![id, account.balance])
            .map(|_| ())
        })
        .await
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("baler-bank-{}.sqlite", std::process::id()));
    let bank = Bank::create(&path)?;
    let processor = Processor::builder()
        .linger(Duration::from_millis(100))
        .build(bank.clone())?;

    // 10,000 concurrent callers, each moving 1 to 60 on a random account.
    let started = Instant::now();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut callers = Vec::new();
    for _ in 0..OPERATIONS {
        let account = random(u64::from(ACCOUNTS)) as u32;
        let amount = 1 + random(60) as i64;
        let deposit = random(2) == 0;
        let processor = processor.clone();
        callers.push(tokio::spawn(async move {
            let answer = processor
                .run(account, move |acct: &mut Account| {
                    if deposit {
                        acct.balance += amount;
                    } else if amount > acct.balance {
                        return Err(Insufficient);
                    } else {
                        acct.balance -= amount;
                    }
                    Ok(acct.balance)
                })
                .await;
            (account, if deposit { amount } else { -amount }, answer)
        }));
    }

    // Replay the answers: what each account must hold.
    let mut expected = vec![INITIAL; ACCOUNTS as usize];
    let mut refused = 0;
    for caller in callers {
        let (account, change, answer) = caller.await?;
        match answer? {
            Ok(_) => expected[account as usize] += change,
            Err(Insufficient) => refused += 1,
        }
    }
    let elapsed = started.elapsed();
    processor.shutdown(None).await;

    let (balances, saves) = bank
        .with(|conn| {
            let balances = conn
                .prepare("SELECT balance FROM accounts ORDER BY id")?
                .query_map([], |row| row.get::<_, i64>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let saves: i64 =
                conn.query_row("SELECT SUM(version) FROM accounts", [], |r| r.get(0))?;
            Ok((balances, saves))
        })
        .await?;
    let stats = processor.stats();
    println!("operations  {OPERATIONS} on {ACCOUNTS} accounts ({refused} withdrawals refused)");
    println!(
        "saves       {saves} (the database's own count; {:.1} operations per save)",
        f64::from(OPERATIONS) / saves as f64
    );
    println!(
        "batches     {} (mean load {:?}, mean save {:?})",
        stats.batches,
        stats.load_time / stats.loads.max(1) as u32,
        stats.save_time / stats.saves.max(1) as u32,
    );
    println!("elapsed     {elapsed:.2?}");
    drop((processor, bank));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    if balances == expected {
        println!("OK: every balance is exact");
        Ok(())
    } else {
        Err("a balance differs from the replay of the answers".into())
    }
}
