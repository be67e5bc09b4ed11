//! The store relies on two more changes to the vendored sled (`vendor/sled/PLENARY-PATCH.md`),
//! both about how sled hands log writes to its I/O threads. Every group commit makes a sled
//! transaction and a `flush()`, so their cost is paid once or twice per batch of mail.
//!
//! 1. A thread that flushes writes the log buffer itself instead of queueing the write for
//!    an I/O thread and sleeping until that one is done.
//! 2. Queueing a write wakes one idle I/O thread, not all seven.
//!
//! One test function, because sled's I/O thread pool is global to the process: a second
//! test running alongside would queue writes of its own and blur the counts.
#![cfg(target_os = "linux")]

mod common;

use common::io_field;
use std::collections::HashMap;
use std::time::Duration;

/// For every sled I/O thread of this process: (voluntary context switches, write syscalls).
fn io_threads() -> HashMap<String, (u64, u64)> {
    let mut out = HashMap::new();
    let tasks = std::fs::read_dir("/proc/self/task").unwrap_or_else(|e| panic!("/proc/self/task: {e}"));
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("sled-io-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let writes = io_field(&dir.join("io").to_string_lossy(), "syscw");
        out.insert(task.file_name().to_string_lossy().into_owned(), (switches, writes));
    }
    out
}

/// Sum over the I/O threads of what they did between two snapshots.
fn delta(before: &HashMap<String, (u64, u64)>, after: &HashMap<String, (u64, u64)>) -> (u64, u64) {
    let mut d = (0, 0);
    for (tid, (s, w)) in after {
        let (s0, w0) = before.get(tid).copied().unwrap_or((0, 0));
        d.0 += s - s0;
        d.1 += w - w0;
    }
    d
}

#[test]
fn flushes_write_in_place_and_a_queued_write_wakes_one_io_thread() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    // No background flusher: every log write below is one this test causes.
    let db = sled::Config::new()
        .path(tmp.path().join("db"))
        .flush_every_ms(None)
        .open()
        .unwrap_or_else(|e| panic!("open sled: {e}"));

    // 1. The flushing thread writes the buffer: its own write counter grows by at least
    //    the value's size. Stock sled left the write to an I/O thread (this thread wrote
    //    nothing) and slept until it was done.
    let value = vec![5u8; 64 * 1024];
    db.insert(b"flushed", value.as_slice())
        .unwrap_or_else(|e| panic!("insert: {e}"));
    let before = io_field("/proc/thread-self/io", "wchar");
    db.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    let wrote = io_field("/proc/thread-self/io", "wchar") - before;
    assert!(
        wrote >= value.len() as u64,
        "the flushing thread wrote {wrote} bytes for a {}-byte value: the write went to an I/O thread",
        value.len()
    );

    // 2. Writes sled queues for its I/O threads: a batch seals and writes the log buffer
    //    (twice, `pin_log` in sled's pagecache). Spaced out so that all seven permanent
    //    I/O threads are idle each time. Each queued write must wake about one thread:
    //    it sleeps once for the wake-up and once or twice more on the disk (the
    //    `sync_file_range` after each write). Waking all seven made it 6.4 in a run.
    //    The pool starts with the first queued write.
    db.apply_batch(sled::Batch::default())
        .unwrap_or_else(|e| panic!("apply_batch: {e}"));
    std::thread::sleep(Duration::from_millis(200));
    let before = io_threads();
    assert!(!before.is_empty(), "no sled I/O threads found in /proc/self/task");
    for i in 0u32..100 {
        let mut batch = sled::Batch::default();
        batch.insert(&i.to_be_bytes(), vec![1u8; 512]);
        db.apply_batch(batch).unwrap_or_else(|e| panic!("apply_batch: {e}"));
        std::thread::sleep(Duration::from_millis(3));
    }
    std::thread::sleep(Duration::from_millis(100));
    let (switches, writes) = delta(&before, &io_threads());
    assert!(
        writes >= 100,
        "100 batches made only {writes} writes on the I/O threads: the test shows nothing"
    );
    assert!(
        switches < 4 * writes,
        "the I/O threads slept {switches} times for {writes} queued writes: a queued write wakes more than one thread"
    );
    eprintln!(
        "{writes} queued writes, {switches} I/O thread sleeps ({:.1} per write)",
        switches as f64 / writes as f64
    );
}
