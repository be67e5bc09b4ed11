//! List addresses and envelope recipients.
//!
//! Why this is strict: the only mail Plenary accepts is mail for a list it hosts. A recipient
//! is therefore never "an address", it is one of a handful of exact strings derived from a
//! configured list address. Source routes, `%` hacks, `!` paths, quoted local parts, address
//! literals and trailing dots cannot match, so there is no way to turn the server into a relay.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest address we accept anywhere (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;

/// Why a string is not a valid list address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
    #[error("address must have exactly one '@'")]
    NotOneAt,
    #[error("local part must be 1 to {MAX_LOCAL_LEN} characters of a-z, 0-9, '.', '_' or '-'")]
    BadLocal,
    #[error("domain must be dot-separated labels of a-z, 0-9 and '-'")]
    BadDomain,
    #[error("local part must not end in a command suffix such as -request or -bounces")]
    ReservedSuffix,
}

/// The command sub-addresses every list owns. A list's own local part may not end in one.
const SUFFIXES: [&str; 6] = ["-request", "-join", "-leave", "-owner", "-bounces", "-confirm"];

/// A validated, lower-cased list posting address such as `governance@lists.example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ListAddress(String);

impl ListAddress {
    /// Validate and normalise (lower-case) a list address.
    pub fn parse(input: &str) -> Result<ListAddress, AddressError> {
        let s = input.trim().to_ascii_lowercase();
        let (local, _) = split_checked(&s, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
        })?;
        if SUFFIXES.iter().any(|suf| local.ends_with(suf)) {
            return Err(AddressError::ReservedSuffix);
        }
        Ok(ListAddress(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn local(&self) -> &str {
        self.0.split('@').next().unwrap_or_default()
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or_default()
    }

    /// `LIST-SUFFIX@domain`, e.g. `sub("request")` gives the command address.
    pub fn sub(&self, suffix: &str) -> String {
        format!("{}-{}@{}", self.local(), suffix, self.domain())
    }

    /// The RFC 2919 list identifier, `local.domain`.
    pub fn list_id(&self) -> String {
        format!("{}.{}", self.local(), self.domain())
    }

    /// The VERP envelope sender naming `member`: `LIST-bounces+user=domain@host`.
    /// Members whose local part has characters outside `[a-z0-9._+-]` get the plain bounce
    /// address; their bounces are matched by the DSN's recipient instead.
    pub fn verp(&self, member: &MemberAddress) -> String {
        let (local, domain) = member.parts();
        if local.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
            format!("{}-bounces+{}={}@{}", self.local(), local, domain, self.domain())
        } else {
            self.sub("bounces")
        }
    }

    /// The reply address carrying a confirmation or moderation token.
    pub fn confirm(&self, token: &str) -> String {
        format!("{}-confirm+{}@{}", self.local(), token, self.domain())
    }

    /// Classify an envelope recipient against this list. `None` means "not ours".
    ///
    /// Comparison is case-insensitive on the whole address. The VERP form
    /// `LIST-bounces+TOKEN@domain` keeps its token (lower-cased) for the bounce processor.
    pub fn classify(&self, rcpt: &str) -> Option<RecipientKind> {
        let rcpt = rcpt.to_ascii_lowercase();
        let (local, domain) = rcpt.rsplit_once('@')?;
        if domain != self.domain() {
            return None;
        }
        let base = self.local();
        if local == base {
            return Some(RecipientKind::Post);
        }
        let rest = local.strip_prefix(base)?;
        match rest {
            "-request" => Some(RecipientKind::Request),
            "-join" => Some(RecipientKind::Join),
            "-leave" => Some(RecipientKind::Leave),
            "-owner" => Some(RecipientKind::Owner),
            "-bounces" => Some(RecipientKind::Bounces(String::new())),
            _ => {
                if let Some(token) = rest.strip_prefix("-confirm+") {
                    // Confirmation and moderation tokens are lower-case base32.
                    if token.is_empty() || token.len() > 64 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return None;
                    }
                    return Some(RecipientKind::Confirm(token.to_string()));
                }
                let token = rest.strip_prefix("-bounces+")?;
                if token.is_empty()
                    || !token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"=._+-".contains(&b))
                {
                    return None;
                }
                Some(RecipientKind::Bounces(token.to_string()))
            }
        }
    }
}

/// The checks both address kinds share: length, exactly one `@`, a dot-atom local part of
/// `local_ok` bytes, a valid domain. Returns (local, domain).
fn split_checked(s: &str, local_ok: impl Fn(u8) -> bool) -> Result<(&str, &str), AddressError> {
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    let mut it = s.split('@');
    let (Some(local), Some(domain), None) = (it.next(), it.next(), it.next()) else {
        return Err(AddressError::NotOneAt);
    };
    if local.is_empty()
        || local.len() > MAX_LOCAL_LEN
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local.bytes().all(local_ok)
    {
        return Err(AddressError::BadLocal);
    }
    if !valid_domain(domain) {
        return Err(AddressError::BadDomain);
    }
    Ok((local, domain))
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').count() >= 2
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl fmt::Display for ListAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ListAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ListAddress::parse(&s)
    }
}

impl From<ListAddress> for String {
    fn from(a: ListAddress) -> String {
        a.0
    }
}

/// A validated member (or sender) address, lower-cased, such as `ana@example.net`.
///
/// Lower-casing the local part is what Mailman does for comparisons; it keeps one member
/// record per mailbox. Only plain RFC 5321 dot-atoms are accepted: no quoted local parts,
/// comments, source routes or address literals, and no control characters anywhere, so a
/// member address can be put in an envelope or a header without escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberAddress(String);

impl MemberAddress {
    pub fn parse(input: &str) -> Result<MemberAddress, AddressError> {
        let s = input
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        split_checked(&s, |b| {
            b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b)
        })?;
        Ok(MemberAddress(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Local part and domain.
    pub fn parts(&self) -> (&str, &str) {
        self.0.rsplit_once('@').unwrap_or((&self.0, ""))
    }

    pub fn domain(&self) -> &str {
        self.parts().1
    }

    /// Undo [`ListAddress::verp`]: `user=domain` back to `user@domain`.
    pub fn from_verp(token: &str) -> Option<MemberAddress> {
        let (local, domain) = token.rsplit_once('=')?;
        MemberAddress::parse(&format!("{local}@{domain}")).ok()
    }
}

impl fmt::Display for MemberAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MemberAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        MemberAddress::parse(&s)
    }
}

impl From<MemberAddress> for String {
    fn from(a: MemberAddress) -> String {
        a.0
    }
}

/// What an accepted envelope recipient is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientKind {
    /// A post to the list, archived (and, with the list engine, delivered).
    Post,
    /// `LIST-request@`: commands in subject or body.
    Request,
    /// `LIST-join@`.
    Join,
    /// `LIST-leave@`.
    Leave,
    /// `LIST-owner@`: mail for the list owners.
    Owner,
    /// `LIST-bounces@` or the VERP form `LIST-bounces+TOKEN@`; the token (maybe empty).
    Bounces(String),
    /// `LIST-confirm+TOKEN@`: a reply to a confirmation or moderation notice.
    Confirm(String),
}

impl RecipientKind {
    pub fn label(&self) -> &'static str {
        match self {
            RecipientKind::Post => "post",
            RecipientKind::Request => "request",
            RecipientKind::Join => "join",
            RecipientKind::Leave => "leave",
            RecipientKind::Owner => "owner",
            RecipientKind::Bounces(_) => "bounces",
            RecipientKind::Confirm(_) => "confirm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ListAddress {
        ListAddress::parse("Gov@Lists.Example.org").expect("valid test address")
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(list().as_str(), "gov@lists.example.org");
        assert_eq!(list().local(), "gov");
        assert_eq!(list().domain(), "lists.example.org");
    }

    #[test]
    fn rejects_bad_list_addresses() {
        for bad in [
            "",
            "nodomain",
            "a@b@c.org",
            "a@localhost",
            "a b@x.org",
            "\"q\"@x.org",
            "a@-x.org",
            "a@x..org",
            ".a@x.org",
            "a+b@x.org",
            "x-request@x.org",
            "x-bounces@x.org",
        ] {
            assert!(ListAddress::parse(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("{}@x.org", "a".repeat(65));
        assert_eq!(ListAddress::parse(&long), Err(AddressError::BadLocal));
    }

    #[test]
    fn classifies_sub_addresses() {
        let l = list();
        assert_eq!(l.classify("GOV@lists.example.org"), Some(RecipientKind::Post));
        assert_eq!(
            l.classify("gov-request@lists.example.org"),
            Some(RecipientKind::Request)
        );
        assert_eq!(l.classify("gov-join@lists.example.org"), Some(RecipientKind::Join));
        assert_eq!(l.classify("gov-leave@lists.example.org"), Some(RecipientKind::Leave));
        assert_eq!(l.classify("gov-owner@lists.example.org"), Some(RecipientKind::Owner));
        assert_eq!(
            l.classify("gov-bounces+bob=x.org@lists.example.org"),
            Some(RecipientKind::Bounces("bob=x.org".into()))
        );
        assert_eq!(
            l.classify("gov-confirm+abc234@lists.example.org"),
            Some(RecipientKind::Confirm("abc234".into()))
        );
        assert_eq!(l.classify("gov-confirm+a.b@lists.example.org"), None);
        assert!(ListAddress::parse("x-confirm@x.org").is_err());
    }

    #[test]
    fn member_addresses_and_verp() {
        let m = MemberAddress::parse(" <Ana+lists@Example.NET> ").expect("valid");
        assert_eq!(m.as_str(), "ana+lists@example.net");
        let verp = list().verp(&m);
        assert_eq!(verp, "gov-bounces+ana+lists=example.net@lists.example.org");
        let Some(RecipientKind::Bounces(tok)) = list().classify(&verp) else {
            panic!("VERP address must classify as bounces");
        };
        assert_eq!(MemberAddress::from_verp(&tok), Some(m));
        let odd = MemberAddress::parse("o'neil@example.net").expect("valid");
        assert_eq!(list().verp(&odd), "gov-bounces@lists.example.org");
        for bad in [
            "a b@x.org",
            "a@x",
            "\"a\"@x.org",
            "a@[1.2.3.4]",
            "a\r\n@x.org",
            "@x.org",
            "a@@x.org",
        ] {
            assert!(MemberAddress::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn relay_tricks_never_classify() {
        let l = list();
        for rcpt in [
            "v@other.test",
            "v%other.test@lists.example.org",
            "@lists.example.org:v@other.test",
            "other.test!v@lists.example.org",
            "\"v@other.test\"@lists.example.org",
            "v@[192.0.2.1]",
            "gov@lists.example.org.",
            "gov@lists.example.org.other.test",
            "gov-bounces+@lists.example.org",
            "gov-bounces+a<b@lists.example.org",
            "gov-other@lists.example.org",
            "govx@lists.example.org",
        ] {
            assert_eq!(l.classify(rcpt), None, "{rcpt} must not be accepted");
        }
    }
}
