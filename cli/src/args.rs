//! Command-line arguments.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: `get` found no such key.
pub const EXIT_KEY_NOT_FOUND: u8 = 1;
/// Exit code: bad command-line usage (clap's own).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the request failed (unreachable, timeout, server error, ...).
pub const EXIT_FAILED: u8 = 3;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  get: the key does not exist (nothing is printed on stdout)
  2  bad usage
  3  the request failed: no endpoint reachable, timeout, or a server error

Keys and values are bytes. `get` prints the value alone, byte-exact, with no
newline added (one is added only when stdout is a terminal), so
`kvstore-cli get k > file` round-trips binary data. Use `put KEY -` to read the
value from stdin, and --hex-key to give keys as hex (for NUL bytes).";

/// kvstore-cli: talk to a kvstore cluster.
#[derive(Debug, Parser)]
#[command(name = "kvstore-cli", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Nodes' client addresses, HOST:PORT, comma-separated. Requests go to the
    /// first that answers; `status` asks every one.
    #[arg(
        long,
        env = "KVSTORE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub endpoints: Vec<String>,

    /// Output format. `table` is for `status`.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub write_out: OutputFormat,

    /// Deadline for each request, such as 500ms, 5s or 1m.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Keys on the command line are hex-encoded (for keys with NUL bytes).
    #[arg(long, global = true)]
    pub hex_key: bool,

    /// Also print the response header (serving node, leader, term, index) on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Plain output for people and shell pipelines.
    Text,
    /// One JSON document.
    Json,
    /// An aligned table (status).
    Table,
}

/// Read consistency of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read (the default).
    Linearizable,
    /// Served from the contacted node's local state; may be stale.
    Serializable,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store VALUE under KEY.
    Put {
        /// The key.
        key: OsString,
        /// The value; `-` reads it from stdin.
        value: OsString,
    },
    /// Print the value of KEY.
    Get {
        /// The key.
        key: OsString,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
    },
    /// Remove KEY.
    Delete {
        /// The key.
        key: OsString,
    },
    /// Show every endpoint's role, term, leader and log positions.
    Status,
}

/// Parses `500ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) =
        match text.find(|character: char| !character.is_ascii_digit() && character != '.') {
            Some(position) => text.split_at(position),
            None => (text, "s"),
        };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {text:?} (use ms, s or m)"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("duration must be positive: {text:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }
}
