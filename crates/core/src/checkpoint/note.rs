//! The signed-note envelope: a checkpoint body followed by witness signature lines.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::VerifyingKey;

use super::{BODY_LINES, Checkpoint, CheckpointError, MAX_NAME_LEN, decode_canonical};
use crate::hash::Digest;
use crate::signing::{self, SIGNATURE_LEN, SigningDomain, SigningKey};

/// Largest accepted signed note, in bytes, bounding the work an untrusted note can cause.
pub const MAX_NOTE_LEN: usize = 64 * 1024;

/// Most signature lines accepted in one note. C2SP signed-note asks verifiers for a limit of at
/// least 16; 100 leaves room for every node of a large network plus rotated keys.
pub const MAX_SIGNATURES: usize = 100;

/// Start of every signature line: an em dash (U+2014) and a space, as in C2SP signed-note.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Length of the key hint that tells verifiers which key a signature line claims.
const KEY_HINT_LEN: usize = 4;

/// A checkpoint and the witness signatures over its body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SignedCheckpoint {
    /// The checkpoint whose body was signed.
    pub checkpoint: Checkpoint,
    /// Signature lines in note order, including lines of unknown signers and duplicates: they are
    /// kept so that a note can be forwarded unchanged, and are sorted out by
    /// [`WitnessSet::verify`](super::WitnessSet::verify).
    pub signatures: Vec<NoteSignature>,
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NoteSignature {
    /// Witness name (`NodeWitness.name`).
    pub name: String,
    /// First 4 bytes of the key id of the signing key (see [`key_hint`]).
    pub key_hint: [u8; KEY_HINT_LEN],
    /// ed25519 signature of the checkpoint body in [`SigningDomain::Checkpoint`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// The key hint of a witness key: the first 4 bytes of its [`signing::key_id`]. It lets a verifier
/// pick the right key when a witness rotates keys, and skip lines for keys it does not know.
pub fn key_hint(key: &VerifyingKey) -> [u8; KEY_HINT_LEN] {
    let id = signing::key_id(key);
    let mut hint = [0; KEY_HINT_LEN];
    hint.copy_from_slice(&id.as_bytes()[..KEY_HINT_LEN]);
    hint
}

/// Cosigns `checkpoint` as witness `name` of the ledger `ledger_id`.
///
/// This only signs. A witness must first check the checkpoint against what it signed before with
/// [`WitnessState::check_and_advance`](super::WitnessState::check_and_advance), and persist the
/// new state before releasing the signature.
pub fn cosign(
    key: &SigningKey,
    name: &str,
    ledger_id: &Digest,
    checkpoint: &Checkpoint,
) -> NoteSignature {
    NoteSignature {
        name: name.to_owned(),
        key_hint: key_hint(&key.verifying_key()),
        signature: signing::sign(
            key,
            SigningDomain::Checkpoint,
            ledger_id,
            checkpoint.body().as_bytes(),
        ),
    }
}

impl NoteSignature {
    /// The signature line, including its final newline.
    pub(super) fn line(&self) -> String {
        let mut blob = Vec::with_capacity(KEY_HINT_LEN + SIGNATURE_LEN);
        blob.extend_from_slice(&self.key_hint);
        blob.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(blob))
    }

    /// Parses one signature line without its newline; `Err` carries the reason.
    fn parse_line(line: &str) -> Result<NoteSignature, &'static str> {
        let rest = line
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or("it does not start with an em dash (U+2014) and a space")?;
        let (name, blob) = rest
            .split_once(' ')
            .ok_or("it has no space between the signer name and the signature")?;
        validate_signer_name(name)?;
        let blob = decode_canonical(blob)
            .ok_or("the signature is not canonical padded standard base64")?;
        if blob.len() != KEY_HINT_LEN + SIGNATURE_LEN {
            return Err(
                "the signature is not a 4-byte key hint followed by a 64-byte ed25519 signature",
            );
        }
        // The length was checked just above, so both copies fit exactly.
        let mut key_hint = [0; KEY_HINT_LEN];
        key_hint.copy_from_slice(&blob[..KEY_HINT_LEN]);
        let mut signature = [0; SIGNATURE_LEN];
        signature.copy_from_slice(&blob[KEY_HINT_LEN..]);
        Ok(NoteSignature {
            name: name.to_owned(),
            key_hint,
            signature,
        })
    }
}

/// Checks that `name` can stand on a signature line: non-empty, at most [`MAX_NAME_LEN`] bytes, no
/// white space (it ends at the first space), no `+` (reserved by C2SP) and no control characters.
pub(super) fn validate_signer_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.len() > MAX_NAME_LEN {
        Err("is longer than 255 bytes")
    } else if name.chars().any(char::is_whitespace) {
        Err("contains white space")
    } else if name.chars().any(char::is_control) {
        Err("contains a control character")
    } else if name.contains('+') {
        Err("contains `+`")
    } else {
        Ok(())
    }
}

impl SignedCheckpoint {
    /// The note text: body, a blank line, then one line per signature, in order.
    ///
    /// A note without signatures is not a valid signed note, so [`SignedCheckpoint::parse_note`]
    /// refuses the text of one.
    pub fn to_note(&self) -> String {
        let mut text = self.checkpoint.body();
        text.push('\n');
        for signature in &self.signatures {
            text.push_str(&signature.line());
        }
        text
    }

    /// Parses a note produced by [`SignedCheckpoint::to_note`], and nothing else.
    ///
    /// Beyond the strict body rules of [`Checkpoint::parse_body`], this refuses notes over
    /// [`MAX_NOTE_LEN`] bytes, without the blank separator line, without signatures or with more
    /// than [`MAX_SIGNATURES`], and any line after the blank line that is not a canonical signature
    /// line. Lines of signers this node does not know are kept, not refused: a witness set decides
    /// which signers count, so notes stay readable across key rotations.
    pub fn parse_note(text: &str) -> Result<SignedCheckpoint, CheckpointError> {
        if text.len() > MAX_NOTE_LEN {
            return Err(CheckpointError::NoteTooLarge {
                len: text.len(),
                max: MAX_NOTE_LEN,
            });
        }
        // No body line is empty, so the first blank line is the separator.
        let Some(end_of_body) = text.find("\n\n") else {
            return Err(CheckpointError::MissingSignatureSeparator);
        };
        let checkpoint = Checkpoint::parse_body(&text[..=end_of_body])?;
        let lines = &text[end_of_body + 2..];
        if lines.is_empty() {
            return Err(CheckpointError::NoSignatures);
        }
        let mut signatures = Vec::new();
        for (index, line) in lines.split_inclusive('\n').enumerate() {
            // Body lines, the blank line, then 1-based numbering.
            let line_number = BODY_LINES + 2 + index;
            if index == MAX_SIGNATURES {
                return Err(CheckpointError::TooManySignatures {
                    max: MAX_SIGNATURES,
                });
            }
            let malformed = |reason| CheckpointError::MalformedSignatureLine {
                line: line_number,
                reason,
            };
            let line = line
                .strip_suffix('\n')
                .ok_or_else(|| malformed("it does not end with a newline"))?;
            signatures.push(NoteSignature::parse_line(line).map_err(malformed)?);
        }
        Ok(SignedCheckpoint {
            checkpoint,
            signatures,
        })
    }
}
