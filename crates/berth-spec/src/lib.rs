//! The `app.toml` spec: data model, parser, validator and diagnostics.
//!
//! [`parse`] turns the text of an `app.toml` into a [`Spec`] or into diagnostics that say what is
//! wrong, where, and what to write instead. Syntax and type errors stop at the first problem
//! (that is all `toml` and serde report); semantic rules then all run, and every violation is
//! reported at once. [`Diagnostic::render`] is the one renderer for all of them.
//!
//! This crate is pure: no file, network or clock access and no async runtime. Callers read files
//! and pass the text, so the same input always gives the same output.

mod acted_on;
mod de;
mod diagnostic;
mod document;
mod explain;
mod hash;
mod model;
mod platform;
pub mod template;
mod units;
mod validate;

pub use acted_on::{NOT_YET_ACTED_ON, not_yet_acted_on};
pub use diagnostic::{Diagnostic, Severity, render_all};
pub use hash::release_hash;
pub use model::{
    Analysis, Autoscale, Cache, Dependencies, Deploy, Health, KeyOrigin, Kind, Nfr, Origin, Pool, Postgres, Protocol,
    Rate, RateKey, RateLimit, Redis, Route, Run, Size, Spec, Step, Sticky, Strategy,
};
pub use platform::{
    ApiListener, CertificateFiles, DeployHooks, GatewayListeners, Listen, PlatformConfig, parse_platform,
};
pub use toml::Spanned;
pub use units::{format_duration, format_size, format_size_rounded, parse_duration, parse_size};
pub use validate::{MAX_REPLICAS, is_dns_label};

use serde::Deserialize;
use toml::de::DeTable;

/// Parses and validates the text of an `app.toml`. `file` is only used in messages.
///
/// On success the spec has every default filled in and its [`Spec::origin`] set. On failure
/// the diagnostics are errors, in source order: one for a syntax or type error, or all semantic
/// errors together.
pub fn parse(file: &str, source: &str) -> Result<Spec, Vec<Diagnostic>> {
    let root = DeTable::parse(source).map_err(|error| vec![explain::syntax_error(file, source, &error)])?;
    let doc = document::Document::new(source, root.get_ref());
    let mut spec = Spec::deserialize(toml::Deserializer::from(root))
        .map_err(|error| vec![explain::data_error(file, source, &doc, &error)])?;
    spec.origin = doc.origin(file, source);
    let diags = validate::validate(&spec, source);
    if diags.is_empty() { Ok(spec) } else { Err(diags) }
}
