//! Reads the service's settings from its environment: the port, the identity the platform gives
//! it (`BERTH_*`), the log format and the `HELLO_*` fault switches.
//!
//! Parsing takes a lookup function instead of reading `std::env` directly, so the rules can be
//! tested without touching the process environment.

use std::fmt;
use std::time::Duration;

/// Everything `hello` needs to know before it binds its port.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port: u16,
    pub identity: Identity,
    pub log_format: LogFormat,
    /// `HELLO_START_DELAY`: how long to wait before binding (a slow start).
    pub start_delay: Duration,
    /// `HELLO_FLAKY_ERROR_RATE`: the share of `/` and `/ping` answers that are 500s, in `[0, 1]`.
    pub flaky_error_rate: f64,
    /// `HELLO_LEAK_MB_PER_SEC`: MiB leaked every second by a background task.
    pub leak_mib_per_sec: f64,
}

/// Who this process is, as told by the platform. Every field is optional, so the binary also
/// runs by hand.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    pub service: Option<String>,
    pub replica: Option<String>,
    pub release: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (`HELLO_LOG=json`).
    Json,
    /// Human-readable lines (the default).
    Plain,
}

/// A setting that is missing or does not parse. `hello` exits with code 2 on any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Missing { key: &'static str, hint: &'static str },
    Invalid { key: &'static str, value: String, expected: &'static str },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing { key, hint } => {
                write!(f, "environment variable {key} is not set\n  hint: {hint}")
            }
            ConfigError::Invalid { key, value, expected } => write!(f, "invalid {key}={value:?}: expected {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(env_lookup)
    }

    /// Reads the configuration through `lookup`, which returns a variable's value if it is set.
    /// Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |key: &str| lookup(key).filter(|value| !value.trim().is_empty());

        let port = match get("PORT") {
            None => {
                return Err(ConfigError::Missing {
                    key: "PORT",
                    hint: "set PORT to the TCP port to listen on, e.g. PORT=8080",
                });
            }
            Some(value) => value.trim().parse::<u16>().map_err(|_| ConfigError::Invalid {
                key: "PORT",
                value,
                expected: "a TCP port number from 0 to 65535",
            })?,
        };

        let log_format = match get("HELLO_LOG").as_deref().map(str::trim) {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Plain,
        };

        let start_delay = match get("HELLO_START_DELAY") {
            None => Duration::ZERO,
            Some(value) => parse_delay(&value).ok_or(ConfigError::Invalid {
                key: "HELLO_START_DELAY",
                value,
                expected: "a delay such as `2s`, `1.5s`, `500ms`, `1m` or a number of milliseconds",
            })?,
        };

        let flaky_error_rate = match get("HELLO_FLAKY_ERROR_RATE") {
            None => 0.0,
            Some(value) => parse_f64_in(&value, 0.0, 1.0).ok_or(ConfigError::Invalid {
                key: "HELLO_FLAKY_ERROR_RATE",
                value,
                expected: "a share between 0 and 1, e.g. 0.05",
            })?,
        };

        let leak_mib_per_sec = match get("HELLO_LEAK_MB_PER_SEC") {
            None => 0.0,
            Some(value) => parse_f64_in(&value, 0.0, f64::from(u32::MAX)).ok_or(ConfigError::Invalid {
                key: "HELLO_LEAK_MB_PER_SEC",
                value,
                expected: "a non-negative number of MiB per second, e.g. 5",
            })?,
        };

        Ok(Config {
            port,
            identity: Identity {
                service: get("BERTH_SERVICE"),
                replica: get("BERTH_REPLICA"),
                release: get("BERTH_RELEASE"),
            },
            log_format,
            start_delay,
            flaky_error_rate,
            leak_mib_per_sec,
        })
    }
}

/// Reads `HELLO_FAIL_START`: the exit code to fail with at start, if the switch is on.
pub fn fail_start_code(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<i32>, ConfigError> {
    match lookup("HELLO_FAIL_START").filter(|value| !value.trim().is_empty()) {
        None => Ok(None),
        Some(value) => match value.trim().parse::<i32>() {
            Ok(code) => Ok(Some(code)),
            Err(_) => Err(ConfigError::Invalid { key: "HELLO_FAIL_START", value, expected: "an exit code such as 3" }),
        },
    }
}

/// Parses a delay: a non-negative number with the unit `ms`, `s` or `m`, or a bare number of
/// milliseconds. Returns `None` for anything else.
pub fn parse_delay(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit_secs) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 0.001)
    };
    let value = parse_f64_in(number, 0.0, f64::from(u32::MAX))?;
    Duration::try_from_secs_f64(value * unit_secs).ok()
}

/// Reads one variable of the process environment; non-UTF-8 values count as unset.
pub fn env_lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn parse_f64_in(text: &str, min: f64, max: f64) -> Option<f64> {
    let text = text.trim();
    // `f64::from_str` accepts "inf" and "NaN"; the range check below rejects both.
    let value: f64 = text.parse().ok()?;
    (value >= min && value <= max).then_some(value)
}

#[cfg(test)]
mod tests;
