//! Connections to the SMTP relay: plain TCP, STARTTLS (RFC 3207) or implicit TLS (RFC 8314),
//! optionally with AUTH, all opened by us with `TCP_NODELAY`.
//!
//! Why not lettre's own pool: lettre writes the message and the final `.` in two writes on
//! a socket without `TCP_NODELAY`, so Nagle holds the 5-byte end marker until the peer's
//! delayed ACK, about 40 ms per copy (measured with strace against smtp-sink), and it sends
//! a NOOP before reusing a pooled connection. We open the socket ourselves and hand it to
//! lettre's SMTP client, so every mode (plain, STARTTLS, implicit TLS) has neither wait.
//! STARTTLS is lettre's own upgrade; implicit TLS is a tokio-rustls handshake before the
//! greeting, wrapped in [`TlsRelayStream`] so lettre can drive it.
//!
//! Where the relay offers PIPELINING (RFC 2920) and the stream under lettre's client is
//! ours (plain TCP or implicit TLS; after STARTTLS, lettre owns the TLS layer), copies go
//! out in runs ([`RelayConn::send_run`]): one write carries a copy's message and end marker
//! together with the next copy's `MAIL`, `RCPT` and `DATA` (message content may start a
//! group, RFC 2920 §3.1). A copy then costs one round trip and one write and one read on
//! each side, where one command at a time costs four of each; on a near relay that halves
//! the relay's system calls and ours even against pipelining each copy on its own. The
//! replies are still read one by one with lettre's reader. Elsewhere the commands go one
//! at a time through lettre's `command`. Either way a refused transaction is reset (`RSET`;
//! in a run, in the same write as the next envelope) so the connection is kept, where
//! lettre's own `send` closes it on any refusal.
//!
//! Certificates are checked against the Mozilla roots (webpki-roots) plus the PEM file in
//! `relay.ca_file`, for a relay with a private CA or a self-signed certificate.

use crate::{FanoutError, FanoutSettings, RelayTls};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// TLS material for the relay, built once at start-up.
pub(crate) struct RelayTlsConfig {
    /// For STARTTLS (lettre upgrades the stream itself).
    starttls: TlsParameters,
    /// For implicit TLS.
    connector: tokio_rustls::TlsConnector,
    name: rustls::pki_types::ServerName<'static>,
}

impl RelayTlsConfig {
    pub(crate) fn new(settings: &FanoutSettings) -> Result<Option<RelayTlsConfig>, FanoutError> {
        if settings.tls == RelayTls::None {
            return Ok(None);
        }
        let host = &settings.relay_host;
        let extra: Vec<rustls::pki_types::CertificateDer<'static>> = match &settings.ca_file {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| FanoutError::Relay(format!("relay.ca_file {}: {e}", path.display())))?;
                let certs = rustls_pemfile::certs(&mut pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| FanoutError::Relay(format!("relay.ca_file {}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(FanoutError::Relay(format!(
                        "relay.ca_file {}: no PEM certificate in it",
                        path.display()
                    )));
                }
                certs
            }
        };

        let mut b = TlsParameters::builder(host.clone());
        for c in &extra {
            let cert =
                Certificate::from_der(c.to_vec()).map_err(|e| FanoutError::Relay(format!("relay.ca_file: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        let starttls = b
            .build_rustls()
            .map_err(|e| FanoutError::Relay(format!("TLS for {host}: {e}")))?;

        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for c in extra {
            roots
                .add(c)
                .map_err(|e| FanoutError::Relay(format!("relay.ca_file: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FanoutError::Relay(format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| FanoutError::Relay(format!("relay.host {host:?} as a TLS name: {e}")))?;
        Ok(Some(RelayTlsConfig {
            starttls,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        }))
    }
}

/// Open one relay connection in the configured mode, greeting, EHLO and AUTH done, all
/// within the relay timeout (a relay that takes the TCP connection but never greets must
/// not hold a lane forever).
pub(crate) async fn connect(settings: &FanoutSettings, tls: Option<&RelayTlsConfig>) -> Result<RelayConn, String> {
    tokio::time::timeout(settings.timeout, open(settings, tls))
        .await
        .map_err(|_| format!("the relay did not greet within {} s", settings.timeout.as_secs()))?
}

async fn open(settings: &FanoutSettings, tls: Option<&RelayTlsConfig>) -> Result<RelayConn, String> {
    let addr = (settings.relay_host.as_str(), settings.relay_port);
    let stream = tokio::time::timeout(settings.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "connection to the relay timed out".to_string())?
        .map_err(|e| format!("cannot connect to the relay: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let hello = ClientId::default();
    let step = |what: &'static str| move |e: lettre::transport::smtp::Error| format!("relay {what}: {e}");
    // The stream under lettre's client, where it is ours (see the module docs).
    let mut raw = None;
    let mut conn = match (settings.tls, tls) {
        (RelayTls::Tls, Some(t)) => {
            let s = tokio::time::timeout(settings.timeout, t.connector.connect(t.name.clone(), stream))
                .await
                .map_err(|_| "TLS handshake with the relay timed out".to_string())?
                .map_err(|e| format!("TLS handshake with the relay: {e}"))?;
            let shared = Shared::new(Box::new(TlsRelayStream(s)));
            raw = Some(shared.clone());
            AsyncSmtpConnection::connect_with_transport(Box::new(shared), &hello)
                .await
                .map_err(step("greeting/EHLO"))?
        }
        (RelayTls::StartTls, Some(t)) => {
            let mut c = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
                .await
                .map_err(step("greeting/EHLO"))?;
            if !c.can_starttls() {
                c.abort().await;
                return Err("the relay does not offer STARTTLS (relay.tls = \"starttls\")".into());
            }
            c.starttls(t.starttls.clone(), &hello).await.map_err(step("STARTTLS"))?;
            c
        }
        (RelayTls::None, _) => {
            let shared = Shared::new(Box::new(stream));
            raw = Some(shared.clone());
            AsyncSmtpConnection::connect_with_transport(Box::new(shared), &hello)
                .await
                .map_err(step("greeting/EHLO"))?
        }
        (_, None) => return Err("relay TLS is configured but its settings were not loaded".into()),
    };
    if let (Some(u), Some(p)) = (&settings.username, &settings.password) {
        conn.auth(
            &[Mechanism::Plain, Mechanism::Login],
            &Credentials::new(u.clone(), p.clone()),
        )
        .await
        .map_err(step("AUTH"))?;
    }
    // lettre keeps only the extensions it knows, and PIPELINING is not one of them: ask
    // again and read the keywords ourselves (one more round trip per connection).
    if raw.is_some() {
        let r = conn.command(Ehlo::new(hello)).await.map_err(step("EHLO"))?;
        if !r.message().any(|l| {
            l.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
        }) {
            raw = None;
        }
    }
    Ok(RelayConn { conn, raw, dead: false })
}

/// Why a copy was not handed over.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The relay answered 5xx.
    Permanent(String),
    /// The relay answered 4xx.
    Transient(String),
    /// The connection failed (network, TLS, an unreadable reply): it is closed.
    Broken(String),
}

impl From<lettre::transport::smtp::Error> for Refused {
    fn from(e: lettre::transport::smtp::Error) -> Refused {
        if e.is_permanent() {
            Refused::Permanent(e.to_string())
        } else if e.is_transient() {
            Refused::Transient(e.to_string())
        } else {
            Refused::Broken(e.to_string())
        }
    }
}

/// One open relay connection (see the module docs).
pub(crate) struct RelayConn {
    conn: AsyncSmtpConnection,
    /// Set when the relay offers PIPELINING and the stream under `conn` is ours.
    raw: Option<Shared>,
    /// Set when the relay stalled or the connection broke mid-run: drop it.
    dead: bool,
}

/// One copy for [`RelayConn::send_run`]: its envelope and the message.
pub(crate) struct Txn<T> {
    pub(crate) env: Envelope,
    pub(crate) item: T,
}

impl RelayConn {
    /// Hand `first`, then every copy `next` has ready, to the relay, in order; returns each
    /// copy's outcome. `next` must not wait: when it has nothing, the run ends. After a
    /// broken connection (or a timeout) the run ends too, with the copies in flight
    /// reported, and [`RelayConn::usable`] says false. Each write and each reply must come
    /// within `limit`; a relay that stalls longer counts as a temporary failure.
    ///
    /// With PIPELINING (see the module docs) one write per copy carries the last copy's
    /// message and end marker and the next copy's `MAIL`, `RCPT` and `DATA` (RFC 2920
    /// §3.1: message content may start a group), so each copy costs one round trip and one
    /// write and one read on each side.
    pub(crate) async fn send_run<T: AsRef<[u8]>>(
        &mut self,
        first: Txn<T>,
        mut next: impl FnMut() -> Option<Txn<T>>,
        limit: std::time::Duration,
    ) -> Vec<(T, Result<(), Refused>)> {
        let mut out = Vec::new();
        let Some(raw) = self.raw.clone() else {
            let mut cur = Some(first);
            while let Some(t) = cur.take() {
                let r = match tokio::time::timeout(limit, self.send(&t.env, t.item.as_ref())).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.dead = true;
                        Err(stalled(limit))
                    }
                };
                out.push((t.item, r));
                if !self.usable() {
                    break;
                }
                cur = next();
            }
            return out;
        };
        let r = self.pipelined_run(raw, first, &mut next, limit, &mut out).await;
        if let Err((in_flight, why)) = r {
            // Dropped, not closed with QUIT: the relay may not be answering at all.
            self.dead = true;
            for item in in_flight {
                let why = match &why {
                    Refused::Transient(m) => Refused::Transient(m.clone()),
                    Refused::Permanent(m) | Refused::Broken(m) => Refused::Broken(m.clone()),
                };
                out.push((item, Err(why)));
            }
        }
        out
    }

    /// The pipelined run (see [`RelayConn::send_run`]). On a broken connection, returns the
    /// copies in flight and why (`Transient` for a stall, `Broken` otherwise).
    async fn pipelined_run<T: AsRef<[u8]>>(
        &mut self,
        mut raw: Shared,
        first: Txn<T>,
        next: &mut impl FnMut() -> Option<Txn<T>>,
        limit: std::time::Duration,
        out: &mut Vec<(T, Result<(), Refused>)>,
    ) -> Result<(), (Vec<T>, Refused)> {
        let Some((first, cmds)) = self.envelope_of(Some(first), next, out) else {
            return Ok(());
        };
        // What goes out in the next write, and the copies it concerns: `done` (whose
        // message and end marker it carries, with a refusal seen before its DATA) and
        // `cur` (whose envelope it carries), read back in that order.
        let mut wire = cmds;
        let mut done: Option<(T, Option<Refused>)> = None;
        let mut cur: Option<Txn<T>> = Some(first);
        let mut rset = false;
        loop {
            match tokio::time::timeout(limit, raw.write_all(&wire)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err((
                        in_flight(done, cur, out),
                        Refused::Broken(format!("writing to the relay: {e}")),
                    ));
                }
                Err(_) => return Err((in_flight(done, cur, out), stalled(limit))),
            }
            if let Some((item, refused)) = done.take() {
                match self.reply(limit).await {
                    Err(Refused::Broken(m)) => {
                        return Err((in_flight(Some((item, refused)), cur, out), Refused::Broken(m)))
                    }
                    Err(r) if matches!(r, Refused::Transient(_)) && !self.usable() => {
                        return Err((in_flight(Some((item, refused)), cur, out), r))
                    }
                    end => out.push((item, refused.map_or(end, Err))),
                }
            }
            if std::mem::take(&mut rset) {
                match self.reply(limit).await {
                    Ok(()) => {}
                    // A stall stays a temporary failure.
                    Err(r @ Refused::Transient(_)) if !self.usable() => return Err((in_flight(None, cur, out), r)),
                    Err(Refused::Permanent(m) | Refused::Transient(m) | Refused::Broken(m)) => {
                        let why = Refused::Broken(format!("RSET after a refused transaction: {m}"));
                        return Err((in_flight(None, cur, out), why));
                    }
                }
            }
            let Some(txn) = cur.take() else {
                return Ok(());
            };
            // MAIL, each RCPT, DATA. Every reply is read, even after a refusal, so the next
            // transaction starts in step.
            let mut refused: Option<Refused> = None;
            let mut data_accepted = false;
            let n = txn.env.to().len() + 2;
            for i in 0..n {
                match self.reply(limit).await {
                    Ok(()) => data_accepted = i == n - 1,
                    Err(Refused::Broken(m)) => return Err((vec![txn.item], Refused::Broken(m))),
                    Err(r) if !self.usable() => return Err((vec![txn.item], r)),
                    Err(r) => {
                        refused.get_or_insert(r);
                    }
                }
            }
            if !data_accepted {
                // The transaction is still open (MAIL was taken) or never began: reset it
                // before the next one, in the same write.
                out.push((
                    txn.item,
                    Err(refused.unwrap_or_else(|| Refused::Broken("no reply to DATA".into()))),
                ));
                let Some((t, cmds)) = self.envelope_of(next(), next, out) else {
                    // Nothing more: leave the connection clean for the next run.
                    wire = Rset.to_string().into_bytes();
                    rset = true;
                    continue;
                };
                wire = Rset.to_string().into_bytes();
                wire.extend_from_slice(&cmds);
                rset = true;
                cur = Some(t);
                continue;
            }
            // DATA accepted: the message, or an empty one if a command before it was
            // refused (a relay that takes DATA without a valid recipient), then the next
            // copy's envelope.
            wire = if refused.is_some() {
                Vec::from(&b".\r\n"[..])
            } else {
                dot_stuff(txn.item.as_ref())
            };
            if let Some((t, cmds)) = self.envelope_of(next(), next, out) {
                wire.extend_from_slice(&cmds);
                cur = Some(t);
            }
            done = Some((txn.item, refused));
        }
    }

    /// `t` or the first copy after it with an envelope the relay can take, and that
    /// envelope's commands; the copies it cannot take are refused into `out`.
    fn envelope_of<T: AsRef<[u8]>>(
        &self,
        mut t: Option<Txn<T>>,
        next: &mut impl FnMut() -> Option<Txn<T>>,
        out: &mut Vec<(T, Result<(), Refused>)>,
    ) -> Option<(Txn<T>, Vec<u8>)> {
        while let Some(txn) = t.take() {
            match self.envelope_commands(&txn.env, txn.item.as_ref()) {
                Ok(cmds) => return Some((txn, cmds)),
                Err(r) => {
                    out.push((txn.item, Err(r)));
                    t = next();
                }
            }
        }
        None
    }

    /// `MAIL`, one `RCPT` per recipient and `DATA`, as one string of commands.
    fn envelope_commands(&self, env: &Envelope, bytes: &[u8]) -> Result<Vec<u8>, Refused> {
        let params = self.mail_parameters(env, bytes)?;
        let mut head = Mail::new(env.from().cloned(), params).to_string();
        for to in env.to() {
            head.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        head.push_str(&Data.to_string());
        Ok(head.into_bytes())
    }

    /// Read one reply within `limit`: `Ok` for 2xx/3xx. A stall closes the connection and
    /// counts as temporary.
    async fn reply(&mut self, limit: std::time::Duration) -> Result<(), Refused> {
        match tokio::time::timeout(limit, self.conn.read_response()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                // 421: the relay is closing the connection (RFC 5321 §3.8).
                if e.status().is_some_and(|c| c.to_string() == "421") {
                    self.dead = true;
                }
                Err(Refused::from(e))
            }
            Err(_) => {
                self.dead = true;
                Err(stalled(limit))
            }
        }
    }

    /// Hand one message to the relay one command at a time with lettre's `command` (not
    /// its `send`, which closes the connection on any refusal): for STARTTLS connections
    /// and relays without PIPELINING. A refused transaction is reset (`RSET`) so the
    /// connection is kept.
    async fn send(&mut self, env: &Envelope, bytes: &[u8]) -> Result<(), Refused> {
        let r = self.stepwise_send(env, bytes).await;
        match &r {
            Ok(()) => {}
            Err(Refused::Broken(_)) => self.dead = true,
            Err(_) => {
                if self.conn.command(Rset).await.is_err() {
                    self.dead = true;
                }
            }
        }
        r
    }

    /// Whether the connection can take another transaction.
    pub(crate) fn usable(&self) -> bool {
        !self.dead && !self.conn.has_broken()
    }

    /// The commands of [`RelayConn::send`].
    async fn stepwise_send(&mut self, env: &Envelope, bytes: &[u8]) -> Result<(), Refused> {
        let params = self.mail_parameters(env, bytes)?;
        self.conn.command(Mail::new(env.from().cloned(), params)).await?;
        for to in env.to() {
            self.conn.command(Rcpt::new(to.clone(), vec![])).await?;
        }
        self.conn.command(Data).await?;
        self.conn.message(bytes).await?;
        Ok(())
    }

    /// MAIL parameters the message needs, or why the relay cannot take it.
    fn mail_parameters(&self, env: &Envelope, bytes: &[u8]) -> Result<Vec<MailParameter>, Refused> {
        let info = self.conn.server_info();
        let mut params = Vec::new();
        let non_ascii = |a: &lettre::Address| !AsRef::<str>::as_ref(a).is_ascii();
        if env.from().is_some_and(non_ascii) || env.to().iter().any(non_ascii) {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return Err(Refused::Permanent(
                    "the envelope has non-ASCII addresses and the relay does not offer SMTPUTF8".into(),
                ));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        if !bytes.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return Err(Refused::Permanent(
                    "the message has 8-bit bytes and the relay does not offer 8BITMIME".into(),
                ));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Ok(params)
    }
}

/// The copies in flight when a run's connection fails; one whose envelope was already
/// refused keeps that outcome (into `out`).
fn in_flight<T>(
    done: Option<(T, Option<Refused>)>,
    cur: Option<Txn<T>>,
    out: &mut Vec<(T, Result<(), Refused>)>,
) -> Vec<T> {
    let mut v = Vec::new();
    match done {
        Some((item, Some(r))) => out.push((item, Err(r))),
        Some((item, None)) => v.push(item),
        None => {}
    }
    v.extend(cur.map(|c| c.item));
    v
}

/// A relay that did not answer (or take our bytes) within `limit`: a temporary failure.
fn stalled(limit: std::time::Duration) -> Refused {
    Refused::Transient(format!("the relay did not answer within {} s", limit.as_secs()))
}

/// The DATA payload: `bytes` with a dot doubled at the start of every line (RFC 5321
/// §4.5.2) and the end marker. A message that does not end its last line gets a CRLF first.
pub(crate) fn dot_stuff(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 64 + 8);
    // Copy line by line (memchr finds the LFs), doubling a dot that starts a line.
    let mut start = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i + 1);
        if bytes[start] == b'.' {
            out.push(b'.');
        }
        out.extend_from_slice(&bytes[start..end]);
        start = end;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The stream under lettre's client, shared with [`RelayConn`] so a pipelined transaction
/// can write several commands at once. Only one task ever uses a connection, so the lock
/// is never contended; it is held for one poll at a time.
#[derive(Clone)]
pub(crate) struct Shared(Arc<std::sync::Mutex<Box<dyn AsyncTokioStream>>>);

impl Shared {
    fn new(s: Box<dyn AsyncTokioStream>) -> Shared {
        Shared(Arc::new(std::sync::Mutex::new(s)))
    }

    fn with<T>(&self, f: impl FnOnce(Pin<&mut dyn AsyncTokioStream>) -> Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match self.0.lock() {
            Ok(mut g) => f(Pin::new(&mut **g)),
            Err(_) => Poll::Ready(Err(io::Error::other("relay stream lock poisoned"))),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared relay stream")
    }
}

impl AsyncRead for Shared {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Shared {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

impl AsyncTokioStream for Shared {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.0.lock() {
            Ok(g) => g.peer_addr(),
            Err(_) => Err(io::Error::other("relay stream lock poisoned")),
        }
    }
}

/// A TLS client stream lettre's SMTP client can drive (it wants an [`AsyncTokioStream`]).
#[derive(Debug)]
struct TlsRelayStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsRelayStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsRelayStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsRelayStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn dot_stuffing_doubles_every_leading_dot_and_ends_the_data() {
        let cases: [(&[u8], &[u8]); 9] = [
            (b"a\r\n.b\r\n.\r\nc\r\n", b"a\r\n..b\r\n..\r\nc\r\n.\r\n"),
            (b".first\r\n", b"..first\r\n.\r\n"),
            (b"no end", b"no end\r\n.\r\n"),
            // A bare LF ends a line for a lenient relay, so the dot after it is doubled too:
            // "<LF>.<LF>" cannot end the data early (SMTP smuggling, SECURITY.md SM-05).
            (b"a\n.\nMAIL FROM:<x@y>\r\n", b"a\n..\nMAIL FROM:<x@y>\r\n.\r\n"),
            (b"mid.dle\r\n", b"mid.dle\r\n.\r\n"),
            (b"", b"\r\n.\r\n"),
            (b"\n\n.", b"\n\n..\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b"..x\r\n\r\n.\r\n", b"...x\r\n\r\n..\r\n.\r\n"),
        ];
        for (input, want) in cases {
            assert_eq!(dot_stuff(input), want, "input {:?}", String::from_utf8_lossy(input));
        }
    }
}
