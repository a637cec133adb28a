//! Offline custody-proof verification as a report a person or a script can read.
//!
//! The check itself is `wasteledger_core::proof::verify_custody_proof_bytes`, the one proof path;
//! this module only reads the files and shapes the outcome.

use std::path::{Path, PathBuf};

use wasteledger_core::genesis::Genesis;
use wasteledger_core::proof::{ProofError, verify_custody_proof_bytes};

/// Why a proof could not even be checked (as opposed to failing the check).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The bundle could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One event of a verified timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TimelineRow {
    /// Ledger index.
    pub index: u64,
    /// Event kind.
    pub kind: String,
    /// When it happened, as signed (ms since the epoch).
    pub occurred_at: i64,
    /// Ledger time (ms since the epoch).
    pub sequenced_at: i64,
    /// Signing parties.
    pub signers: Vec<String>,
    /// One line.
    pub summary: String,
    /// Event hash (hex).
    pub event_hash: String,
}

/// The outcome of `proof verify`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProofReport {
    /// `VERIFIED` or `FAILED`.
    pub result: &'static str,
    /// The manifest, when the bundle names one.
    pub tracking_number: Option<String>,
    /// Ledger name and id of the genesis used.
    pub ledger_name: String,
    /// Ledger id (hex).
    pub ledger_id: String,
    /// Checkpoint size the proof is anchored to.
    pub checkpoint_size: Option<u64>,
    /// Witnesses whose cosignatures met the trust policy.
    pub cosigners: Vec<String>,
    /// Manifest status as of the checkpoint.
    pub status: Option<String>,
    /// Custody timeline.
    pub timeline: Vec<TimelineRow>,
    /// Failure code (`proof.inclusion`, …) when it failed.
    pub failure_code: Option<&'static str>,
    /// What failed, in words.
    pub failure: Option<String>,
}

impl ProofReport {
    /// Whether the proof verified.
    pub fn verified(&self) -> bool {
        self.failure.is_none()
    }
}

/// Verifies bundle bytes against the genesis.
pub fn verify_bytes(bytes: &[u8], genesis: &Genesis) -> ProofReport {
    let mut report = ProofReport {
        result: "VERIFIED",
        tracking_number: None,
        ledger_name: genesis.ledger_name().to_owned(),
        ledger_id: genesis.ledger_id.to_hex(),
        checkpoint_size: None,
        cosigners: Vec::new(),
        status: None,
        timeline: Vec::new(),
        failure_code: None,
        failure: None,
    };
    match verify_custody_proof_bytes(bytes, genesis) {
        Ok(v) => {
            report.tracking_number = Some(v.tracking.to_string());
            report.checkpoint_size = Some(v.checkpoint.size);
            report.cosigners = v.cosigners.signers.iter().map(|s| s.name.clone()).collect();
            report.status = Some(v.state.status.to_string());
            report.timeline = v
                .timeline
                .iter()
                .map(|e| TimelineRow {
                    index: e.index,
                    kind: e.kind.to_owned(),
                    occurred_at: e.occurred_at,
                    sequenced_at: e.sequenced_at,
                    signers: e.signers.clone(),
                    summary: e.summary.clone(),
                    event_hash: e.event_hash.to_hex(),
                })
                .collect();
        }
        Err(e) => fail(&mut report, &e),
    }
    report
}

fn fail(report: &mut ProofReport, e: &ProofError) {
    report.result = "FAILED";
    report.failure_code = Some(e.code());
    report.failure = Some(e.to_string());
}

/// Reads a bundle file and verifies it against the genesis.
pub fn verify_file(path: &Path, genesis: &Genesis) -> Result<ProofReport, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(verify_bytes(&bytes, genesis))
}

/// Formats ms since the epoch as an ISO 8601 UTC time (no time-zone database needed).
pub fn iso_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant's algorithm), exact for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses a time given on the command line into ms since the epoch: `2026-11-01` (midnight
/// UTC), `2026-11-01T08:30:00Z`, or a plain number of milliseconds.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let mut p = t.splitn(3, ':').map(|p| p.parse::<i64>().ok());
            let (h, m, s) = (p.next()??, p.next()??, p.next().unwrap_or(Some(0))?);
            if !(0..24).contains(&h) || !(0..60).contains(&m) || !(0..60).contains(&s) {
                return None;
            }
            h * 3600 + m * 60 + s
        }
    };
    // Days from civil (H. Hinnant's algorithm), the inverse of `iso_time`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = (days * 86_400 + secs_of_day) * 1000;
    // Refuse dates that do not exist (2026-02-30) rather than roll them over.
    (iso_time(ms)[..10] == *date).then_some(ms)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn iso_time_is_exact() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_780_272_000_000), "2026-06-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(parse_time("2026-06-01"), Some(1_780_272_000_000));
        assert_eq!(parse_time("2026-06-01T01:00:00Z"), Some(1_780_275_600_000));
        assert_eq!(parse_time("2000-02-29"), Some(951_782_400_000));
        assert_eq!(parse_time("12345"), Some(12345));
        assert_eq!(parse_time("2026-02-30"), None);
        assert_eq!(parse_time("2026-13-01"), None);
        assert_eq!(parse_time("yesterday"), None);
    }
}
