//! When each folder is listed next: at its poll interval while it syncs;
//! after its own backoff when it fails transiently or is rate limited;
//! rarely while the configuration names something the cloud refuses or
//! lacks; never again after a fatal error; at once when a login finishes.
//! One folder's trouble never moves another folder's time.

use std::time::{Duration, Instant};

use crate::error::{Kind, RARELY, Retry};
use crate::sync::engine::CycleReport;

/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The retry delay after a failure: 10 s doubling to 5 min, but never
/// shorter than a server's `Retry-After` (`asked`).
fn next_backoff(prev: Option<Duration>, asked: Option<Duration>) -> Duration {
    let next = prev.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
    asked.map_or(next, |a| next.max(a))
}

#[derive(Debug)]
struct FolderTimes {
    key: String,
    poll: Duration,
    /// When to list it next; `None`: not until a restart.
    due: Option<Instant>,
    backoff: Option<Duration>,
    /// What it is failing with, while it fails.
    failing: Option<Kind>,
}

/// Every folder's next listing time.
#[derive(Debug)]
pub struct Schedule {
    folders: Vec<FolderTimes>,
    /// Backoff after whole cycles failed (the store, a maildir).
    cycle_backoff: Option<Duration>,
}

impl Schedule {
    /// Folders `keys` with their poll intervals, all due at `now`.
    pub fn new(keys: Vec<String>, polls: &[Duration], now: Instant) -> Schedule {
        let folders = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| FolderTimes {
                key,
                poll: polls.get(i).copied().unwrap_or(Duration::from_secs(15)),
                due: Some(now),
                backoff: None,
                failing: None,
            })
            .collect();
        Schedule {
            folders,
            cycle_backoff: None,
        }
    }

    /// Per folder: list it now.
    pub fn due(&self, now: Instant) -> Vec<bool> {
        self.folders
            .iter()
            .map(|f| f.due.is_some_and(|d| d <= now))
            .collect()
    }

    /// The earliest time a folder is due, if any will ever be.
    pub fn next(&self) -> Option<Instant> {
        self.folders.iter().filter_map(|f| f.due).min()
    }

    /// What each folder is failing with, while it fails.
    #[cfg(test)]
    pub fn failing(&self) -> Vec<Option<Kind>> {
        self.folders.iter().map(|f| f.failing).collect()
    }

    /// A login finished (or an account's login state changed): the
    /// folders waiting for a login, and those that sync, are listed at
    /// once; one waiting out a backoff or a rare retry keeps its time (a
    /// login does not bring a missing folder back).
    pub fn login_changed(&mut self, now: Instant) {
        for f in &mut self.folders {
            if f.due.is_some() && matches!(f.failing, None | Some(Kind::NeedsLogin)) {
                f.due = Some(now);
            }
        }
    }

    /// Takes in a cycle's outcome at `now`: the folders in `listed` (asked
    /// to list this cycle) are due again after their poll interval; each
    /// folder that failed is due as its error's kind says ([`Kind::retry`];
    /// `jitter` spreads backoffs); a whole cycle that failed (`None`) has
    /// every folder retried after the cycle backoff.
    pub fn after_cycle(
        &mut self,
        listed: &[bool],
        report: Option<&CycleReport>,
        now: Instant,
        jitter: &mut dyn FnMut(Duration) -> Duration,
    ) {
        for (f, _) in self.folders.iter_mut().zip(listed).filter(|(_, l)| **l) {
            if f.due.is_some() {
                f.due = Some(now + f.poll);
            }
        }
        let Some(report) = report else {
            let b = next_backoff(self.cycle_backoff, None);
            self.cycle_backoff = Some(b);
            let at = now + jitter(b);
            for f in self.folders.iter_mut().filter(|f| f.due.is_some()) {
                f.due = Some(at);
            }
            return;
        };
        self.cycle_backoff = None;
        let kinds = report.folder_kinds(self.folders.len());
        for (i, (f, kind)) in self.folders.iter_mut().zip(kinds).enumerate() {
            match kind {
                Some(kind) => f.failed(kind, now, jitter),
                None if report.listed.get(i).copied().unwrap_or(false) => f.recovered(),
                None => {}
            }
        }
    }
}

impl FolderTimes {
    fn failed(&mut self, kind: Kind, now: Instant, jitter: &mut dyn FnMut(Duration) -> Duration) {
        if self.due.is_none() {
            return;
        }
        let news = self.failing.map(Kind::name) != Some(kind.name());
        self.failing = Some(kind);
        match kind.retry() {
            Retry::Backoff { at_least } => {
                let b = next_backoff(self.backoff, at_least);
                self.backoff = Some(b);
                let wait = jitter(b).max(at_least.unwrap_or_default());
                self.due = Some(now + wait);
                if news {
                    tracing::info!(folder = %self.key, "{}: trying again in {} s", kind.name(), wait.as_secs());
                }
            }
            Retry::AfterLogin => {
                self.backoff = None;
                if news {
                    tracing::info!(folder = %self.key, "waiting for a login");
                }
            }
            Retry::Rarely => {
                self.backoff = None;
                self.due = Some(now + RARELY);
                if news {
                    tracing::error!(
                        folder = %self.key,
                        "cannot sync this folder ({}); the others go on; trying again every {} min",
                        kind.name(),
                        RARELY.as_secs() / 60
                    );
                }
            }
            Retry::Never => {
                self.due = None;
                tracing::error!(folder = %self.key, "cannot sync this folder ({}) until a restart; the others go on", kind.name());
            }
        }
    }

    fn recovered(&mut self) {
        self.backoff = None;
        if let Some(k) = self.failing.take()
            && !matches!(k, Kind::Transient | Kind::RateLimited { .. })
        {
            tracing::info!(folder = %self.key, "syncs again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{CloudError, ErrorKind};
    use crate::sync::engine::{FolderError, Phase};

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn report(errors: &[(usize, ErrorKind, Option<u64>)], listed: &[bool]) -> CycleReport {
        CycleReport {
            cloud_errors: errors
                .iter()
                .map(|&(folder, kind, ra)| FolderError {
                    folder,
                    during: Phase::Listing,
                    error: CloudError {
                        retry_after: ra.map(S),
                        ..CloudError::new("f", kind, "x")
                    },
                })
                .collect(),
            listed: listed.to_vec(),
            ..CycleReport::default()
        }
    }

    fn no_jitter(d: Duration) -> Duration {
        d
    }

    #[test]
    fn backoff_doubles_caps_and_honours_retry_after() {
        assert_eq!(next_backoff(None, None), S(10));
        assert_eq!(next_backoff(Some(S(10)), None), S(20));
        assert_eq!(next_backoff(Some(S(200)), None), S(300));
        assert_eq!(next_backoff(None, Some(S(90))), S(90));
        assert_eq!(next_backoff(Some(S(160)), Some(S(90))), S(300));
    }

    #[test]
    fn each_folder_waits_as_its_own_error_says() {
        let t0 = Instant::now();
        let keys = (0..5).map(|i| format!("f{i}")).collect();
        let mut s = Schedule::new(keys, &[S(15); 5], t0);
        assert_eq!(s.due(t0), [true; 5]);
        // 0 syncs; 1 is rate limited for 300 s; 2 waits for a login; 3 is
        // not found; 4 is fatal.
        let r = report(
            &[
                (1, ErrorKind::Retry, Some(300)),
                (2, ErrorKind::Auth, None),
                (3, ErrorKind::NotFound, None),
                (4, ErrorKind::Fatal, None),
            ],
            &[true, false, false, false, false],
        );
        s.after_cycle(&[true; 5], Some(&r), t0, &mut no_jitter);
        let at = |secs| t0 + S(secs);
        assert_eq!(s.due(at(14)), [false; 5]);
        assert_eq!(s.due(at(15)), [true, false, true, false, false]);
        assert_eq!(s.due(at(300)), [true, true, true, false, false]);
        assert_eq!(s.due(at(600)), [true, true, true, true, false]);
        assert_eq!(
            s.due(at(1_000_000)),
            [true, true, true, true, false],
            "fatal stops it"
        );
        assert_eq!(s.next(), Some(at(15)));
        assert_eq!(s.failing()[3], Some(Kind::NotFound));

        // A login: the folders that sync or wait for one are listed at
        // once; the others keep their times.
        s.login_changed(at(20));
        assert_eq!(s.due(at(20)), [true, false, true, false, false]);
    }

    #[test]
    fn transient_failures_back_off_and_a_success_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(vec!["a".into(), "b".into()], &[S(15), S(15)], t0);
        let mut now = t0;
        for wait in [10, 20, 40, 80, 160, 300, 300] {
            let r = report(&[(0, ErrorKind::Retry, None)], &[false, true]);
            s.after_cycle(&[true, true], Some(&r), now, &mut no_jitter);
            assert!(!s.due(now + S(wait) - S(1))[0]);
            assert!(s.due(now + S(wait))[0]);
            // The other folder keeps its poll.
            assert!(s.due(now + S(15))[1]);
            now += S(wait);
        }
        let ok = report(&[], &[true, true]);
        s.after_cycle(&[true, true], Some(&ok), now, &mut no_jitter);
        assert_eq!(s.failing(), [None, None]);
        let r = report(&[(0, ErrorKind::Retry, None)], &[false, true]);
        s.after_cycle(&[true, true], Some(&r), now, &mut no_jitter);
        assert!(s.due(now + S(10))[0], "back to the first backoff");
    }

    #[test]
    fn a_folder_not_listed_keeps_its_time_and_a_failed_cycle_delays_all() {
        let t0 = Instant::now();
        let mut s = Schedule::new(vec!["a".into(), "b".into()], &[S(15), S(60)], t0);
        s.after_cycle(
            &[true, true],
            Some(&report(&[], &[true, true])),
            t0,
            &mut no_jitter,
        );
        // A watcher cycle at 5 s lists nothing: times stay.
        s.after_cycle(
            &[false, false],
            Some(&report(&[], &[false, false])),
            t0 + S(5),
            &mut no_jitter,
        );
        assert_eq!(s.due(t0 + S(15)), [true, false]);
        // A whole cycle failing: both after the cycle backoff.
        s.after_cycle(&[true, false], None, t0 + S(15), &mut no_jitter);
        assert_eq!(s.due(t0 + S(24)), [false, false]);
        assert_eq!(s.due(t0 + S(25)), [true, true]);
    }
}
