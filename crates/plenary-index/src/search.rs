//! The read side of the index.

use crate::query::{self, QueryLimits};
use crate::schema::{self, Fields};
use crate::IndexError;
use plenary_core::{ListId, MessageKey};
use std::path::Path;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

/// A search as the web layer asks for it.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    pub list: Option<ListId>,
    pub offset: usize,
    pub limit: usize,
}

/// A piece of a snippet; highlighted pieces are the matched words. The web layer escapes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SnippetPart {
    pub text: String,
    pub highlighted: bool,
}

/// One result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    #[serde(skip)]
    pub key: MessageKey,
    pub message_id: String,
    pub subject: String,
    pub from: String,
    pub date: i64,
    pub score: f32,
    pub snippet: Vec<SnippetPart>,
}

/// One page of results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchResults {
    pub total: usize,
    pub offset: usize,
    pub hits: Vec<Hit>,
}

/// Shared read handle on the index.
#[derive(Clone)]
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
    limits: QueryLimits,
}

impl SearchIndex {
    /// Open the index in `dir`, creating it (empty) if needed. Returns whether it was created
    /// or recreated, in which case the caller re-queues the store for indexing.
    pub fn open(dir: &Path, limits: QueryLimits) -> Result<(SearchIndex, bool), IndexError> {
        let (schema, fields) = schema::build();
        let version_file = dir.join("plenary-schema-version");
        let version_ok = std::fs::read_to_string(&version_file)
            .map(|v| v.trim() == schema::SCHEMA_VERSION.to_string())
            .unwrap_or(false);
        let open_existing = || -> Result<Index, tantivy::TantivyError> {
            let index = Index::open_in_dir(dir)?;
            if index.schema() != schema {
                return Err(tantivy::TantivyError::SchemaError("schema differs".into()));
            }
            Ok(index)
        };
        let (index, created) = match (version_ok, open_existing()) {
            (true, Ok(index)) => (index, false),
            (_, result) => {
                if let Err(e) = &result {
                    if dir.join("meta.json").exists() {
                        tracing::warn!(dir = %dir.display(), error = %e, "search index unusable; rebuilding it from the store");
                    }
                }
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(|e| IndexError::Io {
                        path: dir.to_path_buf(),
                        source: e,
                    })?;
                }
                std::fs::create_dir_all(dir).map_err(|e| IndexError::Io {
                    path: dir.to_path_buf(),
                    source: e,
                })?;
                let mmap = MmapDirectory::open(dir).map_err(|e| IndexError::Open {
                    path: dir.to_path_buf(),
                    source: e.into(),
                })?;
                let index = Index::create(mmap, schema, tantivy::IndexSettings::default()).map_err(|source| {
                    IndexError::Open {
                        path: dir.to_path_buf(),
                        source,
                    }
                })?;
                std::fs::write(&version_file, schema::SCHEMA_VERSION.to_string()).map_err(|e| IndexError::Io {
                    path: version_file.clone(),
                    source: e,
                })?;
                (index, true)
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()?;
        Ok((
            SearchIndex {
                index,
                reader,
                fields,
                limits,
            },
            created,
        ))
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn fields(&self) -> Fields {
        self.fields
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Make the latest commit visible now (tests and the indexer after a commit).
    pub fn reload(&self) -> Result<(), IndexError> {
        Ok(self.reader.reload()?)
    }

    /// Number of indexed documents.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Run a search. Query errors are for the user; other errors are internal.
    pub fn search(&self, req: &SearchRequest) -> Result<SearchResults, IndexError> {
        query::check(&req.query, &self.limits)?;
        if req.offset > self.limits.max_offset {
            return Err(query::QueryError::OffsetTooLarge {
                limit: self.limits.max_offset,
            }
            .into());
        }
        let limit = req.limit.clamp(1, self.limits.max_page_size);
        let f = self.fields;
        let mut parser = QueryParser::for_index(&self.index, vec![f.subject, f.from, f.body, f.attachment]);
        parser.set_conjunction_by_default();
        parser.set_field_boost(f.subject, 2.0);
        let (user_query, _errors) = parser.parse_query_lenient(&req.query);
        let query: Box<dyn Query> = match req.list {
            Some(list) => Box::new(BooleanQuery::new(vec![
                (Occur::Must, user_query),
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_u64(f.list, u64::from(list.0)),
                        IndexRecordOption::Basic,
                    )),
                ),
            ])),
            None => user_query,
        };
        let searcher = self.reader.searcher();
        let (top, total) = searcher.search(
            &query,
            &(
                TopDocs::with_limit(limit).and_offset(req.offset).order_by_score(),
                Count,
            ),
        )?;
        let mut gen = SnippetGenerator::create(&searcher, &*query, f.body)?;
        gen.set_max_num_chars(240);
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let text = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let snippet = gen.snippet_from_doc(&doc);
            let fragment = snippet.fragment();
            let mut parts = Vec::new();
            let mut at = 0;
            for r in snippet.highlighted() {
                if r.start > at {
                    parts.push(SnippetPart {
                        text: fragment[at..r.start].to_string(),
                        highlighted: false,
                    });
                }
                parts.push(SnippetPart {
                    text: fragment[r.clone()].to_string(),
                    highlighted: true,
                });
                at = r.end;
            }
            if at < fragment.len() {
                parts.push(SnippetPart {
                    text: fragment[at..].to_string(),
                    highlighted: false,
                });
            }
            hits.push(Hit {
                key: MessageKey::from_u64(doc.get_first(f.key).and_then(|v| v.as_u64()).unwrap_or_default()),
                message_id: text(f.message_id),
                subject: text(f.subject),
                from: text(f.from),
                date: doc.get_first(f.date).and_then(|v| v.as_i64()).unwrap_or_default(),
                score,
                snippet: parts,
            });
        }
        Ok(SearchResults {
            total,
            offset: req.offset,
            hits,
        })
    }
}
