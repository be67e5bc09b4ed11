//! Structural pre-scan of a raw message, before any full MIME parser runs.
//!
//! Why it exists: a Rust stack overflow aborts the whole process, and neither
//! `catch_unwind` nor a task boundary can stop it. mail-parser 0.11 builds a tree for nested
//! `message/rfc822` parts and overflows the stack when it drops a deep one (SECURITY.md M-02),
//! so a single hostile message could take down the daemon and then crash it again on every
//! restart while re-indexing. This scanner walks the message once, line by line, with an
//! explicit stack whose height is capped, and answers "within limits" or "too deep / too many
//! parts / headers too big" in time linear in the message size. Only messages that pass are
//! ever handed to mail-parser.

use std::fmt;

/// Limits on message structure; see SECURITY.md "Suggested default limits".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MimeLimits {
    /// Bytes in the top-level header section.
    pub max_header_bytes: usize,
    /// Fields in the top-level header section.
    pub max_header_fields: usize,
    /// Nesting of multiparts and enclosed messages together.
    pub max_depth: usize,
    /// Body parts in the whole message, including nested messages.
    pub max_parts: usize,
}

impl Default for MimeLimits {
    fn default() -> Self {
        MimeLimits {
            max_header_bytes: 256 * 1024,
            max_header_fields: 1000,
            max_depth: 32,
            max_parts: 500,
        }
    }
}

/// Why a message is outside the structural limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StructureError {
    HeaderTooLarge { limit: usize },
    TooManyHeaderFields { limit: usize },
    TooDeep { limit: usize },
    TooManyParts { limit: usize },
}

impl fmt::Display for StructureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StructureError::HeaderTooLarge { limit } => {
                write!(f, "header section larger than {limit} bytes")
            }
            StructureError::TooManyHeaderFields { limit } => {
                write!(f, "more than {limit} header fields")
            }
            StructureError::TooDeep { limit } => write!(f, "MIME nesting deeper than {limit}"),
            StructureError::TooManyParts { limit } => write!(f, "more than {limit} MIME parts"),
        }
    }
}

impl std::error::Error for StructureError {}

/// What the scan found in a message that is within limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Structure {
    pub depth: usize,
    pub parts: usize,
    pub header_bytes: usize,
    pub header_fields: usize,
}

enum Frame {
    Multipart(Vec<u8>),
    Message,
}

/// Iterator over lines, each without its terminator, tolerant of CRLF and bare LF.
struct Lines<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.raw.len() {
            return None;
        }
        let rest = &self.raw[self.pos..];
        let (line, used) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], i + 1),
            None => (rest, rest.len()),
        };
        self.pos += used;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// What one header block declares about its body.
enum BodyKind {
    Multipart(Vec<u8>),
    Message,
    Leaf,
}

/// Read one header block. Returns its kind, its byte size and its field count.
fn read_header_block(lines: &mut Lines<'_>) -> (BodyKind, usize, usize) {
    let start = lines.pos;
    let mut fields = 0usize;
    let mut content_type: Vec<u8> = Vec::new();
    let mut in_ct = false;
    for line in lines.by_ref() {
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if in_ct && content_type.len() < 4096 {
                content_type.extend_from_slice(line);
            }
            continue;
        }
        fields += 1;
        in_ct = line.len() > 13 && line[..13].eq_ignore_ascii_case(b"content-type:");
        if in_ct {
            content_type.clear();
            content_type.extend_from_slice(&line[13..line.len().min(13 + 4096)]);
        }
    }
    let size = lines.pos - start;
    (classify_content_type(&content_type), size, fields)
}

fn classify_content_type(value: &[u8]) -> BodyKind {
    let lower = value.to_ascii_lowercase();
    let trimmed: &[u8] = {
        let s = lower
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(lower.len());
        &lower[s..]
    };
    if trimmed.starts_with(b"message/rfc822") || trimmed.starts_with(b"message/global") {
        return BodyKind::Message;
    }
    if trimmed.starts_with(b"multipart/") {
        if let Some(b) = boundary_param(value) {
            return BodyKind::Multipart(b);
        }
    }
    BodyKind::Leaf
}

/// Extract the `boundary=` parameter (quoted or bare), keeping the original case.
fn boundary_param(value: &[u8]) -> Option<Vec<u8>> {
    let lower = value.to_ascii_lowercase();
    let mut search = 0;
    while let Some(off) = find(&lower[search..], b"boundary") {
        let at = search + off;
        search = at + 8;
        let before_ok = at == 0 || matches!(lower[at - 1], b';' | b' ' | b'\t');
        let mut i = at + 8;
        while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
            i += 1;
        }
        if !before_ok || value.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < value.len() && (value[i] == b' ' || value[i] == b'\t') {
            i += 1;
        }
        let b: Vec<u8> = if value.get(i) == Some(&b'"') {
            let rest = &value[i + 1..];
            let end = rest.iter().position(|&c| c == b'"').unwrap_or(rest.len());
            rest[..end].to_vec()
        } else {
            value[i..]
                .iter()
                .take_while(|&&c| c != b';' && !c.is_ascii_whitespace())
                .copied()
                .collect()
        };
        if !b.is_empty() && b.len() <= 200 {
            return Some(b);
        }
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Is `line` a delimiter for `boundary`? Returns `Some(true)` for the closing one.
fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (closing, rest) = match rest.strip_prefix(b"--") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // RFC 2046: only linear white space may follow; this is what tells "--B1" from "--B10".
    if rest.iter().all(|b| *b == b' ' || *b == b'\t') {
        Some(closing)
    } else {
        None
    }
}

/// Scan `raw` and check it against `limits`.
pub fn scan(raw: &[u8], limits: &MimeLimits) -> Result<Structure, StructureError> {
    let mut lines = Lines { raw, pos: 0 };
    let mut stack: Vec<Frame> = Vec::new();
    let mut out = Structure {
        parts: 1,
        ..Structure::default()
    };

    let (mut kind, header_bytes, header_fields) = read_header_block(&mut lines);
    out.header_bytes = header_bytes;
    out.header_fields = header_fields;
    if header_bytes > limits.max_header_bytes {
        return Err(StructureError::HeaderTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if header_fields > limits.max_header_fields {
        return Err(StructureError::TooManyHeaderFields {
            limit: limits.max_header_fields,
        });
    }

    loop {
        // Open whatever the last header block declared; an enclosed message starts with
        // another header block at once, so keep reading blocks while they nest.
        let opens_message = matches!(kind, BodyKind::Message);
        match kind {
            BodyKind::Multipart(b) => stack.push(Frame::Multipart(b)),
            BodyKind::Message => stack.push(Frame::Message),
            BodyKind::Leaf => {}
        }
        out.depth = out.depth.max(stack.len());
        if stack.len() > limits.max_depth {
            return Err(StructureError::TooDeep {
                limit: limits.max_depth,
            });
        }
        if opens_message {
            kind = read_header_block(&mut lines).0;
            continue;
        }
        // Scan body lines until a delimiter of any open multipart.
        let mut next: Option<BodyKind> = None;
        while let Some(line) = lines.next() {
            if !line.starts_with(b"--") {
                continue;
            }
            let hit = stack.iter().enumerate().rev().find_map(|(i, f)| match f {
                Frame::Multipart(b) => delimiter(line, b).map(|closing| (i, closing)),
                Frame::Message => None,
            });
            let Some((i, closing)) = hit else { continue };
            if closing {
                stack.truncate(i);
                continue;
            }
            stack.truncate(i + 1);
            out.parts += 1;
            if out.parts > limits.max_parts {
                return Err(StructureError::TooManyParts {
                    limit: limits.max_parts,
                });
            }
            next = Some(read_header_block(&mut lines).0);
            break;
        }
        match next {
            Some(k) => kind = k,
            None => return Ok(out),
        }
    }
}

/// Normalise every line ending (bare CR, bare LF, CRLF) to CRLF.
///
/// Outbound mail goes through this before it reaches the relay: with only CRLF line ends,
/// the SMTP client's dot-stuffing sees every line start, so a stored `<LF>.<LF>` can never end
/// the DATA early and smuggle a second transaction (SECURITY.md SM-05).
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn crlf_normalises_every_ending() {
        assert_eq!(super::crlf(b"a\nb\r\nc\rd\n.\n"), b"a\r\nb\r\nc\r\nd\r\n.\r\n".to_vec());
    }

    use super::*;

    fn lim() -> MimeLimits {
        MimeLimits::default()
    }

    #[test]
    fn plain_message() {
        let s = scan(b"From: a@b.c\r\nSubject: x\r\n\r\nhello\r\n", &lim()).expect("ok");
        assert_eq!(s.depth, 0);
        assert_eq!(s.parts, 1);
        assert_eq!(s.header_fields, 2);
    }

    #[test]
    fn multipart_counts_parts_and_depth() {
        let m = b"Content-Type: multipart/mixed; boundary=\"B1\"\r\n\r\npre\r\n--B1\r\nContent-Type: text/plain\r\n\r\na\r\n--B10\r\nnot a delimiter\r\n--B1\r\nContent-Type: multipart/alternative;\r\n boundary=inner\r\n\r\n--inner\r\n\r\nx\r\n--inner--\r\n--B1--\r\n";
        let s = scan(m, &lim()).expect("ok");
        assert_eq!(s.depth, 2);
        assert_eq!(s.parts, 4);
    }

    #[test]
    fn rfc822_chain_is_rejected_without_recursion() {
        let mut m = Vec::new();
        for _ in 0..50_000 {
            m.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        assert_eq!(scan(&m, &lim()), Err(StructureError::TooDeep { limit: 32 }));
    }

    #[test]
    fn deep_multipart_is_rejected() {
        let mut m = Vec::new();
        for i in 0..10_000 {
            m.extend_from_slice(format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes());
        }
        assert_eq!(scan(&m, &lim()), Err(StructureError::TooDeep { limit: 32 }));
    }

    #[test]
    fn too_many_parts() {
        let mut m = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n".to_vec();
        for _ in 0..1000 {
            m.extend_from_slice(b"--a\r\n\r\nx\r\n");
        }
        assert_eq!(scan(&m, &lim()), Err(StructureError::TooManyParts { limit: 500 }));
    }

    #[test]
    fn header_limits() {
        let mut m = Vec::new();
        for _ in 0..2000 {
            m.extend_from_slice(b"X:a\r\n");
        }
        m.extend_from_slice(b"\r\nbody");
        assert_eq!(
            scan(&m, &lim()),
            Err(StructureError::TooManyHeaderFields { limit: 1000 })
        );
        let mut big = b"Subject: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 300 * 1024));
        big.extend_from_slice(b"\r\n\r\nbody");
        assert_eq!(
            scan(&big, &lim()),
            Err(StructureError::HeaderTooLarge { limit: 256 * 1024 })
        );
    }

    #[test]
    fn sibling_rfc822_parts_are_shallow() {
        let mut m = b"Content-Type: multipart/digest; boundary=d\r\n\r\n".to_vec();
        for _ in 0..100 {
            m.extend_from_slice(b"--d\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody\r\n");
        }
        m.extend_from_slice(b"--d--\r\n");
        let s = scan(&m, &lim()).expect("ok");
        assert_eq!(s.depth, 2);
        assert_eq!(s.parts, 101);
    }
}
