//! The single owner of the `IndexWriter`.

use crate::schema::Fields;
use crate::{IndexError, SearchIndex};
use plenary_core::list::Language;
use plenary_core::{ListId, MessageKey};
use plenary_redact::Policy;
use plenary_store::Store;
use std::collections::HashMap;
use std::future::Future as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tantivy::{IndexWriter, TantivyDocument, Term};

/// How the indexer batches its work.
#[derive(Debug, Clone)]
pub struct IndexerSettings {
    /// Wait this long after new work arrives to gather more before committing. Longer means
    /// fewer, larger segments (less merging) and a later point at which mail is searchable.
    pub commit_delay: Duration,
    /// Most documents in one commit.
    pub max_batch: usize,
    /// Memory budget for tantivy's writer.
    pub writer_memory: usize,
}

impl Default for IndexerSettings {
    fn default() -> Self {
        IndexerSettings {
            commit_delay: Duration::from_millis(200),
            max_batch: 20_000,
            writer_memory: 64 * 1024 * 1024,
        }
    }
}

/// A queue counter at this value means "crashed twice while parsed alone": quarantined
/// (see [`Indexer::step`]). 0 = new, 1 = was in a batch that did not finish, 2 = one crash.
const QUARANTINE_AT: u8 = 3;

/// Suspects (messages of an unfinished batch) handled per step, each parsed on its own.
const SUSPECT_BATCH: usize = 500;

/// The indexer stops writing (to sled and to tantivy) while less than the store's reserve
/// plus twice this is free. The index is a projection: near a full disk, the room left is
/// for the messages themselves, and an ENOSPC met by the indexer's own durable writes would
/// fail-stop the store before SMTP could answer 452.
const INDEX_HEADROOM: u64 = 4 << 20;

/// Drains the store's index queue into the search index.
pub struct Indexer {
    store: Store,
    search: SearchIndex,
    /// Created on demand and dropped after [`IDLE_DROP`] without work, which gives its
    /// indexing thread and memory arena back (a list server is idle most of the time).
    writer: Option<IndexWriter<TantivyDocument>>,
    settings: IndexerSettings,
    /// Redaction policy and language per list (a language change needs `plenary index rebuild`).
    policies: HashMap<ListId, Option<(Policy, Language)>>,
}

impl Indexer {
    pub fn new(store: Store, search: SearchIndex, settings: IndexerSettings) -> Result<Indexer, IndexError> {
        let mut ix = Indexer {
            store,
            search,
            writer: None,
            settings,
            policies: HashMap::new(),
        };
        ix.blame()?;
        ix.writer()?;
        Ok(ix)
    }

    /// If the process died (or a step panicked) while a message was being parsed on its
    /// own, count that against the message.
    fn blame(&mut self) -> Result<(), IndexError> {
        if let Some(key) = self.store.index_parsing_mark()? {
            let n = self.store.index_crashed(key)?;
            tracing::warn!(%key, crashes = n.saturating_sub(1), "the indexer stopped while parsing this message");
            self.store.index_parsing(None)?;
        }
        Ok(())
    }

    fn writer(&mut self) -> Result<&mut IndexWriter<TantivyDocument>, IndexError> {
        if self.writer.is_none() {
            // One indexing thread: on a small server a second one mostly doubles the number
            // of segments per commit, and so the merging that follows.
            self.writer = Some(
                self.search
                    .index()
                    .writer_with_num_threads(1, self.settings.writer_memory)?,
            );
        }
        match self.writer.as_mut() {
            Some(w) => Ok(w),
            None => unreachable!("the writer was just created"),
        }
    }

    /// Drop the writer (after waiting for its merges), releasing its thread and memory.
    fn release_writer(&mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.wait_merging_threads() {
                tracing::warn!(error = %e, "index merge did not finish cleanly");
            }
        }
    }

    fn policy(&mut self, list: ListId) -> Result<Option<(Policy, Language)>, IndexError> {
        if let Some(p) = self.policies.get(&list) {
            return Ok(p.clone());
        }
        let p = self
            .store
            .list_by_id(list)?
            .map(|l| (Policy::for_list(l.address.as_str()), l.settings.language));
        self.policies.insert(list, p.clone());
        Ok(p)
    }

    /// Index one batch from the queue. Returns how many messages it committed.
    ///
    /// Crash-loop protection. Before a batch of new messages is indexed their queue counters
    /// go to 1, durably. If the process dies during the batch (or a parser panics), those
    /// messages come back as suspects, and suspects are parsed one at a time, each under a
    /// durable mark naming it. A mark found at the next start (or after a caught panic)
    /// counts a crash against that one message; after two such crashes it is quarantined:
    /// kept in the store and readable, never parsed by the indexer again (`plenary index
    /// rebuild` clears quarantines). A real poison message so stops the daemon at most three
    /// times (its batch, then twice alone). A kill from outside only counts against a
    /// message if it lands while that message is being parsed alone (about a millisecond),
    /// twice; being in unfinished batches any number of times never quarantines anything.
    /// (Tokenising happens on tantivy's indexing thread after the mark is cleared; the
    /// parsers that can overflow the stack, mail-parser's, run under the mark.)
    pub fn step(&mut self) -> Result<usize, IndexError> {
        // Only what is durable: a crash before the committer's flush must not leave a
        // ghost in the index (plenary-store's `durable.rs`).
        let max = self.settings.max_batch;
        let pending = self.store.read_durable_blocking(|s| s.index_pending(max))?;
        if pending.is_empty() {
            return Ok(0);
        }
        self.store.check_space(INDEX_HEADROOM)?;
        let suspects: Vec<(MessageKey, u8)> = pending
            .iter()
            .filter(|(_, a)| *a > 0)
            .take(SUSPECT_BATCH)
            .copied()
            .collect();
        let alone = !suspects.is_empty();
        let mut keys = Vec::new();
        let f = self.search.fields();
        if alone {
            for (key, crashes) in suspects {
                if crashes >= QUARANTINE_AT {
                    tracing::error!(%key, "message crashed the indexer twice; quarantined from the search index");
                    // A quarantined message has no document, even one from an earlier
                    // indexing: `reconcile` counts it apart from the documents.
                    self.writer()?.delete_term(Term::from_field_u64(f.key, key.to_u64()));
                    self.writer()?.commit()?;
                    self.store.index_quarantine(key)?;
                    continue;
                }
                keys.push(key);
            }
        } else {
            keys = pending.into_iter().map(|(k, _)| k).collect();
            self.store.index_attempt(&keys)?;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        for key in &keys {
            self.writer()?.delete_term(Term::from_field_u64(f.key, key.to_u64()));
            if alone {
                self.store.index_parsing(Some(*key))?;
            }
            let Some(doc) = self.document(*key)? else {
                continue;
            };
            self.writer()?.add_document(doc)?;
        }
        if alone {
            self.store.index_parsing(None)?;
        }
        self.writer()?.commit()?;
        self.store.index_done(&keys)?;
        Ok(keys.len())
    }

    /// The search document of one stored message (None: gone, or not public).
    fn document(&mut self, key: MessageKey) -> Result<Option<TantivyDocument>, IndexError> {
        let f = self.search.fields();
        let Some(stored) = self.store.message(key)? else {
            return Ok(None);
        };
        let Some((policy, lang)) = self.policy(key.list)? else {
            return Ok(None);
        };
        let li = Fields::lang_index(lang);
        let raw = self.store.raw(&stored)?;
        let Some(public) = plenary_redact::redact(key, &stored.meta, &raw, &policy) else {
            return Ok(None);
        };
        let mut doc = TantivyDocument::default();
        doc.add_u64(f.key, key.to_u64());
        doc.add_u64(f.list, u64::from(key.list.0));
        doc.add_i64(f.date, public.date());
        doc.add_text(f.message_id, public.message_id());
        doc.add_u64(f.lang, li as u64);
        doc.add_text(f.subject[li], public.subject());
        let from = match public.author_address() {
            Some(a) if a != public.author() => format!("{} {}", public.author(), a),
            _ => public.author().to_string(),
        };
        doc.add_text(f.from, &from);
        doc.add_text(f.body[li], public.body());
        for (name, value) in public.headers() {
            if name == "To" || name == "Cc" {
                doc.add_text(f.to, value);
            }
        }
        for a in public.attachments() {
            doc.add_text(f.attachment, a.name());
        }
        Ok(Some(doc))
    }

    /// At start-up, make the index agree with the store when their counts say it does not
    /// (nothing queued, yet a different number of documents than archived messages). Fewer
    /// documents: everything is queued again (re-indexing is idempotent). More: the index
    /// holds documents the store does not have (ghosts, which an index built before
    /// `Store::read_durable` could get from a crash between the committer's two stages), and
    /// re-adding cannot remove them, so the index is emptied first. A new index is filled
    /// from the store. Returns how many messages were queued.
    pub fn reconcile(&mut self, created: bool) -> Result<u64, IndexError> {
        let archived = self.store.archived_total()?;
        let quarantined = self.store.index_quarantined()?.len() as u64;
        let have = self.search.num_docs() + quarantined;
        let out_of_step = self.store.index_pending_len() == 0 && have != archived;
        if !(created || out_of_step) {
            return Ok(0);
        }
        if !created && have > archived {
            tracing::warn!(
                documents = self.search.num_docs(),
                archived,
                quarantined,
                "the search index holds messages the store does not have; rebuilding it"
            );
            self.clear()?;
        }
        let n = self.store.index_requeue_all(false)?;
        tracing::info!(messages = n, "building the search index from the store");
        Ok(n)
    }

    /// Delete every document (for a rebuild); the caller re-queues the store.
    pub fn clear(&mut self) -> Result<(), IndexError> {
        let w = self.writer()?;
        w.delete_all_documents()?;
        w.commit()?;
        Ok(())
    }

    /// Run until `stop` is set: wait for work, gather for `commit_delay`, index, repeat.
    /// Runs on its own thread (with a large stack, as defence in depth for the parsers).
    /// Needs no async runtime: it may outlive one (a daemon that fails to start after
    /// spawning it stops it from a destructor).
    pub fn run(mut self, stop: Arc<AtomicBool>, wake: Arc<tokio::sync::Notify>) {
        // A writer made before this thread ran (the start-up check, a rebuild's clear) was
        // made on another thread, and so were tantivy's indexing, segment-updater and merge
        // threads. Drop it: the next one is made here, and its threads inherit this thread's
        // scheduling priority (the daemon lowers it; ARCHITECTURE.md, "The indexer and crash loops").
        self.release_writer();
        let mut last_error: Option<Instant> = None;
        let mut last_work = Instant::now();
        let mut gather = Gather::default();
        // Waits are short and check `stop`, so shutdown never waits for a whole commit delay.
        let wait = |d: Duration| wait_notified(&wake, d);
        while !stop.load(Ordering::SeqCst) {
            if self.store.index_pending_len() == 0 {
                gather.queue_empty();
                if self.writer.is_some() && last_work.elapsed() > IDLE_DROP {
                    self.release_writer();
                }
                wait(Duration::from_millis(500));
                continue;
            }
            sleep_until(&stop, gather.until(Instant::now(), self.settings.commit_delay));
            last_work = Instant::now();
            gather.step_started(last_work);
            // A panic in a step (a parser bug) must not end indexing: the attempt counters
            // already recorded make the next steps narrow down on the culprit.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step())).unwrap_or_else(|_| {
                // A panic while a suspect was parsed alone counts like a crash.
                if let Err(e) = self.blame() {
                    tracing::warn!(error = %e, "cannot record the indexer panic");
                }
                Err(IndexError::Panicked)
            });
            match r {
                Ok(n) => {
                    if n > 0 {
                        tracing::debug!(indexed = n, "search index commit");
                    }
                }
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::error!(error = %e, "indexing failed; will retry");
                    }
                    last_error = Some(Instant::now());
                    // A full second, whatever wakes arrive meanwhile: a failing step must
                    // not be retried back to back while mail keeps coming.
                    sleep_until(&stop, Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if self.store.index_pending_len() > 0 {
            if let Err(e) = self.step() {
                tracing::warn!(error = %e, "final index commit failed; the queue keeps the rest");
            }
        }
        self.release_writer();
    }
}

/// How long the indexer keeps its writer without work.
const IDLE_DROP: Duration = Duration::from_secs(5);

/// Sleep until `until`, in short naps that check `stop`, so shutdown never waits long.
fn sleep_until(stop: &AtomicBool, until: Instant) {
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
}

/// When the indexer's next step may start: once the oldest message waiting has waited
/// `commit_delay`.
///
/// Why: after a wake the oldest message has just arrived, so the indexer gathers for the
/// whole delay; but what arrives during a step has been waiting since that step began, so
/// under a steady stream the next step starts as soon as the one before it ends. Waiting the
/// full delay after every step (as before) idled the indexer while mail kept coming, and left
/// the index about two seconds behind the last `250` of a 20,000-message burst at 16 sessions
/// (README, performance).
#[derive(Debug, Default)]
struct Gather {
    /// When the oldest waiting message was queued, as far as the indexer can tell; None
    /// while the queue was last seen empty.
    waiting_since: Option<Instant>,
}

impl Gather {
    fn queue_empty(&mut self) {
        self.waiting_since = None;
    }

    /// A step began at `at`: everything queued before it is in that step.
    fn step_started(&mut self, at: Instant) {
        self.waiting_since = Some(at);
    }

    /// The queue holds work (seen at `now`): when to start the step that takes it.
    fn until(&mut self, now: Instant, commit_delay: Duration) -> Instant {
        *self.waiting_since.get_or_insert(now) + commit_delay
    }
}

/// Wait until `notify` is notified (a stored permit counts) or `timeout` passes, blocking
/// this thread. Polls the `Notified` future with a waker that unparks the thread, so it
/// works with or without a tokio runtime: an earlier version used `Handle::block_on` with
/// tokio's timer, which panics once the runtime is shutting down.
fn wait_notified(notify: &tokio::sync::Notify, timeout: Duration) {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = Instant::now() + timeout;
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut notified = std::pin::pin!(notify.notified());
    loop {
        if notified.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        // Spurious wake-ups just poll again.
        std::thread::park_timeout(deadline - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QueryLimits, SearchRequest};
    use plenary_core::meta::Fallback;
    use plenary_core::{ListAddress, MessageMeta, Origin};

    use plenary_store::{IngestRequest, ListRecord, StoreSettings};

    /// A store in `dir` with the English list gov@x.org.
    fn gov_store(dir: &std::path::Path) -> (Store, ListRecord) {
        let mut s = StoreSettings::new(dir);
        s.min_free_bytes = 0;
        let store = Store::open(s).expect("store");
        let list = store
            .create_list(&ListAddress::parse("gov@x.org").expect("addr"), "", "")
            .expect("list");
        (store, list)
    }

    /// A search for `q` in gov@x.org (public, English), first page by relevance.
    fn gov_request(list: ListId, q: &str) -> SearchRequest {
        SearchRequest {
            query: q.into(),
            list: Some(list),
            lists: vec![crate::ListScope {
                id: list,
                address: "gov@x.org".into(),
                language: Language::English,
                public: true,
            }],
            sort: crate::Sort::Relevance,
            offset: 0,
            limit: 10,
        }
    }

    /// The indexer's wait needs no runtime: it returns at once on a stored permit, early when
    /// notified from another thread, and at the timeout otherwise.
    #[test]
    fn wait_notified_works_without_a_runtime() {
        let n = Arc::new(tokio::sync::Notify::new());
        n.notify_one();
        let t = Instant::now();
        wait_notified(&n, Duration::from_secs(30));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a stored permit must end the wait"
        );

        let t = Instant::now();
        wait_notified(&n, Duration::from_millis(200));
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "no permit: wait until the timeout"
        );

        let n2 = n.clone();
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            n2.notify_one();
        });
        let t = Instant::now();
        wait_notified(&n, Duration::from_secs(30));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a notification from another thread must end the wait"
        );
        waker.join().expect("the notifying thread ends");
    }

    async fn put(store: &Store, list: ListId, raw: &str) {
        let meta = MessageMeta::extract(
            raw.as_bytes(),
            Fallback {
                envelope_date: None,
                received_at: 1_800_000_000,
            },
        );
        store
            .ingest(IngestRequest::post(
                list,
                raw.as_bytes().to_vec(),
                meta,
                Origin::Import,
                1_800_000_000,
            ))
            .await
            .expect("ingest");
    }

    #[tokio::test]
    async fn indexes_redacted_text_idempotently() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, list) = gov_store(dir.path());
        put(&store, list.id, "From: Ada <ada@example.org>\r\nSubject: Interoperability charter\r\nMessage-ID: <a@x>\r\n\r\nThe zebra crossing standard; mail ada@example.org\r\n").await;
        put(
            &store,
            list.id,
            "From: Bob <bob@example.org>\r\nSubject: Other\r\nMessage-ID: <b@x>\r\n\r\nnothing here\r\n",
        )
        .await;
        let (search, created) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        assert!(created);
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        assert_eq!(ix.step().expect("step"), 2);
        assert_eq!(store.index_pending_len(), 0);
        search.reload().expect("reload");
        let req = |q: &str| gov_request(list.id, q);
        let r = search.search(&req("zebra")).expect("search");
        assert_eq!(r.total, 1);
        assert_eq!(r.hits[0].message_id, "a@x");
        let snippet: String = r.hits[0].snippet.iter().map(|p| p.text.as_str()).collect();
        assert!(snippet.contains("zebra"));
        assert!(r.hits[0].snippet.iter().any(|p| p.highlighted && p.text == "zebra"));
        // Redacted text only: the address is not searchable or shown.
        assert_eq!(search.search(&req("\"ada@example.org\"")).expect("search").total, 0);
        assert!(!format!("{r:?}").contains("ada@example.org"));
        // Re-index everything: still one document per message.
        store.index_requeue_all(false).expect("requeue");
        assert_eq!(ix.step().expect("step"), 2);
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 2);
        // A crashed batch is retried alone, then quarantined.
        let other = SearchRequest {
            list: Some(ListId(99)),
            ..req("charter")
        };
        assert_eq!(search.search(&other).expect("search").total, 0);
        let deep = SearchRequest {
            list: None,
            ..req(&format!("{}a{}", "(".repeat(2000), ")".repeat(2000)))
        };
        assert!(matches!(search.search(&deep), Err(IndexError::Query(_))));
    }

    /// The indexer takes only durable mail. A group commit the committer applied and the
    /// syncer has not flushed yet (a crash would undo it, and its sender has no `250`) is
    /// not indexed until it is on disk: otherwise a crash could leave a hit in the index for
    /// a message the store no longer has.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexes_only_what_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, list) = gov_store(dir.path());
        let (search, _) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        let hold = store.hold_durability();
        let st = store.clone();
        let ingest = tokio::spawn(async move {
            put(
                &st,
                list.id,
                "Message-ID: <d@x>\r\nSubject: durable\r\n\r\nflushed first\r\n",
            )
            .await;
        });
        assert!(
            store.wait_applied(|s| s.index_pending_len() > 0).await,
            "the committer never applied the batch"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let stepper = std::thread::spawn(move || {
            let _ = tx.send(ix.step().map_err(|e| e.to_string()));
        });
        // Long enough for a step to index and commit one message many times over, so the
        // check cannot pass merely because the machine is slow.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert!(rx.try_recv().is_err(), "the indexer took a commit that is not durable");
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 0);
        drop(hold);
        let n = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the step ends after the flush")
            .expect("step");
        assert_eq!(n, 1);
        stepper.join().expect("join");
        ingest.await.expect("ingest");
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 1);
    }

    /// At start-up the index is brought in step with the store: left alone when it agrees,
    /// refilled when it lacks documents, and emptied and refilled when it has documents the
    /// store does not (a ghost from an older build), which re-adding alone cannot remove.
    #[tokio::test]
    async fn reconcile_removes_ghosts_and_fills_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, list) = gov_store(dir.path());
        put(&store, list.id, "Message-ID: <a@x>\r\nSubject: one\r\n\r\nalpha\r\n").await;
        put(&store, list.id, "Message-ID: <b@x>\r\nSubject: two\r\n\r\nbravo\r\n").await;
        let (search, created) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        assert_eq!(ix.reconcile(created).expect("reconcile"), 2, "a new index is filled");
        assert_eq!(ix.step().expect("step"), 2);
        search.reload().expect("reload");
        assert_eq!(ix.reconcile(false).expect("reconcile"), 0, "in step: nothing to do");

        // A ghost: a document whose message the store does not have.
        let f = search.fields();
        let mut ghost = TantivyDocument::default();
        ghost.add_u64(f.key, MessageKey { list: list.id, seq: 3 }.to_u64());
        ghost.add_u64(f.list, u64::from(list.id.0));
        ghost.add_i64(f.date, 1_800_000_000);
        ghost.add_text(f.message_id, "ghost@x");
        ghost.add_u64(f.lang, Fields::lang_index(Language::English) as u64);
        ghost.add_text(f.body[Fields::lang_index(Language::English)], "phantom");
        ix.writer().expect("writer").add_document(ghost).expect("add");
        ix.writer().expect("writer").commit().expect("commit");
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 3);
        assert_eq!(ix.reconcile(false).expect("reconcile"), 2);
        while store.index_pending_len() > 0 {
            ix.step().expect("step");
        }
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 2, "the ghost is gone");
        assert_eq!(
            search.search(&gov_request(list.id, "phantom")).expect("search").total,
            0
        );

        // A gap: a document missing is indexed again.
        let a = store.find(list.id, "a@x").expect("find").expect("present");
        ix.writer()
            .expect("writer")
            .delete_term(Term::from_field_u64(f.key, a.to_u64()));
        ix.writer().expect("writer").commit().expect("commit");
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 1);
        assert_eq!(ix.reconcile(false).expect("reconcile"), 2);
        while store.index_pending_len() > 0 {
            ix.step().expect("step");
        }
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 2);

        // A message indexed before and quarantined later (re-queued, then twice the
        // indexer died while parsing it alone) loses its document, so the counts still
        // agree at the next start and nothing is rebuilt.
        store.index_requeue_all(false).expect("requeue");
        let b = store.find(list.id, "b@x").expect("find").expect("present");
        store.index_attempt(&[b]).expect("attempt");
        drop(ix);
        for _ in 0..2 {
            store.index_parsing(Some(b)).expect("mark");
            drop(Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer"));
        }
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        while store.index_pending_len() > 0 {
            ix.step().expect("step");
        }
        assert_eq!(store.index_quarantined().expect("q"), vec![b]);
        search.reload().expect("reload");
        assert_eq!(search.num_docs(), 1, "the quarantined message has no document");
        assert_eq!(ix.reconcile(false).expect("reconcile"), 0, "in step: nothing rebuilt");
    }

    #[tokio::test]
    async fn poison_message_is_quarantined_not_retried_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, list) = gov_store(dir.path());
        put(&store, list.id, "Message-ID: <p@x>\r\n\r\npoison\r\n").await;
        put(&store, list.id, "Message-ID: <q@x>\r\n\r\nfine\r\n").await;
        // <p@x> was in a batch when the process died, then the process died twice while
        // parsing it alone (the durable mark names it at each start).
        let p = store.find(list.id, "p@x").expect("find").expect("present");
        store.index_attempt(&[p]).expect("attempt");
        let (search, _) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        for _ in 0..2 {
            store.index_parsing(Some(p)).expect("mark");
            let ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
            assert_eq!(store.index_parsing_mark().expect("mark"), None, "the mark is consumed");
            drop(ix);
        }
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        assert_eq!(
            ix.step().expect("step"),
            0,
            "the poison message is quarantined, not indexed"
        );
        assert_eq!(ix.step().expect("step"), 1, "the rest is indexed afterwards");
        assert_eq!(store.index_pending_len(), 0);
        assert_eq!(store.index_quarantined().expect("q"), vec![p]);
        // A message that was in ten batches that never finished (the process killed from
        // outside each time) is retried alone and indexed, not quarantined.
        put(&store, list.id, "Message-ID: <r@x>\r\n\r\nretry me\r\n").await;
        let r = store.find(list.id, "r@x").expect("find").expect("present");
        for _ in 0..10 {
            store.index_attempt(&[r]).expect("attempt");
        }
        assert_eq!(ix.step().expect("step"), 1);
        assert_eq!(store.index_quarantined().expect("q").len(), 1);
        assert_eq!(store.index_parsing_mark().expect("mark"), None, "no mark left behind");
        // An explicit rebuild clears the quarantine and tries again.
        assert_eq!(store.index_requeue_all(true).expect("requeue"), 3);
        assert!(store.index_quarantined().expect("q").is_empty());
    }

    #[tokio::test]
    async fn languages_prefixes_dates_and_visibility() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = StoreSettings::new(dir.path());
        s.min_free_bytes = 0;
        let store = Store::open(s).expect("store");
        let mut scopes = Vec::new();
        let mut ids = Vec::new();
        for (addr, lang, public) in [
            ("en@x.org", Language::English, true),
            ("fr@x.org", Language::French, true),
            ("ru@x.org", Language::Russian, true),
            ("zh@x.org", Language::Chinese, true),
            ("ar@x.org", Language::Arabic, true),
            ("es@x.org", Language::Spanish, true),
            ("pt@x.org", Language::Portuguese, true),
            ("secret@x.org", Language::English, false),
        ] {
            let l = store
                .create_list(&ListAddress::parse(addr).expect("addr"), "", "")
                .expect("list");
            let mut settings = l.settings.clone();
            settings.language = lang;
            store.set_list_settings(addr, settings).expect("settings");
            scopes.push(crate::ListScope {
                id: l.id,
                address: addr.into(),
                language: lang,
                public,
            });
            ids.push(l.id);
        }
        let msgs = [
            (0, "From: Ada <ada@example.org>\r\nTo: Governance WG <wg@example.org>\r\nSubject: Running the meetings\r\nDate: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <en1@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nWe ran three meetings about connectivity.\r\n--b\r\nContent-Type: application/pdf; name=budget-2024.pdf\r\nContent-Disposition: attachment; filename=budget-2024.pdf\r\n\r\nx\r\n--b--\r\n"),
            (0, "From: Bob <bob@example.org>\r\nSubject: Other topic\r\nDate: Mon, 5 Aug 2024 10:00:00 +0000\r\nMessage-ID: <en2@x>\r\n\r\nA meeting in August.\r\n"),
            (1, "From: Chloé <c@example.fr>\r\nSubject: Les gouvernements\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <fr1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLes gouvernements ont publié leurs réponses.\r\n"),
            (2, "From: Ivan <i@example.ru>\r\nSubject: =?utf-8?b?0J/RgNCw0LLQuNGC0LXQu9GM0YHRgtCy0LA=?=\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <ru1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nПравительства обсуждали стандарты.\r\n"),
            (3, "From: Li <l@example.cn>\r\nSubject: =?utf-8?b?5LqS6IGU572R5rK755CG?=\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <zh1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n我们讨论了互联网治理和开放标准。\r\n"),
            (4, "From: Amal <a@example.eg>\r\nSubject: test\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <ar1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nناقشت الحكومات المعايير المفتوحة\r\n"),
            (5, "From: Ana <ana@example.es>\r\nSubject: Las organizaciones\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <es1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLas organizaciones participaron.\r\n"),
            (6, "From: João <j@example.br>\r\nSubject: As organizações\r\nDate: Tue, 6 Feb 2024 10:00:00 +0000\r\nMessage-ID: <pt1@x>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nAs organizações participaram das reuniões.\r\n"),
            (7, "From: Eve <eve@example.org>\r\nSubject: Running the meetings in secret\r\nDate: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <s1@x>\r\n\r\nmeetings\r\n"),
        ];
        for (i, raw) in msgs {
            put(&store, ids[i], raw).await;
        }
        let (search, _) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        assert_eq!(ix.step().expect("step"), msgs.len());
        search.reload().expect("reload");
        let run = |q: &str, list: Option<usize>| -> Vec<String> {
            let r = search
                .search(&SearchRequest {
                    query: q.into(),
                    list: list.map(|i| ids[i]),
                    lists: scopes.clone(),
                    sort: crate::Sort::Date,
                    offset: 0,
                    limit: 20,
                })
                .unwrap_or_else(|e| panic!("{q}: {e}"));
            r.hits.into_iter().map(|h| h.message_id).collect()
        };
        // Stemming per list language, site-wide and scoped.
        assert_eq!(
            run("meeting", None),
            vec!["en2@x", "en1@x"],
            "English stems; the private list never shows"
        );
        assert_eq!(run("gouvernement", None), vec!["fr1@x"]);
        assert_eq!(run("gouvernement", Some(1)), vec!["fr1@x"]);
        assert_eq!(run("правительство", None), vec!["ru1@x"]);
        assert_eq!(run("治理", None), vec!["zh1@x"], "Chinese by character pairs");
        assert_eq!(run("互联网", Some(3)), vec!["zh1@x"]);
        assert_eq!(run("الحكومة", None).len(), 1, "Arabic stemming");
        assert_eq!(run("organización", None), vec!["es1@x"]);
        assert_eq!(run("organização", None), vec!["pt1@x"]);
        // Prefixes.
        assert_eq!(run("s:meetings", None), vec!["en1@x"]);
        assert_eq!(run("b:meeting -s:meetings", None), vec!["en2@x"]);
        assert_eq!(run("from:ada", None), vec!["en1@x"]);
        assert_eq!(run("to:governance", None), vec!["en1@x"]);
        assert_eq!(run("attachment:budget", None), vec!["en1@x"]);
        assert_eq!(run("list:fr@x.org gouvernements", None), vec!["fr1@x"]);
        assert!(run("list:fr@x.org meeting", None).is_empty());
        assert!(run("list:secret@x.org meetings", None).is_empty(), "not even by name");
        // Dates.
        assert_eq!(run("meeting date:2024-02", None), vec!["en1@x"]);
        assert_eq!(run("meeting after:2024-03", None), vec!["en2@x"]);
        assert_eq!(run("meeting before:2024-03-01", None), vec!["en1@x"]);
        assert_eq!(run("date:2024-02..2024-02 list:en@x.org", None), vec!["en1@x"]);
        // Boolean operators and phrases.
        assert_eq!(run("connectivity OR august", Some(0)).len(), 2);
        assert_eq!(run("meeting NOT connectivity", Some(0)), vec!["en2@x"]);
        assert_eq!(run("\"three meetings\"", None), vec!["en1@x"]);
        assert!(run("\"meetings three\"", None).is_empty());
        // Friendly errors, never a panic.
        for bad in ["AND", "OR OR", "date:2024-99", "list:nope@x.org a", "NOT"] {
            let r = search.search(&SearchRequest {
                query: bad.into(),
                list: None,
                lists: scopes.clone(),
                sort: crate::Sort::Relevance,
                offset: 0,
                limit: 10,
            });
            assert!(matches!(r, Err(IndexError::Query(_))), "{bad}: {r:?}");
        }
    }

    #[test]
    fn a_step_waits_for_the_oldest_message_not_for_a_fresh_delay() {
        let delay = Duration::from_millis(800);
        let t0 = Instant::now();
        let mut g = Gather::default();
        // Work seen after a wake: gather for the whole delay.
        assert_eq!(g.until(t0, delay), t0 + delay);
        // Seen again while gathering: the deadline does not move.
        assert_eq!(g.until(t0 + Duration::from_millis(300), delay), t0 + delay);
        // A step began at t0 + 800 ms and took 1.5 s; what is queued now arrived during it
        // and has waited long enough: the next step is due already.
        let step = t0 + delay;
        g.step_started(step);
        let after = step + Duration::from_millis(1500);
        assert!(g.until(after, delay) <= after, "a backlog must not wait another delay");
        // A quick step (100 ms): what arrived during it waits out the rest of the delay only.
        g.step_started(after);
        assert_eq!(g.until(after + Duration::from_millis(100), delay), after + delay);
        // The queue ran dry: the next message gets the whole delay again.
        g.queue_empty();
        let later = after + Duration::from_secs(10);
        assert_eq!(g.until(later, delay), later + delay);
    }
}
