//! The search index: a tantivy projection of the store, holding only redacted text.
//!
//! - [`schema`] defines every field once.
//! - [`Indexer`] owns the only `IndexWriter`. It drains the store's index queue, builds each
//!   document from a [`plenary_redact::PublicMessage`] (so the index never holds text the
//!   public may not see, and snippets cannot leak), deletes-then-adds by message key (so
//!   re-indexing is idempotent), commits in batches, and only then removes the keys from
//!   the queue. After a crash the queue still holds whatever was not committed.
//! - [`SearchIndex`] is the read side: one reader for the process, one searcher per query,
//!   and hard caps on query length and nesting *before* tantivy's recursive parser runs
//!   (it overflows the stack on deeply nested parentheses, which aborts the process).

mod indexer;
pub mod query;
pub mod schema;
mod search;
mod stem;

pub use indexer::{Indexer, IndexerSettings};
pub use query::{QueryError, QueryLimits};
pub use search::{Hit, ListScope, SearchIndex, SearchRequest, SearchResults, SnippetPart, Sort};

use std::path::PathBuf;

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error("search index error: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error("cannot open the search index at {path}: {source}")]
    Open {
        path: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store error: {0}")]
    Store(#[from] plenary_store::StoreError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("the indexer panicked while indexing a batch")]
    Panicked,
}
