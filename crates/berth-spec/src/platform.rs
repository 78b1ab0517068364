//! The platform config, `berth.toml`: where the gateway and the control API listen, and the TLS
//! certificates the gateway serves. One per platform (not per service); everything in it is optional.
//!
//! ```toml
//! [gateway]
//! http = "127.0.0.1:8080"
//! https = "127.0.0.1:8443"   # "off" turns a listener off
//! http3 = true               # QUIC on the HTTPS port (UDP)
//!
//! [api]
//! listen = "127.0.0.1:9190"
//!
//! [deploy]
//! webhook = "http://127.0.0.1:9000/berth"   # every deploy event, POSTed as JSON
//!
//! [[certificates]]           # served for the names in the certificate, picked by SNI
//! cert = "certs/example.com.pem"
//! key = "certs/example.com.key"
//! ```

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;
use toml::de::DeTable;

use crate::diagnostic::{Diagnostic, Severity};
use crate::document::Document;
use crate::explain;

/// The platform's listeners and certificates, as written in `berth.toml`, with defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    #[serde(default)]
    pub gateway: GatewayListeners,
    #[serde(default)]
    pub api: ApiListener,
    #[serde(default)]
    pub deploy: DeployHooks,
    /// User certificates; hosts without one get a self-signed certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateFiles>,
}

/// What happens around deploys, platform-wide.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployHooks {
    /// `http://` URL that receives every deploy event (JSON, POST), e.g. for a chat channel or an audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayListeners {
    /// Plain HTTP/1.1 and h2c.
    pub http: Spanned<Listen>,
    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN).
    pub https: Spanned<Listen>,
    /// HTTP/3 over QUIC on the HTTPS listener's port.
    pub http3: Spanned<bool>,
    /// One `berth::access` log event per request.
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiListener {
    /// The control API (bearer token) and `/metrics`.
    pub listen: Spanned<Listen>,
}

/// A PEM certificate chain and its PEM private key. Relative paths are relative to `berth.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// A listen address, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl Listen {
    /// Parses `"off"` or `"host:port"` with a literal IP address.
    pub fn parse(text: &str) -> Result<Listen, String> {
        if text == "off" {
            return Ok(Listen::Off);
        }
        text.parse().map(Listen::On).map_err(|_| {
            format!("`{text}` is not a listen address: write an IP address and a port, e.g. `127.0.0.1:8443`, or `off`")
        })
    }

    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Listen::Off => None,
            Listen::On(addr) => Some(addr),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::On(addr) => addr.fmt(f),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        Listen::parse(text)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Listen, D::Error> {
        let text = String::deserialize(deserializer)?;
        Listen::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn listen(addr: &str) -> Spanned<Listen> {
    Spanned::new(0..0, Listen::parse(addr).unwrap_or(Listen::Off))
}

impl Default for GatewayListeners {
    fn default() -> Self {
        GatewayListeners {
            http: listen(PlatformConfig::DEFAULT_HTTP),
            https: listen(PlatformConfig::DEFAULT_HTTPS),
            http3: Spanned::new(0..0, true),
            access_log: false,
        }
    }
}

impl Default for ApiListener {
    fn default() -> Self {
        ApiListener { listen: listen(PlatformConfig::DEFAULT_API) }
    }
}

impl PlatformConfig {
    /// The platform config's file name, looked for in the directories given to `berth up`.
    pub const FILE_NAME: &'static str = "berth.toml";
    pub const DEFAULT_HTTP: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_HTTPS: &'static str = "127.0.0.1:8443";
    pub const DEFAULT_API: &'static str = "127.0.0.1:9190";
}

/// Parses and checks the text of a `berth.toml`. `file` is only used in messages.
pub fn parse_platform(file: &str, source: &str) -> Result<PlatformConfig, Vec<Diagnostic>> {
    let root = DeTable::parse(source).map_err(|error| vec![explain::syntax_error(file, source, &error)])?;
    let doc = Document::new(source, root.get_ref());
    let config = PlatformConfig::deserialize(toml::Deserializer::from(root))
        .map_err(|error| vec![explain::data_error(file, source, &doc, &error)])?;
    let mut diags = Vec::new();
    let gateway = &config.gateway;
    let error = |span: std::ops::Range<usize>, message: String, hint: &str| {
        Diagnostic::new(Severity::Error, file, message).at(source, span).with_hint(hint)
    };
    if *gateway.http3.get_ref() && *gateway.https.get_ref() == Listen::Off && !gateway.http3.span().is_empty() {
        diags.push(error(
            gateway.http3.span(),
            "`http3 = true` in [gateway] needs the HTTPS listener, which is `off`".to_owned(),
            "HTTP/3 runs on the HTTPS port: set `https` to an address, or `http3 = false`",
        ));
    }
    if *config.api.listen.get_ref() == Listen::Off {
        diags.push(error(
            config.api.listen.span(),
            "the control API cannot be `off`: every berth command talks to it".to_owned(),
            "give it a loopback address, e.g. `listen = \"127.0.0.1:9190\"`",
        ));
    }
    let listeners = [("http", &gateway.http), ("https", &gateway.https), ("api", &config.api.listen)];
    for (i, (name, listen)) in listeners.iter().enumerate() {
        let Some(addr) = listen.get_ref().addr() else { continue };
        if addr.port() == 0 {
            continue;
        }
        if let Some((other, _)) = listeners[..i].iter().find(|(_, earlier)| earlier.get_ref().addr() == Some(addr)) {
            diags.push(error(
                listen.span(),
                format!("`{name}` listens on {addr}, which `{other}` already uses"),
                "give every listener its own port",
            ));
        }
    }
    if let Some(webhook) = &config.deploy.webhook {
        let url = webhook.get_ref();
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            diags.push(error(
                webhook.span(),
                format!("`webhook` in [deploy] must be an http:// URL, found `{url}`"),
                "write e.g. `webhook = \"http://127.0.0.1:9000/berth\"` (HTTPS webhooks are not supported yet)",
            ));
        }
    }
    for certificate in &config.certificates {
        for path in [&certificate.cert, &certificate.key] {
            if path.get_ref().trim().is_empty() {
                diags.push(error(
                    path.span(),
                    "empty path in [[certificates]]".to_owned(),
                    "write the PEM file's path",
                ));
            }
        }
    }
    if diags.is_empty() { Ok(config) } else { Err(diags) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = parse_platform("berth.toml", "").expect("empty is valid");
        assert_eq!(config, PlatformConfig::default());
        assert_eq!(config.gateway.https.get_ref().to_string(), "127.0.0.1:8443");
        assert!(*config.gateway.http3.get_ref());
    }

    #[test]
    fn listeners_and_certificates_parse() {
        let source = r#"
[gateway]
http = "off"
https = "0.0.0.0:443"
[[certificates]]
cert = "a.pem"
key = "a.key"
"#;
        let config = parse_platform("berth.toml", source).expect("valid");
        assert_eq!(*config.gateway.http.get_ref(), Listen::Off);
        assert_eq!(config.gateway.https.get_ref().addr(), Some("0.0.0.0:443".parse().expect("addr")));
        assert_eq!(config.certificates[0].key.get_ref(), "a.key");
    }

    #[test]
    fn bad_input_says_where_and_what_to_do() {
        let bad_addr = parse_platform("berth.toml", "[gateway]\nhttps = \"localhost\"\n").expect_err("bad addr");
        let text = bad_addr[0].to_string();
        assert!(text.starts_with("berth.toml:2:9: error"), "{text}");
        assert!(text.contains("not a listen address"), "{text}");

        let typo = parse_platform("berth.toml", "[gateway]\nhtps = \"off\"\n").expect_err("typo");
        assert!(typo[0].to_string().contains("unknown key `htps`"), "{}", typo[0]);
        assert_eq!(typo[0].hint.as_deref(), Some("did you mean `https`?"));

        let clash = "[gateway]\nhttp = \"127.0.0.1:9000\"\nhttps = \"127.0.0.1:9000\"\nhttp3 = false\n";
        let clash = parse_platform("berth.toml", clash).expect_err("same port");
        assert!(clash[0].to_string().contains("`https` listens on 127.0.0.1:9000, which `http` already uses"));

        let hook = parse_platform("berth.toml", "[deploy]\nwebhook = \"https://chat.example/x\"\n").expect_err("https");
        assert!(hook[0].to_string().starts_with("berth.toml:2:11: error: `webhook` in [deploy]"), "{}", hook[0]);

        let h3 = parse_platform("berth.toml", "[gateway]\nhttps = \"off\"\nhttp3 = true\n").expect_err("h3");
        assert!(h3[0].to_string().starts_with("berth.toml:3:9"), "{}", h3[0]);
    }
}
