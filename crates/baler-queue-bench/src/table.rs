//! The run's markdown: machine facts, a table per scenario, the ratios to
//! baler, and the commands each contender called most.

use std::fmt::Write;
use std::path::Path;

use crate::{facts, Args, BulkResult, ChainResult, Contender};
use crate::{BULK_BATCH, BULK_CONCURRENCY, BULK_WORKERS, CHAINS, CHAIN_CONCURRENCY, CHAIN_WORKERS};

pub(crate) struct Run<'a> {
    pub(crate) args: &'a Args,
    pub(crate) dir: &'a Path,
    pub(crate) server_version: Option<String>,
    pub(crate) chain: &'a [(Contender, Result<ChainResult, String>)],
    pub(crate) bulk: &'a [(Contender, Result<BulkResult, String>)],
    pub(crate) skipped: &'a [(Contender, String)],
}

/// 1234567 → "1,234,567".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count per job: one decimal, or three significant ones below 1 (a
/// command per thousand jobs is not zero).
fn per_job(x: f64) -> String {
    if x >= 1.0 || x == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{:.*}", (2 - x.log10().floor() as i32).max(1) as usize, x)
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn signed_mb(kb: i64) -> String {
    format!("{:+.1}", kb as f64 / 1024.0)
}

/// Producer memory: the sample 10 s in (the last one if the run was
/// shorter), the last, the highest, and last − the one 10 s in.
pub(crate) fn memory(rss: &[u64]) -> Option<(u64, u64, u64, i64)> {
    let last = *rss.last()?;
    let at10 = rss.get(10).copied().unwrap_or(last);
    let max = rss.iter().copied().max().unwrap_or(last);
    Some((at10, last, max, last as i64 - at10 as i64))
}

impl ChainResult {
    pub(crate) fn jobs_per_s(&self) -> f64 {
        self.advanced as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    pub(crate) fn calls_per_job(&self) -> Option<f64> {
        (self.ran > 0).then(|| self.calls as f64 / self.ran as f64)
    }
}

impl BulkResult {
    pub(crate) fn jobs_per_s(&self) -> f64 {
        self.jobs as f64 / self.end_to_end.max(f64::MIN_POSITIVE)
    }

    pub(crate) fn calls_per_job(&self) -> Option<f64> {
        (self.ran > 0).then(|| self.calls as f64 / self.ran as f64)
    }
}

fn versions(dir: &Path) -> Vec<String> {
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "not installed".into());
    let commit = facts::output(
        "git",
        &["-C", &dir.to_string_lossy(), "rev-parse", "--short", "HEAD"],
    );
    vec![
        format!(
            "baler: baler-queue {} (this repository{})",
            env!("CARGO_PKG_VERSION"),
            commit.map(|c| format!(", commit {c}")).unwrap_or_default()
        ),
        format!(
            "bee-queue: {}",
            or_unknown(facts::npm_version(dir, "bee-queue"))
        ),
        format!("bullmq: {}", or_unknown(facts::npm_version(dir, "bullmq"))),
        format!(
            "bullmq-rs: bullmq-official {}",
            or_unknown(facts::locked_version(
                &dir.join("peers/bullmq-rs/Cargo.lock"),
                "bullmq-official"
            ))
        ),
        format!(
            "apalis: apalis-redis {}",
            or_unknown(facts::locked_version(
                &dir.join("peers/apalis/Cargo.lock"),
                "apalis-redis"
            ))
        ),
    ]
}

/// A failed run's table cell.
fn what(error: &str) -> &'static str {
    if error.starts_with("hung") {
        "hung (below)"
    } else {
        "failed (below)"
    }
}

fn ratio(x: Option<f64>, baler: Option<f64>) -> String {
    match (x, baler) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "—".into(),
    }
}

pub(crate) fn render(run: &Run<'_>) -> String {
    let mut md = String::new();
    let a = run.args;
    let _ = writeln!(
        md,
        "Chain scenario {} s, bulk scenario {} jobs{}.\n",
        a.chain_seconds,
        thousands(a.bulk_jobs),
        if a.quick { " (`--quick`)" } else { "" }
    );
    let _ = writeln!(md, "Machine and versions:\n");
    let date = facts::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let facts_list = [
        format!("date: {}", date.unwrap_or_else(|| "unknown".into())),
        format!(
            "CPU: {} × {}",
            cpus,
            facts::proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into())
        ),
        format!(
            "memory: {}",
            facts::proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into())
        ),
        format!(
            "kernel: {}",
            facts::output("uname", &["-r"]).unwrap_or_else(|| "unknown".into())
        ),
        format!(
            "redis-server: {}",
            run.server_version
                .clone()
                .unwrap_or_else(|| "unknown".into())
        ),
        format!(
            "node: {}",
            facts::output("node", &["--version"]).unwrap_or_else(|| "not installed".into())
        ),
        format!(
            "rustc: {}",
            facts::output("rustc", &["--version"]).unwrap_or_else(|| "unknown".into())
        ),
    ];
    for f in facts_list.iter().chain(versions(run.dir).iter()) {
        let _ = writeln!(md, "- {f}");
    }
    for (c, why) in run.skipped {
        let _ = writeln!(md, "- skipped {}: {why}", c.name());
    }

    let _ = writeln!(
        md,
        "\n### Chain: {CHAINS} chains for {} s, {CHAIN_WORKERS} worker processes × concurrency {CHAIN_CONCURRENCY}\n",
        a.chain_seconds
    );
    let _ = writeln!(
        md,
        "| contender | jobs/s | enqueued | advanced | delivered | Σ ran | lost (ran − delivered) | lost (advanced − delivered) | failed | Redis commands/job | producer RSS at 10 s (MB) | last (MB) | max (MB) | growth (MB) | Redis memory at the end (MB) |"
    );
    let _ = writeln!(
        md,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let mut failures = Vec::new();
    for (c, r) in run.chain {
        match r {
            Ok(r) => {
                let (at10, last, max, growth) = match memory(&r.rss_kb) {
                    Some((a, l, m, g)) => (mb(a), mb(l), mb(m), signed_mb(g)),
                    None => ("—".into(), "—".into(), "—".into(), "—".into()),
                };
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {at10} | {last} | {max} | {growth} | {} |",
                    c.name(),
                    r.jobs_per_s(),
                    thousands(r.enqueued),
                    thousands(r.advanced),
                    thousands(r.delivered),
                    thousands(r.ran),
                    r.ran as i64 - r.delivered as i64,
                    r.advanced as i64 - r.delivered as i64,
                    r.failed,
                    r.calls_per_job().map(per_job).unwrap_or_else(|| "—".into()),
                    mb(r.redis_memory / 1024),
                );
            }
            Err(e) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | | | | | | | | | | | | | |",
                    c.name(),
                    what(e)
                );
                failures.push(format!("{} chain: {e}", c.name()));
            }
        }
    }

    let _ = writeln!(
        md,
        "\n### Bulk: {} jobs in batches of {BULK_BATCH}, {BULK_WORKERS} worker processes × concurrency {BULK_CONCURRENCY}\n",
        thousands(a.bulk_jobs)
    );
    let _ = writeln!(
        md,
        "| contender | enqueue (s) | end to end (s) | jobs/s | Redis commands/job | Σ ran | producer exit (s) | Redis memory at the end (MB) |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|");
    for (c, r) in run.bulk {
        match r {
            Ok(r) => {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {:.2} | {:.0} | {} | {} | {:.2} | {} |",
                    c.name(),
                    r.enqueue_seconds,
                    r.end_to_end,
                    r.jobs_per_s(),
                    r.calls_per_job().map(per_job).unwrap_or_else(|| "—".into()),
                    thousands(r.ran),
                    r.producer_exit,
                    mb(r.redis_memory / 1024),
                );
                if r.enqueued != r.jobs {
                    failures.push(format!(
                        "{} bulk: the producer reported {} enqueued of {}",
                        c.name(),
                        thousands(r.enqueued),
                        thousands(r.jobs)
                    ));
                }
            }
            Err(e) => {
                let _ = writeln!(md, "| {} | {} | | | | | | |", c.name(), what(e));
                failures.push(format!("{} bulk: {e}", c.name()));
            }
        }
    }

    let baler_chain = run
        .chain
        .iter()
        .find(|(c, _)| *c == Contender::Baler)
        .and_then(|(_, r)| r.as_ref().ok());
    let baler_bulk = run
        .bulk
        .iter()
        .find(|(c, _)| *c == Contender::Baler)
        .and_then(|(_, r)| r.as_ref().ok());
    let others: Vec<Contender> = run
        .chain
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| *c != Contender::Baler)
        .collect();
    if !others.is_empty() && (baler_chain.is_some() || baler_bulk.is_some()) {
        let _ = writeln!(md, "\n### Against baler (contender ÷ baler)\n");
        let _ = writeln!(
            md,
            "| contender | chain jobs/s | chain commands/job | bulk jobs/s | bulk commands/job |"
        );
        let _ = writeln!(md, "|---|--:|--:|--:|--:|");
        for c in others {
            let chain = run
                .chain
                .iter()
                .find(|(x, _)| *x == c)
                .and_then(|(_, r)| r.as_ref().ok());
            let bulk = run
                .bulk
                .iter()
                .find(|(x, _)| *x == c)
                .and_then(|(_, r)| r.as_ref().ok());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                c.name(),
                ratio(
                    chain.map(ChainResult::jobs_per_s),
                    baler_chain.map(ChainResult::jobs_per_s)
                ),
                ratio(
                    chain.and_then(ChainResult::calls_per_job),
                    baler_chain.and_then(ChainResult::calls_per_job)
                ),
                ratio(
                    bulk.map(BulkResult::jobs_per_s),
                    baler_bulk.map(BulkResult::jobs_per_s)
                ),
                ratio(
                    bulk.and_then(BulkResult::calls_per_job),
                    baler_bulk.and_then(BulkResult::calls_per_job)
                ),
            );
        }
    }

    let mut top = Vec::new();
    for (c, r) in run.chain {
        if let Ok(r) = r {
            top.push((c.name(), "chain", &r.top, r.ran));
        }
    }
    for (c, r) in run.bulk {
        if let Ok(r) = r {
            top.push((c.name(), "bulk", &r.top, r.ran));
        }
    }
    if !top.is_empty() {
        let _ = writeln!(
            md,
            "\nThe commands each contender called most, per job run:\n"
        );
        for (name, scenario, commands, ran) in top {
            let list: Vec<String> = commands
                .iter()
                .take(8)
                .map(|(cmd, n)| format!("{cmd} {}", per_job(*n as f64 / (ran.max(1)) as f64)))
                .collect();
            let _ = writeln!(md, "- {name}, {scenario}: {}", list.join(", "));
        }
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailures:\n");
        for f in failures {
            let _ = writeln!(md, "- {}", f.replace('\n', "\n  "));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(advanced: u64, seconds: f64, calls: u64) -> ChainResult {
        ChainResult {
            seconds,
            enqueued: advanced + 2,
            advanced,
            delivered: advanced - 1,
            failed: 0,
            ran: advanced + 1,
            calls,
            rss_kb: vec![2048; 12],
            top: vec![("evalsha".into(), calls)],
            redis_memory: 3 << 20,
        }
    }

    #[test]
    fn the_tables_show_losses_ratios_to_baler_and_hung_runs() {
        let args = crate::parse_args(["--quick".to_owned()]).unwrap().unwrap();
        let chain = [
            (Contender::Baler, Ok(chain(4000, 20.0, 40_010))),
            (Contender::Bullmq, Ok(chain(1000, 20.0, 50_050))),
            (
                Contender::BeeQueue,
                Err("hung: producer did not exit within 90 s".to_owned()),
            ),
        ];
        let bulk = [(
            Contender::Baler,
            Ok(BulkResult {
                jobs: 20_000,
                enqueued: 20_000,
                enqueue_seconds: 1.0,
                end_to_end: 2.0,
                producer_exit: 2.5,
                ran: 20_000,
                calls: 140_000,
                top: Vec::new(),
                redis_memory: 5 << 20,
            }),
        )];
        let md = render(&Run {
            args: &args,
            dir: Path::new("/nonexistent"),
            server_version: None,
            chain: &chain,
            bulk: &bulk,
            skipped: &[],
        });
        // 4000 advances in 20 s; 4001 ran − 3999 delivered; 40,010 calls / 4001 ran.
        assert!(
            md.contains("| baler | 200 | 4,002 | 4,000 | 3,999 | 4,001 | 2 | 1 | 0 | 10.0 | 2.0 | 2.0 | 2.0 | +0.0 | 3.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| baler | 1.00 | 2.00 | 10000 | 7.0 | 20,000 | 2.50 | 5.0 |"),
            "{md}"
        );
        // bullmq: a quarter of baler's rate, 50 commands per job against 10.
        assert!(md.contains("| bullmq | 0.25× | 5.00× | — | — |"), "{md}");
        assert!(md.contains("| bee-queue | hung (below) |"), "{md}");
        // Every row of a table has as many cells as its header.
        for table in md.split("\n\n").filter(|b| b.starts_with('|')) {
            let cells: Vec<usize> = table.lines().map(|l| l.matches('|').count()).collect();
            assert!(cells.iter().all(|n| *n == cells[0]), "{table}");
        }
        assert!(
            md.contains("- bee-queue chain: hung: producer did not exit"),
            "{md}"
        );
    }

    #[test]
    fn counts_per_job_below_one_keep_three_significant_digits() {
        assert_eq!(per_job(14.04), "14.0");
        assert_eq!(per_job(0.0), "0.0");
        assert_eq!(per_job(0.2), "0.200");
        assert_eq!(per_job(0.010_57), "0.0106");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn memory_growth_is_measured_from_ten_seconds_in() {
        let rss: Vec<u64> = (0..30).map(|s| 1000 + s * 10).collect();
        assert_eq!(memory(&rss), Some((1100, 1290, 1290, 190)));
        // A run shorter than 10 s measures from its last sample.
        assert_eq!(memory(&[500, 700, 600]), Some((600, 600, 700, 0)));
        assert_eq!(memory(&[]), None);
    }
}
