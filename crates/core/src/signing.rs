//! Signatures: what bytes are signed, key ids, and strict ed25519 verification.
//!
//! A signature never covers a re-encoded structure. It covers
//! `domain tag ‖ ledger id ‖ payload`, where the payload is the exact bytes the signer saw
//! (an encoded event body, or a checkpoint note body). The domain tag keeps a signature for one
//! kind of message from being replayed as another; the ledger id keeps one network's signatures
//! from verifying on another. Verification uses `verify_strict`, the deterministic, non-malleable
//! check every node must agree on; batch verification is deliberately not offered here.

use ed25519_dalek::{Signer, VerifyingKey};

use crate::hash::{Digest, Purpose};

pub use ed25519_dalek::SigningKey;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// What kind of message a signature is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningDomain {
    /// A ledger event body (`SignedEvent.body`).
    Event,
    /// A checkpoint note body, signed by a node's witness key.
    Checkpoint,
    /// An admin call (`wasteledger.v1.ClusterService`) on a public listener, signed by a genesis
    /// authority: its own tag, so no event or checkpoint signature can pass as one.
    Admin,
}

impl SigningDomain {
    /// The domain tag prefixed to every signed message.
    pub const fn tag(self) -> &'static [u8] {
        match self {
            SigningDomain::Event => b"wasteledger/v1 event\n",
            SigningDomain::Checkpoint => b"wasteledger/v1 checkpoint\n",
            SigningDomain::Admin => b"wasteledger/v1 admin\n",
        }
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The public key is not 32 bytes.
    #[error("public key must be 32 bytes, got {0}")]
    KeyLength(usize),
    /// The bytes do not decode to a curve point.
    #[error("public key is not a valid ed25519 point")]
    KeyEncoding,
    /// A small-order key would let anyone forge signatures for it.
    #[error("public key is a weak (small-order) ed25519 key and cannot be registered")]
    WeakKey,
    /// The signature is not 64 bytes.
    #[error("signature must be 64 bytes, got {0}")]
    SignatureLength(usize),
    /// `verify_strict` rejected the signature.
    #[error("signature does not verify for key {key_id}")]
    Invalid {
        /// Short key id of the key it was checked against.
        key_id: String,
    },
}

/// Parses a public key for registration: exactly 32 bytes, a valid point, not weak.
pub fn parse_public_key(bytes: &[u8]) -> Result<VerifyingKey, SignatureError> {
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| SignatureError::KeyLength(bytes.len()))?;
    let key = VerifyingKey::from_bytes(&raw).map_err(|_| SignatureError::KeyEncoding)?;
    if key.is_weak() {
        return Err(SignatureError::WeakKey);
    }
    Ok(key)
}

/// The key id of a public key: `blake3-derive("wasteledger v1 key id", public key bytes)`.
pub fn key_id(key: &VerifyingKey) -> Digest {
    Purpose::KeyId.hash(key.as_bytes())
}

/// The exact byte string a signature covers.
pub fn signed_message(domain: SigningDomain, ledger_id: &Digest, payload: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut message = Vec::with_capacity(tag.len() + ledger_id.0.len() + payload.len());
    message.extend_from_slice(tag);
    message.extend_from_slice(&ledger_id.0);
    message.extend_from_slice(payload);
    message
}

/// Signs `payload` for `domain` on the ledger `ledger_id`.
pub fn sign(
    key: &SigningKey,
    domain: SigningDomain,
    ledger_id: &Digest,
    payload: &[u8],
) -> [u8; SIGNATURE_LEN] {
    key.sign(&signed_message(domain, ledger_id, payload))
        .to_bytes()
}

/// Checks a signature with `verify_strict`.
pub fn verify(
    key: &VerifyingKey,
    domain: SigningDomain,
    ledger_id: &Digest,
    payload: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    let raw: [u8; SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| SignatureError::SignatureLength(signature.len()))?;
    let signature = ed25519_dalek::Signature::from_bytes(&raw);
    key.verify_strict(&signed_message(domain, ledger_id, payload), &signature)
        .map_err(|_| SignatureError::Invalid {
            key_id: key_id(key).short(),
        })
}

/// Why a secret key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// No key line found.
    #[error("key file has no key: expected one line of 64 hex characters (32-byte ed25519 seed)")]
    Empty,
    /// The key line is not 64 hex characters.
    #[error("key file line {line}: expected 64 hex characters (32-byte ed25519 seed)")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// More than one key line.
    #[error("key file has more than one key (line {line})")]
    TooMany {
        /// 1-based line number of the extra key.
        line: usize,
    },
}

/// Formats a secret key file: comment lines, then the 32-byte seed as 64 hex characters.
pub fn format_secret_key_file(key: &SigningKey, comment: &str) -> String {
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&hex::encode(key.to_bytes()));
    out.push('\n');
    out
}

/// Parses a secret key file written by [`format_secret_key_file`]: `#` comments and blank lines
/// are ignored; exactly one line must hold the 64-hex-character seed.
pub fn parse_secret_key_file(text: &str) -> Result<SigningKey, KeyFileError> {
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if found.is_some() {
            return Err(KeyFileError::TooMany { line: i + 1 });
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(line, &mut seed)
            .map_err(|_| KeyFileError::Malformed { line: i + 1 })?;
        found = Some(SigningKey::from_bytes(&seed));
    }
    found.ok_or(KeyFileError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn sign_then_verify() {
        let k = key(1);
        let ledger = Digest([9; 32]);
        let sig = sign(&k, SigningDomain::Event, &ledger, b"body");
        assert!(
            verify(
                &k.verifying_key(),
                SigningDomain::Event,
                &ledger,
                b"body",
                &sig
            )
            .is_ok()
        );
    }

    #[test]
    fn domain_ledger_and_payload_are_bound() {
        let k = key(1);
        let vk = k.verifying_key();
        let ledger = Digest([9; 32]);
        let sig = sign(&k, SigningDomain::Event, &ledger, b"body");
        assert!(verify(&vk, SigningDomain::Checkpoint, &ledger, b"body", &sig).is_err());
        assert!(verify(&vk, SigningDomain::Event, &Digest([8; 32]), b"body", &sig).is_err());
        assert!(verify(&vk, SigningDomain::Event, &ledger, b"bodz", &sig).is_err());
        assert!(
            verify(
                &key(2).verifying_key(),
                SigningDomain::Event,
                &ledger,
                b"body",
                &sig
            )
            .is_err()
        );
        assert_eq!(
            verify(&vk, SigningDomain::Event, &ledger, b"body", &sig[..63]),
            Err(SignatureError::SignatureLength(63))
        );
    }

    #[test]
    fn key_files_round_trip_and_reject_garbage() {
        let k = key(5);
        let text = format_secret_key_file(&k, "demo key\nnever use in production");
        assert!(text.starts_with("# demo key\n# never use"));
        assert_eq!(
            parse_secret_key_file(&text).map(|k| k.to_bytes()),
            Ok(k.to_bytes())
        );
        assert_eq!(
            parse_secret_key_file("# only a comment\n"),
            Err(KeyFileError::Empty)
        );
        assert_eq!(
            parse_secret_key_file("abc\n"),
            Err(KeyFileError::Malformed { line: 1 })
        );
        let two = format!("{}{}", text, hex::encode([1u8; 32]));
        assert!(matches!(
            parse_secret_key_file(&two),
            Err(KeyFileError::TooMany { .. })
        ));
    }

    #[test]
    fn weak_and_malformed_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(parse_public_key(&identity), Err(SignatureError::WeakKey));
        assert_eq!(
            parse_public_key(&[1; 31]),
            Err(SignatureError::KeyLength(31))
        );
        assert!(parse_public_key(key(3).verifying_key().as_bytes()).is_ok());
    }
}
