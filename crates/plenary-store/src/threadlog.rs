//! The thread log: each archived message's [`Entry`], packed [`THREAD_CHUNK`] sequence
//! numbers to a value, written in the same transaction as the message.
//!
//! Why packed and not one key per message: the web layer reads a whole list's entries at
//! start-up, and sled 0.34 keeps every page it has read in memory for good (its
//! `cache_capacity` does not bound this). Measured with 90,000 values, the resident cost
//! is about 150 bytes per key on top of the value; reading the full message records for
//! the views kept about 48 MB. Packed entries cost about their own size.
//!
//! Stores written before the log existed (or with another encoding of it) get it built
//! from the message records the first time they are opened (the `thread_log` key in the
//! `meta` tree holds the encoding's version once the log is complete).

use crate::{corrupt, Store, StoreError, Trees};
use plenary_core::{ListId, MessageKey};
use plenary_thread::Entry;
use std::collections::BTreeMap;

/// Sequence numbers per thread-log value.
///
/// Why 16: every group commit rewrites the value its entries go into (read, append, write),
/// and sled writes the whole value to its log again. With 128 a value grew to about 11 KB,
/// so each commit rewrote 5.5 KB on average, more than the message records it carried: sled
/// held 72 MB after the 20,000-message ingest benchmark, 50 MB with 16, and paired probes
/// (`bench/ingest-probe.sh`, three rounds) went from 5,251 / 4,791 / 5,266 to 5,553 / 5,360
/// / 5,248 msgs/s answered and from 3,357 / 3,099 / 3,325 to 3,599 / 3,612 / 3,392
/// searchable. The cost is one more sled key per 16 messages in the views' resident set
/// (about 150 bytes each, under 1 MB for 90,000 messages).
pub const THREAD_CHUNK: u64 = 16;

/// `meta` key holding [`FORMAT`] once every stored message has its entry.
const COMPLETE: &[u8] = b"thread_log";
/// The version of [`Entry`]'s encoding in the log and of its [`THREAD_CHUNK`] (3: 16 per
/// value; 2 had 128); another value (or none) means the log is rebuilt from the message
/// records on open.
const FORMAT: u8 = 3;

/// The key of the value holding `seq`'s entry.
pub(crate) fn chunk_key(list: ListId, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&list.0.to_be_bytes());
    k[4..].copy_from_slice(&(seq / THREAD_CHUNK).to_be_bytes());
    k
}

/// Entries a commit adds, grouped by value, to be appended to what is stored.
#[derive(Default)]
pub(crate) struct Pending(BTreeMap<[u8; 12], Vec<u8>>);

impl Pending {
    pub(crate) fn add(&mut self, key: MessageKey, e: &Entry) {
        e.encode(self.0.entry(chunk_key(key.list, key.seq)).or_default());
    }

    /// The writes that append the pending entries (a read of each touched value).
    pub(crate) fn into_batch(self, tree: &sled::Tree) -> Result<sled::Batch, StoreError> {
        let mut b = sled::Batch::default();
        for (k, new) in self.0 {
            let mut v = tree.get(k)?.map(|v| v.to_vec()).unwrap_or_default();
            v.extend_from_slice(&new);
            b.insert(&k, v);
        }
        Ok(b)
    }
}

/// Build the log from the message records if an older store lacks it. Runs before the
/// committer starts, so nothing writes meanwhile.
pub(crate) fn backfill(db: &sled::Db, t: &Trees) -> Result<(), StoreError> {
    if t.meta.get(COMPLETE)?.as_deref() == Some(&[FORMAT][..]) {
        return Ok(());
    }
    t.thread_log.clear()?;
    let mut pending = Pending::default();
    let mut n = 0u64;
    for kv in t.messages.iter() {
        let (k, v) = kv?;
        let m: crate::StoredMessage = serde_json::from_slice(&v).map_err(|e| corrupt(format!("{k:?}"), e))?;
        if let Some(e) = Entry::from_meta(m.key.seq, &m.meta) {
            pending.add(m.key, &e);
            n += 1;
        }
        if pending.0.len() >= 64 {
            t.thread_log
                .apply_batch(std::mem::take(&mut pending).into_batch(&t.thread_log)?)?;
        }
    }
    t.thread_log.apply_batch(pending.into_batch(&t.thread_log)?)?;
    t.meta.insert(COMPLETE, &[FORMAT])?;
    db.flush()?;
    if n > 0 {
        tracing::info!(entries = n, "built the thread log from the message records");
    }
    Ok(())
}

impl Store {
    /// The thread entries of `list`'s archived messages with `after < seq <= upto`, in
    /// seq order.
    pub fn thread_entries(&self, list: ListId, after: u64, upto: u64) -> Result<Vec<Entry>, StoreError> {
        let lo = chunk_key(list, after.saturating_add(1));
        let hi = chunk_key(list, upto);
        let mut out = Vec::new();
        if upto <= after {
            return Ok(out);
        }
        for kv in self.trees().thread_log.range(lo..=hi) {
            let (k, v) = kv?;
            let entries = Entry::decode_all(&v).map_err(|e| corrupt(format!("thread_log {k:?}"), e))?;
            out.extend(entries.into_iter().filter(|e| e.seq > after && e.seq <= upto));
        }
        Ok(out)
    }
}
