//! Digests: a MIME digest (RFC 2046 §5.1.5 `multipart/digest`, each post a `message/rfc822`
//! part) and a plain-text digest (RFC 1153), built once per digest and sent to every member
//! who chose that form.

use crate::notice::{display_name, header_text, message_id};
use plenary_core::mime::crlf;
use plenary_core::MessageKey;
use plenary_store::{ListRecord, Store, StoreError};

/// Both forms of one digest, as complete messages with CRLF line ends.
pub struct Digest {
    pub mime: Vec<u8>,
    pub plain: Vec<u8>,
}

fn head(list: &ListRecord, number: u64, count: usize, content_type: &str) -> String {
    let name = if list.name.is_empty() {
        list.address.local().to_string()
    } else {
        list.name.clone()
    };
    format!(
        "From: {} <{}>\r\nTo: <{}>\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: {}\r\nList-Id: <{}>\r\nX-Loop: {}\r\nPrecedence: list\r\nMIME-Version: 1.0\r\nContent-Type: {}\r\n",
        display_name(&name),
        list.address,
        list.address,
        header_text(&format!("{} digest, Vol {}, {} messages", list.address.local(), number, count), 200),
        chrono::Utc::now().to_rfc2822(),
        message_id(&list.address),
        list.address.list_id(),
        list.address,
        content_type,
    )
}

/// Build the digest of `keys` (posts missing from the store are skipped).
pub fn build(store: &Store, list: &ListRecord, keys: &[MessageKey], number: u64) -> Result<Digest, StoreError> {
    let boundary = format!("=_digest_{}", crate::token::new_token());
    let inner = format!("{boundary}_d");
    let mut toc = String::new();
    let mut parts: Vec<u8> = Vec::new();
    let mut plain_msgs = String::new();
    let mut count = 0;
    for key in keys {
        let Some(m) = store.message(*key)? else { continue };
        let raw = crlf(&store.raw(&m)?);
        count += 1;
        let from = m.meta.from_addr.clone().unwrap_or_default();
        toc.push_str(&format!(
            "  {count}. {} ({})\r\n",
            header_text(&m.meta.subject, 200),
            from
        ));
        parts.extend_from_slice(format!("--{inner}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes());
        parts.extend_from_slice(&raw);
        if !raw.ends_with(b"\r\n") {
            parts.extend_from_slice(b"\r\n");
        }
        // RFC 1153: Date, From, Subject (+ Message-ID), a blank line, the text, then a line of
        // 30 dashes.
        let text = crate::text_excerpt(&raw, 100_000);
        plain_msgs.push_str(&format!(
            "Date: {}\r\nFrom: {}\r\nSubject: {}\r\nMessage-ID: <{}>\r\n\r\n{}\r\n\r\n------------------------------\r\n\r\n",
            chrono::DateTime::from_timestamp(m.meta.date, 0)
                .unwrap_or_default()
                .to_rfc2822(),
            from,
            header_text(&m.meta.subject, 200),
            m.meta.message_id,
            crate::notice::body_text(&text).trim_end_matches("\r\n"),
        ));
    }
    let intro = format!(
        "{} digest, volume {number}, {count} messages\r\n\r\nToday's topics:\r\n\r\n{toc}",
        list.address
    );
    let mut mime = head(
        list,
        number,
        count,
        &format!("multipart/mixed; boundary=\"{boundary}\""),
    )
    .into_bytes();
    // multipart/mixed holding the table of contents and a multipart/digest, as Mailman does.
    mime.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{intro}\r\n--{boundary}\r\nContent-Type: multipart/digest; boundary=\"{inner}\"\r\n\r\n"
        )
        .as_bytes(),
    );
    mime.extend_from_slice(&parts);
    mime.extend_from_slice(format!("--{inner}--\r\n\r\n--{boundary}--\r\n").as_bytes());

    let mut plain = head(list, number, count, "text/plain; charset=utf-8").into_bytes();
    plain.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n\r\n");
    plain.extend_from_slice(intro.as_bytes());
    plain.extend_from_slice(b"\r\n----------------------------------------------------------------------\r\n\r\n");
    plain.extend_from_slice(plain_msgs.as_bytes());
    plain.extend_from_slice(format!("End of {} digest, Vol {number}\r\n", list.address).as_bytes());
    Ok(Digest { mime, plain })
}
