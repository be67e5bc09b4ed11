//! State of the list engine and the fan-out worker: members, tokens, the moderation queue,
//! the moderation log, delivery jobs and retries.
//!
//! Why one [`Write`] list applied by [`Store::apply`]: every engine step changes several
//! trees at once (a confirmed token becomes a member, a log line and a welcome notice; a
//! delivery batch moves a cursor and parks failures for retry). Applying them in one sled
//! transaction and then making it durable means a crash leaves either all of a step or none.

use crate::keys;
use crate::records::{BlobRef, FanoutJob, HeldPost, InboxEntry, ListRecord, LogEntry, Pending, RetryEntry};
use crate::{corrupt, Store, StoreError};
use plenary_core::list::{ListSettings, Member};
use plenary_core::{ListId, MemberAddress, MessageKey};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// One change, applied with others atomically by [`Store::apply`].
#[derive(Debug, Clone)]
pub enum Write {
    PutMember(ListId, Member),
    RemoveMember(ListId, MemberAddress),
    PutToken(String, Pending),
    RemoveToken(String),
    /// Update a held post that is still in the queue. One that a moderator removed meanwhile
    /// stays removed: writing it back would point at bytes that were erased.
    PutHeld(HeldPost),
    /// Remove a held post; `true` also frees its stored bytes.
    RemoveHeld(u64, bool),
    Log(LogEntry),
    PutJob(FanoutJob),
    RemoveJob(u64),
    PutRetry(RetryEntry),
    RemoveRetry(u64, MemberAddress),
    /// The engine handled this inbox entry; `true` also frees its stored bytes.
    InboxDone(u64, bool),
    /// Free a stored message's bytes (after a forward job ends).
    RemoveBlob(BlobRef),
    /// These posts went into a digest: removes the digest entries they start (give every
    /// post of the entries taken; see [`Store::digest_pending`]).
    DigestTaken(Vec<MessageKey>),
    PutList(ListRecord),
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| corrupt(what, e))
}

impl Store {
    /// Apply `writes` in one transaction, then make them durable.
    pub fn apply(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.apply_with(writes, true)
    }

    /// Apply `writes` in one transaction; `durable` also flushes and fsyncs before returning.
    pub fn apply_with(&self, writes: Vec<Write>, durable: bool) -> Result<(), StoreError> {
        if self.has_failed() {
            return Err(StoreError::Failed);
        }
        if writes.is_empty() {
            return Ok(());
        }
        let t = self.trees();
        let work = writes.iter().any(|w| matches!(w, Write::PutJob(_)));
        // Readers that act on records wait until these are durable (`durable.rs`).
        let ticket = self.durable_mark().take();
        // Bytes to erase from the spool once the records pointing at them are durably gone
        // (refilled on every run of the closure: sled may retry a transaction).
        let freed = std::cell::RefCell::new(Vec::<BlobRef>::new());
        let r: Result<(), TransactionError<()>> = (
            &t.members, &t.unsub, &t.tokens, &t.held, &t.modlog, &t.fanout, &t.retries, &t.inbox, &t.digest, &t.lists,
            &t.meta,
        )
            .transaction(
                |(members, unsub, tokens, held, modlog, fanout, retries, inbox, digest, lists, meta)| {
                    freed.borrow_mut().clear();
                    for w in &writes {
                        match w {
                            Write::PutMember(list, m) => {
                                let k = keys::member(*list, &m.address);
                                if let Some(old) = members.get(&k)? {
                                    if let Ok(old) = serde_json::from_slice::<Member>(&old) {
                                        if old.unsub_token != m.unsub_token {
                                            unsub.remove(old.unsub_token.as_bytes())?;
                                        }
                                    }
                                }
                                members.insert(k.clone(), json(m))?;
                                unsub.insert(m.unsub_token.as_bytes(), k)?;
                            }
                            Write::RemoveMember(list, a) => {
                                let k = keys::member(*list, a);
                                if let Some(old) = members.remove(k)? {
                                    if let Ok(old) = serde_json::from_slice::<Member>(&old) {
                                        unsub.remove(old.unsub_token.as_bytes())?;
                                    }
                                }
                            }
                            Write::PutToken(tok, p) => {
                                tokens.insert(tok.as_bytes(), json(p))?;
                            }
                            Write::RemoveToken(tok) => {
                                tokens.remove(tok.as_bytes())?;
                            }
                            Write::PutHeld(h) => {
                                if held.get(h.id.to_be_bytes())?.is_some() {
                                    held.insert(&h.id.to_be_bytes(), json(h))?;
                                }
                            }
                            Write::RemoveHeld(id, free) => {
                                if let Some(v) = held.remove(&id.to_be_bytes())? {
                                    if *free {
                                        if let Ok(h) = serde_json::from_slice::<HeldPost>(&v) {
                                            freed.borrow_mut().push(h.raw);
                                        }
                                    }
                                }
                            }
                            Write::Log(e) => {
                                let next = meta.get(b"next_log")?.and_then(|v| keys::be_u64(&v)).unwrap_or(1);
                                meta.insert(b"next_log", &(next + 1).to_be_bytes())?;
                                modlog.insert(&next.to_be_bytes(), json(e))?;
                            }
                            Write::PutJob(j) => {
                                fanout.insert(&j.id.to_be_bytes(), json(j))?;
                            }
                            Write::RemoveJob(id) => {
                                fanout.remove(&id.to_be_bytes())?;
                            }
                            Write::PutRetry(r) => {
                                retries.insert(keys::retry(r.job, &r.rcpt), json(r))?;
                            }
                            Write::RemoveRetry(job, rcpt) => {
                                retries.remove(keys::retry(*job, rcpt))?;
                            }
                            Write::InboxDone(n, free) => {
                                if let Some(v) = inbox.remove(&n.to_be_bytes())? {
                                    if *free {
                                        if let Ok(e) = serde_json::from_slice::<InboxEntry>(&v) {
                                            freed.borrow_mut().push(e.raw);
                                        }
                                    }
                                }
                            }
                            Write::RemoveBlob(raw) => {
                                freed.borrow_mut().push(*raw);
                            }
                            Write::DigestTaken(keys_) => {
                                for k in keys_ {
                                    digest.remove(&k.to_bytes())?;
                                }
                            }
                            Write::PutList(l) => {
                                lists.insert(l.address.as_str(), json(l))?;
                            }
                        }
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                },
            );
        match r {
            Ok(()) => {}
            Err(TransactionError::Storage(e)) => {
                self.mark_failed();
                return Err(StoreError::Sled(e));
            }
            Err(TransactionError::Abort(())) => {
                self.durable_mark().give_back([ticket]);
                return Err(StoreError::Failed);
            }
        }
        let freed = freed.into_inner();
        if durable || !freed.is_empty() {
            // On failure the ticket stays out and the store is failed: waiters give up.
            self.sync()?;
        }
        // Durable now, or not wanted durable by the caller (progress it can redo).
        self.durable_mark().give_back([ticket]);
        for raw in &freed {
            // The records are durably gone; if erasing fails the bytes are only unreferenced.
            if let Err(e) = self.spool().erase(raw) {
                tracing::warn!(error = %e, "could not erase a freed message from the spool");
            }
        }
        if work {
            self.work_notify().notify_one();
        }
        Ok(())
    }

    /// Change a list's settings.
    pub fn set_list_settings(&self, address: &str, settings: ListSettings) -> Result<ListRecord, StoreError> {
        let mut rec = self.list(address)?.ok_or_else(|| corrupt(address, "no such list"))?;
        rec.settings = settings;
        self.apply(vec![Write::PutList(rec.clone())])?;
        Ok(rec)
    }

    pub fn member(&self, list: ListId, addr: &MemberAddress) -> Result<Option<Member>, StoreError> {
        match self.trees().members.get(keys::member(list, addr))? {
            Some(v) => Ok(Some(parse("member", &v)?)),
            None => Ok(None),
        }
    }

    /// Members of a list in address order, after `cursor` (exclusive), at most `limit`.
    /// Whether any member of `list` takes digests now.
    pub fn has_digest_member(&self, list: ListId) -> Result<bool, StoreError> {
        for kv in self.trees().members.scan_prefix(list.0.to_be_bytes()) {
            let (k, v) = kv?;
            let m: Member = serde_json::from_slice(&v).map_err(|e| corrupt(format!("member {k:?}"), e))?;
            if m.gets_digest() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn members_after(&self, list: ListId, cursor: Option<&str>, limit: usize) -> Result<Vec<Member>, StoreError> {
        let prefix = list.0.to_be_bytes();
        let start = match cursor {
            Some(c) => {
                let mut k = prefix.to_vec();
                k.extend_from_slice(c.as_bytes());
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut out = Vec::with_capacity(limit.min(4096));
        for kv in self.trees().members.range(start..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            out.push(parse("member", &v)?);
        }
        Ok(out)
    }

    pub fn member_count(&self, list: ListId) -> usize {
        self.trees().members.scan_prefix(list.0.to_be_bytes()).count()
    }

    /// The member a one-click unsubscribe token belongs to.
    pub fn member_by_unsub(&self, token: &str) -> Result<Option<(ListId, Member)>, StoreError> {
        let Some(k) = self.trees().unsub.get(token.as_bytes())? else {
            return Ok(None);
        };
        let Some(list) = keys::be_u32(&k).map(ListId) else {
            return Ok(None);
        };
        match self.trees().members.get(&k)? {
            Some(v) => Ok(Some((list, parse("member", &v)?))),
            None => Ok(None),
        }
    }

    pub fn token(&self, token: &str) -> Result<Option<Pending>, StoreError> {
        match self.trees().tokens.get(token.as_bytes())? {
            Some(v) => Ok(Some(parse("token", &v)?)),
            None => Ok(None),
        }
    }

    /// Tokens that expired before `now`.
    pub fn expired_tokens(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().tokens.iter() {
            let (k, v) = kv?;
            let p: Pending = parse("token", &v)?;
            if p.expires < now {
                out.push(String::from_utf8_lossy(&k).into_owned());
            }
        }
        Ok(out)
    }

    /// Held posts, oldest first (all lists, or one).
    pub fn held(&self, list: Option<ListId>) -> Result<Vec<HeldPost>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().held.iter() {
            let (_, v) = kv?;
            let h: HeldPost = parse("held", &v)?;
            if list.is_none_or(|l| l == h.list) {
                out.push(h);
            }
        }
        Ok(out)
    }

    pub fn held_post(&self, id: u64) -> Result<Option<HeldPost>, StoreError> {
        match self.trees().held.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(parse("held", &v)?)),
            None => Ok(None),
        }
    }

    /// The raw bytes of a held post.
    pub fn held_raw(&self, h: &HeldPost) -> Result<Vec<u8>, StoreError> {
        self.spool().read(&h.raw)
    }

    /// The moderation and membership log, oldest first.
    pub fn log(&self, list: Option<ListId>) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().modlog.iter() {
            let (_, v) = kv?;
            let e: LogEntry = parse("log", &v)?;
            if list.is_none_or(|l| l == e.list) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Delivery jobs, oldest first.
    pub fn jobs(&self) -> Result<Vec<FanoutJob>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().fanout.iter() {
            let (_, v) = kv?;
            out.push(parse("job", &v)?);
        }
        Ok(out)
    }

    pub fn job(&self, id: u64) -> Result<Option<FanoutJob>, StoreError> {
        match self.trees().fanout.get(id.to_be_bytes())? {
            Some(v) => Ok(Some(parse("job", &v)?)),
            None => Ok(None),
        }
    }

    /// Every parked retry.
    pub fn retries(&self) -> Result<Vec<RetryEntry>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().retries.iter() {
            let (_, v) = kv?;
            out.push(parse("retry", &v)?);
        }
        Ok(out)
    }

    /// Count one hit for `key` if fewer than `max` hits fell in the last `window` seconds
    /// before `now`; returns whether it was allowed (a refused hit is not counted). The
    /// hits are kept in sled, so a restart does not reset the limit; they become durable
    /// with the next durable write (the confirmation mail the hit allows is one).
    pub fn rate_hit(&self, key: &str, max: usize, window: i64, now: i64) -> Result<bool, StoreError> {
        let tree = &self.trees().rate;
        let mut allowed = false;
        tree.fetch_and_update(key.as_bytes(), |old| {
            let mut hits: Vec<i64> = old.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
            hits.retain(|&t| now - t < window && t <= now);
            allowed = hits.len() < max;
            if allowed {
                hits.push(now);
            }
            Some(json(&hits))
        })?;
        // Every quarter window, one caller drops the keys whose hits are all out of the
        // window (so keys of one-off client IPs do not pile up).
        let swept = &self.inner.rate_swept;
        let last = swept.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= (window / 4).max(1)
            && swept
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let hits: Vec<i64> = serde_json::from_slice(&v).unwrap_or_default();
                if hits.iter().all(|&t| now - t >= window) {
                    tree.remove(k)?;
                }
            }
        }
        Ok(allowed)
    }

    pub fn job_has_retries(&self, job: u64) -> bool {
        self.trees().retries.scan_prefix(job.to_be_bytes()).next().is_some()
    }

    /// Inbox entries (mail for command, owner, bounce and confirm addresses), oldest first.
    pub fn inbox(&self, limit: usize) -> Result<Vec<(u64, InboxEntry)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().inbox.iter().take(limit) {
            let (k, v) = kv?;
            out.push((keys::be_u64(&k).unwrap_or(0), parse("inbox", &v)?));
        }
        Ok(out)
    }

    pub fn inbox_raw(&self, e: &InboxEntry) -> Result<Vec<u8>, StoreError> {
        self.spool().read(&e.raw)
    }

    /// Raw bytes of a stored message (a forward job's message).
    pub fn blob_raw(&self, raw: &BlobRef) -> Result<Vec<u8>, StoreError> {
        self.spool().read(raw)
    }

    /// Posts waiting for a digest, per list: (key, received_at), oldest first.
    ///
    /// The committer writes one entry per list and group commit, under the key of its first
    /// post, holding (seq, received_at) pairs of 16 bytes; stores from before hold one post
    /// per entry, under its own key, with an 8-byte received_at. Both read the same.
    /// Entries are taken whole: [`Write::DigestTaken`] with every post of a list's entries
    /// removes them (a post's key that is not the first of its entry is simply not found).
    pub fn digest_pending(&self) -> Result<Vec<(MessageKey, i64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().digest.iter() {
            let (k, v) = kv?;
            let Some(first) = MessageKey::from_bytes(&k) else {
                continue;
            };
            if v.len() == 8 {
                out.extend(keys::be_u64(&v).map(|at| (first, at as i64)));
                continue;
            }
            if v.len() % 16 != 0 {
                return Err(corrupt(format!("digest entry {first}"), "not (seq, time) pairs"));
            }
            for pair in v.chunks_exact(16) {
                if let (Some(seq), Some(at)) = (keys::be_u64(&pair[..8]), keys::be_u64(&pair[8..])) {
                    out.push((MessageKey { list: first.list, seq }, at as i64));
                }
            }
        }
        Ok(out)
    }

    /// A counter kept in the meta tree (digest numbers), incremented durably by the caller.
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .trees()
            .meta
            .get(name.as_bytes())?
            .and_then(|v| keys::be_u64(&v))
            .unwrap_or(0))
    }

    pub fn set_counter(&self, name: &str, value: u64) -> Result<(), StoreError> {
        self.trees().meta.insert(name.as_bytes(), &value.to_be_bytes())?;
        Ok(())
    }
}
