//! Raw message bytes, kept outside sled in append-only segment files (`spool/NNNNNNNN.seg`).
//!
//! Why not in sled: a raw message is written once and read whole, but sled keeps values in
//! B-tree leaves of up to 17 entries, so every read of one message pulled a leaf of sixteen
//! others into sled's page cache (where, in 0.34, a one-off read stays: see ARCHITECTURE.md,
//! "Memory"), every few inserts rewrote such a leaf whole, and after a bulk import sled's
//! segment cleaner relocated hundreds of megabytes of them in the next daemon's first minute.
//! Here a message is one `pwrite` at the end of a segment, and a read is one `pread`.
//!
//! Durability: the committer writes a batch's bytes, `fdatasync`s the segment (which also
//! persists its new length), and only then commits the sled records that point at them, so
//! a durable record never points at bytes that are not durable. A crash in between leaves
//! unreferenced bytes at the end of a segment; they are skipped, never read. A new segment's
//! directory entry is fsynced before anything is written to it.
//!
//! Deletion (a discarded held post, handled command mail) punches a hole over the bytes once
//! the record that pointed at them is durably gone: the disk space is freed and the content
//! is really erased, not just unreferenced. Every reference carries a CRC-32 of its bytes,
//! checked on every read.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A segment is closed for appends once it holds this much (a batch may overshoot it).
pub(crate) const SEGMENT_BYTES: u64 = 128 * 1024 * 1024;

/// Where a raw message lives in the spool. Segment 0 never exists: [`BlobRef::LOST`] marks
/// a message whose bytes were already gone when a schema 1 store was migrated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// Segment number (file `spool/{seg:08}.seg`).
    pub seg: u32,
    /// Byte offset in the segment.
    pub off: u64,
    /// Length in bytes.
    pub len: u32,
    /// CRC-32 (IEEE) of the bytes.
    pub crc: u32,
}

impl BlobRef {
    pub const LOST: BlobRef = BlobRef {
        seg: 0,
        off: 0,
        len: 0,
        crc: 1,
    };
}

/// The high-water mark the committer records in sled with every batch: the spool must
/// reach at least this far, or records would point past its end.
pub(crate) fn mark_bytes(seg: u32, end: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&seg.to_be_bytes());
    b[4..].copy_from_slice(&end.to_be_bytes());
    b
}

pub(crate) fn parse_mark(b: &[u8]) -> Option<(u32, u64)> {
    let seg = u32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    let end = u64::from_be_bytes(b.get(4..12)?.try_into().ok()?);
    Some((seg, end))
}

/// `NNNNNNNN.seg` (exactly eight digits) → its number; anything else is not a segment.
fn segment_number(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 8 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Read side of the spool, shared by every store handle: open segment files, by number.
pub(crate) struct Spool {
    dir: PathBuf,
    files: RwLock<HashMap<u32, Arc<Segment>>>,
}

/// An open segment and the length last seen, so that a read checks its bounds without a
/// `stat` (the length is read again only when a reference reaches past it).
struct Segment {
    file: File,
    len: std::sync::atomic::AtomicU64,
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(seg: u32) -> String {
    format!("{seg:08}.seg")
}

/// fsync a directory, so that a file created in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io(dir, e))
}

impl Spool {
    /// Open (or create) `dir` and return the reader and the writer, which appends to the
    /// newest segment (or a first one). `mark` is how far the database says the spool
    /// reaches: a spool that ends before it (missing, truncated, restored from an older
    /// backup than the database) is refused, because appending there would put new mail
    /// where old records point.
    pub(crate) fn open(dir: PathBuf, mark: Option<(u32, u64)>) -> Result<(Arc<Spool>, SpoolWriter), StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let mut newest = 0u32;
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(segment_number) {
                newest = newest.max(n);
            }
        }
        let newest_len = if newest == 0 {
            0
        } else {
            let path = dir.join(segment_name(newest));
            std::fs::metadata(&path).map_err(|e| io(&path, e))?.len()
        };
        if let Some((seg, end)) = mark {
            if (newest, newest_len) < (seg, end) {
                return Err(crate::corrupt(
                    dir.display(),
                    format!(
                        "the spool ends at segment {newest}, byte {newest_len}, but the database has \
                         messages up to segment {seg}, byte {end}: the spool is missing or truncated \
                         (restore sled/ and spool/ from the same backup)"
                    ),
                ));
            }
        }
        let spool = Arc::new(Spool {
            dir: dir.clone(),
            files: RwLock::new(HashMap::new()),
        });
        let writer = if newest == 0 {
            SpoolWriter::create(dir, 1)?
        } else {
            let path = dir.join(segment_name(newest));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            let len = file.metadata().map_err(|e| io(&path, e))?.len();
            SpoolWriter {
                dir,
                seg: newest,
                file,
                len,
            }
        };
        Ok((spool, writer))
    }

    fn segment(&self, seg: u32) -> Result<Arc<Segment>, StoreError> {
        if let Some(f) = self.files.read().ok().and_then(|m| m.get(&seg).cloned()) {
            return Ok(f);
        }
        let path = self.dir.join(segment_name(seg));
        let file = File::open(&path).map_err(|e| io(&path, e))?;
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        let f = Arc::new(Segment { file, len: len.into() });
        if let Ok(mut m) = self.files.write() {
            m.insert(seg, f.clone());
        }
        Ok(f)
    }

    /// The bytes behind `r`, checked against its CRC.
    pub(crate) fn read(&self, r: &BlobRef) -> Result<Vec<u8>, StoreError> {
        if r.seg == 0 {
            return Err(crate::corrupt(
                "spool",
                "this message's bytes were already lost when the store was migrated to the spool",
            ));
        }
        use std::sync::atomic::Ordering::Relaxed;
        let f = self.segment(r.seg)?;
        let path = || self.dir.join(segment_name(r.seg));
        let end = r.off.saturating_add(u64::from(r.len));
        let mut size = f.len.load(Relaxed);
        if end > size {
            // The segment may have grown since it was opened (the one being appended to).
            size = f.file.metadata().map_err(|e| io(&path(), e))?.len();
            f.len.store(size, Relaxed);
        }
        if end > size {
            return Err(crate::corrupt(
                path().display(),
                format!(
                    "a record points at bytes {}..+{} of a {size}-byte segment",
                    r.off, r.len
                ),
            ));
        }
        let mut buf = vec![0u8; r.len as usize];
        f.file.read_exact_at(&mut buf, r.off).map_err(|e| io(&path(), e))?;
        let crc = crc32fast::hash(&buf);
        if crc != r.crc {
            return Err(crate::corrupt(
                format!("spool segment {} offset {}", r.seg, r.off),
                format!("CRC mismatch ({crc:08x}, expected {:08x})", r.crc),
            ));
        }
        Ok(buf)
    }

    /// Free and erase the bytes behind `r` (the caller has durably removed every record that
    /// pointed at them). Where the filesystem cannot punch holes, the bytes are overwritten
    /// with zeros instead (erased, but the space is not returned).
    pub(crate) fn erase(&self, r: &BlobRef) -> Result<(), StoreError> {
        if r.len == 0 {
            return Ok(());
        }
        let path = self.dir.join(segment_name(r.seg));
        let f = OpenOptions::new().write(true).open(&path).map_err(|e| io(&path, e))?;
        let punched = rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            r.off,
            u64::from(r.len),
        );
        if punched.is_err() {
            f.write_all_at(&vec![0u8; r.len as usize], r.off)
                .map_err(|e| io(&path, e))?;
        }
        f.sync_data().map_err(|e| io(&path, e))
    }
}

/// Append side of the spool: owned by the committer thread, the only writer.
pub(crate) struct SpoolWriter {
    dir: PathBuf,
    seg: u32,
    file: File,
    /// Where the next append goes (the segment's length).
    len: u64,
}

impl SpoolWriter {
    /// A new, empty segment. An empty file left by an earlier attempt whose directory
    /// fsync failed is taken over; a non-empty one is never written over.
    fn create(dir: PathBuf, seg: u32) -> Result<SpoolWriter, StoreError> {
        let path = dir.join(segment_name(seg));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let len = file.metadata().map_err(|e| io(&path, e))?.len();
        if len != 0 {
            return Err(crate::corrupt(path.display(), "a new spool segment already holds data"));
        }
        sync_dir(&dir)?;
        Ok(SpoolWriter { dir, seg, file, len: 0 })
    }

    /// Where the spool ends: what the database records as its high-water mark.
    pub(crate) fn end(&self) -> (u32, u64) {
        (self.seg, self.len)
    }

    /// Start a batch: moves to a new segment first if the current one is full.
    pub(crate) fn begin(&mut self) -> Result<Staged, StoreError> {
        if self.len >= SEGMENT_BYTES {
            let next = self.seg.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                key: "spool".into(),
                reason: "segment numbers exhausted".into(),
            })?;
            *self = SpoolWriter::create(self.dir.clone(), next)?;
        }
        Ok(Staged {
            seg: self.seg,
            base: self.len,
            buf: Vec::new(),
        })
    }

    /// Write the staged bytes and make them durable. On failure nothing that was staged may
    /// be referenced. A failed write (a full disk) is cut off again so that it takes no
    /// space, and the spool goes on; a failed `fdatasync` is fatal (`true`): the kernel may
    /// have dropped the pages, so retrying and assuming success would be a lie.
    pub(crate) fn write(&mut self, staged: Staged) -> Result<(), (StoreError, bool)> {
        if staged.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(self.seg));
        if (staged.seg, staged.base) != (self.seg, self.len) {
            let e = crate::corrupt(path.display(), "a staged batch does not follow the segment's end");
            return Err((e, true));
        }
        if let Err(e) = self.file.write_all_at(&staged.buf, self.len) {
            let _ = self.file.set_len(self.len);
            return Err((io(&path, e), false));
        }
        if let Err(e) = self.file.sync_data() {
            return Err((io(&path, e), true));
        }
        self.len += staged.buf.len() as u64;
        Ok(())
    }
}

/// The bytes of one batch, gathered before a single write.
pub(crate) struct Staged {
    seg: u32,
    base: u64,
    buf: Vec<u8>,
}

impl Staged {
    /// Bytes gathered so far.
    pub(crate) fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// Add `bytes` to the batch and return where they will be once written.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        let len = u32::try_from(bytes.len()).map_err(|_| StoreError::Corrupt {
            key: "spool".into(),
            reason: format!("a message of {} bytes is too large to store", bytes.len()),
        })?;
        let r = BlobRef {
            seg: self.seg,
            off: self.base + self.buf.len() as u64,
            len,
            crc: crc32fast::hash(bytes),
        };
        self.buf.extend_from_slice(bytes);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_reopen_erase() -> Result<(), StoreError> {
        let tmp = tempfile::tempdir().map_err(|e| io(Path::new("tempdir"), e))?;
        let dir = tmp.path().join("spool");
        let (spool, mut w) = Spool::open(dir.clone(), None)?;
        let mut s = w.begin()?;
        let a = s.push(b"first message")?;
        let b = s.push(b"second")?;
        w.write(s).map_err(|e| e.0)?;
        assert_eq!(spool.read(&a)?, b"first message");
        assert_eq!(spool.read(&b)?, b"second");
        assert_eq!((a.seg, a.off, b.off), (1, 0, 13));
        drop((spool, w));

        // Reopened, appends go after what is there.
        let (spool, mut w) = Spool::open(dir.clone(), None)?;
        let mut s = w.begin()?;
        let c = s.push(b"third")?;
        w.write(s).map_err(|e| e.0)?;
        assert_eq!(c.off, 19);
        assert_eq!(spool.read(&b)?, b"second");

        // Erased bytes are gone from the file, and the reference no longer reads.
        spool.erase(&a)?;
        let file = std::fs::read(dir.join("00000001.seg")).map_err(|e| io(&dir, e))?;
        assert!(!file.windows(5).any(|w| w == b"first"), "erased bytes must not remain");
        assert!(matches!(spool.read(&a), Err(StoreError::Corrupt { .. })));
        assert_eq!(spool.read(&c)?, b"third");

        // A spool that ends before the database's mark is refused.
        assert!(matches!(
            Spool::open(dir.clone(), Some((1, 25))),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(Spool::open(dir.clone(), Some((1, 24))).is_ok());
        assert!(matches!(
            Spool::open(dir.clone(), Some((2, 0))),
            Err(StoreError::Corrupt { .. })
        ));
        // A reference past the end is an error, not a huge allocation.
        let past = BlobRef { len: 1 << 30, ..c };
        assert!(matches!(spool.read(&past), Err(StoreError::Corrupt { .. })));
        assert!(matches!(spool.read(&BlobRef::LOST), Err(StoreError::Corrupt { .. })));

        // A flipped byte is caught by the CRC.
        let bad = BlobRef { crc: c.crc ^ 1, ..c };
        assert!(matches!(spool.read(&bad), Err(StoreError::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn only_eight_digit_names_are_segments() {
        assert_eq!(segment_number("00000012.seg"), Some(12));
        for bad in ["12.seg", "+0000012.seg", "00000012.seg.tmp", "0000001a.seg", "00000012"] {
            assert_eq!(segment_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_full_segment_rolls_over() -> Result<(), StoreError> {
        let tmp = tempfile::tempdir().map_err(|e| io(Path::new("tempdir"), e))?;
        let dir = tmp.path().join("spool");
        let (spool, mut w) = Spool::open(dir.clone(), None)?;
        w.len = SEGMENT_BYTES; // as if the first segment were full
        let mut s = w.begin()?;
        let r = s.push(b"in the second segment")?;
        w.write(s).map_err(|e| e.0)?;
        assert_eq!((r.seg, r.off), (2, 0));
        assert_eq!(spool.read(&r)?, b"in the second segment");
        let (_, w) = Spool::open(dir, None)?;
        assert_eq!((w.seg, w.len), (2, 21));
        Ok(())
    }
}
