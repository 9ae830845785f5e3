//! Keeps this machine's slow stretches out of the tables.
//!
//! On a shared machine, other work can slow everything by two to three
//! times for ten seconds and more at a time. A median over interleaved
//! repetitions absorbs a stretch that hits each contender in a minority of
//! its repetitions; it does not when a stretch happens to hit one contender's
//! row more often than its neighbours', and then the stretch, not the
//! contenders, decides a ratio.
//!
//! So every timed measurement is bracketed by a probe: the floor at 256
//! submitters for a short window ([`Settings::probe`]), which needs both
//! cores and runs at about the same speed whenever the machine is quiet. A
//! measurement counts when the probes right before and right after it both
//! reach [`STEADY`] of the reference: the median of the bracketing probes of
//! the last [`MEMORY`]. Otherwise the machine was slow around it: the harness
//! waits until a probe is steady again (at most [`WAIT`]) and takes the
//! measurement again, at most [`RETAKES`] times, after which the last take
//! counts as it is. The document reports how many were taken again and how
//! many were kept slow.
//!
//! The reference is a median, not the fastest probe: a short probe is now and
//! then far faster than usual (by 40% on this machine), and a bar set by
//! such a probe calls the quiet machine slow. It is a median of the last few
//! minutes rather than of the whole run so that a machine that became slower
//! for good, rather than for a stretch, is the new normal after a while
//! instead of a reason to take everything again. The probes taken while
//! waiting are compared with it but do not move it, so that a long wait does
//! not lower the bar it waits for.
//!
//! The probe never changes a number: a measurement is either taken again in
//! full or kept as measured.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::contenders;
use crate::workloads::Runs;
use crate::Settings;

/// A probe is steady at this fraction of the reference or more. Quiet probes
/// vary by about 15% around it; a slow stretch takes them to about 40%.
pub const STEADY: f64 = 0.75;

/// Times a measurement is taken again when the machine was slow around it.
pub const RETAKES: usize = 3;

/// How long to wait for a steady probe before taking a measurement again.
pub const WAIT: Duration = Duration::from_secs(30);

/// How far back the probes that make the reference go.
pub const MEMORY: Duration = Duration::from_secs(180);

/// A probe this recent serves as the next measurement's probe before.
const RECENT: Duration = Duration::from_secs(1);

/// Submitters of the probe.
pub const PROBE_SUBMITTERS: usize = 256;

/// Counts for the document.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Timed measurements that counted.
    pub measurements: usize,
    /// Takes set aside because a probe around them was slow.
    pub retaken: usize,
    /// Measurements taken more than once.
    pub retaken_measurements: usize,
    /// Measurements kept although a probe around their last take was slow.
    pub kept_slow: usize,
    /// Probes taken, around measurements and while waiting.
    pub probes: usize,
    /// The median of the probes around measurements, operations per second.
    pub median: f64,
}

/// The probe and what it has seen.
pub struct Steady {
    /// Takes one probe: operations per second.
    probe: Box<dyn FnMut() -> Result<f64, String>>,
    /// The longest wait for a steady probe, and the pause between probes
    /// meanwhile.
    wait: Duration,
    pause: Duration,
    /// When the most recent probe ended and whether it was steady: it serves
    /// as the next measurement's probe before, if it is recent.
    last: Option<(Instant, bool)>,
    /// The probes around measurements of the last [`MEMORY`]: when, and
    /// operations per second.
    recent: VecDeque<(Instant, f64)>,
    /// Every probe around a measurement, for the run's median.
    all: Vec<f64>,
    tally: Tally,
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl Steady {
    /// Takes a few probes to learn how fast the quiet machine is.
    pub fn new(settings: &Settings) -> Steady {
        let floor: Box<dyn Runs> = contenders::floor();
        let window = settings.probe;
        let mut steady = Steady::with_probe(
            move || {
                floor
                    .throughput(PROBE_SUBMITTERS, window)
                    .map(|t| t.ops_per_sec)
            },
            WAIT,
            Duration::from_millis(250),
        );
        for _ in 0..5 {
            steady.probe(true);
        }
        let reference = steady.reference().unwrap_or(0.0);
        eprintln!(
            "steady: the median of 5 probes: {reference:.0} ops/s (a probe is steady from {:.0})",
            reference * STEADY
        );
        steady
    }

    fn with_probe(
        probe: impl FnMut() -> Result<f64, String> + 'static,
        wait: Duration,
        pause: Duration,
    ) -> Steady {
        Steady {
            probe: Box::new(probe),
            wait,
            pause,
            last: None,
            recent: VecDeque::new(),
            all: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// The median of the probes around measurements of the last [`MEMORY`].
    fn reference(&self) -> Option<f64> {
        median(self.recent.iter().map(|&(_, s)| s))
    }

    /// One probe, compared with the reference (steady when there is none
    /// yet); one around a measurement (`around`) also joins the reference.
    fn probe(&mut self, around: bool) -> bool {
        self.tally.probes += 1;
        let speed = match (self.probe)() {
            Ok(speed) => speed,
            // A probe that fails says nothing about the machine: treat it
            // as steady rather than retake measurements because of it.
            Err(e) => {
                eprintln!("steady: a probe failed: {e}");
                self.last = Some((Instant::now(), true));
                return true;
            }
        };
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > MEMORY)
        {
            self.recent.pop_front();
        }
        let reference = self.reference();
        let steady = reference.is_none_or(|r| speed >= STEADY * r);
        if !steady && around {
            eprintln!(
                "steady: a slow probe: {speed:.0} ops/s, the reference {:.0}",
                reference.unwrap_or(0.0)
            );
        }
        if around {
            self.recent.push_back((now, speed));
            self.all.push(speed);
        }
        self.last = Some((Instant::now(), steady));
        steady
    }

    /// Probes until one is steady or [`WAIT`] has passed (at least once).
    fn wait(&mut self) {
        let start = Instant::now();
        let until = start + self.wait;
        let mut probes = 0;
        loop {
            std::thread::sleep(self.pause);
            probes += 1;
            let steady = self.probe(false);
            if steady || Instant::now() >= until {
                eprintln!(
                    "steady: {} after {:.1?} and {probes} probes",
                    if steady { "steady" } else { "still slow" },
                    start.elapsed()
                );
                return;
            }
        }
    }

    /// Runs `measure`, and again while the machine was slow around it.
    pub fn measure<T>(
        &mut self,
        mut measure: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let mut take = 0;
        loop {
            let before = match self.last {
                Some((at, steady)) if at.elapsed() < RECENT => steady,
                _ => self.probe(true),
            };
            let result = measure();
            let after = self.probe(true);
            let steady = (before && after) || result.is_err();
            if steady || take == RETAKES {
                self.tally.measurements += 1;
                self.tally.retaken_measurements += usize::from(take > 0);
                if !steady {
                    eprintln!("steady: the machine stayed slow; keeping this take");
                    self.tally.kept_slow += 1;
                }
                return result;
            }
            take += 1;
            self.tally.retaken += 1;
            eprintln!("steady: slow around this take ({take} of {RETAKES} retakes); waiting");
            self.wait();
        }
    }

    pub fn tally(&self) -> Tally {
        Tally {
            median: median(self.all.iter().copied()).unwrap_or(0.0),
            ..self.tally
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// A `Steady` whose probes return `speeds` in turn (then the last one
    /// again), and which does not wait.
    fn scripted(speeds: &[f64]) -> Steady {
        let speeds = speeds.to_vec();
        let mut i = 0;
        Steady::with_probe(
            move || {
                let s = speeds[i.min(speeds.len() - 1)];
                i += 1;
                Ok(s)
            },
            Duration::ZERO,
            Duration::ZERO,
        )
    }

    /// `n` probes of 100 ops/s around measurements, then `rest`.
    fn after_quiet(n: usize, rest: &[f64]) -> Steady {
        let mut speeds = vec![100.0; n];
        speeds.extend_from_slice(rest);
        let mut s = scripted(&speeds);
        for _ in 0..n {
            assert!(s.probe(true));
        }
        s
    }

    /// A measurement that counts its takes and returns the take's number.
    fn counting() -> (Rc<RefCell<usize>>, impl FnMut() -> Result<usize, String>) {
        let takes = Rc::new(RefCell::new(0));
        let t = takes.clone();
        (takes, move || {
            *t.borrow_mut() += 1;
            Ok(*t.borrow())
        })
    }

    #[test]
    fn a_measurement_between_steady_probes_is_taken_once() {
        let mut s = after_quiet(5, &[95.0, 98.0]);
        let (takes, m) = counting();
        assert_eq!(s.measure(m), Ok(1));
        assert_eq!(*takes.borrow(), 1);
        let t = s.tally();
        assert_eq!((t.measurements, t.retaken, t.kept_slow), (1, 0, 0));
    }

    #[test]
    fn a_slow_probe_after_a_take_makes_it_taken_again() {
        // After the first take: 40 (slow). The wait's probe and the one
        // after the second take: 100 (steady).
        let mut s = after_quiet(5, &[40.0, 100.0]);
        let (takes, m) = counting();
        assert_eq!(s.measure(m), Ok(2), "the second take counts");
        assert_eq!(*takes.borrow(), 2);
        let t = s.tally();
        assert_eq!(
            (
                t.measurements,
                t.retaken_measurements,
                t.retaken,
                t.kept_slow
            ),
            (1, 1, 1, 0)
        );
    }

    #[test]
    fn a_slow_probe_before_a_take_makes_it_taken_again() {
        let mut s = after_quiet(5, &[50.0, 100.0]);
        assert!(!s.probe(true), "50 is below 75% of 100");
        let (takes, m) = counting();
        // After the first take, the wait's probe and after the second: 100.
        assert_eq!(s.measure(m), Ok(2));
        assert_eq!(*takes.borrow(), 2);
    }

    #[test]
    fn a_machine_that_stays_slow_keeps_the_last_take() {
        // Nine quiet probes keep the median at 100 through the four slow
        // probes after the takes.
        let mut s = after_quiet(9, &[10.0]);
        let (takes, m) = counting();
        assert_eq!(s.measure(m), Ok(RETAKES + 1));
        assert_eq!(*takes.borrow(), RETAKES + 1);
        let t = s.tally();
        assert_eq!((t.retaken, t.kept_slow, t.measurements), (RETAKES, 1, 1));
    }

    #[test]
    fn a_machine_slower_for_good_becomes_the_reference() {
        // One quiet probe, then the machine runs at 50 from then on: once
        // the slow probes are most of the reference (after the second take),
        // they are steady.
        let mut s = after_quiet(1, &[50.0]);
        let (_, m) = counting();
        assert_eq!(s.measure(m), Ok(3), "kept after two takes, not four");
        assert_eq!(s.tally().kept_slow, 0);
    }

    #[test]
    fn probes_taken_while_waiting_do_not_lower_the_reference() {
        let mut s = after_quiet(3, &[10.0]);
        for _ in 0..10 {
            assert!(!s.probe(false));
        }
        assert_eq!(s.reference(), Some(100.0));
    }

    #[test]
    fn one_fast_probe_does_not_raise_the_bar() {
        let mut s = after_quiet(4, &[200.0, 80.0]);
        assert!(s.probe(true), "a fast probe is steady");
        assert!(s.probe(true), "80 is above 75% of the median, 100");
    }

    #[test]
    fn a_failed_measurement_is_not_taken_again() {
        let mut s = after_quiet(3, &[10.0]);
        let mut takes = 0;
        let r: Result<(), String> = s.measure(|| {
            takes += 1;
            Err("no".into())
        });
        assert_eq!(r, Err("no".into()));
        assert_eq!(takes, 1);
    }

    #[test]
    fn a_probe_at_the_threshold_is_steady_and_one_below_is_not() {
        let mut s = after_quiet(3, &[100.0 * STEADY, 100.0 * STEADY - 0.1]);
        assert!(s.probe(false));
        assert!(!s.probe(false));
        assert_eq!(s.tally().median, 100.0);
        assert_eq!(s.tally().probes, 5);
    }
}
