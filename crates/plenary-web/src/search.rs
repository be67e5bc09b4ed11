//! Search pages, the search API and search feeds.

use crate::pages::{ctx, Req, St};
use crate::views::{crumbs, fmt_date, iso_date, page_param, Pager};
use crate::{urls, AppState, WebError};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use plenary_core::MessageKey;
use plenary_index::{Hit, IndexError, ListScope, SearchRequest, SearchResults, Sort};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Hits read to group results by thread (grouping pages over these).
const GROUP_WINDOW: usize = 100;

#[derive(Deserialize, Default, Clone)]
pub struct SearchParams {
    pub q: Option<String>,
    pub list: Option<String>,
    pub page: Option<String>,
    pub sort: Option<String>,
    pub group: Option<String>,
}

pub(crate) struct SearchOutcome {
    pub results: SearchResults,
    /// List id → address.
    pub lists: HashMap<u32, String>,
    pub sort: Sort,
    pub group: bool,
    pub page: usize,
    /// For grouped results: hits in each shown hit's thread, and the thread URLs.
    pub in_thread: Vec<(usize, Option<String>)>,
    pub groups_total: usize,
}

pub(crate) fn run_search(
    st: &AppState,
    req: &Req,
    p: &SearchParams,
    size: usize,
) -> Result<Option<SearchOutcome>, WebError> {
    let q = p.q.as_deref().unwrap_or("").trim();
    if q.is_empty() {
        return Ok(None);
    }
    let all = st.store.lists()?;
    let list_id = match p.list.as_deref().filter(|l| !l.is_empty()) {
        Some(addr) => Some(
            all.iter()
                .find(|l| l.address.as_str().eq_ignore_ascii_case(addr))
                .ok_or_else(|| WebError::BadRequest("There is no such list to search in.".into()))?
                .id,
        ),
        None => None,
    };
    let page = page_param(p.page.as_deref(), 1_000)?;
    let sort = match p.sort.as_deref() {
        None | Some("") | Some("relevance") => Sort::Relevance,
        Some("date") => Sort::Date,
        Some(_) => return Err(WebError::BadRequest("Sort by relevance or by date.".into())),
    };
    let group = matches!(p.group.as_deref(), Some("thread") | Some("1"));
    let scopes: Vec<ListScope> = all
        .iter()
        .map(|l| ListScope {
            id: l.id,
            address: l.address.to_string(),
            language: l.settings.language,
            public: st.may_read(req, l),
        })
        .collect();
    let offset = (page - 1).saturating_mul(size);
    let req = SearchRequest {
        query: q.to_string(),
        list: list_id,
        lists: scopes,
        sort,
        offset: if group { 0 } else { offset },
        limit: if group { GROUP_WINDOW } else { size },
    };
    let mut results = match st.search.search(&req) {
        Ok(r) => r,
        Err(IndexError::Query(e)) => return Err(WebError::BadRequest(e.to_string())),
        Err(e) => return Err(WebError::SearchUnavailable(e.to_string())),
    };
    let lists: HashMap<u32, String> = all.iter().map(|l| (l.id.0, l.address.to_string())).collect();
    let mut in_thread = Vec::new();
    let mut groups_total = 0;
    if group {
        // Keep the best hit of each thread, in result order, and count the others.
        let mut order: Vec<(plenary_thread::ThreadId, plenary_core::ListId)> = Vec::new();
        let mut best: HashMap<(plenary_thread::ThreadId, plenary_core::ListId), (Hit, usize)> = HashMap::new();
        let mut loose = Vec::new();
        for h in std::mem::take(&mut results.hits) {
            let t = st.threads.with(h.key.list, |t| t.thread_of(h.key.seq))?;
            match t {
                Some(t) => {
                    let k = (t, h.key.list);
                    match best.get_mut(&k) {
                        Some((_, n)) => *n += 1,
                        None => {
                            order.push(k);
                            best.insert(k, (h, 1));
                        }
                    }
                }
                None => loose.push(h),
            }
        }
        groups_total = order.len() + loose.len();
        let mut grouped: Vec<(Hit, usize)> = order.into_iter().filter_map(|k| best.remove(&k)).collect();
        grouped.extend(loose.into_iter().map(|h| (h, 1)));
        for (h, n) in grouped.into_iter().skip(offset).take(size) {
            let addr = lists.get(&h.key.list.0).cloned().unwrap_or_default();
            in_thread.push((n, Some(urls::thread(&addr, &h.message_id))));
            results.hits.push(h);
        }
        results.offset = offset;
    }
    Ok(Some(SearchOutcome {
        results,
        lists,
        sort,
        group,
        page,
        in_thread,
        groups_total,
    }))
}

fn link(q: &str, scope: &Option<String>, sort: &str, group: bool, page: usize) -> String {
    let mut u = format!("/search?q={}", urls::query_value(q));
    if let Some(l) = scope {
        u.push_str(&format!("&list={}", urls::query_value(l)));
    }
    if sort != "relevance" {
        u.push_str(&format!("&sort={sort}"));
    }
    if group {
        u.push_str("&group=thread");
    }
    if page > 1 {
        u.push_str(&format!("&page={page}"));
    }
    u
}

/// The Atom feed of a search (newest first).
fn feed_link(q: &str, scope: &Option<String>) -> String {
    link(q, scope, "date", false, 1).replacen("/search?", "/search/atom.xml?", 1)
}

pub async fn search(State(st): St, req: Req, Query(p): Query<SearchParams>) -> Result<Response, WebError> {
    let scope = p.list.clone().filter(|l| !l.is_empty());
    let q = p.q.clone().unwrap_or_default();
    let label = st.templates.tr(&req.lang, "Search");
    let size = st.settings.page_size;
    let outcome = match run_search(&st, &req, &p, size) {
        Ok(o) => o,
        Err(WebError::BadRequest(msg)) => {
            let mut r = st.page_for(
                &req,
                "search.html",
                ctx! { query => &q, error => msg, scope_list => &scope, breadcrumbs => crumbs(None, None, Some(&label)) },
            )?;
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let Some(o) = outcome else {
        return st.page_for(
            &req,
            "search.html",
            ctx! { query => &q, scope_list => &scope, breadcrumbs => crumbs(None, None, Some(&label)) },
        );
    };
    #[derive(Serialize)]
    struct HitView {
        url: String,
        subject: String,
        from: String,
        date: String,
        list: Option<String>,
        snippet: Vec<plenary_index::SnippetPart>,
        in_thread: usize,
        thread_url: Option<String>,
    }
    let hits: Vec<HitView> = o
        .results
        .hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let addr = o.lists.get(&h.key.list.0).cloned().unwrap_or_default();
            let (in_thread, thread_url) = o.in_thread.get(i).cloned().unwrap_or((0, None));
            HitView {
                url: urls::message(&addr, &h.message_id),
                subject: if h.subject.is_empty() {
                    "(no subject)".into()
                } else {
                    h.subject.clone()
                },
                from: h.from.clone(),
                date: fmt_date(h.date),
                list: if scope.is_some() { None } else { Some(addr) },
                snippet: h.snippet.clone(),
                in_thread,
                thread_url,
            }
        })
        .collect();
    let sort = match o.sort {
        Sort::Relevance => "relevance",
        Sort::Date => "date",
    };
    let total = if o.group { o.groups_total } else { o.results.total };
    let pager = Pager::new(o.page, size, total, |n| link(&q, &scope, sort, o.group, n));
    let sort_links = serde_json::json!({
        "relevance": link(&q, &scope, "relevance", false, 1),
        "date": link(&q, &scope, "date", false, 1),
        "threads": link(&q, &scope, sort, true, 1),
    });
    let feed_url = feed_link(&q, &scope);
    let mut results = serde_json::to_value(&o.results).unwrap_or_default();
    if let Some(r) = results.as_object_mut() {
        r.insert("total".into(), total.into());
    }
    st.page_for(
        &req,
        "search.html",
        ctx! { query => &q, results, hits, page => pager, sort, group => o.group, sort_links, feed_url,
        feed_url_head => &feed_url, scope_list => &scope, breadcrumbs => crumbs(None, None, Some(&label)) },
    )
}

pub async fn api_search(State(st): St, req: Req, Query(p): Query<SearchParams>) -> Response {
    match run_search(&st, &req, &p, st.settings.page_size) {
        Ok(None) => crate::error::json_error(WebError::BadRequest("Missing q.".into())),
        Ok(Some(o)) => {
            let hits: Vec<serde_json::Value> = o
                .results
                .hits
                .iter()
                .map(|h| {
                    let addr = o.lists.get(&h.key.list.0).cloned().unwrap_or_default();
                    serde_json::json!({
                        "list": addr, "message_id": h.message_id, "subject": h.subject, "from": h.from,
                        "date": iso_date(h.date), "score": h.score, "snippet": h.snippet,
                        "url": urls::message(&addr, &h.message_id),
                    })
                })
                .collect();
            Json(serde_json::json!({ "total": o.results.total, "offset": o.results.offset, "hits": hits }))
                .into_response()
        }
        Err(e) => crate::error::json_error(e),
    }
}

/// The Atom feed of a search: its newest matches.
pub async fn search_feed(State(st): St, req: Req, Query(mut p): Query<SearchParams>) -> Result<Response, WebError> {
    p.sort = Some("date".into());
    p.group = None;
    p.page = None;
    let q = p.q.clone().unwrap_or_default();
    let Some(o) = run_search(&st, &req, &p, crate::feeds::FEED_ENTRIES)? else {
        return Err(WebError::BadRequest("Missing q.".into()));
    };
    let keys: Vec<MessageKey> = o.results.hits.iter().map(|h| h.key).collect();
    let scope = p.list.clone().filter(|l| !l.is_empty());
    let self_url = format!("{}{}", st.settings.base_url, feed_link(&q, &scope));
    let html_url = format!("{}{}", st.settings.base_url, link(&q, &scope, "date", false, 1));
    crate::feeds::feed_response(&st, &req, &format!("Search: {q}"), &self_url, &html_url, None, keys)
}
