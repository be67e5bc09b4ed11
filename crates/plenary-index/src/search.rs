//! The read side of the index.

use crate::query::{self, QueryError, QueryLimits, Target};
use crate::schema::{self, Fields};
use crate::IndexError;
use plenary_core::list::Language;
use plenary_core::{ListId, MessageKey};
use std::ops::Bound;
use std::path::Path;
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser, RangeQuery, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Value};
use tantivy::snippet::SnippetGenerator;
use tantivy::{DocAddress, Index, IndexReader, Order, ReloadPolicy, TantivyDocument, Term};

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    #[default]
    Relevance,
    /// Newest first.
    Date,
}

/// A list as search sees it.
#[derive(Debug, Clone)]
pub struct ListScope {
    pub id: ListId,
    pub address: String,
    pub language: Language,
    /// False for lists whose archive is not public: never searched.
    pub public: bool,
}

/// A search as the web layer asks for it.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: String,
    /// Search only this list (the search box on a list's pages).
    pub list: Option<ListId>,
    /// Every list, so `list:` can name one and non-public ones stay out.
    pub lists: Vec<ListScope>,
    pub sort: Sort,
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
            schema::register(index.tokenizers());
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
                let index =
                    Index::create(mmap, schema.clone(), tantivy::IndexSettings::default()).map_err(|source| {
                        IndexError::Open {
                            path: dir.to_path_buf(),
                            source,
                        }
                    })?;
                std::fs::write(&version_file, schema::SCHEMA_VERSION.to_string()).map_err(|e| IndexError::Io {
                    path: version_file.clone(),
                    source: e,
                })?;
                schema::register(index.tokenizers());
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
        if req.offset > self.limits.max_offset {
            return Err(query::QueryError::OffsetTooLarge {
                limit: self.limits.max_offset,
            }
            .into());
        }
        let limit = req.limit.clamp(1, self.limits.max_page_size);
        let f = self.fields;
        // Which lists: the scope, narrowed by `list:`; never a non-public one.
        let scope_lang = req
            .list
            .and_then(|id| req.lists.iter().find(|l| l.id == id))
            .map(|l| l.language);
        let langs: Vec<usize> = match scope_lang {
            Some(l) => vec![crate::schema::Fields::lang_index(l)],
            None => (0..Language::ALL.len()).collect(),
        };
        let names = |fs: &[Field]| -> Vec<String> {
            fs.iter()
                .map(|x| self.index.schema().get_field_name(*x).to_string())
                .collect()
        };
        let subject: Vec<Field> = langs.iter().map(|i| f.subject[*i]).collect();
        let body: Vec<Field> = langs.iter().map(|i| f.body[*i]).collect();
        let parsed = query::translate(&req.query, &self.limits, |t| match t {
            Target::Subject => names(&subject),
            Target::Body => names(&body),
            Target::From => names(&[f.from]),
            Target::To => names(&[f.to]),
            Target::Attachment => names(&[f.attachment]),
        })?;
        let mut allowed: Vec<ListId> = req.lists.iter().filter(|l| l.public).map(|l| l.id).collect();
        if let Some(id) = req.list {
            allowed.retain(|l| *l == id);
        }
        for name in &parsed.lists {
            let Some(l) = req.lists.iter().find(|l| l.address == *name) else {
                return Err(QueryError::Invalid(format!("There is no list called {name}.")).into());
            };
            allowed.retain(|x| *x == l.id);
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        if parsed.text.is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        } else {
            let mut defaults = subject.clone();
            defaults.extend(&body);
            defaults.push(f.from);
            defaults.push(f.attachment);
            let mut parser = QueryParser::for_index(&self.index, defaults);
            parser.set_conjunction_by_default();
            for s in &subject {
                parser.set_field_boost(*s, 2.0);
            }
            let q = parser.parse_query(&parsed.text).map_err(|e| {
                tracing::debug!(error = %e, text = %parsed.text, "query did not parse");
                QueryError::Invalid(
                    "That search could not be understood. Check the operators (AND, OR, NOT) and the parentheses."
                        .into(),
                )
            })?;
            clauses.push((Occur::Must, q));
        }
        let lists: Vec<(Occur, Box<dyn Query>)> = allowed
            .iter()
            .map(|id| {
                let q: Box<dyn Query> = Box::new(TermQuery::new(
                    Term::from_field_u64(f.list, u64::from(id.0)),
                    IndexRecordOption::Basic,
                ));
                (Occur::Should, q)
            })
            .collect();
        if lists.is_empty() {
            return Ok(SearchResults {
                total: 0,
                offset: req.offset,
                hits: Vec::new(),
            });
        }
        clauses.push((Occur::Must, Box::new(BooleanQuery::new(lists))));
        if parsed.after.is_some() || parsed.before.is_some() {
            let lo = parsed
                .after
                .map_or(Bound::Unbounded, |a| Bound::Included(Term::from_field_i64(f.date, a)));
            let hi = parsed
                .before
                .map_or(Bound::Unbounded, |b| Bound::Excluded(Term::from_field_i64(f.date, b)));
            clauses.push((Occur::Must, Box::new(RangeQuery::new(lo, hi))));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top: Vec<(f32, DocAddress)>;
        let total;
        match req.sort {
            Sort::Relevance => {
                (top, total) = searcher.search(
                    &query,
                    &(
                        TopDocs::with_limit(limit).and_offset(req.offset).order_by_score(),
                        Count,
                    ),
                )?;
            }
            Sort::Date => {
                let (by_date, n) = searcher.search(
                    &query,
                    &(
                        TopDocs::with_limit(limit)
                            .and_offset(req.offset)
                            .order_by_fast_field::<i64>("date", Order::Desc),
                        Count,
                    ),
                )?;
                top = by_date.into_iter().map(|(_, a)| (0.0, a)).collect();
                total = n;
            }
        }
        // The query's body terms (stemmed, folded), to find where a body matches cheaply.
        let mut body_terms: Vec<String> = Vec::new();
        query.query_terms(&mut |term, _| {
            if f.body.contains(&term.field()) {
                if let Some(t) = term.value().as_str() {
                    let t = t.to_ascii_lowercase();
                    if !t.is_empty() && !body_terms.contains(&t) {
                        body_terms.push(t);
                    }
                }
            }
        });
        // One snippet generator per body field that results come from.
        let mut gens: std::collections::HashMap<usize, SnippetGenerator> = std::collections::HashMap::new();
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let li = doc.get_first(f.lang).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            let li = li.min(Language::ALL.len() - 1);
            let gen = match gens.entry(li) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut g = SnippetGenerator::create(&searcher, &query, f.body[li])?;
                    g.set_max_num_chars(240);
                    e.insert(g)
                }
            };
            let text = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let snippet = best_snippet(gen, &text(f.body[li]), &body_terms);
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
                subject: text(f.subject[li]),
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

/// A snippet from a window of the body that contains a match. The snippet generator
/// tokenises and stems all the text it is given, which for whole bodies measured 77 % of a
/// search's CPU. So first the window around the earliest place where a query term's first
/// letters appear (a stem is nearly always a prefix of the word; byte offsets survive ASCII
/// lower-casing); when no term appears at all, the opening; only if that heuristic fails,
/// windows in turn up to [`SNIPPET_SCAN`] bytes.
fn best_snippet(gen: &SnippetGenerator, body: &str, terms: &[String]) -> tantivy::snippet::Snippet {
    const WINDOW: usize = 1_500;
    const OVERLAP: usize = 200;
    let boundary = |mut i: usize| {
        i = i.min(body.len());
        while !body.is_char_boundary(i) {
            i += 1;
        }
        i
    };
    let lower = body.to_ascii_lowercase();
    let first_hit = terms
        .iter()
        .filter_map(|t| {
            let mut n = t.len().min(5);
            while !t.is_char_boundary(n) {
                n -= 1;
            }
            lower.find(&t[..n])
        })
        .min();
    if let Some(at) = first_hit {
        // A little more than the 240 characters a snippet shows, on both sides of the match.
        let start = boundary(at.saturating_sub(300));
        let s = gen.snippet(&body[start..boundary(at + 400)]);
        if !s.highlighted().is_empty() {
            return s;
        }
    } else if !terms.is_empty() {
        // No term's first letters anywhere in the body: it matched by its subject, sender or
        // an attachment name. Its opening is the snippet.
        return gen.snippet(&body[..boundary(700)]);
    }
    let mut start = 0;
    let mut first = None;
    while start < body.len() && start < SNIPPET_SCAN {
        let end = boundary(start + WINDOW);
        let s = gen.snippet(&body[start..end]);
        if !s.highlighted().is_empty() {
            return s;
        }
        first.get_or_insert(s);
        if end >= body.len() {
            break;
        }
        start = boundary(end - OVERLAP);
    }
    first.unwrap_or_else(|| gen.snippet(""))
}

/// How much of a body is searched for a snippet.
const SNIPPET_SCAN: usize = 30_000;
