//! Progress for a person: a live bar on a terminal, a plain status line each
//! second otherwise. Both go to stderr, so that stdout holds only the summary
//! (and `--json` stays parseable).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use baler::Stats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::ProgressMode;

/// What the status shows, as of one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Time since the run started.
    pub elapsed: Duration,
    /// Records accepted so far.
    pub produced: u64,
    /// The engine's stats.
    pub stats: Stats,
    /// Records written per second over the last second.
    pub rate: f64,
}

/// The status as one line, as the plain log prints it.
///
/// ```
/// use std::time::Duration;
/// use baler_cli::progress::{status_line, Snapshot};
///
/// let line = status_line(&Snapshot {
///     elapsed: Duration::from_secs(2),
///     produced: 1500,
///     stats: baler::Stats::default(),
///     rate: 700.0,
/// });
/// assert!(line.contains("produced   1500"), "{line}");
/// assert!(line.contains("capacity unlimited"), "{line}");
/// ```
pub fn status_line(s: &Snapshot) -> String {
    format!(
        "{:>6.1}s | produced {:>6} | buffered {:>5} | in flight {:>5} ({} batches) | written {:>6} | {:>7.0}/s | {}",
        s.elapsed.as_secs_f64(),
        s.produced,
        s.stats.buffered + s.stats.retrying,
        s.stats.in_flight,
        s.stats.in_flight_batches,
        s.stats.completed,
        s.rate,
        capacity_text(&s.stats),
    )
}

fn capacity_text(stats: &Stats) -> String {
    match stats.capacity {
        Some(rate) => format!("capacity {rate} allocated of {} needed", stats.target),
        None => format!("capacity unlimited ({} needed)", stats.target),
    }
}

/// Where progress and messages go.
#[derive(Debug)]
pub struct Progress {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Bar(ProgressBar),
    Plain,
    Off,
}

impl Progress {
    /// Progress in `mode`; `total` is the number of records when known.
    pub fn new(mode: ProgressMode, total: Option<u64>) -> Self {
        let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let kind = match mode {
            ProgressMode::Bar => Kind::Bar(bar(total)),
            ProgressMode::Auto if terminal => Kind::Bar(bar(total)),
            ProgressMode::Auto | ProgressMode::Plain => Kind::Plain,
            ProgressMode::Off => Kind::Off,
        };
        Progress { kind }
    }

    /// How often [`update`](Self::update) should be called.
    pub fn interval(&self) -> Duration {
        match self.kind {
            Kind::Bar(_) => Duration::from_millis(100),
            Kind::Plain | Kind::Off => Duration::from_secs(1),
        }
    }

    /// Shows `s`: moves the bar, or prints a status line (at most one a second).
    pub fn update(&self, s: &Snapshot) {
        match &self.kind {
            Kind::Bar(bar) => {
                bar.set_position(s.stats.completed);
                bar.set_message(format!(
                    "produced {} | buffered {} | in flight {} ({} batches) | {:.0}/s | {}",
                    s.produced,
                    s.stats.buffered + s.stats.retrying,
                    s.stats.in_flight,
                    s.stats.in_flight_batches,
                    s.rate,
                    capacity_text(&s.stats),
                ));
            }
            Kind::Plain => self.log(&status_line(s)),
            Kind::Off => {}
        }
    }

    /// Prints a message on stderr (above the bar, when there is one).
    pub fn log(&self, message: &str) {
        match &self.kind {
            Kind::Bar(bar) => bar.suspend(|| eprintln_flush(message)),
            Kind::Plain | Kind::Off => eprintln_flush(message),
        }
    }

    /// Takes the bar off the screen.
    pub fn finish(&self) {
        if let Kind::Bar(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}

fn eprintln_flush(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{message}");
    let _ = err.flush();
}

fn bar(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    let template = if total.is_some() {
        "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} written | {msg}"
    } else {
        "{spinner} {elapsed_precise} {pos} written | {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
