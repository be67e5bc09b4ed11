//! The JSON read API (public data only, redacted like the pages).

use crate::error::json_error;
use crate::pages::{list_views, St};
use crate::views::iso_date;
use crate::{urls, WebError};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use plenary_redact::Policy;
use serde::Deserialize;

pub async fn api_lists(State(st): St) -> Response {
    match list_views(&st) {
        Ok(lists) => Json(serde_json::json!({ "lists": lists.iter().map(|l| serde_json::json!({
            "address": l.address, "name": l.name, "description": l.description,
            "messages": if l.private { None } else { Some(l.count) },
            "url": l.url, "archive_public": !l.private,
        })).collect::<Vec<_>>() }))
        .into_response(),
        Err(e) => json_error(e),
    }
}

#[derive(Deserialize)]
pub struct PageParams {
    page: Option<String>,
}

pub async fn api_messages(
    State(st): St,
    req: crate::pages::Req,
    Path(address): Path<String>,
    Query(p): Query<PageParams>,
) -> Response {
    let r = (|| -> Result<serde_json::Value, WebError> {
        let list = st.readable_list(&req, &address)?;
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

pub async fn api_message(
    State(st): St,
    req: crate::pages::Req,
    Path((address, mid)): Path<(String, String)>,
) -> Response {
    let r = (|| -> Result<serde_json::Value, WebError> {
        let list = st.readable_list(&req, &address)?;
        let policy = Policy::for_list(list.address.as_str());
        let stored = st.stored(&list, &mid)?;
        let raw = st.store.raw(&stored)?;
        let msg = plenary_redact::redact(stored.key, &stored.meta, &raw, &policy).ok_or(WebError::NotFound)?;
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

/// Threads of a list, newest activity first, each with its messages in reading order
/// (`depth` for the tree; missing parents with several replies appear as `null`).
pub async fn api_threads(
    State(st): St,
    req: crate::pages::Req,
    Path(address): Path<String>,
    Query(p): Query<PageParams>,
) -> Response {
    let r = (|| -> Result<serde_json::Value, WebError> {
        let list = st.readable_list(&req, &address)?;
        let policy = Policy::for_list(list.address.as_str());
        let page = crate::views::page_param(p.page.as_deref(), 100_000)?;
        let per = 100usize;
        let (threads, total) = st.threads.with(list.id, |t| {
            let infos = t.recent((page - 1) * per, per);
            let trees: Vec<_> = infos.iter().map(|i| (i.clone(), t.tree(i.id))).collect();
            (trees, t.thread_count())
        })?;
        let mut out = Vec::new();
        for (info, tree) in threads {
            let mut msgs = Vec::new();
            for row in tree {
                match row.seq {
                    Some(seq) => {
                        let Some(m) = st.store.message(plenary_core::MessageKey { list: list.id, seq })? else {
                            continue;
                        };
                        if let Some(s) = plenary_redact::summarize(m.key, &m.meta, &policy) {
                            msgs.push(serde_json::json!({ "message_id": s.message_id(), "depth": row.depth }));
                        }
                    }
                    None => msgs.push(serde_json::json!({ "message_id": null, "depth": row.depth })),
                }
            }
            out.push(serde_json::json!({
                "count": info.count, "participants": info.participants,
                "first": iso_date(info.first), "last": iso_date(info.last), "messages": msgs,
            }));
        }
        Ok(
            serde_json::json!({ "list": list.address.as_str(), "page": page, "per_page": per, "total": total, "threads": out }),
        )
    })();
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => json_error(e),
    }
}
