//! Handlers. Each one loads what it needs from the store, redacts it, and renders.

use crate::error::json_error;
use crate::{urls, AppState, WebError};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Json;
use plenary_index::{IndexError, SearchRequest};
use plenary_redact::{Policy, PublicMessage, PublicSummary};
use plenary_store::{ListRecord, StoredMessage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

type St = State<Arc<AppState>>;

/// Template context as JSON: `ctx! { a, b => expr }`.
macro_rules! ctx {
    (@pair $m:ident, $key:ident) => { ctx!(@pair $m, $key => $key) };
    (@pair $m:ident, $key:ident => $value:expr) => {
        $m.insert(stringify!($key).to_string(), serde_json::to_value(&$value).unwrap_or(serde_json::Value::Null));
    };
    ($($key:ident $(=> $value:expr)?),* $(,)?) => {{
        let mut m = serde_json::Map::new();
        $( ctx!(@pair m, $key $(=> $value)?); )*
        serde_json::Value::Object(m)
    }};
}

fn fmt_date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H:%M UTC")
        .to_string()
}

fn iso_date(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default().to_rfc3339()
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

#[derive(Serialize)]
struct Crumb {
    label: String,
    url: Option<String>,
}

fn crumbs(list: Option<&ListRecord>, last: Option<&str>) -> Vec<Crumb> {
    let mut v = vec![Crumb {
        label: "Lists".into(),
        url: Some("/".into()),
    }];
    if let Some(l) = list {
        v.push(Crumb {
            label: l.address.to_string(),
            url: Some(urls::list(l.address.as_str())),
        });
    }
    if let Some(t) = last {
        v.push(Crumb {
            label: t.to_string(),
            url: None,
        });
    }
    v
}

impl AppState {
    pub(crate) fn page(&self, name: &str, mut ctx: serde_json::Value) -> Result<Response, WebError> {
        if let Some(m) = ctx.as_object_mut() {
            m.insert("site_name".into(), self.settings.site_name.clone().into());
        }
        let html = self
            .templates
            .render(name, minijinja::Value::from(minijinja::value::Serde(ctx)))?;
        Ok(Html(html).into_response())
    }

    pub(crate) fn list_record(&self, address: &str) -> Result<ListRecord, WebError> {
        self.store.list(address)?.ok_or(WebError::NotFound)
    }

    fn stored(&self, list: &ListRecord, mid: &str) -> Result<StoredMessage, WebError> {
        let key = self.store.find(list.id, mid)?.ok_or(WebError::NotFound)?;
        let m = self.store.message(key)?.ok_or(WebError::NotFound)?;
        if m.meta.no_archive {
            return Err(WebError::NotFound);
        }
        Ok(m)
    }

    fn public(&self, policy: &Policy, m: &StoredMessage) -> Result<PublicMessage, WebError> {
        let raw = self.store.raw(m)?;
        plenary_redact::redact(m.key, &m.meta, &raw, policy).ok_or(WebError::NotFound)
    }
}

#[derive(Serialize)]
struct SummaryView {
    url: String,
    thread_url: String,
    message_id: String,
    subject: String,
    author: String,
    date: String,
    date_iso: String,
}

fn summary_view(list: &ListRecord, s: &PublicSummary) -> SummaryView {
    let a = list.address.as_str();
    SummaryView {
        url: urls::message(a, s.message_id()),
        thread_url: urls::thread(a, s.message_id()),
        message_id: s.message_id().to_string(),
        subject: s.subject().to_string(),
        author: s.author().to_string(),
        date: fmt_date(s.date()),
        date_iso: iso_date(s.date()),
    }
}

pub async fn healthz(State(st): St) -> Response {
    if st.store.has_failed() {
        return (StatusCode::SERVICE_UNAVAILABLE, "store failed\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

pub async fn style(State(st): St) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        st.templates.css().to_string(),
    )
        .into_response()
}

pub async fn not_found() -> WebError {
    WebError::NotFound
}

#[derive(Serialize)]
struct ListView {
    address: String,
    name: String,
    description: String,
    url: String,
    count: u64,
}

impl ListView {
    fn of(l: &ListRecord, count: u64) -> ListView {
        ListView {
            address: l.address.to_string(),
            name: l.name.clone(),
            description: l.description.clone(),
            url: urls::list(l.address.as_str()),
            count,
        }
    }
}

fn list_views(st: &AppState) -> Result<Vec<ListView>, WebError> {
    let mut out = Vec::new();
    for l in st.store.lists()? {
        out.push(ListView::of(&l, st.store.archived_count(l.id)?));
    }
    Ok(out)
}

pub async fn index(State(st): St) -> Result<Response, WebError> {
    let lists = list_views(&st)?;
    st.page("index.html", ctx! { lists, breadcrumbs => Vec::<Crumb>::new() })
}

pub async fn list_redirect(Path(list): Path<String>) -> Redirect {
    Redirect::permanent(&urls::list(&list))
}

#[derive(Serialize)]
struct ThreadView {
    url: String,
    subject: String,
    author: String,
    count: usize,
    last: String,
    last_iso: String,
}

/// Threads with recent activity: the newest messages grouped by thread root.
fn recent_threads(st: &AppState, list: &ListRecord, max_threads: usize) -> Result<Vec<ThreadView>, WebError> {
    let policy = Policy::for_list(list.address.as_str());
    let mut order: Vec<(plenary_core::MessageKey, i64)> = Vec::new();
    let mut roots: HashMap<plenary_core::MessageKey, StoredMessage> = HashMap::new();
    for (key, date) in st.store.recent(list.id, 300)? {
        let Some(m) = st.store.message(key)? else { continue };
        let root = st.store.thread_root(m)?;
        if let std::collections::hash_map::Entry::Vacant(e) = roots.entry(root.key) {
            order.push((root.key, date));
            e.insert(root);
        }
        if order.len() >= max_threads {
            break;
        }
    }
    let mut out = Vec::new();
    for (key, last) in order {
        let Some(root) = roots.get(&key) else { continue };
        let Some(s) = plenary_redact::summarize(root.key, &root.meta, &policy) else {
            continue;
        };
        out.push(ThreadView {
            url: urls::thread(list.address.as_str(), s.message_id()),
            subject: s.subject().to_string(),
            author: s.author().to_string(),
            count: st.store.thread_size(root)?,
            last: fmt_date(last),
            last_iso: iso_date(last),
        });
    }
    Ok(out)
}

pub async fn list(
    State(st): St,
    Path(address): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, WebError> {
    let list = st.list_record(&address)?;
    let threads = recent_threads(&st, &list, 30)?;
    #[derive(Serialize)]
    struct M {
        url: String,
        label: String,
        count: u64,
    }
    let months: Vec<M> = st
        .store
        .months(list.id)?
        .into_iter()
        .map(|m| M {
            url: urls::month(list.address.as_str(), m.year, m.month),
            label: format!("{} {}", MONTHS[(m.month.clamp(1, 12) - 1) as usize], m.year),
            count: m.count,
        })
        .collect();
    let view = ListView::of(&list, 0);
    let (csrf, cookie) = crate::membership::csrf_token(&headers, &st.settings.base_url);
    let subscription = serde_json::to_value(list.settings.subscription).unwrap_or_default();
    let mut res = st.page(
        "list.html",
        ctx! { list => view, threads, months, scope_list => list.address.as_str(), breadcrumbs => crumbs(Some(&list), None),
               csrf, subscription, owner_address => list.address.sub("owner") },
    )?;
    crate::membership::set_cookie(&mut res, cookie);
    Ok(res)
}

pub async fn month(
    State(st): St,
    Path((address, year, month)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let list = st.list_record(&address)?;
    let policy = Policy::for_list(list.address.as_str());
    let (Ok(y), Ok(m)) = (year.parse::<i32>(), month.parse::<u32>()) else {
        return Err(WebError::NotFound);
    };
    if !(1..=12).contains(&m) || !(1..=9999).contains(&y) || year.len() != 4 || month.len() != 2 {
        return Err(WebError::NotFound);
    }
    let start = chrono::NaiveDate::from_ymd_opt(y, m, 1).ok_or(WebError::NotFound)?;
    let next = if m == 12 {
        chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or(WebError::NotFound)?;
    let ts = |d: chrono::NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or_default()
    };
    let mut messages = Vec::new();
    for (key, _) in st.store.between(list.id, ts(start), ts(next), 5000)? {
        let Some(stored) = st.store.message(key)? else { continue };
        if let Some(s) = plenary_redact::summarize(stored.key, &stored.meta, &policy) {
            messages.push(summary_view(&list, &s));
        }
    }
    let label = format!("{} {}", MONTHS[(m - 1) as usize], y);
    st.page(
        "month.html",
        ctx! { list => ListView::of(&list, 0),
                   label => &label, messages, scope_list => list.address.as_str(), breadcrumbs => crumbs(Some(&list), Some(&label)) },
    )
}

pub async fn message(State(st): St, Path((address, mid)): Path<(String, String)>) -> Result<Response, WebError> {
    let list = st.list_record(&address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let msg = st.public(&policy, &stored)?;
    let parent = match st.store.parent(&stored)? {
        Some(p) => plenary_redact::summarize(p.key, &p.meta, &policy).map(|s| summary_view(&list, &s)),
        None => None,
    };
    let mut replies = Vec::new();
    for k in st.store.children(list.id, msg.message_id())?.into_iter().take(200) {
        if let Some(m) = st.store.message(k)? {
            // Only direct replies: messages whose nearest parent is this one.
            if m.meta.parents().next() == Some(msg.message_id()) {
                if let Some(s) = plenary_redact::summarize(m.key, &m.meta, &policy) {
                    replies.push(summary_view(&list, &s));
                }
            }
        }
    }
    let a = list.address.as_str();
    st.page(
        "message.html",
        ctx! {
            list => ListView::of(&list, 0),
            msg => &msg,
            parent, replies,
            thread_url => urls::thread(a, msg.message_id()),
            raw_url => urls::raw(a, msg.message_id()),
            permalink => format!("{}{}", st.settings.base_url, urls::message(a, msg.message_id())),
            scope_list => a,
            breadcrumbs => crumbs(Some(&list), Some(msg.subject())),
        },
    )
}

pub async fn raw(State(st): St, Path((address, mid)): Path<(String, String)>) -> Result<Response, WebError> {
    let list = st.list_record(&address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let msg = st.public(&policy, &stored)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.to_raw_text()).into_response())
}

pub async fn thread(State(st): St, Path((address, mid)): Path<(String, String)>) -> Result<Response, WebError> {
    let list = st.list_record(&address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let current = stored.key;
    let root = st.store.thread_root(stored)?;
    let members = st.store.thread_members(&root)?;
    // Depth: distance to the root through each message's nearest parent inside the thread.
    let by_id: HashMap<&str, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.meta.message_id.as_str(), i))
        .collect();
    let parent_of: Vec<Option<usize>> = members
        .iter()
        .enumerate()
        .map(|(i, m)| m.meta.parents().filter_map(|p| by_id.get(p).copied()).find(|&j| j != i))
        .collect();
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = parent_of[i] {
            d += 1;
            i = p;
            if d >= 8 {
                break;
            }
        }
        d
    };
    // Order: depth-first from the root, children by date.
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
    for (i, p) in parent_of.iter().enumerate() {
        if let Some(p) = p {
            kids[*p].push(i);
        }
    }
    for k in kids.iter_mut() {
        k.sort_by_key(|&i| members[i].meta.date);
    }
    let mut order = Vec::with_capacity(members.len());
    let mut seen = vec![false; members.len()];
    let mut stack = vec![0usize];
    // Messages with no parent inside the thread (besides the root) hang off the root.
    let mut orphans: Vec<usize> = (1..members.len()).filter(|&i| parent_of[i].is_none()).collect();
    orphans.sort_by_key(|&i| members[i].meta.date);
    kids[0].extend(orphans);
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push(i);
        for &c in kids[i].iter().rev() {
            stack.push(c);
        }
    }
    #[derive(Serialize)]
    struct Item {
        url: String,
        subject: String,
        author: String,
        date: String,
        date_iso: String,
        body: String,
        depth: usize,
        current: bool,
    }
    let mut messages = Vec::new();
    for i in order {
        let m = &members[i];
        let Ok(p) = st.public(&policy, m) else { continue };
        messages.push(Item {
            url: urls::message(list.address.as_str(), p.message_id()),
            subject: p.subject().to_string(),
            author: p.author().to_string(),
            date: fmt_date(p.date()),
            date_iso: iso_date(p.date()),
            body: p.body().to_string(),
            depth: if i == 0 { 0 } else { depth(i).max(1) },
            current: m.key == current,
        });
    }
    let subject = messages.first().map(|m| m.subject.clone()).unwrap_or_default();
    let a = list.address.as_str();
    st.page(
        "thread.html",
        ctx! {
            list => ListView::of(&list, 0),
            subject => &subject, messages, scope_list => a, breadcrumbs => crumbs(Some(&list), Some(&subject)),
        },
    )
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    list: Option<String>,
    page: Option<String>,
}

struct SearchOutcome {
    results: plenary_index::SearchResults,
    lists: HashMap<u32, String>,
}

fn run_search(st: &AppState, p: &SearchParams) -> Result<Option<SearchOutcome>, WebError> {
    let q = p.q.as_deref().unwrap_or("").trim();
    if q.is_empty() {
        return Ok(None);
    }
    let list_id = match p.list.as_deref().filter(|l| !l.is_empty()) {
        Some(addr) => Some(
            st.list_record(addr)
                .map_err(|_| WebError::BadRequest("There is no such list to search in.".into()))?
                .id,
        ),
        None => None,
    };
    let page: usize = match p.page.as_deref() {
        None | Some("") => 1,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| WebError::BadRequest("The page number is not valid.".into()))?,
    };
    let size = st.settings.page_size;
    let offset = (page - 1).saturating_mul(size);
    let req = SearchRequest {
        query: q.to_string(),
        list: list_id,
        offset,
        limit: size,
    };
    let results = match st.search.search(&req) {
        Ok(r) => r,
        Err(IndexError::Query(e)) => return Err(WebError::BadRequest(e.to_string())),
        Err(e) => return Err(WebError::SearchUnavailable(e.to_string())),
    };
    let lists = st
        .store
        .lists()?
        .into_iter()
        .map(|l| (l.id.0, l.address.to_string()))
        .collect();
    Ok(Some(SearchOutcome { results, lists }))
}

pub async fn search(State(st): St, Query(p): Query<SearchParams>) -> Result<Response, WebError> {
    let scope = p.list.clone().filter(|l| !l.is_empty());
    let q = p.q.clone().unwrap_or_default();
    let outcome = match run_search(&st, &p) {
        Ok(o) => o,
        Err(WebError::BadRequest(msg)) => {
            let mut r = st.page(
                "search.html",
                ctx! { query => &q, error => msg, scope_list => &scope, breadcrumbs => crumbs(None, Some("Search")) },
            )?;
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    #[derive(Serialize)]
    struct HitView {
        url: String,
        subject: String,
        from: String,
        date: String,
        list: Option<String>,
        snippet: Vec<plenary_index::SnippetPart>,
    }
    let Some(o) = outcome else {
        return st.page(
            "search.html",
            ctx! { query => &q, scope_list => &scope, breadcrumbs => crumbs(None, Some("Search")) },
        );
    };
    let hits: Vec<HitView> = o
        .results
        .hits
        .iter()
        .map(|h| {
            let addr = o.lists.get(&h.key.list.0).cloned().unwrap_or_default();
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
            }
        })
        .collect();
    let size = st.settings.page_size;
    let page = o.results.offset / size + 1;
    let link = |n: usize| {
        let mut u = format!("/search?q={}", urls::query_value(&q));
        if let Some(l) = &scope {
            u.push_str(&format!("&list={}", urls::query_value(l)));
        }
        u.push_str(&format!("&page={n}"));
        u
    };
    let prev_url = (page > 1).then(|| link(page - 1));
    let next_url = (o.results.offset + o.results.hits.len() < o.results.total).then(|| link(page + 1));
    st.page(
        "search.html",
        ctx! { query => &q, results => &o.results, hits, prev_url, next_url, scope_list => &scope, breadcrumbs => crumbs(None, Some("Search")) },
    )
}

// ---- JSON API --------------------------------------------------------------------------

pub async fn api_lists(State(st): St) -> Response {
    match list_views(&st) {
        Ok(lists) => Json(serde_json::json!({ "lists": lists.iter().map(|l| serde_json::json!({
            "address": l.address, "name": l.name, "description": l.description, "messages": l.count,
            "url": l.url,
        })).collect::<Vec<_>>() }))
        .into_response(),
        Err(e) => json_error(e),
    }
}

#[derive(Deserialize)]
pub struct PageParams {
    page: Option<String>,
}

pub async fn api_messages(State(st): St, Path(address): Path<String>, Query(p): Query<PageParams>) -> Response {
    let r = (|| -> Result<serde_json::Value, WebError> {
        let list = st.list_record(&address)?;
        let policy = Policy::for_list(list.address.as_str());
        let page: usize = match p.page.as_deref() {
            None | Some("") => 1,
            Some(s) => s
                .parse()
                .ok()
                .filter(|n| *n >= 1 && *n <= 10_000)
                .ok_or_else(|| WebError::BadRequest("The page number is not valid.".into()))?,
        };
        let per = 50usize;
        let want = page * per;
        let keys = st.store.recent(list.id, want)?;
        let mut items = Vec::new();
        for (key, _) in keys.into_iter().skip((page - 1) * per) {
            if let Some(m) = st.store.message(key)? {
                if let Some(s) = plenary_redact::summarize(m.key, &m.meta, &policy) {
                    items.push(serde_json::json!({
                        "message_id": s.message_id(), "subject": s.subject(), "author": s.author(),
                        "date": iso_date(s.date()), "in_reply_to": s.parent(),
                        "url": urls::message(list.address.as_str(), s.message_id()),
                    }));
                }
            }
        }
        let total = st.store.archived_count(list.id)?;
        Ok(
            serde_json::json!({ "list": list.address.as_str(), "page": page, "per_page": per, "total": total, "messages": items }),
        )
    })();
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => json_error(e),
    }
}

pub async fn api_message(State(st): St, Path((address, mid)): Path<(String, String)>) -> Response {
    let r = (|| -> Result<serde_json::Value, WebError> {
        let list = st.list_record(&address)?;
        let policy = Policy::for_list(list.address.as_str());
        let stored = st.stored(&list, &mid)?;
        let msg = st.public(&policy, &stored)?;
        let mut v = serde_json::to_value(&msg).map_err(|e| WebError::Internal(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.insert("list".into(), list.address.as_str().into());
            o.insert("date".into(), iso_date(msg.date()).into());
            o.insert(
                "url".into(),
                urls::message(list.address.as_str(), msg.message_id()).into(),
            );
        }
        Ok(v)
    })();
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => json_error(e),
    }
}

pub async fn api_search(State(st): St, Query(p): Query<SearchParams>) -> Response {
    match run_search(&st, &p) {
        Ok(None) => json_error(WebError::BadRequest("Missing q.".into())),
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
        Err(e) => json_error(e),
    }
}
