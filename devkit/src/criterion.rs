//! The criterion settings of the micro-benchmarks (`make bench-micro`), one
//! per kind of cost. Changing a number here changes what earlier baselines
//! (`--save-baseline`) are compared with: say so in the commit.

use std::time::Duration;

use ::criterion::Criterion;

/// Changes smaller than this fraction are reported as noise when comparing
/// with a previous run or baseline (criterion's default, 1%, flags the jitter
/// of a shared 2-core machine as regressions).
pub const NOISE_THRESHOLD: f64 = 0.05;

/// CPU-bound, microseconds per iteration (the Raft step loop, WAL append
/// without sync, CRC-32C): short runs suffice.
pub fn cpu() -> Criterion {
    settings(50, Duration::from_millis(500), Duration::from_secs(2))
}

/// fsync-bound (WAL append with sync), noisy on a shared disk: 20 samples
/// over a few seconds.
pub fn fsync() -> Criterion {
    settings(20, Duration::from_secs(1), Duration::from_secs(5))
}

/// Store-bound (the state machine's apply into LevelDB, the overlay or
/// memory), microseconds to milliseconds per iteration: short runs suffice.
pub fn store() -> Criterion {
    settings(30, Duration::from_millis(500), Duration::from_secs(3))
}

/// Text output only (no plots), [`NOISE_THRESHOLD`], and the sampling given.
fn settings(sample_size: usize, warm_up_time: Duration, measurement_time: Duration) -> Criterion {
    Criterion::default()
        .without_plots()
        .noise_threshold(NOISE_THRESHOLD)
        .sample_size(sample_size)
        .warm_up_time(warm_up_time)
        .measurement_time(measurement_time)
}
