//! The command line: `baler ingest` and its flags.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::shared::SharedError;

/// The `baler` command.
#[derive(Debug, Parser)]
#[command(
    name = "baler",
    version,
    about = "Load records into a database in batches, at a pace it can take, and lose none."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once per process and moved once: boxing the large variant would buy
// nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write records (synthetic, or JSON lines from a file or stdin) into
    /// SQLite or PostgreSQL in batches.
    ///
    /// Ctrl-C or SIGTERM stops producing, writes everything already produced
    /// and prints the summary. A second Ctrl-C stops waiting: the records not
    /// yet written are saved to a JSON-lines file that `--input` replays.
    ///
    /// Exit codes: 0 every record was written; 1 some records were not
    /// written (they are listed and saved for replay); 2 nothing was produced
    /// (bad flags, unreadable input, unreachable database or --shared Redis);
    /// 3 every record was written but input lines were rejected (malformed
    /// or too large).
    Ingest(IngestArgs),

    /// Write the records that `baler ingest --queue` turned into jobs, in
    /// batches, until SIGINT or SIGTERM.
    ///
    /// Takes `--queue` (required), `--queue-name`, `--lease`, and ingest's
    /// database and pace flags (`--sink`, `--table`, `--capacity`, `--shared`
    /// and the rest); not `--input` or `--records`. Run as many as you like:
    /// a job whose worker dies is run again by another once its lease runs
    /// out, and its records are written once.
    Work(IngestArgs),

    /// Print a shell completion script for baler on stdout.
    ///
    /// bash: `baler completions bash > ~/.local/share/bash-completion/completions/baler`;
    /// zsh: `baler completions zsh > ~/.zfunc/_baler` (with ~/.zfunc in $fpath);
    /// fish: `baler completions fish > ~/.config/fish/completions/baler.fish`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// What to do with an input line that is not valid JSON or is too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BadLines {
    /// Report it, stop reading, write what was produced, and exit with 3.
    Stop,
    /// Report it, skip it and go on; exit with 3 at the end.
    Skip,
}

/// How progress is shown while records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A live progress bar when stdout and stderr are terminals, else a plain
    /// status line each second.
    Auto,
    /// Always the live progress bar.
    Bar,
    /// Always a plain status line each second, on stderr.
    Plain,
    /// No progress; only the summary.
    Off,
}

/// The flags of `baler ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Generate this many synthetic records (the default without --input: 10000).
    #[arg(long, value_name = "N", conflicts_with = "input")]
    pub records: Option<u64>,

    /// The size in bytes of each synthetic record's JSON body.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub record_size: usize,

    /// Read JSON lines (one record per line) from this file, or `-` for stdin.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Where to write: a SQLite file (created with its table if missing),
    /// `sqlite://PATH`, `postgres://user@host:port/database`, or libpq
    /// keywords (`host=… port=… user=… dbname=…`); a PostgreSQL URL
    /// takes `?sslmode=require` or `?sslmode=verify-full&sslrootcert=CA.pem`
    /// for TLS (libpq's modes; the default is prefer). Without the flag:
    /// $BALER_SINK, else $DATABASE_URL, else baler.db. Keep a PostgreSQL
    /// password out of the command line with $PGPASSWORD (used when the sink
    /// has none) or in one of the variables.
    #[arg(
        long,
        value_name = "PATH|URL",
        env = "BALER_SINK",
        hide_env_values = true
    )]
    pub sink: Option<String>,

    /// Enqueue the records as jobs (one per --batch-size records) in this
    /// Redis (redis://HOST:PORT) instead of writing them; `baler work`
    /// processes write them, and the summary counts what they wrote.
    #[arg(long, value_name = "redis://HOST:PORT")]
    pub queue: Option<String>,

    /// With --queue: the queue's name in Redis.
    #[arg(long, value_name = "NAME", default_value = "baler-ingest")]
    pub queue_name: String,

    /// With --queue: how long a worker may hold a job without renewing it
    /// before another worker runs it again (a worker that died).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease: Duration,

    /// With --queue: how many shards the queue is split into, each a hash
    /// tag of its own (on a Redis Cluster, each on a master of its own).
    /// `baler ingest` and `baler work` of one queue must give the same.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub queue_shards: usize,

    /// With --queue: the URL is a node of a Redis Cluster (give several,
    /// comma-separated, in case one is down), not a single Redis.
    #[arg(long)]
    pub queue_cluster: bool,

    /// The table to write into (created if missing, with columns
    /// `seq` and `body`).
    #[arg(long, default_value = "records")]
    pub table: String,

    /// The database's capacity in cost units per second (default: unlimited).
    /// With --shared, the capacity shared by every process using the same
    /// Redis and --shared-name (this process's --reserved comes on top).
    #[arg(long, value_name = "COST_PER_SECOND")]
    pub capacity: Option<u64>,

    /// Share --capacity with other `baler ingest` processes through partition
    /// leases in this Redis (redis://HOST:PORT, or rediss://HOST:PORT for
    /// TLS). Each process writes at its
    /// --reserved rate plus the partitions it holds; the partitions go to the
    /// processes that have records to write, shared fairly. `--shared` without
    /// a URL takes it from $BALER_REDIS, else $REDIS_URL (the variables only
    /// name the Redis: sharing is on only with the flag).
    #[arg(long, value_name = "redis://HOST:PORT", num_args = 0..=1)]
    pub shared: Option<Option<String>>,

    /// With --shared rediss://…: the PEM file of the CA that signed the Redis
    /// server's certificate, trusted instead of the system's CAs (for a
    /// private CA).
    #[arg(long, value_name = "FILE", requires = "shared")]
    pub shared_ca: Option<PathBuf>,

    /// With --shared: what one partition of the shared capacity is worth, in
    /// cost units per second (default: a tenth of --capacity, rounded up,
    /// so 10 partitions; at most 500 partitions).
    #[arg(long, value_name = "COST_PER_SECOND", requires = "shared")]
    pub factor: Option<u64>,

    /// With --shared: this process's own capacity per second, on top of its
    /// partitions, and all it keeps when Redis cannot be reached (default 0:
    /// with none, records wait while this process holds no partition).
    #[arg(long, value_name = "COST_PER_SECOND", requires = "shared")]
    pub reserved: Option<u64>,

    /// With --shared: the name of the shared capacity in Redis; processes
    /// share one capacity when they use the same Redis and the same name
    /// (default: the --table name).
    #[arg(long, value_name = "NAME", requires = "shared")]
    pub shared_name: Option<String>,

    /// The cost of each record.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cost: u32,

    /// The most records in one batch (one multi-row INSERT, one transaction).
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,

    /// How long a batch may wait to fill, from its first record (e.g. 5ms, 1s).
    #[arg(long, value_name = "DURATION", default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,

    /// The most batches being written at once.
    #[arg(long, default_value_t = 4)]
    pub max_in_flight: usize,

    /// The most records held (buffered or being written); producing waits
    /// while it is full.
    #[arg(long, value_name = "RECORDS", default_value_t = 10_000)]
    pub buffer: usize,

    /// How many times a batch that failed with a transient error (database
    /// busy, connection lost) is tried in all.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,

    /// The largest record accepted, in bytes; a larger one is refused.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_record_size: usize,

    /// What to do with a malformed or oversized input line.
    #[arg(long, value_enum, default_value_t = BadLines::Stop)]
    pub bad_lines: BadLines,

    /// Where the records not written are saved, as JSON lines for `--input`
    /// (default: baler-unwritten-UNIXTIME.jsonl, only if there are any).
    #[arg(long, value_name = "FILE")]
    pub replay_file: Option<PathBuf>,

    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// How to show progress.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
}

/// The variables that `--sink` falls back to, in order, before `baler.db`.
pub const SINK_VARIABLES: [&str; 2] = ["BALER_SINK", "DATABASE_URL"];

/// The variables that `--shared` without a URL reads, in order.
pub const REDIS_VARIABLES: [&str; 2] = ["BALER_REDIS", "REDIS_URL"];

/// The sink when neither `--sink` nor a variable names one.
pub const DEFAULT_SINK: &str = "baler.db";

impl IngestArgs {
    /// The database to write to: `--sink` (or $BALER_SINK, which clap reads),
    /// else $DATABASE_URL, else `baler.db`. A variable that is set but empty
    /// counts as unset, as shells make unsetting awkward.
    pub fn sink(&self) -> String {
        self.sink_with(|name| std::env::var(name).ok())
    }

    /// [`IngestArgs::sink`] with the environment given, for tests.
    pub fn sink_with(&self, var: impl Fn(&str) -> Option<String>) -> String {
        self.sink
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| first_set(&SINK_VARIABLES, &var))
            .unwrap_or_else(|| DEFAULT_SINK.to_owned())
    }

    /// The Redis of `--shared`: `None` without the flag; the flag's URL, else
    /// $BALER_REDIS, else $REDIS_URL.
    ///
    /// # Errors
    ///
    /// [`SharedError::NoUrl`] when `--shared` has no URL and neither variable
    /// is set.
    pub fn shared_url(&self) -> Result<Option<String>, SharedError> {
        self.shared_url_with(|name| std::env::var(name).ok())
    }

    /// [`IngestArgs::shared_url`] with the environment given, for tests.
    ///
    /// ```
    /// use baler_cli::cli::{Cli, Command};
    /// use clap::Parser;
    ///
    /// let Command::Ingest(args) = Cli::try_parse_from(["baler", "ingest", "--shared"])?.command
    /// else {
    ///     unreachable!("parsed as ingest")
    /// };
    /// let env = |name: &str| (name == "REDIS_URL").then(|| "redis://127.0.0.1:6390".to_owned());
    /// assert_eq!(args.shared_url_with(env).unwrap().as_deref(), Some("redis://127.0.0.1:6390"));
    /// assert!(args.shared_url_with(|_| None).unwrap_err().to_string().contains("REDIS_URL"));
    /// # Ok::<(), clap::Error>(())
    /// ```
    pub fn shared_url_with(
        &self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<String>, SharedError> {
        match &self.shared {
            None => Ok(None),
            Some(Some(url)) if !url.is_empty() => Ok(Some(url.clone())),
            Some(_) => first_set(&REDIS_VARIABLES, &var)
                .map(Some)
                .ok_or(SharedError::NoUrl),
        }
    }
}

fn first_set(names: &[&str], var: &impl Fn(&str) -> Option<String>) -> Option<String> {
    names
        .iter()
        .find_map(|name| var(name).filter(|v| !v.is_empty()))
}

/// Reads a duration such as `5ms`, `250us`, `2s`, `1m`, or `0`.
///
/// ```
/// use std::time::Duration;
/// use baler_cli::cli::parse_duration;
///
/// assert_eq!(parse_duration("5ms"), Ok(Duration::from_millis(5)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert!(parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write it as e.g. 5ms, 250us, 2s or 1m"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number; write e.g. 5ms"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use us, ms, s or m"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}
