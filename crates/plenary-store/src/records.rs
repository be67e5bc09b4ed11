//! Plain records stored in sled as JSON. Internal to the daemon: no compatibility promise
//! beyond the schema version in the `meta` tree.

use plenary_core::{ListAddress, ListId, MessageKey, MessageMeta, Origin, RecipientKind};
use serde::{Deserialize, Serialize};

/// A hosted list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRecord {
    pub id: ListId,
    pub address: ListAddress,
    /// Human name, e.g. "Dynamic Coalition on Internet Standards".
    pub name: String,
    pub description: String,
    /// Unix seconds.
    pub created: i64,
}

/// A message in a list's archive.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub key: MessageKey,
    /// Where its raw bytes live in the `blobs` tree.
    pub blob: u64,
    pub chunks: u32,
    pub meta: MessageMeta,
    pub origin: Origin,
    /// Unix seconds when the store committed it.
    pub received_at: i64,
}

/// Debug prints sizes and keys, never addresses or subjects (logs are not private).
impl std::fmt::Debug for StoredMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredMessage")
            .field("key", &self.key)
            .field("size", &self.meta.size)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Mail for a list's command or owner address, stored until the list engine handles it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub list: ListId,
    pub kind: RecipientKind,
    pub blob: u64,
    pub chunks: u32,
    pub envelope_from: String,
    pub received_at: i64,
}

/// Messages in one month of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthCount {
    pub year: i32,
    pub month: u32,
    pub count: u64,
}
