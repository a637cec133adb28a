//! The genesis: a network's trust roots, and the ledger id derived from its exact bytes.
//!
//! A verifier is handed the genesis file out of band (it is the one thing it must trust) and
//! never learns trust roots from a server: the ledger id in every proof must equal the hash of
//! the genesis the verifier holds.

use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::checkpoint::{CheckpointError, WitnessSet};
use crate::hash::{Digest, Purpose};
use crate::pb;
use crate::signing::{SignatureError, key_id, parse_public_key};

/// Default allowed clock skew between an event's stated time and the ledger time: 5 minutes.
pub const DEFAULT_MAX_SKEW_MS: i64 = 300_000;

/// Why a genesis file was refused.
#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// Not a protobuf `Genesis`.
    #[error("genesis file is not a valid wasteledger.v1.Genesis message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Empty or malformed ledger name.
    #[error("genesis ledger_name must be 1 to 255 printable characters without spaces")]
    LedgerName,
    /// No authority can admit parties.
    #[error("genesis must name at least one authority key")]
    NoAuthorities,
    /// An authority key is unusable.
    #[error("authority {name}: {source}")]
    AuthorityKey {
        /// Authority name.
        name: String,
        /// What is wrong with the key.
        source: SignatureError,
    },
    /// Two authorities with one name or one key.
    #[error("authority {0} is listed twice (by name or by key)")]
    DuplicateAuthority(String),
    /// Witness set or trust policy invalid.
    #[error("genesis nodes or checkpoint policy: {0}")]
    Witnesses(#[from] CheckpointError),
    /// A negative skew.
    #[error("max_clock_skew_ms must not be negative")]
    Skew,
}

/// A genesis authority.
#[derive(Clone, Debug)]
pub struct Authority {
    /// Its name.
    pub name: String,
    /// Its public key.
    pub key: VerifyingKey,
    /// Its key id.
    pub key_id: Digest,
}

/// A parsed, validated genesis.
#[derive(Clone, Debug)]
pub struct Genesis {
    /// Hash of the genesis bytes: binds every signature to this network.
    pub ledger_id: Digest,
    /// The decoded message.
    pub message: pb::Genesis,
    /// Authorities that admit parties.
    pub authorities: Vec<Authority>,
    /// Node witnesses and the checkpoint trust policy.
    pub witnesses: WitnessSet,
    /// Allowed clock skew (ms).
    pub max_skew_ms: i64,
}

impl Genesis {
    /// Parses and validates genesis bytes exactly as distributed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Genesis, GenesisError> {
        let message = pb::Genesis::decode(bytes)?;
        let name = &message.ledger_name;
        if name.is_empty()
            || name.len() > 255
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(GenesisError::LedgerName);
        }
        if message.authorities.is_empty() {
            return Err(GenesisError::NoAuthorities);
        }
        let mut authorities: Vec<Authority> = Vec::with_capacity(message.authorities.len());
        for a in &message.authorities {
            let key =
                parse_public_key(&a.ed25519).map_err(|source| GenesisError::AuthorityKey {
                    name: a.name.clone(),
                    source,
                })?;
            let id = key_id(&key);
            if authorities
                .iter()
                .any(|x| x.name == a.name || x.key_id == id)
            {
                return Err(GenesisError::DuplicateAuthority(a.name.clone()));
            }
            authorities.push(Authority {
                name: a.name.clone(),
                key,
                key_id: id,
            });
        }
        let witnesses = WitnessSet::from_genesis(&message)?;
        let max_skew_ms = match message.max_clock_skew_ms {
            0 => DEFAULT_MAX_SKEW_MS,
            s if s < 0 => return Err(GenesisError::Skew),
            s => s,
        };
        Ok(Genesis {
            ledger_id: ledger_id(bytes),
            message,
            authorities,
            witnesses,
            max_skew_ms,
        })
    }

    /// The ledger name (first line of every checkpoint).
    pub fn ledger_name(&self) -> &str {
        &self.message.ledger_name
    }

    /// The authority with this key id.
    pub fn authority(&self, key_id: &Digest) -> Option<&Authority> {
        self.authorities.iter().find(|a| &a.key_id == key_id)
    }
}

/// The ledger id of genesis bytes: `blake3-derive("wasteledger v1 genesis", bytes)`.
pub fn ledger_id(genesis_bytes: &[u8]) -> Digest {
    Purpose::Genesis.hash(genesis_bytes)
}
