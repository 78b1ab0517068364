//! A seeded generator for the tests that try many generated inputs: every case can be made again from the
//! seed and its number, which a failure prints. `BERTH_AGREEMENT_SEED` picks another seed and
//! `BERTH_AGREEMENT_CASES` runs more (or fewer) cases.

/// How many cases a generated-input test runs unless told otherwise.
const CASES: u64 = 2000;

/// The seed and the number of cases, from the environment or the defaults.
pub(crate) fn seed_and_cases() -> (u64, u64) {
    let env = |name: &str| std::env::var(name).ok().and_then(|value| value.parse().ok());
    (env("BERTH_AGREEMENT_SEED").unwrap_or(0x5eed_0b3e), env("BERTH_AGREEMENT_CASES").unwrap_or(CASES))
}

/// The choices for one part of a generated input, each list separated by `|`: `sane` ones, which make a
/// valid message, and `odd` ones, which a wild case also takes.
pub(crate) struct Choices {
    pub(crate) sane: &'static str,
    pub(crate) odd: &'static str,
}

/// SplitMix64.
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of case `case` under `seed`.
    pub(crate) fn for_case(seed: u64, case: u64) -> Rng {
        Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }

    /// True one time in `n`.
    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One of `choices`: a sane one, or in a wild case now and then an odd one.
    pub(crate) fn choose(&mut self, choices: &Choices, wild: bool) -> &'static [u8] {
        let list = if wild && self.one_in(3) { choices.odd } else { choices.sane };
        let n = list.split('|').count();
        list.split('|').nth(self.below(n)).unwrap_or_default().as_bytes()
    }

    /// The line end of a generated head: mostly CRLF, in a wild case now and then a bare LF.
    pub(crate) fn eol(&mut self, wild: bool) -> &'static [u8] {
        if wild && self.one_in(6) { b"\n" } else { b"\r\n" }
    }

    /// A header section's fields (up to `max`, each line ended), then its empty line: names and values from
    /// the choices, a `Content-Length` mostly telling the truth (`body_len`). Returns whether a
    /// `Transfer-Encoding` ends in `chunked`.
    pub(crate) fn fields(
        &mut self,
        out: &mut Vec<u8>,
        (names, values): (&Choices, &Choices),
        wild: bool,
        body_len: usize,
        max: usize,
    ) -> bool {
        let mut chunked = false;
        for _ in 0..self.below(max + 1) {
            let name = self.choose(names, wild);
            out.extend_from_slice(name);
            out.extend_from_slice(if wild && self.one_in(10) { b" :" } else { b":" });
            if !self.one_in(8) {
                out.push(b' ');
            }
            if name.eq_ignore_ascii_case(b"content-length") && !self.one_in(4) {
                out.extend_from_slice(body_len.to_string().as_bytes());
            } else {
                let value = self.choose(values, wild);
                chunked |= name.eq_ignore_ascii_case(b"transfer-encoding") && value.ends_with(b"chunked");
                out.extend_from_slice(value);
            }
            out.extend_from_slice(self.eol(wild));
        }
        out.extend_from_slice(self.eol(wild));
        chunked
    }

    /// Up to three bytes of `input` replaced, removed or inserted, from those parsers treat specially.
    pub(crate) fn mutate(&mut self, input: &mut Vec<u8>) {
        const SPECIAL: &[u8] = b"\r\n\0 :,\t\x7f\xff0a;";
        for _ in 0..self.below(4) {
            let at = self.below(input.len() + 1);
            let byte = SPECIAL[self.below(SPECIAL.len())];
            match self.below(3) {
                0 if at < input.len() => input[at] = byte,
                1 if at < input.len() => drop(input.remove(at)),
                _ => input.insert(at, byte),
            }
        }
    }
}
