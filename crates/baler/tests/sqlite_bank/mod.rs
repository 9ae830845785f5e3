//! A bank of accounts in a SQLite file, as a processor [`Store`]: the bank
//! integration test and the processor benchmark share it.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use baler::processor::Store;
use rusqlite::{params, Connection};

/// One account, as loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    pub balance: i64,
}

/// A withdrawal larger than the balance; the account is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insufficient {
    pub balance: i64,
}

/// A deposit or a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Deposit(i64),
    Withdraw(i64),
}

impl Move {
    /// Applies the move and returns the new balance.
    pub fn apply(self, account: &mut Account) -> Result<i64, Insufficient> {
        match self {
            Move::Deposit(n) => account.balance += n,
            Move::Withdraw(n) if n > account.balance => {
                return Err(Insufficient {
                    balance: account.balance,
                })
            }
            Move::Withdraw(n) => account.balance -= n,
        }
        Ok(account.balance)
    }
}

/// What the bank failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankError(pub String);

impl fmt::Display for BankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the bank's database failed: {}", self.0)
    }
}

impl std::error::Error for BankError {}

fn err(e: impl fmt::Display) -> BankError {
    BankError(e.to_string())
}

/// The bank: one connection to one SQLite file.
#[derive(Clone)]
pub struct Bank {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// A fresh file in the temporary directory, unique to this process and call.
pub fn temp_db(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "baler-{name}-{}-{}.sqlite",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Removes a database file and its WAL companions.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

impl Bank {
    /// Creates `accounts` accounts with `initial` each, in a new file at `path`.
    /// Every save increments the account's `version`, so the database itself
    /// counts the saves. Commits are not synced to disk one by one
    /// (`synchronous = NORMAL` in WAL mode).
    pub fn create(path: &Path, accounts: u32, initial: i64) -> Result<Bank, BankError> {
        Bank::create_with(path, accounts, initial, false)
    }

    /// As [`create`](Self::create); with `durable`, every commit is synced to
    /// disk (`synchronous = FULL`).
    pub fn create_with(
        path: &Path,
        accounts: u32,
        initial: i64,
        durable: bool,
    ) -> Result<Bank, BankError> {
        remove_db(path);
        let conn = Connection::open(path).map_err(err)?;
        let synchronous = if durable { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};"
        ))
        .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE accounts (
                 id      INTEGER PRIMARY KEY,
                 balance INTEGER NOT NULL CHECK (balance >= 0),
                 version INTEGER NOT NULL DEFAULT 0
             );",
        )
        .map_err(err)?;
        conn.execute_batch("BEGIN").map_err(err)?;
        {
            let mut insert = conn
                .prepare("INSERT INTO accounts (id, balance) VALUES (?1, ?2)")
                .map_err(err)?;
            for id in 0..accounts {
                insert.execute(params![id, initial]).map_err(err)?;
            }
        }
        conn.execute_batch("COMMIT").map_err(err)?;
        Ok(Bank {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads one account.
    pub fn load_now(&self, id: u32) -> Result<Account, BankError> {
        self.conn()
            .prepare_cached("SELECT balance FROM accounts WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![id], |row| row.get(0)))
            .map(|balance| Account { balance })
            .map_err(err)
    }

    /// Writes one account (one transaction).
    pub fn save_now(&self, id: u32, account: Account) -> Result<(), BankError> {
        let changed = self
            .conn()
            .prepare_cached("UPDATE accounts SET balance = ?2, version = version + 1 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id, account.balance]))
            .map_err(err)?;
        if changed == 1 {
            Ok(())
        } else {
            Err(BankError(format!("no account {id}")))
        }
    }

    /// Loads, changes and saves one account while holding the connection:
    /// the naive way, one load and one save per operation.
    pub fn update_now(&self, id: u32, change: impl FnOnce(&mut Account)) -> Result<(), BankError> {
        let conn = self.conn();
        let balance = conn
            .prepare_cached("SELECT balance FROM accounts WHERE id = ?1")
            .and_then(|mut s| s.query_row(params![id], |row| row.get(0)))
            .map_err(err)?;
        let mut account = Account { balance };
        change(&mut account);
        conn.prepare_cached(
            "UPDATE accounts SET balance = ?2, version = version + 1 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute(params![id, account.balance]))
        .map_err(err)?;
        Ok(())
    }

    /// Every balance, by account id.
    pub fn balances(&self) -> Vec<i64> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT balance FROM accounts ORDER BY id")
            .unwrap();
        let rows = stmt.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// How many saves the database received.
    pub fn saves(&self) -> i64 {
        self.conn()
            .query_row("SELECT SUM(version) FROM accounts", [], |row| row.get(0))
            .unwrap()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Store<u32> for Bank {
    type Resource = Account;
    type Error = BankError;

    async fn load(&self, id: &u32) -> Result<Account, BankError> {
        let (bank, id) = (self.clone(), *id);
        tokio::task::spawn_blocking(move || bank.load_now(id))
            .await
            .map_err(err)?
    }

    async fn save(&self, id: &u32, account: Account) -> Result<(), BankError> {
        let (bank, id) = (self.clone(), *id);
        tokio::task::spawn_blocking(move || bank.save_now(id, account))
            .await
            .map_err(err)?
    }
}

/// A small deterministic random number generator (xorshift), so that every
/// run draws the same moves.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
