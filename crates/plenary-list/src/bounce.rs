//! Bounce classification: DSNs (RFC 3464) and the common non-DSN formats.
//!
//! With VERP the recipient is known from the address the bounce came to; what we need from
//! the body is only whether it is a permanent failure, a temporary one, or not a bounce at
//! all (an auto-reply or a delay warning). Scanning the text fields is more robust than a
//! full MIME walk: many MTAs send `message/delivery-status` parts with broken structure,
//! and older ones send plain text.

use plenary_core::MemberAddress;
use regex::Regex;
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceKind {
    /// Permanent failure (5.x.x): counts fully.
    Hard,
    /// Temporary failure that the remote MTA gave up on, or a full mailbox: counts half.
    Soft,
    /// A delay warning, an auto-reply or something we cannot read: not counted.
    NotABounce,
}

/// What a bounce says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounce {
    pub kind: BounceKind,
    /// The failed recipient named in the report (used when the bounce has no VERP token).
    pub recipient: Option<MemberAddress>,
    /// A short reason for the log.
    pub detail: String,
}

fn re(cell: &'static OnceLock<Regex>, pat: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pat).expect("constant regex"))
}

/// Classify a bounce message (only its first 256 KiB are looked at).
pub fn classify(raw: &[u8]) -> Bounce {
    static STATUS: OnceLock<Regex> = OnceLock::new();
    static ACTION: OnceLock<Regex> = OnceLock::new();
    static FINAL: OnceLock<Regex> = OnceLock::new();
    static SMTP_CODE: OnceLock<Regex> = OnceLock::new();
    let text = String::from_utf8_lossy(&raw[..raw.len().min(256 * 1024)]).to_ascii_lowercase();
    let recipient = re(
        &FINAL,
        r"(?m)^(?:final|original)-recipient:\s*rfc822;\s*<?([^\s<>;]+@[^\s<>;]+)>?",
    )
    .captures(&text)
    .and_then(|c| MemberAddress::parse(&c[1]).ok());
    let action = re(&ACTION, r"(?m)^action:\s*([a-z]+)")
        .captures(&text)
        .map(|c| c[1].to_string());
    let status = re(&STATUS, r"(?m)^status:\s*([245])\.(\d{1,3})\.(\d{1,3})")
        .captures(&text)
        .map(|c| (c[1].to_string(), format!("{}.{}.{}", &c[1], &c[2], &c[3])));
    if let Some(action) = action.as_deref() {
        // A real DSN: its fields decide.
        return match (action, status) {
            ("failed", Some((class, code))) if class == "5" => Bounce {
                kind: BounceKind::Hard,
                recipient,
                detail: format!("DSN failed {code}"),
            },
            ("failed", Some((_, code))) => Bounce {
                kind: BounceKind::Soft,
                recipient,
                detail: format!("DSN failed {code}"),
            },
            ("failed", None) => Bounce {
                kind: BounceKind::Hard,
                recipient,
                detail: "DSN failed".into(),
            },
            (other, _) => Bounce {
                kind: BounceKind::NotABounce,
                recipient,
                detail: format!("DSN action {other}"),
            },
        };
    }
    // Non-DSN formats (qmail, old Exim/Sendmail, Exchange): look for the SMTP reply.
    let hard_words = [
        "user unknown",
        "unknown user",
        "no such user",
        "mailbox unavailable",
        "does not exist",
        "recipient address rejected",
        "address rejected",
        "no mailbox here",
        "account has been disabled",
        "invalid recipient",
    ];
    let soft_words = ["mailbox full", "over quota", "quota exceeded", "mailbox is full"];
    let looks_like_bounce = text.contains("delivery") || text.contains("undeliver") || text.contains("failure");
    if let Some(c) = re(&SMTP_CODE, r"\b([45])[0-9]{2}[ -]([45])\.(\d{1,3})\.(\d{1,3})\b").captures(&text) {
        let kind = if &c[2] == "5" {
            BounceKind::Hard
        } else {
            BounceKind::Soft
        };
        return Bounce {
            kind,
            recipient,
            detail: format!("SMTP {}.{}.{}", &c[2], &c[3], &c[4]),
        };
    }
    if looks_like_bounce {
        if let Some(w) = hard_words.iter().find(|w| text.contains(**w)) {
            return Bounce {
                kind: BounceKind::Hard,
                recipient,
                detail: (*w).to_string(),
            };
        }
        if let Some(w) = soft_words.iter().find(|w| text.contains(**w)) {
            return Bounce {
                kind: BounceKind::Soft,
                recipient,
                detail: (*w).to_string(),
            };
        }
    }
    Bounce {
        kind: BounceKind::NotABounce,
        recipient,
        detail: "not recognised as a bounce".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n\
Final-Recipient: rfc822; bob@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected\r\n\r\n--b--\r\n";

    #[test]
    fn rfc3464_hard_bounce() {
        let b = classify(DSN.as_bytes());
        assert_eq!(b.kind, BounceKind::Hard);
        assert_eq!(b.recipient.map(|r| r.to_string()).as_deref(), Some("bob@example.net"));
    }

    #[test]
    fn delay_warning_is_not_a_bounce() {
        let d = DSN.replace("Action: failed\r\nStatus: 5.1.1", "Action: delayed\r\nStatus: 4.4.1");
        assert_eq!(classify(d.as_bytes()).kind, BounceKind::NotABounce);
    }

    #[test]
    fn non_dsn_formats() {
        let qmail = "Subject: failure notice\r\n\r\nHi. This is the qmail-send program.\r\n\
<bob@example.net>:\r\nRemote host said: 550 5.1.1 user unknown\r\n";
        assert_eq!(classify(qmail.as_bytes()).kind, BounceKind::Hard);
        let full = "Subject: Delivery failure\r\n\r\nThe mailbox is full, try later.\r\n";
        assert_eq!(classify(full.as_bytes()).kind, BounceKind::Soft);
        let vacation = "Subject: Out of office\r\n\r\nI am away until Monday.\r\n";
        assert_eq!(classify(vacation.as_bytes()).kind, BounceKind::NotABounce);
    }
}
