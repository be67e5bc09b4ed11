//! Message text to HTML, for the message and thread pages.
//!
//! The input is the redacted body text; every byte of it is escaped. The only markup added
//! is ours: links for `http(s)://` URLs (with `rel="nofollow noopener noreferrer ugc"`),
//! and `<details>` around long quotes and the signature so they fold without JavaScript.

use regex::Regex;
use std::fmt::Write;
use std::sync::LazyLock;

/// Quotes of more than this many lines are folded.
const FOLD_QUOTE_LINES: usize = 4;

static URL: LazyLock<Regex> = LazyLock::new(|| {
    // A host name (or bracketed IPv6 address), an optional port, then anything up to a space
    // or a character that cannot be in a URL. `http://;URL=javascript:…` is not a link.
    Regex::new(
        r#"https?://(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?(?:[/?#][^\s<>"'`\x00-\x1f]*)?"#,
    )
    .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Escape a line and turn URLs in it into links.
fn linkify(line: &str, out: &mut String) {
    let mut last = 0;
    for m in URL.find_iter(line) {
        // Trailing punctuation is usually the sentence's, not the URL's.
        let mut url = m.as_str();
        while let Some(c) = url.chars().last() {
            let unbalanced_paren = c == ')' && url.matches('(').count() < url.matches(')').count();
            if ".,;:!?]'\"".contains(c) || unbalanced_paren {
                url = &url[..url.len() - c.len_utf8()];
            } else {
                break;
            }
        }
        if url.len() <= "https://".len() {
            continue;
        }
        escape(&line[last..m.start()], out);
        out.push_str("<a href=\"");
        escape(url, out);
        out.push_str("\" rel=\"nofollow noopener noreferrer ugc\">");
        escape(url, out);
        out.push_str("</a>");
        last = m.start() + url.len();
    }
    escape(&line[last..], out);
}

fn is_quote(line: &str) -> bool {
    line.starts_with('>')
}

/// The words render.rs writes itself, in the reader's language (plain text; escaped here).
pub struct Labels {
    pub quoted_text: String,
    pub lines: String,
    pub signature: String,
}

impl Labels {
    #[cfg(test)]
    pub fn english() -> Labels {
        Labels {
            quoted_text: "Quoted text".into(),
            lines: "lines".into(),
            signature: "Signature".into(),
        }
    }
}

/// Render body text as HTML blocks.
pub fn text_to_html(body: &str, labels: &Labels) -> String {
    let mut out = String::with_capacity(body.len() + body.len() / 4 + 64);
    let lines: Vec<&str> = body.lines().collect();
    // The signature starts at the last "-- " line (RFC 3676 §4.3).
    let sig = lines.iter().rposition(|l| *l == "-- " || *l == "--");
    let text_end = sig.unwrap_or(lines.len());
    let mut i = 0;
    while i < text_end {
        let quoted = is_quote(lines[i]);
        let start = i;
        while i < text_end && is_quote(lines[i]) == quoted {
            i += 1;
        }
        let block = &lines[start..i];
        if quoted {
            let fold = block.len() > FOLD_QUOTE_LINES;
            if fold {
                out.push_str("<details class=\"quote\"><summary>");
                escape(&labels.quoted_text, &mut out);
                let _ = write!(out, " ({} ", block.len());
                escape(&labels.lines, &mut out);
                out.push_str(")</summary>");
            }
            out.push_str("<blockquote>");
            push_lines(block, &mut out);
            out.push_str("</blockquote>");
            if fold {
                out.push_str("</details>");
            }
        } else {
            // Drop blank lines at the edges of text blocks (the blocks give the spacing).
            let trimmed: Vec<&str> = trim_blank(block);
            if !trimmed.is_empty() {
                out.push_str("<div class=\"text\">");
                push_lines(&trimmed, &mut out);
                out.push_str("</div>");
            }
        }
    }
    if let Some(s) = sig {
        let rest = trim_blank(&lines[s + 1..]);
        if !rest.is_empty() {
            out.push_str("<details class=\"sig\"><summary>");
            escape(&labels.signature, &mut out);
            out.push_str("</summary><div class=\"text\">");
            push_lines(&rest, &mut out);
            out.push_str("</div></details>");
        }
    }
    out
}

fn trim_blank<'a>(block: &[&'a str]) -> Vec<&'a str> {
    let a = block.iter().position(|l| !l.trim().is_empty()).unwrap_or(block.len());
    let b = block.iter().rposition(|l| !l.trim().is_empty()).map_or(a, |x| x + 1);
    block[a..b.max(a)].to_vec()
}

fn push_lines(lines: &[&str], out: &mut String) {
    for (n, l) in lines.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        linkify(l, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_and_links_urls() {
        let h = text_to_html(
            "<script>alert(1)</script> see https://example.org/a?b=1&c=\"x\" (and https://ex.org/p_(1)).",
            &Labels::english(),
        );
        assert!(!h.contains("<script"));
        assert!(h.contains("&lt;script&gt;"));
        assert!(h.contains("<a href=\"https://example.org/a?b=1&amp;c=\" rel="));
        assert!(h.contains(">https://ex.org/p_(1)</a>)."), "{h}");
        let h = text_to_html(
            "http://;URL=javascript:alert(1) and http://ex.org:8080/x and http://[::1]/y",
            &Labels::english(),
        );
        assert!(!h.contains("href=\"http://;"), "{h}");
        assert!(
            h.contains("href=\"http://ex.org:8080/x\"") && h.contains("href=\"http://[::1]/y\""),
            "{h}"
        );
        let h = text_to_html("javascript:alert(1) http://\" onmouseover=alert(1)", &Labels::english());
        assert!(!h.contains("href=\"javascript"));
        assert!(!h.contains("\" onmouseover"), "{h}");
    }

    #[test]
    fn folds_long_quotes_and_signatures() {
        let body = "On Monday Ada wrote:\n> one\n> two\n> three\n> four\n> five\nMy answer.\n> short\nMore.\n-- \nAda\nhttps://ada.example/";
        let h = text_to_html(body, &Labels::english());
        assert!(h.contains("<details class=\"quote\"><summary>Quoted text (5 lines)</summary><blockquote>&gt; one"));
        assert!(
            h.contains("<blockquote>&gt; short</blockquote>"),
            "short quotes are not folded: {h}"
        );
        assert!(h.contains("<details class=\"sig\"><summary>Signature</summary>"));
        assert!(h.contains("My answer."));
        assert_eq!(h.matches("<details").count(), 2);
    }
}
