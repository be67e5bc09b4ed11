//! Run the search indexer below the SMTP sessions' CPU priority.
//!
//! Why: on a small server the indexer and the SMTP path share the same cores. Mail must be
//! accepted (spooled, synced, answered `250`) first; the index is a projection that may trail
//! by a second under a burst and catches up in the gaps (the sessions wait on fsync often).
//! At equal priority a 20,000-message burst at 16 sessions ran 5–10 % slower to its last
//! `250` once the indexer stopped idling between steps (README, performance).
//!
//! Linux applies a nice value to the calling thread only, and threads inherit it from the
//! thread that creates them, so tantivy's indexing, store-compression, segment-updater and
//! merge threads, which the indexer thread makes (`Indexer::run` drops any writer made
//! before it), run at the same lower priority. One side effect: a temporary `sled-io`
//! thread that sled starts from the indexer's own store writes (its queue marks) inherits
//! it too, until it exits after a second without work; sled's seven permanent I/O threads
//! start with the store, on the main thread.

/// How much lower: 10 of the 19 nice steps (a CFS weight about a tenth of a normal thread's
/// while both want the CPU; alone, it gets the whole core).
pub const INDEXER_NICE: i32 = 10;

/// Lower the calling thread's priority by `n` nice steps; false where that is not possible
/// (not Linux, or refused), which only costs the ordering above.
#[cfg(target_os = "linux")]
#[allow(unsafe_code, reason = "setpriority is a plain libc call")]
pub fn lower_this_thread(n: i32) -> bool {
    // SAFETY: getpriority and setpriority take integers and no pointers; with PRIO_PROCESS
    // and who = 0 Linux reads and changes the calling thread's nice value only. A nice value
    // is absolute, so the current one (an operator's `Nice=` say) is read first; -1 is also
    // getpriority's error value, which at worst lowers the thread one step less.
    unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, current.saturating_add(n).min(19)) == 0
    }
}

#[cfg(not(target_os = "linux"))]
pub fn lower_this_thread(_: i32) -> bool {
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of one thread, from /proc (field 19 of its stat line).
    fn nice_of(tid: &str) -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("own /proc entry");
        let rest = &stat[stat.rfind(')').expect("stat has a command") + 2..];
        rest.split_ascii_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok())
            .expect("nice field")
    }

    #[test]
    fn lowers_only_the_calling_thread_and_what_it_spawns() {
        let tid_of = || {
            std::fs::read_link("/proc/thread-self")
                .expect("thread-self")
                .file_name()
                .expect("tid")
                .to_string_lossy()
                .into_owned()
        };
        let main = tid_of();
        let before = nice_of(&main);
        if before >= 19 {
            eprintln!("skipped: this test already runs at the lowest priority (nice {before})");
            return;
        }
        let (lowered, child) = std::thread::spawn(move || {
            let ok = lower_this_thread(INDEXER_NICE);
            let child = std::thread::spawn(move || nice_of(&tid_of()))
                .join()
                .expect("child thread");
            (ok.then(|| nice_of(&tid_of())), child)
        })
        .join()
        .expect("test thread");
        let lowered = lowered.expect("setpriority to a lower priority is always allowed");
        assert_eq!(lowered, (before + i64::from(INDEXER_NICE)).min(19));
        assert_eq!(
            child, lowered,
            "a thread spawned by the lowered thread inherits its priority"
        );
        assert_eq!(nice_of(&main), before, "the other threads keep theirs");
    }
}
