//! The only place field names and options are defined.

use tantivy::schema::{Field, Schema, FAST, INDEXED, STORED, STRING, TEXT};

/// Handles of every field, built once with the schema.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// [`plenary_core::MessageKey::to_u64`]: the exact-match id used to delete and re-add.
    pub key: Field,
    /// List id, for scoping and visibility.
    pub list: Field,
    /// Unix seconds.
    pub date: Field,
    pub message_id: Field,
    pub subject: Field,
    /// Redacted author name and obfuscated address.
    pub from: Field,
    /// Redacted body text, stored for snippets.
    pub body: Field,
    /// Attachment names.
    pub attachment: Field,
}

/// Version of the schema; a different one on disk triggers a rebuild from the store.
pub const SCHEMA_VERSION: u32 = 1;

pub fn build() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        key: b.add_u64_field("key", INDEXED | STORED | FAST),
        list: b.add_u64_field("list", INDEXED | STORED | FAST),
        date: b.add_i64_field("date", INDEXED | STORED | FAST),
        message_id: b.add_text_field("message_id", STRING | STORED),
        subject: b.add_text_field("subject", TEXT | STORED),
        from: b.add_text_field("from", TEXT | STORED),
        body: b.add_text_field("body", TEXT | STORED),
        attachment: b.add_text_field("attachment", TEXT | STORED),
    };
    (b.build(), fields)
}
