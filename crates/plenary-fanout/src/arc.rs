//! ARC sealing (RFC 8617) of list posts, for `[arc] enabled = true`.
//!
//! Why: a list that tags subjects or adds footers breaks the author's DKIM signature.
//! Gmail's sender guidelines ask mailing lists to add ARC headers, so that a receiver can
//! see that the post passed authentication when it reached the list. The new ARC set
//! records what this hop saw (`ARC-Authentication-Results`), signs the copy as it leaves
//! (`ARC-Message-Signature`) and signs the chain so far (`ARC-Seal`).
//!
//! What is checked, once per post, when its delivery is planned (not during the SMTP
//! session, so ingest never waits on DNS):
//! - the DKIM signatures of the message as it arrived (the first [`MAX_DKIM`]), and its
//!   incoming ARC chain;
//! - for posts that came in over SMTP, SPF for the client address and envelope sender that
//!   our own `Received:` line recorded (see `plenary-smtp`'s `envelope_comment`), and DMARC
//!   from DKIM and SPF. Over LMTP, or with `arc.check_spf = false` (a front MTA that hands
//!   mail on over SMTP), the client is the front MTA, so SPF and DMARC are not recorded;
//!   the seal holds DKIM and ARC results only.
//!
//! A post whose incoming chain does not validate (or could not be checked, e.g. a DNS
//! timeout) goes out unsealed rather than with `cv=fail`: mail-auth's `cv=fail` seal
//! covers the earlier sets, which RFC 8617 §5.1.2 forbids, and a broken chain we could
//! not parse would otherwise get a second `i=1`. The whole check has a time limit
//! (`SEAL_TIMEOUT` in lib.rs), so a post with many signatures on dead DNS names cannot
//! hold up delivery.
//!
//! Every copy of a post differs only in its per-recipient `List-Unsubscribe` headers, so
//! the message signature leaves those out of `h=` and one seal serves every copy: a post
//! costs one more RSA signature pair, not one per recipient. `mail-auth` does the checks
//! and builds the set; the RSA signatures are OpenSSL's, through our DKIM key
//! ([`DkimKey::sign_sha256_digest`]), like every other signature we make.

use crate::dkim::DkimKey;
use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Algorithm, CryptoError, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::Done;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Headers the message signature covers. A name listed twice is also signed as absent
/// once more ("oversigned", as `compose.rs` does for DKIM), so a second From, Subject,
/// List-Id or List-Post cannot be added in front without breaking the signature. Never
/// the per-recipient `List-Unsubscribe` and `List-Unsubscribe-Post`.
const SIGNED: &[&str] = &[
    "From",
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Id",
    "List-Help",
    "List-Subscribe",
    "List-Post",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Archived-At",
];

/// RFC 8617 §4.2.1: a chain longer than this is not extended.
const MAX_INSTANCE: usize = 50;

/// Only this many of a post's DKIM signatures are checked (each may need a DNS lookup).
pub const MAX_DKIM: usize = 5;

/// Where a post came from, as far as the checks need to know.
pub struct Arrival<'a> {
    /// The message as stored: our `Received:` line first, then the bytes as received.
    pub raw: &'a [u8],
    /// It came in over SMTP (not LMTP from a front MTA).
    pub smtp: bool,
}

/// mail-auth's signing interface over our OpenSSL RSA key.
struct OpensslRsa<'a>(&'a DkimKey);

impl SigningKey for OpensslRsa<'_> {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let digest = self.hash(input);
        self.0
            .sign_sha256_digest(digest.as_ref())
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))
    }

    fn algorithm(&self) -> Algorithm {
        Algorithm::RsaSha256
    }
}

/// Seals posts with the list domain's RSA DKIM key.
pub struct Sealer {
    /// Its selector and domain (`d=`: this domain, or the list's) are the DKIM ones.
    key: DkimKey,
    authserv_id: String,
    /// Check SPF and DMARC for posts received over SMTP (false behind a front MTA).
    check_spf: bool,
    auth: MessageAuthenticator,
}

impl Sealer {
    /// `servers` empty: the system's `/etc/resolv.conf`.
    pub fn new(
        key: DkimKey,
        authserv_id: &str,
        check_spf: bool,
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Sealer, String> {
        if !key.is_rsa() {
            return Err("ARC seals with an RSA key (dkim.rsa_key)".into());
        }
        let (config, mut opts) = if servers.is_empty() {
            mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("system DNS configuration: {e}"))?
        } else {
            let mut config = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
            for a in servers {
                let mut udp = ConnectionConfig::udp();
                udp.port = a.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = a.port();
                config.add_name_server(NameServerConfig::new(a.ip(), true, vec![udp, tcp]));
            }
            (config, ResolverOpts::default())
        };
        opts.timeout = timeout;
        opts.attempts = 2;
        let auth = MessageAuthenticator::new(config, opts).map_err(|e| format!("DNS resolver for ARC: {e}"))?;
        Ok(Sealer {
            key,
            authserv_id: authserv_id.to_string(),
            check_spf,
            auth,
        })
    }

    /// The authserv-id this sealer writes (incoming `Authentication-Results` that claim it
    /// are forged and dropped from the copies, RFC 8601 §5).
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Check `arrival` and seal `outgoing` (a copy without its per-recipient headers).
    /// Returns the three ARC header lines to put in front of every copy, or why not.
    pub async fn seal(&self, arrival: &Arrival<'_>, outgoing: &[u8], list_domain: &str) -> Result<Vec<u8>, String> {
        let mut original = AuthenticatedMessage::parse(arrival.raw).ok_or("the stored message does not parse")?;
        if original.as_headers.len() >= MAX_INSTANCE {
            return Err(format!("its ARC chain already has {MAX_INSTANCE} sets"));
        }
        original.dkim_headers.truncate(MAX_DKIM);
        let dkim = self.auth.verify_dkim(&original).await;
        let arc = self.auth.verify_arc(&original).await;
        sealable(&arc, &original)?;
        let header_from = original.from().to_string();
        let mut results = AuthenticationResults::new(&self.authserv_id).with_dkim_results(&dkim, &header_from);
        let received = our_received(arrival.raw);
        let spf_inputs = received
            .as_ref()
            .filter(|_| arrival.smtp && self.check_spf)
            .and_then(|r| r.envelope_from.as_deref().map(|from| (r, from)));
        if let Some((r, sender)) = spf_inputs {
            let helo = r.helo.as_str();
            let spf = if sender.is_empty() {
                self.auth
                    .verify_spf(SpfParameters::verify_ehlo(r.ip, helo, &self.authserv_id))
                    .await
            } else {
                self.auth
                    .verify_spf(SpfParameters::verify_mail_from(r.ip, helo, &self.authserv_id, sender))
                    .await
            };
            results = results.with_spf_mailfrom_result(&spf, r.ip, sender, helo);
            let mail_from_domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d);
            let dmarc = self
                .auth
                .verify_dmarc(DmarcParameters::new(&original, &dkim, mail_from_domain, &spf))
                .await;
            results = results.with_dmarc_result(&dmarc);
        }
        // The client of this hop (the front MTA over LMTP); unknown only for a message
        // stored without our Received line, which no list post is.
        let remote = received.as_ref().map_or(IpAddr::from([0, 0, 0, 0]), |r| r.ip);
        results = results.with_arc_result(&arc, remote);
        let message = AuthenticatedMessage::parse(outgoing).ok_or("the outgoing copy does not parse")?;
        let domain = self.key.domain.as_deref().unwrap_or(list_domain);
        let sealer: ArcSealer<OpensslRsa<'_>, Done> = ArcSealer::from_key(OpensslRsa(&self.key))
            .domain(domain)
            .selector(&self.key.selector)
            .headers(SIGNED.iter().copied());
        let set = sealer
            .seal(&message, &results, &arc)
            .map_err(|e| format!("cannot seal: {e}"))?;
        Ok(set.to_header().into_bytes())
    }
}

/// A chain we extend: none at all (a new chain starts at `i=1`), or one that validated.
fn sealable(arc: &ArcOutput<'_>, m: &AuthenticatedMessage<'_>) -> Result<(), String> {
    let no_arc_headers = m.as_headers.is_empty() && m.ams_headers.is_empty() && m.aar_headers.is_empty();
    match arc.result() {
        DkimResult::Pass => Ok(()),
        DkimResult::None if no_arc_headers && !m.has_arc_errors => Ok(()),
        DkimResult::None => Err("its ARC headers do not form a chain".into()),
        other => Err(format!("its ARC chain does not validate ({other:?})")),
    }
}

/// What our own `Received:` line (the first header of a stored message) says.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    helo: String,
    ip: IpAddr,
    /// `None` in lines written before the sender was recorded (or when it was left out).
    envelope_from: Option<String>,
}

/// Reads `Received: from HELO (HELO [IP])\r\n\tby HOST with ESMTP (envelope-from <ADDR>); DATE`,
/// as `plenary-smtp` writes it. `None` for anything else.
fn our_received(raw: &[u8]) -> Option<Received> {
    let end = memchr::memmem::find(raw, b"\r\n\t")
        .and_then(|i| memchr::memmem::find(&raw[i + 3..], b"\r\n").map(|j| i + 3 + j))?;
    let line = std::str::from_utf8(&raw[..end]).ok()?.replace("\r\n\t", " ");
    let rest = line.strip_prefix("Received: from ")?;
    let (helo, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix('(')?.strip_prefix(helo)?.strip_prefix(" [")?;
    let (ip, rest) = rest.split_once("])")?;
    let ip: IpAddr = ip.parse().ok()?;
    let (by, _date) = rest.rsplit_once("; ")?;
    let envelope_from = by
        .split_once(" (envelope-from <")
        .and_then(|(_, f)| f.strip_suffix(">)"))
        .map(str::to_string);
    Some(Received {
        helo: helo.to_string(),
        ip,
        envelope_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_received_line() {
        let raw = b"Received: from mx.example.org (mx.example.org [192.0.2.7])\r\n\tby lists.example.org with ESMTPS (envelope-from <ada@example.org>); Tue, 1 Jul 2025 10:00:00 +0000\r\nFrom: a@b\r\n\r\nx\r\n";
        assert_eq!(
            our_received(raw),
            Some(Received {
                helo: "mx.example.org".into(),
                ip: "192.0.2.7".parse().expect("ip"),
                envelope_from: Some("ada@example.org".into()),
            })
        );
        let literal = b"Received: from [192.0.2.9] ([192.0.2.9] [2001:db8::1])\r\n\tby h with ESMTP (envelope-from <>); Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\n";
        let r = our_received(literal).expect("address literal HELO");
        assert_eq!(r.helo, "[192.0.2.9]");
        assert_eq!(r.ip, "2001:db8::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.envelope_from.as_deref(), Some(""));
        let older = b"Received: from a (a [192.0.2.7])\r\n\tby h with LMTP; Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\n";
        let r = our_received(older).expect("a line without the sender");
        assert_eq!(
            (r.ip, r.envelope_from),
            ("192.0.2.7".parse::<IpAddr>().expect("ip"), None)
        );
    }

    #[test]
    fn only_a_valid_chain_or_none_at_all_is_extended() {
        let plain = b"From: a@b.example\r\nSubject: s\r\n\r\nbody\r\n";
        let m = AuthenticatedMessage::parse(plain).expect("parse");
        assert!(
            sealable(&ArcOutput::default(), &m).is_ok(),
            "no chain: a new one starts"
        );
        let pass = ArcOutput::default().with_result(DkimResult::Pass);
        assert!(sealable(&pass, &m).is_ok());
        let dns = ArcOutput::default().with_result(DkimResult::TempError(mail_auth::Error::Io("timed out".into())));
        assert!(sealable(&dns, &m).is_err(), "an unchecked chain is not extended");
        let fail = ArcOutput::default().with_result(DkimResult::Fail(mail_auth::Error::NotAligned));
        assert!(sealable(&fail, &m).is_err());
        // ARC headers that do not parse into a chain: verify_arc reports none, but a new
        // i=1 next to them would be a second i=1.
        let broken = b"ARC-Seal: garbage\r\nFrom: a@b.example\r\nSubject: s\r\n\r\nbody\r\n";
        let m = AuthenticatedMessage::parse(broken).expect("parse");
        assert!(sealable(&ArcOutput::default(), &m).is_err());
    }

    #[test]
    fn other_received_lines_are_not_ours() {
        for raw in [
            &b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"[..],
            b"From: a@b\r\n\r\nReceived: from a (a [192.0.2.7])\r\n\tby h with ESMTP (envelope-from <x@y>); d\r\n",
            b"Received: from a (b [192.0.2.7])\r\n\tby h with ESMTP (envelope-from <x@y>); d\r\n\r\n",
        ] {
            assert_eq!(our_received(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }
}
