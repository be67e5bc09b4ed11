//! The byte layer: command lines and DATA, under strict CRLF rules and hard caps.
//!
//! Why strict: SMTP smuggling (CVE-2023-51764/5/6) works when two programs disagree on where
//! a message ends. Here the only end of DATA is `<CRLF>.<CRLF>`; a bare LF, a bare CR or a
//! NUL anywhere in DATA marks the message as malformed (it is then refused with a 5xx after
//! the real end, and nothing is stored), and `\r\r\n` is never collapsed into a line end.
//! Reading is bounded: a line over the cap is discarded as it streams, never buffered whole,
//! and a message over the size cap is read to its end and dropped, so the stream stays in
//! sync and the remainder is never taken for commands.

use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

const READ_CHUNK: usize = 16 * 1024;

/// Why a read ended without a usable line or message.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection.
    Eof,
    /// No byte for the configured timeout.
    Timeout,
    /// The session deadline passed.
    SessionTimeout,
    Io(io::Error),
}

/// A command line, checked.
#[derive(Debug, PartialEq, Eq)]
pub enum CommandLine {
    /// The line, including its CRLF.
    Line(Vec<u8>),
    /// Longer than the cap; the excess was discarded up to the next LF.
    TooLong,
    /// Ended in a bare LF or contains a bare CR.
    BareNewline,
    /// Contains a NUL byte.
    Nul,
}

/// What a message buffer starts with (grown by doubling past it).
const DATA_INITIAL_CAPACITY: usize = 16 * 1024;

/// A DATA section, checked.
#[derive(Debug, Default)]
pub struct DataResult {
    /// The message, dot-unstuffed, CRLF line ends as received. Empty if any flag is set.
    pub message: Vec<u8>,
    pub bare_newline: bool,
    pub nul: bool,
    pub too_big: bool,
    pub line_too_long: bool,
}

impl DataResult {
    pub fn is_clean(&self) -> bool {
        !(self.bare_newline || self.nul || self.too_big || self.line_too_long)
    }
}

/// A stream with our own read buffer, so buffered input can be inspected and discarded.
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
    start: usize,
    deadline: Instant,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, session_timeout: Duration) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            deadline: Instant::now() + session_timeout,
        }
    }

    /// Give up the stream. Buffered input is dropped.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Bytes received but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Drop everything buffered (STARTTLS: CVE-2011-0411).
    pub fn discard_buffered(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    async fn fill(&mut self, idle: Duration) -> Result<usize, ReadError> {
        let idle_deadline = Instant::now() + idle;
        let (deadline, is_session) = if self.deadline < idle_deadline {
            (self.deadline, true)
        } else {
            (idle_deadline, false)
        };
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let r = timeout_at(deadline, self.stream.read(&mut self.buf[old..])).await;
        match r {
            Err(_) => {
                self.buf.truncate(old);
                Err(if is_session {
                    ReadError::SessionTimeout
                } else {
                    ReadError::Timeout
                })
            }
            Ok(Err(e)) => {
                self.buf.truncate(old);
                Err(ReadError::Io(e))
            }
            Ok(Ok(0)) => {
                self.buf.truncate(old);
                Err(ReadError::Eof)
            }
            Ok(Ok(n)) => {
                self.buf.truncate(old + n);
                Ok(n)
            }
        }
    }

    /// Wait up to `wait` for any input; true if some arrived (early-talker check).
    pub async fn input_within(&mut self, wait: Duration) -> bool {
        if !self.buffered().is_empty() {
            return true;
        }
        self.fill(wait).await.is_ok()
    }

    /// Read one command line of at most `max` bytes including CRLF.
    pub async fn read_command(&mut self, max: usize, idle: Duration) -> Result<CommandLine, ReadError> {
        let mut discarding = false;
        loop {
            let avail = self.buffered();
            if let Some(pos) = memchr::memchr(b'\n', avail) {
                let len = pos + 1;
                if discarding || len > max {
                    self.consume(len);
                    return Ok(CommandLine::TooLong);
                }
                let line = avail[..len].to_vec();
                self.consume(len);
                let body = &line[..len - 1];
                let bad = !body.ends_with(b"\r") || memchr::memchr(b'\r', &body[..body.len() - 1]).is_some();
                return Ok(if bad {
                    CommandLine::BareNewline
                } else if memchr::memchr(0, body).is_some() {
                    CommandLine::Nul
                } else {
                    CommandLine::Line(line)
                });
            }
            if avail.len() > max {
                // Over the cap with no LF yet: drop what we have and keep discarding.
                let n = avail.len();
                self.consume(n);
                discarding = true;
            }
            self.fill(idle).await?;
        }
    }

    /// Read a DATA section up to `<CRLF>.<CRLF>` (the CRLF before the dot is the end of the
    /// last line, or the DATA command's own when the message is empty).
    ///
    /// Every byte is checked, whatever the line length: the first bare CR, bare LF or NUL
    /// stops reading at once and is reported, because whatever follows it may be a smuggled
    /// transaction; the caller refuses the message and closes the connection. Over-long lines
    /// and oversized messages are read to the real end and refused, keeping the stream in step.
    pub async fn read_data(
        &mut self,
        max_size: usize,
        max_line: usize,
        idle: Duration,
    ) -> Result<DataResult, ReadError> {
        let mut out = DataResult {
            // Most list mail fits: growing from empty reallocated and copied the message
            // about ten times (a twentieth of the SMTP workers' time in an ingest profile).
            message: Vec::with_capacity(DATA_INITIAL_CAPACITY.min(max_size.saturating_add(2))),
            ..DataResult::default()
        };
        let mut cur: Vec<u8> = Vec::with_capacity(128); // the current line, kept only up to `max_line`
        let mut cur_len = 0usize; // its true length so far
        let mut pending_cr = false; // the previous piece of this line ended in CR
        let mut total = 0usize; // every byte of the message so far, kept or not
        loop {
            if self.buffered().is_empty() {
                self.fill(idle).await?;
                continue;
            }
            let avail = self.buffered();
            let (n, complete) = match memchr::memchr(b'\n', avail) {
                Some(pos) => (pos + 1, true),
                None => (avail.len(), false),
            };
            let chunk = &avail[..n];
            let mut bare = pending_cr && chunk[0] != b'\n';
            for i in memchr::memchr_iter(b'\r', chunk) {
                if i + 1 < n && chunk[i + 1] != b'\n' {
                    bare = true;
                }
            }
            if complete {
                let before_lf_is_cr = if n >= 2 { chunk[n - 2] == b'\r' } else { pending_cr };
                if !before_lf_is_cr {
                    bare = true;
                }
            }
            pending_cr = chunk[n - 1] == b'\r';
            let nul = memchr::memchr(0, chunk).is_some();
            if bare || nul {
                self.consume(n);
                out.bare_newline = bare;
                out.nul = nul;
                out.message = Vec::new();
                return Ok(out);
            }
            cur_len += n;
            total += n;
            if total > max_size.saturating_add(2) && !out.too_big {
                out.too_big = true;
                out.message = Vec::new();
            }
            if cur.len() + n <= max_line {
                cur.extend_from_slice(chunk);
            }
            self.consume(n);
            if !complete {
                continue;
            }
            let too_long = cur_len > max_line;
            if !too_long && cur == b".\r\n" {
                if !out.is_clean() {
                    out.message = Vec::new();
                }
                return Ok(out);
            }
            if too_long {
                out.line_too_long = true;
                out.message = Vec::new();
            }
            if out.is_clean() {
                let unstuffed = if cur.first() == Some(&b'.') {
                    &cur[1..]
                } else {
                    &cur[..]
                };
                if out.message.len() + unstuffed.len() > max_size {
                    out.too_big = true;
                    out.message = Vec::new();
                } else {
                    out.message.extend_from_slice(unstuffed);
                }
            }
            cur.clear();
            cur_len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data(input: &[u8]) -> DataResult {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.expect("write");
        drop(client);
        let mut c = Conn::new(server, Duration::from_secs(5));
        c.read_data(1 << 20, 1000, Duration::from_secs(5)).await.expect("data")
    }

    #[tokio::test]
    async fn plain_data_is_unstuffed() {
        let r = data(b"Subject: x\r\n\r\n..leading dot\r\nline\r\n.\r\nQUIT\r\n").await;
        assert!(r.is_clean());
        assert_eq!(r.message, b"Subject: x\r\n\r\n.leading dot\r\nline\r\n");
    }

    #[tokio::test]
    async fn smuggling_endings_never_end_data() {
        for fake in [
            &b"\n.\r\n"[..],
            b"\n.\n",
            b"\r\n.\n",
            b"\r.\r",
            b"\r\n.\r",
            b"\r\r\n.\r\n",
        ] {
            let mut input = b"Subject: s\r\n\r\nhi".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(b"MAIL FROM:<x@evil.test>\r\nRCPT TO:<l@x.org>\r\nDATA\r\nsmuggled\r\n.\r\n");
            let r = data(&input).await;
            assert!(!r.is_clean(), "{fake:?} must be flagged");
            assert!(r.message.is_empty());
        }
    }

    #[tokio::test]
    async fn bare_cr_hidden_in_an_overlong_line_is_caught() {
        let mut input = b"Subject: s\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', 5000));
        input.extend_from_slice(b"\r\r\n.\r\nMAIL FROM:<x@evil.test>\r\n");
        let r = data(&input).await;
        assert!(r.bare_newline);
    }

    #[tokio::test]
    async fn cr_split_across_reads_is_not_bare() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut c = Conn::new(server, Duration::from_secs(5));
        let writer = tokio::spawn(async move {
            client.write_all(b"Subject: x\r").await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"\n\r\nbody\r\n.\r\n").await.expect("write");
            client
        });
        let r = c.read_data(1 << 20, 1000, Duration::from_secs(5)).await.expect("data");
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.message, b"Subject: x\r\n\r\nbody\r\n");
        drop(writer.await);
    }

    #[tokio::test]
    async fn caps_apply() {
        let mut long = b"Subject: x\r\n\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'a', 5000));
        long.extend_from_slice(b"\r\n.\r\n");
        let r = data(&long).await;
        assert!(r.line_too_long && r.message.is_empty());
        let nul = data(b"a\r\n\x00.\r\n.\r\n").await;
        assert!(nul.nul);
    }

    #[tokio::test]
    async fn command_lines() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(b"NOOP\r\nNOOP\nNO\rOP\r\n").await.expect("write");
        let mut long = vec![b'A'; 3000];
        long.extend_from_slice(b"\r\nMAIL FROM:<a\x00b@t>\r\nQUIT\r\n");
        client.write_all(&long).await.expect("write");
        drop(client);
        let mut c = Conn::new(server, Duration::from_secs(5));
        let t = Duration::from_secs(5);
        assert_eq!(
            c.read_command(2048, t).await.expect("r"),
            CommandLine::Line(b"NOOP\r\n".to_vec())
        );
        assert_eq!(c.read_command(2048, t).await.expect("r"), CommandLine::BareNewline);
        assert_eq!(c.read_command(2048, t).await.expect("r"), CommandLine::BareNewline);
        assert_eq!(c.read_command(2048, t).await.expect("r"), CommandLine::TooLong);
        assert_eq!(c.read_command(2048, t).await.expect("r"), CommandLine::Nul);
        assert_eq!(
            c.read_command(2048, t).await.expect("r"),
            CommandLine::Line(b"QUIT\r\n".to_vec())
        );
    }
}
