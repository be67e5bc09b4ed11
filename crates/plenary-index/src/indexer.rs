//! The single owner of the `IndexWriter`.

use crate::{IndexError, SearchIndex};
use plenary_core::{ListId, MessageKey};
use plenary_redact::Policy;
use plenary_store::Store;
use std::collections::HashMap;
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

/// Attempts after which a message is no longer indexed (see [`Indexer::step`]).
const MAX_ATTEMPTS: u8 = 4;

/// Batch size for messages that were in a batch when the process died, by attempt count:
/// the retries narrow down on the culprit (1,000, then 50, then one at a time).
fn retry_batch(attempts: u8) -> usize {
    match attempts {
        0 => usize::MAX,
        1 => 1000,
        2 => 50,
        _ => 1,
    }
}

/// Drains the store's index queue into the search index.
pub struct Indexer {
    store: Store,
    search: SearchIndex,
    /// Created on demand and dropped after [`IDLE_DROP`] without work, which gives its
    /// indexing thread and memory arena back (a list server is idle most of the time).
    writer: Option<IndexWriter<TantivyDocument>>,
    settings: IndexerSettings,
    policies: HashMap<ListId, Option<Policy>>,
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
        ix.writer()?;
        Ok(ix)
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

    fn policy(&mut self, list: ListId) -> Result<Option<Policy>, IndexError> {
        if let Some(p) = self.policies.get(&list) {
            return Ok(p.clone());
        }
        let p = self
            .store
            .list_by_id(list)?
            .map(|l| Policy::for_list(l.address.as_str()));
        self.policies.insert(list, p.clone());
        Ok(p)
    }

    /// Index one batch from the queue. Returns how many messages it committed.
    ///
    /// Crash-loop protection: before a batch is indexed its keys' attempt counters are
    /// incremented and made durable. If the process dies during the batch, its keys come back
    /// with attempts = 1 and are retried in smaller and smaller batches (1,000, 50, 1); a
    /// message still there after [`MAX_ATTEMPTS`] attempts crashed us on its own and is
    /// quarantined (kept in the store and readable, never parsed by the indexer again). A real
    /// poison message thus stops the daemon at most four times; a process killed from outside
    /// (which looks the same) would have to die in four successive batches holding the same
    /// innocent message before it was wrongly quarantined, and `plenary index rebuild` clears
    /// every quarantine.
    pub fn step(&mut self) -> Result<usize, IndexError> {
        let pending = self.store.index_pending(self.settings.max_batch)?;
        if pending.is_empty() {
            return Ok(0);
        }
        // Retry the least-tried suspects first, in the batch size their attempt count allows.
        let min_suspect = pending.iter().map(|(_, a)| *a).filter(|a| *a > 0).min();
        let batch: Vec<(MessageKey, u8)> = match min_suspect {
            Some(level) => pending
                .into_iter()
                .filter(|(_, a)| *a == level || *a >= MAX_ATTEMPTS)
                .take(retry_batch(level))
                .collect(),
            None => pending,
        };
        let mut keys = Vec::with_capacity(batch.len());
        for (key, attempts) in batch {
            if attempts >= MAX_ATTEMPTS {
                tracing::error!(%key, attempts, "message crashed the indexer before; quarantined from the search index");
                self.store.index_quarantine(key)?;
                continue;
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Ok(0);
        }
        self.store.index_attempt(&keys)?;
        let f = self.search.fields();
        for key in &keys {
            self.writer()?.delete_term(Term::from_field_u64(f.key, key.to_u64()));
            let Some(stored) = self.store.message(*key)? else {
                continue;
            };
            let Some(policy) = self.policy(key.list)? else { continue };
            let raw = self.store.raw(&stored)?;
            let Some(public) = plenary_redact::redact(*key, &stored.meta, &raw, &policy) else {
                continue;
            };
            let mut doc = TantivyDocument::default();
            doc.add_u64(f.key, key.to_u64());
            doc.add_u64(f.list, u64::from(key.list.0));
            doc.add_i64(f.date, public.date());
            doc.add_text(f.message_id, public.message_id());
            doc.add_text(f.subject, public.subject());
            let from = match public.author_address() {
                Some(a) if a != public.author() => format!("{} {}", public.author(), a),
                _ => public.author().to_string(),
            };
            doc.add_text(f.from, &from);
            doc.add_text(f.body, public.body());
            for a in public.attachments() {
                doc.add_text(f.attachment, a.name());
            }
            self.writer()?.add_document(doc)?;
        }
        self.writer()?.commit()?;
        self.store.index_done(&keys)?;
        Ok(keys.len())
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
    pub fn run(mut self, stop: Arc<AtomicBool>, wake: Arc<tokio::sync::Notify>, rt: tokio::runtime::Handle) {
        let mut last_error: Option<Instant> = None;
        let mut last_work = Instant::now();
        // Waits are short and check `stop`, so shutdown never waits for a whole commit delay.
        let wait = |d: Duration| {
            rt.block_on(async {
                let _ = tokio::time::timeout(d, wake.notified()).await;
            })
        };
        while !stop.load(Ordering::SeqCst) {
            if self.store.index_pending_len() == 0 {
                if self.writer.is_some() && last_work.elapsed() > IDLE_DROP {
                    self.release_writer();
                }
                wait(Duration::from_millis(500));
                continue;
            }
            let gather_until = Instant::now() + self.settings.commit_delay;
            while !stop.load(Ordering::SeqCst) && Instant::now() < gather_until {
                std::thread::sleep((gather_until - Instant::now()).min(Duration::from_millis(50)));
            }
            last_work = Instant::now();
            // A panic in a step (a parser bug) must not end indexing: the attempt counters
            // already recorded make the next steps narrow down on the culprit.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step()))
                .unwrap_or_else(|_| Err(IndexError::Panicked));
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
                    wait(Duration::from_secs(1));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QueryLimits, SearchRequest};
    use plenary_core::meta::Fallback;
    use plenary_core::{ListAddress, MessageMeta, Origin};
    use plenary_store::{IngestRequest, StoreSettings};

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
        let mut s = StoreSettings::new(dir.path());
        s.min_free_bytes = 0;
        let store = Store::open(s).expect("store");
        let list = store
            .create_list(&ListAddress::parse("gov@x.org").expect("addr"), "", "")
            .expect("list");
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
        let req = |q: &str| SearchRequest {
            query: q.into(),
            list: Some(list.id),
            offset: 0,
            limit: 10,
        };
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
            query: "charter".into(),
            list: Some(ListId(99)),
            offset: 0,
            limit: 10,
        };
        assert_eq!(search.search(&other).expect("search").total, 0);
        let deep = SearchRequest {
            query: format!("{}a{}", "(".repeat(2000), ")".repeat(2000)),
            list: None,
            offset: 0,
            limit: 10,
        };
        assert!(matches!(search.search(&deep), Err(IndexError::Query(_))));
    }

    #[tokio::test]
    async fn poison_message_is_quarantined_not_retried_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = StoreSettings::new(dir.path());
        s.min_free_bytes = 0;
        let store = Store::open(s).expect("store");
        let list = store
            .create_list(&ListAddress::parse("gov@x.org").expect("addr"), "", "")
            .expect("list");
        put(&store, list.id, "Message-ID: <p@x>\r\n\r\npoison\r\n").await;
        put(&store, list.id, "Message-ID: <q@x>\r\n\r\nfine\r\n").await;
        // Simulate four crashes while indexing <p@x>: its attempt counter is already 4.
        let p = store.find(list.id, "p@x").expect("find").expect("present");
        for _ in 0..4 {
            store.index_attempt(&[p]).expect("attempt");
        }
        let (search, _) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
        let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
        assert_eq!(
            ix.step().expect("step"),
            0,
            "the poison message is quarantined, not indexed"
        );
        assert_eq!(ix.step().expect("step"), 1, "the rest is indexed afterwards");
        assert_eq!(store.index_pending_len(), 0);
        assert_eq!(store.index_quarantined().expect("q"), vec![p]);
        // A message that was in a batch when the process died is retried, not quarantined.
        put(&store, list.id, "Message-ID: <r@x>\r\n\r\nretry me\r\n").await;
        let r = store.find(list.id, "r@x").expect("find").expect("present");
        store.index_attempt(&[r]).expect("attempt");
        assert_eq!(ix.step().expect("step"), 1);
        assert_eq!(store.index_quarantined().expect("q").len(), 1);
        // An explicit rebuild clears the quarantine and tries again.
        assert_eq!(store.index_requeue_all(true).expect("requeue"), 3);
        assert!(store.index_quarantined().expect("q").is_empty());
    }
}
