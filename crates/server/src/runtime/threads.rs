//! What this process's threads are waiting on, read from `/proc/self/task` for a stall report.
//!
//! A storage stall (a database sync that does not return) has two kinds of cause that call for
//! different fixes: a device that stopped completing writes (threads in uninterruptible sleep,
//! state `D`, waiting in the block layer) or a wait inside sled's own locks (state `S` on a
//! futex). The sync's step says where it is stuck; the threads' kernel states say why. Linux
//! only: elsewhere the report says it is unavailable.

/// One thread as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadWait {
    /// The thread's name (`comm`).
    pub name: String,
    /// The scheduler state letter (`R` running, `S` sleeping, `D` uninterruptible, ...).
    pub state: char,
    /// The kernel function it sleeps in (`wchan`), empty while running or when hidden.
    pub wchan: String,
}

/// Every thread of this process, or `None` when `/proc` cannot be read.
pub fn thread_waits() -> Option<Vec<ThreadWait>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(entry) = entry else { continue };
        let dir = entry.path();
        // A thread can exit between the listing and these reads: skip it. Its name comes from
        // the same read as its state (a separate read of `comm` could find it gone).
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((name, state)) = name_and_state(&stat) else {
            continue;
        };
        let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
        threads.push(ThreadWait {
            name: name.to_owned(),
            state,
            wchan: match wchan.trim() {
                "0" => String::new(),
                w => w.to_owned(),
            },
        });
    }
    threads.sort_by(|a, b| a.name.cmp(&b.name));
    Some(threads)
}

/// Splits a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` line into the command name and
/// the fields after it. The name is in parentheses and may itself contain spaces and
/// parentheses, so the fields resume after the last `)`; the first of them is the state
/// (field 3 of proc(5)). `None` for a line without a parenthesised name.
pub fn split_stat(stat: &str) -> Option<(&str, std::str::SplitWhitespace<'_>)> {
    let (head, after_name) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    Some((name, after_name.split_whitespace()))
}

/// The name and state letter of a thread's `stat` line.
fn name_and_state(stat: &str) -> Option<(&str, char)> {
    let (name, mut fields) = split_stat(stat)?;
    let state = fields.next()?.chars().next()?;
    Some((name, state))
}

/// A one-line summary for a log: the storage threads (ours and sled's) and every thread in
/// uninterruptible sleep, as `name:state:wchan`, others counted.
pub fn summary(threads: &[ThreadWait]) -> String {
    let mut shown = Vec::new();
    let mut others = 0usize;
    for t in threads {
        if t.state == 'D' || t.name.starts_with("wl-store") || t.name.starts_with("sled") {
            shown.push(format!("{}:{}:{}", t.name, t.state, t.wchan));
        } else {
            others += 1;
        }
    }
    let uninterruptible = threads.iter().filter(|t| t.state == 'D').count();
    format!(
        "{uninterruptible} in uninterruptible IO; {} (and {others} others)",
        shown.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(
            name_and_state("12 (tokio-rt-worker) S 1 2 3"),
            Some(("tokio-rt-worker", 'S'))
        );
        assert_eq!(
            name_and_state("12 (odd) name) D 1 2 3"),
            Some(("odd) name", 'D'))
        );
        assert_eq!(name_and_state("12 no parenthesis"), None);
        assert_eq!(name_and_state("12 (truncated)"), None);
    }

    #[test]
    fn the_summary_shows_storage_and_stuck_threads_and_counts_the_rest() {
        let t = |name: &str, state, wchan: &str| ThreadWait {
            name: name.into(),
            state,
            wchan: wchan.into(),
        };
        let threads = [
            t("sled-io-0", 'S', "futex_wait_queue"),
            t("tokio-rt-worker", 'D', "io_schedule"),
            t("tokio-rt-worker", 'S', "ep_poll"),
            t("wl-store-commit", 'D', "folio_wait_bit_common"),
        ];
        assert_eq!(
            summary(&threads),
            "2 in uninterruptible IO; sled-io-0:S:futex_wait_queue tokio-rt-worker:D:io_schedule \
             wl-store-commit:D:folio_wait_bit_common (and 1 others)"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_lists_its_own_threads() {
        let threads = thread_waits().expect("/proc is readable on Linux");
        assert!(!threads.is_empty());
        assert!(threads.iter().all(|t| !t.name.is_empty()));
        // The thread running this test is running or runnable.
        assert!(threads.iter().any(|t| t.state == 'R'));
    }
}
