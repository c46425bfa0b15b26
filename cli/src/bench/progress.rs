//! The progress bar: drawn on stderr only when stderr is a terminal (never in
//! CI logs or redirected output) and `--no-progress` is not given.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the bar is brought up to date and redrawn.
const REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// Redraws per second at most.
const REFRESH_RATE_HZ: u8 = 10;
/// Width of the bar, in characters.
const BAR_WIDTH_CHARACTERS: usize = 30;

/// What the bar measures.
pub enum Scale {
    /// Completed operations out of this many.
    Operations(u64),
    /// Elapsed time out of this long; operations are shown as a message.
    Time(Duration),
}

/// A bar kept up to date by a task that reads `completed` until it is
/// dropped; hidden unless stderr is a terminal.
pub struct Progress {
    bar: ProgressBar,
    updater: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts a bar labelled `label` over `scale`, counting `completed`.
    pub fn start(label: &str, scale: Scale, completed: Arc<AtomicU64>, hidden: bool) -> Progress {
        let target = if hidden || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr_with_hz(REFRESH_RATE_HZ)
        };
        let (length, template) = match scale {
            Scale::Operations(total) => (
                total,
                format!("{{prefix}} [{{bar:{BAR_WIDTH_CHARACTERS}}}] {{pos}}/{{len}} ops  {{msg}}  eta {{eta}}"),
            ),
            Scale::Time(duration) => (
                u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                format!("{{prefix}} [{{bar:{BAR_WIDTH_CHARACTERS}}}] {{elapsed}}/{}s  {{msg}}", duration.as_secs()),
            ),
        };
        let style = ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(length), target)
            .with_style(style)
            .with_prefix(label.to_string());
        let updater = {
            let bar = bar.clone();
            let time_scaled = matches!(scale, Scale::Time(_));
            tokio::spawn(async move {
                let started = Instant::now();
                let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
                loop {
                    ticker.tick().await;
                    let operations = completed.load(Ordering::Relaxed);
                    let elapsed = started.elapsed();
                    let rate_per_second =
                        operations as f64 / elapsed.as_secs_f64().max(f64::EPSILON);
                    if time_scaled {
                        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                        bar.set_position(elapsed_ms.min(length));
                        bar.set_message(format!("{operations} ops  {rate_per_second:.0}/s"));
                    } else {
                        bar.set_position(operations.min(length));
                        bar.set_message(format!("{rate_per_second:.0}/s"));
                    }
                }
            })
        };
        Progress { bar, updater }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.updater.abort();
        self.bar.finish_and_clear();
    }
}
