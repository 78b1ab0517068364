//! Serde glue for values that carry units or have two written forms: durations, percentages,
//! commands, sizes, rates and rate-limit keys.
//!
//! Errors raised here are not final messages. They contain the [`KEY`] placeholder where the
//! key name goes and an optional hint after [`HINT`]; `explain` fills in the key and table from
//! the error's position in the document. This keeps one place responsible for naming keys.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::model::{Rate, RateKey, Size, Sticky};
use crate::units;

/// Placeholder for the key name in an error message, replaced by `explain`.
pub(crate) const KEY: &str = "\u{0}key\u{0}";
/// Separates an error message from its hint.
pub(crate) const HINT: &str = "\u{0}hint\u{0}";

/// The hint for any value that is not written as a duration.
pub(crate) const DURATION_HINT: &str = "use a number with a unit: ms, s, m, h (e.g. \"500ms\", \"2s\")";

const EXPECT_DURATION: &str = "a duration such as \"2s\"";
const EXPECT_PERCENT: &str = "a percentage such as \"1%\"";
const EXPECT_COMMAND: &str = "a command: an array of strings or one string";
const EXPECT_SIZE: &str = "a size preset or a table with `cpu` and `memory`";
const EXPECT_CPU: &str = "a CPU amount such as \"500m\" or 0.5";
const EXPECT_MEMORY: &str = "a memory size such as \"256MiB\"";
const EXPECT_RATE: &str = "a rate such as \"20/s\"";
const EXPECT_RATE_KEY: &str = "\"header:<Name>\", \"source\" or \"ip\"";
const EXPECT_STICKY: &str = "\"header:<Name>\" or \"cookie:<name>\"";

const COMMAND_HINT: &str =
    "give the program and its arguments, e.g. `command = [\"./bin/server\", \"--port\", \"8080\"]`";
const STICKY_HINT: &str = "use \"header:<Name>\" (requests carrying that header go to the canary, e.g. \"header:X-Canary\") or \"cookie:<name>\" (a client stays with the release that first answered it, e.g. \"cookie:berth_canary\")";
const RATE_KEY_HINT: &str = "use \"header:<Name>\" (e.g. \"header:X-Api-Key\"), \"source\" (the calling service) or \"ip\" (the client address)";

/// What each custom visitor expects (as serde reports it in "invalid type" errors) and the
/// hint for a value of the wrong type.
pub(crate) const EXPECTATION_HINTS: &[(&str, &str)] = &[
    (EXPECT_DURATION, DURATION_HINT),
    (EXPECT_PERCENT, "write a percentage in quotes, e.g. \"1%\" or \"0.5%\""),
    (EXPECT_COMMAND, COMMAND_HINT),
    (EXPECT_SIZE, SIZE_CHOICES),
    (EXPECT_CPU, CPU_HINT),
    (EXPECT_MEMORY, "write the size as a string with a unit, e.g. \"256MiB\" or \"1GiB\""),
    (EXPECT_RATE, "write requests per second or minute in quotes, e.g. \"20/s\" or \"600/m\""),
    (EXPECT_RATE_KEY, RATE_KEY_HINT),
    (EXPECT_STICKY, STICKY_HINT),
];

/// `#[serde(with)]` for a [`Duration`] written as `"2s"`.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&units::format_duration(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(DurationValue::deserialize(deserializer)?.0)
    }
}

/// `#[serde(with)]` for an optional [`Duration`].
pub(crate) mod opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&units::format_duration(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        Ok(Some(DurationValue::deserialize(deserializer)?.0))
    }
}

/// `#[serde(with)]` for a [`Spanned`] [`Duration`].
pub(crate) mod spanned_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Spanned<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&units::format_duration(*value.get_ref()))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Spanned<Duration>, D::Error> {
        let value = Spanned::<DurationValue>::deserialize(deserializer)?;
        Ok(Spanned::new(value.span(), value.into_inner().0))
    }
}

/// `#[serde(with)]` for an optional [`Spanned`] [`Duration`].
pub(crate) mod opt_spanned_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Spanned<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&units::format_duration(*value.get_ref())),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Spanned<Duration>>, D::Error> {
        super::spanned_duration::deserialize(deserializer).map(Some)
    }
}

/// `#[serde(with)]` for an optional percentage (`"1%"`) stored as a fraction.
pub(crate) mod opt_percent {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<f64>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&units::format_percent(*value)),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
        deserializer.deserialize_any(PercentVisitor).map(Some)
    }
}

/// `#[serde(with)]` for a command: an array of strings, or one string split on whitespace.
pub(crate) mod command {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        value.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_any(CommandVisitor)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if let Some(preset) = &self.preset {
            return serializer.serialize_str(preset);
        }
        let mut table = serializer.serialize_struct("Size", 2)?;
        table.serialize_field("cpu", &units::format_cpu(self.cpu_millis))?;
        table.serialize_field("memory", &units::format_size(self.memory_bytes))?;
        table.end()
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let period = if self.per == Duration::from_secs(60) { "m" } else { "s" };
        serializer.serialize_str(&format!("{}/{period}", self.requests))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RateVisitor)
    }
}

impl Serialize for RateKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RateKey::Header(name) => serializer.serialize_str(&format!("header:{name}")),
            RateKey::Source => serializer.serialize_str("source"),
            RateKey::Ip => serializer.serialize_str("ip"),
        }
    }
}

impl<'de> Deserialize<'de> for RateKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RateKeyVisitor)
    }
}

impl Serialize for Sticky {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Sticky::Header(name) => serializer.serialize_str(&format!("header:{name}")),
            Sticky::Cookie(name) => serializer.serialize_str(&format!("cookie:{name}")),
        }
    }
}

impl<'de> Deserialize<'de> for Sticky {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StickyVisitor)
    }
}

struct StickyVisitor;

impl Visitor<'_> for StickyVisitor {
    type Value = Sticky;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_STICKY)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Sticky, E> {
        if let Some(name) = v.strip_prefix("header:").filter(|name| is_header_name(name)) {
            return Ok(Sticky::Header(name.to_owned()));
        }
        // Cookie names are tokens too (RFC 6265).
        if let Some(name) = v.strip_prefix("cookie:").filter(|name| is_header_name(name)) {
            return Ok(Sticky::Cookie(name.to_owned()));
        }
        Err(error_with_hint(&format!("invalid sticky canary `{v}` for {KEY}"), STICKY_HINT))
    }
}

/// Builds a custom error with a hint, for `explain` to finish.
pub(crate) fn error_with_hint<E: de::Error>(message: &str, hint: &str) -> E {
    E::custom(format!("{message}{HINT}{hint}"))
}

struct DurationValue(Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(DurationValue)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_DURATION)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        units::parse_duration_detailed(v).map_err(|error| {
            let hint = if error.is_about_form() { DURATION_HINT.to_owned() } else { error.to_string() };
            error_with_hint(&format!("invalid duration `{v}` for {KEY}"), &hint)
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(bare_number(&v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(bare_number(&v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(bare_number(&v.to_string()))
    }
}

fn bare_number<E: de::Error>(number: &str) -> E {
    error_with_hint(
        &format!("{KEY} needs a unit, found the bare number {number}"),
        &format!(
            "write it as a string with a unit, e.g. \"{number}s\" or \"{number}ms\" (units: {})",
            units::DURATION_UNITS
        ),
    )
}

struct PercentVisitor;

impl Visitor<'_> for PercentVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_PERCENT)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        units::parse_percent(v).map_err(|reason| {
            error_with_hint(
                &format!("invalid percentage `{v}` for {KEY}"),
                &format!("{reason}; write e.g. \"1%\" or \"0.5%\""),
            )
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Err(bare_percent(&v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Err(bare_percent(&v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Err(bare_percent(&v.to_string()))
    }
}

fn bare_percent<E: de::Error>(number: &str) -> E {
    error_with_hint(
        &format!("{KEY} must be a percentage string, found the bare number {number}"),
        &format!("write it with a percent sign, e.g. \"{number}%\""),
    )
}

struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_COMMAND)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        let words: Vec<String> = v.split_whitespace().map(str::to_owned).collect();
        if words.is_empty() {
            return Err(empty_command());
        }
        Ok(words)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut words = Vec::new();
        while let Some(word) = seq.next_element::<String>()? {
            words.push(word);
        }
        if words.is_empty() || words[0].trim().is_empty() {
            return Err(empty_command());
        }
        Ok(words)
    }
}

fn empty_command<E: de::Error>() -> E {
    error_with_hint(&format!("{KEY} is empty"), COMMAND_HINT)
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_SIZE)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        Size::preset(v).ok_or_else(|| {
            let suggestion = crate::explain::closest(v, Size::PRESETS.iter().copied())
                .map(|name| format!("did you mean `{name}`? "))
                .unwrap_or_default();
            error_with_hint(&format!("unknown size preset `{v}` for {KEY}"), &format!("{suggestion}{SIZE_CHOICES}"))
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Size, A::Error> {
        let table = SizeTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Size { preset: None, cpu_millis: table.cpu.0, memory_bytes: table.memory.0 })
    }
}

const SIZE_CHOICES: &str = "the presets are \"small\" (250m CPU, 128MiB), \"medium\" (500m, 256MiB) and \"large\" (1000m, 512MiB); or write a table such as `size = { cpu = \"500m\", memory = \"256MiB\" }`";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeTable {
    cpu: Cpu,
    memory: Memory,
}

struct Cpu(u32);

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CpuVisitor).map(Cpu)
    }
}

struct CpuVisitor;

const CPU_HINT: &str = "write millicores as a string (\"500m\") or cores as a number (0.5, 2) or string (\"1\")";

impl Visitor<'_> for CpuVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_CPU)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        units::parse_cpu(v).map_err(|reason| {
            error_with_hint(&format!("invalid CPU amount `{v}` for {KEY}"), &format!("{reason}; {CPU_HINT}"))
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        // Precision loss is impossible for any sensible core count and is caught by the range
        // checks in `cpu_from_cores` for the rest.
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.visit_f64(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        units::cpu_from_cores(v).map_err(|reason| {
            error_with_hint(&format!("invalid CPU amount `{v}` for {KEY}"), &format!("{reason}; {CPU_HINT}"))
        })
    }
}

struct Memory(u64);

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MemoryVisitor).map(Memory)
    }
}

struct MemoryVisitor;

impl Visitor<'_> for MemoryVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_MEMORY)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        match units::parse_size(v) {
            Ok(0) => Err(error_with_hint(
                &format!("{KEY} must be more than 0"),
                "give the memory limit with a unit, e.g. \"256MiB\"",
            )),
            Ok(bytes) => Ok(bytes),
            Err(reason) => Err(error_with_hint(
                &format!("invalid size `{v}` for {KEY}"),
                &format!("{reason}; e.g. \"256MiB\" or \"1GiB\""),
            )),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        Err(bare_size(&v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Err(bare_size(&v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
        Err(bare_size(&v.to_string()))
    }
}

fn bare_size<E: de::Error>(number: &str) -> E {
    error_with_hint(
        &format!("{KEY} needs a unit, found the bare number {number}"),
        &format!("write it as a string with a unit, e.g. \"{number}MiB\" (units: {})", units::SIZE_UNITS),
    )
}

struct RateVisitor;

impl Visitor<'_> for RateVisitor {
    type Value = Rate;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_RATE)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
        units::parse_rate(v)
            .map(|(requests, per)| Rate { requests, per })
            .map_err(|reason| error_with_hint(&format!("invalid rate `{v}` for {KEY}"), &reason))
    }
}

struct RateKeyVisitor;

impl Visitor<'_> for RateKeyVisitor {
    type Value = RateKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECT_RATE_KEY)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RateKey, E> {
        match v {
            "source" => Ok(RateKey::Source),
            "ip" => Ok(RateKey::Ip),
            _ => match v.strip_prefix("header:") {
                Some(name) if is_header_name(name) => Ok(RateKey::Header(name.to_owned())),
                _ => Err(error_with_hint(&format!("invalid rate-limit key `{v}` for {KEY}"), RATE_KEY_HINT)),
            },
        }
    }
}

/// An HTTP header name token (RFC 9110 `token`).
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
