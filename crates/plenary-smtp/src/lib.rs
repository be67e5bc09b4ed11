//! SMTP (RFC 5321) and LMTP (RFC 2033) ingress for list mail.
//!
//! Layout:
//! - [`listener`]: the accept loop with the global and per-IP connection caps and shutdown.
//! - [`conn`]: the byte layer. It reads command lines and DATA under strict CRLF rules (only
//!   `<CRLF>.<CRLF>` ends DATA; bare CR, bare LF and NUL are never line ends), with caps on
//!   line length, message size and time. Nothing above it sees raw socket bytes.
//! - [`session`]: the protocol state machine; commands are parsed by `smtp-proto`, replies are
//!   [`reply::Reply`] values, and every recipient is checked against the lists in the store
//!   while the client is still connected (no open relay, no bounce after accepting).
//!
//! The session replies `250` only after [`plenary_store::Store::ingest`] returns, that is
//! after the group commit holding the message has been flushed and fsynced.

pub mod conn;
pub mod listener;
pub mod reply;
pub mod session;

pub use listener::{serve, Protocol};

use plenary_core::MimeLimits;
use std::sync::Arc;
use std::time::Duration;

/// Everything the ingress needs to know, resolved from the config file.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// Our name in the greeting, EHLO reply and Received header.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Longest DATA line including CRLF (RFC 5321 §4.5.3.1.6: 1000).
    pub max_line_length: usize,
    /// Longest command line including CRLF.
    pub max_command_line: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub session_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Bad commands before the session is closed with 421.
    pub max_errors: usize,
    /// Most `Received:` fields before a message counts as looping.
    pub max_received_headers: usize,
    /// Wait this long before the greeting; a client that talks first is refused (S-04).
    pub greeting_delay: Duration,
    pub mime: MimeLimits,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 1000,
            max_command_line: 2048,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            session_timeout: Duration::from_secs(600),
            max_connections: 500,
            max_connections_per_ip: 10,
            max_errors: 10,
            max_received_headers: 30,
            greeting_delay: Duration::ZERO,
            mime: MimeLimits::default(),
            tls: None,
        }
    }
}

/// Load a PEM certificate chain and private key into a rustls server config.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, String> {
    use tokio_rustls::rustls;
    let certs = {
        let f = std::fs::File::open(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
        rustls_pemfile::certs(&mut std::io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?
    };
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", cert.display()));
    }
    let key = {
        let f = std::fs::File::open(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
        rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
            .map_err(|e| format!("bad private key in {}: {e}", key.display()))?
            .ok_or_else(|| format!("no private key found in {}", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Arc::new(config))
}
