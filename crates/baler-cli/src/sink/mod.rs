//! Where records go: a SQLite file (the default) or a PostgreSQL database.
//!
//! Both write a batch as multi-row inserts inside one transaction, so a batch
//! is either all in the table or not at all. Both are opened, and their table
//! created and checked, before any record is produced: a database that cannot
//! be reached is reported at once, not after the input was read.

mod postgres;
mod sqlite;
pub mod tls;

use std::fmt;
use std::path::PathBuf;

pub use postgres::PostgresSink;
pub use sqlite::SqliteSink;
pub use tls::{PostgresTls, TlsMode};

use crate::input::Record;

/// Which database `--sink` names.
#[derive(Clone)]
pub enum SinkSpec {
    /// A SQLite file, created if missing.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<PostgresSpec>),
}

/// A PostgreSQL database and how to secure the connections to it.
#[derive(Debug, Clone)]
pub struct PostgresSpec {
    /// Where, who, which database.
    pub config: tokio_postgres::Config,
    /// TLS: the URL's `sslmode` and `sslrootcert`.
    pub tls: PostgresTls,
}

impl fmt::Debug for SinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SinkSpec {
    /// Reads `--sink`: `postgres://…`, `postgresql://…` or libpq keywords
    /// (`host=… port=… user=… dbname=…`, as `psql` takes them) for
    /// PostgreSQL, `sqlite://PATH` or a plain path for SQLite. Text whose
    /// first word is `keyword=…` is read as PostgreSQL keywords, never as a
    /// file name: a mistyped keyword is refused, not made into a SQLite file.
    ///
    /// A PostgreSQL URL may say how to use TLS as libpq's do:
    /// `?sslmode=require`, or `?sslmode=verify-full&sslrootcert=ca.pem` (see
    /// [`tls`] for every mode). A root CA file is read here, so a wrong one
    /// is reported before anything is produced.
    ///
    /// ```
    /// use baler_cli::sink::SinkSpec;
    ///
    /// assert!(matches!(SinkSpec::parse("out.db"), Ok(SinkSpec::Sqlite(_))));
    /// assert!(matches!(SinkSpec::parse("postgres://me@127.0.0.1/test"), Ok(SinkSpec::Postgres(_))));
    /// let Ok(SinkSpec::Postgres(pg)) = SinkSpec::parse("postgres://me@db.internal/test?sslmode=require")
    /// else { panic!() };
    /// assert_eq!(pg.tls.mode, baler_cli::sink::TlsMode::Require);
    /// assert!(matches!(
    ///     SinkSpec::parse("host=127.0.0.1 port=5432 user=me dbname=test"),
    ///     Ok(SinkSpec::Postgres(_))
    /// ));
    /// let Ok(SinkSpec::Postgres(pg)) = SinkSpec::parse("host=127.0.0.1 dbname=test sslmode = require")
    /// else { panic!() };
    /// assert_eq!(pg.tls.mode, baler_cli::sink::TlsMode::Require);
    /// assert!(SinkSpec::parse("hots=127.0.0.1 dbname=test").is_err());
    /// assert!(matches!(SinkSpec::parse("sqlite://hots=1.db"), Ok(SinkSpec::Sqlite(_))));
    /// assert!(SinkSpec::parse("redis://127.0.0.1").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`SinkError::BadSink`] for another scheme or a URL that does not parse.
    pub fn parse(text: &str) -> Result<Self, SinkError> {
        let bad = |reason: String| SinkError::BadSink {
            given: redact(text),
            reason,
        };
        let keywords = looks_like_keywords(text);
        if keywords || text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let (rest, tls) = if keywords {
                tls::split_keywords(text)
            } else {
                tls::split_url(text)
            }
            .map_err(bad)?;
            let mut config: tokio_postgres::Config =
                rest.parse().map_err(|e: tokio_postgres::Error| {
                    if keywords {
                        // A file name with `=` in it lands here too; say how
                        // to mean the file rather than guess.
                        bad(format!(
                            "it reads as PostgreSQL keywords (host=… port=… user=… \
                             dbname=…), but {}; for a SQLite file of that name, write \
                             sqlite://{text}",
                            error_chain(&e)
                        ))
                    } else {
                        bad(error_chain(&e))
                    }
                })?;
            if config.get_connect_timeout().is_none() {
                config.connect_timeout(std::time::Duration::from_secs(5));
            }
            config.ssl_mode(tls.mode.ssl_mode());
            return Ok(SinkSpec::Postgres(Box::new(PostgresSpec { config, tls })));
        }
        if let Some(path) = text.strip_prefix("sqlite://") {
            return Ok(SinkSpec::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(bad(format!(
                "the scheme {scheme:?} is not supported; give a SQLite file path or a \
                 postgres:// URL"
            )));
        }
        if text.is_empty() {
            return Err(bad(
                "it is empty; give a SQLite file path or a postgres:// URL".into(),
            ));
        }
        Ok(SinkSpec::Sqlite(PathBuf::from(text)))
    }

    /// Gives a PostgreSQL sink without a password the one `var("PGPASSWORD")`
    /// returns, as libpq does, so that the password can stay out of the
    /// command line. A password in `--sink` wins; SQLite is left alone.
    ///
    /// ```
    /// use baler_cli::sink::SinkSpec;
    ///
    /// let env = |name: &str| (name == "PGPASSWORD").then(|| "s3cret".to_owned());
    /// let spec = SinkSpec::parse("host=127.0.0.1 user=me dbname=test")?.password_from(env);
    /// let SinkSpec::Postgres(pg) = spec else { unreachable!("keywords are postgres") };
    /// assert_eq!(pg.config.get_password(), Some(&b"s3cret"[..]));
    ///
    /// let spec = SinkSpec::parse("postgres://me:given@127.0.0.1/test")?.password_from(env);
    /// let SinkSpec::Postgres(pg) = spec else { unreachable!("a postgres URL") };
    /// assert_eq!(pg.config.get_password(), Some(&b"given"[..]));
    /// # Ok::<(), baler_cli::sink::SinkError>(())
    /// ```
    pub fn password_from(self, var: impl Fn(&str) -> Option<String>) -> Self {
        match self {
            SinkSpec::Postgres(mut spec) if spec.config.get_password().is_none() => {
                if let Some(password) = var("PGPASSWORD").filter(|p| !p.is_empty()) {
                    spec.config.password(password);
                }
                SinkSpec::Postgres(spec)
            }
            other => other,
        }
    }

    /// Says which database this is, without a password.
    pub fn describe(&self) -> String {
        match self {
            SinkSpec::Sqlite(path) => format!("sqlite {}", path.display()),
            SinkSpec::Postgres(spec) => {
                let config = &spec.config;
                let hosts: Vec<String> = config
                    .get_hosts()
                    .iter()
                    .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
                    .map(|(host, port)| match host {
                        tokio_postgres::config::Host::Tcp(h) => format!("{h}:{port}"),
                        #[cfg(unix)]
                        tokio_postgres::config::Host::Unix(p) => format!("{}", p.display()),
                    })
                    .collect();
                format!(
                    "postgres {} (database {}, user {}, sslmode {})",
                    if hosts.is_empty() {
                        "localhost:5432".to_owned()
                    } else {
                        hosts.join(",")
                    },
                    config.get_dbname().unwrap_or("(default)"),
                    config.get_user().unwrap_or("(default)"),
                    spec.tls.mode.name(),
                )
            }
        }
    }
}

/// Whether `text` starts like a libpq keyword string: `keyword=` (libpq
/// allows spaces around the `=`) with a keyword of lowercase letters and
/// underscores, as every libpq keyword is. A path (`./a=b.db`, `/tmp/x=1`)
/// does not start so.
fn looks_like_keywords(text: &str) -> bool {
    let text = text.trim_start();
    let key_end = text
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .unwrap_or(text.len());
    key_end > 0 && text[key_end..].trim_start().starts_with('=')
}

/// An open database with its table ready.
#[derive(Debug)]
pub enum Sink {
    /// SQLite.
    Sqlite(SqliteSink),
    /// PostgreSQL.
    Postgres(PostgresSink),
}

impl Sink {
    /// Opens the database, creates the table if it is missing, and checks
    /// that a batch can be inserted into it. `connections` is how many
    /// batches may be written at once (PostgreSQL opens that many
    /// connections; SQLite has one writer and queues the rest).
    ///
    /// # Errors
    ///
    /// [`SinkError::BadTable`], [`SinkError::Open`], [`SinkError::Connect`],
    /// [`SinkError::Tls`], [`SinkError::TooFewConnections`] or [`SinkError::Table`], each saying
    /// what to change.
    pub async fn open(spec: &SinkSpec, table: &str, connections: usize) -> Result<Sink, SinkError> {
        check_table_name(table)?;
        match spec {
            SinkSpec::Sqlite(path) => {
                let path = path.clone();
                let table = table.to_owned();
                tokio::task::spawn_blocking(move || SqliteSink::open(&path, &table))
                    .await
                    .map_err(|e| SinkError::Open {
                        what: spec.describe(),
                        reason: e.to_string(),
                    })?
                    .map(Sink::Sqlite)
            }
            SinkSpec::Postgres(spec) => PostgresSink::open(spec, table, connections)
                .await
                .map(Sink::Postgres),
        }
    }

    /// Makes the writes that follow idempotent and resumable for the input
    /// whose identity is `input` (see [`Progress`]), and returns where that
    /// input stands in this table.
    ///
    /// # Errors
    ///
    /// [`SinkError::Table`] (or [`SinkError::Connect`]) if the table or
    /// `baler_progress` cannot be set up.
    pub async fn track(&mut self, input: &str) -> Result<Progress, SinkError> {
        match self {
            // Once, before any record: a short block of the runtime is fine.
            Sink::Sqlite(s) => s.track(input),
            Sink::Postgres(p) => p.track(input).await,
        }
    }

    /// Raises the tracked input's watermark to `watermark`, without rows
    /// (nothing for an input not tracked).
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`].
    pub async fn save_progress(&self, watermark: u64) -> Result<(), SinkError> {
        match self {
            Sink::Sqlite(s) => s.save_progress(watermark),
            Sink::Postgres(p) => p.save_progress(watermark).await,
        }
    }

    /// Gives the table its `source` column, unique with `seq` (and creates
    /// `baler_progress`), so that [`write_for`](Self::write_for) can be used.
    ///
    /// # Errors
    ///
    /// [`SinkError::Table`] (or [`SinkError::Connect`]).
    pub async fn prepare_sources(&self) -> Result<(), SinkError> {
        match self {
            Sink::Sqlite(s) => s.prepare_sources(),
            Sink::Postgres(p) => p.prepare_sources().await,
        }
    }

    /// Writes `rows` of the input `source` in one transaction, passing over
    /// the rows of that input already in the table, and returns how many
    /// were inserted: what makes a job that runs twice write its records once.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`]; nothing of the batch is in the table then.
    pub async fn write_for(&self, source: i64, rows: Vec<Record>) -> Result<u64, SinkError> {
        match self {
            Sink::Sqlite(s) => s.write_for(source, rows).await,
            Sink::Postgres(p) => p.write_for(source, rows).await,
        }
    }

    /// Writes `rows` as multi-row inserts in one transaction and returns how
    /// many rows were inserted. For a tracked input, rows an earlier run
    /// wrote are passed over (and not counted), and `watermark`, when given,
    /// raises the input's watermark in the same transaction.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`]; nothing of the batch is in the table then.
    pub async fn write(&self, rows: Vec<Record>, watermark: Option<u64>) -> Result<u64, SinkError> {
        match self {
            Sink::Sqlite(s) => s.write(rows, watermark).await,
            Sink::Postgres(p) => p.write(rows, watermark).await,
        }
    }

    /// How many rows the table holds.
    ///
    /// # Errors
    ///
    /// [`SinkError::Write`] if the count fails.
    pub async fn count(&self) -> Result<u64, SinkError> {
        match self {
            Sink::Sqlite(s) => s.count().await,
            Sink::Postgres(p) => p.count().await,
        }
    }
}

/// Where an input stands in a table: what lets `baler ingest --input FILE`,
/// killed at any moment, go on from where it was.
///
/// A tracked input has a row in `baler_progress` (its identity, the table,
/// an id and a watermark), and its records carry that id in the table's
/// `source` column, unique with `seq`. Every batch is written with
/// insert-or-ignore and raises the watermark in the same transaction, so
/// the database itself says, after any crash, that every record numbered up
/// to the watermark is in the table; records above it that an earlier run
/// wrote are passed over when written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The input's id, in the table's `source` column.
    pub source: i64,
    /// Every record numbered up to this is in the table (0: none known).
    pub watermark: u64,
}

/// The name of the unique index on a tracked table's `(source, seq)`.
pub(crate) fn unique_index_name(table: &str) -> String {
    format!("{table}_baler_source_seq")
}

/// Why a sink could not be opened or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// `--sink` names nothing baler can write to.
    #[error("--sink {given:?} is not usable: {reason}")]
    BadSink {
        /// What was given (without a password).
        given: String,
        /// Why.
        reason: String,
    },
    /// `--table` is not a plain SQL name.
    #[error(
        "--table {table:?} is not a plain table name; use letters, digits and underscores \
         (at most 63), starting with a letter or underscore"
    )]
    BadTable {
        /// What was given.
        table: String,
    },
    /// The SQLite file could not be opened or created.
    #[error(
        "cannot open the database {what}: {reason}; check that its directory exists and is \
         writable, and that the file is a SQLite database"
    )]
    Open {
        /// The database.
        what: String,
        /// Why.
        reason: String,
    },
    /// The PostgreSQL server could not be reached.
    #[error(
        "cannot connect to {what}: {reason}; check that the server is running and that --sink \
         names the right host, port, user and database"
    )]
    Connect {
        /// The database.
        what: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake with the PostgreSQL server failed, or the server
    /// does not offer TLS where `sslmode` requires it.
    #[error("the TLS handshake with {what} failed: {reason}; {hint}")]
    Tls {
        /// The database.
        what: String,
        /// What the TLS library or the server said.
        reason: String,
        /// What to check.
        hint: &'static str,
    },
    /// The PostgreSQL server accepted some of the connections that
    /// `--max-in-flight` asks for (one per batch written at once), then
    /// refused another.
    #[error(
        "{what} accepted {opened} of the {wanted} connections --max-in-flight {wanted} asks \
         for, then refused one: {reason}; lower --max-in-flight to {opened} or less, or raise \
         the server's connection limit (max_connections, or the role's CONNECTION LIMIT)"
    )]
    TooFewConnections {
        /// The database.
        what: String,
        /// The connections it accepted.
        opened: usize,
        /// The connections asked for.
        wanted: usize,
        /// Why it refused the next one.
        reason: String,
    },
    /// The table could not be created, or has other columns.
    #[error(
        "cannot use the table {table} in {what}: {reason}; baler writes into columns \
         seq (integer) and body (text): name another table with --table, or drop this one"
    )]
    Table {
        /// The table.
        table: String,
        /// The database.
        what: String,
        /// Why.
        reason: String,
    },
    /// A batch could not be written.
    #[error("writing a batch of {rows} record(s) failed: {reason}")]
    Write {
        /// The batch's size.
        rows: usize,
        /// Why.
        reason: String,
        /// Whether trying again may succeed (database busy, connection lost).
        transient: bool,
    },
}

impl SinkError {
    /// Whether trying the same write again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SinkError::Write {
                transient: true,
                ..
            }
        )
    }
}

/// Checks that `table` is a plain SQL identifier, so that it can be quoted
/// into statements safely.
fn check_table_name(table: &str) -> Result<(), SinkError> {
    let mut chars = table.chars();
    let ok = table.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SinkError::BadTable {
            table: table.to_owned(),
        })
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A `--sink` value with the password of a URL hidden.
pub(crate) fn redact(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}")
                } else {
                    text.to_owned()
                }
            }
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_must_be_plain_identifiers() {
        for ok in ["records", "_t1", "Batch_2024"] {
            assert_eq!(check_table_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "1abc", "a-b", "x\"; DROP TABLE y; --", &"a".repeat(64)] {
            assert!(check_table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sink_url_is_described_without_its_password() {
        let spec = SinkSpec::parse("postgres://me:secret@127.0.0.1:5433/test").unwrap();
        let text = spec.describe();
        assert!(
            text.contains("127.0.0.1:5433") && text.contains("test"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
        let err = SinkSpec::parse("mysql://me:secret@host/db").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
