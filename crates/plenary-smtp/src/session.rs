//! The SMTP/LMTP state machine.

use crate::conn::{CommandLine, Conn, ReadError};
use crate::listener::Protocol;
use crate::reply::{self, Reply};
use crate::SmtpSettings;
use plenary_core::meta::Fallback;
use plenary_core::{mime, ListAddress, MessageMeta, Origin, RecipientKind};
use plenary_store::{IngestRequest, IngestTarget, PostHandling, Store, StoreError, TargetOutcome};
use smtp_proto::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Messages up to this size are parsed on the session's own task.
const INLINE_PARSE_MAX: usize = 64 * 1024;

/// Shared by every session.
pub struct Context {
    pub settings: SmtpSettings,
    pub store: Store,
    pub shutdown: watch::Receiver<bool>,
}

/// How a session ended.
pub enum End<S> {
    Closed,
    /// The client asked for STARTTLS and got `220`; the caller performs the handshake and
    /// runs a fresh session on the TLS stream. Buffered plaintext was already discarded.
    StartTls(Conn<S>),
}

#[derive(Default)]
struct Transaction {
    from: Option<String>,
    targets: Vec<(IngestTarget, String)>,
    /// Accepted RCPT commands, duplicates included (the cap counts these).
    accepted_rcpts: usize,
    rejected_rcpts: usize,
}

/// Per-connection state.
pub struct Session<'a> {
    ctx: &'a Context,
    proto: Protocol,
    peer: SocketAddr,
    tls: bool,
    helo: Option<String>,
    esmtp: bool,
    tx: Transaction,
    errors: usize,
}

fn addr_ok(addr: &str) -> bool {
    if addr.len() > plenary_core::address::MAX_ADDRESS_LEN || addr.bytes().any(|b| b.is_ascii_control()) {
        return false;
    }
    match addr.rsplit_once('@') {
        Some((local, domain)) => local.len() <= plenary_core::address::MAX_LOCAL_LEN && !domain.is_empty(),
        None => addr.is_empty(),
    }
}

/// Commands that must be the last of a pipelined group (RFC 2920 §3.1).
fn ends_group(req: &Request<std::borrow::Cow<'_, str>>) -> bool {
    matches!(
        req,
        Request::Ehlo { .. }
            | Request::Helo { .. }
            | Request::Lhlo { .. }
            | Request::Data
            | Request::Noop { .. }
            | Request::Vrfy { .. }
            | Request::Expn { .. }
            | Request::StartTls
    )
}

impl<'a> Session<'a> {
    pub fn new(ctx: &'a Context, proto: Protocol, peer: SocketAddr, tls: bool) -> Session<'a> {
        Session {
            ctx,
            proto,
            peer,
            tls,
            helo: None,
            esmtp: false,
            tx: Transaction::default(),
            errors: 0,
        }
    }

    fn s(&self) -> &SmtpSettings {
        &self.ctx.settings
    }

    /// Run the session on `conn` until it ends. `greet` is false after STARTTLS.
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut conn: Conn<S>,
        greet: bool,
    ) -> std::io::Result<End<S>> {
        if greet {
            if !self.s().greeting_delay.is_zero() && conn.input_within(self.s().greeting_delay).await {
                conn.write(&Reply::new(554, "5.5.0 Protocol error: talking before the greeting").to_wire())
                    .await?;
                return Ok(End::Closed);
            }
            let banner = match self.proto {
                Protocol::Smtp => format!("{} ESMTP Plenary", self.s().hostname),
                Protocol::Lmtp => format!("{} LMTP Plenary", self.s().hostname),
            };
            conn.write(&Reply::new(220, banner).to_wire()).await?;
        }
        let mut shutdown = self.ctx.shutdown.clone();
        loop {
            if *shutdown.borrow_and_update() {
                conn.write(&reply::shutting_down(&self.s().hostname).to_wire()).await?;
                return Ok(End::Closed);
            }
            let line = tokio::select! {
                r = conn.read_command(self.s().max_command_line, self.s().command_timeout) => r,
                _ = shutdown.changed() => continue,
            };
            let line = match line {
                Ok(l) => l,
                Err(ReadError::Eof) | Err(ReadError::Io(_)) => return Ok(End::Closed),
                Err(ReadError::Timeout) => {
                    conn.write(&reply::timeout().to_wire()).await?;
                    return Ok(End::Closed);
                }
                Err(ReadError::SessionTimeout) => {
                    conn.write(&reply::session_too_long().to_wire()).await?;
                    return Ok(End::Closed);
                }
            };
            let line = match line {
                CommandLine::Line(l) => l,
                CommandLine::TooLong => {
                    if self.error(&mut conn, reply::line_too_long()).await? {
                        return Ok(End::Closed);
                    }
                    continue;
                }
                CommandLine::Nul => {
                    if self
                        .error(&mut conn, reply::syntax("NUL characters are not allowed"))
                        .await?
                    {
                        return Ok(End::Closed);
                    }
                    continue;
                }
                CommandLine::BareNewline => {
                    // Postfix's smtpd_forbid_bare_newline: refuse and hang up.
                    conn.write(
                        &Reply::new(521, "5.5.2 Bare CR or LF received; lines must end with CRLF, closing").to_wire(),
                    )
                    .await?;
                    return Ok(End::Closed);
                }
            };
            if std::str::from_utf8(&line).is_err() {
                if self
                    .error(&mut conn, reply::syntax("Command is not valid UTF-8"))
                    .await?
                {
                    return Ok(End::Closed);
                }
                continue;
            }
            let parsed = Request::parse(&mut line.iter());
            let req = match parsed {
                Ok(r) => r,
                Err(e) => {
                    let r = match e {
                        smtp_proto::Error::UnknownCommand => reply::unknown_command(),
                        smtp_proto::Error::InvalidSenderAddress => Reply::new(501, "5.1.7 Bad sender address syntax"),
                        smtp_proto::Error::InvalidRecipientAddress => {
                            Reply::new(501, "5.1.3 Bad recipient address syntax")
                        }
                        smtp_proto::Error::SyntaxError { syntax } => reply::syntax(&format!("Syntax: {syntax}")),
                        smtp_proto::Error::InvalidParameter { param } => {
                            reply::syntax(&format!("Invalid parameter {param}"))
                        }
                        smtp_proto::Error::UnsupportedParameter { .. } => {
                            Reply::new(555, "5.5.4 Unsupported parameter")
                        }
                        _ => reply::syntax("Syntax error"),
                    };
                    if self.error(&mut conn, r).await? {
                        return Ok(End::Closed);
                    }
                    continue;
                }
            };
            // Unauthorised pipelining: input already waiting after a command that must end a
            // group, or any pipelining by a client that did not negotiate it with EHLO.
            let early = !conn.buffered().is_empty() && !matches!(req, Request::Quit | Request::StartTls);
            if early && (ends_group(&req) || !self.esmtp) {
                conn.write(
                    &Reply::new(
                        554,
                        "5.5.0 SMTP protocol synchronization error (improper pipelining), closing",
                    )
                    .to_wire(),
                )
                .await?;
                return Ok(End::Closed);
            }
            match req {
                Request::Ehlo { host } | Request::Lhlo { host } => {
                    let lhlo_expected = self.proto == Protocol::Lmtp;
                    let is_lhlo = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"LHLO");
                    if lhlo_expected != is_lhlo {
                        let r = if lhlo_expected {
                            bad_cmd("5.5.1 This is an LMTP server: use LHLO")
                        } else {
                            bad_cmd("5.5.1 Use EHLO or HELO")
                        };
                        if self.error(&mut conn, r).await? {
                            return Ok(End::Closed);
                        }
                        continue;
                    }
                    self.helo = Some(host.to_string());
                    self.esmtp = true;
                    self.tx = Transaction::default();
                    conn.write(&self.ehlo_reply().to_wire()).await?;
                }
                Request::Helo { host } => {
                    if self.proto == Protocol::Lmtp {
                        if self
                            .error(&mut conn, bad_cmd("5.5.1 This is an LMTP server: use LHLO"))
                            .await?
                        {
                            return Ok(End::Closed);
                        }
                        continue;
                    }
                    self.helo = Some(host.to_string());
                    self.esmtp = false;
                    self.tx = Transaction::default();
                    conn.write(&Reply::new(250, self.s().hostname.clone()).to_wire())
                        .await?;
                }
                Request::StartTls => {
                    let r = if self.tls {
                        reply::bad_sequence("TLS already active")
                    } else if self.s().tls.is_none() || self.proto == Protocol::Lmtp {
                        reply::not_implemented()
                    } else if self.helo.is_none() {
                        reply::bad_sequence("Send EHLO first")
                    } else {
                        conn.write(&Reply::new(220, "2.0.0 Ready to start TLS").to_wire())
                            .await?;
                        conn.discard_buffered();
                        return Ok(End::StartTls(conn));
                    };
                    if self.error(&mut conn, r).await? {
                        return Ok(End::Closed);
                    }
                }
                Request::Mail { from } => {
                    let r = self.mail(&from.address, from.size);
                    if self.reply(&mut conn, r).await? {
                        return Ok(End::Closed);
                    }
                }
                Request::Rcpt { to } => {
                    let r = self.rcpt(&to.address);
                    if self.reply(&mut conn, r).await? {
                        return Ok(End::Closed);
                    }
                }
                Request::Data => {
                    if self.data(&mut conn).await? {
                        return Ok(End::Closed);
                    }
                }
                Request::Bdat { .. }
                | Request::Auth { .. }
                | Request::Etrn { .. }
                | Request::Atrn { .. }
                | Request::Burl { .. } => {
                    if self.error(&mut conn, reply::not_implemented()).await? {
                        return Ok(End::Closed);
                    }
                }
                Request::Rset => {
                    self.tx = Transaction::default();
                    conn.write(&reply::ok("Reset").to_wire()).await?;
                }
                Request::Noop { .. } => conn.write(&reply::ok("OK").to_wire()).await?,
                Request::Vrfy { .. } => {
                    conn.write(&Reply::new(252, "2.1.5 Cannot VRFY; send mail to a list address").to_wire())
                        .await?;
                }
                Request::Expn { .. } => {
                    conn.write(&Reply::new(502, "5.5.1 EXPN not available: membership is not disclosed").to_wire())
                        .await?;
                }
                Request::Help { .. } => {
                    conn.write(
                        &Reply::multi(
                            214,
                            vec![
                                "2.0.0 Plenary list server: mail to a list address posts to the list.".into(),
                                "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP".into(),
                            ],
                        )
                        .to_wire(),
                    )
                    .await?;
                }
                Request::Quit => {
                    conn.write(&Reply::new(221, "2.0.0 Bye").to_wire()).await?;
                    return Ok(End::Closed);
                }
            }
        }
    }

    fn ehlo_reply(&self) -> Reply {
        let mut lines = vec![
            format!("{} Hello {}", self.s().hostname, self.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.s().max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
        ];
        if self.s().tls.is_some() && !self.tls && self.proto == Protocol::Smtp {
            lines.push("STARTTLS".to_string());
        }
        Reply::multi(250, lines)
    }

    /// Send a reply; count it if it is an error. Returns true if the session must close.
    async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        r: Reply,
    ) -> std::io::Result<bool> {
        if r.code >= 500 {
            return self.error(conn, r).await;
        }
        conn.write(&r.to_wire()).await?;
        Ok(false)
    }

    async fn error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        r: Reply,
    ) -> std::io::Result<bool> {
        self.errors += 1;
        if self.errors > self.s().max_errors {
            conn.write(&reply::too_many_errors().to_wire()).await?;
            return Ok(true);
        }
        conn.write(&r.to_wire()).await?;
        Ok(false)
    }

    fn mail(&mut self, address: &str, size: usize) -> Reply {
        if self.helo.is_none() {
            return reply::bad_sequence(if self.proto == Protocol::Lmtp {
                "Send LHLO first"
            } else {
                "Send EHLO or HELO first"
            });
        }
        if self.tx.from.is_some() {
            return reply::bad_sequence("Nested MAIL command");
        }
        if !addr_ok(address) {
            return Reply::new(553, "5.1.7 Sender address too long or malformed");
        }
        if size > self.s().max_message_size {
            return Reply::new(
                552,
                format!(
                    "5.3.4 Message size exceeds fixed limit of {} bytes",
                    self.s().max_message_size
                ),
            );
        }
        let expect = if size > 0 { size } else { 64 * 1024 } as u64;
        if let Err(e) = self.ctx.store.check_space(expect) {
            return if e.is_disk_full() {
                reply::storage_full()
            } else {
                reply::local_error()
            };
        }
        self.tx = Transaction {
            from: Some(address.to_string()),
            ..Transaction::default()
        };
        Reply::new(250, "2.1.0 Sender OK")
    }

    fn rcpt(&mut self, address: &str) -> Reply {
        if self.tx.from.is_none() {
            return reply::bad_sequence("Need MAIL before RCPT");
        }
        if self.tx.accepted_rcpts >= self.s().max_recipients {
            return Reply::new(452, "4.5.3 Too many recipients");
        }
        if !addr_ok(address) || address.is_empty() {
            self.tx.rejected_rcpts += 1;
            return Reply::new(553, "5.1.3 Recipient address too long or malformed");
        }
        let lower = address.to_ascii_lowercase();
        let Some((local, domain)) = lower.rsplit_once('@') else {
            self.tx.rejected_rcpts += 1;
            return Reply::new(550, "5.1.1 No such list here");
        };
        // The list this could belong to: the local part with a command suffix removed.
        let mut base = local;
        if let Some(i) = local.find("-bounces+").or_else(|| local.find("-confirm+")) {
            base = &local[..i];
        } else {
            for suf in ["-request", "-join", "-leave", "-owner", "-bounces", "-confirm"] {
                if let Some(b) = local.strip_suffix(suf) {
                    base = b;
                    break;
                }
            }
        }
        let found = ListAddress::parse(&format!("{base}@{domain}"))
            .ok()
            .and_then(|a| self.ctx.store.list_ident(a.as_str()).ok().flatten());
        let target = found.and_then(|(id, address)| address.classify(&lower).map(|kind| (id, kind)));
        match target {
            Some((list, kind)) => {
                let t = IngestTarget { list, kind };
                self.tx.accepted_rcpts += 1;
                if !self.tx.targets.iter().any(|(x, _)| *x == t) {
                    self.tx.targets.push((t, lower));
                }
                Reply::new(250, "2.1.5 Recipient OK")
            }
            None => {
                self.tx.rejected_rcpts += 1;
                let ours = self
                    .ctx
                    .store
                    .lists()
                    .map(|ls| ls.iter().any(|l| l.address.domain() == domain))
                    .unwrap_or(false);
                if ours {
                    Reply::new(550, "5.1.1 No such list here")
                } else {
                    Reply::new(554, "5.7.1 Relay access denied")
                }
            }
        }
    }

    /// DATA. Returns true if the session must close.
    async fn data<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>) -> std::io::Result<bool> {
        if self.tx.from.is_none() {
            return self.error(conn, reply::bad_sequence("Need MAIL command")).await;
        }
        if self.tx.targets.is_empty() {
            let r = if self.tx.rejected_rcpts > 0 {
                Reply::new(554, "5.5.1 No valid recipients")
            } else {
                reply::bad_sequence("Need RCPT command")
            };
            return self.error(conn, r).await;
        }
        conn.write(&Reply::new(354, "Start mail input; end with <CRLF>.<CRLF>").to_wire())
            .await?;
        let s = self.s().clone();
        let data = match conn
            .read_data(s.max_message_size, s.max_line_length, s.data_timeout)
            .await
        {
            Ok(d) => d,
            Err(ReadError::Timeout) => {
                conn.write(&reply::timeout().to_wire()).await?;
                return Ok(true);
            }
            Err(ReadError::SessionTimeout) => {
                conn.write(&reply::session_too_long().to_wire()).await?;
                return Ok(true);
            }
            Err(_) => return Ok(true),
        };
        let tx = std::mem::take(&mut self.tx);
        let rcpt_count = tx.targets.len();
        if data.bare_newline || data.nul {
            // What follows a bare CR/LF or NUL may be a smuggled transaction: refuse and hang
            // up without reading another byte (Postfix's smtpd_forbid_bare_newline).
            let what = if data.nul { "NUL character" } else { "bare CR or LF" };
            let r = Reply::new(
                521,
                format!("5.5.2 Message contains a {what}; lines must end with CRLF, closing connection"),
            );
            let mut wire = Vec::new();
            for _ in 0..if self.proto == Protocol::Lmtp { rcpt_count } else { 1 } {
                wire.extend_from_slice(&r.to_wire());
            }
            conn.write(&wire).await?;
            return Ok(true);
        }
        let result = if data.too_big {
            Err(Reply::new(
                552,
                format!("5.3.4 Message size exceeds fixed limit of {} bytes", s.max_message_size),
            ))
        } else if data.line_too_long {
            Err(Reply::new(
                554,
                format!("5.6.0 Message has a line longer than {} bytes", s.max_line_length),
            ))
        } else {
            self.accept(data.message, tx).await
        };
        match self.proto {
            Protocol::Smtp => {
                let r = match result {
                    Ok(outcomes) => smtp_reply(&outcomes),
                    Err(r) => r,
                };
                self.reply(conn, r).await
            }
            Protocol::Lmtp => {
                // RFC 2033: one reply per accepted recipient, in order, each telling what
                // happened for that recipient (a policy refusal for one list does not hide
                // the delivery to another).
                let mut wire = Vec::new();
                match result {
                    Ok(outcomes) => {
                        for o in &outcomes {
                            wire.extend_from_slice(&lmtp_reply(o).to_wire());
                        }
                    }
                    Err(r) => {
                        for _ in 0..rcpt_count {
                            wire.extend_from_slice(&r.to_wire());
                        }
                    }
                }
                conn.write(&wire).await?;
                Ok(false)
            }
        }
    }

    /// Store the message for every recipient of the transaction: one outcome per recipient
    /// in RCPT order, or the one reply that applies to all of them.
    async fn accept(&self, body: Vec<u8>, tx: Transaction) -> Result<Vec<TargetOutcome>, Reply> {
        let s = self.s();
        if let Err(e) = mime::scan(&body, &s.mime) {
            return Err(Reply::new(554, format!("5.6.0 Message refused: {e}")));
        }
        if let Some(r) = loop_check(&body, s.max_received_headers, &tx.targets) {
            return Err(r);
        }
        let now = chrono::Utc::now();
        let received = format!(
            "Received: from {} ({} [{}])\r\n\tby {} with {}{}{}; {}\r\n",
            sanitize_helo(self.helo.as_deref().unwrap_or("unknown")),
            sanitize_helo(self.helo.as_deref().unwrap_or("unknown")),
            self.peer.ip(),
            s.hostname,
            match self.proto {
                Protocol::Smtp => "ESMTP",
                Protocol::Lmtp => "LMTP",
            },
            if self.tls { "S" } else { "" },
            envelope_comment(tx.from.as_deref()),
            now.to_rfc2822()
        );
        let mut raw = Vec::with_capacity(received.len() + body.len());
        raw.extend_from_slice(received.as_bytes());
        raw.extend_from_slice(&body);
        drop(body);
        let received_at = now.timestamp();
        let fallback = Fallback {
            envelope_date: None,
            received_at,
        };
        // Parsing a large message takes a while: keep it off the async workers. A typical
        // message parses in tens of microseconds, less than the hand-off to a blocking thread.
        let (raw, meta) = if raw.len() <= INLINE_PARSE_MAX {
            let meta = MessageMeta::extract(&raw, fallback);
            (raw, meta)
        } else {
            match tokio::task::spawn_blocking(move || {
                let meta = MessageMeta::extract(&raw, fallback);
                (raw, meta)
            })
            .await
            {
                Ok(v) => v,
                Err(_) => return Err(reply::local_error()),
            }
        };
        let req = IngestRequest {
            raw,
            meta,
            origin: match self.proto {
                Protocol::Smtp => Origin::Smtp,
                Protocol::Lmtp => Origin::Lmtp,
            },
            envelope_from: tx.from.unwrap_or_default(),
            targets: tx.targets.into_iter().map(|(t, _)| t).collect(),
            received_at,
            handling: PostHandling::ByPolicy,
        };
        match self.ctx.store.ingest(req).await {
            Ok(outcomes) => Ok(outcomes),
            Err(e) if e.is_disk_full() => Err(reply::storage_full()),
            Err(StoreError::ShuttingDown) => Err(Reply::new(421, "4.3.2 Service shutting down")),
            Err(e) => {
                tracing::error!(error = %e, "cannot store message");
                Err(reply::local_error())
            }
        }
    }
}

/// What one recipient's outcome is called in a reply.
fn outcome_label(o: &TargetOutcome) -> String {
    match o {
        TargetOutcome::Archived(k) => format!("{k}"),
        TargetOutcome::Duplicate(k) => format!("{k} (duplicate)"),
        TargetOutcome::Inbox(n) => format!("inbox:{n}"),
        TargetOutcome::Held(n) => format!("held:{n} (awaiting moderation)"),
        TargetOutcome::Rejected(_) => "refused".to_string(),
        TargetOutcome::Discarded => "accepted".to_string(),
    }
}

/// SMTP has one reply for all recipients. A policy refusal is only reported when nothing
/// else was accepted: the sending server then tells the author (no backscatter from us).
fn smtp_reply(outcomes: &[TargetOutcome]) -> Reply {
    let refused: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            TargetOutcome::Rejected(t) => Some(*t),
            _ => None,
        })
        .collect();
    if !refused.is_empty() && refused.len() == outcomes.len() {
        return Reply::new(550, refused[0].to_string());
    }
    let ids: Vec<String> = outcomes.iter().map(outcome_label).collect();
    Reply::new(250, format!("2.0.0 Ok: stored as {}", ids.join(", ")))
}

/// LMTP's reply for one recipient.
fn lmtp_reply(o: &TargetOutcome) -> Reply {
    match o {
        TargetOutcome::Rejected(t) => Reply::new(550, t.to_string()),
        o => Reply::new(250, format!("2.0.0 Ok: stored as {}", outcome_label(o))),
    }
}

fn bad_cmd(text: &str) -> Reply {
    Reply::new(503, text.to_string())
}

/// ` (envelope-from <ADDR>)`, as Exim writes it: ARC sealing checks SPF for this sender
/// when the post goes out (`plenary-fanout/src/arc.rs` reads it back). Left out when the
/// address has characters that could end the comment early (`<>` stays `<>`).
fn envelope_comment(from: Option<&str>) -> String {
    match from {
        Some(a) if a.len() <= 320 && a.chars().all(|c| c.is_ascii_graphic() && !"()<>\\\";".contains(c)) => {
            format!(" (envelope-from <{a}>)")
        }
        _ => String::new(),
    }
}

fn sanitize_helo(h: &str) -> String {
    h.chars().filter(|c| c.is_ascii_graphic()).take(255).collect()
}

/// Our own X-Loop/List-Id, or too many hops: refuse (SECURITY.md S-14).
///
/// Works on the header's bytes: it runs for every message, and only the X-Loop and List-Id
/// lines need a closer look (an earlier version lower-cased a lossy copy of the whole header
/// and formatted the List-Id needle once per header line).
fn loop_check(raw: &[u8], max_received: usize, targets: &[(IngestTarget, String)]) -> Option<Reply> {
    let end = memchr::memmem::find(raw, b"\r\n\r\n")
        .map(|i| i + 2)
        .unwrap_or(raw.len());
    let posts: Vec<(&str, String)> = targets
        .iter()
        .filter(|(t, _)| t.kind == RecipientKind::Post)
        .map(|(_, addr)| (addr.as_str(), format!("<{}>", addr.replacen('@', ".", 1))))
        .collect();
    let field = |line: &[u8], name: &[u8]| -> bool {
        line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name)
    };
    let mut received = 0usize;
    let mut start = 0usize;
    while start <= end {
        let stop = memchr::memmem::find(&raw[start..end], b"\r\n").map_or(end, |i| start + i);
        let line = &raw[start..stop];
        start = stop + 2;
        if field(line, b"received:") {
            received += 1;
        } else if field(line, b"x-loop:") {
            let v = line[b"x-loop:".len()..].trim_ascii();
            if posts.iter().any(|(addr, _)| v.eq_ignore_ascii_case(addr.as_bytes())) {
                return Some(Reply::new(554, "5.4.6 Mail loop detected (X-Loop)"));
            }
        } else if field(line, b"list-id:") {
            let v = line[b"list-id:".len()..].to_ascii_lowercase();
            if posts
                .iter()
                .any(|(_, id)| memchr::memmem::find(&v, id.as_bytes()).is_some())
            {
                return Some(Reply::new(554, "5.4.6 Mail loop detected (our own List-Id)"));
            }
        }
    }
    if received > max_received {
        return Some(Reply::new(
            554,
            format!("5.4.6 Too many hops ({received} Received headers)"),
        ));
    }
    None
}

/// Convenience for tests and the listener: run one connection to completion.
pub(crate) async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<Context>,
    proto: Protocol,
    peer: SocketAddr,
    stream: S,
) -> std::io::Result<End<S>> {
    let conn = Conn::new(stream, ctx.settings.session_timeout);
    Session::new(ctx, proto, peer, false).run(conn, true).await
}

#[cfg(test)]
mod tests {
    use super::{envelope_comment, loop_check};
    use plenary_core::{ListId, RecipientKind};
    use plenary_store::IngestTarget;

    /// Header names in any case; only our own address and List-Id count; the value of a
    /// header that is not one of the three, and anything in the body, is never looked at.
    #[test]
    fn loops_are_found_in_the_header_only_and_in_any_case() {
        let post = |kind| {
            vec![(
                IngestTarget { list: ListId(1), kind },
                "gov@lists.example.org".to_string(),
            )]
        };
        let t = post(RecipientKind::Post);
        let check = |m: &str, t: &[(IngestTarget, String)]| {
            loop_check(m.as_bytes(), 3, t).map(|r| String::from_utf8_lossy(&r.to_wire()).into_owned())
        };
        assert!(check("x-LOOP:  GOV@Lists.Example.org \r\n\r\nhi\r\n", &t).is_some());
        assert!(check("LIST-ID: Gov <GOV.lists.example.org>\r\n\r\nhi\r\n", &t).is_some());
        assert!(check(
            "List-Id: Other <other.lists.example.org>\r\nX-Loop: other@x\r\n\r\nhi\r\n",
            &t
        )
        .is_none());
        assert!(check(
            "Subject: X-Loop: gov@lists.example.org\r\n\r\nX-Loop: gov@lists.example.org\r\n",
            &t
        )
        .is_none());
        assert!(
            check(
                "X-Loop: gov@lists.example.org\r\n\r\nhi\r\n",
                &post(RecipientKind::Request)
            )
            .is_none(),
            "command mail may carry the list's own X-Loop"
        );
        let hops = |n: usize| format!("{}\r\nbody\r\n", "RECEIVED: from a by b\r\n".repeat(n));
        assert!(check(&hops(3), &t).is_none());
        assert!(check(&hops(4), &t).is_some_and(|r| r.contains("Too many hops (4")));
        assert!(check("", &t).is_none());
        assert!(
            check("X-Loop: gov@lists.example.org", &t).is_some(),
            "a header without a body"
        );
    }

    #[test]
    fn envelope_sender_is_recorded_only_when_it_cannot_break_the_comment() {
        assert_eq!(
            envelope_comment(Some("ana@author.example")),
            " (envelope-from <ana@author.example>)"
        );
        assert_eq!(envelope_comment(Some("")), " (envelope-from <>)");
        assert_eq!(envelope_comment(None), "");
        for bad in ["a)b@x", "a>b@x", "\"a b\"@x", "a;b@x", "ü@x"] {
            assert_eq!(envelope_comment(Some(bad)), "", "{bad}");
        }
    }
}
