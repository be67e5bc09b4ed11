//! mbox downloads (RFC 4155, mboxrd quoting) of a thread, a month or a whole list.
//!
//! What is downloaded is the public form of each message (the same redacted text as the raw
//! view), never the stored bytes. The body is streamed: a blocking task reads messages in
//! small batches and sends each as it is ready, so a list of any size downloads in constant
//! memory and starts at once.

use crate::pages::{month_range, St};
use crate::{AppState, WebError};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use plenary_core::{ListId, MessageKey};
use plenary_redact::Policy;
use std::sync::Arc;

/// Messages read from the store per step when walking a whole list.
const BATCH: usize = 200;

/// One message in mboxrd form: a `From ` line, then every line that starts with any number
/// of `>` followed by `From ` gets one more `>`, then a blank line. Lines end in LF (RFC 4155).
pub fn mboxrd_entry(text: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"From mboxrd@z Thu Jan  1 00:00:00 1970\n");
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let rest = line.trim_start_matches('>');
        if rest.starts_with("From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    // `split` gave an empty last piece for a final newline: that is the blank separator line;
    // otherwise add one.
    if !text.ends_with('\n') {
        out.push(b'\n');
    }
}

enum Walk {
    Keys(Vec<MessageKey>),
    List(ListId),
}

fn stream(st: Arc<AppState>, address: String, walk: Walk, filename: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let policy = Policy::for_list(&address);
        let send_msgs = |msgs: Vec<plenary_store::StoredMessage>| -> bool {
            let mut buf = Vec::new();
            for m in msgs {
                let raw = match st.store.raw(&m) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                        return false;
                    }
                };
                if let Some(p) = plenary_redact::redact(m.key, &m.meta, &raw, &policy) {
                    mboxrd_entry(&p.to_raw_text(), &mut buf);
                }
            }
            buf.is_empty() || tx.blocking_send(Ok(buf)).is_ok()
        };
        match walk {
            Walk::Keys(keys) => {
                for chunk in keys.chunks(BATCH) {
                    let msgs: Vec<_> = chunk
                        .iter()
                        .filter_map(|k| st.store.message(*k).ok().flatten())
                        .collect();
                    if !send_msgs(msgs) {
                        return;
                    }
                }
            }
            Walk::List(list) => {
                let mut after = 0;
                loop {
                    let msgs = match st.store.messages_after(list, after, BATCH) {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                            return;
                        }
                    };
                    let Some(last) = msgs.last().map(|m| m.key.seq) else {
                        return;
                    };
                    after = last;
                    if !send_msgs(msgs) {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/mbox"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    res
}

/// A `Stream` over an mpsc receiver (what tokio-stream's wrapper does, without the crate).
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A file name for a list's downloads: its address with anything odd replaced.
fn stem(address: &str) -> String {
    address
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub async fn list_mbox(
    State(st): St,
    req: crate::pages::Req,
    Path(address): Path<String>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let name = format!("{}.mbox", stem(list.address.as_str()));
    Ok(stream(st.clone(), list.address.to_string(), Walk::List(list.id), name))
}

pub async fn month_mbox(
    State(st): St,
    req: crate::pages::Req,
    Path((address, year, month)): Path<(String, String, String)>,
) -> Result<Response, WebError> {
    let list = st.readable_list(&req, &address)?;
    let (y, m, from, to) = month_range(&year, &month).ok_or(WebError::NotFound)?;
    // Keys only (20 bytes each): the messages themselves are streamed.
    let keys: Vec<MessageKey> = st
        .store
        .between(list.id, from, to, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let name = format!("{}-{y:04}-{m:02}.mbox", stem(list.address.as_str()));
    Ok(stream(st.clone(), list.address.to_string(), Walk::Keys(keys), name))
}

pub async fn thread_mbox(
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
    let keys = seqs.into_iter().map(|seq| MessageKey { list: list.id, seq }).collect();
    let name = format!("{}-thread.mbox", stem(list.address.as_str()));
    Ok(stream(st.clone(), list.address.to_string(), Walk::Keys(keys), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mboxrd_quotes_from_lines_reversibly() {
        let mut out = Vec::new();
        mboxrd_entry("Subject: x\n\nFrom here\n>From there\n>>From afar\nFromage\n", &mut out);
        let s = String::from_utf8(out).expect("utf8");
        assert_eq!(
            s,
            "From mboxrd@z Thu Jan  1 00:00:00 1970\nSubject: x\n\n>From here\n>>From there\n>>>From afar\nFromage\n\n"
        );
    }
}
