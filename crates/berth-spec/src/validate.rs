//! Semantic validation: rules that serde cannot express, checked on a deserialized [`Spec`].
//!
//! Every rule runs and every violation is reported, so a user fixes a file in one pass. Each
//! diagnostic points at the offending value (through [`Spanned`] fields or the spec's
//! [`crate::Origin`]) and says what to write instead.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::diagnostic::Diagnostic;
use crate::model::Spec;
use crate::units::format_duration;

/// Most replicas one service (or one pool) may ask for.
pub const MAX_REPLICAS: u32 = 256;

/// True for a DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or ending
/// with `-`. Service names, dependency names and pool names are DNS labels.
pub fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Checks the rules serde cannot express and returns every violation, in source order.
pub(crate) fn validate(spec: &Spec, source: &str) -> Vec<Diagnostic> {
    let mut checker = Checker { spec, source, diags: Vec::new() };
    checker.name();
    checker.replicas();
    checker.alerts();
    checker.domains();
    checker.env();
    checker.health();
    checker.dependencies();
    checker.routes();
    checker.deploy();
    checker.autoscale();
    checker.pools();
    let mut res = checker.diags;
    res.sort_by_key(|diag| diag.span.as_ref().map_or(0, |span| span.start));
    res
}

struct Checker<'a> {
    spec: &'a Spec,
    source: &'a str,
    diags: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn name(&mut self) {
        let name = self.spec.name.get_ref();
        if is_dns_label(name) {
            return;
        }
        let rule =
            "a service name is 1 to 63 lowercase letters, digits and `-`, starting and ending with a letter or digit";
        let hint = match suggest_label(name) {
            Some(suggestion) => format!("{rule}; e.g. `name = \"{suggestion}\"`"),
            None => format!("{rule}; e.g. `name = \"my-service\"`"),
        };
        self.error(self.spec.name.span(), format!("invalid service name `{name}`"), hint);
    }

    fn replicas(&mut self) {
        let replicas = *self.spec.replicas.get_ref();
        if replicas > MAX_REPLICAS {
            self.error(
                self.spec.replicas.span(),
                format!("`replicas` must be at most {MAX_REPLICAS}, found {replicas}"),
                format!("lower `replicas` to {MAX_REPLICAS} or fewer"),
            );
        }
    }

    fn alerts(&mut self) {
        let Some(alerts) = &self.spec.alerts else {
            return;
        };
        let path = alerts.get_ref();
        if path.trim().is_empty() {
            self.error(
                alerts.span(),
                "`alerts` is empty".to_owned(),
                "give the alert rules file relative to the service directory, e.g. `alerts = \"alert.yaml\"`, or remove the key".to_owned(),
            );
        } else if path.starts_with('/') {
            self.error(
                alerts.span(),
                format!("`alerts` must be relative to the service directory, found `{path}`"),
                "keep the rules file next to app.toml, e.g. `alerts = \"alert.yaml\"`".to_owned(),
            );
        }
    }

    fn domains(&mut self) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for domain in &self.spec.domains {
            let name = domain.get_ref().as_str();
            if !is_hostname(name) {
                self.error(
                    domain.span(),
                    format!("invalid domain `{name}`"),
                    "write a lowercase host name such as `shop.example.com`, without scheme, port or path".to_owned(),
                );
            } else if let Some(first_line) = seen.get(name) {
                self.error(
                    domain.span(),
                    format!("duplicate domain `{name}`"),
                    self.already_listed(*first_line, &domain.span()),
                );
            } else {
                seen.insert(name, self.line_of(&domain.span()));
            }
        }
    }

    fn env(&mut self) {
        let spec = self.spec;
        let mut tables: Vec<(&str, &BTreeMap<String, String>)> = vec![("env", &spec.env), ("run.env", &spec.run.env)];
        if let Some(build) = &spec.build {
            tables.push(("build.env", &build.env));
        }
        if let Some(test) = &spec.test {
            tables.push(("test.env", &test.env));
        }
        for (prefix, env) in tables {
            for name in env.keys() {
                if is_env_name(name) {
                    continue;
                }
                let span = self.key_span(&format!("{prefix}.{name}")).unwrap_or(0..0);
                self.error(
                    span,
                    format!("invalid environment variable name `{name}`"),
                    "use letters, digits and `_`, not starting with a digit, e.g. `RUST_LOG`".to_owned(),
                );
            }
        }
    }

    fn health(&mut self) {
        let health = &self.spec.health;
        self.http_path(&health.path, "[health]", "/healthz");
        let interval = *health.interval.get_ref();
        let timeout = *health.timeout.get_ref();
        if interval.is_zero() {
            self.error(
                health.interval.span(),
                "`interval` in [health] must be more than 0".to_owned(),
                "check every few seconds, e.g. `interval = \"2s\"`".to_owned(),
            );
        }
        if timeout.is_zero() {
            self.error(
                health.timeout.span(),
                "`timeout` in [health] must be more than 0".to_owned(),
                "give each check time to answer, e.g. `timeout = \"1s\"`".to_owned(),
            );
        } else if timeout > interval && !interval.is_zero() {
            // Point at whichever of the two the user wrote; the other is a default.
            let span = if health.timeout.span().is_empty() { health.interval.span() } else { health.timeout.span() };
            self.error(
                span,
                format!(
                    "`timeout` in [health] ({}) is longer than `interval` ({})",
                    format_duration(timeout),
                    format_duration(interval)
                ),
                format!(
                    "a check must finish before the next one starts: lower `timeout` to at most {} or raise `interval`",
                    format_duration(interval)
                ),
            );
        }
        for (threshold, key) in
            [(&health.healthy_threshold, "healthy_threshold"), (&health.unhealthy_threshold, "unhealthy_threshold")]
        {
            if *threshold.get_ref() == 0 {
                self.error(
                    threshold.span(),
                    format!("`{key}` in [health] must be at least 1"),
                    format!("count at least one check, e.g. `{key} = 1`"),
                );
            }
        }
    }

    fn dependencies(&mut self) {
        let own_name = self.spec.name.get_ref();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for service in &self.spec.dependencies.services {
            let name = service.get_ref().as_str();
            if !is_dns_label(name) {
                self.error(
                    service.span(),
                    format!("invalid service name `{name}` in `services` in [dependencies]"),
                    "list other services by their `name`: lowercase letters, digits and `-`".to_owned(),
                );
            } else if name == own_name {
                self.error(
                    service.span(),
                    format!("service `{name}` depends on itself"),
                    format!("remove `{name}` from `services` in [dependencies]"),
                );
            } else if let Some(first_line) = seen.get(name) {
                self.error(
                    service.span(),
                    format!("duplicate dependency `{name}`"),
                    self.already_listed(*first_line, &service.span()),
                );
            } else {
                seen.insert(name, self.line_of(&service.span()));
            }
        }
    }

    fn routes(&mut self) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for route in &self.spec.routes {
            let path = route.path.get_ref().as_str();
            if self.http_path(&route.path, "[[routes]]", "/api") {
                if let Some(first_line) = seen.get(path) {
                    self.error(
                        route.path.span(),
                        format!("duplicate route `{path}`"),
                        format!(
                            "a route with this path is already defined on line {first_line}; merge the two or change one path"
                        ),
                    );
                } else {
                    seen.insert(path, self.line_of(&route.path.span()));
                }
            }
            let timeout = *route.timeout.get_ref();
            if timeout.is_zero() {
                self.error(
                    route.timeout.span(),
                    "`timeout` in [[routes]] must be more than 0".to_owned(),
                    "give requests time to finish, e.g. `timeout = \"30s\"`".to_owned(),
                );
            }
            if let Some(per_try) = &route.per_try_timeout {
                self.per_try_timeout(per_try, timeout);
            }
            if let Some(rate_limit) = &route.rate_limit {
                for pool in rate_limit.pools.values() {
                    let name = pool.get_ref();
                    if self.spec.pools.contains_key(name) {
                        continue;
                    }
                    let hint = if self.spec.pools.is_empty() {
                        format!("define the pool: add `[pools.{name}]` with `replicas = 1`")
                    } else {
                        let known: Vec<String> = self.spec.pools.keys().map(|p| format!("`{p}`")).collect();
                        format!(
                            "use one of the pools defined in [pools] ({}), or add `[pools.{name}]`",
                            known.join(", ")
                        )
                    };
                    self.error(pool.span(), format!("unknown pool `{name}` in `rate_limit` in [[routes]]"), hint);
                }
            }
        }
    }

    fn per_try_timeout(&mut self, per_try: &Spanned<Duration>, timeout: Duration) {
        let value = *per_try.get_ref();
        if value.is_zero() {
            self.error(
                per_try.span(),
                "`per_try_timeout` in [[routes]] must be more than 0".to_owned(),
                "give each attempt time to answer, or remove the key".to_owned(),
            );
        } else if value > timeout {
            self.error(
                per_try.span(),
                format!(
                    "`per_try_timeout` in [[routes]] ({}) is longer than the route's `timeout` ({})",
                    format_duration(value),
                    format_duration(timeout)
                ),
                format!(
                    "an attempt cannot outlive the request: lower `per_try_timeout` to at most {}",
                    format_duration(timeout)
                ),
            );
        }
    }

    fn deploy(&mut self) {
        let deploy = &self.spec.deploy;
        let steps = deploy.canary_steps.get_ref();
        let span = deploy.canary_steps.span();
        let ascending = steps.windows(2).all(|pair| pair[0] < pair[1]);
        let example = "e.g. `canary_steps = [5, 25, 50, 100]`";
        if steps.is_empty() {
            self.error(
                span,
                "`canary_steps` in [deploy] is empty".to_owned(),
                format!("list the traffic percentages to step through, {example}"),
            );
        } else if let Some(bad) = steps.iter().find(|step| **step == 0 || **step > 100) {
            self.error(
                span,
                format!("`canary_steps` in [deploy] must be percentages from 1 to 100, found {bad}"),
                format!("list the traffic percentages to step through, {example}"),
            );
        } else if !ascending {
            self.error(
                span,
                "`canary_steps` in [deploy] must be in ascending order".to_owned(),
                format!("each step sends more traffic to the new release than the last, {example}"),
            );
        } else if steps.last() != Some(&100) {
            self.error(
                span,
                "`canary_steps` in [deploy] must end at 100".to_owned(),
                format!("the last step sends all traffic to the new release, {example}"),
            );
        }
        self.analysis();
        if deploy.max_surge == 0 && deploy.max_unavailable == 0 {
            let span =
                self.key_span("deploy.max_surge").or_else(|| self.key_span("deploy.max_unavailable")).unwrap_or(0..0);
            self.error(
                span,
                "`max_surge` and `max_unavailable` in [deploy] are both 0, so a rolling deploy can never replace a replica".to_owned(),
                "allow one extra replica during deploys with `max_surge = 1`".to_owned(),
            );
        }
    }

    fn analysis(&mut self) {
        let analysis = &self.spec.deploy.analysis;
        if let Some(min_requests) = &analysis.min_requests
            && *min_requests.get_ref() == 0
        {
            self.error(
                min_requests.span(),
                "`min_requests` in `analysis` in [deploy] must be at least 1".to_owned(),
                "judge a release only after enough requests to tell a bad one from noise, e.g. `min_requests = 50`"
                    .to_owned(),
            );
        }
        if analysis.p90.is_some_and(|p90| p90.is_zero()) {
            let span = self.key_span("deploy.analysis.p90").unwrap_or(0..0);
            self.error(
                span,
                "`p90` in `analysis` in [deploy] must be more than 0".to_owned(),
                "give the slowest acceptable 90th percentile, e.g. `p90 = \"400ms\"`, or remove the key".to_owned(),
            );
        }
    }

    fn autoscale(&mut self) {
        let Some(autoscale) = &self.spec.autoscale else {
            return;
        };
        let table_span = self.key_span("autoscale").unwrap_or(0..0);
        let span_of = |checker: &Self, key: &str| {
            checker.key_span(&format!("autoscale.{key}")).unwrap_or_else(|| table_span.clone())
        };
        if autoscale.max == 0 || autoscale.max > MAX_REPLICAS {
            self.error(
                span_of(self, "max"),
                format!("`max` in [autoscale] must be from 1 to {MAX_REPLICAS}, found {}", autoscale.max),
                "set the most replicas autoscaling may start, e.g. `max = 10`".to_owned(),
            );
        } else if autoscale.min > autoscale.max {
            self.error(
                span_of(self, "min"),
                format!("`min` in [autoscale] ({}) is larger than `max` ({})", autoscale.min, autoscale.max),
                format!("lower `min` to at most {} or raise `max`", autoscale.max),
            );
        }
        match (autoscale.target_cpu, autoscale.target_rps) {
            (None, None) => self.error(
                table_span.clone(),
                "[autoscale] needs a target".to_owned(),
                "add `target_cpu = \"70%\"` (average CPU use) or `target_rps = 100` (requests per second per replica)"
                    .to_owned(),
            ),
            (Some(_), Some(_)) => self.error(
                span_of(self, "target_rps"),
                "[autoscale] has both `target_cpu` and `target_rps`".to_owned(),
                "scale on one signal: remove `target_cpu` or `target_rps`".to_owned(),
            ),
            (Some(cpu), None) if cpu <= 0.0 => self.error(
                span_of(self, "target_cpu"),
                "`target_cpu` in [autoscale] must be more than 0%".to_owned(),
                "aim for a typical load, e.g. `target_cpu = \"70%\"`".to_owned(),
            ),
            (None, Some(0)) => self.error(
                span_of(self, "target_rps"),
                "`target_rps` in [autoscale] must be at least 1".to_owned(),
                "give the requests per second one replica should handle, e.g. `target_rps = 100`".to_owned(),
            ),
            _ => {}
        }
    }

    fn pools(&mut self) {
        for (name, pool) in &self.spec.pools {
            let span = self.key_span(&format!("pools.{name}")).unwrap_or(0..0);
            if !is_dns_label(name) {
                let suggestion = suggest_label(name).unwrap_or_else(|| "dedicated".to_owned());
                self.error(
                    span.clone(),
                    format!("invalid pool name `{name}`"),
                    format!("pool names are lowercase letters, digits and `-`, e.g. `[pools.{suggestion}]`"),
                );
            }
            if pool.replicas > MAX_REPLICAS {
                let span = self.key_span(&format!("pools.{name}.replicas")).unwrap_or(span);
                self.error(
                    span,
                    format!("`replicas` in [pools.{name}] must be at most {MAX_REPLICAS}, found {}", pool.replicas),
                    format!("lower `replicas` to {MAX_REPLICAS} or fewer"),
                );
            }
        }
    }

    /// Checks that an HTTP path starts with `/`; returns whether it does.
    fn http_path(&mut self, path: &Spanned<String>, table: &str, example: &str) -> bool {
        let value = path.get_ref();
        if value.starts_with('/') {
            return true;
        }
        let fixed = format!("/{}", value.trim_start_matches('/'));
        let suggestion = if value.is_empty() { example } else { &fixed };
        self.error(
            path.span(),
            format!("`path` in {table} must start with `/`, found `{value}`"),
            format!("write `path = \"{suggestion}\"`"),
        );
        false
    }

    fn error(&mut self, span: Range<usize>, message: String, hint: String) {
        let diag = Diagnostic::error(&self.spec.origin.file, message).at(self.source, span).with_hint(hint);
        self.diags.push(diag);
    }

    fn key_span(&self, path: &str) -> Option<Range<usize>> {
        self.spec.origin.key(path).map(|key| key.span.clone())
    }

    fn already_listed(&self, first_line: usize, span: &Range<usize>) -> String {
        if self.line_of(span) == first_line {
            "it is already listed earlier in this array; remove one".to_owned()
        } else {
            format!("it is already listed on line {first_line}; remove one")
        }
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        crate::diagnostic::line_column(self.source, span.start).0
    }
}

fn is_hostname(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A DNS label close to `name`: lowercased, other characters replaced by `-`, trimmed.
fn suggest_label(name: &str) -> Option<String> {
    let mut res = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            res.push(c);
        } else if !res.ends_with('-') {
            res.push('-');
        }
    }
    let res: String = res.trim_matches('-').chars().take(63).collect();
    let res = res.trim_end_matches('-').to_owned();
    is_dns_label(&res).then_some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in ["a", "hello", "hello-world", "a1", "1a", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good:?} should be a label");
        }
        for bad in ["", "-a", "a-", "Hello", "hello_world", "hello.world", "héllo", "a b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad:?} should not be a label");
        }
    }

    #[test]
    fn hostnames_and_env_names() {
        assert!(is_hostname("shop.example.com"));
        assert!(!is_hostname("https://shop.example.com"));
        assert!(!is_hostname("shop..example.com"));
        assert!(!is_hostname("*.example.com"));
        assert!(is_env_name("RUST_LOG"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn label_suggestions() {
        assert_eq!(suggest_label("Hello_World"), Some("hello-world".to_owned()));
        assert_eq!(suggest_label("--My  App--"), Some("my-app".to_owned()));
        assert_eq!(suggest_label("___"), None);
    }
}
