//! Tests for the unit parsers and their round trips through the formatters.

use std::time::Duration;

use super::*;

fn check_duration(input: &str, expected: Duration) {
    assert_eq!(parse_duration(input), Ok(expected), "input {input:?}");
    let formatted = format_duration(expected);
    assert_eq!(parse_duration(&formatted), Ok(expected), "round trip via {formatted:?}");
}

fn check_duration_error(input: &str, expected_fragment: &str) {
    match parse_duration(input) {
        Ok(d) => panic!("{input:?} parsed as {d:?}, expected an error"),
        Err(message) => {
            assert!(message.contains(expected_fragment), "{input:?}: message {message:?} lacks {expected_fragment:?}")
        }
    }
}

#[test]
fn durations_parse() {
    check_duration("500ms", Duration::from_millis(500));
    check_duration("2s", Duration::from_secs(2));
    check_duration("1m", Duration::from_secs(60));
    check_duration("1h", Duration::from_secs(3_600));
    check_duration("1m30s", Duration::from_secs(90));
    check_duration("1h2m3s4ms", Duration::from_millis(3_723_004));
    check_duration("1.5s", Duration::from_millis(1_500));
    check_duration("1m30.25s", Duration::from_millis(90_250));
    check_duration("1m1ms", Duration::from_millis(60_001));
    check_duration("0s", Duration::ZERO);
    check_duration(" 2s ", Duration::from_secs(2));
}

#[test]
fn duration_errors_name_the_units() {
    check_duration_error("5", "has no unit");
    check_duration_error("5", "ms, s, m, h");
    check_duration_error("1.5", "has no unit");
    check_duration_error("", "ms, s, m, h");
    check_duration_error("5 seconds", "`5 seconds` is not a duration");
    check_duration_error("5 s", "`5 s` is not a duration");
    check_duration_error("5sec", "`sec` is not a duration unit");
    check_duration_error("5d", "ms, s, m, h");
    check_duration_error("-5s", "not a duration");
    check_duration_error("s", "not a duration");
    check_duration_error("30s1m", "smaller unit before a larger");
    check_duration_error("1s1s", "repeats a unit");
    check_duration_error("1m30", "ends without a unit");
    check_duration_error("1.5ms", "millisecond precision");
    check_duration_error("1.s", "not a duration");
    check_duration_error("99999999999999999999999999999999999999h", "not a duration");
}

#[test]
fn durations_format_largest_unit_first() {
    assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30.5s");
    assert_eq!(format_duration(Duration::from_millis(1_500)), "1.5s");
    assert_eq!(format_duration(Duration::from_millis(1_050)), "1.05s");
    assert_eq!(format_duration(Duration::from_millis(60_001)), "1m1ms");
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    assert_eq!(format_duration(Duration::from_secs(7_200)), "2h");
    assert_eq!(format_duration(Duration::ZERO), "0s");
}

#[test]
fn sizes_parse() {
    let cases = [
        ("256MiB", 256 << 20),
        ("1GiB", 1 << 30),
        ("512KiB", 512 << 10),
        ("100MB", 100_000_000),
        ("1GB", 1_000_000_000),
        ("4096B", 4_096),
        ("2kB", 2_000),
        ("2KB", 2_000),
        ("1TiB", 1 << 40),
    ];
    for (input, expected) in cases {
        assert_eq!(parse_size(input), Ok(expected), "input {input:?}");
        let formatted = format_size(expected);
        assert_eq!(parse_size(&formatted), Ok(expected), "round trip via {formatted:?}");
    }
}

#[test]
fn size_errors_name_the_units() {
    for (input, fragment) in [
        ("256", "has no unit"),
        ("256", "MiB"),
        ("256mb", "`mb` is not a size unit"),
        ("1.5GiB", "sizes are whole numbers"),
        ("MiB", "not a size"),
        ("-1MiB", "not a size"),
        ("99999999999TiB", "too large"),
    ] {
        match parse_size(input) {
            Ok(n) => panic!("{input:?} parsed as {n}"),
            Err(message) => assert!(message.contains(fragment), "{input:?}: {message:?}"),
        }
    }
}

#[test]
fn sizes_format_with_the_largest_exact_unit() {
    assert_eq!(format_size(256 << 20), "256MiB");
    assert_eq!(format_size(100_000_000), "100MB");
    assert_eq!(format_size(4_095), "4095B");
    assert_eq!(format_size(0), "0B");
}

#[test]
fn sizes_for_people_are_rounded() {
    assert_eq!(format_size_rounded(128 << 20), "128.0MiB");
    assert_eq!(format_size_rounded(3 << 29), "1.5GiB");
    assert_eq!(format_size_rounded(2048), "2KiB");
}

#[test]
fn cpu_amounts() {
    assert_eq!(parse_cpu("500m"), Ok(500));
    assert_eq!(parse_cpu("1"), Ok(1_000));
    assert_eq!(parse_cpu("0.25"), Ok(250));
    assert!(parse_cpu("0").is_err());
    assert!(parse_cpu("0m").is_err());
    assert!(parse_cpu("half").is_err());
    assert!(parse_cpu("0.0005").is_err());
    assert_eq!(cpu_from_cores(0.5), Ok(500));
    assert_eq!(cpu_from_cores(0.1), Ok(100));
    assert_eq!(cpu_from_cores(2.0), Ok(2_000));
    assert!(cpu_from_cores(0.0).is_err());
    assert!(cpu_from_cores(-1.0).is_err());
    assert!(cpu_from_cores(0.0001).is_err());
    assert_eq!(parse_cpu(&format_cpu(250)), Ok(250));
}

#[test]
fn percentages_round_trip() {
    assert_eq!(parse_percent("70%"), Ok(0.7));
    assert_eq!(parse_percent("1%"), Ok(0.01));
    assert_eq!(parse_percent("0.5%"), Ok(0.005));
    assert!(parse_percent("70").is_err());
    assert!(parse_percent("101%").is_err());
    assert!(parse_percent("-1%").is_err());
    for input in ["70%", "1%", "0.5%", "0.1%", "33.3%", "100%", "0%"] {
        let fraction = parse_percent(input).expect("valid percentage in the test table");
        assert_eq!(format_percent(fraction), input);
    }
}

#[test]
fn rates() {
    assert_eq!(parse_rate("20/s"), Ok((20, Duration::from_secs(1))));
    assert_eq!(parse_rate("600/m"), Ok((600, Duration::from_secs(60))));
    assert!(parse_rate("20").is_err());
    assert!(parse_rate("20/h").is_err());
    assert!(parse_rate("0/s").is_err());
    assert!(parse_rate("x/s").is_err());
}
