//! When to try a failing peer again, and when to say so in the log.
//!
//! Attempts back off exponentially, and the log gets one line per report
//! interval (itself doubling) carrying how many failures it stands for, so
//! a wrong `--peers` address costs a few lines, not one per heartbeat. A
//! peer that accepts a stream and then refuses its messages (an address that
//! reaches another node) is not reachable: the peer counts as reachable
//! again only once a stream opened after the failures has stayed open for
//! [`RECOVERY_CONFIRM_AFTER`]. Pure: every method takes the current time.

use std::time::{Duration, Instant};

/// First wait after a failed attempt before a peer is tried again.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest wait between attempts to reach a failing peer; the wait doubles
/// from [`RECONNECT_BACKOFF_MIN`] up to this.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a stream opened after failures must stay open before the peer
/// counts as reachable again (a refusing peer ends it within a round trip).
pub const RECOVERY_CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// Time between the first two "unreachable" lines about one peer (or two
/// lines about refused peer streams); it doubles with each line.
pub const UNREACHABLE_REPORT_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest time between two such lines.
pub const UNREACHABLE_REPORT_INTERVAL_MAX: Duration = Duration::from_secs(60);

/// A log line the caller should write about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The peer cannot be reached (or refuses us).
    Unreachable {
        /// Failures since the last line, this one included (the others were
        /// not logged).
        failures: u64,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// A stream opened after failures has stayed open: the peer is back.
    Reachable {
        /// Failures during the outage.
        failures: u64,
        /// From the first failure to now.
        unreachable_for: Duration,
    },
}

/// When a repeated event is worth a log line: the first at once, then one
/// per report interval, which doubles from
/// [`UNREACHABLE_REPORT_INTERVAL_MIN`] up to
/// [`UNREACHABLE_REPORT_INTERVAL_MAX`]; each line counts the events it
/// stands for.
#[derive(Debug, Clone, Copy)]
pub struct ReportSchedule {
    unreported: u64,
    report_at: Option<Instant>,
    report_interval: Duration,
}

impl Default for ReportSchedule {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportSchedule {
    /// Nothing seen yet: the first event is reported.
    pub fn new() -> Self {
        Self {
            unreported: 0,
            report_at: None,
            report_interval: UNREACHABLE_REPORT_INTERVAL_MIN,
        }
    }

    /// One more event at `now`: the count of events the line stands for
    /// when a line is due, else `None`.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.report_at.is_some_and(|report_at| now < report_at) {
            return None;
        }
        self.report_at = Some(now + self.report_interval);
        self.report_interval = (self.report_interval * 2).min(UNREACHABLE_REPORT_INTERVAL_MAX);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// An outage: failures since the peer was last known reachable.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failures: u64,
    reports: ReportSchedule,
}

/// The reconnect state of one peer.
#[derive(Debug)]
pub struct Reconnect {
    retry_at: Option<Instant>,
    delay: Duration,
    outage: Option<Outage>,
    /// When the stream opened during an outage opened, until confirmed.
    opened_at: Option<Instant>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self::new()
    }
}

impl Reconnect {
    /// A peer not known to fail.
    pub fn new() -> Self {
        Self {
            retry_at: None,
            delay: RECONNECT_BACKOFF_MIN,
            outage: None,
            opened_at: None,
        }
    }

    /// True while an attempt should wait.
    pub fn backing_off(&self, now: Instant) -> bool {
        self.retry_at.is_some_and(|retry_at| now < retry_at)
    }

    /// The wait after the next failure.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// An attempt failed: the next one waits, doubling the wait. Returns the
    /// line to log, if one is due.
    pub fn record_failure(&mut self, now: Instant) -> Option<Report> {
        self.opened_at = None;
        let retry_in = self.delay;
        self.retry_at = Some(now + retry_in);
        self.delay = (self.delay * 2).min(RECONNECT_BACKOFF_MAX);
        let outage = self.outage.get_or_insert(Outage {
            since: now,
            failures: 0,
            reports: ReportSchedule::new(),
        });
        outage.failures += 1;
        let failures = outage.reports.record(now)?;
        Some(Report::Unreachable { failures, retry_in })
    }

    /// A stream call was accepted by the peer. During an outage this is not
    /// yet a recovery: see [`Reconnect::confirm`].
    pub fn record_opened(&mut self, now: Instant) {
        if self.outage.is_some() && self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
    }

    /// A stream opened during an outage is still open at `now` (a message is
    /// being sent on it): once it has been open for
    /// [`RECOVERY_CONFIRM_AFTER`], the outage is over. Returns the line to
    /// log then.
    pub fn confirm(&mut self, now: Instant) -> Option<Report> {
        let opened_at = self.opened_at?;
        if now.saturating_duration_since(opened_at) < RECOVERY_CONFIRM_AFTER {
            return None;
        }
        let outage = self.outage.take()?;
        *self = Self::new();
        Some(Report::Reachable {
            failures: outage.failures,
            unreachable_for: now.saturating_duration_since(outage.since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_doubles_up_to_its_cap() {
        let start = Instant::now();
        let mut reconnect = Reconnect::new();
        assert!(!reconnect.backing_off(start));
        reconnect.record_failure(start);
        assert!(reconnect.backing_off(start + 49 * MS));
        assert!(!reconnect.backing_off(start + 50 * MS));
        let mut waits = Vec::new();
        let mut now = start;
        for _ in 0..10 {
            waits.push(reconnect.delay());
            reconnect.record_failure(now);
            now += reconnect.delay();
        }
        assert_eq!(
            waits[..7],
            [100, 200, 400, 800, 1600, 2000, 2000].map(|ms| ms * MS)
        );
        assert_eq!(reconnect.delay(), RECONNECT_BACKOFF_MAX);
    }

    /// Failures every `every` from `start` for `span`: the lines logged.
    fn reports(every: Duration, span: Duration) -> Vec<(Duration, Report)> {
        let start = Instant::now();
        let mut reconnect = Reconnect::new();
        let mut lines = Vec::new();
        let mut elapsed = Duration::ZERO;
        while elapsed <= span {
            if let Some(report) = reconnect.record_failure(start + elapsed) {
                lines.push((elapsed, report));
            }
            elapsed += every;
        }
        lines
    }

    #[test]
    fn repeated_failures_give_one_line_per_report_interval_with_their_count() {
        // A failure every heartbeat (100 ms) for 10 s: lines at 0, 1, 3 and
        // 7 s, each counting the failures it stands for.
        let lines = reports(100 * MS, Duration::from_secs(10));
        let at: Vec<u64> = lines.iter().map(|(at, _)| at.as_secs()).collect();
        assert_eq!(at, [0, 1, 3, 7]);
        let failures: Vec<u64> = lines
            .iter()
            .map(|(_, report)| match report {
                Report::Unreachable { failures, .. } => *failures,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(failures, [1, 10, 20, 40]);
        // An hour of it stays within a few dozen lines.
        let hour = reports(Duration::from_secs(2), Duration::from_secs(3_600));
        assert!(hour.len() <= 70, "{} lines", hour.len());
        assert_eq!(
            hour[hour.len() - 1].0 - hour[hour.len() - 2].0,
            UNREACHABLE_REPORT_INTERVAL_MAX
        );
    }

    #[test]
    fn a_stream_refused_right_after_it_opened_is_no_recovery() {
        let start = Instant::now();
        let mut reconnect = Reconnect::new();
        let mut now = start;
        let mut lines = Vec::new();
        for _ in 0..20 {
            // The peer accepts the call, then refuses the first message.
            reconnect.record_opened(now);
            lines.extend(reconnect.confirm(now + MS));
            lines.extend(reconnect.record_failure(now + 2 * MS));
            now += reconnect.delay();
        }
        assert!(
            lines
                .iter()
                .all(|line| matches!(line, Report::Unreachable { .. })),
            "{lines:?}"
        );
        assert!(lines.len() <= 6, "{lines:?}");
        assert_eq!(reconnect.delay(), RECONNECT_BACKOFF_MAX, "no reset");
    }

    #[test]
    fn a_stream_that_stays_open_ends_the_outage_once() {
        let start = Instant::now();
        let mut reconnect = Reconnect::new();
        reconnect.record_failure(start);
        reconnect.record_failure(start + 100 * MS);
        let opened = start + 300 * MS;
        reconnect.record_opened(opened);
        assert_eq!(reconnect.confirm(opened + 999 * MS), None, "too early");
        assert_eq!(
            reconnect.confirm(opened + RECOVERY_CONFIRM_AFTER),
            Some(Report::Reachable {
                failures: 2,
                unreachable_for: 1_300 * MS,
            })
        );
        assert_eq!(reconnect.confirm(opened + 2 * RECOVERY_CONFIRM_AFTER), None);
        assert_eq!(
            reconnect.delay(),
            RECONNECT_BACKOFF_MIN,
            "the wait is reset"
        );
        // The next outage is reported at once again.
        let later = opened + Duration::from_secs(10);
        assert_eq!(
            reconnect.record_failure(later),
            Some(Report::Unreachable {
                failures: 1,
                retry_in: RECONNECT_BACKOFF_MIN,
            })
        );
    }

    #[test]
    fn a_healthy_peer_needs_no_confirmation() {
        let start = Instant::now();
        let mut reconnect = Reconnect::new();
        reconnect.record_opened(start);
        assert_eq!(reconnect.confirm(start + Duration::from_secs(5)), None);
        assert!(!reconnect.backing_off(start));
    }
}
