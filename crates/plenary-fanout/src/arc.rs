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
//! - the DKIM signatures of the message as it arrived, and its incoming ARC chain;
//! - for posts that came in over SMTP, SPF for the client address and envelope sender that
//!   our own `Received:` line recorded (see `plenary-smtp`'s `envelope_comment`), and DMARC
//!   from DKIM and SPF. Over LMTP the client is the front MTA, so SPF and DMARC are left to
//!   the front MTA's own `Authentication-Results` and the seal records DKIM and ARC only.
//!
//! Every copy of a post differs only in its per-recipient `List-Unsubscribe` headers, so
//! the message signature leaves those out of `h=` and one seal serves every copy: a post
//! costs one more RSA signature pair, not one per recipient. `mail-auth` does the checks
//! and the sealing; the per-copy DKIM signature stays ours (`dkim.rs`).

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::Done;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Headers the message signature covers (absent ones are signed as absent, so they cannot
/// be added later). Never the per-recipient `List-Unsubscribe` and `List-Unsubscribe-Post`.
const SIGNED: &[&str] = &[
    "From",
    "Reply-To",
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
    "List-Help",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Archived-At",
];

/// RFC 8617 §4.2.1: a chain longer than this is not extended.
const MAX_INSTANCE: usize = 50;

/// Where a post came from, as far as the checks need to know.
pub struct Arrival<'a> {
    /// The message as stored: our `Received:` line first, then the bytes as received.
    pub raw: &'a [u8],
    /// It came in over SMTP straight from the sender's server (not LMTP from a front MTA).
    pub direct: bool,
}

/// Seals posts with the list domain's RSA DKIM key.
pub struct Sealer {
    /// The key as read (PKCS#1 or PKCS#8 DER); a sealer owns its key, so each seal parses
    /// it again (well under a millisecond, once per post).
    key: rustls_pki_types::PrivateKeyDer<'static>,
    selector: String,
    /// `d=`: this domain, or the list's.
    domain: Option<String>,
    authserv_id: String,
    auth: MessageAuthenticator,
}

impl Sealer {
    /// `servers` empty: the system's `/etc/resolv.conf`.
    pub fn new(
        key_path: &Path,
        selector: &str,
        domain: Option<String>,
        authserv_id: &str,
        servers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Sealer, String> {
        let pem = std::fs::read(key_path).map_err(|e| format!("cannot read {}: {e}", key_path.display()))?;
        let der = rustls_pemfile::private_key(&mut pem.as_slice())
            .map_err(|e| format!("{}: not a PEM private key: {e}", key_path.display()))?
            .ok_or_else(|| format!("{}: no private key in the file", key_path.display()))?;
        RsaKey::<Sha256>::from_key_der(der.clone_key())
            .map_err(|e| format!("{}: not an RSA private key for ARC: {e}", key_path.display()))?;
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
            key: der,
            selector: selector.to_string(),
            domain,
            authserv_id: authserv_id.to_string(),
            auth,
        })
    }

    /// Check `arrival` and seal `outgoing` (a copy without its per-recipient headers).
    /// Returns the three ARC header lines to put in front of every copy, or why not.
    pub async fn seal(&self, arrival: &Arrival<'_>, outgoing: &[u8], list_domain: &str) -> Result<Vec<u8>, String> {
        let original = AuthenticatedMessage::parse(arrival.raw).ok_or("the stored message does not parse")?;
        if original.as_headers.len() >= MAX_INSTANCE {
            return Err(format!("its ARC chain already has {MAX_INSTANCE} sets"));
        }
        let dkim = self.auth.verify_dkim(&original).await;
        let arc = self.auth.verify_arc(&original).await;
        let header_from = original.from().to_string();
        let mut results = AuthenticationResults::new(&self.authserv_id).with_dkim_results(&dkim, &header_from);
        let received = our_received(arrival.raw);
        let spf_inputs = received
            .as_ref()
            .filter(|_| arrival.direct)
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
        let key = RsaKey::<Sha256>::from_key_der(self.key.clone_key()).map_err(|e| format!("ARC key: {e}"))?;
        let sealer: ArcSealer<RsaKey<Sha256>, Done> = ArcSealer::from_key(key)
            .domain(self.domain.as_deref().unwrap_or(list_domain))
            .selector(&self.selector)
            .headers(SIGNED.iter().copied());
        let set = sealer
            .seal(&message, &results, &arc)
            .map_err(|e| format!("cannot seal: {e}"))?;
        Ok(set.to_header().into_bytes())
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
