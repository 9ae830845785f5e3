//! Records per second into SQLite, three ways, in one run on one machine:
//!
//! 1. a plain loop of one `INSERT` per record (each its own transaction, as
//!    code that writes a row per request does);
//! 2. `baler ingest` without a capacity limit (batches of 100, one
//!    transaction each);
//! 3. `baler ingest` with `--capacity 50000` (records of cost 1), where the
//!    capacity, not the database, sets the pace.
//!
//! Each writes into a fresh file in the temporary directory, with the same
//! settings (WAL journal, SQLite's default synchronous mode).
//!
//! ```text
//! cargo run --release -p baler-cli --example sqlite_throughput
//! cargo run --release -p baler-cli --example sqlite_throughput -- 200000 20000
//! ```
//!
//! The arguments are the records for baler (default 100,000) and for the
//! plain loop (default 10,000; it is slower).

use std::path::{Path, PathBuf};
use std::time::Instant;

use baler_cli::cli::{Cli, Command};
use clap::Parser;

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn plain_loop(path: &Path, records: u64) -> Result<f64, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS records (seq INTEGER NOT NULL, body TEXT NOT NULL)",
    )?;
    let mut stmt = conn.prepare("INSERT INTO records (seq, body) VALUES (?, ?)")?;
    let start = Instant::now();
    for seq in 1..=records {
        // 100 bytes, as baler's synthetic records.
        let id = seq.to_string();
        let body = format!(
            "{{\"id\":{id},\"payload\":\"{}\"}}",
            "x".repeat(80 - id.len())
        );
        stmt.execute(rusqlite::params![seq as i64, body])?;
    }
    Ok(records as f64 / start.elapsed().as_secs_f64())
}

async fn baler_ingest(path: &Path, records: u64, capacity: Option<u64>) -> Result<f64, String> {
    let mut argv = vec![
        "baler".to_owned(),
        "ingest".to_owned(),
        "--records".to_owned(),
        records.to_string(),
        "--sink".to_owned(),
        path.display().to_string(),
        "--progress".to_owned(),
        "off".to_owned(),
    ];
    if let Some(c) = capacity {
        argv.extend(["--capacity".to_owned(), c.to_string()]);
    }
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Ingest(args) = cli.command else {
        return Err("parsed as another subcommand than ingest".to_owned());
    };
    let summary = baler_cli::ingest::run(args)
        .await
        .map_err(|e| e.to_string())?;
    if !summary.all_written() {
        return Err(format!("not all written: {}", summary.to_text()));
    }
    Ok(summary.throughput())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let loop_records: u64 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let dir = std::env::temp_dir().join(format!("baler-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let plain = plain_loop(&fresh(&dir, "plain.db"), loop_records)?;
    println!("plain loop, one INSERT per record:  {plain:>9.0} records/s ({loop_records} records)");
    let unlimited = baler_ingest(&fresh(&dir, "unlimited.db"), records, None).await?;
    println!("baler ingest, no capacity limit:    {unlimited:>9.0} records/s ({records} records)");
    let limited = baler_ingest(&fresh(&dir, "limited.db"), records, Some(50_000)).await?;
    println!("baler ingest, --capacity 50000:     {limited:>9.0} records/s ({records} records)");
    println!(
        "baler without a limit is {:.0}x the plain loop",
        unlimited / plain.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
