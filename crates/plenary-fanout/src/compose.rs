//! Turning a stored message into list mail: CRLF normalisation, list headers (RFC 2369,
//! 2919, 5064, 8058), subject prefix, footer and DMARC From munging, done once per post;
//! then, per recipient, only the one-click `List-Unsubscribe` and the DKIM signature.
//!
//! Message-ID, In-Reply-To and References are never touched.

use crate::dkim::{self, DkimKey};
use plenary_core::list::{DmarcMode, PostingPolicy};
use plenary_core::{urls, MemberAddress};
use plenary_list::notice::{body_text, display_name, header_text};
use plenary_store::ListRecord;

/// Headers a list replaces: whatever an earlier list (or a sender) put there is dropped.
const REPLACED: &[&str] = &[
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-post",
    "list-owner",
    "list-archive",
    "archived-at",
    "x-loop",
    "precedence",
    "return-path",
];

/// Headers covered by our DKIM signature, in this order when present.
const SIGNED: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-post",
    "list-owner",
    "list-archive",
    "archived-at",
];

/// Signed once more than present, so they cannot be added after signing.
const OVERSIGNED: &[&str] = &[
    "from",
    "subject",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-post",
];

/// What to do to a message before it goes out.
#[derive(Debug, Clone, Default)]
pub struct Transform {
    /// The public archive permalink (`Archived-At`).
    pub archived_at: Option<String>,
    /// Apply the list's subject prefix, footer and DMARC setting (posts only).
    pub list_changes: bool,
    /// Add the list headers (posts and digests; not owner forwards).
    pub list_headers: bool,
    /// The author's domain publishes `p=quarantine` or `p=reject` (looked up by the
    /// worker, see `dmarc.rs`): with `dmarc = munge`, From is rewritten.
    pub strict_dmarc: bool,
    /// With ARC sealing: our authserv-id. Incoming `Authentication-Results` fields that
    /// claim it are forged and left out (RFC 8601 §5).
    pub authserv_id: Option<String>,
}

/// A message prepared for a list: everything but the per-recipient parts.
pub struct Prepared {
    /// (name, raw value without the final CRLF), in output order.
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    bh: String,
    domain: String,
    list_leave: String,
    base_url: String,
    one_click: bool,
    /// The ARC set (three header lines, CRLF-terminated) every copy starts with; empty
    /// without ARC sealing (see `arc.rs`).
    arc: Vec<u8>,
}

/// Split a CRLF message into header fields and body.
fn split(raw: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let (head, body) = match memchr::memmem::find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i + 2], &raw[i + 4..]),
        None => (raw, &b""[..]),
    };
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(last) = fields.last_mut() {
                last.1.extend_from_slice(b"\r\n");
                last.1.extend_from_slice(line);
            }
            continue;
        }
        match memchr::memchr(b':', line) {
            Some(i) => fields.push((
                String::from_utf8_lossy(&line[..i]).trim().to_string(),
                line[i + 1..].to_vec(),
            )),
            None => continue, // not a header field: dropped rather than passed on
        }
    }
    (fields, body)
}

fn get<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn author_domain(from: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(from).to_ascii_lowercase();
    let at = s.rfind('@')?;
    let d: String = s[at + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    (!d.is_empty()).then_some(d)
}

/// The domain of the author's address in From, lower-cased.
pub fn from_domain(raw: &[u8]) -> Option<String> {
    let (fields, _) = split(raw);
    get(&fields, "from").and_then(author_domain)
}

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2): its first word.
fn authserv_id(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let head = text.split(';').next().unwrap_or_default();
    head.split_whitespace().next().unwrap_or_default().to_string()
}

/// Prepare `raw` for `list`. `base_url` is the web archive's public base.
pub fn prepare(list: &ListRecord, raw: &[u8], base_url: &str, t: &Transform) -> Prepared {
    let raw = plenary_core::mime::crlf(raw);
    let (fields, body) = split(&raw);
    let mut body = body.to_vec();
    let base = base_url.trim_end_matches('/').to_string();
    let addr = &list.address;
    let s = &list.settings;
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(fields.len() + 12);
    if t.list_headers {
        let name = if list.name.is_empty() {
            addr.local().to_string()
        } else {
            list.name.clone()
        };
        let archive = format!("{base}{}", urls::list(addr.as_str()));
        let h = |n: &str, v: String| (n.to_string(), format!(" {v}").into_bytes());
        out.push(h("List-Id", format!("{} <{}>", display_name(&name), addr.list_id())));
        out.push(h("List-Help", format!("<mailto:{}?subject=help>", addr.sub("request"))));
        out.push(h(
            "List-Subscribe",
            format!("<{archive}>, <mailto:{}?subject=subscribe>", addr.sub("join")),
        ));
        out.push(h(
            "List-Post",
            if s.posting == PostingPolicy::Announce {
                "NO".to_string()
            } else {
                format!("<mailto:{addr}>")
            },
        ));
        out.push(h("List-Owner", format!("<mailto:{}>", addr.sub("owner"))));
        out.push(h("List-Archive", format!("<{archive}>")));
        if let Some(a) = &t.archived_at {
            out.push(h("Archived-At", format!("<{a}>")));
        }
        out.push(h("Precedence", "list".into()));
        out.push(h("X-Loop", addr.to_string()));
    }
    let munge = t.list_changes
        && match s.dmarc {
            DmarcMode::Off => false,
            DmarcMode::Always => true,
            DmarcMode::Munge => {
                t.strict_dmarc
                    || get(&fields, "from")
                        .and_then(author_domain)
                        .is_some_and(|d| s.always_munge.contains(&d))
            }
        };
    let has_reply_to = get(&fields, "reply-to").is_some();
    for (name, value) in &fields {
        let lower = name.to_ascii_lowercase();
        if t.list_headers && REPLACED.contains(&lower.as_str()) {
            continue;
        }
        if lower == "authentication-results"
            && t.authserv_id
                .as_deref()
                .is_some_and(|ours| authserv_id(value).eq_ignore_ascii_case(ours))
        {
            continue;
        }
        if munge && lower == "from" {
            let original = String::from_utf8_lossy(value).trim().to_string();
            let who = original
                .split('<')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
                .to_string();
            let who = if who.is_empty() { original.clone() } else { who };
            out.push((
                "From".into(),
                format!(" {} <{addr}>", display_name(&format!("{who} via {}", addr.local()))).into_bytes(),
            ));
            if !has_reply_to {
                out.push(("Reply-To".into(), value.clone()));
            }
            continue;
        }
        if t.list_changes && lower == "subject" && !s.subject_prefix.is_empty() {
            let text = String::from_utf8_lossy(value);
            if !text.contains(&s.subject_prefix) {
                out.push((
                    name.clone(),
                    format!(" {} {}", header_text(&s.subject_prefix, 100), text.trim_start()).into_bytes(),
                ));
                continue;
            }
        }
        out.push((name.clone(), value.clone()));
    }
    if t.list_changes && !s.footer.is_empty() {
        let ctype = get(&fields, "content-type")
            .map(|v| String::from_utf8_lossy(v).to_ascii_lowercase())
            .unwrap_or_default();
        let cte = get(&fields, "content-transfer-encoding")
            .map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase())
            .unwrap_or_default();
        if (ctype.is_empty() || ctype.trim_start().starts_with("text/plain"))
            && matches!(cte.as_str(), "" | "7bit" | "8bit")
        {
            if !body.ends_with(b"\r\n") && !body.is_empty() {
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"-- \r\n");
            body.extend_from_slice(body_text(&s.footer).as_bytes());
        }
    }
    let bh = dkim::body_hash(&body);
    Prepared {
        headers: out,
        body,
        bh,
        domain: addr.domain().to_string(),
        list_leave: addr.sub("leave"),
        base_url: base,
        one_click: t.list_headers,
        arc: Vec::new(),
    }
}

impl Prepared {
    pub fn body_hash(&self) -> &str {
        &self.bh
    }

    /// The copy without its per-recipient headers and signatures: what an ARC seal signs.
    pub fn template(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 4096);
        let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()));
        write_fields_and_body(&mut out, headers, &self.body);
        out
    }

    /// Put this ARC set (from [`crate::arc::Sealer::seal`] over [`Self::template`]) in
    /// front of every copy.
    pub fn set_arc(&mut self, headers: Vec<u8>) {
        self.arc = headers;
    }

    /// The copy for one recipient. `unsub_token` is the member's one-click token.
    pub fn render(&self, keys: &[DkimKey], unsub_token: Option<&str>, now: i64) -> Result<Vec<u8>, dkim::DkimError> {
        let mut per: Vec<(String, Vec<u8>)> = Vec::with_capacity(2);
        if self.one_click {
            match unsub_token {
                Some(tok) => {
                    per.push((
                        "List-Unsubscribe".into(),
                        format!(
                            " <{}/u/{tok}>, <mailto:{}?subject=unsubscribe>",
                            self.base_url, self.list_leave
                        )
                        .into_bytes(),
                    ));
                    per.push(("List-Unsubscribe-Post".into(), b" List-Unsubscribe=One-Click".to_vec()));
                }
                None => per.push((
                    "List-Unsubscribe".into(),
                    format!(" <mailto:{}?subject=unsubscribe>", self.list_leave).into_bytes(),
                )),
            }
        }
        let all: Vec<(&str, &[u8])> = per
            .iter()
            .chain(self.headers.iter())
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        let mut signed: Vec<&str> = Vec::with_capacity(SIGNED.len() + OVERSIGNED.len());
        for name in SIGNED {
            let n = all.iter().filter(|(h, _)| h.eq_ignore_ascii_case(name)).count();
            for _ in 0..n {
                signed.push(name);
            }
            if OVERSIGNED.contains(name) {
                signed.push(name);
            }
        }
        let mut out = Vec::with_capacity(self.body.len() + 4096);
        out.extend_from_slice(&self.arc);
        for k in keys {
            out.extend_from_slice(dkim::sign(k, &self.domain, &all, &signed, &self.bh, now)?.as_bytes());
        }
        write_fields_and_body(&mut out, all.iter().copied(), &self.body);
        Ok(out)
    }
}

/// `Name:value` lines, the blank line, the body: the one writer of both [`Prepared::render`]
/// and [`Prepared::template`], so a copy holds exactly the bytes its ARC seal signed.
fn write_fields_and_body<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'a str, &'a [u8])>, body: &[u8]) {
    for (n, v) in fields {
        out.extend_from_slice(n.as_bytes());
        out.push(b':');
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The public permalink of a message.
pub fn permalink(base_url: &str, list: &ListRecord, message_id: &str) -> String {
    format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        urls::message(list.address.as_str(), message_id)
    )
}

/// The envelope sender for `rcpt`: VERP, so a bounce names the member.
pub fn envelope_from(list: &ListRecord, rcpt: &MemberAddress) -> String {
    list.address.verp(rcpt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plenary_core::{ListAddress, ListId};

    fn list() -> ListRecord {
        ListRecord {
            id: ListId(1),
            address: ListAddress::parse("gov@lists.example.org").expect("valid"),
            name: "Gov".into(),
            description: String::new(),
            created: 0,
            settings: Default::default(),
        }
    }

    #[test]
    fn bare_lf_dot_cannot_end_the_message_early() {
        let raw = b"From: a@x.org\nSubject: s\n\nline\n.\nMAIL FROM:<evil@x>\r\n";
        let p = prepare(&list(), raw, "https://l.example.org", &Transform::default());
        let out = p.render(&[], None, 0).expect("render");
        // Every LF is part of a CRLF, so the relay client's dot-stuffing sees the "." line.
        for (i, b) in out.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(out[i - 1], b'\r');
            }
        }
    }

    #[test]
    fn list_headers_replace_old_ones_and_keep_ids() {
        let raw = b"From: Ana <ana@x.org>\r\nList-Id: <evil.example.com>\r\nMessage-ID: <m1@x>\r\nReferences: <r@x>\r\nSubject: s\r\n\r\nbody\r\n";
        let t = Transform {
            archived_at: Some(permalink("https://l.example.org", &list(), "m1@x")),
            list_changes: true,
            list_headers: true,
            strict_dmarc: false,
            authserv_id: None,
        };
        let p = prepare(&list(), raw, "https://l.example.org/", &t);
        let out = String::from_utf8(p.render(&[], Some("tok"), 0).expect("render")).expect("utf8");
        assert!(!out.contains("evil.example.com"));
        assert!(out.contains("List-Id: \"Gov\" <gov.lists.example.org>\r\n"));
        assert!(out.contains("List-Unsubscribe: <https://l.example.org/u/tok>, <mailto:gov-leave@lists.example.org?subject=unsubscribe>\r\n"));
        assert!(out.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(out.contains("Archived-At: <https://l.example.org/lists/gov@lists.example.org/m/m1@x/>\r\n"));
        assert!(out.contains("Message-ID: <m1@x>\r\nReferences: <r@x>\r\n"));
        assert!(out.contains("List-Post: <mailto:gov@lists.example.org>"));
    }

    #[test]
    fn arc_template_leaves_out_per_recipient_headers_and_the_set_leads_every_copy() {
        let raw = b"From: Ana <ana@x.org>\r\nMessage-ID: <m1@x>\r\nSubject: s\r\n\r\nbody\r\n";
        let t = Transform {
            archived_at: None,
            list_changes: true,
            list_headers: true,
            strict_dmarc: false,
            authserv_id: None,
        };
        let mut p = prepare(&list(), raw, "https://l.example.org", &t);
        let template = String::from_utf8(p.template()).expect("utf8");
        assert!(template.contains("List-Id: ") && template.contains("From: Ana <ana@x.org>\r\n"));
        assert!(!template.contains("List-Unsubscribe"), "{template}");
        assert!(template.ends_with("\r\n\r\nbody\r\n"), "{template}");
        let set = b"ARC-Seal: i=1; cv=none\r\nARC-Message-Signature: i=1\r\nARC-Authentication-Results: i=1; h\r\n";
        p.set_arc(set.to_vec());
        for tok in ["one", "two"] {
            // Byte for byte: the set, the per-recipient lines, then exactly what was sealed.
            let mut want = set.to_vec();
            want.extend_from_slice(
                format!("List-Unsubscribe: <https://l.example.org/u/{tok}>, <mailto:gov-leave@lists.example.org?subject=unsubscribe>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").as_bytes(),
            );
            want.extend_from_slice(template.as_bytes());
            let out = p.render(&[], Some(tok), 0).expect("render");
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
        }
    }

    #[test]
    fn forged_authentication_results_for_our_id_are_dropped() {
        let raw = b"Authentication-Results: Lists.Example.org; dkim=pass header.d=bank.example\r\nAuthentication-Results: mx.other.example; spf=pass\r\nFrom: a@x.org\r\nSubject: s\r\n\r\nbody\r\n";
        let mut t = Transform {
            list_changes: true,
            list_headers: true,
            ..Transform::default()
        };
        let kept = String::from_utf8(prepare(&list(), raw, "https://l", &t).template()).expect("utf8");
        assert!(kept.contains("header.d=bank.example"), "without ARC nothing is dropped");
        t.authserv_id = Some("lists.example.org".into());
        let out = String::from_utf8(prepare(&list(), raw, "https://l", &t).template()).expect("utf8");
        assert!(!out.contains("bank.example"), "{out}");
        assert!(
            out.contains("Authentication-Results: mx.other.example; spf=pass\r\n"),
            "{out}"
        );
    }

    #[test]
    fn body_is_hashed_once_per_post_not_per_recipient() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("k.pem");
        let key = openssl::rsa::Rsa::generate(2048).expect("rsa");
        std::fs::write(&key_path, key.private_key_to_pem().expect("pem")).expect("write");
        let key = DkimKey::load(&key_path, "s", None).expect("load");
        let before = crate::dkim::BODY_HASHES.with(|c| c.get());
        let t = Transform {
            archived_at: None,
            list_changes: true,
            list_headers: true,
            strict_dmarc: false,
            authserv_id: None,
        };
        let p = prepare(&list(), b"From: a@x.org\r\nSubject: s\r\n\r\nbody\r\n", "https://l", &t);
        let mut sigs = std::collections::HashSet::new();
        for i in 0..50 {
            let out = String::from_utf8(
                p.render(std::slice::from_ref(&key), Some(&format!("tok{i}")), 0)
                    .expect("r"),
            )
            .expect("u");
            assert!(out.contains(&format!("bh={};", p.body_hash())));
            sigs.insert(out.split("b=").last().map(str::to_string));
        }
        assert_eq!(
            crate::dkim::BODY_HASHES.with(|c| c.get()) - before,
            1,
            "one body hash for 50 copies"
        );
        assert_eq!(
            sigs.len(),
            50,
            "each copy has its own signature (its own one-click URL)"
        );
    }

    #[test]
    fn prefix_footer_and_munging() {
        let mut l = list();
        l.settings.subject_prefix = "[gov]".into();
        l.settings.footer = "Gov list\nhttps://l.example.org".into();
        l.settings.dmarc = DmarcMode::Munge;
        l.settings.always_munge = vec!["yahoo.com".into()];
        let t = Transform {
            archived_at: None,
            list_changes: true,
            list_headers: true,
            strict_dmarc: false,
            authserv_id: None,
        };
        let raw = b"From: \"Bo\" <bo@yahoo.com>\r\nSubject: hello\r\n\r\nbody\r\n";
        let out = String::from_utf8(prepare(&l, raw, "https://l", &t).render(&[], None, 0).expect("r")).expect("u");
        assert!(out.contains("Subject: [gov] hello\r\n"), "{out}");
        assert!(
            out.contains("From: \"Bo via gov\" <gov@lists.example.org>\r\n"),
            "{out}"
        );
        assert!(out.contains("Reply-To: \"Bo\" <bo@yahoo.com>\r\n"), "{out}");
        assert!(
            out.ends_with("body\r\n-- \r\nGov list\r\nhttps://l.example.org\r\n"),
            "{out}"
        );
        let raw2 = b"From: cy@example.net\r\nSubject: [gov] again\r\n\r\nx\r\n";
        let out2 = String::from_utf8(prepare(&l, raw2, "https://l", &t).render(&[], None, 0).expect("r")).expect("u");
        assert!(
            out2.contains("From: cy@example.net\r\n") && out2.contains("Subject: [gov] again\r\n"),
            "{out2}"
        );
        // The same author when the worker found p=reject/quarantine for example.net.
        let strict = Transform {
            strict_dmarc: true,
            authserv_id: None,
            ..t.clone()
        };
        let out3 =
            String::from_utf8(prepare(&l, raw2, "https://l", &strict).render(&[], None, 0).expect("r")).expect("u");
        assert!(
            out3.contains("From: \"cy@example.net via gov\" <gov@lists.example.org>\r\n"),
            "{out3}"
        );
        assert_eq!(from_domain(raw2).as_deref(), Some("example.net"));
        // Off never munges, whatever the policy.
        l.settings.dmarc = DmarcMode::Off;
        let out4 =
            String::from_utf8(prepare(&l, raw2, "https://l", &strict).render(&[], None, 0).expect("r")).expect("u");
        assert!(out4.contains("From: cy@example.net\r\n"), "{out4}");
    }
}
