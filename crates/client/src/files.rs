//! Manifest files: a `wasteledger.v1.Manifest` written as JSON or TOML in canonical protobuf JSON
//! form (proto field names, enum value names such as `"CONTAINER_TYPE_DM"`, decimal strings for
//! quantities), validated with the same core rules the nodes apply before anything is signed.
//!
//! Following the .proto field for field (rather than a hand-kept schema) means every field of
//! the wire contract can be filled from a file and a new proto field needs no CLI change.
//! `docs/examples/manifest.toml` is a complete example.

use std::path::{Path, PathBuf};

use wasteledger_core::manifest::{FieldProblem, validate_manifest};
use wasteledger_core::pb;

/// Why a manifest file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON or TOML, or not a manifest in that syntax.
    #[error("{path}: {message}")]
    Syntax {
        /// The file (or `line N` of an import).
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The extension says neither JSON nor TOML.
    #[error("{0}: use a .toml or .json file (see docs/examples/manifest.toml)")]
    Format(PathBuf),
    /// The manifest breaks the core rules.
    #[error("{path}: the manifest is not valid:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The file (or `line N` of an import).
        path: String,
        /// Every problem found.
        problems: Vec<FieldProblem>,
    },
}

/// Deserializes a message from a JSON value, naming the field path of any error
/// (`lines[0].containers.type: unknown variant …`): the value has no line numbers left.
fn from_value<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Parses a manifest from canonical protobuf JSON text (no validation).
pub fn parse_manifest_json(text: &str) -> Result<pb::Manifest, String> {
    // Syntax errors carry line and column; type errors get the field path.
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    from_value(value)
}

/// Parses a manifest from TOML text with the same field names (no validation).
pub fn parse_manifest_toml(text: &str) -> Result<pb::Manifest, String> {
    // Through a JSON value: TOML integers become JSON numbers, which the protobuf-JSON
    // deserializer accepts for every integer field.
    let value: serde_json::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    from_value(value)
}

/// Checks a manifest with the core rules; every problem is returned at once.
pub fn validate(m: &pb::Manifest, origin: &str) -> Result<(), FileError> {
    let problems = validate_manifest(m);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FileError::Invalid {
            path: origin.to_owned(),
            problems,
        })
    }
}

/// Reads any message from a `.toml` or `.json` file in protobuf-JSON form (no validation).
pub fn read_message<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let parsed = match ext.as_deref() {
        Some("toml") => toml::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(from_value),
        Some("json") => serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| e.to_string())
            .and_then(from_value),
        _ => return Err(FileError::Format(path.to_owned())),
    };
    parsed.map_err(|message| FileError::Syntax {
        path: path.display().to_string(),
        message,
    })
}

/// Reads a `.toml` or `.json` manifest file and validates it.
pub fn read_manifest(path: &Path) -> Result<pb::Manifest, FileError> {
    let manifest: pb::Manifest = read_message(path)?;
    validate(&manifest, &path.display().to_string())?;
    Ok(manifest)
}

/// Reads a `.toml` or `.json` party file (a `wasteledger.v1.Party`) and checks its registry id;
/// the registry rules (roles, permits) are checked by the ledger.
pub fn read_party(path: &Path) -> Result<pb::Party, FileError> {
    let party: pb::Party = read_message(path)?;
    if let Err(e) = wasteledger_core::tracking::validate_registry_id(&party.registry_id) {
        return Err(FileError::Invalid {
            path: path.display().to_string(),
            problems: vec![FieldProblem {
                field: "registry_id".into(),
                problem: e.to_string(),
            }],
        });
    }
    Ok(party)
}

/// One line of a JSON Lines import: its 1-based number and the manifest or why it is refused.
pub type ImportLine = (usize, Result<pb::Manifest, FileError>);

/// Reads a JSON Lines file of manifests (one JSON object per line; blank lines and lines starting
/// with `#` are skipped). Each line is parsed and validated on its own, so one bad line does not
/// hide the others.
pub fn read_jsonl(path: &Path) -> Result<Vec<ImportLine>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let origin = format!("{} line {}", path.display(), i + 1);
            let m = parse_manifest_json(l)
                .map_err(|message| FileError::Syntax {
                    path: origin.clone(),
                    message,
                })
                .and_then(|m| validate(&m, &origin).map(|()| m));
            (i + 1, m)
        })
        .collect())
}

/// A manifest as one line of canonical protobuf JSON (for exports and import files).
pub fn manifest_to_json(m: &pb::Manifest) -> Result<String, serde_json::Error> {
    serde_json::to_string(m)
}
