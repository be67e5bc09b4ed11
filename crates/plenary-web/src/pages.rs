//! Archive pages. Each handler loads what it needs from the store, redacts it, and renders.

use crate::render::{text_to_html, Labels};
use crate::views::{crumbs, fmt_date, iso_date, page_param, summary_view, Crumb, Pager, SummaryView, ThreadRow};
use crate::{urls, AppState, WebError};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use plenary_core::list::ArchiveVisibility;
use plenary_core::MessageKey;
use plenary_redact::{Policy, PublicMessage};
use plenary_store::{ListRecord, StoredMessage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub(crate) type St = State<Arc<AppState>>;

/// Threads or messages per listing page.
pub const PER_PAGE: usize = 50;
/// Messages per thread page.
pub const THREAD_PAGE: usize = 50;

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
pub(crate) use ctx;

/// What every page needs to know about the request: the reader's language and where they are.
pub struct Req {
    /// The Cookie header (archive-access cookies are checked against it).
    pub cookie: String,
    pub lang: String,
    /// Path and query of this page (for the language switch to come back to).
    pub here: String,
}

impl FromRequestParts<Arc<AppState>> for Req {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<AppState>) -> Result<Req, Self::Rejection> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(Req::from_headers(st, &parts.headers, here))
    }
}

impl Req {
    /// The reader's language (a valid `plenary_lang` choice, else `Accept-Language`) and
    /// cookies, from a request's headers.
    pub(crate) fn from_headers(st: &AppState, headers: &HeaderMap, here: String) -> Req {
        let cookie = cookie_header(headers);
        let accept = headers.get(header::ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
        let lang = st
            .templates
            .catalogs()
            .negotiate(cookie_named(&cookie, LANG_COOKIE), accept);
        Req { cookie, lang, here }
    }
}

/// Every Cookie header of a request, joined.
pub(crate) fn cookie_header(headers: &HeaderMap) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The value of the cookie called `name` in a Cookie header.
pub(crate) fn cookie_named<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub const LANG_COOKIE: &str = "plenary_lang";

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

impl AppState {
    /// Render a page in the reader's language.
    pub(crate) fn page_for(&self, req: &Req, name: &str, mut ctx: serde_json::Value) -> Result<Response, WebError> {
        let noindex = ctx.get("noindex").and_then(|v| v.as_bool()).unwrap_or(false);
        if let Some(m) = ctx.as_object_mut() {
            m.insert("site_name".into(), self.settings.site_name.clone().into());
            m.insert("ui_lang".into(), req.lang.clone().into());
            m.insert("here".into(), req.here.clone().into());
            m.insert(
                "languages".into(),
                self.templates
                    .catalogs()
                    .languages()
                    .into_iter()
                    .map(|(c, n)| serde_json::json!({ "code": c, "name": n }))
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        let html = self
            .templates
            .render(name, minijinja::Value::from(minijinja::value::Serde(ctx)))?;
        let mut res = Html(html).into_response();
        res.headers_mut().insert(
            header::CONTENT_LANGUAGE,
            HeaderValue::from_str(&req.lang).unwrap_or(HeaderValue::from_static("en")),
        );
        res.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Accept-Language, Cookie"));
        if noindex {
            res.headers_mut()
                .insert("x-robots-tag", HeaderValue::from_static("noindex, nofollow"));
        }
        Ok(res)
    }

    fn public(&self, policy: &Policy, m: &StoredMessage) -> Result<PublicMessage, WebError> {
        let raw = self.store.raw(m)?;
        plenary_redact::redact(m.key, &m.meta, &raw, policy).ok_or(WebError::NotFound)
    }

    fn month_label(&self, lang: &str, year: i32, month: u32) -> String {
        let name = MONTHS[(month.clamp(1, 12) - 1) as usize];
        format!("{} {year}", self.templates.tr(lang, name))
    }
}

fn noindex(list: &ListRecord) -> bool {
    list.settings.archive != ArchiveVisibility::Public
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
pub(crate) struct ListView {
    pub(crate) address: String,
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) url: String,
    pub(crate) count: u64,
    pub(crate) private: bool,
}

impl ListView {
    pub(crate) fn of(l: &ListRecord, count: u64) -> ListView {
        ListView {
            address: l.address.to_string(),
            name: l.name.clone(),
            description: l.description.clone(),
            url: urls::list(l.address.as_str()),
            count,
            private: l.settings.archive == ArchiveVisibility::Private,
        }
    }
}

pub(crate) fn list_views(st: &AppState) -> Result<Vec<ListView>, WebError> {
    let mut out = Vec::new();
    for l in st.store.lists()? {
        out.push(ListView::of(&l, st.store.archived_count(l.id)?));
    }
    Ok(out)
}

pub async fn index(State(st): St, req: Req) -> Result<Response, WebError> {
    let lists = list_views(&st)?;
    st.page_for(&req, "index.html", ctx! { lists, breadcrumbs => Vec::<Crumb>::new() })
}

pub async fn list_redirect(Path(list): Path<String>) -> Redirect {
    Redirect::permanent(&urls::list(&list))
}

#[derive(Deserialize)]
pub struct ListParams {
    page: Option<String>,
    by: Option<String>,
    view: Option<String>,
}

#[derive(Serialize)]
struct MonthLink {
    url: String,
    label: String,
    count: u64,
}

pub async fn list(
    State(st): St,
    req: Req,
    Path(address): Path<String>,
    Query(p): Query<ListParams>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let list = match st.readable_list(&req, &address) {
        Err(WebError::Private) => return access_page(&st, &req, &address, &headers),
        other => other?,
    };
    let page = page_param(p.page.as_deref(), 100_000)?;
    let (infos, total) = st.threads.with(list.id, |t| {
        (t.recent((page - 1) * PER_PAGE, PER_PAGE), t.thread_count())
    })?;
    if page > 1 && infos.is_empty() {
        return Err(WebError::NotFound);
    }
    let threads: Vec<ThreadRow> = st.thread_rows(&list, &infos)?;
    let a = list.address.as_str().to_string();
    let pager = Pager::new(page, PER_PAGE, total, |n| format!("{}?page={n}", urls::list(&a)));
    let months: Vec<MonthLink> = st
        .store
        .months(list.id)?
        .into_iter()
        .map(|m| MonthLink {
            url: urls::month(list.address.as_str(), m.year, m.month),
            label: st.month_label(&req.lang, m.year, m.month),
            count: m.count,
        })
        .collect();
    let view = ListView::of(&list, 0);
    let (csrf, cookie) = crate::membership::csrf_token(&headers, &st.settings.base_url);
    let subscription = serde_json::to_value(list.settings.subscription).unwrap_or_default();
    let mut res = st.page_for(
        &req,
        "list.html",
        ctx! { list => view, threads, page => pager, months, scope_list => list.address.as_str(),
        breadcrumbs => crumbs(Some(&list), None, None), csrf, subscription,
        owner_address => list.address.sub("owner"), noindex => noindex(&list),
        feed_url => format!("{}atom.xml", urls::list(list.address.as_str())) },
    )?;
    crate::membership::set_cookie(&mut res, cookie);
    Ok(res)
}

/// A members-only archive: say so, and offer members a link by mail.
fn access_page(st: &AppState, req: &Req, address: &str, headers: &HeaderMap) -> Result<Response, WebError> {
    let list = st.list_record(address)?;
    let (csrf, cookie) = crate::membership::csrf_token(headers, &st.settings.base_url);
    let mut res = st.page_for(
        req,
        "access.html",
        ctx! { list => ListView::of(&list, 0), csrf, noindex => true, breadcrumbs => crumbs(Some(&list), None, None),
        days => crate::membership::ACCESS_DAYS, owner_address => list.address.sub("owner") },
    )?;
    *res.status_mut() = StatusCode::FORBIDDEN;
    crate::membership::set_cookie(&mut res, cookie);
    Ok(res)
}

/// `[start, end)` of a month in Unix seconds, if the path parts name a real month.
pub(crate) fn month_range(year: &str, month: &str) -> Option<(i32, u32, i64, i64)> {
    let (y, m) = (year.parse::<i32>().ok()?, month.parse::<u32>().ok()?);
    if !(1..=12).contains(&m) || !(1..=9999).contains(&y) || year.len() != 4 || month.len() != 2 {
        return None;
    }
    let start = chrono::NaiveDate::from_ymd_opt(y, m, 1)?;
    let next = if m == 12 {
        chrono::NaiveDate::from_ymd_opt(y + 1, 1, 1)?
    } else {
        chrono::NaiveDate::from_ymd_opt(y, m + 1, 1)?
    };
    let ts = |d: chrono::NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp());
    Some((y, m, ts(start)?, ts(next)?))
}

pub async fn month(
    State(st): St,
    req: Req,
    Path((address, year, month)): Path<(String, String, String)>,
    Query(p): Query<ListParams>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let (y, m, from, to) = month_range(&year, &month).ok_or(WebError::NotFound)?;
    let by = match p.by.as_deref() {
        None | Some("") | Some("thread") => "thread",
        Some("date") => "date",
        Some(_) => return Err(WebError::BadRequest("Order by thread or by date.".into())),
    };
    let page = page_param(p.page.as_deref(), 10_000)?;
    let keys = st.store.between(list.id, from, to, 200_000)?;
    let a = list.address.as_str().to_string();
    let base = urls::month(&a, y, m);
    let mut messages: Vec<SummaryView> = Vec::new();
    let mut threads: Vec<ThreadRow> = Vec::new();
    let total;
    if by == "date" {
        total = keys.len();
        for (key, _) in keys.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE) {
            let Some(stored) = st.store.message(*key)? else {
                continue;
            };
            if let Some(s) = plenary_redact::summarize(stored.key, &stored.meta, &policy) {
                messages.push(summary_view(&list, &s));
            }
        }
    } else {
        // Threads with a message this month, in order of their first message this month.
        let infos = st.threads.with(list.id, |t| {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (key, _) in &keys {
                if let Some(id) = t.thread_of(key.seq) {
                    if seen.insert(id) {
                        out.extend(t.info(id));
                    }
                }
            }
            out
        })?;
        total = infos.len();
        let slice: Vec<_> = infos.into_iter().skip((page - 1) * PER_PAGE).take(PER_PAGE).collect();
        threads = st.thread_rows(&list, &slice)?;
    }
    let months = st.store.months(list.id)?;
    let here = months.iter().position(|c| c.year == y && c.month == m);
    let link = |i: usize| {
        months.get(i).map(|c| MonthLink {
            url: urls::month(&a, c.year, c.month),
            label: st.month_label(&req.lang, c.year, c.month),
            count: c.count,
        })
    };
    // `months` is newest first.
    let (prev_month, next_month) = match here {
        Some(i) => (link(i + 1), i.checked_sub(1).and_then(link)),
        None => (None, None),
    };
    let label = st.month_label(&req.lang, y, m);
    let pager = Pager::new(page, PER_PAGE, total, |n| format!("{base}?by={by}&page={n}"));
    st.page_for(
        &req,
        "month.html",
        ctx! { list => ListView::of(&list, 0), label => &label, by, messages, threads, page => pager,
        prev_month, next_month, scope_list => list.address.as_str(), noindex => noindex(&list),
        breadcrumbs => crumbs(Some(&list), None, Some(&label)) },
    )
}

pub async fn authors(
    State(st): St,
    req: Req,
    Path(address): Path<String>,
    Query(p): Query<ListParams>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let page = page_param(p.page.as_deref(), 100_000)?;
    let all = st.threads.with(list.id, |t| t.authors())?;
    #[derive(Serialize)]
    struct A {
        url: String,
        name: String,
        count: usize,
        last: String,
        last_iso: String,
    }
    let mut authors = Vec::new();
    for (key, count, last, seq) in all.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE) {
        // The name shown is the one on the author's latest message, redacted.
        let Some(s) = st.summary(&list, &policy, *seq)? else {
            continue;
        };
        authors.push(A {
            url: format!("{}authors/{key:016x}/", urls::list(list.address.as_str())),
            name: s.author,
            count: *count,
            last: fmt_date(*last),
            last_iso: iso_date(*last),
        });
    }
    let a = list.address.as_str().to_string();
    let pager = Pager::new(page, PER_PAGE, all.len(), |n| {
        format!("{}authors/?page={n}", urls::list(&a))
    });
    let label = st.templates.tr(&req.lang, "Authors");
    st.page_for(
        &req,
        "authors.html",
        ctx! { list => ListView::of(&list, 0), authors, page => pager, scope_list => list.address.as_str(),
        noindex => noindex(&list), breadcrumbs => crumbs(Some(&list), None, Some(&label)) },
    )
}

pub async fn author(
    State(st): St,
    req: Req,
    Path((address, key)): Path<(String, String)>,
    Query(p): Query<ListParams>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let author = (key.len() == 16)
        .then(|| u64::from_str_radix(&key, 16).ok())
        .flatten()
        .ok_or(WebError::NotFound)?;
    let page = page_param(p.page.as_deref(), 100_000)?;
    let seqs = st.threads.with(list.id, |t| t.by_author(author))?;
    if seqs.is_empty() {
        return Err(WebError::NotFound);
    }
    let mut messages = Vec::new();
    for seq in seqs.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE) {
        messages.extend(st.summary(&list, &policy, *seq)?);
    }
    let name = match st.summary(&list, &policy, seqs[0])? {
        Some(s) => s.author,
        None => String::new(),
    };
    let base = format!("{}authors/{key}/", urls::list(list.address.as_str()));
    let pager = Pager::new(page, PER_PAGE, seqs.len(), |n| format!("{base}?page={n}"));
    let authors_label = st.templates.tr(&req.lang, "Authors");
    st.page_for(
        &req,
        "author.html",
        ctx! { list => ListView::of(&list, 0), name => &name, total => seqs.len(), messages, page => pager,
               scope_list => list.address.as_str(), noindex => noindex(&list),
               breadcrumbs => crumbs(Some(&list), Some((&authors_label, format!("{}authors/", urls::list(list.address.as_str())))), Some(&name)) },
    )
}

#[derive(Serialize)]
struct AttachmentView {
    url: String,
    name: String,
    content_type: String,
    size: String,
    inline_image: bool,
}

fn human_size(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KB", n as f64 / 1024.0),
        _ => format!("{:.1} MB", n as f64 / 1_048_576.0),
    }
}

fn attachment_views(list: &ListRecord, msg: &PublicMessage) -> Vec<AttachmentView> {
    msg.attachments()
        .iter()
        .map(|a| AttachmentView {
            url: format!(
                "{}a/{}/{}",
                urls::message(list.address.as_str(), msg.message_id()),
                a.index(),
                urls::seg(&safe_filename(a.name()))
            ),
            name: a.name().to_string(),
            content_type: a.content_type().to_string(),
            size: human_size(a.size()),
            inline_image: a.inline_image(),
        })
        .collect()
}

/// The body as HTML: sanitised HTML for HTML-only mail, else rendered text.
fn body_html(st: &AppState, lang: &str, msg: &PublicMessage) -> String {
    match msg.html() {
        Some(h) => format!("<div class=\"html\">{h}</div>"),
        None => {
            let labels = Labels {
                quoted_text: st.templates.tr(lang, "Quoted text"),
                lines: st.templates.tr(lang, "lines"),
                signature: st.templates.tr(lang, "Signature"),
            };
            text_to_html(msg.body(), &labels)
        }
    }
}

/// The language of a message when it differs from the page's: its Content-Language, else
/// the list's language.
fn message_lang(list: &ListRecord, msg: &PublicMessage, ui: &str) -> Option<String> {
    let l = msg
        .lang()
        .map(str::to_string)
        .or_else(|| list.settings.language.tag().map(str::to_string))?;
    (l.split('-').next() != Some(ui)).then_some(l)
}

pub async fn message(
    State(st): St,
    req: Req,
    Path((address, mid)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let msg = st.public(&policy, &stored)?;
    let a = list.address.as_str();
    // Position in the thread (reading order), neighbours, direct replies.
    let (order, parent_seq) = match st.thread_of(&stored)? {
        Some(id) => st.threads.with(list.id, |t| {
            let tree = t.tree(id);
            let seqs: Vec<u64> = tree.iter().filter_map(|i| i.seq).collect();
            let parents = plenary_thread::parent_rows(&tree);
            let i = tree.iter().position(|r| r.seq == Some(stored.key.seq));
            let parent = i.and_then(|i| parents[i]).and_then(|p| tree[p].seq);
            (seqs, parent)
        })?,
        None => (vec![stored.key.seq], None),
    };
    let pos = order.iter().position(|s| *s == stored.key.seq).unwrap_or(0);
    let prev_thread = match pos.checked_sub(1).and_then(|i| order.get(i)) {
        Some(s) => st.summary(&list, &policy, *s)?,
        None => None,
    };
    let next_thread = match order.get(pos + 1) {
        Some(s) => st.summary(&list, &policy, *s)?,
        None => None,
    };
    let (pd, nd) = st.store.date_neighbours(stored.key, stored.meta.date)?;
    let prev_date = match pd {
        Some(k) => st.summary(&list, &policy, k.seq)?,
        None => None,
    };
    let next_date = match nd {
        Some(k) => st.summary(&list, &policy, k.seq)?,
        None => None,
    };
    let parent = match parent_seq {
        Some(s) => st.summary(&list, &policy, s)?,
        None => None,
    };
    let mut replies = Vec::new();
    for k in st.store.children(list.id, msg.message_id())?.into_iter().take(200) {
        if let Some(m) = st.store.message(k)? {
            // Entries written before only the direct parent was linked name ancestors too.
            if m.meta.parent() == Some(msg.message_id()) {
                if let Some(s) = plenary_redact::summarize(m.key, &m.meta, &policy) {
                    replies.push(summary_view(&list, &s));
                }
            }
        }
    }
    let subject = msg.subject().to_string();
    let reply_subject = if plenary_thread::base_subject(&subject).1 {
        subject.clone()
    } else {
        format!("Re: {subject}")
    };
    let reply_mailto = format!(
        "mailto:{}?In-Reply-To={}&subject={}",
        a,
        urls::query_value(&format!("<{}>", msg.message_id())),
        urls::query_value(&reply_subject)
    );
    let thread_url = urls::thread(a, msg.message_id());
    // The thread page shows THREAD_PAGE messages per page.
    let thread_link = if pos >= THREAD_PAGE {
        format!("{thread_url}?page={}", pos / THREAD_PAGE + 1)
    } else {
        thread_url.clone()
    };
    let crumb_thread = (st.templates.tr(&req.lang, "Thread"), thread_link.clone());
    st.page_for(
        &req,
        "message.html",
        ctx! {
            list => ListView::of(&list, 0),
            msg => &msg,
            body_html => body_html(&st, &req.lang, &msg),
            attachments => attachment_views(&list, &msg),
            msg_lang => message_lang(&list, &msg, &req.lang),
            parent, replies, prev_thread, next_thread, prev_date, next_date,
            position => pos + 1, thread_size => order.len(),
            thread_url => thread_link,
            raw_url => urls::raw(a, msg.message_id()),
            permalink => format!("{}{}", st.settings.base_url, urls::message(a, msg.message_id())),
            reply_mailto, reply_subject,
            scope_list => a, noindex => noindex(&list),
            breadcrumbs => crumbs(Some(&list), Some((&crumb_thread.0, crumb_thread.1)), Some(&subject)),
        },
    )
}

pub async fn raw(State(st): St, req: Req, Path((address, mid)): Path<(String, String)>) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let msg = st.public(&policy, &stored)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.to_raw_text()).into_response())
}

/// A file name safe in a Content-Disposition header and on any file system.
pub(crate) fn safe_filename(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_control() || "/\\:*?\"<>|;%".contains(c) {
                '_'
            } else {
                c
            }
        })
        .collect();
    s = s.trim_matches(|c: char| c == '.' || c.is_whitespace()).to_string();
    if s.is_empty() {
        s = "attachment".into();
    }
    s.chars().take(150).collect()
}

pub async fn attachment(
    State(st): St,
    req: Req,
    Path((address, mid, index, _name)): Path<(String, String, String, String)>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let index: usize = index.parse().map_err(|_| WebError::NotFound)?;
    let raw = st.store.raw(&stored)?;
    let (a, bytes) = plenary_redact::attachment(&stored.meta, &raw, &policy, index).ok_or(WebError::NotFound)?;
    // Raster images keep their type so pages can show them; everything else is opaque bytes.
    let ctype = if a.inline_image() {
        a.content_type().to_string()
    } else {
        "application/octet-stream".to_string()
    };
    let name = safe_filename(a.name());
    let ascii: String = name.chars().map(|c| if c.is_ascii() { c } else { '_' }).collect();
    let disposition = format!(
        "attachment; filename=\"{}\"; filename*=UTF-8''{}",
        ascii,
        urls::query_value(&name)
    );
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&ctype).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    // A sandbox for anything that is opened directly anyway.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    Ok(res)
}

#[derive(Serialize)]
struct TocItem {
    url: Option<String>,
    subject: String,
    author: String,
    date: String,
    date_iso: String,
    depth: usize,
}

pub async fn thread(
    State(st): St,
    req: Req,
    Path((address, mid)): Path<(String, String)>,
    Query(p): Query<ListParams>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let policy = Policy::for_list(list.address.as_str());
    let stored = st.stored(&list, &mid)?;
    let current = stored.key.seq;
    let view = match p.view.as_deref() {
        None | Some("") | Some("tree") => "tree",
        Some("flat") => "flat",
        Some(_) => return Err(WebError::BadRequest("Show the thread as a tree or by date.".into())),
    };
    let page = page_param(p.page.as_deref(), 10_000)?;
    let id = st.thread_of(&stored)?;
    let (tree, flat, info) = match id {
        Some(id) => st.threads.with(list.id, |t| (t.tree(id), t.messages(id), t.info(id)))?,
        None => (
            vec![plenary_thread::TreeItem {
                seq: Some(current),
                depth: 0,
            }],
            vec![current],
            None,
        ),
    };
    // Reading order for the page body.
    let rows: Vec<(Option<u64>, usize)> = match view {
        "tree" => tree
            .iter()
            .filter(|r| r.seq.is_some())
            .map(|r| (r.seq, r.depth))
            .collect(),
        _ => flat.iter().map(|s| (Some(*s), 0)).collect(),
    };
    let total = rows.len();
    let pages = total.div_ceil(THREAD_PAGE).max(1);
    if page > pages {
        return Err(WebError::NotFound);
    }
    let pos_of: std::collections::HashMap<u64, usize> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, (s, _))| s.map(|s| (s, i + 1)))
        .collect();
    let page_of = |pos: usize| (pos - 1) / THREAD_PAGE + 1;
    let href = |pos: usize| {
        if page_of(pos) == page {
            format!("#m{pos}")
        } else {
            format!("?view={view}&page={}#m{pos}", page_of(pos))
        }
    };
    // Contents: the whole tree (ghost placeholders included), linking into the pages.
    let mut toc = Vec::with_capacity(tree.len());
    let mut metas: std::collections::HashMap<u64, SummaryView> = std::collections::HashMap::new();
    // Messages read for the contents, kept for the bodies on this page (read once).
    let mut loaded: std::collections::HashMap<u64, StoredMessage> = std::collections::HashMap::new();
    for r in &tree {
        match r.seq {
            Some(s) => {
                let Some(m) = st.store.message(MessageKey { list: list.id, seq: s })? else {
                    continue;
                };
                let view = plenary_redact::summarize(m.key, &m.meta, &policy).map(|sum| summary_view(&list, &sum));
                if let Some(v) = view {
                    loaded.insert(s, m);
                    toc.push(TocItem {
                        url: pos_of.get(&s).map(|p| href(*p)),
                        subject: v.subject.clone(),
                        author: v.author.clone(),
                        date: v.date.clone(),
                        date_iso: v.date_iso.clone(),
                        depth: r.depth.min(12),
                    });
                    metas.insert(s, v);
                }
            }
            None => toc.push(TocItem {
                url: None,
                subject: String::new(),
                author: String::new(),
                date: String::new(),
                date_iso: String::new(),
                depth: r.depth.min(12),
            }),
        }
    }
    // Parent of each message in the tree.
    let parent_of: std::collections::HashMap<u64, u64> = tree
        .iter()
        .zip(plenary_thread::parent_rows(&tree))
        .filter_map(|(r, p)| Some((r.seq?, tree[p?].seq?)))
        .collect();
    #[derive(Serialize)]
    struct Item {
        pos: usize,
        url: String,
        subject: String,
        author: String,
        date: String,
        date_iso: String,
        body_html: String,
        depth: usize,
        current: bool,
        lang: Option<String>,
        parent_pos: Option<usize>,
        parent_href: Option<String>,
        attachments: Vec<AttachmentView>,
    }
    let mut messages = Vec::new();
    for (i, (seq, depth)) in rows.iter().enumerate().skip((page - 1) * THREAD_PAGE).take(THREAD_PAGE) {
        let Some(seq) = seq else { continue };
        let Some(m) = st.store.message(MessageKey {
            list: list.id,
            seq: *seq,
        })?
        else {
            continue;
        };
        let Ok(pm) = st.public(&policy, &m) else { continue };
        let parent_pos = parent_of.get(seq).and_then(|p| pos_of.get(p)).copied();
        messages.push(Item {
            pos: i + 1,
            url: urls::message(list.address.as_str(), pm.message_id()),
            subject: pm.subject().to_string(),
            author: pm.author().to_string(),
            date: fmt_date(pm.date()),
            date_iso: iso_date(pm.date()),
            body_html: body_html(&st, &req.lang, &pm),
            depth: if view == "tree" { (*depth).min(12) } else { 0 },
            current: *seq == current,
            lang: message_lang(&list, &pm, &req.lang),
            parent_pos: if view == "flat" { parent_pos } else { None },
            parent_href: if view == "flat" { parent_pos.map(href) } else { None },
            attachments: attachment_views(&list, &pm),
        });
    }
    let root = info.as_ref().map(|i| i.root).unwrap_or(current);
    let subject = metas
        .get(&root)
        .map(|v| v.subject.clone())
        .or_else(|| messages.first().map(|m| m.subject.clone()))
        .unwrap_or_default();
    let pager = Pager::new(page, THREAD_PAGE, total, |n| format!("?view={view}&page={n}"));
    let participants = info.as_ref().map(|i| i.participants).unwrap_or(1);
    st.page_for(
        &req,
        "thread.html",
        ctx! {
            list => ListView::of(&list, 0), subject => &subject, messages, toc, total, participants, view,
            page => pager, scope_list => list.address.as_str(), noindex => noindex(&list),
            feed_url => "atom.xml",
            breadcrumbs => crumbs(Some(&list), None, Some(&subject)),
        },
    )
}

#[derive(Deserialize)]
pub struct LangParams {
    to: Option<String>,
    back: Option<String>,
}

/// Remember the reader's language choice and go back to the page they were on.
pub async fn set_lang(State(st): St, Query(p): Query<LangParams>) -> Response {
    let lang = p.to.unwrap_or_default().to_ascii_lowercase();
    // Only local paths: never an open redirect.
    let back = p
        .back
        .filter(|b| b.starts_with('/') && !b.starts_with("//") && !b.contains('\\'))
        .unwrap_or_else(|| "/".into());
    let mut res = Redirect::to(&back).into_response();
    if st.templates.catalogs().has(&lang) {
        let secure = if st.settings.base_url.starts_with("https://") {
            "; Secure"
        } else {
            ""
        };
        let c = format!("{LANG_COOKIE}={lang}; Path=/; SameSite=Lax; Max-Age=31536000{secure}");
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    res
}

pub async fn search_help(State(st): St, req: Req) -> Result<Response, WebError> {
    let label = st.templates.tr(&req.lang, "Search help");
    st.page_for(
        &req,
        "search_help.html",
        ctx! { breadcrumbs => crumbs(None, None, Some(&label)) },
    )
}

pub async fn robots(State(st): St) -> Result<Response, WebError> {
    let mut hidden = Vec::new();
    for l in st.store.lists()? {
        if l.settings.archive != ArchiveVisibility::Public {
            hidden.push(urls::list(l.address.as_str()));
        }
    }
    let txt = st.templates.render(
        "robots.txt",
        minijinja::context! { hidden => hidden, sitemap => Option::<String>::None },
    )?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        txt,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_safe() {
        assert_eq!(safe_filename("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_filename("a\"b\r\nc.pdf"), "a_b__c.pdf");
        assert_eq!(safe_filename("..."), "attachment");
        assert_eq!(safe_filename("résumé.pdf"), "résumé.pdf");
    }

    #[test]
    fn months_parse_strictly() {
        assert!(month_range("2024", "02").is_some());
        assert!(month_range("2024", "13").is_none());
        assert!(month_range("24", "02").is_none());
        assert!(month_range("2024", "2").is_none());
    }
}
