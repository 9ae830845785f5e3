//! The SQLite sink: one connection, one writer at a time.
//!
//! SQLite lets one transaction write at a time, so batches written
//! concurrently queue on the connection's lock; each runs on tokio's
//! blocking pool. The file is put in WAL mode, in which a commit appends to
//! the log instead of rewriting pages, and readers (a `SELECT count(*)` while
//! a run goes on) do not block the writer.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use super::SinkError;
use crate::input::Record;

/// SQLite allows 32,766 parameters per statement; two per row.
const MAX_ROWS_PER_STATEMENT: usize = 16_000;

/// An open SQLite database with its table.
#[derive(Debug, Clone)]
pub struct SqliteSink {
    conn: Arc<Mutex<Connection>>,
    table: String,
    what: String,
    /// The input's id in `baler_progress`, once [`track`](Self::track)ed.
    source: Option<i64>,
}

impl SqliteSink {
    /// Opens (or creates) the file and the table, and checks that rows can be
    /// inserted.
    ///
    /// # Errors
    ///
    /// [`SinkError::Open`] or [`SinkError::Table`].
    pub fn open(path: &Path, table: &str) -> Result<Self, SinkError> {
        let what = format!("sqlite {}", path.display());
        let open_err = |e: rusqlite::Error| SinkError::Open {
            what: what.clone(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // Reading the journal mode is the first access to the file: a file
        // that is not a database fails here.
        conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
            row.get::<_, String>(0)
        })
        .map_err(open_err)?;
        let table_err = |e: rusqlite::Error| SinkError::Table {
            table: table.to_owned(),
            what: what.clone(),
            reason: e.to_string(),
        };
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS \"{table}\" (seq INTEGER NOT NULL, body TEXT NOT NULL)"
        ))
        .map_err(table_err)?;
        conn.prepare(&insert_sql(table, 1)).map_err(table_err)?;
        Ok(SqliteSink {
            conn: Arc::new(Mutex::new(conn)),
            table: table.to_owned(),
            what,
            source: None,
        })
    }

    /// Makes every later write idempotent and resumable for the input
    /// `input` (see [`super::Progress`]): rows carry the input's id in a
    /// `source` column, unique with `seq`, and each batch's transaction
    /// raises the input's watermark in `baler_progress`.
    ///
    /// # Errors
    ///
    /// [`SinkError::Table`] if the table or `baler_progress` cannot be set up.
    pub fn track(&mut self, input: &str) -> Result<super::Progress, SinkError> {
        self.prepare_sources()?;
        let table = &self.table;
        let table_err = |e: rusqlite::Error| SinkError::Table {
            table: table.clone(),
            what: self.what.clone(),
            reason: e.to_string(),
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT OR IGNORE INTO baler_progress (input, tbl, watermark) VALUES (?1, ?2, 0)",
            (input, table),
        )
        .map_err(table_err)?;
        let (id, watermark): (i64, i64) = conn
            .query_row(
                "SELECT id, watermark FROM baler_progress WHERE input = ?1 AND tbl = ?2",
                (input, table),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(table_err)?;
        drop(conn);
        self.source = Some(id);
        Ok(super::Progress {
            source: id,
            watermark: u64::try_from(watermark).unwrap_or(0),
        })
    }

    /// Raises the tracked input's watermark to `watermark`, without rows:
    /// for the end of a run, when the last batches committed watermarks
    /// held back by each other.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`].
    pub fn save_progress(&self, watermark: u64) -> Result<(), SinkError> {
        let Some(source) = self.source else {
            return Ok(());
        };
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "UPDATE baler_progress SET watermark = max(watermark, ?2) WHERE id = ?1",
            (source, i64::try_from(watermark).unwrap_or(i64::MAX)),
        )
        .map(drop)
        .map_err(|e| SinkError::Write {
            rows: 0,
            reason: format!("{}: {e}", self.what),
            transient: false,
        })
    }

    /// Gives the table its `source` column, unique with `seq`, and creates
    /// `baler_progress`, so that [`write_for`](Self::write_for) can be used.
    ///
    /// # Errors
    ///
    /// [`SinkError::Table`].
    pub fn prepare_sources(&self) -> Result<(), SinkError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let table = &self.table;
        let table_err = |e: rusqlite::Error| SinkError::Table {
            table: table.clone(),
            what: self.what.clone(),
            reason: e.to_string(),
        };
        let has_source = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = 'source'"
            ))
            .and_then(|mut s| s.exists([]))
            .map_err(table_err)?;
        if !has_source {
            conn.execute_batch(&format!(
                "ALTER TABLE \"{table}\" ADD COLUMN source INTEGER"
            ))
            .map_err(table_err)?;
        }
        conn.execute_batch(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" (source, seq) \
             WHERE source IS NOT NULL;
             CREATE TABLE IF NOT EXISTS baler_progress (id INTEGER PRIMARY KEY, input TEXT NOT \
             NULL, tbl TEXT NOT NULL, watermark INTEGER NOT NULL, UNIQUE (input, tbl));",
            super::unique_index_name(table)
        ))
        .map_err(table_err)?;
        Ok(())
    }

    /// Writes `rows` in one transaction, on the blocking pool.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`], transient when the database was busy or locked.
    pub async fn write(&self, rows: Vec<Record>, watermark: Option<u64>) -> Result<u64, SinkError> {
        let tracked = self.source.map(|source| (source, watermark));
        self.write_tracked(rows, tracked).await
    }

    /// Writes `rows` of the input `source` in one transaction, passing over
    /// those already in the table; returns how many were inserted. Needs
    /// [`prepare_sources`](Self::prepare_sources).
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`], transient when the database was busy or locked.
    pub async fn write_for(&self, source: i64, rows: Vec<Record>) -> Result<u64, SinkError> {
        self.write_tracked(rows, Some((source, None))).await
    }

    async fn write_tracked(
        &self,
        rows: Vec<Record>,
        tracked: Option<(i64, Option<u64>)>,
    ) -> Result<u64, SinkError> {
        let this = self.clone();
        let n = rows.len();
        tokio::task::spawn_blocking(move || this.write_blocking(&rows, tracked))
            .await
            .unwrap_or_else(|e| {
                Err(SinkError::Write {
                    rows: n,
                    reason: format!("the write task failed: {e}"),
                    transient: false,
                })
            })
    }

    fn write_blocking(
        &self,
        rows: &[Record],
        tracked: Option<(i64, Option<u64>)>,
    ) -> Result<u64, SinkError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        insert(&mut conn, &self.table, rows, tracked).map_err(|e| SinkError::Write {
            rows: rows.len(),
            transient: matches!(
                e.sqlite_error_code(),
                Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
            ),
            reason: format!("{}: {e}", self.what),
        })
    }

    /// Holds the connection, so that writes wait until the guard is dropped.
    #[cfg(test)]
    pub(crate) fn hold_for_test(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap()
    }

    /// How many rows the table holds.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] if the count fails.
    pub async fn count(&self) -> Result<u64, SinkError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = this.conn.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row(
                &format!("SELECT count(*) FROM \"{}\"", this.table),
                [],
                |row| row.get::<_, i64>(0),
            )
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map(|n| n.max(0) as u64)
        .map_err(|reason| SinkError::Write {
            rows: 0,
            reason,
            transient: false,
        })
    }
}

/// `INSERT INTO "table" (seq, body) VALUES (?, ?), (?, ?), …` for `rows` rows.
fn insert_sql(table: &str, rows: usize) -> String {
    let mut sql = format!("INSERT INTO \"{table}\" (seq, body) VALUES ");
    for i in 0..rows {
        sql.push_str(if i == 0 { "(?, ?)" } else { ", (?, ?)" });
    }
    sql
}

/// The same for a tracked input: the source is the last parameter, and a
/// row already written by an earlier run is passed over.
fn insert_tracked_sql(table: &str, rows: usize) -> String {
    let mut sql = format!("INSERT OR IGNORE INTO \"{table}\" (seq, body, source) VALUES ");
    let source = 2 * rows + 1;
    for i in 0..rows {
        let _ = write!(
            sql,
            "{}(?{}, ?{}, ?{source})",
            if i == 0 { "" } else { ", " },
            2 * i + 1,
            2 * i + 2
        );
    }
    sql
}

/// One transaction of multi-row inserts; for a tracked input (its id and
/// the watermark to raise), the progress in the same transaction. Returns the
/// rows inserted: fewer than given when some were written by an earlier run.
fn insert(
    conn: &mut Connection,
    table: &str,
    rows: &[Record],
    tracked: Option<(i64, Option<u64>)>,
) -> rusqlite::Result<u64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserted = 0;
    for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
        let sql = match tracked {
            None => insert_sql(table, chunk.len()),
            Some(_) => insert_tracked_sql(table, chunk.len()),
        };
        let mut stmt = tx.prepare_cached(&sql)?;
        for (i, row) in chunk.iter().enumerate() {
            let seq = i64::try_from(row.seq).unwrap_or(i64::MAX);
            stmt.raw_bind_parameter(2 * i + 1, seq)?;
            stmt.raw_bind_parameter(2 * i + 2, &*row.body)?;
        }
        if let Some((source, _)) = tracked {
            stmt.raw_bind_parameter(2 * chunk.len() + 1, source)?;
        }
        inserted += stmt.raw_execute()? as u64;
    }
    if let Some((source, Some(watermark))) = tracked {
        tx.execute(
            "UPDATE baler_progress SET watermark = max(watermark, ?2) WHERE id = ?1",
            (source, i64::try_from(watermark).unwrap_or(i64::MAX)),
        )?;
    }
    tx.commit()?;
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(range: std::ops::Range<u64>) -> Vec<Record> {
        range
            .map(|seq| Record {
                seq,
                body: format!("{{\"n\":{seq}}}").into(),
            })
            .collect()
    }

    #[test]
    fn a_batch_larger_than_one_statement_is_written_whole_in_one_transaction() {
        let dir = std::env::temp_dir().join(format!("baler-sqlite-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.db");
        let _ = std::fs::remove_file(&path);
        let sink = SqliteSink::open(&path, "t").unwrap();
        sink.write_blocking(&rows(0..40_000), None).unwrap();
        let conn = sink.conn.lock().unwrap();
        let (n, sum): (i64, i64) = conn
            .query_row("SELECT count(*), sum(seq) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(n, 40_000);
        assert_eq!(sum, (0..40_000).sum::<i64>());
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rows_of_a_source_written_again_are_passed_over_and_not_counted() {
        let dir = std::env::temp_dir().join(format!("baler-sqlite-again-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("again.db");
        let _ = std::fs::remove_file(&path);
        let sink = SqliteSink::open(&path, "t").unwrap();
        sink.prepare_sources().unwrap();
        let write = |source, range| sink.write_blocking(&rows(range), Some((source, None)));
        assert_eq!(write(7, 0..10).unwrap(), 10);
        assert_eq!(write(7, 5..15).unwrap(), 5, "5..10 were there already");
        assert_eq!(
            write(8, 0..10).unwrap(),
            10,
            "another source's seqs are its own"
        );
        let conn = sink.conn.lock().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 25);
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_table_with_other_columns_is_refused_when_opening() {
        let dir = std::env::temp_dir().join(format!("baler-sqlite-cols-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cols.db");
        let _ = std::fs::remove_file(&path);
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE records (name TEXT)")
            .unwrap();
        let err = SqliteSink::open(&path, "records").unwrap_err();
        assert!(matches!(err, SinkError::Table { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
