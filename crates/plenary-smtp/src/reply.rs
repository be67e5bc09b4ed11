//! SMTP replies as values, with enhanced status codes (RFC 3463).

use std::fmt::Write;

/// One reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        Reply { code, lines }
    }

    /// Wire form, CRLF-terminated; CR and LF inside texts are replaced so a reply can never
    /// be split by data we echo.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = String::new();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let clean: String = text
                .chars()
                .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
                .collect();
            let _ = write!(out, "{}{}{}\r\n", self.code, sep, clean);
        }
        out.into_bytes()
    }

    pub fn is_error(&self) -> bool {
        self.code >= 400
    }
}

pub fn ok(text: &str) -> Reply {
    Reply::new(250, format!("2.0.0 {text}"))
}
pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, format!("5.5.1 {text}"))
}
pub fn syntax(text: &str) -> Reply {
    Reply::new(501, format!("5.5.4 {text}"))
}
pub fn unknown_command() -> Reply {
    Reply::new(500, "5.5.1 Command unrecognized")
}
pub fn not_implemented() -> Reply {
    Reply::new(502, "5.5.1 Command not implemented")
}
pub fn too_many_errors() -> Reply {
    Reply::new(421, "4.7.0 Too many errors, closing connection")
}
pub fn shutting_down(host: &str) -> Reply {
    Reply::new(421, format!("4.3.2 {host} Service shutting down, try again later"))
}
pub fn timeout() -> Reply {
    Reply::new(421, "4.4.2 Timeout, closing connection")
}
pub fn session_too_long() -> Reply {
    Reply::new(421, "4.4.2 Session too long, closing connection")
}
pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2 Line too long")
}
pub fn bare_newline() -> Reply {
    Reply::new(500, "5.5.2 Bare CR or LF received; lines must end with CRLF")
}
pub fn storage_full() -> Reply {
    Reply::new(452, "4.3.1 Insufficient system storage, try again later")
}
pub fn local_error() -> Reply {
    Reply::new(451, "4.3.0 Local error in processing, try again later")
}
