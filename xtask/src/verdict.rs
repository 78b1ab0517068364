//! What a `cargo xtask bench` run says of the gateway's goal against nginx (issue #3, acceptance 3):
//! throughput at 64 connections at least nginx's, and a p99 at a fixed 120 req/s no worse than nginx's.
//!
//! The peer kit prints one line per target and round on stderr (`  round 3  nginx     rps=55540.2
//! p50_us=975 p99_us=4550 other_pct=0.0`, or `p99_ms=0.737` in latency mode); `bench` passes them through
//! and keeps them, and this module reads them: the ratio of the medians over the rounds (as the kit's own
//! table, here unrounded) and in how many rounds berth was ahead, which one median does not show.

/// One target's numbers in one round.
#[derive(Debug, PartialEq)]
pub(crate) struct Round {
    pub(crate) target: String,
    pub(crate) rps: f64,
    pub(crate) p99_ms: f64,
}

/// Reads a kit round line; `None` for any other line.
pub(crate) fn parse_round(line: &str) -> Option<Round> {
    let mut words = line.split_whitespace();
    (words.next()? == "round").then_some(())?;
    words.next()?.parse::<u32>().ok()?;
    let target = words.next()?.to_owned();
    let (mut rps, mut p99_ms) = (None, None);
    for word in words {
        let Some((key, value)) = word.split_once('=') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        match key {
            "rps" => rps = Some(value),
            "p99_ms" => p99_ms = Some(value),
            "p99_us" => p99_ms = Some(value / 1000.0),
            _ => {}
        }
    }
    Some(Round { target, rps: rps?, p99_ms: p99_ms? })
}

/// berth against nginx on one measure.
#[derive(Debug, PartialEq)]
pub(crate) struct Comparison {
    /// berth's median over nginx's.
    pub(crate) ratio: f64,
    /// Rounds in which berth was on the goal's side of nginx, of `rounds`.
    pub(crate) better: usize,
    pub(crate) rounds: usize,
    pub(crate) met: bool,
}

/// Throughput: the goal is a ratio of at least 1.
pub(crate) fn throughput(rounds: &[Round]) -> Option<Comparison> {
    compare(rounds, |round| round.rps, |berth, nginx| berth >= nginx)
}

/// p99 latency: the goal is a ratio of at most 1.
pub(crate) fn latency(rounds: &[Round]) -> Option<Comparison> {
    compare(rounds, |round| round.p99_ms, |berth, nginx| berth <= nginx)
}

fn compare(rounds: &[Round], value: fn(&Round) -> f64, on_goal_side: fn(f64, f64) -> bool) -> Option<Comparison> {
    let of = |target: &str| -> Vec<f64> { rounds.iter().filter(|r| r.target == target).map(value).collect() };
    let (berth, nginx) = (of("berth"), of("nginx"));
    let (berth_median, nginx_median) = (median(&berth)?, median(&nginx)?);
    if nginx_median <= 0.0 {
        return None;
    }
    // Rounds are interleaved: berth's n-th against nginx's n-th.
    let better = berth.iter().zip(&nginx).filter(|&(b, n)| on_goal_side(*b, *n)).count();
    Some(Comparison {
        ratio: berth_median / nginx_median,
        better,
        rounds: berth.len().min(nginx.len()),
        met: on_goal_side(berth_median, nginx_median),
    })
}

/// The median as Python's `statistics.median` takes it (the kit's): the mean of the middle two for an
/// even count.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// One line for the summary: `1.04x nginx (ahead in 3 of 5 rounds): met`.
pub(crate) fn describe(comparison: Option<&Comparison>, side: &str) -> String {
    match comparison {
        Some(c) => format!(
            "{:.3}x nginx ({side} in {} of {} rounds): {}",
            c.ratio,
            c.better,
            c.rounds,
            if c.met { "met" } else { "missed" }
        ),
        None => "no rounds of both berth and nginx to compare".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(target: &str, rps: f64, p99_ms: f64) -> Round {
        Round { target: target.to_owned(), rps, p99_ms }
    }

    #[test]
    fn kit_round_lines_are_read_in_both_modes_and_other_lines_are_not() {
        assert_eq!(
            parse_round("  round 3  nginx     rps=55540.2 p50_us=975 p99_us=4550 other_pct=0.0"),
            Some(round("nginx", 55540.2, 4.55))
        );
        assert_eq!(
            parse_round("  round 1  berth     rps=120.0 p50_ms=0.367 p99_ms=0.531 other_pct=0.0"),
            Some(round("berth", 120.0, 0.531))
        );
        assert_eq!(parse_round("== warm-up"), None);
        assert_eq!(parse_round("  berth round 2: wrk produced no result (see /tmp/x)"), None);
        assert_eq!(parse_round("  round 2  berth     rps=oops p99_us=1"), None, "a value that is not a number");
    }

    #[test]
    fn medians_and_rounds_compare_berth_with_nginx() {
        // Run 26's latency rounds: berth lower in two of five, higher at the median.
        let rounds: Vec<Round> = [(0.572, 0.502), (0.408, 0.483), (0.470, 0.502), (0.517, 0.444), (0.406, 0.440)]
            .iter()
            .flat_map(|&(nginx, berth)| [round("nginx", 120.0, nginx), round("berth", 120.0, berth)])
            .collect();
        let p99 = latency(&rounds).expect("both targets");
        assert_eq!((p99.better, p99.rounds, p99.met), (2, 5, false));
        assert!((p99.ratio - 0.483 / 0.470).abs() < 1e-9, "{}", p99.ratio);
        let rps = throughput(&rounds).expect("both targets");
        assert_eq!((rps.better, rps.met), (5, true), "equal req/s is on the goal's side");
        assert_eq!(describe(Some(&p99), "lower"), "1.028x nginx (lower in 2 of 5 rounds): missed");
    }

    #[test]
    fn an_even_count_takes_the_middle_two_and_a_missing_target_gives_nothing() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(throughput(&[round("berth", 1.0, 1.0)]), None);
        assert_eq!(describe(None, "ahead"), "no rounds of both berth and nginx to compare");
    }
}
