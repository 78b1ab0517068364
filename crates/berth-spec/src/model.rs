//! The `app.toml` data model: what a team declares about one service.
//!
//! These types are the wire format of the spec file. They deserialize with
//! `deny_unknown_fields` so typos are errors, fill in the documented defaults, and serialize back
//! to the effective config (durations as `"2s"`, sizes as `"256MiB"`) that parses to an equal
//! [`Spec`]. Fields that semantic validation points at keep their source position in
//! [`Spanned`]; a defaulted value has the empty span `0..0`. Equality ignores positions.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::de;

/// One service, as declared in its `app.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Service name: a DNS label (`a-z`, `0-9`, `-`, at most 63 characters).
    pub name: Spanned<String>,
    #[serde(default)]
    pub kind: Kind,
    /// The owning team.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Number of replicas, `0..=256`.
    #[serde(default = "defaults::replicas")]
    pub replicas: Spanned<u32>,
    #[serde(default)]
    pub size: Size,
    /// Path of the alert rules file, relative to the service directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Spanned<String>>,
    /// Extra host names the gateway routes to this service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub redirect_https: bool,
    /// Environment for every step (build, test and run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    pub run: Run,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Step>,
    #[serde(default)]
    pub health: Health,
    #[serde(default, skip_serializing_if = "Dependencies::is_empty")]
    pub dependencies: Dependencies,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub deploy: Deploy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    /// Named replica groups of this service, e.g. a dedicated pool for one partner.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, Pool>,
    /// Where this spec came from. Filled by [`crate::parse`]; not part of the config.
    #[serde(skip)]
    pub origin: Origin,
}

/// What the service is for; infrastructure services (databases, queues) are started first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Business,
    Infrastructure,
}

/// CPU and memory limits of one replica.
///
/// Written either as a preset name (`size = "small"`) or as a table
/// (`size = { cpu = "500m", memory = "256MiB" }`). A preset serializes back to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    /// The preset this size came from, if any (`"small"`, `"medium"`, `"large"`).
    pub preset: Option<String>,
    /// CPU limit in millicores (`1000` is one core).
    pub cpu_millis: u32,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

/// How to start the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Program and arguments. Written as an array, or as one string that is split on whitespace
    /// (no shell quoting: use the array form when an argument contains spaces).
    #[serde(with = "de::command")]
    pub command: Vec<String>,
    /// Working directory, relative to the service directory.
    #[serde(default = "defaults::workdir")]
    pub workdir: String,
    /// Grace period between SIGTERM and SIGKILL.
    #[serde(default = "defaults::stop_timeout", with = "de::duration")]
    pub stop_timeout: Duration,
    /// Extra environment for the run step only, on top of the top-level `env`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// What the service speaks on `$PORT`: HTTP/1.1, or HTTP/2 without TLS (needed for gRPC).
    #[serde(default)]
    pub protocol: Protocol,
}

/// The protocol a service's replicas speak on `$PORT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (cleartext), as gRPC servers speak it.
    H2c,
}

/// A build or test step: a command run in the service directory before the service starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Program and arguments, written like [`Run::command`].
    #[serde(with = "de::command")]
    pub command: Vec<String>,
    /// Working directory, relative to the service directory.
    #[serde(default = "defaults::workdir")]
    pub workdir: String,
    /// Extra environment for this step only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The HTTP health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Request path; starts with `/`.
    pub path: Spanned<String>,
    #[serde(with = "de::spanned_duration")]
    pub interval: Spanned<Duration>,
    /// Per-check timeout; at most `interval`.
    #[serde(with = "de::spanned_duration")]
    pub timeout: Spanned<Duration>,
    /// Consecutive successes before a replica counts as healthy (at least 1).
    pub healthy_threshold: Spanned<u32>,
    /// Consecutive failures before a healthy replica counts as unhealthy (at least 1).
    pub unhealthy_threshold: Spanned<u32>,
    /// Failures during this time after start do not count; a replica that is not healthy by
    /// the end of it is replaced.
    #[serde(with = "de::duration")]
    pub start_period: Duration,
}

/// Other things this service needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dependencies {
    /// Other berth services, by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Spanned<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<Postgres>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<Redis>,
}

/// A PostgreSQL database for this service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// Major version, e.g. `"15"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A Redis instance for this service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// Major version, e.g. `"7"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A path prefix the gateway routes to this service, with its policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Path prefix; starts with `/`.
    pub path: Spanned<String>,
    /// Deadline for the whole request, retries included.
    #[serde(default = "defaults::route_timeout", with = "de::spanned_duration")]
    pub timeout: Spanned<Duration>,
    /// Deadline for one upstream attempt; at most `timeout`.
    #[serde(default, with = "de::opt_spanned_duration", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Spanned<Duration>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfr: Option<Nfr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Non-functional requirements (service level objectives) of a route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nfr {
    #[serde(with = "de::opt_duration", skip_serializing_if = "Option::is_none")]
    pub p50: Option<Duration>,
    #[serde(with = "de::opt_duration", skip_serializing_if = "Option::is_none")]
    pub p90: Option<Duration>,
    #[serde(with = "de::opt_duration", skip_serializing_if = "Option::is_none")]
    pub p99: Option<Duration>,
    /// Highest acceptable fraction of failed requests (`"1%"` is `0.01`).
    #[serde(with = "de::opt_percent", skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
}

/// Response caching of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    #[serde(with = "de::duration")]
    pub max_age: Duration,
    #[serde(default, with = "de::opt_duration", skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Duration>,
    /// Also cache responses marked `private`/`no-store` or with `Set-Cookie`, and answers to requests
    /// with `Authorization`: only for routes whose answers are the same for every caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
}

/// Request rate limiting of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// What a request is counted against.
    #[serde(default)]
    pub key: RateKey,
    /// Allowed sustained rate per key.
    pub rate: Rate,
    /// Requests allowed in a burst above the rate; defaults to the rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Per-key rates that replace `rate`, by key value (e.g. an API key).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Rate>,
    /// Key values whose requests go to a named pool in `[pools]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, Spanned<String>>,
}

/// How a canary keeps chosen clients. Written `"header:<Name>"` (requests carrying the header always go to
/// the canary: testers opt in) or `"cookie:<name>"` (the gateway sets the cookie to the release that first
/// answered a client, and keeps it there for the rest of the rollout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

/// What a rate limit counts requests against. Written `"header:<Name>"`, `"source"` or `"ip"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RateKey {
    /// The value of a request header, e.g. an API key.
    Header(String),
    /// The calling berth service.
    Source,
    /// The client IP address.
    #[default]
    Ip,
}

/// A request rate: `requests` per `per`. Written `"20/s"` or `"600/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    /// One second or one minute.
    pub per: Duration,
}

/// How new releases replace old ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deploy {
    pub strategy: Strategy,
    /// Replicas started above `replicas` during a rolling deploy.
    pub max_surge: u32,
    /// Replicas that may be missing during a rolling deploy.
    pub max_unavailable: u32,
    /// Canary traffic percentages, ascending, ending at 100.
    pub canary_steps: Spanned<Vec<u32>>,
    /// Pause between canary steps.
    #[serde(with = "de::duration")]
    pub step_pause: Duration,
    /// How long a blue-green deploy keeps the old release for a fast rollback.
    #[serde(with = "de::duration")]
    pub keep_old_for: Duration,
    /// Watch window after promotion during which a regression rolls back.
    #[serde(with = "de::duration")]
    pub watch: Duration,
    /// New replicas must be healthy within this time or the deploy fails.
    #[serde(with = "de::duration")]
    pub health_deadline: Duration,
    /// How a canary step and the watch window judge the new release's numbers.
    #[serde(skip_serializing_if = "Analysis::is_empty")]
    pub analysis: Analysis,
    /// Keeps chosen clients on the canary: `"header:<Name>"` or `"cookie:<name>"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

/// Thresholds of canary analysis, written `analysis = { error_rate = "1%", p90 = "400ms", min_requests = 50 }`
/// in `[deploy]`. Every key is optional; the defaults depend on the routes, so they are filled in where the
/// thresholds are used (`berth_deploy::analysis::thresholds`), not here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Analysis {
    /// Highest acceptable share of failed requests (`"1%"` is `0.01`). Default: the strictest
    /// `nfr.error_rate` of the routes, else 1%.
    #[serde(with = "de::opt_percent", skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Highest acceptable 90th percentile latency. Default: the strictest `nfr.p90` of the routes, else no
    /// latency limit.
    #[serde(with = "de::opt_duration", skip_serializing_if = "Option::is_none")]
    pub p90: Option<Duration>,
    /// Requests the new release must have answered before it is judged (at least 1). Default: 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<Spanned<u64>>,
}

/// Deploy strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Rolling,
    Bluegreen,
    Canary,
}

/// Automatic replica scaling between `min` and `max`, on exactly one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    #[serde(default = "defaults::autoscale_min")]
    pub min: u32,
    pub max: u32,
    /// Target average CPU use as a fraction of the limit (`"70%"` is `0.7`).
    #[serde(default, with = "de::opt_percent", skip_serializing_if = "Option::is_none")]
    pub target_cpu: Option<f64>,
    /// Target requests per second per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_rps: Option<u32>,
}

/// A named group of replicas of this service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    #[serde(default = "defaults::pool_replicas")]
    pub replicas: u32,
}

/// Where a [`Spec`] came from: the file name and the position of every key, so diagnostics about
/// a parsed spec (such as [`crate::not_yet_acted_on`]) can point into the file.
///
/// Empty for a spec built in code. Equality ignores it: it describes the file, not the config.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The file name given to [`crate::parse`].
    pub file: String,
    /// Every key in the file, in source order.
    pub keys: Vec<KeyOrigin>,
}

/// The position of one key in the source file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOrigin {
    /// Dotted key path without array indices, e.g. `"health.interval"` or `"routes.cache"`.
    pub path: String,
    /// How the key was written, for messages: `[health]`, `[[routes]]`, or `interval`.
    pub display: String,
    /// Byte range of the key, or of the whole header for `[table]` and `[[array]]` headers.
    pub span: Range<usize>,
    /// 1-based line of `span.start`.
    pub line: usize,
    /// 1-based column (in characters) of `span.start`.
    pub column: usize,
}

impl PartialEq for Origin {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Origin {
    /// The first occurrence of a dotted key path such as `"deploy.max_surge"`.
    pub fn key(&self, path: &str) -> Option<&KeyOrigin> {
        self.keys.iter().find(|key| key.path == path)
    }
}

impl Analysis {
    /// True when no key is written: the effective config then leaves `analysis` out.
    pub fn is_empty(&self) -> bool {
        self.error_rate.is_none() && self.p90.is_none() && self.min_requests.is_none()
    }
}

impl Dependencies {
    /// True when the service declares no dependencies at all.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.postgres.is_none() && self.redis.is_none()
    }
}

impl Default for Size {
    fn default() -> Self {
        Size::preset("small").expect("`small` is one of the presets")
    }
}

impl Size {
    /// The preset names, smallest first.
    pub const PRESETS: [&'static str; 3] = ["small", "medium", "large"];

    /// The size of a preset, or `None` for an unknown name.
    pub fn preset(name: &str) -> Option<Size> {
        let (cpu_millis, memory_mib) = match name {
            "small" => (250, 128),
            "medium" => (500, 256),
            "large" => (1_000, 512),
            _ => return None,
        };
        Some(Size { preset: Some(name.to_owned()), cpu_millis, memory_bytes: memory_mib << 20 })
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: Spanned::new(0..0, "/healthz".to_owned()),
            interval: Spanned::new(0..0, Duration::from_secs(2)),
            timeout: Spanned::new(0..0, Duration::from_secs(1)),
            healthy_threshold: Spanned::new(0..0, 1),
            unhealthy_threshold: Spanned::new(0..0, 3),
            start_period: Duration::from_secs(30),
        }
    }
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::Rolling,
            max_surge: 1,
            max_unavailable: 0,
            canary_steps: Spanned::new(0..0, vec![5, 25, 50, 100]),
            step_pause: Duration::from_secs(30),
            keep_old_for: Duration::from_secs(300),
            watch: Duration::from_secs(300),
            health_deadline: Duration::from_secs(120),
            analysis: Analysis::default(),
            sticky: None,
        }
    }
}

/// Default values referenced by `#[serde(default = "...")]`.
mod defaults {
    use std::time::Duration;

    use toml::Spanned;

    pub(super) fn replicas() -> Spanned<u32> {
        Spanned::new(0..0, 1)
    }

    pub(super) fn workdir() -> String {
        ".".to_owned()
    }

    pub(super) fn stop_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub(super) fn route_timeout() -> Spanned<Duration> {
        Spanned::new(0..0, Duration::from_secs(30))
    }

    pub(super) fn autoscale_min() -> u32 {
        1
    }

    pub(super) fn pool_replicas() -> u32 {
        1
    }
}
