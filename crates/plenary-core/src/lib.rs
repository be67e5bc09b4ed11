//! Domain types and pure policy for Plenary.
//!
//! Nothing in this crate does I/O: it takes bytes and returns values, so every rule here
//! can be tested with small inputs and cannot fail for reasons outside the data.
//!
//! Layout:
//! - [`address`]: validated list addresses and the classification of an envelope recipient
//!   into a list's post address or one of its command sub-addresses.
//! - [`ids`]: the keys that name lists and messages in the store.
//! - [`mime`]: a linear-time structural pre-scan that bounds MIME nesting, part count and
//!   header size *before* any full parser sees a message (mail-parser 0.11 aborts the process
//!   on deeply nested `message/rfc822` chains, and an abort cannot be caught).
//! - [`list`]: list settings, member records and the posting rule.
//! - [`meta`]: the metadata we extract once at ingest (Message-ID, thread references, date,
//!   sender, subject), including the repairs for broken archives.

pub mod address;
pub mod ids;
pub mod list;
pub mod meta;
pub mod mime;
pub mod urls;

pub use address::{AddressError, ListAddress, MemberAddress, RecipientKind};
pub use ids::{ListId, MessageKey};
pub use meta::{MessageMeta, Origin};
pub use mime::{MimeLimits, StructureError};
