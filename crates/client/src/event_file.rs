//! Event files: how two parties sign one event on two machines.
//!
//! The first party composes the event, signs the encoded body and writes an event file; the
//! second reads it, *sees what the bytes say* (the readable view is decoded from the signed bytes
//! on every read, never trusted from the file), checks the signatures already on it, and adds its
//! own over the same bytes; either party submits it. The body travels as base64 of the exact
//! signed bytes, so nothing is ever re-encoded between signatures.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use prost::Message;
use wasteledger_core::compose::hash_of;
use wasteledger_core::custody::kind_name;
use wasteledger_core::envelope::Subject;
use wasteledger_core::hash::Digest;
use wasteledger_core::pb;
use wasteledger_core::signing::{SigningDomain, SigningKey, key_id, sign, verify};
use wasteledger_core::tracking::Tracking;

use crate::keys::parse_public_hex;

/// The `format` value of files this version writes and reads.
pub const FORMAT: &str = "wasteledger-event/1";

/// Why an event file was refused.
#[derive(Debug, thiserror::Error)]
pub enum EventFileError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not an event file.
    #[error("{path} is not a wasteledger event file: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Prepared for another network.
    #[error(
        "the event was prepared for ledger {found}, but the genesis given is ledger {expected}; use the network's genesis file"
    )]
    WrongLedger {
        /// Our ledger id.
        expected: String,
        /// The file's.
        found: String,
    },
    /// A signature on the file does not verify over its body.
    #[error(
        "signature {position} (key {key_id}) does not verify over the event body: the file was altered after it was signed, or signed for another network"
    )]
    BadSignature {
        /// 1-based position.
        position: usize,
        /// Short key id.
        key_id: String,
    },
    /// This key already signed.
    #[error("key {0} has already signed this event")]
    AlreadySigned(String),
    /// The body bytes do not decode.
    #[error("the event body does not decode: {0}")]
    Body(String),
}

/// One signature in an event file, with the public key it claims (checked against the key id;
/// the ledger checks that the key belongs to the right party when the event is submitted).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FileSignature {
    /// Key id, hex.
    pub key_id: String,
    /// ed25519 public key, hex.
    pub public_key: String,
    /// Signature, hex.
    pub signature: String,
    /// The party the signer said it signs for (informative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party: Option<String>,
}

/// An event being signed by one or more parties.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EventFile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The ledger id (hex) the signatures are bound to.
    pub ledger_id: String,
    /// What chain the event extends: `manifest cn:…` or `party ID`.
    pub subject: String,
    /// Event kind, e.g. `CustodyHandoff`.
    pub kind: String,
    /// The event hash (hex): the next event on the chain names it.
    pub event_hash: String,
    /// The body, decoded for people to read before they sign. Rewritten from `body` every time
    /// the file is read; editing it changes nothing.
    pub body_view: serde_json::Value,
    /// base64 of the exact signed body bytes.
    pub body: String,
    /// Signatures so far.
    pub signatures: Vec<FileSignature>,
}

fn subject_text(body: &pb::EventBody) -> String {
    match body.subject.as_ref().and_then(|s| s.subject.as_ref()) {
        Some(pb::subject::Subject::Manifest(t)) => Tracking::from_pb(t)
            .map(|t| Subject::Manifest(t).to_string())
            .unwrap_or_else(|_| format!("manifest {}", t.number)),
        Some(pb::subject::Subject::Party(p)) => Subject::Party(p.clone()).to_string(),
        None => "unknown".into(),
    }
}

impl EventFile {
    /// Encodes `body` once and signs it with each key (with the party each signs for).
    pub fn prepare(
        ledger_id: &Digest,
        body: &pb::EventBody,
        keys: &[(&SigningKey, Option<String>)],
    ) -> Result<EventFile, EventFileError> {
        let bytes = body.encode_to_vec();
        let mut file = EventFile {
            format: FORMAT.into(),
            ledger_id: ledger_id.to_hex(),
            subject: String::new(),
            kind: String::new(),
            event_hash: String::new(),
            body_view: serde_json::Value::Null,
            body: STANDARD.encode(&bytes),
            signatures: Vec::new(),
        };
        file.refresh_view()?;
        for (key, party) in keys {
            file.add_signature(ledger_id, key, party.clone(), &bytes)?;
        }
        Ok(file)
    }

    /// The exact body bytes.
    pub fn body_bytes(&self) -> Result<Vec<u8>, EventFileError> {
        STANDARD
            .decode(self.body.trim())
            .map_err(|e| EventFileError::Body(format!("body is not base64: {e}")))
    }

    /// The decoded body.
    pub fn decoded_body(&self) -> Result<pb::EventBody, EventFileError> {
        pb::EventBody::decode(self.body_bytes()?.as_slice())
            .map_err(|e| EventFileError::Body(e.to_string()))
    }

    fn refresh_view(&mut self) -> Result<(), EventFileError> {
        let bytes = self.body_bytes()?;
        let body = pb::EventBody::decode(bytes.as_slice())
            .map_err(|e| EventFileError::Body(e.to_string()))?;
        let ledger_id = Digest::from_hex(&self.ledger_id)
            .ok_or_else(|| EventFileError::Body("ledger_id is not 64 hex characters".into()))?;
        self.subject = subject_text(&body);
        self.kind = body.kind.as_ref().map_or("none", kind_name).to_owned();
        self.event_hash = wasteledger_core::envelope::event_hash(&ledger_id, &bytes).to_hex();
        self.body_view =
            serde_json::to_value(&body).map_err(|e| EventFileError::Body(e.to_string()))?;
        Ok(())
    }

    fn add_signature(
        &mut self,
        ledger_id: &Digest,
        key: &SigningKey,
        party: Option<String>,
        bytes: &[u8],
    ) -> Result<(), EventFileError> {
        let public = key.verifying_key();
        let id = key_id(&public).to_hex();
        if self.signatures.iter().any(|s| s.key_id == id) {
            return Err(EventFileError::AlreadySigned(id[..16].to_owned()));
        }
        self.signatures.push(FileSignature {
            key_id: id,
            public_key: hex::encode(public.as_bytes()),
            signature: hex::encode(sign(key, SigningDomain::Event, ledger_id, bytes)),
            party,
        });
        Ok(())
    }

    /// Checks the file is for `ledger_id` and every signature on it verifies over the body.
    pub fn check(&self, ledger_id: &Digest) -> Result<(), EventFileError> {
        if !self.ledger_id.eq_ignore_ascii_case(&ledger_id.to_hex()) {
            return Err(EventFileError::WrongLedger {
                expected: ledger_id.to_hex(),
                found: self.ledger_id.clone(),
            });
        }
        let bytes = self.body_bytes()?;
        for (i, s) in self.signatures.iter().enumerate() {
            let bad = || EventFileError::BadSignature {
                position: i + 1,
                key_id: s.key_id.chars().take(16).collect(),
            };
            let public = parse_public_hex(&s.public_key).map_err(|_| bad())?;
            if key_id(&public).to_hex() != s.key_id.to_ascii_lowercase() {
                return Err(bad());
            }
            let sig = hex::decode(&s.signature).map_err(|_| bad())?;
            verify(&public, SigningDomain::Event, ledger_id, &bytes, &sig).map_err(|_| bad())?;
        }
        Ok(())
    }

    /// Adds `key`'s signature after checking the ones already there.
    pub fn cosign(
        &mut self,
        ledger_id: &Digest,
        key: &SigningKey,
        party: Option<String>,
    ) -> Result<(), EventFileError> {
        self.check(ledger_id)?;
        let bytes = self.body_bytes()?;
        self.add_signature(ledger_id, key, party, &bytes)
    }

    /// The envelope to submit.
    pub fn signed_event(&self) -> Result<pb::SignedEvent, EventFileError> {
        let signatures = self
            .signatures
            .iter()
            .map(|s| {
                let bad = |what: &str| EventFileError::Body(format!("{what} is not hex"));
                Ok(pb::Signature {
                    key_id: hex::decode(&s.key_id).map_err(|_| bad("a key_id"))?,
                    signature: hex::decode(&s.signature).map_err(|_| bad("a signature"))?,
                })
            })
            .collect::<Result<Vec<_>, EventFileError>>()?;
        Ok(pb::SignedEvent {
            body: self.body_bytes()?,
            signatures,
        })
    }

    /// The event hash of the body.
    pub fn hash(&self, ledger_id: &Digest) -> Result<Digest, EventFileError> {
        Ok(hash_of(
            ledger_id,
            &pb::SignedEvent {
                body: self.body_bytes()?,
                signatures: vec![],
            },
        ))
    }

    /// Reads an event file; the readable view is rebuilt from the signed bytes.
    pub fn read(path: &Path) -> Result<EventFile, EventFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| EventFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        let syntax = |message: String| EventFileError::Syntax {
            path: path.display().to_string(),
            message,
        };
        let mut file: EventFile = serde_json::from_str(&text).map_err(|e| syntax(e.to_string()))?;
        if file.format != FORMAT {
            return Err(syntax(format!(
                "format {:?} is not {FORMAT:?}",
                file.format
            )));
        }
        file.refresh_view()?;
        Ok(file)
    }

    /// Writes the file (replacing it: signing adds to the same file).
    pub fn write(&self, path: &Path) -> Result<(), EventFileError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| EventFileError::Syntax {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| EventFileError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use wasteledger_core::sample::{ManifestFlow, SampleNetwork, T0, ids};

    #[test]
    fn two_parties_sign_the_same_bytes_and_tampering_is_caught() {
        let net = SampleNetwork::new().unwrap();
        let flow = ManifestFlow::new(&net, "20261502000001", T0).unwrap();
        let body = wasteledger_core::compose::manifest_body(
            &flow.tracking,
            Digest([7; 32]),
            T0,
            ManifestFlow::handoff(ids::GENERATOR, ids::ROAD),
        );
        let id = net.ledger_id();
        let gen_key = net.key(ids::GENERATOR).unwrap();
        let road = net.key(ids::ROAD).unwrap();
        let mut file = EventFile::prepare(&id, &body, &[(gen_key, None)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.json");
        file.write(&path).unwrap();
        let mut read = EventFile::read(&path).unwrap();
        assert_eq!(read.kind, "CustodyHandoff");
        read.cosign(&id, road, Some(ids::ROAD.into())).unwrap();
        assert!(matches!(
            read.cosign(&id, road, None),
            Err(EventFileError::AlreadySigned(_))
        ));
        let expected = wasteledger_core::compose::sign_event(&id, &body, &[gen_key, road]);
        assert_eq!(read.signed_event().unwrap(), expected);
        // Altered body: the first signature no longer verifies, so nobody co-signs it.
        let mut bytes = file.body_bytes().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        file.body = STANDARD.encode(bytes);
        assert!(file.cosign(&id, road, None).is_err());
        assert!(matches!(
            read.check(&Digest([1; 32])),
            Err(EventFileError::WrongLedger { .. })
        ));
    }
}
