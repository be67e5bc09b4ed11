//! Atom feeds (RFC 4287) per list, per thread and per search, built from redacted messages.

use crate::pages::St;
use crate::{urls, AppState, WebError};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use plenary_core::MessageKey;
use plenary_redact::Policy;
use serde::Serialize;

/// Entries in a feed.
pub const FEED_ENTRIES: usize = 30;
/// Longest entry text; feeds are for noticing new mail, the page has the rest.
const ENTRY_CHARS: usize = 20_000;

/// Characters XML 1.0 allows (mail can carry any control character).
fn xml_text(s: &str) -> String {
    s.chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}'))
        .collect()
}

fn rfc3339(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[derive(Serialize)]
struct Entry {
    id: String,
    title: String,
    updated: String,
    author: String,
    url: String,
    in_reply_to: Option<String>,
    text: String,
}

/// A feed of these messages (newest first), each redacted with its own list's policy.
pub(crate) fn feed_response(
    st: &AppState,
    req: &crate::pages::Req,
    title: &str,
    self_url: &str,
    html_url: &str,
    lang: Option<&str>,
    keys: Vec<MessageKey>,
) -> Result<Response, WebError> {
    let mut entries = Vec::new();
    let mut newest = 0i64;
    let mut lists = std::collections::HashMap::new();
    for key in keys.into_iter().take(FEED_ENTRIES) {
        let list = match lists.get(&key.list) {
            Some(l) => l,
            None => {
                let Some(l) = st.store.list_by_id(key.list)? else {
                    continue;
                };
                lists.entry(key.list).or_insert(l)
            }
        };
        if !st.may_read(req, list) {
            continue;
        }
        let Some(m) = st.store.message(key)? else { continue };
        let policy = Policy::for_list(list.address.as_str());
        let raw = st.store.raw(&m)?;
        let Some(p) = plenary_redact::redact(m.key, &m.meta, &raw, &policy) else {
            continue;
        };
        let url = format!(
            "{}{}",
            st.settings.base_url,
            urls::message(list.address.as_str(), p.message_id())
        );
        newest = newest.max(p.date());
        let text: String = p.body().chars().take(ENTRY_CHARS).collect();
        entries.push(Entry {
            id: url.clone(),
            title: xml_text(p.subject()),
            updated: rfc3339(p.date()),
            author: xml_text(p.author()),
            in_reply_to: p.parent().and_then(|pid| {
                st.store
                    .find(list.id, pid)
                    .ok()
                    .flatten()
                    .map(|_| format!("{}{}", st.settings.base_url, urls::message(list.address.as_str(), pid)))
            }),
            url,
            text: xml_text(&text),
        });
    }
    let xml = st.templates.render(
        "atom.xml",
        minijinja::context! {
            id => self_url, title => xml_text(title), updated => rfc3339(newest), self_url => self_url,
            html_url => html_url, entries => minijinja::Value::from(minijinja::value::Serde(&entries)), feed_lang => lang,
        },
    )?;
    let mut res = xml.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/atom+xml; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    Ok(res)
}

pub async fn list_feed(
    State(st): St,
    req: crate::pages::Req,
    Path(address): Path<String>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let keys = st
        .store
        .recent(list.id, FEED_ENTRIES)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let html = format!("{}{}", st.settings.base_url, urls::list(list.address.as_str()));
    let title = if list.name.is_empty() {
        list.address.to_string()
    } else {
        list.name.clone()
    };
    feed_response(
        &st,
        &req,
        &title,
        &format!("{html}atom.xml"),
        &html,
        list.settings.language.tag(),
        keys,
    )
}

pub async fn thread_feed(
    State(st): St,
    req: crate::pages::Req,
    Path((address, mid)): Path<(String, String)>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let stored = st.stored(&list, &mid)?;
    let seqs = match st.thread_of(&stored)? {
        Some(id) => st.threads.with(list.id, |t| t.messages(id))?,
        None => vec![stored.key.seq],
    };
    // Newest first.
    let keys: Vec<MessageKey> = seqs
        .into_iter()
        .rev()
        .map(|seq| MessageKey { list: list.id, seq })
        .collect();
    let policy = Policy::for_list(list.address.as_str());
    let subject = plenary_redact::summarize(stored.key, &stored.meta, &policy)
        .map(|s| s.subject().to_string())
        .unwrap_or_default();
    let html = format!(
        "{}{}",
        st.settings.base_url,
        urls::thread(list.address.as_str(), &stored.meta.message_id)
    );
    feed_response(
        &st,
        &req,
        &subject,
        &format!("{html}atom.xml"),
        &html,
        list.settings.language.tag(),
        keys,
    )
}
