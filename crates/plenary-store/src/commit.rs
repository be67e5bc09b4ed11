//! The group committer: one thread that turns waiting ingests into one durable transaction.
//!
//! Why one thread: sled serialises writers anyway, per-list sequence numbers and Message-ID
//! dedupe need a single writer to be race-free, and one `flush()` + `fsync` per batch
//! instead of per message is what makes durable ingest fast under many concurrent sessions.
//! Callers wait on a oneshot channel; nobody gets an answer before the batch is on disk.

use crate::keys;
use crate::records::{FanoutJob, HeldPost, InboxEntry, JobKind, ListRecord, StoredMessage};
use crate::spool::{BlobRef, SpoolWriter};
use crate::{StoreError, StoreSettings, Trees};
use chrono::Datelike;
use plenary_core::list::{decide, Member, PostDecision, Sender};
use plenary_core::{ListId, MemberAddress, MessageKey, MessageMeta, Origin, RecipientKind};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Batch;
use sled::Transactional;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// One message to store, for one or more targets (lists or their command addresses).
#[derive(Clone)]
pub struct IngestRequest {
    pub raw: Vec<u8>,
    pub meta: MessageMeta,
    pub origin: Origin,
    pub envelope_from: String,
    pub targets: Vec<IngestTarget>,
    /// Unix seconds.
    pub received_at: i64,
    /// What happens to posts after they are stored.
    pub handling: PostHandling,
}

/// What the committer does with a post to a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostHandling {
    /// Archive only (imports, tests): nobody is mailed.
    ArchiveOnly,
    /// Apply the list's posting policy: distribute, hold, reject or discard.
    ByPolicy,
    /// A moderator approved it: archive and distribute.
    Approved,
}

impl IngestRequest {
    /// A post to one list's archive, with no envelope sender (imports, tests).
    pub fn post(list: ListId, raw: Vec<u8>, meta: MessageMeta, origin: Origin, received_at: i64) -> IngestRequest {
        IngestRequest {
            raw,
            meta,
            origin,
            envelope_from: String::new(),
            targets: vec![IngestTarget {
                list,
                kind: RecipientKind::Post,
            }],
            received_at,
            handling: PostHandling::ArchiveOnly,
        }
    }
}

/// Where a message goes: a list and which of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestTarget {
    pub list: ListId,
    pub kind: RecipientKind,
}

/// What happened for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetOutcome {
    /// Newly archived under this key.
    Archived(MessageKey),
    /// The list already had this Message-ID; nothing was written.
    Duplicate(MessageKey),
    /// Kept in the inbox for the list engine (command/owner/bounce addresses).
    Inbox(u64),
    /// Kept in the moderation queue under this id.
    Held(u64),
    /// Refused by the list's policy (the SMTP session answers 550 with this text).
    Rejected(&'static str),
    /// Accepted and dropped by the list's policy.
    Discarded,
}

type Reply = oneshot::Sender<Result<Vec<TargetOutcome>, StoreError>>;

struct Job {
    req: IngestRequest,
    reply: Reply,
}

pub(crate) struct CommitCtx {
    pub db: sled::Db,
    pub trees: Trees,
    /// The only writer of the raw-message spool.
    pub spool: SpoolWriter,
    /// Handed to the syncer thread when the committer starts.
    pub db_file: Option<File>,
    pub failed: Arc<AtomicBool>,
    pub settings: StoreSettings,
    pub index_notify: Arc<tokio::sync::Notify>,
    pub work_notify: Arc<tokio::sync::Notify>,
    /// Durable group commits made, and the ingest requests they carried.
    pub stats: Arc<CommitStats>,
    /// Tickets of writes not yet durable (`durable.rs`).
    pub durable: Arc<crate::durable::DurableMark>,
}

/// Counters of the committer's work (for tests and operators: the mean batch size says how
/// much group commit is saving).
#[derive(Debug, Default)]
pub struct CommitStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub requests: std::sync::atomic::AtomicU64,
}

pub(crate) struct CommitterHandle {
    tx: mpsc::Sender<Job>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl CommitterHandle {
    pub fn start(ctx: CommitCtx) -> Result<CommitterHandle, StoreError> {
        let (tx, rx) = mpsc::channel::<Job>(4096);
        let thread = std::thread::Builder::new()
            .name("plenary-commit".into())
            .spawn(move || run(ctx, rx))
            .map_err(|source| StoreError::Io {
                path: "committer thread".into(),
                source,
            })?;
        Ok(CommitterHandle {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for CommitterHandle {
    fn drop(&mut self) {
        // The sender is dropped with `self`; wait for the thread so sled is released.
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        let (dead_tx, _) = mpsc::channel(1);
        self.tx = dead_tx;
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl crate::Store {
    /// Store a message durably. Resolves only after the batch holding it is on disk.
    pub async fn ingest(&self, req: IngestRequest) -> Result<Vec<TargetOutcome>, StoreError> {
        let (job, outcome) = self.committer_job(req)?;
        self.committer()
            .tx
            .send(job)
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        outcome.await
    }

    /// A job for the committer and the wait for its outcome (refused once the store failed).
    fn committer_job(
        &self,
        req: IngestRequest,
    ) -> Result<
        (
            Job,
            impl std::future::Future<Output = Result<Vec<TargetOutcome>, StoreError>>,
        ),
        StoreError,
    > {
        if self.has_failed() {
            return Err(StoreError::Failed);
        }
        let (reply, rx) = oneshot::channel();
        Ok((Job { req, reply }, async move {
            rx.await.map_err(|_| StoreError::ShuttingDown)?
        }))
    }

    /// Queue a message for the committer from a blocking (non-async) thread and return
    /// the wait for its outcome. Messages queued one after another from one thread are
    /// committed in that order, so of two copies of a Message-ID the first queued is kept
    /// (an import relies on it); `ingest` from concurrent tasks promises no order.
    pub fn submit_blocking(
        &self,
        req: IngestRequest,
    ) -> Result<impl std::future::Future<Output = Result<Vec<TargetOutcome>, StoreError>>, StoreError> {
        let (job, outcome) = self.committer_job(req)?;
        self.committer()
            .tx
            .blocking_send(job)
            .map_err(|_| StoreError::ShuttingDown)?;
        Ok(outcome)
    }
}

/// sled flush, then fsync of the db file (covers the file size that `sync_file_range` skips).
pub(crate) fn make_durable(db: &sled::Db, file: &File, settings: &StoreSettings) -> Result<(), StoreError> {
    db.flush()?;
    file.sync_all().map_err(|source| StoreError::Io {
        path: settings.data_dir.join("sled/db"),
        source,
    })
}

#[derive(Clone, Default)]
struct Counters {
    next_inbox: Option<u64>,
    next_seq: HashMap<ListId, u64>,
}

/// A batch whose records are applied (and whose bytes are in the spool, synced) but not
/// yet flushed to disk by sled: its callers wait for the syncer.
struct Applied {
    /// Given back once the batch is durable (`durable.rs`).
    ticket: crate::durable::Ticket,
    jobs: Vec<Job>,
    outcomes: Vec<Vec<TargetOutcome>>,
    queued_for_index: bool,
    queued_work: bool,
}

/// What the syncer needs to make sled durable and to tell the rest of the daemon.
struct SyncCtx {
    db: sled::Db,
    db_file: File,
    settings: StoreSettings,
    failed: Arc<AtomicBool>,
    index_notify: Arc<tokio::sync::Notify>,
    work_notify: Arc<tokio::sync::Notify>,
    stats: Arc<CommitStats>,
    durable: Arc<crate::durable::DurableMark>,
}

/// Answer every waiter of a failed batch with the same kind of error: disk full (452) or
/// failed (451).
fn refuse(jobs: Vec<Job>, e: &StoreError) {
    let (needed, available) = match e {
        StoreError::DiskFull { needed, available } => (*needed, *available),
        _ => (0, 0),
    };
    let disk_full = e.is_disk_full();
    for job in jobs {
        let err = if disk_full {
            StoreError::DiskFull { needed, available }
        } else {
            StoreError::Failed
        };
        let _ = job.reply.send(Err(err));
    }
}

/// The committer cannot work: mark the store failed and answer every job that comes (451).
fn refuse_all(failed: &AtomicBool, mut rx: mpsc::Receiver<Job>) {
    failed.store(true, Ordering::SeqCst);
    while let Some(job) = rx.blocking_recv() {
        refuse(vec![job], &StoreError::Failed);
    }
}

/// The committer works in two stages on two threads, so that one batch's wait for the disk
/// overlaps the next batch's work. Stage one (this thread) gathers a batch, writes and
/// `fdatasync`s its bytes in the spool and applies its records to sled. Stage two (the
/// syncer) flushes sled and fsyncs its file, then answers every batch applied before the
/// flush began. Nobody is answered before both stages are done for their batch, and the
/// spool's sync still precedes the records that point into it (the ordering the spool's
/// durability rests on); what the split adds is that batch N+1 is gathered, spooled and
/// applied while batch N's flush is on its way to the disk, and the batches that queue up
/// meanwhile share the next flush.
fn run(mut ctx: CommitCtx, mut rx: mpsc::Receiver<Job>) {
    // However this thread ends (the last store handle dropped, or a panic unwinding), no
    // batch it began will ever be made durable: say so, so that readers waiting for one
    // (`durable.rs`) give up instead of waiting for ever.
    let _ended = Ended {
        failed: ctx.failed.clone(),
        durable: ctx.durable.clone(),
    };
    let sync = SyncCtx {
        db: ctx.db.clone(),
        db_file: match ctx.db_file.take() {
            Some(f) => f,
            None => {
                tracing::error!("the committer has no database file to sync; store is now failed");
                return refuse_all(&ctx.failed, rx);
            }
        },
        settings: ctx.settings.clone(),
        failed: ctx.failed.clone(),
        index_notify: ctx.index_notify.clone(),
        work_notify: ctx.work_notify.clone(),
        stats: ctx.stats.clone(),
        durable: ctx.durable.clone(),
    };
    let (applied_tx, applied_rx) = std::sync::mpsc::channel::<Applied>();
    let syncer = std::thread::Builder::new()
        .name("plenary-sync".into())
        .spawn(move || run_syncer(sync, applied_rx));
    let syncer = match syncer {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the syncer thread; store is now failed");
            return refuse_all(&ctx.failed, rx);
        }
    };
    let mut counters = Counters::default();
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut bytes = jobs[0].req.raw.len() as u64;
        while jobs.len() < ctx.settings.max_batch && bytes < 64 * 1024 * 1024 {
            match rx.try_recv() {
                Ok(j) => {
                    bytes += j.req.raw.len() as u64;
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        // Taken before any record is applied, so a reader that sees one also waits for
        // this batch to be durable (`durable.rs`).
        let ticket = ctx.durable.take();
        let result = commit_batch(&mut ctx, &mut counters, &jobs, bytes);
        tracing::debug!(
            messages = jobs.len(),
            bytes,
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit applied"
        );
        match result {
            Ok((outcomes, queued_for_index, queued_work)) => {
                let applied = Applied {
                    ticket,
                    jobs,
                    outcomes,
                    queued_for_index,
                    queued_work,
                };
                if let Err(std::sync::mpsc::SendError(a)) = applied_tx.send(applied) {
                    // The syncer is gone (it panicked): nothing can be made durable.
                    fail(&ctx.failed, &ctx.durable);
                    tracing::error!("the syncer thread ended; store is now failed");
                    refuse(a.jobs, &StoreError::Failed);
                }
            }
            Err(e) => {
                if ctx.failed.load(Ordering::SeqCst) && !matches!(e, StoreError::Failed) {
                    tracing::error!(error = %e, "group commit failed; store is now failed");
                } else if !matches!(e, StoreError::DiskFull { .. } | StoreError::Failed) {
                    tracing::warn!(error = %e, "group commit refused");
                }
                refuse(jobs, &e);
                // `commit_batch` fails before its transaction or in it (which is atomic):
                // nothing of this batch was applied, so nobody needs to wait for it.
                ctx.durable.give_back([ticket]);
            }
        }
    }
    drop(applied_tx);
    let _ = syncer.join();
}

/// Mark the store failed and wake the readers waiting for durability, so they give up.
fn fail(failed: &AtomicBool, durable: &crate::durable::DurableMark) {
    failed.store(true, Ordering::SeqCst);
    durable.wake();
}

/// Marks the store failed when the committer or syncer thread ends (see `run`).
struct Ended {
    failed: Arc<AtomicBool>,
    durable: Arc<crate::durable::DurableMark>,
}

impl Drop for Ended {
    fn drop(&mut self) {
        fail(&self.failed, &self.durable);
    }
}

/// Stage two of the committer: one flush for every batch applied since the last one.
fn run_syncer(ctx: SyncCtx, rx: std::sync::mpsc::Receiver<Applied>) {
    // As in `run`: batches handed over and never flushed must not be waited for forever.
    let _ended = Ended {
        failed: ctx.failed.clone(),
        durable: ctx.durable.clone(),
    };
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        batches.extend(rx.try_iter());
        let started = std::time::Instant::now();
        ctx.durable.wait_unheld();
        let result = if ctx.failed.load(Ordering::SeqCst) {
            Err(StoreError::Failed)
        } else {
            make_durable(&ctx.db, &ctx.db_file, &ctx.settings)
        };
        tracing::debug!(
            batches = batches.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit durable"
        );
        match result {
            Ok(()) => {
                ctx.durable.give_back(batches.iter().map(|b| b.ticket));
                let (mut index, mut work) = (false, false);
                for b in batches {
                    ctx.stats.batches.fetch_add(1, Ordering::Relaxed);
                    ctx.stats.requests.fetch_add(b.jobs.len() as u64, Ordering::Relaxed);
                    index |= b.queued_for_index;
                    work |= b.queued_work;
                    for (job, out) in b.jobs.into_iter().zip(b.outcomes) {
                        let _ = job.reply.send(Ok(out));
                    }
                }
                if index {
                    ctx.index_notify.notify_one();
                }
                if work {
                    ctx.work_notify.notify_waiters();
                    ctx.work_notify.notify_one();
                }
            }
            Err(e) => {
                if !matches!(e, StoreError::Failed) {
                    tracing::error!(error = %e, "group commit failed; store is now failed");
                }
                fail(&ctx.failed, &ctx.durable);
                for b in batches {
                    refuse(b.jobs, &StoreError::Failed);
                }
            }
        }
    }
}

fn next_seq(trees: &Trees, counters: &mut Counters, list: ListId) -> Result<u64, StoreError> {
    if let Some(n) = counters.next_seq.get_mut(&list) {
        let v = *n;
        *n += 1;
        return Ok(v);
    }
    let last = match trees.messages.scan_prefix(list.0.to_be_bytes()).next_back() {
        Some(kv) => {
            let (k, _) = kv?;
            MessageKey::from_bytes(&k).map(|k| k.seq).unwrap_or(0)
        }
        None => 0,
    };
    counters.next_seq.insert(list, last + 2);
    Ok(last + 1)
}

fn next_from_last(tree: &sled::Tree, slot: &mut Option<u64>) -> Result<u64, StoreError> {
    let v = match *slot {
        Some(v) => v,
        None => match tree.last()? {
            Some((k, _)) => keys::be_u64(&k).unwrap_or(0) + 1,
            None => 1,
        },
    };
    *slot = Some(v + 1);
    Ok(v)
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Serialising our own plain records cannot fail (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

/// Who sent a post, as the list sees it: an owner/moderator, a member (by From or the
/// envelope sender), or a non-member.
fn sender_of(t: &Trees, list: &ListRecord, req: &IngestRequest) -> Result<(Sender, Option<MemberAddress>), StoreError> {
    let candidates: Vec<MemberAddress> = [req.meta.from_addr.as_deref(), Some(req.envelope_from.as_str())]
        .into_iter()
        .flatten()
        .filter_map(|a| MemberAddress::parse(a).ok())
        .collect();
    let author = candidates.first().cloned();
    if candidates.iter().any(|a| list.settings.is_moderator(a)) {
        return Ok((Sender::Moderator, author));
    }
    for a in &candidates {
        if let Some(v) = t.members.get(keys::member(list.id, a))? {
            let m: Member = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: format!("member {}", list.id.0),
                reason: e.to_string(),
            })?;
            return Ok((Sender::Member { moderated: m.moderated }, Some(m.address)));
        }
    }
    Ok((Sender::NonMember, author))
}

/// Texts for policy rejections (static so outcomes stay `Copy`).
fn reject_text(reason: &str) -> &'static str {
    if reason.contains("announce") {
        "5.7.1 Only the list's owners and moderators may post to this list"
    } else {
        "5.7.1 Only members may post to this list; join first"
    }
}

#[allow(clippy::type_complexity)]
fn commit_batch(
    ctx: &mut CommitCtx,
    counters: &mut Counters,
    jobs: &[Job],
    bytes: u64,
) -> Result<(Vec<Vec<TargetOutcome>>, bool, bool), StoreError> {
    if ctx.failed.load(Ordering::SeqCst) {
        return Err(StoreError::Failed);
    }
    let available = fs2::available_space(&ctx.settings.data_dir).map_err(|source| StoreError::Io {
        path: ctx.settings.data_dir.clone(),
        source,
    })?;
    let needed = ctx.settings.min_free_bytes.saturating_add(bytes.saturating_mul(2));
    if available < needed {
        return Err(StoreError::DiskFull { needed, available });
    }

    let mut staged = ctx.spool.begin()?;
    let t = &ctx.trees;
    let mut c = counters.clone();
    let (mut messages, mut msgid, mut by_date, mut children, mut inbox, mut index_q) = (
        Batch::default(),
        Batch::default(),
        Batch::default(),
        Batch::default(),
        Batch::default(),
        Batch::default(),
    );
    let mut month_delta: HashMap<[u8; 8], u64> = HashMap::new();
    // Posts waiting for a digest: one entry per list for the whole batch (see
    // `Store::digest_pending`).
    let mut digest_items: std::collections::BTreeMap<ListId, Vec<(u64, i64)>> = Default::default();
    // Keys for the search index: one queue entry for the whole batch (`indexq.rs`).
    let mut to_index: Vec<MessageKey> = Vec::new();
    let mut thread_log = crate::threadlog::Pending::default();
    let mut seen: HashMap<(ListId, String), MessageKey> = HashMap::new();
    let mut all = Vec::with_capacity(jobs.len());
    let mut queued_for_index = false;
    let mut queued_work = false;
    let (mut held, mut fanout, mut digest) = (Batch::default(), Batch::default(), Batch::default());
    let mut list_cache: HashMap<ListId, Option<ListRecord>> = HashMap::new();
    let mut has_members: HashMap<ListId, bool> = HashMap::new();

    for job in jobs {
        let req = &job.req;
        let mut outcomes = Vec::with_capacity(req.targets.len());
        // One copy of the bytes serves every list that archives the message; a held post
        // and inbox mail get their own copy, because they are erased when handled.
        let mut archived: Option<BlobRef> = None;
        let mut done_lists: HashSet<ListId> = HashSet::new();
        for target in &req.targets {
            match &target.kind {
                RecipientKind::Post => {
                    if !done_lists.insert(target.list) {
                        continue;
                    }
                    let id = &req.meta.message_id;
                    let mkey = keys::msgid(target.list, id);
                    if let Some(k) = seen.get(&(target.list, id.clone())) {
                        outcomes.push(TargetOutcome::Duplicate(*k));
                        continue;
                    }
                    if let Some(v) = t.msgid.get(&mkey)? {
                        let seq = keys::be_u64(&v).unwrap_or(0);
                        outcomes.push(TargetOutcome::Duplicate(MessageKey { list: target.list, seq }));
                        continue;
                    }
                    let mut author = None;
                    let distribute = match req.handling {
                        PostHandling::ArchiveOnly => false,
                        PostHandling::Approved => {
                            author = req.meta.from_addr.as_deref().and_then(|a| MemberAddress::parse(a).ok());
                            true
                        }
                        PostHandling::ByPolicy => {
                            let list = match list_cache.get(&target.list) {
                                Some(l) => l.clone(),
                                None => {
                                    let l = match t.list_ids.get(target.list.0.to_be_bytes())? {
                                        Some(addr) => t
                                            .lists
                                            .get(addr)?
                                            .and_then(|v| serde_json::from_slice::<ListRecord>(&v).ok()),
                                        None => None,
                                    };
                                    list_cache.insert(target.list, l.clone());
                                    l
                                }
                            };
                            let Some(list) = list else {
                                outcomes.push(TargetOutcome::Rejected("5.1.1 No such list"));
                                continue;
                            };
                            let (sender, who) = sender_of(t, &list, req)?;
                            author = who;
                            match decide(&list.settings, sender) {
                                PostDecision::Distribute => true,
                                PostDecision::Reject(reason) => {
                                    outcomes.push(TargetOutcome::Rejected(reject_text(&reason)));
                                    continue;
                                }
                                PostDecision::Discard => {
                                    outcomes.push(TargetOutcome::Discarded);
                                    continue;
                                }
                                PostDecision::Hold(reason) => {
                                    let raw = staged.push(&req.raw)?;
                                    let id = ctx.db.generate_id()? + 1;
                                    let h = HeldPost {
                                        id,
                                        list: target.list,
                                        raw,
                                        meta: req.meta.clone(),
                                        origin: req.origin,
                                        envelope_from: req.envelope_from.clone(),
                                        reason,
                                        received_at: req.received_at,
                                        notified: false,
                                    };
                                    held.insert(&id.to_be_bytes(), json(&h));
                                    queued_work = true;
                                    outcomes.push(TargetOutcome::Held(id));
                                    continue;
                                }
                            }
                        }
                    };
                    let raw = match archived {
                        Some(r) => r,
                        None => {
                            let r = staged.push(&req.raw)?;
                            archived = Some(r);
                            r
                        }
                    };
                    let key = MessageKey {
                        list: target.list,
                        seq: next_seq(t, &mut c, target.list)?,
                    };
                    let stored = StoredMessage {
                        key,
                        raw,
                        meta: req.meta.clone(),
                        origin: req.origin,
                        received_at: req.received_at,
                    };
                    messages.insert(&key.to_bytes(), json(&stored));
                    msgid.insert(mkey, &key.seq.to_be_bytes());
                    seen.insert((target.list, id.clone()), key);
                    if let Some(e) = plenary_thread::Entry::from_meta(key.seq, &req.meta) {
                        thread_log.add(key, &e);
                    }
                    if !req.meta.no_archive {
                        by_date.insert(&keys::by_date(key, req.meta.date), &[]);
                        // Only the direct parent: the "replies" of a page are the messages
                        // that answer it (an entry per ancestor in References cost two more
                        // writes per message on average, for links nothing read).
                        if let Some(p) = req.meta.parent() {
                            children.insert(keys::children(target.list, p, key.seq), &[]);
                        }
                        let dt = chrono::DateTime::from_timestamp(req.meta.date, 0).unwrap_or_default();
                        *month_delta
                            .entry(keys::month(target.list, dt.year(), dt.month()))
                            .or_default() += 1;
                        to_index.push(key);
                        queued_for_index = true;
                    }
                    if distribute {
                        // A list nobody receives (no members at all, e.g. an archive that
                        // mirrors a list hosted elsewhere) gets no delivery job: nobody to plan,
                        // sign or send for, and no worker pass per commit to remove the job
                        // again. The digest entry is kept either way: a digest member who joins
                        // later gets the posts waiting since the last digest, as on any list.
                        // (Membership is read once per batch, outside the transaction: a
                        // subscription committing meanwhile, in the same second as the post,
                        // misses it; the worker would not have sent it to a member who joined
                        // after the post either.)
                        let receivers = match has_members.get(&target.list) {
                            Some(v) => *v,
                            None => {
                                let v = t
                                    .members
                                    .scan_prefix(target.list.0.to_be_bytes())
                                    .next()
                                    .transpose()?
                                    .is_some();
                                has_members.insert(target.list, v);
                                v
                            }
                        };
                        if receivers {
                            let id = ctx.db.generate_id()? + 1;
                            let job = FanoutJob {
                                id,
                                list: target.list,
                                what: JobKind::Post {
                                    key,
                                    author: author.clone(),
                                },
                                created: req.received_at,
                                cursor: None,
                                walked: false,
                                delivered: 0,
                            };
                            fanout.insert(&id.to_be_bytes(), json(&job));
                            queued_work = true;
                        }
                        digest_items
                            .entry(target.list)
                            .or_default()
                            .push((key.seq, req.received_at));
                    }
                    outcomes.push(TargetOutcome::Archived(key));
                }
                other => {
                    let raw = staged.push(&req.raw)?;
                    let n = next_from_last(&t.inbox, &mut c.next_inbox)?;
                    let entry = InboxEntry {
                        list: target.list,
                        kind: other.clone(),
                        raw,
                        envelope_from: req.envelope_from.clone(),
                        received_at: req.received_at,
                    };
                    inbox.insert(&n.to_be_bytes(), json(&entry));
                    queued_work = true;
                    outcomes.push(TargetOutcome::Inbox(n));
                }
            }
        }
        all.push(outcomes);
    }

    let mut months = Batch::default();
    for (k, delta) in month_delta {
        let cur = t.months.get(k)?.and_then(|v| keys::be_u64(&v)).unwrap_or(0);
        months.insert(&k, &(cur + delta).to_be_bytes());
    }
    let thread_log = thread_log.into_batch(&t.thread_log)?;
    for (list, items) in &digest_items {
        if let Some((first, _)) = items.first() {
            let mut v = Vec::with_capacity(16 * items.len());
            for (seq, at) in items {
                v.extend_from_slice(&seq.to_be_bytes());
                v.extend_from_slice(&at.to_be_bytes());
            }
            digest.insert(
                &MessageKey {
                    list: *list,
                    seq: *first,
                }
                .to_bytes(),
                v,
            );
        }
    }
    if !to_index.is_empty() {
        index_q.insert(
            &ctx.db.generate_id()?.to_be_bytes(),
            crate::indexq::encode(false, &to_index),
        );
    }

    // The bytes first, durably: no record may point at bytes a crash could lose. The new
    // end of the spool goes into the same transaction as the records (checked at open).
    let mut spool_end = Batch::default();
    if staged.bytes() > 0 {
        let (seg, off) = ctx.spool.end();
        spool_end.insert(
            crate::SPOOL_END,
            &crate::spool::mark_bytes(seg, off + staged.bytes() as u64),
        );
    }
    if let Err((e, fatal)) = ctx.spool.write(staged) {
        if fatal {
            ctx.failed.store(true, Ordering::SeqCst);
        }
        return Err(e);
    }
    let t = &ctx.trees;

    // Trees commit in this order, and readers outside the transaction can see one tree's
    // writes before the next one's: the thread log goes before `messages`, so a message
    // that is visible always has its entry (the thread views rely on it).
    let r: Result<(), TransactionError<()>> = (
        &t.thread_log,
        &t.messages,
        &t.msgid,
        &t.by_date,
        &t.children,
        &t.months,
        &t.inbox,
        &t.index_queue,
        &t.held,
        &t.fanout,
        &t.digest,
        &t.meta,
    )
        .transaction(|(tt, tm, ti, td, tc, tmo, tin, tq, th, tf, tdg, tme)| {
            tme.apply_batch(&spool_end)?;
            th.apply_batch(&held)?;
            tf.apply_batch(&fanout)?;
            tdg.apply_batch(&digest)?;
            tt.apply_batch(&thread_log)?;
            tm.apply_batch(&messages)?;
            ti.apply_batch(&msgid)?;
            td.apply_batch(&by_date)?;
            tc.apply_batch(&children)?;
            tmo.apply_batch(&months)?;
            tin.apply_batch(&inbox)?;
            tq.apply_batch(&index_q)?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
    let r = r.map_err(|e| match e {
        TransactionError::Storage(e) => StoreError::Sled(e),
        TransactionError::Abort(()) => StoreError::Failed,
    });
    if let Err(e) = r {
        ctx.failed.store(true, Ordering::SeqCst);
        return Err(e);
    }
    *counters = c;
    Ok((all, queued_for_index, queued_work))
}
