//! The privacy-redaction layer: the one way to turn a stored message into something public.
//!
//! Every public output (pages, the JSON API, the raw view, search snippets and the text that
//! goes into the search index) is built from a [`PublicMessage`] or a [`PublicSummary`], and
//! those types have private fields and no public constructor: the only way to get one is
//! [`redact`] or [`summarize`]. So no page can forget to redact, and nothing this layer
//! hides can leak by another path.
//!
//! What it does by default:
//! - e-mail addresses in headers, display names, subjects and bodies are obfuscated
//!   (`ada@example.org` becomes `a…@e…`), also in the `user at host.tld` form pipermail
//!   archives use; the list's own addresses stay readable (they are public anyway);
//! - only an allowlist of headers is ever shown, so trace headers (`Received`,
//!   `X-Originating-IP`, `Return-Path`, …) never are;
//! - a message with `X-No-Archive: yes` or `Archive: no` yields `None`: it is not public.
//!
//! Message-IDs are kept: they are the permalink keys, as in public-inbox.

use mail_parser::{Address, MessageParser, MimeHeaders};
use plenary_core::{MessageKey, MessageMeta};
use regex::Regex;
use std::borrow::Cow;
use std::sync::LazyLock;

/// Longest body text we render or index; the rest is cut with a note.
pub const MAX_BODY_CHARS: usize = 1_000_000;

/// Per-list redaction settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub obfuscate_addresses: bool,
    /// Addresses shown as they are (lower-case), e.g. the list's own addresses.
    pub allow: Vec<String>,
}

impl Policy {
    /// The default policy for a list: obfuscate everything but the list's own addresses.
    pub fn for_list(list_address: &str) -> Policy {
        let (local, domain) = list_address.rsplit_once('@').unwrap_or((list_address, ""));
        let mut allow = vec![list_address.to_ascii_lowercase()];
        for suffix in ["-request", "-join", "-leave", "-owner"] {
            allow.push(format!("{local}{suffix}@{domain}").to_ascii_lowercase());
        }
        Policy {
            obfuscate_addresses: true,
            allow,
        }
    }
}

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)[a-z0-9!#$%&'*+/=?^_`{|}~.-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+",
    )
    .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});
static AT_FORM: LazyLock<Regex> = LazyLock::new(|| {
    // ASCII word boundaries: a Unicode `\b` makes the regex engine leave its fast DFA as soon
    // as a text has one non-ASCII character, which measured 40 % of a thread page's CPU.
    Regex::new(r"(?i)(?-u:\b)[a-z0-9._%+-]+ at [a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}(?-u:\b)")
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

fn first_char(s: &str) -> &str {
    s.char_indices().nth(1).map(|(i, _)| &s[..i]).unwrap_or(s)
}

/// Obfuscate every address in `text` that the policy does not allow.
///
/// Uses `find_iter` (no capture groups), which lets the regex crate use its fast DFA path;
/// this runs on every body that is indexed or rendered.
pub fn redact_text<'a>(text: &'a str, policy: &Policy) -> Cow<'a, str> {
    if !policy.obfuscate_addresses || (!text.contains('@') && !text.contains(" at ")) {
        return Cow::Borrowed(text);
    }
    let allowed = |addr: &str| policy.allow.iter().any(|a| a.eq_ignore_ascii_case(addr));
    let step = replace_matches(text, &EMAIL, |m| {
        if allowed(m) {
            return None;
        }
        let (local, domain) = m.rsplit_once('@').unwrap_or((m, ""));
        Some(format!("{}…@{}…", first_char(local), first_char(domain)))
    });
    let at_form = |m: &str| {
        let (local, domain) = m.split_once(" at ").unwrap_or((m, ""));
        if allowed(&format!("{local}@{domain}")) {
            return None;
        }
        Some(format!("{}… at {}…", first_char(local), first_char(domain)))
    };
    match step {
        Cow::Borrowed(t) => replace_matches(t, &AT_FORM, at_form),
        Cow::Owned(t) => Cow::Owned(replace_matches(&t, &AT_FORM, at_form).into_owned()),
    }
}

/// Replace each match of `re` for which `f` returns a replacement.
fn replace_matches<'a>(text: &'a str, re: &Regex, f: impl Fn(&str) -> Option<String>) -> Cow<'a, str> {
    let mut out = String::new();
    let mut last = 0;
    for m in re.find_iter(text) {
        if let Some(rep) = f(m.as_str()) {
            out.push_str(&text[last..m.start()]);
            out.push_str(&rep);
            last = m.end();
        }
    }
    if last == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// An attachment as the public may see it: name, type and size; its bytes come only from
/// [`attachment`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicAttachment {
    /// Position among the message's attachments (the download URL uses it).
    index: usize,
    name: String,
    content_type: String,
    size: u64,
    /// A raster image (PNG, JPEG, GIF, WebP) that pages may show inline.
    inline_image: bool,
}

/// Types shown inline as images. Never SVG (it can carry script) or anything else.
const RASTER: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

impl PublicAttachment {
    pub fn index(&self) -> usize {
        self.index
    }
    pub fn inline_image(&self) -> bool {
        self.inline_image
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// The listing form of a message: no body, built from metadata alone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicSummary {
    #[serde(skip)]
    key: MessageKey,
    message_id: String,
    subject: String,
    author: String,
    date: i64,
    parent: Option<String>,
}

impl PublicSummary {
    pub fn key(&self) -> MessageKey {
        self.key
    }
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// Display name, or the obfuscated address when there is no name.
    pub fn author(&self) -> &str {
        &self.author
    }
    pub fn date(&self) -> i64 {
        self.date
    }
    /// The nearest parent Message-ID, if the message is a reply.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
}

/// A message as the public may see it. Built only by [`redact`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicMessage {
    #[serde(flatten)]
    summary: PublicSummary,
    /// Obfuscated author address, if any.
    author_address: Option<String>,
    references: Vec<String>,
    /// Allowlisted headers, decoded and redacted, in message order.
    headers: Vec<(String, String)>,
    body: String,
    /// For HTML-only mail: the HTML, sanitised (no script, style, remote images or forms)
    /// and with addresses obfuscated. Pages show it instead of `body`.
    html: Option<String>,
    /// The message's Content-Language, when it names one valid language tag.
    lang: Option<String>,
    attachments: Vec<PublicAttachment>,
    /// Why the message is shown as raw text (it was stored unparsed, with this reason, or
    /// the parser failed on it here); `None` when it was parsed. The reasons are our own
    /// fixed texts and limits, never message content.
    unparsed: Option<String>,
}

impl PublicMessage {
    pub fn summary(&self) -> &PublicSummary {
        &self.summary
    }
    pub fn key(&self) -> MessageKey {
        self.summary.key
    }
    pub fn message_id(&self) -> &str {
        &self.summary.message_id
    }
    pub fn subject(&self) -> &str {
        &self.summary.subject
    }
    pub fn author(&self) -> &str {
        &self.summary.author
    }
    pub fn author_address(&self) -> Option<&str> {
        self.author_address.as_deref()
    }
    pub fn date(&self) -> i64 {
        self.summary.date
    }
    pub fn parent(&self) -> Option<&str> {
        self.summary.parent.as_deref()
    }
    pub fn references(&self) -> &[String] {
        &self.references
    }
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
    pub fn body(&self) -> &str {
        &self.body
    }
    pub fn html(&self) -> Option<&str> {
        self.html.as_deref()
    }
    pub fn lang(&self) -> Option<&str> {
        self.lang.as_deref()
    }
    pub fn attachments(&self) -> &[PublicAttachment] {
        &self.attachments
    }
    pub fn unparsed(&self) -> bool {
        self.unparsed.is_some()
    }

    /// Why the message could not be parsed, when it could not.
    pub fn unparsed_reason(&self) -> Option<&str> {
        self.unparsed.as_deref()
    }

    /// The redacted "raw" form: allowlisted headers, a blank line, the text body.
    pub fn to_raw_text(&self) -> String {
        let mut out = String::with_capacity(self.body.len() + 512);
        for (name, value) in &self.headers {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        }
        for a in &self.attachments {
            out.push_str(&format!(
                "X-Plenary-Attachment: {} ({}, {} bytes)\n",
                a.name, a.content_type, a.size
            ));
        }
        out.push('\n');
        out.push_str(&self.body);
        if !self.body.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

fn author(meta: &MessageMeta, policy: &Policy) -> (String, Option<String>) {
    let addr = meta.from_addr.as_deref().map(|a| redact_text(a, policy).into_owned());
    let name = meta
        .from_name
        .as_deref()
        .map(|n| redact_text(n, policy).into_owned())
        .filter(|n| !n.trim().is_empty());
    let shown = name
        .or_else(|| addr.clone())
        .unwrap_or_else(|| "(unknown sender)".to_string());
    (shown, addr)
}

/// The listing form of a message, or `None` if it must not be public.
pub fn summarize(key: MessageKey, meta: &MessageMeta, policy: &Policy) -> Option<PublicSummary> {
    if meta.no_archive {
        return None;
    }
    let (author, _) = author(meta, policy);
    let subject = if meta.subject.is_empty() {
        "(no subject)".to_string()
    } else {
        redact_text(&meta.subject, policy).into_owned()
    };
    Some(PublicSummary {
        key,
        message_id: meta.message_id.clone(),
        subject,
        author,
        date: meta.date,
        parent: meta.parents().next().map(str::to_string),
    })
}

fn address_list(a: &Address<'_>, policy: &Policy) -> String {
    a.iter()
        .map(|addr| {
            let email = addr.address().map(|e| redact_text(e, policy).into_owned());
            match (addr.name().map(|n| redact_text(n, policy).into_owned()), email) {
                (Some(n), Some(e)) => format!("{n} <{e}>"),
                (Some(n), None) => n,
                (None, Some(e)) => e,
                (None, None) => String::new(),
            }
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_BODY_CHARS {
        let mut cut = MAX_BODY_CHARS;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n[… message truncated in the archive view …]\n");
    }
    s
}

fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The public form of a stored message, or `None` if it must not be public.
///
/// A message that was stored unparsed (over a structural limit) or that makes the MIME
/// parser panic (mail-parser 0.11 does on some malformed multiparts) is shown as its raw
/// body text, which the web layer escapes.
pub fn redact(key: MessageKey, meta: &MessageMeta, raw: &[u8], policy: &Policy) -> Option<PublicMessage> {
    let summary = summarize(key, meta, policy)?;
    let (_, author_address) = author(meta, policy);
    let parsed = if meta.unparsed.is_some() {
        None
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            MessageParser::default()
                .parse(raw)
                .map(|msg| render_parsed(&msg, meta, &summary, policy))
        }))
        .ok()
        .flatten()
    };
    let unparsed = match (&parsed, &meta.unparsed) {
        (Some(_), _) => None,
        (None, Some(reason)) => Some(reason.clone()),
        (None, None) => Some(plenary_core::meta::PARSER_FAILED.to_string()),
    };
    let Rendered {
        headers,
        body,
        html,
        lang,
        attachments,
    } = parsed.unwrap_or_else(|| {
        // Keep only what follows the first blank line, so trace headers never show.
        let text = String::from_utf8_lossy(raw);
        let start = text
            .find("\r\n\r\n")
            .map(|i| i + 4)
            .or_else(|| text.find("\n\n").map(|i| i + 2))
            .unwrap_or(0);
        let headers = vec![
            ("Subject".to_string(), summary.subject.clone()),
            ("Message-ID".to_string(), format!("<{}>", meta.message_id)),
        ];
        Rendered {
            headers,
            body: text[start..].to_string(),
            html: None,
            lang: None,
            attachments: Vec::new(),
        }
    });
    let body = cap(redact_text(&body, policy).into_owned());
    Some(PublicMessage {
        summary,
        author_address,
        references: meta.references.clone(),
        headers,
        body,
        html,
        lang,
        attachments,
        unparsed,
    })
}

struct Rendered {
    headers: Vec<(String, String)>,
    body: String,
    html: Option<String>,
    lang: Option<String>,
    attachments: Vec<PublicAttachment>,
}

/// Undo RFC 3676 `format=flowed`: a line ending in a space continues on the next line of
/// the same quote depth; `delsp=yes` drops that space; a leading space is stuffing.
pub fn unflow(text: &str, delsp: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<usize> = None; // quote depth of a paragraph still being joined
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let depth = line.bytes().take_while(|&b| b == b'>').count();
        let mut content = &line[depth..];
        content = content.strip_prefix(' ').unwrap_or(content);
        let is_sig = content == "-- ";
        if let Some(d) = open {
            if d != depth || is_sig {
                out.push('\n');
                open = None;
            }
        }
        if open.is_none() && depth > 0 {
            out.push_str(&">".repeat(depth));
            out.push(' ');
        }
        let soft = content.ends_with(' ') && !is_sig;
        if soft {
            out.push_str(if delsp { &content[..content.len() - 1] } else { content });
            open = Some(depth);
        } else {
            out.push_str(content);
            out.push('\n');
            open = None;
        }
    }
    if open.is_some() {
        out.push('\n');
    }
    // `split` yields one empty piece after a final newline: do not add a line for it.
    if text.ends_with('\n') && out.ends_with("\n\n") {
        out.pop();
    }
    out
}

/// Sanitise HTML-only mail for display: only structural and text tags, links to http(s)
/// and mailto with `rel="nofollow noopener noreferrer ugc"`, no images (remote images are
/// tracking beacons), no style, no forms; then obfuscate addresses in what is left.
fn sanitize_html(html: &str, policy: &Policy) -> String {
    let clean = ammonia::Builder::default()
        .rm_tags(["img"])
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("nofollow noopener noreferrer ugc"))
        .url_relative(ammonia::UrlRelative::Deny)
        .clean(html)
        .to_string();
    redact_text(&clean, policy).into_owned()
}

fn language_tag(v: &str) -> Option<String> {
    let t = v.split(',').next()?.trim();
    let ok = (2..=35).contains(&t.len())
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && t.bytes().take_while(|b| b.is_ascii_alphabetic()).count() >= 2;
    ok.then(|| t.to_ascii_lowercase())
}

/// The parsed view: allowlisted headers, text body and attachment list.
fn render_parsed(
    msg: &mail_parser::Message<'_>,
    meta: &MessageMeta,
    summary: &PublicSummary,
    policy: &Policy,
) -> Rendered {
    let ids = |v: &[String]| v.iter().map(|i| format!("<{i}>")).collect::<Vec<_>>().join(" ");
    let mut headers = Vec::new();
    if let Some(a) = msg.from() {
        headers.push(("From".to_string(), one_line(&address_list(a, policy))));
    }
    if let Some(a) = msg.to() {
        headers.push(("To".to_string(), one_line(&address_list(a, policy))));
    }
    if let Some(a) = msg.cc() {
        headers.push(("Cc".to_string(), one_line(&address_list(a, policy))));
    }
    headers.push(("Subject".to_string(), summary.subject.clone()));
    let date = chrono::DateTime::from_timestamp(meta.date, 0).unwrap_or_default();
    headers.push(("Date".to_string(), date.to_rfc2822()));
    headers.push(("Message-ID".to_string(), format!("<{}>", meta.message_id)));
    if !meta.in_reply_to.is_empty() {
        headers.push(("In-Reply-To".to_string(), ids(&meta.in_reply_to)));
    }
    if !meta.references.is_empty() {
        headers.push(("References".to_string(), ids(&meta.references)));
    }
    let mut texts = Vec::new();
    let mut html_only = msg.text_body_count() > 0;
    for (i, &pid) in msg.text_body.iter().enumerate() {
        let Some(part) = msg.part(pid) else { continue };
        let ct = part.content_type();
        let attr = |name: &str| ct.and_then(|c| c.attribute(name)).map(|v| v.to_ascii_lowercase());
        html_only &= part.is_text_html();
        let Some(text) = msg.body_text(i) else { continue };
        if !part.is_text_html() && attr("format").as_deref() == Some("flowed") {
            texts.push(unflow(&text, attr("delsp").as_deref() == Some("yes")));
        } else {
            texts.push(text.into_owned());
        }
    }
    let body = texts.join("\n\n");
    let html = if html_only {
        msg.body_html(0).map(|h| sanitize_html(&h, policy))
    } else {
        None
    };
    let lang = match msg.header(mail_parser::HeaderName::ContentLanguage) {
        Some(mail_parser::HeaderValue::Text(t)) => language_tag(t),
        Some(mail_parser::HeaderValue::TextList(l)) => l.first().and_then(|t| language_tag(t)),
        _ => None,
    };
    let attachments = msg
        .attachments()
        .enumerate()
        .map(|(index, part)| public_attachment(index, part, policy))
        .collect();
    Rendered {
        headers,
        body,
        html,
        lang,
        attachments,
    }
}

fn public_attachment(index: usize, part: &mail_parser::MessagePart<'_>, policy: &Policy) -> PublicAttachment {
    let name = part
        .attachment_name()
        .map(one_line)
        .unwrap_or_else(|| "(unnamed)".to_string());
    let content_type = part
        .content_type()
        .map(|ct| match ct.subtype() {
            Some(sub) => format!("{}/{}", ct.ctype(), sub),
            None => ct.ctype().to_string(),
        })
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let content_type = one_line(&content_type).to_ascii_lowercase();
    PublicAttachment {
        index,
        name: redact_text(&name, policy).into_owned(),
        inline_image: RASTER.contains(&content_type.as_str()),
        content_type,
        size: part.len() as u64,
    }
}

/// The bytes of attachment `index` of a public message, with what the public may see of it.
/// `None` when the message is not public, cannot be parsed, or has no such attachment.
pub fn attachment(
    meta: &MessageMeta,
    raw: &[u8],
    policy: &Policy,
    index: usize,
) -> Option<(PublicAttachment, Vec<u8>)> {
    if meta.no_archive || meta.unparsed.is_some() {
        return None;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let msg = MessageParser::default().parse(raw)?;
        let part = msg.attachments().nth(index)?;
        Some((public_attachment(index, part, policy), part.contents().to_vec()))
    }))
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plenary_core::meta::Fallback;
    use plenary_core::ListId;

    const KEY: MessageKey = MessageKey {
        list: ListId(1),
        seq: 1,
    };

    fn policy() -> Policy {
        Policy::for_list("gov@lists.example.org")
    }

    fn meta(raw: &[u8]) -> MessageMeta {
        MessageMeta::extract(
            raw,
            Fallback {
                envelope_date: None,
                received_at: 1_800_000_000,
            },
        )
    }

    #[test]
    fn obfuscates_addresses_but_not_the_list() {
        let t = redact_text(
            "write to ada.lovelace@example.org or gov@lists.example.org, or bob at twistedmatrix.com",
            &policy(),
        );
        assert!(!t.contains("ada.lovelace@example.org"));
        assert!(!t.contains("bob at twistedmatrix.com"));
        assert!(t.contains("a…@e…"));
        assert!(t.contains("b… at t…"));
        assert!(t.contains("gov@lists.example.org"));
    }

    #[test]
    fn page_has_no_address_no_trace_headers() {
        let raw = b"Received: from secret.host ([192.0.2.7])\r\nX-Originating-IP: 192.0.2.7\r\nFrom: Ada <ada@example.org>\r\nTo: gov@lists.example.org\r\nSubject: mail me at ada@example.org\r\nMessage-ID: <m@x>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\nReach me: ada@example.org\r\n";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        let all = format!("{}{:?}{}{}", m.to_raw_text(), m.headers(), m.subject(), m.author());
        assert!(!all.contains("ada@example.org"), "{all}");
        assert!(!all.contains("192.0.2.7"));
        assert!(!all.contains("secret.host"));
        assert_eq!(m.author(), "Ada");
        assert!(m.body().contains("Reach me: a…@e…"));
        assert!(all.contains("gov@lists.example.org"));
    }

    #[test]
    fn no_archive_is_never_public() {
        let raw = b"X-No-Archive: yes\r\nFrom: a@b.org\r\n\r\nsecret";
        assert!(redact(KEY, &meta(raw), raw, &policy()).is_none());
        assert!(summarize(KEY, &meta(raw), &policy()).is_none());
    }

    #[test]
    fn html_only_mail_becomes_text() {
        let raw = b"Content-Type: text/html\r\n\r\n<p>Hello <b>world</b><script>alert(1)</script></p>";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        assert!(m.body().contains("Hello"));
        assert!(!m.body().contains("<b>"));
    }

    #[test]
    fn attachments_are_listed_with_redacted_names() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"cv-ada@example.org.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nSGVsbG8=\r\n--b--\r\n";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        assert_eq!(m.attachments().len(), 1);
        assert_eq!(m.attachments()[0].content_type(), "application/pdf");
        assert!(!m.attachments()[0].name().contains("ada@example.org"));
    }

    #[test]
    fn format_flowed_is_joined() {
        let t = "This is a long \r\nparagraph that \r\nflows.\r\n> quoted \r\n> part\r\nFixed line\r\n-- \r\nsig\r\n";
        assert_eq!(
            unflow(t, false),
            "This is a long paragraph that flows.\n> quoted part\nFixed line\n-- \nsig\n"
        );
        assert_eq!(unflow("Ein lan \r\ng Wort\r\n", true), "Ein lang Wort\n");
        let raw = b"Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nOne \r\nline.\r\n";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        assert_eq!(m.body().trim_end(), "One line.");
    }

    #[test]
    fn html_only_mail_is_sanitised_and_redacted() {
        let raw = b"Content-Type: text/html\r\nContent-Language: fr\r\n\r\n<style>p{color:red}</style><p style=\"x\" onclick=\"alert(1)\">Bonjour <a href=\"javascript:alert(1)\">x</a> <a href=\"https://example.org/\">site</a> <img src=\"https://tracker.example/p.gif\"> ada@example.org<script>alert(2)</script><form action=x><input></form></p>";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        let h = m.html().expect("html-only mail keeps sanitised HTML");
        for bad in [
            "<script",
            "onclick",
            "javascript:",
            "<img",
            "tracker.example",
            "<style",
            "style=",
            "<form",
            "<input",
            "ada@example.org",
        ] {
            assert!(!h.contains(bad), "{bad} survived in {h}");
        }
        assert!(h.contains("Bonjour"));
        assert!(h.contains("rel=\"nofollow noopener noreferrer ugc\""));
        assert_eq!(m.lang(), Some("fr"));
        let raw = b"Content-Type: text/plain\r\n\r\n<b>not html</b>";
        assert_eq!(redact(KEY, &meta(raw), raw, &policy()).expect("public").html(), None);
    }

    #[test]
    fn attachment_bytes_and_inline_images() {
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"a.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: attachment; filename=\"x.svg\"\r\n\r\n<svg onload=alert(1)/>\r\n--b--\r\n";
        let m = redact(KEY, &meta(raw), raw, &policy()).expect("public");
        assert_eq!(m.attachments().len(), 2);
        assert!(m.attachments()[0].inline_image());
        assert!(!m.attachments()[1].inline_image(), "SVG is never an inline image");
        let (a, bytes) = attachment(&meta(raw), raw, &policy(), 0).expect("attachment 0");
        assert_eq!(a.name(), "a.png");
        assert_eq!(bytes, b"\x89PNG\r\n\x1a\n");
        assert!(attachment(&meta(raw), raw, &policy(), 2).is_none());
        let hidden = b"X-No-Archive: yes\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\n\r\nx\r\n--b--\r\n";
        assert!(attachment(&meta(hidden), hidden, &policy(), 0).is_none());
    }

    fn b64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Bodies, RFC 2047 subjects and RFC 2231 file names in every legacy charset of the
    /// charset-torture corpus decode to the same text as its UTF-8 reference.
    #[test]
    fn every_charset_of_the_corpus_decodes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/corpora/charset-torture/gmime-filters");
        if !dir.is_dir() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the charset-torture corpus is missing, and CI must run this test"
            );
            eprintln!("SKIPPED: charset-torture corpus not found");
            return;
        }
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        let norm = |s: &str| s.replace("\r\n", "\n").trim_end().to_string();
        for (file, charset, reference) in [
            ("chinese.big5.txt", "big5", "chinese.utf-8.txt"),
            ("cyrillic.cp1251.txt", "windows-1251", "cyrillic.utf-8.txt"),
            ("cyrillic.iso-8859-5.txt", "iso-8859-5", "cyrillic.utf-8.txt"),
            ("cyrillic.koi8-r.txt", "koi8-r", "cyrillic.utf-8.txt"),
            ("japanese.iso-2022-jp.txt", "iso-2022-jp", "japanese.utf-8.txt"),
            ("japanese.shift-jis.txt", "shift_jis", "japanese.utf-8.txt"),
        ] {
            let bytes = read(file);
            let want = String::from_utf8(read(reference)).expect("utf-8 reference");
            let first_line: Vec<u8> = bytes.split(|b| *b == b'\n').next().unwrap_or_default().to_vec();
            let first_line: Vec<u8> = first_line.into_iter().filter(|b| *b != b'\r').collect();
            let want_subject = want.lines().next().unwrap_or_default().trim().to_string();
            let pct: String = first_line.iter().map(|b| format!("%{b:02X}")).collect();
            let raw = format!(
                "Subject: =?{charset}?B?{}?=\r\nMessage-ID: <{file}@x>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*={charset}''{pct}\r\n\r\nx\r\n--b--\r\n",
                b64(&first_line),
                b64(&bytes)
            );
            let m = redact(KEY, &meta(raw.as_bytes()), raw.as_bytes(), &policy()).expect("public");
            // The legacy files lack the few characters their charset cannot encode (Big5 has no
            // 続), so the decoded text must be the reference with at most those left out.
            let got = norm(m.body());
            let want_n = norm(&want);
            assert!(!got.contains('\u{FFFD}'), "{file}: undecodable bytes: {got}");
            let mut rest = want_n.chars();
            let subsequence = got.chars().all(|c| rest.any(|w| w == c));
            assert!(subsequence, "{file}: body differs from the reference: {got}");
            assert!(
                got.chars().count() * 100 >= want_n.chars().count() * 80,
                "{file}: too much lost: {got}"
            );
            let subject = m.subject().trim();
            let mut rest = want_subject.chars();
            assert!(
                !subject.contains('\u{FFFD}')
                    && subject.chars().count() > 10
                    && subject.chars().all(|c| rest.any(|w| w == c)),
                "{file}: RFC 2047 subject {subject:?}"
            );
            let name = m.attachments()[0].name();
            assert!(
                !name.contains('\u{FFFD}') && !name.is_empty() && name != "(unnamed)",
                "{file}: RFC 2231 name {name:?}"
            );
        }
    }
}
