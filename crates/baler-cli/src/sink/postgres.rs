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
}

#[derive(Debug)]
struct Conn {
    client: Client,
    insert: Statement,
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

    /// Writes `rows` in one transaction.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`], transient when the connection was lost or the
    /// server asked to retry (serialization failure, deadlock).
    pub async fn write(&self, rows: Vec<Record>) -> Result<(), SinkError> {
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
            let tx = conn.client.transaction().await?;
            tx.execute(&conn.insert, &[&seqs, &bodies]).await?;
            tx.commit().await
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
        Ok(Conn { client, insert })
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
