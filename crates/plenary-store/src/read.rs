//! Lists and reads. Reads never go through the committer: sled gives consistent point reads
//! and ordered range scans on its own.

use crate::keys;
use crate::records::{ListRecord, MonthCount, StoredMessage};
use crate::{corrupt, Store, StoreError};
use plenary_core::{ListAddress, ListId, MessageKey};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

impl Store {
    /// Create a list. Fails if the address is taken.
    pub fn create_list(&self, address: &ListAddress, name: &str, description: &str) -> Result<ListRecord, StoreError> {
        let t = self.trees();
        let now = chrono::Utc::now().timestamp();
        let r = (&t.lists, &t.list_ids, &t.meta).transaction(|(lists, ids, meta)| {
            if lists.get(address.as_str())?.is_some() {
                return Err(ConflictableTransactionError::Abort(()));
            }
            let next = meta.get(b"next_list_id")?.and_then(|v| keys::be_u32(&v)).unwrap_or(1);
            meta.insert(b"next_list_id", &(next + 1).to_be_bytes())?;
            let rec = ListRecord {
                id: ListId(next),
                address: address.clone(),
                name: name.to_string(),
                description: description.to_string(),
                created: now,
                settings: Default::default(),
            };
            lists.insert(address.as_str(), serde_json::to_vec(&rec).unwrap_or_default())?;
            ids.insert(&next.to_be_bytes(), address.as_str())?;
            Ok(rec)
        });
        let rec = r.map_err(|e| match e {
            TransactionError::Abort(()) => StoreError::ListExists(address.to_string()),
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        self.sync()?;
        Ok(rec)
    }

    /// All lists, ordered by address.
    pub fn lists(&self) -> Result<Vec<ListRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().lists.iter() {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(String::from_utf8_lossy(&k), e))?);
        }
        Ok(out)
    }

    /// The list with this (already normalised) address.
    pub fn list(&self, address: &str) -> Result<Option<ListRecord>, StoreError> {
        match self.trees().lists.get(address.to_ascii_lowercase())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| corrupt(address, e))?)),
            None => Ok(None),
        }
    }

    /// Id and address of the list with this (already normalised) address: what the SMTP
    /// session needs for each RCPT, without decoding the whole record every time (both
    /// never change, so they are remembered once found).
    pub fn list_ident(&self, address: &str) -> Result<Option<(ListId, ListAddress)>, StoreError> {
        let address = address.to_ascii_lowercase();
        if let Some(hit) = self.inner.idents.read().ok().and_then(|m| m.get(&address).cloned()) {
            return Ok(Some(hit));
        }
        let Some(rec) = self.list(&address)? else {
            return Ok(None);
        };
        let ident = (rec.id, rec.address);
        if let Ok(mut m) = self.inner.idents.write() {
            m.insert(address, ident.clone());
        }
        Ok(Some(ident))
    }

    pub fn list_by_id(&self, id: ListId) -> Result<Option<ListRecord>, StoreError> {
        match self.trees().list_ids.get(id.0.to_be_bytes())? {
            Some(addr) => self.list(&String::from_utf8_lossy(&addr)),
            None => Ok(None),
        }
    }

    /// Metadata of one message.
    pub fn message(&self, key: MessageKey) -> Result<Option<StoredMessage>, StoreError> {
        match self.trees().messages.get(key.to_bytes())? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|e| corrupt(key, e))?)),
            None => Ok(None),
        }
    }

    /// The raw bytes of a stored message.
    pub fn raw(&self, msg: &StoredMessage) -> Result<Vec<u8>, StoreError> {
        self.spool().read(&msg.raw)
    }

    /// Find a message of a list by Message-ID (without angle brackets).
    pub fn find(&self, list: ListId, message_id: &str) -> Result<Option<MessageKey>, StoreError> {
        Ok(self
            .trees()
            .msgid
            .get(keys::msgid(list, message_id))?
            .and_then(|v| keys::be_u64(&v))
            .map(|seq| MessageKey { list, seq }))
    }

    /// Newest archived messages of a list, newest first, with their dates.
    pub fn recent(&self, list: ListId, limit: usize) -> Result<Vec<(MessageKey, i64)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().by_date.scan_prefix(list.0.to_be_bytes()).rev().take(limit) {
            let (k, _) = kv?;
            out.extend(keys::by_date_decode(&k));
        }
        Ok(out)
    }

    /// Archived messages of a list dated in `[from, to)`, oldest first.
    pub fn between(
        &self,
        list: ListId,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<(MessageKey, i64)>, StoreError> {
        let lo = keys::by_date(MessageKey { list, seq: 0 }, from);
        let hi = keys::by_date(MessageKey { list, seq: 0 }, to);
        let mut out = Vec::new();
        for kv in self.trees().by_date.range(lo..hi).take(limit) {
            let (k, _) = kv?;
            out.extend(keys::by_date_decode(&k));
        }
        Ok(out)
    }

    /// Months that have archived messages, newest first.
    pub fn months(&self, list: ListId) -> Result<Vec<MonthCount>, StoreError> {
        let mut out = Vec::new();
        for kv in self.trees().months.scan_prefix(list.0.to_be_bytes()).rev() {
            let (k, v) = kv?;
            let ym = keys::be_u32(&k[4..]).unwrap_or(0);
            out.push(MonthCount {
                year: (ym / 100) as i32,
                month: ym % 100,
                count: keys::be_u64(&v).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Number of archived (public-eligible) messages of a list.
    pub fn archived_count(&self, list: ListId) -> Result<u64, StoreError> {
        Ok(self.months(list)?.iter().map(|m| m.count).sum())
    }

    /// Messages of a list that name `parent` in In-Reply-To or References.
    pub fn children(&self, list: ListId, parent: &str) -> Result<Vec<MessageKey>, StoreError> {
        let prefix = keys::children_prefix(list, parent);
        let mut out = Vec::new();
        for kv in self.trees().children.scan_prefix(&prefix).take(10_000) {
            let (k, _) = kv?;
            if let Some(seq) = keys::be_u64(&k[prefix.len()..]) {
                out.push(MessageKey { list, seq });
            }
        }
        Ok(out)
    }

    /// Stored messages of a list with sequence numbers above `after`, in order, at most
    /// `limit` (the thread views catch up with this).
    pub fn messages_after(&self, list: ListId, after: u64, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
        let lo = MessageKey {
            list,
            seq: after.saturating_add(1),
        }
        .to_bytes();
        let hi = MessageKey { list, seq: u64::MAX }.to_bytes();
        let mut out = Vec::new();
        for kv in self.trees().messages.range(lo..=hi).take(limit) {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).map_err(|e| corrupt(format!("{k:?}"), e))?);
        }
        Ok(out)
    }

    /// Highest sequence number stored for a list (0 if none).
    pub fn last_seq(&self, list: ListId) -> Result<u64, StoreError> {
        let lo = MessageKey { list, seq: 0 }.to_bytes();
        let hi = MessageKey { list, seq: u64::MAX }.to_bytes();
        match self.trees().messages.range(lo..=hi).next_back() {
            Some(kv) => Ok(MessageKey::from_bytes(&kv?.0).map(|k| k.seq).unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// The archived messages just before and just after `key` in date order.
    pub fn date_neighbours(
        &self,
        key: MessageKey,
        date: i64,
    ) -> Result<(Option<MessageKey>, Option<MessageKey>), StoreError> {
        let at = keys::by_date(key, date);
        let lo = keys::by_date(MessageKey { list: key.list, seq: 0 }, i64::MIN);
        let hi = keys::by_date(
            MessageKey {
                list: key.list,
                seq: u64::MAX,
            },
            i64::MAX,
        );
        let t = &self.trees().by_date;
        let prev = match t.range(lo..at).next_back() {
            Some(kv) => keys::by_date_decode(&kv?.0).map(|(k, _)| k),
            None => None,
        };
        let next = match t
            .range(at..=hi)
            .find(|kv| kv.as_ref().map(|(k, _)| k.as_ref() != at).unwrap_or(true))
        {
            Some(kv) => keys::by_date_decode(&kv?.0).map(|(k, _)| k),
            None => None,
        };
        Ok((prev, next))
    }

    /// A random secret kept in the database, made on first use (keys the author pages'
    /// URLs, so they do not reveal a hash of the address that can be checked by guessing).
    pub fn site_secret(&self) -> Result<[u8; 32], StoreError> {
        let meta = &self.trees().meta;
        if let Some(v) = meta.get(b"site_secret")? {
            if let Ok(s) = <[u8; 32]>::try_from(v.as_ref()) {
                return Ok(s);
            }
        }
        let fresh: [u8; 32] = rand::random();
        let _ = meta.compare_and_swap(b"site_secret", None as Option<&[u8]>, Some(&fresh[..]))?;
        self.sync()?;
        let v = meta
            .get(b"site_secret")?
            .ok_or_else(|| corrupt("site_secret", "missing after write"))?;
        <[u8; 32]>::try_from(v.as_ref()).map_err(|e| corrupt("site_secret", e))
    }

    /// Every stored message, in key order (for index rebuilds and checks).
    pub fn all_messages(&self) -> impl Iterator<Item = Result<StoredMessage, StoreError>> + '_ {
        self.trees().messages.iter().map(|kv| {
            let (k, v) = kv?;
            serde_json::from_slice(&v).map_err(|e| corrupt(format!("{k:?}"), e))
        })
    }

    /// Number of entries in the inbox (mail for command addresses awaiting the list engine).
    pub fn inbox_len(&self) -> usize {
        self.trees().inbox.len()
    }

    /// Total archived messages in every list.
    pub fn archived_total(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.trees().months.iter() {
            let (_, v) = kv?;
            n += keys::be_u64(&v).unwrap_or(0);
        }
        Ok(n)
    }
}
