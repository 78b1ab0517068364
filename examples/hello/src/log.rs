//! Log lines on stdout, where the platform captures them: one per request, plus lifecycle events.
//!
//! Write errors are ignored on purpose: if whoever reads stdout goes away, the service keeps
//! serving rather than failing its requests.

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::config::{Identity, LogFormat};

/// Where and how to write log lines.
#[derive(Debug, Clone)]
pub struct Logger {
    pub format: LogFormat,
    pub identity: Identity,
}

/// One answered request, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
}

impl Logger {
    /// Logs a lifecycle event such as "listening on 127.0.0.1:8080".
    pub fn event(&self, level: &str, msg: &str) {
        let line = match self.format {
            LogFormat::Plain => msg.to_string(),
            LogFormat::Json => json!({
                "ts_ms": unix_millis(),
                "level": level,
                "msg": msg,
                "service": self.identity.service,
                "replica": self.identity.replica,
                "release": self.identity.release,
            })
            .to_string(),
        };
        write_line(&line);
    }

    /// Logs one answered request.
    pub fn access(&self, record: AccessRecord<'_>) {
        write_line(&self.access_line(record));
    }

    fn access_line(&self, record: AccessRecord<'_>) -> String {
        let duration_ms = record.duration.as_secs_f64() * 1000.0;
        match self.format {
            LogFormat::Plain => format!("{} {} {} {duration_ms:.1}ms", record.method, record.path, record.status),
            LogFormat::Json => json!({
                "ts_ms": unix_millis(),
                "level": "info",
                "msg": "request",
                "service": self.identity.service,
                "replica": self.identity.replica,
                "release": self.identity.release,
                "method": record.method,
                "path": record.path,
                "status": record.status,
                "duration_ms": (duration_ms * 1000.0).round() / 1000.0,
            })
            .to_string(),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0)
}

fn write_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> AccessRecord<'static> {
        AccessRecord { method: "GET", path: "/healthz", status: 200, duration: Duration::from_micros(1234) }
    }

    #[test]
    fn plain_access_line() {
        let logger = Logger { format: LogFormat::Plain, identity: Identity::default() };
        assert_eq!(logger.access_line(record()), "GET /healthz 200 1.2ms");
    }

    #[test]
    fn json_access_line() {
        let logger = Logger {
            format: LogFormat::Json,
            identity: Identity { service: Some("hello".into()), replica: Some("0".into()), release: None },
        };
        let line: serde_json::Value = serde_json::from_str(&logger.access_line(record())).unwrap();
        assert_eq!(line["service"], "hello");
        assert_eq!(line["replica"], "0");
        assert_eq!(line["release"], serde_json::Value::Null);
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/healthz");
        assert_eq!(line["status"], 200);
        assert_eq!(line["duration_ms"], 1.234);
        assert!(line["ts_ms"].as_u64().unwrap() > 0);
    }
}
