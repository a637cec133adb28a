//! Exit codes and the error type every command returns.
//!
//! The code tells a script what kind of failure it was without parsing text:
//! 0 ok, 1 a check failed (a proof did not verify), 2 usage or bad input, 3 the server was
//! unreachable or refused, 4 a node's storage stalled.

use wasteledger_client::remote::RemoteError;

/// A check ran and failed (a custody proof did not verify).
pub(crate) const CHECK_FAILED: u8 = 1;
/// Usage error or bad input (missing or malformed file, wrong key, bad value).
pub(crate) const USAGE: u8 = 2;
/// The node was unreachable or refused the request (or a node failed at run time).
pub(crate) const REMOTE: u8 = 3;

/// `wasteledger node` only: the node's storage stopped making progress and the process exited
/// so that its supervisor restarts it (`storage.stall_timeout_s`).
pub(crate) const STORAGE_STALLED: u8 = wasteledger_server::runtime::STORAGE_STALLED_EXIT_CODE;

/// The text `--help` shows about exit codes.
pub(crate) const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  a check failed (e.g. `proof verify` found the proof invalid)
  2  usage error or bad input (missing or malformed file, invalid manifest, wrong key)
  3  the node is unreachable or refused the request (the reason code is printed)
  4  `node`: its storage stalled (a sync exceeded storage.stall_timeout_s); restart it

Environment:
  WASTELEDGER_NODE     node API address (HOST:PORT), default 127.0.0.1:7201
  WASTELEDGER_ADMIN    a node's admin listener for `cluster` commands (HOST:PORT)
  WASTELEDGER_GENESIS  the network's genesis file, needed to sign and to verify";

/// Why a command failed, with the exit code and an optional hint on what to do.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) error: anyhow::Error,
    pub(crate) hint: Option<String>,
}

impl Failure {
    pub(crate) fn new(code: u8, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
            hint: None,
        }
    }

    pub(crate) fn usage(message: impl std::fmt::Display) -> Failure {
        Failure::new(USAGE, anyhow::anyhow!("{message}"))
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Failure {
        let hint = e.hint().map(str::to_owned);
        // A malformed --node is the user's typo, not the server's doing.
        let code = match e {
            RemoteError::Address(_) => USAGE,
            _ => REMOTE,
        };
        Failure {
            code,
            error: e.into(),
            hint,
        }
    }
}

/// The result of a command.
pub(crate) type CmdResult = Result<(), Failure>;

/// Marks an error as bad input (exit 2).
pub(crate) trait OrUsage<T> {
    fn or_usage(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrUsage<T> for Result<T, E> {
    fn or_usage(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(USAGE, e))
    }
}
