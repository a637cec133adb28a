//! The background check of settled history: after start-up has checked the entries since the
//! integrity checkpoint (`LedgerStore::verify_recent`), every entry below it is checked while
//! the node serves, and a failure is published for the runtime to stop the node on.
//!
//! Start-up stays bounded by the entries since the last snapshot, whatever the history's size;
//! damage to settled history (a bad disk, an edited data file) is still found on every start,
//! seconds to minutes later instead of before serving. Until then the node serves entries it
//! has not re-read since it stored them, as it did between starts before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasteledger_store::state::IntegrityError;

use crate::state_machine::{LedgerStateMachine, PendingHistoryCheck};

/// Where the background history check is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryState {
    /// Checking `entries` entries below the integrity checkpoint.
    Running {
        /// Entries being checked.
        entries: u64,
    },
    /// Every stored entry has been checked since this process started.
    Passed,
    /// Stopped before the end (shutdown, or a snapshot install replaced the state, which the
    /// install checked in full).
    Abandoned,
    /// Settled history is damaged: the node must stop serving.
    Failed(IntegrityError),
}

/// The running check: its state, and the means to stop it.
#[derive(Debug)]
pub struct HistoryTask {
    state: watch::Receiver<HistoryState>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl HistoryTask {
    /// Starts checking `pending` on a blocking thread; with `None` (start-up checked
    /// everything) it has passed already.
    pub fn start(state_machine: LedgerStateMachine, pending: Option<PendingHistoryCheck>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let unchecked = metrics::gauge!("wasteledger_history_unchecked_entries");
        let Some(pending) = pending else {
            unchecked.set(0.0);
            let (_, state) = watch::channel(HistoryState::Passed);
            return HistoryTask {
                state,
                stop,
                task: None,
            };
        };
        let entries = pending.entries();
        unchecked.set(entries as f64);
        let (publish, state) = watch::channel(HistoryState::Running { entries });
        let task = tokio::task::spawn_blocking({
            let stop = stop.clone();
            move || {
                let started = Instant::now();
                let outcome = match state_machine.check_history(&pending, &stop) {
                    Some(Ok(())) => {
                        tracing::info!(
                            entries,
                            ms = started.elapsed().as_millis() as u64,
                            "settled history checked: every stored entry matches"
                        );
                        unchecked.set(0.0);
                        HistoryState::Passed
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "settled history is damaged");
                        HistoryState::Failed(e)
                    }
                    None => HistoryState::Abandoned,
                };
                // Nobody listening is fine: the node is going away.
                let _ = publish.send(outcome);
            }
        });
        HistoryTask {
            state,
            stop,
            task: Some(task),
        }
    }

    /// Watches the check's state.
    pub fn state(&self) -> watch::Receiver<HistoryState> {
        self.state.clone()
    }

    /// Stops the check and waits for its thread, which holds a handle to the database.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HistoryTask {
    /// A node dropped without [`HistoryTask::stop`] still ends the check soon (within a few
    /// thousand entries), so it does not keep the database open behind it.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Resolves with the damage the check finds; never, if it finds none.
pub async fn failure(mut state: watch::Receiver<HistoryState>) -> IntegrityError {
    if let Ok(state) = state
        .wait_for(|s| matches!(s, HistoryState::Failed(_)))
        .await
        && let HistoryState::Failed(e) = &*state
    {
        return e.clone();
    }
    std::future::pending().await
}
