//! Checkpoints: the signed statement "the ledger had this size and these roots at this time".
//!
//! This module owns everything between a tree head and a trust decision about it:
//!
//! * [`Checkpoint`] and its canonical text body, modelled on C2SP `tlog-checkpoint`: origin,
//!   tree size, Merkle root, and two extension lines carrying the completeness-map root and the
//!   ledger time;
//! * [`SignedCheckpoint`], the body wrapped as a C2SP `signed-note` with one line per cosignature,
//!   and [`cosign`], which produces such a line with a node's witness key;
//! * [`WitnessSet`], the witnesses and [`TrustPolicy`](crate::pb::TrustPolicy) of a genesis, which
//!   decides whether a note carries enough distinct, valid cosignatures ([`PolicyReport`]);
//! * [`WitnessState`], the rule a witness applies before it cosigns: never sign two checkpoints
//!   that are not consistent with each other.
//!
//! The text format, byte for byte (`<…>` are placeholders, every line ends in `\n`):
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <Merkle root, standard padded base64 of 32 bytes>
//! map <completeness-map root, standard padded base64 of 32 bytes>
//! time <ledger time in ms since the Unix epoch, decimal>
//!
//! — <witness name> <standard padded base64 of key hint (4 bytes) ‖ ed25519 signature (64 bytes)>
//! ```
//!
//! Parsing is strict: exactly one text is accepted for each checkpoint. Signatures cover the body
//! bytes, and a verifier re-encodes the parsed [`Checkpoint`] to check them, so any leniency in the
//! parser would let two different texts carry the same signatures.
//!
//! Two deliberate departures from C2SP make these notes WasteLedger-specific, so generic
//! signed-note tools cannot verify them: a signature covers
//! [`signing::signed_message`](crate::signing::signed_message)`(Checkpoint, ledger id, body)`
//! rather than the bare body, so that it cannot be replayed on another network or as another kind
//! of message; and the key hint is the first 4 bytes of the WasteLedger
//! [`key_id`](crate::signing::key_id), not C2SP's SHA-256 key ID. Signature lines of other lengths
//! (other algorithms, timestamped cosignatures) are refused rather than ignored, since no WasteLedger
//! witness produces them.

mod note;
mod policy;
mod witness;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::hash::{Digest, Purpose};
use crate::signing::SignatureError;

pub use note::{MAX_NOTE_LEN, MAX_SIGNATURES, NoteSignature, SignedCheckpoint, cosign, key_hint};
pub use policy::{Cosigner, PolicyReport, Witness, WitnessSet};
pub use witness::{WitnessError, WitnessState};

/// Longest accepted origin line and signer name, in bytes: ample for a schema-less URL, and a
/// bound on what one line of an untrusted note can make a verifier store.
pub const MAX_NAME_LEN: usize = 255;

/// Number of lines of a checkpoint body: origin, size, root, `map`, `time`.
const BODY_LINES: usize = 5;

/// Prefix of the completeness-map root extension line.
const MAP_PREFIX: &str = "map ";

/// Prefix of the ledger time extension line.
const TIME_PREFIX: &str = "time ";

/// A tree head of the ledger: what witnesses cosign and custody proofs are checked against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Checkpoint {
    /// The ledger name (`Genesis.ledger_name`): which log this checkpoint is about.
    pub origin: String,
    /// Number of entries in the ledger's Merkle tree.
    pub size: u64,
    /// Root of the ledger's Merkle tree over its first `size` entries.
    pub root: Digest,
    /// Root of the completeness map at the same point of the ledger.
    pub map_root: Digest,
    /// Ledger time of the checkpoint, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

impl Checkpoint {
    /// Builds a checkpoint, refusing an origin that [`Checkpoint::parse_body`] would refuse, so
    /// that no node can sign a body that no verifier will read back.
    pub fn new(
        origin: impl Into<String>,
        size: u64,
        root: Digest,
        map_root: Digest,
        time_ms: i64,
    ) -> Result<Self, CheckpointError> {
        let origin = origin.into();
        validate_origin(&origin)?;
        Ok(Checkpoint {
            origin,
            size,
            root,
            map_root,
            time_ms,
        })
    }

    /// The canonical note body: the exact bytes witnesses sign.
    ///
    /// The fields are public, so this does not validate the origin; use [`Checkpoint::new`] (or
    /// [`validate_origin`]) before signing a checkpoint built by hand.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n{MAP_PREFIX}{}\n{TIME_PREFIX}{}\n",
            self.origin,
            self.size,
            BASE64.encode(self.root.as_bytes()),
            BASE64.encode(self.map_root.as_bytes()),
            self.time_ms,
        )
    }

    /// The checkpoint hash: `blake3-derive("wasteledger v1 checkpoint", body bytes)`, used to name
    /// and deduplicate checkpoints in logs and storage (signatures cover the body itself).
    pub fn hash(&self) -> Digest {
        Purpose::Checkpoint.hash(self.body().as_bytes())
    }

    /// Parses a body produced by [`Checkpoint::body`], and nothing else.
    ///
    /// Refused: a missing final newline, a missing or extra line, an invalid origin (see
    /// [`validate_origin`]), a size with a sign, leading zeros or other non-digits, a root that is
    /// not the canonical padded base64 of exactly 32 bytes, extension lines missing, misspelled or
    /// out of order, and a time that is not a canonical decimal `i64`.
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let Some(content) = text.strip_suffix('\n') else {
            return Err(CheckpointError::MissingFinalNewline);
        };
        // At most one line too many is collected, so a huge input costs no allocation.
        let lines: Vec<&str> = content.split('\n').take(BODY_LINES + 1).collect();
        let [origin, size, root, map, time] = lines[..] else {
            return Err(CheckpointError::BodyLineCount {
                found: content.split('\n').count(),
            });
        };
        validate_origin(origin)?;
        let size = parse_canonical_u64(size).ok_or_else(|| CheckpointError::InvalidSize {
            text: excerpt(size),
        })?;
        let root = parse_digest(root).ok_or_else(|| CheckpointError::InvalidHash {
            field: "root",
            text: excerpt(root),
        })?;
        let map = map
            .strip_prefix(MAP_PREFIX)
            .ok_or(CheckpointError::MissingExtension {
                line: 4,
                expected: MAP_PREFIX,
            })?;
        let map_root = parse_digest(map).ok_or_else(|| CheckpointError::InvalidHash {
            field: "map root",
            text: excerpt(map),
        })?;
        let time = time
            .strip_prefix(TIME_PREFIX)
            .ok_or(CheckpointError::MissingExtension {
                line: 5,
                expected: TIME_PREFIX,
            })?;
        let time_ms = parse_canonical_i64(time).ok_or_else(|| CheckpointError::InvalidTime {
            text: excerpt(time),
        })?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
            map_root,
            time_ms,
        })
    }
}

/// Checks that `origin` can be the first line of a checkpoint body: non-empty, at most
/// [`MAX_NAME_LEN`] bytes, no control characters (which includes newlines) and no leading or
/// trailing white space (which would survive copy and paste invisibly, yielding a different log).
pub fn validate_origin(origin: &str) -> Result<(), CheckpointError> {
    let reason = if origin.is_empty() {
        "is empty"
    } else if origin.len() > MAX_NAME_LEN {
        "is longer than 255 bytes"
    } else if origin.chars().any(char::is_control) {
        "contains a control character"
    } else if origin.starts_with(char::is_whitespace) || origin.ends_with(char::is_whitespace) {
        "starts or ends with white space"
    } else {
        return Ok(());
    };
    Err(CheckpointError::InvalidOrigin { reason })
}

/// Why a checkpoint, a signed note, a witness set or a cosigned checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The body's last line has no `\n`.
    #[error("checkpoint body must end with a newline")]
    MissingFinalNewline,
    /// The body does not have exactly five lines.
    #[error(
        "checkpoint body must have exactly 5 lines (origin, size, root, `map`, `time`), found {found}"
    )]
    BodyLineCount {
        /// Number of lines found.
        found: usize,
    },
    /// The origin line, or the origin of [`Checkpoint::new`], is not acceptable.
    #[error("checkpoint origin {reason}")]
    InvalidOrigin {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The size line is not a canonical decimal `u64`.
    #[error(
        "checkpoint size {text:?} must be a decimal number without sign, spaces or leading zeros"
    )]
    InvalidSize {
        /// The offending text (shortened).
        text: String,
    },
    /// A root is not the canonical padded standard base64 of exactly 32 bytes.
    #[error("checkpoint {field} {text:?} must be the padded standard base64 of exactly 32 bytes")]
    InvalidHash {
        /// Which root: `root` or `map root`.
        field: &'static str,
        /// The offending text (shortened).
        text: String,
    },
    /// An extension line is missing, misspelled or out of order.
    #[error("line {line} of the checkpoint body must start with {expected:?}")]
    MissingExtension {
        /// 1-based line number in the body.
        line: usize,
        /// The prefix that line must start with.
        expected: &'static str,
    },
    /// The `time` line does not hold a canonical decimal `i64`.
    #[error(
        "checkpoint time {text:?} must be a decimal number of milliseconds without `+`, spaces or leading zeros"
    )]
    InvalidTime {
        /// The offending text (shortened).
        text: String,
    },

    /// The note is larger than [`MAX_NOTE_LEN`].
    #[error("signed note is {len} bytes; at most {max} are accepted")]
    NoteTooLarge {
        /// Length of the note.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No blank line separates the body from the signatures.
    #[error("signed note must be the checkpoint body, one blank line, then the signature lines")]
    MissingSignatureSeparator,
    /// The note has no signature line at all.
    #[error("signed note has no signature lines")]
    NoSignatures,
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("signed note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A line after the blank line is not a well-formed signature line.
    #[error("line {line} of the signed note is not a signature line: {reason}")]
    MalformedSignatureLine {
        /// 1-based line number in the whole note.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A genesis witness has a name that could never appear on a signature line.
    #[error("genesis witness name {name:?} {reason}")]
    InvalidWitnessName {
        /// The name (shortened).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A genesis witness has an empty group.
    #[error("genesis witness {name:?} has no group; every witness must count for a policy group")]
    EmptyWitnessGroup {
        /// The witness.
        name: String,
    },
    /// A genesis witness key cannot be used.
    #[error("genesis witness {name:?} has an unusable key: {source}")]
    InvalidWitnessKey {
        /// The witness.
        name: String,
        /// Why the key was refused.
        source: SignatureError,
    },
    /// Two genesis witnesses have the same name.
    #[error("genesis witness name {name:?} is used twice; names must be unique")]
    DuplicateWitnessName {
        /// The repeated name.
        name: String,
    },
    /// Two genesis witnesses have the same key, so one key would count twice toward the quorum.
    #[error("genesis witnesses {first:?} and {second:?} have the same key; keys must be unique")]
    DuplicateWitnessKey {
        /// The first witness with the key.
        first: String,
        /// The second witness with the key.
        second: String,
    },
    /// Two genesis witnesses have the same Raft node id.
    #[error("genesis node id {node_id} is used twice; node ids must be unique")]
    DuplicateNodeId {
        /// The repeated node id.
        node_id: u64,
    },
    /// The genesis has no checkpoint policy.
    #[error("genesis has no checkpoint_policy; checkpoints could never be trusted")]
    MissingTrustPolicy,
    /// `min_total` is zero or larger than the number of witnesses.
    #[error(
        "checkpoint policy min_total is {min_total}, but must be between 1 and the number of witnesses ({witnesses})"
    )]
    InvalidMinTotal {
        /// The policy's `min_total`.
        min_total: u32,
        /// Number of genesis witnesses.
        witnesses: usize,
    },
    /// Two requirements of the policy name the same group.
    #[error("checkpoint policy lists group {group:?} twice; merge the requirements")]
    DuplicateGroupRequirement {
        /// The repeated group.
        group: String,
    },
    /// A requirement names a group that no witness belongs to.
    #[error("checkpoint policy requires group {group:?}, but no genesis witness belongs to it")]
    UnknownPolicyGroup {
        /// The group.
        group: String,
    },
    /// A requirement asks for more signers than the group has members.
    #[error(
        "checkpoint policy requires {need} signers from group {group:?}, which has only {members} witnesses"
    )]
    GroupTooSmall {
        /// The group.
        group: String,
        /// Number of witnesses in the group.
        members: usize,
        /// The group's `min_signers`.
        need: u32,
    },

    /// The checkpoint is about another log.
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    OriginMismatch {
        /// The origin this ledger uses.
        expected: String,
        /// The origin on the checkpoint (shortened).
        found: String,
    },
    /// A line that names a known witness and its key hint carries a signature that does not
    /// verify: the note was altered or the witness misbehaved, so it is refused outright.
    #[error("signature of witness {witness:?} does not verify for this checkpoint and ledger")]
    BadSignature {
        /// The witness named on the line.
        witness: String,
        /// The verification failure.
        source: SignatureError,
    },
    /// Fewer distinct known witnesses signed than `min_total`.
    #[error(
        "checkpoint has valid signatures from {have} distinct witnesses; the policy needs {need}"
    )]
    QuorumNotMet {
        /// Distinct witnesses with a valid signature.
        have: usize,
        /// The policy's `min_total`.
        need: usize,
    },
    /// Fewer witnesses of a group signed than the group's `min_signers`.
    #[error(
        "checkpoint has valid signatures from {have} witnesses of group {group:?}; the policy needs {need}"
    )]
    GroupQuorumNotMet {
        /// The group.
        group: String,
        /// Distinct witnesses of the group with a valid signature.
        have: usize,
        /// The group's `min_signers`.
        need: usize,
    },
}

/// Reads the canonical padded standard base64 of exactly 32 bytes.
fn parse_digest(text: &str) -> Option<Digest> {
    decode_canonical(text).and_then(|bytes| Digest::from_slice(&bytes))
}

/// Decodes standard padded base64, refusing every text that is not what encoding the decoded
/// bytes gives back (non-zero trailing bits, missing padding), so each value has one spelling.
fn decode_canonical(text: &str) -> Option<Vec<u8>> {
    let bytes = BASE64.decode(text).ok()?;
    (BASE64.encode(&bytes) == text).then_some(bytes)
}

/// Parses a decimal `u64` spelled exactly as `u64::to_string` spells it.
fn parse_canonical_u64(text: &str) -> Option<u64> {
    // `str::parse` alone would accept a leading `+` and leading zeros.
    let canonical_digits = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if canonical_digits {
        text.parse().ok()
    } else {
        None
    }
}

/// Parses a decimal `i64` spelled exactly as `i64::to_string` spells it (so no `-0`).
fn parse_canonical_i64(text: &str) -> Option<i64> {
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(magnitude) => (true, magnitude),
        None => (false, text),
    };
    // `str::parse` handles the range (including `i64::MIN`); the spelling is checked here.
    let canonical = parse_canonical_u64(magnitude).is_some() && !(negative && magnitude == "0");
    if canonical { text.parse().ok() } else { None }
}

/// A bounded copy of untrusted text for error messages, so that a 64 KiB line does not end up in
/// a log verbatim.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 64;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests;
