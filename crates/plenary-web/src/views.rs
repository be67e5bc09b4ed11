//! What the pages share: the per-list thread cache, summaries, dates, pagination.
//!
//! The thread cache holds one [`plenary_thread::Threads`] per list, built from the store on
//! first use and brought up to date on every request that needs it by threading the
//! messages stored since (sequence numbers only grow). It is a view, never written back:
//! after a restart it is rebuilt from sled.

use crate::{urls, AppState, WebError};
use plenary_core::list::ArchiveVisibility;
use plenary_core::{ListId, MessageKey, MessageMeta};
use plenary_redact::{Policy, PublicSummary};
use plenary_store::{ListRecord, Store, StoredMessage};
use plenary_thread::{ThreadId, Threads};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Sequence numbers read from the store's thread log per catch-up step.
const CATCH_UP_BATCH: u64 = 8_192;

struct ListThreads {
    threads: Threads,
    /// Highest sequence number looked at (messages not meant for the archive included).
    scanned: u64,
}

/// Per-list thread views.
pub struct ThreadCache {
    store: Store,
    secret: [u8; 32],
    lists: Mutex<HashMap<ListId, Arc<Mutex<ListThreads>>>>,
}

impl ThreadCache {
    pub fn new(store: Store) -> Result<ThreadCache, WebError> {
        let secret = store.site_secret()?;
        Ok(ThreadCache {
            store,
            secret,
            lists: Mutex::new(HashMap::new()),
        })
    }

    /// The site secret (also keys archive-access cookies).
    pub(crate) fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    /// The key that groups a sender's messages on the author pages: a keyed hash of the
    /// sender's [`plenary_thread::author_id`] (the address, or the name when there is none),
    /// so the URL reveals nothing checkable.
    pub fn author_key(&self, meta: &MessageMeta) -> u64 {
        self.keyed_author(plenary_thread::author_id(meta))
    }

    fn keyed_author(&self, id: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(id.to_be_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    }

    /// Run `f` on the list's threads, brought up to date with the store first.
    pub fn with<R>(&self, list: ListId, f: impl FnOnce(&mut Threads) -> R) -> Result<R, WebError> {
        let entry = {
            let mut lists = self
                .lists
                .lock()
                .map_err(|_| WebError::Internal("thread cache poisoned".into()))?;
            lists
                .entry(list)
                .or_insert_with(|| {
                    Arc::new(Mutex::new(ListThreads {
                        threads: Threads::new(),
                        scanned: 0,
                    }))
                })
                .clone()
        };
        let mut lt = entry
            .lock()
            .map_err(|_| WebError::Internal("thread cache poisoned".into()))?;
        // Every message up to `last` has its thread entry by now: the store writes the entry
        // before the message record becomes visible.
        let last = self.store.last_seq(list)?;
        while lt.scanned < last {
            let upto = last.min(lt.scanned.saturating_add(CATCH_UP_BATCH));
            for mut e in self.store.thread_entries(list, lt.scanned, upto)? {
                e.author = self.keyed_author(e.author);
                lt.threads.add_entry(&e);
            }
            lt.scanned = upto;
        }
        Ok(f(&mut lt.threads))
    }

    /// Thread every list now (at start-up, so the first visitor does not wait).
    pub fn warm(&self) -> Result<(), WebError> {
        for l in self.store.lists()? {
            self.with(l.id, |t| t.shrink_to_fit())?;
        }
        Ok(())
    }
}

pub fn fmt_date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M UTC")
        .to_string()
}

pub fn iso_date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default().to_rfc3339()
}

#[derive(Serialize)]
pub struct Crumb {
    pub label: String,
    pub url: Option<String>,
}

pub fn crumbs(list: Option<&ListRecord>, mid: Option<(&str, String)>, last: Option<&str>) -> Vec<Crumb> {
    let mut v = vec![Crumb {
        label: "Lists".into(),
        url: Some("/".into()),
    }];
    if let Some(l) = list {
        let name: String = l.name.chars().take(80).collect();
        let label = match name.trim() {
            "" => l.address.to_string(),
            n => n.to_string(),
        };
        v.push(Crumb {
            label,
            url: Some(urls::list(l.address.as_str())),
        });
    }
    if let Some((label, url)) = mid {
        v.push(Crumb {
            label: label.to_string(),
            url: Some(url),
        });
    }
    if let Some(t) = last {
        v.push(Crumb {
            label: t.to_string(),
            url: None,
        });
    }
    v
}

/// A message in a listing.
#[derive(Serialize, Clone)]
pub struct SummaryView {
    pub url: String,
    pub thread_url: String,
    pub message_id: String,
    pub subject: String,
    pub author: String,
    pub date: String,
    pub date_iso: String,
}

pub fn summary_view(list: &ListRecord, s: &PublicSummary) -> SummaryView {
    let a = list.address.as_str();
    SummaryView {
        url: urls::message(a, s.message_id()),
        thread_url: urls::thread(a, s.message_id()),
        message_id: s.message_id().to_string(),
        subject: s.subject().to_string(),
        author: s.author().to_string(),
        date: fmt_date(s.date()),
        date_iso: iso_date(s.date()),
    }
}

/// A thread in a listing.
#[derive(Serialize)]
pub struct ThreadRow {
    pub url: String,
    pub subject: String,
    pub author: String,
    pub count: usize,
    pub replies: usize,
    pub participants: usize,
    pub last: String,
    pub last_iso: String,
    pub last_url: String,
}

/// Pagination links.
#[derive(Serialize, Default)]
pub struct Pager {
    pub page: usize,
    pub pages: usize,
    pub prev_url: Option<String>,
    pub next_url: Option<String>,
}

impl Pager {
    /// `link(n)` makes the URL of page `n` (1-based).
    pub fn new(page: usize, per: usize, total: usize, link: impl Fn(usize) -> String) -> Pager {
        let pages = total.div_ceil(per.max(1)).max(1);
        Pager {
            page,
            pages,
            prev_url: (page > 1).then(|| link(page - 1)),
            next_url: (page < pages).then(|| link(page + 1)),
        }
    }
}

/// Parse a `page` query value: absent means 1; anything else must be 1..=max.
pub fn page_param(p: Option<&str>, max: usize) -> Result<usize, WebError> {
    match p {
        None | Some("") => Ok(1),
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| *n >= 1 && *n <= max)
            .ok_or_else(|| WebError::BadRequest("The page number is not valid.".into())),
    }
}

impl AppState {
    pub(crate) fn list_record(&self, address: &str) -> Result<ListRecord, WebError> {
        self.store.list(address)?.ok_or(WebError::NotFound)
    }

    /// A list whose archive this reader may read: a public one, or a members-only one when
    /// the request carries a valid access cookie of a current member.
    pub(crate) fn readable_list(&self, req: &crate::pages::Req, address: &str) -> Result<ListRecord, WebError> {
        let l = self.list_record(address)?;
        if l.settings.archive == ArchiveVisibility::Private && !self.may_read(req, &l) {
            return Err(WebError::Private);
        }
        Ok(l)
    }

    pub(crate) fn may_read(&self, req: &crate::pages::Req, l: &ListRecord) -> bool {
        l.settings.archive != ArchiveVisibility::Private || crate::membership::reader(self, &req.cookie, l).is_some()
    }

    pub(crate) fn stored(&self, list: &ListRecord, mid: &str) -> Result<StoredMessage, WebError> {
        let key = self.store.find(list.id, mid)?.ok_or(WebError::NotFound)?;
        let m = self.store.message(key)?.ok_or(WebError::NotFound)?;
        if m.meta.no_archive {
            return Err(WebError::NotFound);
        }
        Ok(m)
    }

    pub(crate) fn summary(
        &self,
        list: &ListRecord,
        policy: &Policy,
        seq: u64,
    ) -> Result<Option<SummaryView>, WebError> {
        let Some(m) = self.store.message(MessageKey { list: list.id, seq })? else {
            return Ok(None);
        };
        Ok(plenary_redact::summarize(m.key, &m.meta, policy).map(|s| summary_view(list, &s)))
    }

    /// Listing rows for threads.
    pub(crate) fn thread_rows(
        &self,
        list: &ListRecord,
        infos: &[plenary_thread::ThreadInfo],
    ) -> Result<Vec<ThreadRow>, WebError> {
        let policy = Policy::for_list(list.address.as_str());
        let mut out = Vec::with_capacity(infos.len());
        for t in infos {
            let Some(root) = self.summary(list, &policy, t.root)? else {
                continue;
            };
            let last_url = match self.summary(list, &policy, t.last_seq)? {
                Some(s) => s.url,
                None => root.url.clone(),
            };
            out.push(ThreadRow {
                url: root.thread_url,
                subject: root.subject,
                author: root.author,
                count: t.count,
                replies: t.count.saturating_sub(1),
                participants: t.participants,
                last: fmt_date(t.last),
                last_iso: iso_date(t.last),
                last_url,
            });
        }
        Ok(out)
    }

    /// The thread holding a stored message.
    pub(crate) fn thread_of(&self, m: &StoredMessage) -> Result<Option<ThreadId>, WebError> {
        self.threads.with(m.key.list, |t| t.thread_of(m.key.seq))
    }
}
