//! Tracking numbers: per-jurisdiction formats, a canonical text form, and the keys under which
//! manifests and parties are committed in the completeness map.
//!
//! Schemes are pluggable: each [`TrackingScheme`] has its own validator, and adding a
//! jurisdiction means adding a scheme value in the proto and a validator here.

use std::fmt;

use crate::hash::{Digest, Purpose};
use crate::pb::{self, TrackingScheme};

/// Longest registry id accepted for a party.
pub const MAX_REGISTRY_ID_LEN: usize = 64;

/// Why a tracking number or registry id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackingError {
    /// No scheme given.
    #[error("tracking number has no scheme; use EPA, CN, EU or LOCAL")]
    NoScheme,
    /// The number does not match the scheme's format.
    #[error("tracking number {number:?} is not a valid {scheme} number: {expected}")]
    Format {
        /// Scheme name.
        scheme: &'static str,
        /// The number as given.
        number: String,
        /// What the scheme expects.
        expected: &'static str,
    },
    /// A party registry id with characters outside `[A-Za-z0-9._-]` or a bad length.
    #[error("registry id {0:?} must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'")]
    RegistryId(String),
}

/// A validated tracking number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tracking {
    scheme: TrackingScheme,
    number: String,
}

impl Tracking {
    /// Validates a wire tracking number against its scheme.
    pub fn from_pb(t: &pb::TrackingNumber) -> Result<Tracking, TrackingError> {
        let scheme = TrackingScheme::try_from(t.scheme).unwrap_or(TrackingScheme::Unspecified);
        Tracking::new(scheme, &t.number)
    }

    /// Validates `number` in `scheme`.
    pub fn new(scheme: TrackingScheme, number: &str) -> Result<Tracking, TrackingError> {
        let format_error = |expected| TrackingError::Format {
            scheme: scheme_name(scheme),
            number: number.to_owned(),
            expected,
        };
        let b = number.as_bytes();
        match scheme {
            TrackingScheme::Unspecified => return Err(TrackingError::NoScheme),
            TrackingScheme::Epa => {
                let ok = b.len() == 12
                    && b[..9].iter().all(u8::is_ascii_digit)
                    && b[9..].iter().all(u8::is_ascii_uppercase);
                if !ok {
                    return Err(format_error(
                        "9 digits followed by 3 capital letters, e.g. 100001234ELC",
                    ));
                }
            }
            TrackingScheme::Cn => {
                const EXPECTED: &str = "14 digits: year (2000-2099), province (11-82), city (2), serial (000001-999999)";
                if b.len() != 14 || !b.iter().all(u8::is_ascii_digit) {
                    return Err(format_error(EXPECTED));
                }
                let year: u32 = number[..4].parse().map_err(|_| format_error(EXPECTED))?;
                let province: u32 = number[4..6].parse().map_err(|_| format_error(EXPECTED))?;
                let serial: u32 = number[8..].parse().map_err(|_| format_error(EXPECTED))?;
                if !(2000..=2099).contains(&year) || !(11..=82).contains(&province) || serial == 0 {
                    return Err(format_error(EXPECTED));
                }
            }
            TrackingScheme::Eu => {
                let ok = (1..=40).contains(&b.len())
                    && b.iter()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'-');
                if !ok {
                    return Err(format_error("1 to 40 characters from A-Z, 0-9 and '-'"));
                }
            }
            TrackingScheme::Local => {
                let ok = (1..=40).contains(&b.len())
                    && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
                if !ok {
                    return Err(format_error(
                        "1 to 40 characters from A-Z, a-z, 0-9 and '-'",
                    ));
                }
            }
        }
        Ok(Tracking {
            scheme,
            number: number.to_owned(),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> TrackingScheme {
        self.scheme
    }

    /// The number within the scheme.
    pub fn number(&self) -> &str {
        &self.number
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::TrackingNumber {
        pb::TrackingNumber {
            scheme: self.scheme as i32,
            number: self.number.clone(),
        }
    }

    /// The completeness-map key of this manifest.
    pub fn map_key(&self) -> Digest {
        subject_map_key(SubjectKind::Manifest, self.to_string().as_bytes())
    }

    /// Parses the canonical text form `scheme:number`, e.g. `epa:100001234ELC`.
    pub fn parse(text: &str) -> Result<Tracking, TrackingError> {
        let (scheme, number) = text.split_once(':').ok_or(TrackingError::NoScheme)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "epa" => TrackingScheme::Epa,
            "cn" => TrackingScheme::Cn,
            "eu" => TrackingScheme::Eu,
            "local" => TrackingScheme::Local,
            _ => return Err(TrackingError::NoScheme),
        };
        Tracking::new(scheme, number)
    }
}

/// Canonical text form: lower-case scheme, a colon, the number (`cn:20261502000001`).
impl fmt::Display for Tracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}",
            scheme_name(self.scheme).to_ascii_lowercase(),
            self.number
        )
    }
}

/// The scheme's short upper-case name.
pub fn scheme_name(scheme: TrackingScheme) -> &'static str {
    match scheme {
        TrackingScheme::Unspecified => "UNSPECIFIED",
        TrackingScheme::Epa => "EPA",
        TrackingScheme::Cn => "CN",
        TrackingScheme::Eu => "EU",
        TrackingScheme::Local => "LOCAL",
    }
}

/// Validates a party registry id.
pub fn validate_registry_id(id: &str) -> Result<(), TrackingError> {
    let ok = (1..=MAX_REGISTRY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TrackingError::RegistryId(id.to_owned()))
    }
}

/// The two kinds of chain the ledger keeps per subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SubjectKind {
    /// A manifest's custody chain.
    Manifest,
    /// A party's registry chain.
    Party,
}

/// Completeness-map key: `blake3-derive("wasteledger v1 map key", tag ‖ 0x00 ‖ name)` with tag
/// `manifest` or `party`, and name the canonical tracking number or the registry id.
pub fn subject_map_key(kind: SubjectKind, name: &[u8]) -> Digest {
    let tag: &[u8] = match kind {
        SubjectKind::Manifest => b"manifest",
        SubjectKind::Party => b"party",
    };
    Purpose::MapKey.hash_parts(&[tag, &[0], name])
}

/// Completeness-map key of a party.
pub fn party_map_key(registry_id: &str) -> Digest {
    subject_map_key(SubjectKind::Party, registry_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_numbers() {
        assert!(Tracking::new(TrackingScheme::Epa, "100001234ELC").is_ok());
        assert!(Tracking::new(TrackingScheme::Cn, "20261502000001").is_ok());
        assert!(Tracking::new(TrackingScheme::Eu, "DE-2026-000123").is_ok());
        assert!(Tracking::new(TrackingScheme::Local, "pilot-42").is_ok());
    }

    #[test]
    fn invalid_numbers() {
        for (scheme, number) in [
            (TrackingScheme::Epa, "100001234elc"),
            (TrackingScheme::Epa, "10000123ELC"),
            (TrackingScheme::Epa, "1000012345ELC"),
            (TrackingScheme::Cn, "2026150200000"),
            (TrackingScheme::Cn, "19991502000001"),
            (TrackingScheme::Cn, "20269902000001"),
            (TrackingScheme::Cn, "20261502000000"),
            (TrackingScheme::Eu, "de-1"),
            (TrackingScheme::Eu, ""),
            (TrackingScheme::Local, "a b"),
        ] {
            assert!(
                matches!(
                    Tracking::new(scheme, number),
                    Err(TrackingError::Format { .. })
                ),
                "{number} accepted"
            );
        }
        assert_eq!(
            Tracking::new(TrackingScheme::Unspecified, "1"),
            Err(TrackingError::NoScheme)
        );
    }

    #[test]
    fn text_form_round_trips_and_keys_differ_by_kind() {
        let t = Tracking::new(TrackingScheme::Epa, "100001234ELC").unwrap();
        assert_eq!(t.to_string(), "epa:100001234ELC");
        assert_eq!(Tracking::parse("epa:100001234ELC").unwrap(), t);
        assert_ne!(
            subject_map_key(SubjectKind::Manifest, b"x"),
            subject_map_key(SubjectKind::Party, b"x")
        );
    }

    #[test]
    fn registry_ids() {
        assert!(validate_registry_id("TXD000000001").is_ok());
        assert!(validate_registry_id("91150200MA0N1234X5").is_ok());
        assert!(validate_registry_id("").is_err());
        assert!(validate_registry_id("a b").is_err());
        assert!(validate_registry_id(&"a".repeat(65)).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,50}") {
            let _ = Tracking::parse(&s);
        }
    }
}
