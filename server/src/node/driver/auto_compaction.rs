//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`,
//! etcd's flags and meanings), so that history cannot grow forever: the
//! leader proposes `Compact` when it is due, as a client would.
//!
//! - `revision` mode keeps the last N revisions: every
//!   [`REVISION_MODE_INTERVAL`] (5 minutes, as etcd) it compacts at the
//!   current revision minus N.
//! - `periodic` mode keeps a time window: it samples the revision every
//!   tenth of the window and compacts at the newest revision sampled at
//!   least one window ago (etcd's v3.3+ periodic compactor).
//!
//! A compaction refused (at or below the compacted revision) changes
//! nothing; a new leader starts sampling afresh.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::config::Retention;

/// How often `revision` mode compacts (etcd: 5 minutes).
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Samples a `periodic` window is cut into.
const PERIODIC_SAMPLES_PER_WINDOW: u32 = 10;

/// Decides when the leader compacts.
#[derive(Debug)]
pub(super) struct AutoCompaction {
    retention: Retention,
    /// (when, revision) samples, oldest first (periodic mode).
    samples: VecDeque<(Instant, u64)>,
    /// When the last sample or compaction check was made.
    last_check: Option<Instant>,
    /// The last revision proposed.
    proposed: u64,
}

impl AutoCompaction {
    pub(super) fn new(retention: Retention) -> Self {
        Self {
            retention,
            samples: VecDeque::new(),
            last_check: None,
            proposed: 0,
        }
    }

    /// The revision to compact at now, if any. `leads`: this node leads (a
    /// follower forgets its samples: it may lead later, and starts afresh);
    /// `revision`: the store's current revision (0 before revisions).
    pub(super) fn due(&mut self, now: Instant, leads: bool, revision: u64) -> Option<u64> {
        if !leads || revision == 0 {
            self.samples.clear();
            self.last_check = None;
            return None;
        }
        let interval = match self.retention {
            Retention::Off => return None,
            Retention::Revisions(_) => REVISION_MODE_INTERVAL,
            Retention::Period(window) => {
                (window / PERIODIC_SAMPLES_PER_WINDOW).max(Duration::from_millis(1))
            }
        };
        let Some(last) = self.last_check else {
            // First call as leader: start counting from now.
            self.last_check = Some(now);
            self.samples.push_back((now, revision));
            return None;
        };
        if now.duration_since(last) < interval {
            return None;
        }
        self.last_check = Some(now);
        let target = match self.retention {
            Retention::Off => return None,
            Retention::Revisions(keep) => revision.saturating_sub(keep),
            Retention::Period(window) => {
                self.samples.push_back((now, revision));
                // The newest sample at least a window old; older ones go.
                let mut floor = None;
                while let Some(&(at, sampled)) = self.samples.front() {
                    if now.duration_since(at) < window {
                        break;
                    }
                    floor = Some((at, sampled));
                    self.samples.pop_front();
                }
                // It stays the floor of the next window.
                if let Some(floor) = floor {
                    self.samples.push_front(floor);
                }
                floor.map_or(0, |(_, sampled)| sampled)
            }
        };
        if target <= self.proposed || target < 2 {
            return None;
        }
        self.proposed = target;
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_revisions_every_interval() {
        let start = Instant::now();
        let mut auto = AutoCompaction::new(Retention::Revisions(100));
        assert_eq!(auto.due(start, true, 500), None, "starts counting");
        assert_eq!(auto.due(start + Duration::from_secs(60), true, 600), None);
        assert_eq!(
            auto.due(start + REVISION_MODE_INTERVAL, true, 700),
            Some(600)
        );
        assert_eq!(
            auto.due(start + REVISION_MODE_INTERVAL * 2, true, 650),
            None,
            "not below"
        );
        assert_eq!(
            auto.due(start + REVISION_MODE_INTERVAL * 3, false, 900),
            None,
            "a follower never"
        );
    }

    #[test]
    fn periodic_mode_compacts_at_the_revision_of_one_window_ago() {
        let window = Duration::from_secs(100);
        let start = Instant::now();
        let mut auto = AutoCompaction::new(Retention::Period(window));
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(auto.due(at(0), true, 10), None);
        for seconds in (10..100).step_by(10) {
            assert_eq!(
                auto.due(at(seconds), true, 10 + seconds),
                None,
                "within the window"
            );
        }
        // A window after the first sample: compact at what it saw then.
        assert_eq!(auto.due(at(100), true, 110), Some(10));
        assert_eq!(auto.due(at(110), true, 120), Some(20));
        assert_eq!(
            auto.due(at(115), true, 125),
            None,
            "a tenth of the window between checks"
        );
    }
}
