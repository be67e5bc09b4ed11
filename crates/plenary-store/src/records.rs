//! Plain records stored in sled as JSON. Internal to the daemon: no compatibility promise
//! beyond the schema version in the `meta` tree.

pub use crate::spool::BlobRef;
use plenary_core::list::{Delivery, JoinedVia, ListSettings};
use plenary_core::{ListAddress, ListId, MemberAddress, MessageKey, MessageMeta, Origin, RecipientKind};
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
    /// Policies, owners and options (absent in lists made before the list engine).
    #[serde(default)]
    pub settings: ListSettings,
}

/// A message in a list's archive.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub key: MessageKey,
    /// Where its raw bytes live in the spool.
    pub raw: BlobRef,
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
    pub raw: BlobRef,
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

/// A post held for moderation. Not archived and not delivered until approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPost {
    pub id: u64,
    pub list: ListId,
    pub raw: BlobRef,
    pub meta: MessageMeta,
    pub origin: Origin,
    pub envelope_from: String,
    pub reason: String,
    pub received_at: i64,
    /// Set once moderators were sent a notice (with a token to reply to).
    #[serde(default)]
    pub notified: bool,
}

/// One moderation or membership action, in the append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub at: i64,
    pub list: ListId,
    /// Who acted: a moderator's address, `cli`, `web`, `system`.
    pub actor: String,
    /// e.g. `approve`, `reject`, `discard`, `subscribe`, `unsubscribe`, `disable`.
    pub action: String,
    /// What it was about: a Message-ID or a member address.
    pub subject: String,
    #[serde(default)]
    pub reason: String,
}

/// What a confirmation token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingAction {
    /// Double opt-in: the address confirms it wants to join.
    Subscribe {
        list: ListId,
        address: MemberAddress,
        name: String,
        delivery: Delivery,
        via: JoinedVia,
    },
    /// The owner approves a confirmed subscription (policy `approve`).
    ApproveSubscription {
        list: ListId,
        address: MemberAddress,
        name: String,
        delivery: Delivery,
        via: JoinedVia,
    },
    /// The address confirms it wants to leave.
    Unsubscribe { list: ListId, address: MemberAddress },
    /// A moderator decides on a held post.
    Moderate { list: ListId, held: u64 },
    /// A member asked to read a members-only archive on the web.
    ArchiveAccess { list: ListId, address: MemberAddress },
}

/// A single-use token and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub action: PendingAction,
    pub created: i64,
    pub expires: i64,
}

/// What a delivery job sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// A post, to every member who takes single posts.
    Post {
        key: MessageKey,
        author: Option<MemberAddress>,
    },
    /// A digest of these posts, to every digest member.
    Digest { keys: Vec<MessageKey>, number: u64 },
    /// A message the list composed (confirmation, notice) to named recipients.
    Notice { to: Vec<MemberAddress>, raw: String },
    /// Stored mail (owner mail) forwarded to named recipients.
    Forward { to: Vec<MemberAddress>, raw: BlobRef },
}

/// A durable delivery job. Recipients are walked in address order; `cursor` is the last
/// recipient handed to the relay (or parked for retry) and is saved after every batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutJob {
    pub id: u64,
    pub list: ListId,
    pub what: JobKind,
    pub created: i64,
    #[serde(default)]
    pub cursor: Option<String>,
    /// True once every recipient was tried once; the job ends when its retries end too.
    #[serde(default)]
    pub walked: bool,
    #[serde(default)]
    pub delivered: u64,
}

/// A recipient whose delivery failed temporarily, waiting for its next try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryEntry {
    pub job: u64,
    pub rcpt: MemberAddress,
    pub attempts: u32,
    pub first_failure: i64,
    /// Unix seconds of the next try.
    pub due: i64,
    pub last_error: String,
}
