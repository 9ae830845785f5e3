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
//! submitters for a short window ([`Settings::probe`]), which runs at the
//! same speed whenever the machine is quiet. A measurement counts when the
//! probes right before and right after it both reach [`STEADY`] of the
//! fastest probe of the last [`MEMORY`]. (Of the last few minutes rather than
//! of the whole run, so that a machine that became slower for good, rather
//! than for a stretch, is the new normal after a while instead of a reason
//! to take everything again.) Otherwise the machine was slow around it: the
//! harness waits until a probe is steady again (at most [`WAIT`]) and takes
//! the measurement again, at most [`RETAKES`] times, after which the last
//! take counts as it is. The document reports how many were taken again and
//! how many were kept slow.
//!
//! The probe never changes a number: a measurement is either taken again in
//! full or kept as measured.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::contenders;
use crate::workloads::Runs;
use crate::Settings;

/// A probe is steady at this fraction of the fastest probe of the run or
/// more. Quiet probes vary by about 10%; a slow stretch takes them to about
/// 40%.
pub const STEADY: f64 = 0.75;

/// Times a measurement is taken again when the machine was slow around it.
pub const RETAKES: usize = 3;

/// How long to wait for a steady probe before taking a measurement again.
pub const WAIT: Duration = Duration::from_secs(30);

/// How far back the fastest probe is remembered.
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
    /// Takes thrown away because a probe around them was slow.
    pub retaken: usize,
    /// Measurements taken more than once.
    pub retaken_measurements: usize,
    /// Measurements kept although a probe around their last take was slow.
    pub kept_slow: usize,
    /// The fastest probe of the run, operations per second.
    pub fastest: f64,
    /// Probes taken.
    pub probes: usize,
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
    /// Probes of the last [`MEMORY`]: when, and operations per second.
    recent: VecDeque<(Instant, f64)>,
    tally: Tally,
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
            steady.probe();
        }
        eprintln!(
            "steady: the fastest of 5 probes: {:.0} ops/s (a probe is steady from {:.0})",
            steady.fastest(),
            steady.fastest() * STEADY
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
            tally: Tally::default(),
        }
    }

    /// One probe; records the fastest; returns whether it was steady.
    fn probe(&mut self) -> bool {
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
        self.recent.push_back((now, speed));
        self.tally.probes += 1;
        self.tally.fastest = self.tally.fastest.max(speed);
        let steady = speed >= STEADY * self.fastest();
        self.last = Some((Instant::now(), steady));
        steady
    }

    /// The fastest probe of the last [`MEMORY`].
    fn fastest(&self) -> f64 {
        self.recent.iter().map(|&(_, s)| s).fold(0.0, f64::max)
    }

    /// Probes until one is steady or [`WAIT`] has passed (at least once).
    fn wait(&mut self) {
        let until = Instant::now() + self.wait;
        loop {
            std::thread::sleep(self.pause);
            if self.probe() || Instant::now() >= until {
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
                _ => self.probe(),
            };
            let result = measure();
            let after = self.probe();
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
        self.tally
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
        let mut s = scripted(&[100.0, 95.0, 98.0]);
        let (takes, m) = counting();
        assert_eq!(s.measure(m), Ok(1));
        assert_eq!(*takes.borrow(), 1);
        let t = s.tally();
        assert_eq!((t.measurements, t.retaken, t.kept_slow), (1, 0, 0));
    }

    #[test]
    fn a_slow_probe_after_a_take_makes_it_taken_again() {
        // Before: 100 (steady). After the first take: 40 (slow). The wait's
        // probe and the one after the second take: 100 (steady).
        let mut s = scripted(&[100.0, 40.0, 100.0]);
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
        // The fastest probe so far is 100; the one before the take, 50.
        let mut s = scripted(&[100.0, 50.0, 100.0]);
        assert!(s.probe(), "the first probe is the fastest");
        assert!(!s.probe(), "50 is below 75% of 100");
        let (takes, m) = counting();
        // Before: 50 (slow). After the first take, the wait's probe and after
        // the second: 100.
        assert_eq!(s.measure(m), Ok(2));
        assert_eq!(*takes.borrow(), 2);
    }

    #[test]
    fn a_machine_that_stays_slow_keeps_the_last_take() {
        let mut s = scripted(&[100.0, 10.0]);
        assert!(s.probe());
        let (takes, m) = counting();
        assert_eq!(s.measure(m), Ok(RETAKES + 1));
        assert_eq!(*takes.borrow(), RETAKES + 1);
        let t = s.tally();
        assert_eq!((t.retaken, t.kept_slow, t.measurements), (RETAKES, 1, 1));
    }

    #[test]
    fn a_failed_measurement_is_not_taken_again() {
        let mut s = scripted(&[100.0, 10.0]);
        assert!(s.probe());
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
        let mut s = scripted(&[100.0, 100.0 * STEADY, 100.0 * STEADY - 1.0]);
        assert!(s.probe());
        assert!(s.probe());
        assert!(!s.probe());
        assert_eq!(s.tally().fastest, 100.0);
        assert_eq!(s.tally().probes, 3);
    }
}
