//! A process that spends from a capacity shared through Redis or Azure Blob
//! Storage as fast as it is allowed, and keeps a ledger of what it spent and
//! what it held.
//!
//! ```text
//! baler-ledger (--redis redis://127.0.0.1:6379 --name demo
//!               | --azure "UseDevelopmentStorage=true" --container demo)
//!     --ledger spent.log [--reserved 0] [--shared 10000] [--factor 1000]
//!     [--lease-ms 2000] [--retry-ms N] [--cost 100] [--seconds N]
//! ```
//!
//! Azure Blob leases last 15 to 60 s: give it `--lease-ms 15000` or more.
//!
//! It submits operations of `--cost` each, keeping its buffer full (so its
//! target is always above the whole shared capacity), one operation per
//! batch. The ledger gets one line per batch, `spend <unix ms> <cost>`, and
//! one line every 100 ms, `rate <unix ms> <rate> <partitions held>
//! <store reachable: 1 or 0>`. It stops, giving its leases back, after
//! `--seconds` if given, otherwise when its standard input closes. The
//! multi-process tests (`tests/redis.rs`, `tests/azure.rs`) run several.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baler::{
    handler_fn,
    shared::{LeaseStore, SharedCapacity},
    Batch, Batcher, Operation, Outcome,
};
use baler_azure::AzureLeaseStore;
use baler_redis::RedisLeaseStore;
use tokio::io::AsyncReadExt;

/// Where the leases are.
enum Store {
    Redis {
        url: String,
        name: String,
    },
    Azure {
        connection: String,
        container: String,
    },
}

struct Args {
    redis: Option<String>,
    name: Option<String>,
    azure: Option<String>,
    container: Option<String>,
    ledger: String,
    reserved: u64,
    shared: u64,
    factor: u64,
    lease: Duration,
    retry: Option<Duration>,
    cost: u32,
    seconds: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        redis: None,
        name: None,
        azure: None,
        container: None,
        ledger: String::new(),
        reserved: 0,
        shared: 10_000,
        factor: 1_000,
        lease: Duration::from_secs(2),
        retry: None,
        cost: 100,
        seconds: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} needs a whole number, not {value:?}"))
        };
        match flag.as_str() {
            "--redis" => args.redis = Some(value.clone()),
            "--name" => args.name = Some(value.clone()),
            "--azure" => args.azure = Some(value.clone()),
            "--container" => args.container = Some(value.clone()),
            "--ledger" => args.ledger = value.clone(),
            "--reserved" => args.reserved = number()?,
            "--shared" => args.shared = number()?,
            "--factor" => args.factor = number()?,
            "--lease-ms" => args.lease = Duration::from_millis(number()?),
            "--retry-ms" => args.retry = Some(Duration::from_millis(number()?)),
            "--seconds" => args.seconds = Some(number()?),
            "--cost" => {
                args.cost = u32::try_from(number()?)
                    .map_err(|_| format!("--cost is at most {}", u32::MAX))?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.ledger.is_empty() {
        return Err("--ledger is required".into());
    }
    Ok(args)
}

impl Args {
    fn store(&self) -> Result<Store, String> {
        match (&self.redis, &self.name, &self.azure, &self.container) {
            (Some(url), Some(name), None, None) => Ok(Store::Redis {
                url: url.clone(),
                name: name.clone(),
            }),
            (None, None, Some(connection), Some(container)) => Ok(Store::Azure {
                connection: connection.clone(),
                container: container.clone(),
            }),
            _ => Err("give either --redis and --name, or --azure and --container".into()),
        }
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

type Ledger = Arc<Mutex<std::fs::File>>;

fn write(ledger: &Ledger, line: String) {
    let mut file = ledger.lock().unwrap_or_else(|p| p.into_inner());
    // One write per line, to a file opened for appending: lines never mix.
    let _ = file.write_all(line.as_bytes());
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (args, store) = match parse().and_then(|args| Ok((args.store()?, args))) {
        Ok((store, args)) => (args, store),
        Err(e) => {
            eprintln!("baler-ledger: {e}");
            return ExitCode::from(2);
        }
    };
    let ran = match store {
        Store::Redis { url, name } => match RedisLeaseStore::new(&url, &name) {
            Ok(store) => run(args, store).await,
            Err(e) => Err(e.into()),
        },
        Store::Azure {
            connection,
            container,
        } => match AzureLeaseStore::from_connection_string(&connection, &container) {
            Ok(store) => run(args, store).await,
            Err(e) => Err(e.into()),
        },
    };
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baler-ledger: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, store: impl LeaseStore) -> Result<(), Box<dyn std::error::Error>> {
    let ledger: Ledger = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.ledger)?,
    ));
    let mut shared = SharedCapacity::new(store)
        .reserved(args.reserved)
        .shared(args.shared, args.factor)
        .lease_time(args.lease);
    if let Some(retry) = args.retry {
        shared = shared.retry_every(retry);
    }
    let (capacity, leases) = shared.start()?;

    let spent = ledger.clone();
    let batcher: Batcher<u64, (), String> = Batcher::builder()
        .capacity(capacity.clone())
        .max_batch_size(1)
        .buffer_size(256)
        .build(handler_fn(move |batch: Batch<u64>| {
            write(&spent, format!("spend {} {}\n", unix_ms(), batch.cost()));
            async move { Ok::<_, String>(batch.iter().map(|_| Outcome::Done(())).collect()) }
        }))?;

    let sampler = {
        let capacity = capacity.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let status = capacity.status();
                let held = status.partitions.map_or(0, |(held, _)| held);
                let reachable = u8::from(status.store_error.is_none());
                write(
                    &ledger,
                    format!(
                        "rate {} {} {held} {reachable}\n",
                        unix_ms(),
                        capacity.rate().unwrap_or(0)
                    ),
                );
            }
        })
    };

    let submitter = {
        let batcher = batcher.clone();
        let cost = args.cost;
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                i += 1;
                match batcher.submit(Operation::new(i).with_cost(cost)).await {
                    // Keep the ticket alive: a dropped ticket cancels its operation.
                    Ok(ticket) => drop(tokio::spawn(ticket)),
                    Err(_) => return,
                }
            }
        })
    };

    match args.seconds {
        Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
        None => {
            // Run until standard input closes.
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while stdin.read(&mut buf).await.unwrap_or(0) > 0 {}
        }
    }

    submitter.abort();
    sampler.abort();
    batcher.shutdown(Some(Duration::from_millis(200))).await;
    leases.release_all().await;
    Ok(())
}
