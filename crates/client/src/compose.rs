//! Composing lifecycle events from a manifest's current state and from command-line values.
//!
//! The state (`GetManifest`) supplies the chain head to extend, the last event time (a new event
//! may not be dated before it), whose turn a handoff is, and the hashes of events a correction
//! amends or a decision answers: the user names a manifest, not a hash.

use std::path::{Path, PathBuf};

use wasteledger_core::compose::manifest_body;
use wasteledger_core::hash::Digest;
use wasteledger_core::pb::{self, ManifestStatus, QuantityUnit, event_body::Kind};
use wasteledger_core::quantity::Amount;
use wasteledger_core::tracking::{Tracking, TrackingError};

/// Why an event could not be composed from what was given.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A tracking number that does not parse.
    #[error("{0} (write it as SCHEME:NUMBER, e.g. cn:20261502000001 or epa:100001234ELC)")]
    Tracking(#[from] TrackingError),
    /// A value given on the command line is malformed.
    #[error("{what} {text:?}: expected {expected}")]
    Value {
        /// Which option.
        what: &'static str,
        /// The text.
        text: String,
        /// The expected form.
        expected: String,
    },
    /// The manifest is not in a state where this event makes sense.
    #[error("manifest {tracking} is {status}: {what}")]
    State {
        /// The manifest.
        tracking: String,
        /// Its status.
        status: String,
        /// What cannot be done.
        what: String,
    },
    /// The server's state is missing something it always has.
    #[error("the node's answer lacks {0}")]
    Incomplete(&'static str),
    /// An evidence file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn value_err(what: &'static str, text: &str, expected: impl Into<String>) -> ComposeError {
    ComposeError::Value {
        what,
        text: text.to_owned(),
        expected: expected.into(),
    }
}

/// Parses a tracking number `SCHEME:NUMBER`.
pub fn tracking(text: &str) -> Result<Tracking, ComposeError> {
    Ok(Tracking::parse(text)?)
}

/// Units accepted on the command line: EPA letters and common abbreviations.
pub const UNITS_HELP: &str =
    "kg (K), t (M, metric tonnes), lb (P), ton (T, short tons), l (L), gal (G), m3 (N), yd3 (Y)";

/// Parses a unit: an EPA one-letter code or a common abbreviation.
pub fn parse_unit(text: &str) -> Option<QuantityUnit> {
    Some(match text {
        "K" | "kg" => QuantityUnit::Kilograms,
        "M" | "t" | "tonne" | "tonnes" => QuantityUnit::MetricTonnes,
        "P" | "lb" | "lbs" => QuantityUnit::Pounds,
        "T" | "ton" | "tons" => QuantityUnit::ShortTons,
        "L" | "l" => QuantityUnit::Litres,
        "G" | "gal" => QuantityUnit::Gallons,
        "N" | "m3" => QuantityUnit::CubicMetres,
        "Y" | "yd3" => QuantityUnit::CubicYards,
        _ => return None,
    })
}

fn quantity(
    what: &'static str,
    spec: &str,
    amount: &str,
    unit: &str,
) -> Result<pb::Quantity, ComposeError> {
    Amount::parse(amount).map_err(|e| value_err(what, spec, format!("a decimal amount ({e})")))?;
    let unit =
        parse_unit(unit).ok_or_else(|| value_err(what, spec, format!("a unit: {UNITS_HELP}")))?;
    Ok(pb::Quantity {
        amount: amount.to_owned(),
        unit: unit as i32,
        estimated: false,
    })
}

fn line_number(what: &'static str, spec: &str, text: &str) -> Result<u32, ComposeError> {
    text.parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| value_err(what, spec, "a line number of 1 or more first"))
}

/// Parses `LINE:AMOUNT:UNIT[:CONTAINERS]`, e.g. `1:8.52:t:1`, into a received line.
pub fn parse_received_line(spec: &str) -> Result<pb::ReceivedLine, ComposeError> {
    const FORM: &str = "LINE:AMOUNT:UNIT[:CONTAINERS], e.g. 1:8.52:t:1";
    let parts: Vec<&str> = spec.split(':').collect();
    let (line, amount, unit, count) = match parts.as_slice() {
        [l, a, u] => (l, a, u, None),
        [l, a, u, c] => (l, a, u, Some(*c)),
        _ => return Err(value_err("--line", spec, FORM)),
    };
    let container_count = match count {
        Some(c) => c.parse().map_err(|_| {
            value_err(
                "--line",
                spec,
                format!("{FORM} (containers: a whole number)"),
            )
        })?,
        None => 0,
    };
    Ok(pb::ReceivedLine {
        line_number: line_number("--line", spec, line)?,
        quantity: Some(quantity("--line", spec, amount, unit)?),
        container_count,
        ..Default::default()
    })
}

/// Parses `LATITUDE,LONGITUDE` in decimal degrees into micro-degrees, exactly (decimal text is
/// scaled as text: no floating point enters a signed body).
pub fn parse_position(text: &str) -> Result<pb::GeoPoint, ComposeError> {
    const FORM: &str =
        "LATITUDE,LONGITUDE in decimal degrees with at most 6 decimals, e.g. 40.657,109.84";
    let micro = |part: &str, limit: i64| -> Option<i64> {
        let part = part.trim();
        let (negative, digits) = match part.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, part),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || fraction.len() > 6
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: i64 = whole.parse().ok()?;
        let fraction: i64 = format!("{fraction:0<6}").parse().ok()?;
        let value = whole.checked_mul(1_000_000)?.checked_add(fraction)?;
        (value <= limit * 1_000_000).then_some(if negative { -value } else { value })
    };
    let (lat, lon) = text
        .split_once(',')
        .ok_or_else(|| value_err("--position", text, FORM))?;
    Ok(pb::GeoPoint {
        latitude_micro_deg: micro(lat, 90).ok_or_else(|| value_err("--position", text, FORM))?,
        longitude_micro_deg: micro(lon, 180).ok_or_else(|| value_err("--position", text, FORM))?,
    })
}

/// The management-method system a code belongs to: `H040` → EPA, `R1`/`D10` → EU, else China.
pub fn method(code: &str) -> pb::ManagementMethod {
    let b = code.as_bytes();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let system = match b.first() {
        Some(b'H') if b.len() == 4 && digits(&b[1..]) => pb::ManagementSystem::EpaHCode,
        Some(b'R' | b'D') if (2..=3).contains(&b.len()) && digits(&b[1..]) => {
            pb::ManagementSystem::EuRdCode
        }
        _ => pb::ManagementSystem::CnMethod,
    };
    pb::ManagementMethod {
        system: system as i32,
        code: code.to_owned(),
        description: String::new(),
    }
}

/// Parses `LINE:METHOD:AMOUNT:UNIT`, e.g. `1:H040:8.5:t`, into a treated line.
pub fn parse_treated_line(spec: &str) -> Result<pb::TreatedLine, ComposeError> {
    const FORM: &str = "LINE:METHOD:AMOUNT:UNIT, e.g. 1:H040:8.5:t";
    let parts: Vec<&str> = spec.split(':').collect();
    let [line, code, amount, unit] = parts.as_slice() else {
        return Err(value_err("--line", spec, FORM));
    };
    Ok(pb::TreatedLine {
        line_number: line_number("--line", spec, line)?,
        method: Some(method(code)),
        quantity: Some(quantity("--line", spec, amount, unit)?),
    })
}

/// Parses `LINE:AMOUNT:UNIT[:CONTAINERS]` into a rejected line.
pub fn parse_rejected_line(spec: &str) -> Result<pb::RejectedLine, ComposeError> {
    let r = parse_received_line(spec)?;
    Ok(pb::RejectedLine {
        line_number: r.line_number,
        quantity: r.quantity,
        container_count: r.container_count,
    })
}

/// An evidence reference for a local file: its blake3 hash, size and kind (the file itself stays
/// off the ledger).
pub fn evidence_for_file(
    path: &Path,
    kind: pb::EvidenceKind,
) -> Result<pb::EvidenceRef, ComposeError> {
    let bytes = std::fs::read(path).map_err(|source| ComposeError::Io {
        path: path.to_owned(),
        source,
    })?;
    let media_type = match path.extension().and_then(|e| e.to_str()) {
        Some("pdf") => "application/pdf",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    };
    Ok(pb::EvidenceRef {
        kind: kind as i32,
        blake3: blake3::hash(&bytes).as_bytes().to_vec(),
        media_type: media_type.into(),
        size_bytes: bytes.len() as u64,
        uri: String::new(),
        description: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

fn status_of(state: &pb::ManifestState) -> ManifestStatus {
    ManifestStatus::try_from(state.status).unwrap_or(ManifestStatus::Unspecified)
}

/// A deviation in basis points as a signed percentage: `-58` → `-0.58 %`. (Splitting the
/// integer part from the remainder loses the sign below 1 %, so the sign is written first.)
pub fn percent_text(bp: i64) -> String {
    let sign = if bp < 0 { '-' } else { '+' };
    let abs = bp.unsigned_abs();
    format!("{sign}{}.{:02} %", abs / 100, abs % 100)
}

/// A unit as people write it: `kg`, `t`, `lb`, `ton`, `L`, `gal`, `m3`, `yd3`.
pub fn unit_text(unit: i32) -> &'static str {
    match QuantityUnit::try_from(unit).unwrap_or(QuantityUnit::Unspecified) {
        QuantityUnit::Kilograms => "kg",
        QuantityUnit::MetricTonnes => "t",
        QuantityUnit::Pounds => "lb",
        QuantityUnit::ShortTons => "ton",
        QuantityUnit::Litres => "L",
        QuantityUnit::Gallons => "gal",
        QuantityUnit::CubicMetres => "m3",
        QuantityUnit::CubicYards => "yd3",
        QuantityUnit::Unspecified => "?",
    }
}

/// A readable status: `in transit (leg 2)`, `received`, ….
pub fn status_text(state: &pb::ManifestState) -> String {
    match status_of(state) {
        ManifestStatus::InTransit => format!("in transit (leg {})", state.leg + 1),
        s => s
            .as_str_name()
            .trim_start_matches("MANIFEST_STATUS_")
            .to_ascii_lowercase(),
    }
}

/// The canonical tracking text of a state (`cn:20261502000001`).
pub fn tracking_text(state: &pb::ManifestState) -> String {
    state
        .tracking_number
        .as_ref()
        .and_then(|t| Tracking::from_pb(t).ok())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn registry_id(p: &Option<pb::ManifestParty>) -> String {
    p.as_ref()
        .map(|p| p.registry_id.clone())
        .unwrap_or_default()
}

/// Who hands custody to whom next, by the manifest's signing order.
pub fn next_handoff(state: &pb::ManifestState) -> Result<(String, String), ComposeError> {
    let m = state
        .manifest
        .as_ref()
        .ok_or(ComposeError::Incomplete("the manifest"))?;
    let legs: Vec<String> = m
        .transporters
        .iter()
        .map(|t| registry_id(&t.transporter))
        .collect();
    let generator = registry_id(&m.generator);
    match status_of(state) {
        ManifestStatus::Created => Ok((generator, legs.first().cloned().unwrap_or_default())),
        ManifestStatus::InTransit => {
            let leg = state.leg as usize;
            let from = legs.get(leg).cloned().unwrap_or_default();
            let to = legs
                .get(leg + 1)
                .cloned()
                .unwrap_or_else(|| state.destination.clone());
            Ok((from, to))
        }
        _ => Err(ComposeError::State {
            tracking: tracking_text(state),
            status: status_text(state),
            what: "there is no custody left to hand over".into(),
        }),
    }
}

/// The time a new event on `state` states: now, but never before the chain's last event.
pub fn occurred_at(state: &pb::ManifestState) -> i64 {
    crate::now_ms().max(state.last_occurred_at)
}

/// A body extending `state`'s chain with `kind`, dated now.
pub fn next_body(state: &pb::ManifestState, kind: Kind) -> Result<pb::EventBody, ComposeError> {
    let tracking = state
        .tracking_number
        .as_ref()
        .ok_or(ComposeError::Incomplete("the tracking number"))
        .and_then(|t| Tracking::from_pb(t).map_err(ComposeError::from))?;
    let head = Digest::from_slice(&state.head).ok_or(ComposeError::Incomplete("the chain head"))?;
    Ok(manifest_body(&tracking, head, occurred_at(state), kind))
}

/// The hash of the event a correction amends: `created`, `received`, `rejected`, `treated` (the
/// latest of that kind) or a 64-hex event hash.
pub fn amended_event(state: &pb::ManifestState, which: &str) -> Result<Vec<u8>, ComposeError> {
    let kind = match which {
        "created" => "ManifestCreated",
        "received" => "Received",
        "rejected" => "Rejected",
        "treated" => "Treated",
        hex_hash => {
            return Digest::from_hex(hex_hash)
                .map(|d| d.0.to_vec())
                .ok_or_else(|| {
                    value_err(
                        "--amends",
                        hex_hash,
                        "created, received, rejected, treated or a 64-hex event hash",
                    )
                });
        }
    };
    state
        .events
        .iter()
        .rev()
        .find(|e| e.kind == kind)
        .map(|e| e.event_hash.clone())
        .ok_or_else(|| ComposeError::State {
            tracking: tracking_text(state),
            status: status_text(state),
            what: format!("it has no {kind} event to amend"),
        })
}

/// The pending correction's event hash, for a decision.
pub fn pending_correction(state: &pb::ManifestState) -> Result<Vec<u8>, ComposeError> {
    state
        .pending_correction
        .as_ref()
        .map(|p| p.event_hash.clone())
        .ok_or_else(|| ComposeError::State {
            tracking: tracking_text(state),
            status: status_text(state),
            what: "no correction is waiting for approval".into(),
        })
}

/// The first event of a manifest: its creation, by the generator.
pub fn creation_body(manifest: &pb::Manifest) -> Result<pb::EventBody, ComposeError> {
    let tracking = manifest
        .tracking_number
        .as_ref()
        .ok_or(ComposeError::Incomplete("the tracking number"))
        .and_then(|t| Tracking::from_pb(t).map_err(ComposeError::from))?;
    Ok(manifest_body(
        &tracking,
        Digest::ZERO,
        crate::now_ms(),
        Kind::ManifestCreated(pb::ManifestCreated {
            manifest: Some(manifest.clone()),
        }),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_shipped_examples_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
        let m = crate::files::read_manifest(&dir.join("manifest.toml")).unwrap();
        assert_eq!(m.lines.len(), 2);
        let mut parties = 0;
        for entry in std::fs::read_dir(dir.join("parties")).unwrap() {
            let path = entry.unwrap().path();
            let p = crate::files::read_party(&path).unwrap();
            assert!(path.ends_with(format!("{}.toml", p.registry_id)));
            parties += 1;
        }
        assert_eq!(parties, 6);
    }

    #[test]
    fn line_specs_parse_or_explain() {
        let r = parse_received_line("2:1790:kg:12").unwrap();
        assert_eq!((r.line_number, r.container_count), (2, 12));
        assert_eq!(r.quantity.unwrap().unit, QuantityUnit::Kilograms as i32);
        assert!(parse_received_line("2:1790").is_err());
        assert!(parse_received_line("0:1:kg").is_err());
        assert!(parse_received_line("1:1e3:kg").is_err());
        assert!(parse_received_line("1:1:stone").is_err());
        let t = parse_treated_line("1:H040:8.5:t").unwrap();
        assert_eq!(
            t.method.unwrap().system,
            pb::ManagementSystem::EpaHCode as i32
        );
        assert_eq!(method("R1").system, pb::ManagementSystem::EuRdCode as i32);
        assert_eq!(method("C01").system, pb::ManagementSystem::CnMethod as i32);
        assert_eq!(percent_text(-58), "-0.58 %");
        let p = parse_position("40.657,-109.84").unwrap();
        assert_eq!(
            (p.latitude_micro_deg, p.longitude_micro_deg),
            (40_657_000, -109_840_000)
        );
        assert!(parse_position("91,0").is_err());
        assert!(parse_position("4e1,0").is_err());
        assert!(parse_position("40.1234567,0").is_err());
        assert_eq!(percent_text(-1529), "-15.29 %");
        assert_eq!(percent_text(5), "+0.05 %");
    }
}
