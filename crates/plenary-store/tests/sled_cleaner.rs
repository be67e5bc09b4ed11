//! The store relies on a patched sled (`vendor/sled/PLENARY-PATCH.md`): pages its segment
//! cleaner reads from disk only to move them must not stay in the cache. Without the patch
//! a daemon's first run after a bulk import kept about 14 MB of heap for good (ARCHITECTURE.md,
//! "Memory"). This checks the behaviour through sled's public API: after the cleaner has
//! moved pages nobody had read, reading them must go to the file again.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

const KEYS: u32 = 20_000;
/// Keys in blocks of this many; one block in five is kept, the rest deleted.
const BLOCK: u32 = 1_000;

fn kept(i: u32) -> bool {
    (i / BLOCK).is_multiple_of(5)
}

/// Bytes this thread has read through syscalls.
fn thread_rchar() -> u64 {
    common::io_field("/proc/thread-self/io", "rchar")
}

/// Read every kept key, checking its value; returns the bytes this thread read meanwhile.
fn read_kept(db: &sled::Db, value: &[u8]) -> u64 {
    let before = thread_rchar();
    for i in (0..KEYS).filter(|&i| kept(i)) {
        let v = db.get(i.to_be_bytes()).unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(v.as_deref(), Some(value), "key {i}");
    }
    thread_rchar() - before
}

fn open(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(8 * 1024 * 1024)
        .flush_every_ms(Some(20))
        .open()
        .unwrap_or_else(|e| panic!("open sled: {e}"))
}

/// Wait until sled has not written its log for a second (its cleaner is done).
fn wait_until_log_quiet(dir: &std::path::Path) {
    let log = dir.join("db");
    let mtime = || std::fs::metadata(&log).and_then(|m| m.modified()).ok();
    let started = Instant::now();
    let mut last = mtime();
    let mut still = Instant::now();
    while still.elapsed() < Duration::from_secs(1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sled kept writing for a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
        let now = mtime();
        if now != last {
            last = now;
            still = Instant::now();
        }
    }
}

#[test]
fn pages_the_segment_cleaner_moves_are_not_kept_in_the_cache() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let dir = tmp.path().join("db");
    let value = vec![7u8; 400];
    {
        let db = open(&dir);
        for i in 0..KEYS {
            db.insert(i.to_be_bytes(), value.as_slice())
                .unwrap_or_else(|e| panic!("insert: {e}"));
        }
        db.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    }
    // Reopened, nothing is cached. Deleting four blocks in five leaves the log segments
    // mostly stale, so the cleaner moves the kept blocks' leaves, which nobody has read.
    let db = open(&dir);
    for i in (0..KEYS).filter(|&i| !kept(i)) {
        db.remove(i.to_be_bytes()).unwrap_or_else(|e| panic!("remove: {e}"));
    }
    db.flush().unwrap_or_else(|e| panic!("flush: {e}"));
    let before_cleaning = std::fs::metadata(dir.join("db")).and_then(|m| m.modified()).ok();
    wait_until_log_quiet(&dir);
    let after_cleaning = std::fs::metadata(dir.join("db")).and_then(|m| m.modified()).ok();
    assert_ne!(
        before_cleaning, after_cleaning,
        "the cleaner moved nothing: the test shows nothing"
    );

    let kept_bytes: u64 = (0..KEYS).filter(|&i| kept(i)).count() as u64 * value.len() as u64;
    let read = read_kept(&db, &value);
    // With the cleaner's pages left in the cache, these reads cost no syscall at all.
    assert!(
        read >= kept_bytes / 2,
        "reading {kept_bytes} bytes of moved values read only {read} bytes from the file: the cleaner kept them cached"
    );
    // The measure tells cached from not: read again, now that they are cached, they cost
    // next to nothing (the reads of /proc itself).
    let again = read_kept(&db, &value);
    assert!(
        again < kept_bytes / 100,
        "cached values still read {again} bytes from the file"
    );
}
