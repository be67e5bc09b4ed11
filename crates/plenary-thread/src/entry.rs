//! The compact record a message is threaded from.
//!
//! Why it exists: the thread views of a list are rebuilt from the store at start-up, and
//! reading every full message record for that kept most of them resident for good (sled
//! 0.34 keeps every page it has read in memory, whatever its `cache_capacity`; about 48 MB
//! for 90,000 messages). An [`Entry`] holds only what threading needs (hashed
//! Message-IDs, the hashed base subject, the date and an author id), about 40–80 bytes;
//! the store keeps them packed many to a value, written in the same transaction as the
//! message.
//!
//! The encoding is ours and versionless: the store rebuilds its entries from the message
//! records when they are missing, so a change here only needs that backfill to run again.

use crate::{base_subject, key};
use plenary_core::MessageMeta;

/// References kept per message (the newest ones, nearest the parent). Real mail has a few;
/// the cap only bounds what a hostile header can make the views hold.
pub const MAX_REFS: usize = 255;

const F_REPLY: u8 = 1;
const F_HEADERLESS: u8 = 2;
const F_IRT: u8 = 4;

/// What threading needs of one archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub date: i64,
    /// The Message-ID's key.
    pub id: u64,
    /// The base subject's key (see [`base_subject`]).
    pub subject: u64,
    /// The subject had a reply marker.
    pub reply: bool,
    /// Neither References nor In-Reply-To.
    pub headerless: bool,
    /// The first In-Reply-To, unless it names the message itself.
    pub irt: Option<u64>,
    /// References, oldest first, without the message itself and without `irt`.
    pub refs: Vec<u64>,
    /// [`author_id`] of the sender; the web layer keys it before use.
    pub author: u64,
}

/// Why a stored run of entries could not be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "thread entry: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// An unkeyed 64-bit id of the sender: the lower-cased address, or the display name when
/// there is no address. Not for URLs as it is: it can be checked by guessing.
pub fn author_id(meta: &MessageMeta) -> u64 {
    use sha2::{Digest, Sha256};
    let who = meta
        .from_addr
        .as_deref()
        .map(str::to_ascii_lowercase)
        .or_else(|| meta.from_name.clone())
        .unwrap_or_default();
    let d = Sha256::digest(who.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

impl Entry {
    /// The entry of an archived message; `None` for mail not meant for the archive.
    pub fn from_meta(seq: u64, meta: &MessageMeta) -> Option<Entry> {
        if meta.no_archive {
            return None;
        }
        let id = key(&meta.message_id);
        let (base, reply) = base_subject(&meta.subject);
        let irt = meta.in_reply_to.first().map(|i| key(i)).filter(|i| *i != id);
        let mut refs: Vec<u64> = meta
            .references
            .iter()
            .map(|r| key(r))
            .filter(|r| *r != id && Some(*r) != irt)
            .collect();
        if refs.len() > MAX_REFS {
            refs.drain(..refs.len() - MAX_REFS);
        }
        Some(Entry {
            seq,
            date: meta.date,
            id,
            subject: key(&base),
            reply,
            headerless: meta.references.is_empty() && meta.in_reply_to.is_empty(),
            irt,
            refs,
            author: author_id(meta),
        })
    }

    /// Append the entry's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.date.to_le_bytes());
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.subject.to_le_bytes());
        out.extend_from_slice(&self.author.to_le_bytes());
        let mut flags = 0;
        if self.reply {
            flags |= F_REPLY;
        }
        if self.headerless {
            flags |= F_HEADERLESS;
        }
        if self.irt.is_some() {
            flags |= F_IRT;
        }
        out.push(flags);
        if let Some(i) = self.irt {
            out.extend_from_slice(&i.to_le_bytes());
        }
        let n = self.refs.len().min(MAX_REFS);
        out.push(n as u8);
        for r in &self.refs[self.refs.len() - n..] {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }

    /// Every entry in a run written by [`Entry::encode`].
    pub fn decode_all(mut b: &[u8]) -> Result<Vec<Entry>, DecodeError> {
        let mut out = Vec::new();
        while !b.is_empty() {
            out.push(Entry::decode(&mut b)?);
        }
        Ok(out)
    }

    fn decode(b: &mut &[u8]) -> Result<Entry, DecodeError> {
        let seq = u64::from_le_bytes(take(b)?);
        let date = i64::from_le_bytes(take(b)?);
        let id = u64::from_le_bytes(take(b)?);
        let subject = u64::from_le_bytes(take(b)?);
        let author = u64::from_le_bytes(take(b)?);
        let [flags] = take::<1>(b)?;
        let irt = if flags & F_IRT != 0 {
            Some(u64::from_le_bytes(take(b)?))
        } else {
            None
        };
        let [n] = take::<1>(b)?;
        let mut refs = Vec::with_capacity(n as usize);
        for _ in 0..n {
            refs.push(u64::from_le_bytes(take(b)?));
        }
        Ok(Entry {
            seq,
            date,
            id,
            subject,
            reply: flags & F_REPLY != 0,
            headerless: flags & F_HEADERLESS != 0,
            irt,
            refs,
            author,
        })
    }
}

fn take<const N: usize>(b: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    if b.len() < N {
        return Err(DecodeError("truncated"));
    }
    let (head, rest) = b.split_at(N);
    *b = rest;
    let mut a = [0u8; N];
    a.copy_from_slice(head);
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, subject: &str, irt: &[&str], refs: &[&str]) -> MessageMeta {
        MessageMeta {
            message_id: id.into(),
            generated_id: false,
            subject: subject.into(),
            from_name: None,
            from_addr: Some("Ana@Example.org".into()),
            date: 1_700_000_000,
            date_repaired: false,
            in_reply_to: irt.iter().map(|s| s.to_string()).collect(),
            references: refs.iter().map(|s| s.to_string()).collect(),
            no_archive: false,
            size: 100,
            unparsed: None,
        }
    }

    #[test]
    fn round_trips_and_filters_self_references() {
        let a = Entry::from_meta(
            7,
            &meta("m3@x", "Re: [dc] Agenda", &["m2@x"], &["m1@x", "m2@x", "m3@x"]),
        );
        let b = Entry::from_meta(8, &meta("n@x", "Agenda", &[], &[]));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("archived messages have entries");
        };
        assert_eq!(a.irt, Some(key("m2@x")));
        assert_eq!(a.refs, vec![key("m1@x")], "own id and the In-Reply-To are not repeated");
        assert!(a.reply && !a.headerless);
        assert!(b.headerless && !b.reply);
        assert_eq!(a.subject, b.subject, "same base subject");
        let mut buf = Vec::new();
        a.encode(&mut buf);
        b.encode(&mut buf);
        assert_eq!(Entry::decode_all(&buf), Ok(vec![a, b]));
        assert!(Entry::decode_all(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn author_id_ignores_address_case_and_skips_unarchived_mail() {
        let mut m = meta("a@x", "s", &[], &[]);
        let one = author_id(&m);
        m.from_addr = Some("ana@example.ORG".into());
        assert_eq!(author_id(&m), one);
        m.no_archive = true;
        assert_eq!(Entry::from_meta(1, &m), None);
    }

    #[test]
    fn keeps_the_newest_references_when_capped() {
        let refs: Vec<String> = (0..MAX_REFS + 10).map(|i| format!("r{i}@x")).collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let Some(e) = Entry::from_meta(1, &meta("self@x", "s", &[], &refs)) else {
            panic!("archived");
        };
        assert_eq!(e.refs.len(), MAX_REFS);
        assert_eq!(e.refs.last(), Some(&key(&format!("r{}@x", MAX_REFS + 9))));
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(Entry::decode_all(&buf), Ok(vec![e]));
    }
}
