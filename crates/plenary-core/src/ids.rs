//! Keys for lists and messages.
//!
//! A [`ListId`] is a small dense number allocated by the store when a list is created; it
//! prefixes every per-list key so that a list's messages are one contiguous key range.
//! A [`MessageKey`] is a list plus that list's sequence number, which is the order in which
//! the archive received the message.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Dense numeric identifier of a list inside the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListId(pub u32);

/// A message in one list's archive: the list and its per-list sequence number (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MessageKey {
    pub list: ListId,
    pub seq: u64,
}

impl MessageKey {
    /// Twelve big-endian bytes, so byte order equals (list, seq) order.
    pub fn to_bytes(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.list.0.to_be_bytes());
        out[4..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Inverse of [`MessageKey::to_bytes`]; `None` for a slice of the wrong length.
    pub fn from_bytes(b: &[u8]) -> Option<MessageKey> {
        let list: [u8; 4] = b.get(..4)?.try_into().ok()?;
        let seq: [u8; 8] = b.get(4..12)?.try_into().ok()?;
        if b.len() != 12 {
            return None;
        }
        Some(MessageKey {
            list: ListId(u32::from_be_bytes(list)),
            seq: u64::from_be_bytes(seq),
        })
    }

    /// One u64 for the search index: 24 bits of list, 40 bits of sequence.
    pub fn to_u64(self) -> u64 {
        (u64::from(self.list.0) << 40) | (self.seq & ((1 << 40) - 1))
    }

    /// Inverse of [`MessageKey::to_u64`].
    pub fn from_u64(v: u64) -> MessageKey {
        MessageKey {
            list: ListId((v >> 40) as u32),
            seq: v & ((1 << 40) - 1),
        }
    }
}

impl fmt::Display for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.list.0, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_round_trip_and_order() {
        let a = MessageKey {
            list: ListId(1),
            seq: 255,
        };
        let b = MessageKey {
            list: ListId(1),
            seq: 256,
        };
        let c = MessageKey {
            list: ListId(2),
            seq: 1,
        };
        assert!(a.to_bytes() < b.to_bytes());
        assert!(b.to_bytes() < c.to_bytes());
        assert_eq!(MessageKey::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(MessageKey::from_u64(c.to_u64()), c);
        assert_eq!(MessageKey::from_bytes(&[1, 2, 3]), None);
    }
}
