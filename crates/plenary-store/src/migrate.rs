//! Schema 1 → 2: raw messages move from sled's `blobs` tree (32 KiB chunks under a blob id)
//! into the spool, and every record that pointed at a blob id gets a [`BlobRef`] instead.
//!
//! Runs at open, before anything else uses the store. Restartable: records are rewritten
//! only after the bytes they point at are durable in the spool, a rewritten record has no
//! `blob` field and is skipped by a second run, and the `blobs` tree and the schema number
//! change last. Archived messages that shared a blob share one spool copy; a held post, an
//! inbox entry or a forward job gets a copy of its own, because those are erased when they
//! are handled (in schema 1 they shared the archived copy, and erasing one destroyed it).
//!
//! That schema 1 bug also left records whose blob is gone, or (blob ids were reused after a
//! restart) whose blob id now holds another message. Such a record must not stop the
//! migration, and must not inherit somebody else's bytes: a blob with missing chunks, or
//! whose length differs from the size the record's metadata gives, counts as lost. An
//! archived message then points at [`BlobRef::LOST`] (reading it says the bytes are lost);
//! a held post, inbox entry or forward job is dropped. Each case is logged with its key.

use crate::spool::{BlobRef, SpoolWriter, Staged};
use crate::{corrupt, StoreError, Trees};
use std::collections::HashMap;

/// Spool bytes gathered before one durable write.
const BATCH_BYTES: usize = 32 * 1024 * 1024;

/// A record to rewrite (or, with `None`, drop) once the bytes it points at are durable.
struct Pending {
    tree: sled::Tree,
    key: sled::IVec,
    value: Option<Vec<u8>>,
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn v1_to_v2(db: &sled::Db, trees: &Trees, spool: &mut SpoolWriter) -> Result<u64, StoreError> {
    let blobs = db.open_tree("blobs")?;
    let mut archived: HashMap<u64, BlobRef> = HashMap::new();
    let mut staged = spool.begin()?;
    let mut pending: Vec<Pending> = Vec::new();
    let mut moved = 0u64;
    let sources = [
        (&trees.messages, "messages", false),
        (&trees.held, "held", true),
        (&trees.inbox, "inbox", true),
        (&trees.fanout, "fanout", true),
    ];
    for (tree, name, own_copy) in sources {
        for kv in tree.iter() {
            let (k, v) = kv?;
            let what = || format!("{name} record {}", hex(&k));
            let mut value: serde_json::Value = serde_json::from_slice(&v).map_err(|e| corrupt(what(), e))?;
            let holder = if name == "fanout" {
                value
                    .get_mut("what")
                    .filter(|w| w.get("kind").and_then(|k| k.as_str()) == Some("forward"))
            } else {
                Some(&mut value)
            };
            let Some(obj) = holder.and_then(|h| h.as_object_mut()) else {
                continue;
            };
            let (Some(id), Some(chunks)) = (
                obj.get("blob").and_then(|x| x.as_u64()),
                obj.get("chunks").and_then(|x| x.as_u64()),
            ) else {
                continue;
            };
            let size = obj.get("meta").and_then(|m| m.get("size")).and_then(|x| x.as_u64());
            let r = match archived.get(&id) {
                Some(r) if !own_copy && size.is_none_or(|n| n == u64::from(r.len)) => Some(*r),
                _ => match read_v1(&blobs, id, chunks)? {
                    Some(bytes) if size.is_none_or(|n| n == bytes.len() as u64) => {
                        let r = staged.push(&bytes)?;
                        if !own_copy {
                            archived.insert(id, r);
                        }
                        Some(r)
                    }
                    _ => None,
                },
            };
            let value = match (r, own_copy) {
                (Some(r), _) => {
                    obj.remove("blob");
                    obj.remove("chunks");
                    obj.insert("raw".into(), serde_json::to_value(r).map_err(|e| corrupt(what(), e))?);
                    Some(serde_json::to_vec(&value).map_err(|e| corrupt(what(), e))?)
                }
                (None, false) => {
                    tracing::warn!(record = %what(), blob = id, "raw bytes lost before the migration; the message stays listed");
                    obj.remove("blob");
                    obj.remove("chunks");
                    obj.insert(
                        "raw".into(),
                        serde_json::to_value(BlobRef::LOST).map_err(|e| corrupt(what(), e))?,
                    );
                    Some(serde_json::to_vec(&value).map_err(|e| corrupt(what(), e))?)
                }
                (None, true) => {
                    tracing::warn!(record = %what(), blob = id, "raw bytes lost before the migration; record dropped");
                    None
                }
            };
            pending.push(Pending {
                tree: tree.clone(),
                key: k,
                value,
            });
            moved += 1;
            if staged.bytes() >= BATCH_BYTES {
                staged = flush(db, &trees.meta, spool, staged, &mut pending)?;
            }
        }
    }
    flush(db, &trees.meta, spool, staged, &mut pending)?;
    db.drop_tree("blobs")?;
    trees.meta.insert(b"schema", &2u64.to_be_bytes())?;
    db.flush()?;
    Ok(moved)
}

/// Make the staged bytes durable, then write the records that point at them.
fn flush(
    db: &sled::Db,
    meta: &sled::Tree,
    spool: &mut SpoolWriter,
    staged: Staged,
    pending: &mut Vec<Pending>,
) -> Result<Staged, StoreError> {
    spool.write(staged).map_err(|(e, _)| e)?;
    for p in pending.drain(..) {
        match p.value {
            Some(v) => p.tree.insert(p.key, v)?,
            None => p.tree.remove(p.key)?,
        };
    }
    let (seg, end) = spool.end();
    meta.insert(crate::SPOOL_END, &crate::spool::mark_bytes(seg, end))?;
    db.flush()?;
    spool.begin()
}

/// A schema 1 blob, or `None` when it does not have the chunks the record expects.
fn read_v1(blobs: &sled::Tree, id: u64, chunks: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    let mut n = 0u64;
    for kv in blobs.scan_prefix(id.to_be_bytes()) {
        let (_, v) = kv?;
        out.extend_from_slice(&v);
        n += 1;
    }
    Ok((n == chunks).then_some(out))
}
