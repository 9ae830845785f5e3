//! The PostgreSQL sink: a small pool of connections, one per batch in flight.
//!
//! A batch is one `INSERT … SELECT * FROM unnest($1::bigint[], $2::text[])`
//! inside a transaction: a multi-row insert whose size is not bounded by the
//! protocol's 65,535 parameters. A connection that was lost is opened again
//! the next time it is taken from the pool.

use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use super::{error_chain, PostgresSpec, SinkError};
use crate::input::Record;

/// An open PostgreSQL database with its table.
#[derive(Debug, Clone)]
pub struct PostgresSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    spec: PostgresSpec,
    table: String,
    what: String,
    /// One permit per connection, so that a taker always finds one.
    permits: Semaphore,
    idle: Mutex<Vec<Conn>>,
    /// The input's id in `baler_progress`, once [`PostgresSink::track`]ed.
    source: std::sync::OnceLock<i64>,
}

#[derive(Debug)]
struct Conn {
    client: Client,
    insert: Statement,
    /// The insert-or-ignore and the progress update of a tracked input,
    /// prepared on first use.
    tracked: Option<(Statement, Statement)>,
}

impl PostgresSink {
    /// Connects, creates the table if it is missing, and opens `connections`
    /// connections, each with the insert prepared.
    ///
    /// # Errors
    ///
    /// [`SinkError::Connect`] when the server cannot be reached,
    /// [`SinkError::Tls`] when TLS fails,
    /// [`SinkError::TooFewConnections`] when it refuses one of the
    /// `connections` after accepting the first, or [`SinkError::Table`].
    pub async fn open(
        spec: &PostgresSpec,
        table: &str,
        connections: usize,
    ) -> Result<Self, SinkError> {
        let what = super::SinkSpec::Postgres(Box::new(spec.clone())).describe();
        let connections = connections.max(1);
        let first = connect(spec, &what).await?;
        first
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{table}\" (seq BIGINT NOT NULL, body TEXT NOT NULL)"
            ))
            .await
            .map_err(|e| SinkError::Table {
                table: table.to_owned(),
                what: what.clone(),
                reason: error_chain(&e),
            })?;
        let inner = Inner {
            spec: spec.clone(),
            table: table.to_owned(),
            what,
            // Not `connections` as given: tokio's semaphore panics above
            // MAX_PERMITS, and reserving room for an absurd --max-in-flight
            // would abort; the server refuses connections long before either.
            permits: Semaphore::new(connections.min(Semaphore::MAX_PERMITS)),
            idle: Mutex::new(Vec::new()),
            source: std::sync::OnceLock::new(),
        };
        let mut idle = vec![inner.prepare(first).await?];
        while idle.len() < connections {
            let client = match connect(spec, &inner.what).await {
                Ok(client) => client,
                Err(SinkError::Connect { reason, .. }) => {
                    return Err(SinkError::TooFewConnections {
                        what: inner.what.clone(),
                        opened: idle.len(),
                        wanted: connections,
                        reason,
                    })
                }
                Err(e) => return Err(e),
            };
            idle.push(inner.prepare(client).await?);
        }
        *inner.idle.lock().unwrap_or_else(|p| p.into_inner()) = idle;
        Ok(PostgresSink {
            inner: Arc::new(inner),
        })
    }

    /// Makes every later write idempotent and resumable for the input
    /// `input` (see [`super::Progress`]).
    ///
    /// # Errors
    ///
    /// [`SinkError::Connect`] or [`SinkError::Table`].
    pub async fn track(&self, input: &str) -> Result<super::Progress, SinkError> {
        let client = self.prepare_sources_on().await?;
        let inner = &self.inner;
        let table = &inner.table;
        let table_err = |e: tokio_postgres::Error| SinkError::Table {
            table: table.clone(),
            what: inner.what.clone(),
            reason: error_chain(&e),
        };
        client
            .execute(
                "INSERT INTO baler_progress (input, tbl, watermark) VALUES ($1, $2, 0) \
                 ON CONFLICT DO NOTHING",
                &[&input, table],
            )
            .await
            .map_err(table_err)?;
        let row = client
            .query_one(
                "SELECT id, watermark FROM baler_progress WHERE input = $1 AND tbl = $2",
                &[&input, table],
            )
            .await
            .map_err(table_err)?;
        let (id, watermark): (i64, i64) = (row.get(0), row.get(1));
        let id = *inner.source.get_or_init(|| id);
        Ok(super::Progress {
            source: id,
            watermark: u64::try_from(watermark).unwrap_or(0),
        })
    }

    /// Raises the tracked input's watermark to `watermark`, without rows.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`].
    pub async fn save_progress(&self, watermark: u64) -> Result<(), SinkError> {
        let inner = &self.inner;
        let Some(&source) = inner.source.get() else {
            return Ok(());
        };
        let fail = |reason: String| SinkError::Write {
            rows: 0,
            reason: format!("{}: {reason}", inner.what),
            transient: false,
        };
        let client = connect(&inner.spec, &inner.what)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let watermark = i64::try_from(watermark).unwrap_or(i64::MAX);
        client
            .execute(
                "UPDATE baler_progress SET watermark = GREATEST(watermark, $2) WHERE id = $1",
                &[&source, &watermark],
            )
            .await
            .map(drop)
            .map_err(|e| fail(error_chain(&e)))
    }

    /// Gives the table its `source` column, unique with `seq`, and creates
    /// `baler_progress`, so that [`write_for`](Self::write_for) can be used.
    ///
    /// # Errors
    ///
    /// [`SinkError::Connect`] or [`SinkError::Table`].
    pub async fn prepare_sources(&self) -> Result<(), SinkError> {
        self.prepare_sources_on().await.map(drop)
    }

    async fn prepare_sources_on(&self) -> Result<Client, SinkError> {
        let inner = &self.inner;
        let table = &inner.table;
        let client = connect(&inner.spec, &inner.what).await?;
        let table_err = |e: tokio_postgres::Error| SinkError::Table {
            table: table.clone(),
            what: inner.what.clone(),
            reason: error_chain(&e),
        };
        client
            .batch_execute(&format!(
                "ALTER TABLE \"{table}\" ADD COLUMN IF NOT EXISTS source BIGINT;
                 CREATE UNIQUE INDEX IF NOT EXISTS \"{}\" ON \"{table}\" (source, seq) \
                 WHERE source IS NOT NULL;
                 CREATE TABLE IF NOT EXISTS baler_progress (id BIGSERIAL PRIMARY KEY, input \
                 TEXT NOT NULL, tbl TEXT NOT NULL, watermark BIGINT NOT NULL, UNIQUE (input, tbl));",
                super::unique_index_name(table)
            ))
            .await
            .map_err(table_err)?;
        Ok(client)
    }

    /// Writes `rows` of the input `source` in one transaction, passing over
    /// those already in the table; returns how many were inserted. Needs
    /// [`prepare_sources`](Self::prepare_sources).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub async fn write_for(&self, source: i64, rows: Vec<Record>) -> Result<u64, SinkError> {
        self.write_tracked(rows, Some(source), None).await
    }

    /// Writes `rows` in one transaction and returns how many were inserted
    /// (for a tracked input, rows written by an earlier run are not).
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`], transient when the connection was lost or the
    /// server asked to retry (serialization failure, deadlock).
    pub async fn write(&self, rows: Vec<Record>, watermark: Option<u64>) -> Result<u64, SinkError> {
        let source = self.inner.source.get().copied();
        self.write_tracked(rows, source, watermark).await
    }

    async fn write_tracked(
        &self,
        rows: Vec<Record>,
        source: Option<i64>,
        watermark: Option<u64>,
    ) -> Result<u64, SinkError> {
        let inner = &self.inner;
        let n = rows.len();
        let write_err = |reason: String, transient: bool| SinkError::Write {
            rows: n,
            reason: format!("{}: {reason}", inner.what),
            transient,
        };
        let _permit = inner
            .permits
            .acquire()
            .await
            .map_err(|e| write_err(e.to_string(), false))?;
        let taken = inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match taken {
            Some(conn) if !conn.client.is_closed() => conn,
            _ => {
                let client = connect(&inner.spec, &inner.what)
                    .await
                    .map_err(|e| write_err(e.to_string(), true))?;
                inner
                    .prepare(client)
                    .await
                    .map_err(|e| write_err(e.to_string(), false))?
            }
        };
        let seqs: Vec<i64> = rows
            .iter()
            .map(|r| i64::try_from(r.seq).unwrap_or(i64::MAX))
            .collect();
        let bodies: Vec<&str> = rows.iter().map(|r| &*r.body).collect();
        let result = async {
            if let (Some(_), None) = (source, &conn.tracked) {
                conn.tracked = Some(inner.prepare_tracked(&conn.client).await?);
            }
            let tx = conn.client.transaction().await?;
            let inserted = match (source, &conn.tracked) {
                (Some(source), Some((insert, progress))) => {
                    let inserted = tx.execute(insert, &[&seqs, &bodies, &source]).await?;
                    if let Some(watermark) = watermark {
                        let watermark = i64::try_from(watermark).unwrap_or(i64::MAX);
                        tx.execute(progress, &[&source, &watermark]).await?;
                    }
                    inserted
                }
                _ => tx.execute(&conn.insert, &[&seqs, &bodies]).await?,
            };
            tx.commit().await.map(|()| inserted)
        }
        .await;
        let closed = conn.client.is_closed();
        if !closed {
            inner
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
        result.map_err(|e| {
            let transient = closed
                || e.is_closed()
                || e.code().is_some_and(|c| {
                    *c == SqlState::T_R_SERIALIZATION_FAILURE
                        || *c == SqlState::T_R_DEADLOCK_DETECTED
                        || c.code().starts_with("08")
                });
            write_err(error_chain(&e), transient)
        })
    }

    /// How many rows the table holds.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] if the count fails.
    pub async fn count(&self) -> Result<u64, SinkError> {
        let inner = &self.inner;
        let fail = |reason: String| SinkError::Write {
            rows: 0,
            reason: format!("{}: {reason}", inner.what),
            transient: false,
        };
        let client = connect(&inner.spec, &inner.what)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let row = client
            .query_one(&format!("SELECT count(*) FROM \"{}\"", inner.table), &[])
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}

impl Inner {
    async fn prepare(&self, client: Client) -> Result<Conn, SinkError> {
        let insert = client
            .prepare(&format!(
                "INSERT INTO \"{}\" (seq, body) SELECT * FROM unnest($1::bigint[], $2::text[])",
                self.table
            ))
            .await
            .map_err(|e| SinkError::Table {
                table: self.table.clone(),
                what: self.what.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Conn {
            client,
            insert,
            tracked: None,
        })
    }

    async fn prepare_tracked(
        &self,
        client: &Client,
    ) -> Result<(Statement, Statement), tokio_postgres::Error> {
        let insert = client
            .prepare(&format!(
                "INSERT INTO \"{}\" (seq, body, source) SELECT s, b, $3::bigint FROM \
                 unnest($1::bigint[], $2::text[]) AS u (s, b) ON CONFLICT DO NOTHING",
                self.table
            ))
            .await?;
        let progress = client
            .prepare("UPDATE baler_progress SET watermark = GREATEST(watermark, $2) WHERE id = $1")
            .await?;
        Ok((insert, progress))
    }
}

/// Opens a connection and drives it on a task of its own.
async fn connect(spec: &PostgresSpec, what: &str) -> Result<Client, SinkError> {
    let (client, connection) = spec
        .config
        .connect(spec.tls.connector.clone())
        .await
        .map_err(|e| match super::tls::handshake_hint(&e, spec.tls.mode) {
            Some(hint) => SinkError::Tls {
                what: what.to_owned(),
                reason: error_chain(&e),
                hint,
            },
            None => SinkError::Connect {
                what: what.to_owned(),
                reason: error_chain(&e),
            },
        })?;
    tokio::spawn(async move {
        // An error here shows up as a closed client on its next use.
        let _ = connection.await;
    });
    Ok(client)
}
