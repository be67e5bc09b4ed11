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
//! Certificates are checked against the Mozilla roots (webpki-roots) plus the PEM file in
//! `relay.ca_file`, for a relay with a private CA or a self-signed certificate.

use crate::{FanoutError, FanoutSettings, RelayTls};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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

/// Open one relay connection in the configured mode, greeting, EHLO and AUTH done.
pub(crate) async fn connect(
    settings: &FanoutSettings,
    tls: Option<&RelayTlsConfig>,
) -> Result<AsyncSmtpConnection, String> {
    let addr = (settings.relay_host.as_str(), settings.relay_port);
    let stream = tokio::time::timeout(settings.timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "connection to the relay timed out".to_string())?
        .map_err(|e| format!("cannot connect to the relay: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let hello = ClientId::default();
    let step = |what: &'static str| move |e: lettre::transport::smtp::Error| format!("relay {what}: {e}");
    let mut conn = match (settings.tls, tls) {
        (RelayTls::Tls, Some(t)) => {
            let s = tokio::time::timeout(settings.timeout, t.connector.connect(t.name.clone(), stream))
                .await
                .map_err(|_| "TLS handshake with the relay timed out".to_string())?
                .map_err(|e| format!("TLS handshake with the relay: {e}"))?;
            AsyncSmtpConnection::connect_with_transport(Box::new(TlsRelayStream(s)), &hello)
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
        (RelayTls::None, _) => AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
            .await
            .map_err(step("greeting/EHLO"))?,
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
    Ok(conn)
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
