use super::*;

fn lookup_in(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    move |key| vars.iter().find(|(k, _)| k == key).map(|(_, value)| value.clone())
}

#[test]
fn delays_accept_units_and_bare_milliseconds() {
    let check = |text: &str, expected: Option<Duration>| {
        assert_eq!(parse_delay(text), expected, "parse_delay({text:?})");
    };
    check("2s", Some(Duration::from_secs(2)));
    check("1.5s", Some(Duration::from_millis(1500)));
    check("500ms", Some(Duration::from_millis(500)));
    check("250", Some(Duration::from_millis(250)));
    check(" 1m ", Some(Duration::from_secs(60)));
    check("0", Some(Duration::ZERO));
    check("", None);
    check("s", None);
    check("-1s", None);
    check("2h", None);
    check("fast", None);
    check("inf", None);
    check("NaNs", None);
}

#[test]
fn port_is_required_and_must_be_a_port() {
    let missing = Config::from_lookup(lookup_in(&[])).unwrap_err();
    assert!(matches!(missing, ConfigError::Missing { key: "PORT", .. }));
    assert!(missing.to_string().starts_with("environment variable PORT is not set"));

    let invalid = Config::from_lookup(lookup_in(&[("PORT", "http")])).unwrap_err();
    assert_eq!(invalid.to_string(), "invalid PORT=\"http\": expected a TCP port number from 0 to 65535");
    let too_big = Config::from_lookup(lookup_in(&[("PORT", "70000")]));
    assert!(too_big.is_err());
}

#[test]
fn full_environment_is_read() {
    let config = Config::from_lookup(lookup_in(&[
        ("PORT", "8080"),
        ("BERTH_SERVICE", "hello"),
        ("BERTH_REPLICA", "1"),
        ("HELLO_LOG", "json"),
        ("HELLO_START_DELAY", "2s"),
        ("HELLO_FLAKY_ERROR_RATE", "0.05"),
        ("HELLO_LEAK_MB_PER_SEC", "3"),
    ]))
    .unwrap();
    assert_eq!(
        config,
        Config {
            port: 8080,
            identity: Identity { service: Some("hello".into()), replica: Some("1".into()), release: None },
            log_format: LogFormat::Json,
            start_delay: Duration::from_secs(2),
            flaky_error_rate: 0.05,
            leak_mib_per_sec: 3.0,
        }
    );
}

#[test]
fn defaults_and_range_checks() {
    let config = Config::from_lookup(lookup_in(&[("PORT", "0"), ("HELLO_LOG", "")])).unwrap();
    assert_eq!(config.log_format, LogFormat::Plain);
    assert_eq!(config.start_delay, Duration::ZERO);
    assert_eq!(config.flaky_error_rate, 0.0);

    let rate = Config::from_lookup(lookup_in(&[("PORT", "1"), ("HELLO_FLAKY_ERROR_RATE", "5")]));
    assert!(matches!(rate, Err(ConfigError::Invalid { key: "HELLO_FLAKY_ERROR_RATE", .. })));
    let leak = Config::from_lookup(lookup_in(&[("PORT", "1"), ("HELLO_LEAK_MB_PER_SEC", "-2")]));
    assert!(leak.is_err());
}

#[test]
fn fail_start_code_is_parsed() {
    assert_eq!(fail_start_code(lookup_in(&[])), Ok(None));
    assert_eq!(fail_start_code(lookup_in(&[("HELLO_FAIL_START", "3")])), Ok(Some(3)));
    assert!(fail_start_code(lookup_in(&[("HELLO_FAIL_START", "three")])).is_err());
}
