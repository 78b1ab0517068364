//! Starter files that `berth init` writes: an annotated `app.toml` and an `alert.yaml`.
//!
//! The `app.toml` template uncomments only what the platform acts on today and shows the rest
//! as commented-out blocks, so a new service is valid, small and self-documenting.

/// An annotated `app.toml` for a new service called `name`.
pub fn app_toml(name: &str) -> String {
    let quoted = toml_string(name);
    let command = toml_string(&format!("./bin/{name}"));
    format!(
        r#"# app.toml: how berth builds, runs and checks the service `{name}`.
# Durations take a unit ("500ms", "2s", "1m", "1h"); sizes too ("256MiB", "1GiB").
# `berth check` validates this file and prints the effective config with all defaults.

# The service name: lowercase letters, digits and `-`. Other services and the gateway use it.
name = {quoted}

# "business" for services that serve users, "infrastructure" for shared platform services.
kind = "business"

# How many copies of the service to run (0 to 256).
replicas = 1

# CPU and memory limits per replica: "small" (250m CPU, 128MiB), "medium" (500m, 256MiB),
# "large" (1000m, 512MiB), or explicit: size = {{ cpu = "500m", memory = "256MiB" }}
size = "small"

# Optional, parsed and checked but not acted on by the platform yet:
# unit = "my-team"             # the owning team
# alerts = "alert.yaml"        # alert rules, relative to this directory
# domains = ["{name}.example.com"]  # extra host names the gateway routes here

[run]
# The program and its arguments, relative to this directory. A single string is split on
# whitespace; use the array form when an argument contains spaces.
command = [{command}]
# Time between SIGTERM and SIGKILL when a replica is stopped.
stop_timeout = "5s"
# Environment for the run step only, on top of [env].
# env = {{ RUST_LOG = "info" }}

[health]
# berth sends GET <path> to every replica and expects a 2xx answer.
path = "/healthz"
# How often to check, and how long one check may take (at most `interval`).
interval = "2s"
timeout = "1s"
# Consecutive successes before a replica takes traffic, and failures before it is replaced.
healthy_threshold = 1
unhealthy_threshold = 3
# Grace period after start: failures do not count until then, but a replica that is not
# healthy by the end of it is replaced.
start_period = "30s"

# Build before starting (run by `berth up`). A string or an array, like `run.command`.
# [build]
# command = "cargo build --release"

# Environment for every step: build, test and run. Values are strings, so quote numbers.
# [env]
# RUST_LOG = "info"

# The blocks below are parsed and checked, but the platform does not act on them yet.

# [dependencies]
# services = ["users"]         # other berth services this one calls
# postgres = {{ version = "15" }}
# redis = {{}}

# [[routes]]                   # a path prefix the gateway sends to this service
# path = "/api"
# timeout = "30s"
# nfr = {{ p90 = "400ms", error_rate = "1%" }}

# [deploy]
# strategy = "rolling"         # rolling | bluegreen | canary
# max_surge = 1
# max_unavailable = 0
# analysis = {{ error_rate = "1%", p90 = "400ms", min_requests = 50 }}   # canary and watch-window limits

# [autoscale]
# min = 1
# max = 10
# target_cpu = "70%"
"#
    )
}

/// A Prometheus-style alert rules file for the service `name`, with an error-rate and a
/// latency rule.
pub fn alert_yaml(name: &str) -> String {
    format!(
        r#"# Alert rules for `{name}`, in the Prometheus rules format.
# Point `alerts = "alert.yaml"` in app.toml at this file.
groups:
  - name: {name}
    rules:
      # More than 1% of requests failed over the last 5 minutes.
      - alert: {name}-high-error-rate
        expr: |
          sum(rate(berth_gateway_requests_total{{service="{name}", code=~"5.."}}[5m]))
            / sum(rate(berth_gateway_requests_total{{service="{name}"}}[5m])) > 0.01
        for: 5m
        labels:
          severity: page
        annotations:
          summary: "{name}: more than 1% of requests fail"

      # The slowest 10% of requests take longer than 400ms.
      - alert: {name}-slow-requests
        expr: |
          histogram_quantile(0.9,
            sum by (le) (rate(berth_gateway_request_duration_seconds_bucket{{service="{name}"}}[5m]))
          ) > 0.4
        for: 10m
        labels:
          severity: ticket
        annotations:
          summary: "{name}: p90 latency above 400ms"
"#
    )
}

/// `name` as a TOML basic string, escaped.
fn toml_string(name: &str) -> String {
    toml::Value::String(name.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_toml_parses_and_needs_no_notes() {
        let source = app_toml("x");
        let spec = match crate::parse("app.toml", &source) {
            Ok(spec) => spec,
            Err(diags) => panic!("{}", crate::render_all(&diags, &source)),
        };
        assert_eq!(spec.name.get_ref(), "x");
        assert_eq!(spec.run.command, ["./bin/x"]);
        assert!(crate::not_yet_acted_on(&spec).is_empty());
    }

    #[test]
    fn commented_blocks_parse_when_uncommented() {
        let source = app_toml("x");
        let uncommented: String = source
            .lines()
            .map(|line| {
                let trimmed = line.strip_prefix("# ").unwrap_or(line);
                let is_toml = trimmed.starts_with('[')
                    || trimmed.split_once(" = ").is_some_and(|(key, _)| !key.contains(' ') && !key.is_empty());
                if is_toml && line.starts_with("# ") { trimmed } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
        if let Err(diags) = crate::parse("app.toml", &uncommented) {
            panic!("{}\n{uncommented}", crate::render_all(&diags, &uncommented));
        }
    }

    #[test]
    fn names_are_escaped() {
        let source = app_toml("a\"b'c");
        let root = toml::de::DeTable::parse(&source).expect("the template is valid TOML");
        let name = root.get_ref().get("name").and_then(|name| name.get_ref().as_str());
        assert_eq!(name, Some("a\"b'c"));
    }

    #[test]
    fn alert_yaml_mentions_the_service() {
        let yaml = alert_yaml("shop");
        assert!(yaml.contains("service=\"shop\""));
        assert!(yaml.contains("- alert: shop-high-error-rate"));
        assert!(yaml.contains("- alert: shop-slow-requests"));
    }
}
