//! The `baler` command: load records into a database in batches, at a pace it
//! can take, show what is happening, and never lose a record.
//!
//! ```text
//! baler ingest --records 100000                      # synthetic records into ./baler.db
//! baler ingest --input rows.jsonl --sink out.db      # JSON lines from a file
//! cat rows.jsonl | baler ingest --input - --sink postgres://me@127.0.0.1/test
//! baler ingest --records 20000 --cost 10 --capacity 10000 --batch-size 10
//! baler ingest --sink a.db --capacity 10000 --shared redis://127.0.0.1:6379 # one capacity,
//! baler ingest --sink b.db --capacity 10000 --shared redis://127.0.0.1:6379 # two processes
//! DATABASE_URL=postgres://me@db/prod PGPASSWORD=… baler ingest --input rows.jsonl
//! baler ingest --sink 'host=127.0.0.1 user=me dbname=test' --records 1000  # libpq keywords
//! REDIS_URL=redis://127.0.0.1:6379 baler ingest --capacity 10000 --shared  # Redis from env
//! baler ingest --input rows.jsonl --queue redis://127.0.0.1:6379       # jobs in Redis,
//! baler work --queue redis://127.0.0.1:6379 --sink out.db               # written by workers
//! baler completions bash > ~/.local/share/bash-completion/completions/baler
//! ```
//!
//! The sink comes from `--sink`, else `$BALER_SINK`, else `$DATABASE_URL`,
//! else `baler.db`; `--shared` without a URL reads `$BALER_REDIS`, else
//! `$REDIS_URL`. `--help` names the variables and never prints their values.
//!
//! It is built on the [`baler`] engine: the records go through a
//! [`baler::Batcher`] whose handler ([`writer::Writer`]) writes each batch as
//! multi-row inserts in one transaction. See [`ingest`] for how a run is put
//! together and how it stops.
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

pub mod cli;
pub mod ingest;
pub mod input;
pub mod latency;
pub mod progress;
pub mod queue;
pub mod shared;
pub mod sink;
pub mod summary;
pub mod writer;
