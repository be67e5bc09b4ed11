//! Mail the list writes itself: confirmations, welcomes, moderation notices, rejections.
//!
//! Every header value that comes from outside (a subject, a display name, a reason typed by
//! a moderator, a list name from the config) goes through [`header_text`], which drops CR,
//! LF and other control characters and encodes non-ASCII as RFC 2047, so nothing can start a
//! new header or a second message (SECURITY.md O-01, U-02). Bodies are normalised to CRLF.

use plenary_core::{ListAddress, MemberAddress};

/// Whether the notice answers a message (RFC 3834 `auto-replied`) or is generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto {
    Replied,
    Generated,
}

/// A notice to be composed.
pub struct Notice<'a> {
    pub list: &'a ListAddress,
    pub list_name: &'a str,
    pub to: &'a MemberAddress,
    pub subject: &'a str,
    pub body: &'a str,
    pub reply_to: Option<String>,
    pub in_reply_to: Option<&'a str>,
    pub auto: Auto,
}

/// One line of header text: control characters removed, length capped, RFC 2047 encoded
/// when not ASCII.
pub fn header_text(s: &str, max: usize) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .take(max)
        .collect();
    if clean.is_ascii() {
        return clean;
    }
    // Encoded words of at most 45 input bytes each (75-char limit), folded with CRLF SP.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in clean.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(encoded_word(&chunk));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(encoded_word(&chunk));
    }
    words.join("\r\n ")
}

fn encoded_word(s: &str) -> String {
    format!("=?utf-8?b?{}?=", base64(s.as_bytes()))
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// A display name as a quoted string (or encoded words), safe in a From header.
pub fn display_name(name: &str) -> String {
    let h = header_text(name, 120);
    if h.is_ascii() && !h.contains("=?") {
        format!("\"{}\"", h.replace(['\\', '"'], ""))
    } else {
        h
    }
}

/// A fresh Message-ID in the list's domain.
pub fn message_id(list: &ListAddress) -> String {
    format!("<{}@{}>", crate::token::new_token(), list.domain())
}

/// Body text with CRLF line ends and no other control characters but tab.
pub fn body_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 32);
    for line in s.replace("\r\n", "\n").replace('\r', "\n").split('\n') {
        out.extend(line.chars().filter(|c| *c == '\t' || !c.is_control()));
        out.push_str("\r\n");
    }
    out
}

/// Compose the notice as a complete RFC 5322 message.
pub fn compose(n: &Notice<'_>) -> String {
    let mut m = String::with_capacity(1024 + n.body.len());
    let name = if n.list_name.is_empty() {
        n.list.local().to_string()
    } else {
        n.list_name.to_string()
    };
    m.push_str(&format!(
        "From: {} <{}>\r\n",
        display_name(&format!("{name} list")),
        n.list.sub("request")
    ));
    m.push_str(&format!("To: <{}>\r\n", n.to));
    m.push_str(&format!("Subject: {}\r\n", header_text(n.subject, 200)));
    m.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
    m.push_str(&format!("Message-ID: {}\r\n", message_id(n.list)));
    if let Some(irt) = n.in_reply_to {
        let id = header_text(irt, 250).replace(['<', '>', ' '], "");
        if !id.is_empty() {
            m.push_str(&format!("In-Reply-To: <{id}>\r\nReferences: <{id}>\r\n"));
        }
    }
    if let Some(r) = &n.reply_to {
        m.push_str(&format!("Reply-To: <{}>\r\n", header_text(r, 254)));
    }
    m.push_str(&format!("List-Id: <{}>\r\n", n.list.list_id()));
    m.push_str(&format!("X-Loop: {}\r\n", n.list));
    m.push_str(match n.auto {
        Auto::Replied => "Auto-Submitted: auto-replied\r\n",
        Auto::Generated => "Auto-Submitted: auto-generated\r\n",
    });
    m.push_str("Precedence: bulk\r\n");
    m.push_str(
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    m.push_str(&body_text(n.body));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_injection_is_impossible() {
        let list = ListAddress::parse("gov@lists.example.org").expect("valid");
        let to = MemberAddress::parse("a@example.net").expect("valid");
        let raw = compose(&Notice {
            list: &list,
            list_name: "Gov\r\nBcc: victim@example.com",
            to: &to,
            subject: "hello\r\nBcc: victim@example.com\r\n\r\nbody",
            body: "line\n.\nRCPT TO:<x@y>",
            reply_to: Some("x\r\nBcc: v@e.com".into()),
            in_reply_to: Some("<a@b>\r\nBcc: v@e.com"),
            auto: Auto::Replied,
        });
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!head.lines().any(|l| l.starts_with("Bcc:")), "{head}");
        // Every line ends in CRLF (no bare LF or CR that a relay could read as a line end);
        // the lone "." stays a line of its own, for the relay client to dot-stuff.
        assert!(!raw.replace("\r\n", "").contains('\n'), "bare LF in {raw:?}");
        assert!(!raw.replace("\r\n", "").contains('\r'), "bare CR in {raw:?}");
        assert!(raw.ends_with("\r\nline\r\n.\r\nRCPT TO:<x@y>\r\n"), "{raw:?}");
    }

    #[test]
    fn non_ascii_subjects_are_encoded() {
        let h = header_text(
            "Réunion du groupe — ordre du jour très long pour dépasser la limite",
            200,
        );
        assert!(h.is_ascii());
        assert!(h.starts_with("=?utf-8?b?"));
        assert!(h.split("\r\n ").all(|w| w.len() <= 75));
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
    }
}
