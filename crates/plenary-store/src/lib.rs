//! The store: sled holds the metadata of every message, the lists and the work queues; the
//! raw messages themselves live in the spool beside it (`spool.rs`).
//!
//! This is the only crate that touches sled or the spool. The rest of the system sees
//! [`Store`], a cheap clonable handle, and the plain records in [`records`].
//!
//! Durability (see ARCHITECTURE.md and SECURITY.md §d): sled 0.34 buffers writes in memory,
//! its `flush()` uses `sync_file_range` (which does not persist the file size), and values
//! over ~128 KiB go to blob files that are never fsynced. So:
//! - raw messages never go into sled: the committer appends a batch's messages to a spool
//!   segment and `fdatasync`s it before the sled records that point at them are written,
//!   and every sled value stays small (metadata, never a whole message);
//! - all sled writes for a message (metadata, Message-ID index, date index, thread links,
//!   index queue) go into one multi-tree transaction;
//! - one committer thread gathers the messages of every waiting session into a single
//!   spool write and a single transaction, then calls `flush()` and `fsync`s the sled `db`
//!   file through its own file handle (fsync covers the inode, so the size metadata too),
//!   and only then answers all of them: this is the group commit that lets SMTP reply `250`.
//! - after a sled I/O error every later call fails until the database is reopened, so the
//!   store marks itself failed, answers every caller with [`StoreError::Failed`], and the
//!   daemon exits to be restarted (fail-stop, never "retry and assume success").

mod commit;
mod durable;
mod engine;
mod indexq;
mod keys;
mod migrate;
mod read;
pub mod records;
mod spool;
mod threadlog;

pub use commit::{IngestRequest, IngestTarget, PostHandling, TargetOutcome};
#[cfg(any(test, feature = "test-hooks"))]
pub use durable::DurabilityHold;
pub use engine::Write;
pub use records::{
    BlobRef, FanoutJob, HeldPost, InboxEntry, JobKind, ListRecord, LogEntry, MonthCount, Pending, PendingAction,
    RetryEntry, StoredMessage,
};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use threadlog::THREAD_CHUNK;

/// `meta` key of the spool's high-water mark (see `spool::mark_bytes`).
pub(crate) const SPOOL_END: &[u8] = b"spool_end";

/// Schema version written at creation; a newer one refuses to open. 2: raw messages in the
/// spool instead of sled's `blobs` tree (schema 1 is migrated at open, `migrate.rs`).
const SCHEMA_VERSION: u64 = 2;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the database at {path} is in use by another process (is `plenary serve` running?)")]
    Locked { path: PathBuf },
    #[error("cannot open the database at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("database at {path} has schema version {found}, which this build (schema {SCHEMA_VERSION}) cannot read")]
    Schema { path: PathBuf, found: u64 },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not enough free disk space (need {needed} bytes free, have {available})")]
    DiskFull { needed: u64, available: u64 },
    #[error("the store failed earlier and must be reopened")]
    Failed,
    #[error("a list with the address {0} already exists")]
    ListExists(String),
    #[error("corrupt record under key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl StoreError {
    /// True when the disk is full or below the configured reserve (SMTP `452 4.3.1`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Io { source, .. } => is_enospc(source),
            StoreError::Sled(sled::Error::Io(e)) => is_enospc(e),
            _ => false,
        }
    }
}

/// ENOSPC, also as sled passes it on: once its background flusher has hit it, sled hands
/// every later caller a copy of the error that keeps the kind (`StorageFull`) but not the
/// OS error number.
fn is_enospc(e: &std::io::Error) -> bool {
    // ENOSPC, or EDQUOT (a quota is as full as a disk for the sender).
    matches!(e.raw_os_error(), Some(28) | Some(122)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// A stored value that does not decode, named by its key.
pub(crate) fn corrupt(key: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Directory holding `sled/` (and, beside it, the search index).
    pub data_dir: PathBuf,
    /// Free bytes that must remain on the data filesystem after a commit.
    pub min_free_bytes: u64,
    /// Largest number of messages in one group commit.
    pub max_batch: usize,
    /// sled's page cache, in bytes (its own default is 1 GiB).
    pub cache_bytes: u64,
}

impl StoreSettings {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreSettings {
        StoreSettings {
            data_dir: data_dir.into(),
            min_free_bytes: 64 * 1024 * 1024,
            max_batch: 512,
            cache_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The trees of the database, each documented where it is named.
#[derive(Clone)]
pub(crate) struct Trees {
    /// List address → [`ListRecord`] (JSON).
    pub lists: sled::Tree,
    /// List id (4 bytes BE) → list address.
    pub list_ids: sled::Tree,
    /// [`MessageKey`](plenary_core::MessageKey) (12) → [`StoredMessage`] (JSON).
    pub messages: sled::Tree,
    /// List id (4) + Message-ID → sequence number (8): dedupe and permalinks.
    pub msgid: sled::Tree,
    /// List id (4) + date (8, sign-flipped BE) + seq (8) → (): month and recent listings.
    pub by_date: sled::Tree,
    /// List id (4) + parent Message-ID + 0x00 + seq (8) → (): thread links downwards.
    pub children: sled::Tree,
    /// List id (4) + year-month (4) → count (8): the month index of a list.
    pub months: sled::Tree,
    /// List id (4) + seq / [`THREAD_CHUNK`] (8) → the [`plenary_thread::Entry`]s of that
    /// run of archived messages, in seq order: what the thread views are built from, packed
    /// so that reading a list's worth keeps little of sled's pages in memory.
    pub thread_log: sled::Tree,
    /// Global sequence (8) → [`InboxEntry`]: mail for command and owner addresses, kept for
    /// the list engine.
    pub inbox: sled::Tree,
    /// MessageKey (12) → attempts (1): messages the search index has not committed yet.
    pub index_queue: sled::Tree,
    /// Schema version and other singletons.
    pub meta: sled::Tree,
    /// List id (4) + member address → [`plenary_core::list::Member`] (JSON).
    pub members: sled::Tree,
    /// One-click unsubscribe token → list id (4) + member address.
    pub unsub: sled::Tree,
    /// Confirmation/moderation token → [`records::Pending`] (JSON).
    pub tokens: sled::Tree,
    /// Held id (8) → [`records::HeldPost`] (JSON): the moderation queue.
    pub held: sled::Tree,
    /// Sequence (8) → [`records::LogEntry`] (JSON): append-only moderation/membership log.
    pub modlog: sled::Tree,
    /// Job id (8) → [`records::FanoutJob`] (JSON): the outbound queue.
    pub fanout: sled::Tree,
    /// Job id (8) + recipient → [`records::RetryEntry`] (JSON): deliveries waiting to retry.
    pub retries: sled::Tree,
    /// List id (4) + seq (8) → received_at (8): posts waiting for the next digest.
    pub digest: sled::Tree,
    /// Rate-limit key (`ip:…`, `addr:…`) → recent hits, unix seconds (JSON): confirmation
    /// mail limits that survive a restart.
    pub rate: sled::Tree,
}

struct Inner {
    db: sled::Db,
    trees: Trees,
    /// The raw messages (read side; the committer thread owns the writer).
    spool: Arc<spool::Spool>,
    settings: StoreSettings,
    db_file: File,
    failed: Arc<AtomicBool>,
    /// Sends work to the committer thread; dropping the last store handle stops it.
    committer: commit::CommitterHandle,
    /// Signalled after each durable commit that queued messages for the search index.
    index_notify: Arc<tokio::sync::Notify>,
    /// Signalled after commits that created delivery jobs, held posts or inbox mail.
    work_notify: Arc<tokio::sync::Notify>,
    /// When the rate-limit tree was last swept of expired keys (unix seconds).
    rate_swept: std::sync::atomic::AtomicI64,
    commit_stats: Arc<commit::CommitStats>,
    /// Tickets of writes not yet durable, for [`Store::read_durable`].
    durable: Arc<durable::DurableMark>,
    /// Id and address of lists by address, for [`Store::list_ident`]: a list's id and
    /// address never change and lists are never removed, so an entry never goes stale.
    idents: std::sync::RwLock<std::collections::HashMap<String, (plenary_core::ListId, plenary_core::ListAddress)>>,
}

/// A handle on the store; clone it freely.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Open (or create) the store in `settings.data_dir/sled` and start the committer thread.
    pub fn open(settings: StoreSettings) -> Result<Store, StoreError> {
        let dir = settings.data_dir.join("sled");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        restrict_permissions(&settings.data_dir);
        let db = sled::Config::new()
            .path(&dir)
            .flush_every_ms(Some(500))
            .cache_capacity(settings.cache_bytes)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
                    StoreError::Locked { path: dir.clone() }
                }
                _ => StoreError::Open {
                    path: dir.clone(),
                    source,
                },
            })?;
        let t = |name: &str| db.open_tree(name);
        let trees = Trees {
            lists: t("lists")?,
            list_ids: t("list_ids")?,
            messages: t("messages")?,
            msgid: t("msgid")?,
            by_date: t("by_date")?,
            children: t("children")?,
            months: t("months")?,
            thread_log: t("thread_log")?,
            inbox: t("inbox")?,
            index_queue: t("index_queue")?,
            meta: t("meta")?,
            members: t("members")?,
            unsub: t("unsub")?,
            tokens: t("tokens")?,
            held: t("held")?,
            modlog: t("modlog")?,
            fanout: t("fanout")?,
            retries: t("retries")?,
            digest: t("digest")?,
            rate: t("rate")?,
        };
        let mark = trees.meta.get(SPOOL_END)?.and_then(|v| spool::parse_mark(&v));
        let (spool, mut spool_writer) = spool::Spool::open(settings.data_dir.join("spool"), mark)?;
        let db_path = dir.join("db");
        let db_file = File::open(&db_path).map_err(|source| StoreError::Io { path: db_path, source })?;
        match trees.meta.get(b"schema")? {
            None => {
                trees.meta.insert(b"schema", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
            Some(v) => {
                let found = keys::be_u64(&v).unwrap_or(0);
                if found == 1 {
                    tracing::info!("moving the raw messages from sled into the spool (schema 1 to 2)");
                    let moved = migrate::v1_to_v2(&db, &trees, &mut spool_writer)?;
                    commit::make_durable(&db, &db_file, &settings)?;
                    tracing::info!(
                        records = moved,
                        "moved the raw messages from sled into the spool (schema 1 to 2)"
                    );
                } else if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { path: dir, found });
                }
            }
        }
        threadlog::backfill(&db, &trees)?;
        let converted = indexq::convert_legacy(&db, &trees.index_queue, &trees.meta)?;
        if converted > 0 {
            commit::make_durable(&db, &db_file, &settings)?;
            tracing::info!(
                entries = converted,
                "index queue converted to one entry per group commit"
            );
        }
        let failed = Arc::new(AtomicBool::new(false));
        let index_notify = Arc::new(tokio::sync::Notify::new());
        let work_notify = Arc::new(tokio::sync::Notify::new());
        let commit_stats = Arc::new(commit::CommitStats::default());
        let durable = Arc::new(durable::DurableMark::default());
        let committer = commit::CommitterHandle::start(commit::CommitCtx {
            db: db.clone(),
            trees: trees.clone(),
            spool: spool_writer,
            db_file: Some(db_file.try_clone().map_err(|source| StoreError::Io {
                path: dir.join("db"),
                source,
            })?),
            failed: failed.clone(),
            settings: settings.clone(),
            index_notify: index_notify.clone(),
            work_notify: work_notify.clone(),
            stats: commit_stats.clone(),
            durable: durable.clone(),
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                trees,
                spool,
                settings,
                db_file,
                failed,
                committer,
                index_notify,
                work_notify,
                rate_swept: std::sync::atomic::AtomicI64::new(0),
                commit_stats,
                durable,
                idents: Default::default(),
            }),
        })
    }

    pub(crate) fn durable_mark(&self) -> &durable::DurableMark {
        &self.inner.durable
    }

    pub(crate) fn trees(&self) -> &Trees {
        &self.inner.trees
    }

    pub(crate) fn spool(&self) -> &spool::Spool {
        &self.inner.spool
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.settings.data_dir
    }

    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// Durable group commits so far and the ingest requests they carried (since open).
    pub fn commit_stats(&self) -> (u64, u64) {
        let s = &self.inner.commit_stats;
        (s.batches.load(Ordering::Relaxed), s.requests.load(Ordering::Relaxed))
    }

    /// True after an unrecoverable sled error; the process should exit and be restarted.
    pub fn has_failed(&self) -> bool {
        self.inner.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn mark_failed(&self) {
        self.inner.failed.store(true, Ordering::SeqCst);
        self.inner.durable.wake();
    }

    /// Make everything written so far durable: sled's flush, then fsync of its db file.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.has_failed() {
            return Err(StoreError::Failed);
        }
        self.inner.durable.wait_unheld();
        let r = commit::make_durable(&self.inner.db, &self.inner.db_file, &self.inner.settings);
        if r.is_err() {
            // sled's errors are sticky, ENOSPC included (SECURITY.md F-08): fail-stop.
            self.mark_failed();
        }
        r
    }

    /// Free bytes on the data filesystem.
    pub fn available_space(&self) -> Result<u64, StoreError> {
        fs2::available_space(&self.inner.settings.data_dir).map_err(|source| StoreError::Io {
            path: self.inner.settings.data_dir.clone(),
            source,
        })
    }

    /// Check that `extra` more bytes fit while keeping the configured reserve free.
    pub fn check_space(&self, extra: u64) -> Result<(), StoreError> {
        let available = self.available_space()?;
        // sled roughly doubles what it is given (log + pages), so count writes twice.
        let needed = self
            .inner
            .settings
            .min_free_bytes
            .saturating_add(extra.saturating_mul(2));
        if available < needed {
            return Err(StoreError::DiskFull { needed, available });
        }
        Ok(())
    }

    /// Final flush at shutdown. The committer thread stops when the last handle is dropped.
    pub fn close(&self) -> Result<(), StoreError> {
        self.sync()
    }

    /// Signalled whenever newly committed messages wait for the search index.
    pub fn index_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.index_notify.clone()
    }

    pub(crate) fn committer(&self) -> &commit::CommitterHandle {
        &self.inner.committer
    }

    /// A new unique id (monotonic across restarts; sled persists its id counter).
    pub fn new_id(&self) -> Result<u64, StoreError> {
        Ok(self.inner.db.generate_id()? + 1)
    }

    /// Signalled when new delivery jobs or list-engine work were committed.
    pub fn work_notify(&self) -> Arc<tokio::sync::Notify> {
        self.inner.work_notify.clone()
    }
}

#[cfg(unix)]
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // The store holds unredacted mail: only the daemon's user may read it (CVE-2002-0389).
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict data directory to mode 0700");
    }
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path) {}

#[cfg(test)]
mod tests;
