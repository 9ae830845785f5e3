//! baler's metrics, served for Prometheus.
//!
//! A batcher called `writes` takes a steady stream of operations and hands
//! them to a fake datastore (1–20 ms per batch, one operation in 50 failing,
//! one in 20 asking for a retry). Its metrics go through the `metrics`
//! facade into `metrics-exporter-prometheus`'s recorder, and a small
//! hand-written HTTP endpoint serves them in Prometheus's text format at
//! `http://127.0.0.1:9898/metrics`: point a Prometheus scrape job at it, or
//! `curl` it. The crate docs ("Metrics") list every metric.
//!
//! Install the recorder **before** building the batcher: the batcher
//! registers its handles when it is built.
//!
//! # Running it
//!
//! ```text
//! cargo run --release -p baler --example prometheus                  # serves for 60 s
//! cargo run --release -p baler --example prometheus -- --seconds 600
//! cargo run --release -p baler --example prometheus -- --addr 127.0.0.1:0 --once
//! curl -s http://127.0.0.1:9898/metrics | grep '^baler_'
//! ```
//!
//! `--once` runs the workload for a second, scrapes its own endpoint over
//! HTTP once, prints the `baler_` lines, checks that the counters agree with
//! `Batcher::stats()`, and exits (1 if they do not): a smoke test of the whole
//! path, from the engine to the scrape.
//!
//! # What to expect
//!
//! From `--once` on a 2-core machine (abridged; the order of the lines is the
//! exporter's):
//!
//! ```text
//! serving http://127.0.0.1:42687/metrics
//! baler_operations_completed_total{batcher="writes"} 2631
//! baler_operations_submitted_total{batcher="writes"} 2687
//! baler_batches_ended_total{batcher="writes",outcome="ok"} 262
//! baler_capacity{batcher="writes"} inf
//! baler_target{batcher="writes"} 0
//! baler_batch_size_bucket{batcher="writes",le="10"} 146
//! baler_batch_size_sum{batcher="writes"} 2814
//! baler_operation_latency_seconds_bucket{batcher="writes",le="0.025"} 2534
//! baler_operation_latency_seconds_count{batcher="writes"} 2687
//! ...
//! OK: the scrape agrees with stats()
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use baler::{handler_fn, Batch, Batcher, Operation, Outcome};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn Error + Send + Sync>;

struct Args {
    addr: SocketAddr,
    seconds: u64,
    once: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut args = Args {
        addr: "127.0.0.1:9898".parse()?,
        seconds: 60,
        once: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => args.addr = it.next().ok_or("--addr needs an address")?.parse()?,
            "--seconds" => args.seconds = it.next().ok_or("--seconds needs a count")?.parse()?,
            "--once" => args.once = true,
            other => {
                return Err(
                    format!("unknown argument {other:?}: use --addr, --seconds, --once").into(),
                )
            }
        }
    }
    if !args.addr.ip().is_loopback() {
        return Err("this example only listens on a loopback address".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;

    // 1. The recorder, with histogram buckets (else the exporter renders
    //    summaries), installed before the batcher is built.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        )?
        .set_buckets_for_metric(
            Matcher::Prefix("baler_batch_".into()),
            &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0],
        )?
        .install_recorder()?;
    // The exporter needs its upkeep run now and then.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    // 2. The endpoint.
    let listener = TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/metrics");
    let served = handle.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = served.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(stream, &handle).await {
                    eprintln!("scrape failed: {e}");
                }
            });
        }
    });

    // 3. The batcher and its workload.
    let batcher = Batcher::builder()
        .name("writes")
        .max_batch_size(50)
        .linger(Duration::from_millis(2))
        .max_in_flight(4)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .build(handler_fn(|batch: Batch<u64>| async move {
            let first = batch.items().first().copied().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(1 + first % 20)).await;
            Ok::<_, String>(
                batch
                    .iter()
                    .zip(batch.info())
                    .map(|(n, info)| match n % 100 {
                        0 | 50 => Outcome::Failed("rejected by the datastore".to_owned()),
                        r if r % 20 == 7 && info.attempt == 1 => {
                            Outcome::Retry("throttled".to_owned())
                        }
                        _ => Outcome::Done(()),
                    })
                    .collect(),
            )
        }))?;
    let producers: Vec<_> = (0..8u64)
        .map(|p| {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                let mut n = p;
                loop {
                    let Ok(ticket) = batcher
                        .submit(Operation::new(n).with_cost(1 + (n % 4) as u32))
                        .await
                    else {
                        break; // shutting down
                    };
                    tokio::spawn(ticket); // the outcome shows in the metrics
                    n += 8;
                    tokio::time::sleep(Duration::from_micros(500 + 100 * (n % 20))).await;
                }
            })
        })
        .collect();

    let run_for = if args.once {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(args.seconds)
    };
    tokio::time::sleep(run_for).await;
    let report = batcher.shutdown(Duration::from_secs(5)).await;
    for p in producers {
        p.await?;
    }
    if !report.is_clean() {
        return Err(format!("shutdown abandoned {} operation(s)", report.abandoned.len()).into());
    }
    if !args.once {
        return Ok(());
    }

    // 4. One scrape over HTTP, checked against the engine's own counts.
    let body = scrape(addr).await?;
    for line in body.lines().filter(|l| l.starts_with("baler_")) {
        println!("{line}");
    }
    let stats = batcher.stats();
    let value = |series: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    };
    let checks = [
        (
            r#"baler_operations_submitted_total{batcher="writes"}"#,
            stats.submitted,
        ),
        (
            r#"baler_operations_completed_total{batcher="writes"}"#,
            stats.completed,
        ),
        (
            r#"baler_operations_failed_total{batcher="writes"}"#,
            stats.failed,
        ),
        (
            r#"baler_operations_retried_total{batcher="writes"}"#,
            stats.retried,
        ),
        (
            r#"baler_batches_dispatched_total{batcher="writes"}"#,
            stats.batches,
        ),
        (r#"baler_target{batcher="writes"}"#, 0),
    ];
    let mut ok = stats.submitted > 0;
    for (series, expected) in checks {
        if value(series) != Some(expected as f64) {
            eprintln!(
                "MISMATCH: {series} is {:?}, stats say {expected}",
                value(series)
            );
            ok = false;
        }
    }
    if ok {
        println!("OK: the scrape agrees with stats()");
        Ok(())
    } else {
        std::process::exit(1);
    }
}

/// Answers one HTTP/1.1 request: `GET /metrics` gets the text format,
/// anything else a 404. The connection closes after the response.
async fn serve(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow client"))??;
        if n == 0 || head.len() > 8 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, content_type, body) = if request_line.starts_with(b"GET /metrics ") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try /metrics\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// `GET /metrics` from our own endpoint, as Prometheus would.
async fn scrape(addr: SocketAddr) -> Result<String, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("no end of the response head")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("the scrape failed: {head}").into());
    }
    Ok(body.to_owned())
}
