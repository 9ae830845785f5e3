//! The summary of a run, for a person or (`--json`) a program, and the exit
//! code that goes with it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

/// A record that was produced and not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwritten {
    /// Its number in the input.
    pub seq: u64,
    /// Why it was not written.
    pub reason: String,
}

/// Why producing ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The input was read to its end.
    InputDone,
    /// A signal (`SIGINT`, `SIGTERM`) asked to stop.
    Signal(&'static str),
    /// A bad line stopped the run (`--bad-lines stop`).
    BadLine(String),
    /// Reading the input failed.
    InputFailed(String),
    /// The batcher refused a record.
    Refused(String),
}

/// Exit code: every record produced was written, and the input was clean.
pub const EXIT_OK: u8 = 0;
/// Exit code: some records produced were not written.
pub const EXIT_UNWRITTEN: u8 = 1;
/// Exit code: nothing was produced (bad flags, unreadable input, unreachable
/// database).
pub const EXIT_SETUP: u8 = 2;
/// Exit code: every record produced was written, but input lines were
/// refused or reading the input failed.
pub const EXIT_BAD_INPUT: u8 = 3;

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Where records came from.
    pub source: String,
    /// Where they went.
    pub sink: String,
    /// The table written into.
    pub table: String,
    /// Why producing ended.
    pub ended: Ended,
    /// Whether a second signal stopped the waiting.
    pub forced: bool,
    /// Records accepted for writing.
    pub produced: u64,
    /// The number (line, or synthetic id) of the last record produced: when
    /// the run stopped early, the input after it was not read.
    pub last_produced: Option<u64>,
    /// Whether records are numbered by their input line (JSON lines) rather
    /// than by a count (synthetic records).
    pub numbered_by_line: bool,
    /// Records committed to the table by this run.
    pub written: u64,
    /// For a resumed `--input FILE`: the line up to which an earlier run had
    /// written every record, where this run went on from.
    pub resumed_after: Option<u64>,
    /// Records up to `resumed_after`, read and not produced again.
    pub skipped: u64,
    /// Records produced that an earlier, killed run had written already
    /// (above its last recorded progress); the table holds each once.
    pub already_written: u64,
    /// Records whose write failed (after retries).
    pub failed: u64,
    /// Records not written because baler stopped waiting for them.
    pub abandoned: u64,
    /// Input lines refused (malformed or too large).
    pub rejected_lines: u64,
    /// Batches dispatched (retries count again).
    pub batches: u64,
    /// Mean records per batch.
    pub mean_batch_size: f64,
    /// Mean time to write one batch.
    pub mean_write: Option<Duration>,
    /// From start to end.
    pub elapsed: Duration,
    /// Median latency per record, from submit to commit.
    pub p50: Option<Duration>,
    /// 99th percentile of the same.
    pub p99: Option<Duration>,
    /// Records produced and not written, by number.
    pub unwritten: Vec<Unwritten>,
    /// Where they were saved.
    pub replay_file: Option<PathBuf>,
    /// Why saving them failed, if it did.
    pub replay_error: Option<String>,
    /// Whether writes were still running when baler exited (their records
    /// are in the replay file and may be in the table too).
    pub unsettled: bool,
    /// Rows in the table at the end (this and earlier runs).
    pub table_rows: Option<u64>,
}

impl Summary {
    /// Records per second written.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.written as f64 / secs
        } else {
            0.0
        }
    }

    /// Whether every record produced was written.
    pub fn all_written(&self) -> bool {
        self.unwritten.is_empty() && self.written + self.already_written == self.produced
    }

    /// The process's exit code: [`EXIT_OK`], [`EXIT_UNWRITTEN`] or
    /// [`EXIT_BAD_INPUT`].
    pub fn exit_code(&self) -> u8 {
        if !self.all_written() {
            EXIT_UNWRITTEN
        } else if self.rejected_lines > 0
            || matches!(self.ended, Ended::InputFailed(_) | Ended::Refused(_))
        {
            EXIT_BAD_INPUT
        } else {
            EXIT_OK
        }
    }

    fn ended_text(&self) -> String {
        match &self.ended {
            Ended::InputDone => "end of input".to_owned(),
            Ended::Signal(name) => (*name).to_owned(),
            Ended::BadLine(why) => format!("bad input: {why}"),
            Ended::InputFailed(why) => format!("input failed: {why}"),
            Ended::Refused(why) => format!("record refused: {why}"),
        }
    }

    /// The summary for a person.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let ms = |d: Option<Duration>| {
            d.map_or_else(
                || "-".to_owned(),
                |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
            )
        };
        let _ = writeln!(
            out,
            "summary ({} -> {}, table {})",
            self.source, self.sink, self.table
        );
        let mut stopped = format!("  stopped      {}", self.ended_text());
        if self.forced {
            stopped.push_str(", then a second signal: stopped waiting");
        }
        let _ = writeln!(out, "{stopped}");
        if let Some(line) = self.resumed_after {
            let _ = writeln!(
                out,
                "  resumed      after line {line}: {} records there were written by an earlier \
                 run, not read again",
                self.skipped
            );
        }
        let _ = writeln!(out, "  produced     {} records", self.produced);
        if self.ended != Ended::InputDone {
            match self.last_produced {
                Some(n) => {
                    let what = if self.numbered_by_line {
                        "line"
                    } else {
                        "record"
                    };
                    let _ = writeln!(
                        out,
                        "  resume       after {what} {n}: the input after it was not read"
                    );
                }
                None => {
                    let _ = writeln!(out, "  resume       from the start: no record was produced");
                }
            }
        }
        if self.already_written > 0 {
            let _ = writeln!(
                out,
                "  written      {} ({} more were in the table already, from an earlier run)",
                self.written, self.already_written
            );
        } else {
            let _ = writeln!(out, "  written      {}", self.written);
        }
        let _ = writeln!(
            out,
            "  failed       {} (write errors){}",
            self.failed,
            if self.abandoned > 0 {
                format!(
                    ", {} not written when baler stopped waiting",
                    self.abandoned
                )
            } else {
                String::new()
            }
        );
        if self.rejected_lines > 0 {
            let _ = writeln!(out, "  rejected     {} input line(s)", self.rejected_lines);
        }
        let _ = writeln!(
            out,
            "  batches      {} (mean size {:.1}, mean write {})",
            self.batches,
            self.mean_batch_size,
            ms(self.mean_write)
        );
        let _ = writeln!(
            out,
            "  elapsed      {:.2}s ({:.0} records/s)",
            self.elapsed.as_secs_f64(),
            self.throughput()
        );
        let _ = writeln!(
            out,
            "  latency      p50 {}, p99 {} (per record, submit to commit)",
            ms(self.p50),
            ms(self.p99)
        );
        if let Some(rows) = self.table_rows {
            let _ = writeln!(out, "  table rows   {rows}");
        }
        if !self.unwritten.is_empty() {
            let shown: Vec<String> = self
                .unwritten
                .iter()
                .take(10)
                .map(|u| u.seq.to_string())
                .collect();
            let more = self.unwritten.len().saturating_sub(shown.len());
            let _ = writeln!(
                out,
                "  not written  {} record(s): {}{}",
                self.unwritten.len(),
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            if let Some(first) = self.unwritten.first() {
                let _ = writeln!(out, "               first reason: {}", first.reason);
            }
            match (&self.replay_file, &self.replay_error) {
                (Some(path), None) => {
                    let _ = writeln!(
                        out,
                        "  replay       saved to {0}; write them with: baler ingest --input {0} ...",
                        path.display()
                    );
                }
                (_, Some(e)) => {
                    let _ = writeln!(out, "  replay       NOT saved: {e}");
                }
                (None, None) => {}
            }
            if self.unsettled {
                let _ = writeln!(
                    out,
                    "  warning      writes were still running when baler exited: records in the \
                     replay file may also be in the table"
                );
            }
        }
        if self.all_written() {
            if self.already_written > 0 {
                let _ = writeln!(
                    out,
                    "OK: produced == written ({} + {} already in the table)",
                    self.written, self.already_written
                );
            } else {
                let _ = writeln!(out, "OK: produced == written ({})", self.written);
            }
        } else {
            let _ = writeln!(
                out,
                "NOT WRITTEN: {} of {} produced records",
                self.produced
                    .saturating_sub(self.written + self.already_written),
                self.produced
            );
        }
        out
    }

    /// The summary as one JSON object. Figures are rounded to what they can
    /// tell: times to the microsecond (`*_ms` to 3 decimals, `elapsed_s` to
    /// 6), the mean batch size to 2 decimals, the rate to 1.
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| round(d.as_secs_f64() * 1e3, 3));
        json!({
            "source": self.source,
            "sink": self.sink,
            "table": self.table,
            "stopped": self.ended_text(),
            "forced": self.forced,
            "produced": self.produced,
            "last_produced": self.last_produced,
            "written": self.written,
            "resumed_after": self.resumed_after,
            "skipped": self.skipped,
            "already_written": self.already_written,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "rejected_lines": self.rejected_lines,
            "batches": self.batches,
            "mean_batch_size": round(self.mean_batch_size, 2),
            "mean_write_ms": ms(self.mean_write),
            "elapsed_s": round(self.elapsed.as_secs_f64(), 6),
            "records_per_second": round(self.throughput(), 1),
            "latency_p50_ms": ms(self.p50),
            "latency_p99_ms": ms(self.p99),
            "table_rows": self.table_rows,
            "unwritten": self.unwritten.iter().map(|u| u.seq).collect::<Vec<_>>(),
            "replay_file": self.replay_file.as_ref().map(|p| p.display().to_string()),
            "replay_error": self.replay_error,
            "unsettled": self.unsettled,
            "all_written": self.all_written(),
            "exit_code": self.exit_code(),
        })
    }
}

/// `value` rounded to `decimals` places, so that JSON shows `0.667`, not
/// `0.6669999999999999`: the nearest double to the rounded decimal prints as
/// that decimal.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let rounded = (value * scale).round() / scale;
    // Beyond 2^53 the product has no fraction left to round; keep the value.
    if rounded.is_finite() {
        rounded
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::round;

    #[test]
    fn rounded_figures_print_as_short_decimals() {
        assert_eq!(
            serde_json::json!(round(0.6669999999999999, 3)).to_string(),
            "0.667"
        );
        assert_eq!(serde_json::json!(round(2.0 / 3.0, 2)).to_string(), "0.67");
        assert_eq!(
            serde_json::json!(round(109703.4567, 1)).to_string(),
            "109703.5"
        );
        assert_eq!(serde_json::json!(round(100.0, 2)).to_string(), "100.0");
    }

    #[test]
    fn huge_figures_are_kept_not_turned_into_infinity() {
        assert_eq!(round(f64::MAX, 6), f64::MAX);
        assert!(round(f64::NAN, 3).is_nan());
    }
}
