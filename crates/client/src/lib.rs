//! # wasteledger-client
//!
//! Everything the `wasteledger` command does besides parsing arguments and printing: key files,
//! genesis creation, manifest and event files, composing lifecycle events from a manifest's
//! current state, offline custody-proof reports and (feature `network`, on by default) a
//! `LedgerService` client that pages, retries elections and classifies failures.
//!
//! The offline parts depend on `wasteledger-core` alone, so
//! `cargo build -p wasteledger-client --no-default-features` builds a verifier with no server,
//! tokio or tonic code in it.

pub mod compose;
pub mod event_file;
pub mod files;
pub mod genesis;
pub mod keys;
pub mod report;

#[cfg(feature = "network")]
pub mod admin;
#[cfg(feature = "network")]
pub mod remote;

/// The current time in milliseconds since the Unix epoch (the `occurred_at` of new events).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
