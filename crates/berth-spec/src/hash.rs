//! The release hash: a short, stable fingerprint of a spec's effective config.
//!
//! Two specs with the same effective config (defaults filled in, formatting and key order
//! ignored) hash the same; any change to the config changes the hash. The deploy planner uses it
//! to tell whether a service needs a new release.

use crate::model::Spec;

/// 12 lowercase hex characters: the first 48 bits of the 64-bit FNV-1a hash of the spec's
/// canonical JSON (struct fields in declaration order, maps sorted by key).
pub fn release_hash(spec: &Spec) -> String {
    let json = serde_json::to_string(spec)
        .expect("a spec serializes to JSON: every map key is a string and no value can fail");
    let hash = fnv1a_64(json.as_bytes());
    format!("{:012x}", hash >> 16)
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(source: &str) -> String {
        let spec = crate::parse("app.toml", source).expect("test specs are valid");
        release_hash(&spec)
    }

    const BASE: &str = "name = \"web\"\n[run]\ncommand = [\"./web\"]\n";

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn is_twelve_hex_chars_and_stable() {
        let first = hash(BASE);
        assert_eq!(first.len(), 12);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(hash(BASE), first);
    }

    #[test]
    fn ignores_formatting_and_explicit_defaults() {
        let reformatted = "# a comment\n[run]\ncommand = \"./web\"\n\n[health]\ninterval = \"2s\"\n\n[env]\n";
        let reformatted = format!("name = 'web'\nreplicas = 1\n{reformatted}");
        assert_eq!(hash(&reformatted), hash(BASE));
    }

    #[test]
    fn changes_with_any_config_change() {
        let base = hash(BASE);
        for changed in [
            "name = \"web2\"\n[run]\ncommand = [\"./web\"]\n",
            "name = \"web\"\nreplicas = 2\n[run]\ncommand = [\"./web\"]\n",
            "name = \"web\"\n[run]\ncommand = [\"./web\", \"-v\"]\n",
            "name = \"web\"\n[run]\ncommand = [\"./web\"]\n[env]\nA = \"1\"\n",
            "name = \"web\"\n[run]\ncommand = [\"./web\"]\n[health]\ntimeout = \"500ms\"\n",
            "name = \"web\"\nsize = \"medium\"\n[run]\ncommand = [\"./web\"]\n",
        ] {
            assert_ne!(hash(changed), base, "{changed}");
        }
    }
}
