//! Log set-up: readable text for a terminal, or one JSON object per line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stderr; `filter` is a level or a
/// tracing filter directive.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(expand_level(filter))
        .map_err(|error| format!("bad --log-level {filter:?}: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    result.map_err(|error| format!("cannot install the logger: {error}"))
}

/// Our crates whose logs a bare level applies to.
const OWN_CRATES: [&str; 4] = [
    "kvstore_server",
    "kvstore_raft",
    "kvstore_wal",
    "kvstore_proto",
];

/// A bare level (`debug`) applies to kvstore's own crates, while the
/// libraries below stay at `warn` (h2 and tonic are very chatty at debug).
/// Anything else is a tracing filter and is used as it is.
fn expand_level(filter: &str) -> String {
    let level = filter.trim();
    let is_bare_level =
        ["error", "warn", "info", "debug", "trace"].contains(&level.to_ascii_lowercase().as_str());
    if !is_bare_level {
        return filter.to_string();
    }
    let mut directives = String::from("warn");
    for name in OWN_CRATES {
        directives.push_str(&format!(",{name}={level}"));
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_levels_apply_to_our_crates_and_filters_pass_through() {
        assert_eq!(
            expand_level("debug"),
            "warn,kvstore_server=debug,kvstore_raft=debug,kvstore_wal=debug,kvstore_proto=debug"
        );
        assert_eq!(expand_level("info,h2=trace"), "info,h2=trace");
    }
}
