//! Limits checked on a user query before any parser sees it (SECURITY.md ).

use std::fmt;

/// Caps on search requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_terms: usize,
    pub max_page_size: usize,
    pub max_offset: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_bytes: 512,
            max_depth: 8,
            max_terms: 64,
            max_page_size: 100,
            max_offset: 10_000,
        }
    }
}

/// Why a query was refused. The text is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    Empty,
    TooLong {
        limit: usize,
    },
    TooDeep {
        limit: usize,
    },
    TooManyTerms {
        limit: usize,
    },
    OffsetTooLarge {
        limit: usize,
    },
    Unbalanced,
    /// Anything else the user should fix; the text says what.
    Invalid(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Empty => f.write_str("Type one or more words to search for."),
            QueryError::TooLong { limit } => write!(f, "That search is too long (at most {limit} bytes)."),
            QueryError::TooDeep { limit } => {
                write!(f, "That search nests parentheses too deeply (at most {limit} levels).")
            }
            QueryError::TooManyTerms { limit } => write!(f, "That search has too many words (at most {limit})."),
            QueryError::OffsetTooLarge { limit } => write!(
                f,
                "Results past number {limit} are not available; refine the search instead."
            ),
            QueryError::Unbalanced => f.write_str("The parentheses or quotes in that search do not match."),
            QueryError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for QueryError {}

/// Check a raw query against the limits. Runs in time linear in its length.
pub fn check(q: &str, limits: &QueryLimits) -> Result<(), QueryError> {
    if q.trim().is_empty() {
        return Err(QueryError::Empty);
    }
    if q.len() > limits.max_bytes {
        return Err(QueryError::TooLong {
            limit: limits.max_bytes,
        });
    }
    let mut depth = 0usize;
    let mut in_quote = false;
    for c in q.chars() {
        match c {
            '"' => in_quote = !in_quote,
            '(' | '[' | '{' if !in_quote => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(QueryError::TooDeep {
                        limit: limits.max_depth,
                    });
                }
            }
            ')' | ']' | '}' if !in_quote => {
                depth = depth.checked_sub(1).ok_or(QueryError::Unbalanced)?;
            }
            _ => {}
        }
    }
    if depth != 0 || in_quote {
        return Err(QueryError::Unbalanced);
    }
    if q.split_whitespace().count() > limits.max_terms {
        return Err(QueryError::TooManyTerms {
            limit: limits.max_terms,
        });
    }
    Ok(())
}

/// A user query taken apart: the text part in tantivy's syntax, and the filters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// For tantivy's query parser; empty when the query is filters only.
    pub text: String,
    /// `list:` values, as typed.
    pub lists: Vec<String>,
    /// Sent at or after (Unix seconds).
    pub after: Option<i64>,
    /// Sent before (Unix seconds).
    pub before: Option<i64>,
}

/// Which index fields a prefix searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Subject,
    Body,
    From,
    To,
    Attachment,
}

fn prefix(p: &str) -> Option<Result<Target, &'static str>> {
    Some(Ok(match p.to_ascii_lowercase().as_str() {
        "subject" | "s" => Target::Subject,
        "body" | "b" => Target::Body,
        "from" | "f" => Target::From,
        "to" | "t" | "cc" => Target::To,
        "attachment" | "a" => Target::Attachment,
        "list" => return Some(Err("list")),
        "date" | "d" => return Some(Err("date")),
        "after" | "since" => return Some(Err("after")),
        "before" | "until" => return Some(Err("before")),
        _ => return None,
    }))
}

/// Start of the period a date names, and the start of the next one (`YYYY`, `YYYY-MM`,
/// `YYYY-MM-DD`, UTC).
pub fn period(s: &str) -> Option<(i64, i64)> {
    let parts: Vec<&str> = s.split('-').collect();
    let num = |i: usize, len: usize| -> Option<u32> {
        let p = parts.get(i)?;
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit())).then(|| p.parse().ok())?
    };
    let y = num(0, 4)? as i32;
    let day = |y: i32, m: u32, d: u32| {
        chrono::NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp())
    };
    match parts.len() {
        1 => Some((day(y, 1, 1)?, day(y + 1, 1, 1)?)),
        2 => {
            let m = num(1, 2)?;
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some((day(y, m, 1)?, day(ny, nm, 1)?))
        }
        3 => {
            let (m, d) = (num(1, 2)?, num(2, 2)?);
            let start = day(y, m, d)?;
            Some((start, start + 86_400))
        }
        _ => None,
    }
}

fn bad_date(v: &str) -> QueryError {
    QueryError::Invalid(format!(
        "“{v}” is not a date this search understands: write 2024, 2024-03 or 2024-03-15, and ranges as date:2024-01..2024-06."
    ))
}

/// Split a query into tokens: parentheses, and runs of other characters where a quoted part
/// (which may contain spaces) belongs to the token it is in.
fn tokens(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' | ')' if !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A value as a tantivy phrase: quotes and backslashes dropped (a one-word phrase is a term).
fn phrase(v: &str) -> String {
    let clean: String = v.chars().filter(|c| *c != '"' && *c != '\\').collect();
    format!("\"{}\"", clean.trim())
}

/// Rewrite a user query (public-inbox-like syntax, see the search help page) for tantivy.
/// `fields(target)` names the index fields a prefix searches.
pub fn translate(q: &str, limits: &QueryLimits, fields: impl Fn(Target) -> Vec<String>) -> Result<Parsed, QueryError> {
    check(q, limits)?;
    let mut out = Parsed::default();
    let mut parts: Vec<String> = Vec::new();
    for tok in tokens(q) {
        if tok == "(" || tok == ")" || tok == "AND" || tok == "OR" || tok == "NOT" {
            parts.push(tok);
            continue;
        }
        let (sign, body) = match tok.strip_prefix('-').or_else(|| tok.strip_prefix('+')) {
            Some(rest) if !rest.is_empty() => (&tok[..1], rest),
            _ => ("", tok.as_str()),
        };
        let split = body.split_once(':').filter(|(p, _)| !p.is_empty() && !p.contains('"'));
        match split.and_then(|(p, v)| prefix(p).map(|t| (t, v))) {
            Some((Ok(target), value)) => {
                if value.trim_matches('"').trim().is_empty() {
                    return Err(QueryError::Invalid(format!(
                        "“{tok}” needs a word after the colon, like {}hello.",
                        &body[..body.len() - value.len()]
                    )));
                }
                let group: Vec<String> = fields(target)
                    .iter()
                    .map(|f| format!("{f}:{}", phrase(value)))
                    .collect();
                parts.push(format!("{sign}({})", group.join(" OR ")));
            }
            Some((Err(filter), value)) => {
                if !sign.is_empty() || parts.last().is_some_and(|p| p == "NOT") {
                    return Err(QueryError::Invalid(format!(
                        "{filter}: cannot be negated; it narrows the whole search."
                    )));
                }
                let value = value.trim_matches('"');
                match filter {
                    "list" => out.lists.push(value.to_ascii_lowercase()),
                    "after" => out.after = Some(period(value).ok_or_else(|| bad_date(value))?.0),
                    "before" => out.before = Some(period(value).ok_or_else(|| bad_date(value))?.0),
                    _ => {
                        let (a, b) = match value.split_once("..") {
                            Some((a, b)) => (a, b),
                            None => (value, value),
                        };
                        if !a.is_empty() {
                            out.after = Some(period(a).ok_or_else(|| bad_date(a))?.0);
                        }
                        if !b.is_empty() {
                            out.before = Some(period(b).ok_or_else(|| bad_date(b))?.1);
                        }
                        if a.is_empty() && b.is_empty() {
                            return Err(bad_date(value));
                        }
                    }
                }
                // A filter inside an OR group would change its meaning; drop a dangling operator.
                if parts.last().is_some_and(|p| p == "AND" || p == "OR") {
                    parts.pop();
                }
            }
            None => parts.push(format!("{sign}{}", phrase(body))),
        }
    }
    // Operators left at the edges (after filters were removed) are dropped.
    while parts.first().is_some_and(|p| p == "AND" || p == "OR") {
        parts.remove(0);
    }
    while parts.last().is_some_and(|p| p == "AND" || p == "OR" || p == "NOT") {
        parts.pop();
    }
    parts.retain(|p| p != "\"\"" && p != "-\"\"" && p != "+\"\"");
    out.text = parts.join(" ");
    if out.text.is_empty() && out.lists.is_empty() && out.after.is_none() && out.before.is_none() {
        return Err(QueryError::Empty);
    }
    if let (Some(a), Some(b)) = (out.after, out.before) {
        if a >= b {
            return Err(QueryError::Invalid(
                "That date range is empty: the start is after the end.".into(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(t: Target) -> Vec<String> {
        match t {
            Target::Subject => vec!["subject_english".into(), "subject_french".into()],
            Target::Body => vec!["body_english".into()],
            Target::From => vec!["from".into()],
            Target::To => vec!["to".into()],
            Target::Attachment => vec!["attachment".into()],
        }
    }

    #[test]
    fn translates_the_public_inbox_like_syntax() {
        let l = QueryLimits::default();
        let p = translate("s:charter from:ada \"open data\" -draft", &l, f).expect("ok");
        assert_eq!(
            p.text,
            "(subject_english:\"charter\" OR subject_french:\"charter\") (from:\"ada\") \"open data\" -\"draft\""
        );
        let p = translate(
            "(agenda OR minutes) AND NOT b:\"dial in\" list:Gov@X.org date:2024-01..2024-06",
            &l,
            f,
        )
        .expect("ok");
        assert_eq!(
            p.text,
            "( \"agenda\" OR \"minutes\" ) AND NOT (body_english:\"dial in\")"
        );
        assert_eq!(p.lists, vec!["gov@x.org"]);
        assert_eq!(p.after, Some(1_704_067_200)); // 2024-01-01
        assert_eq!(p.before, Some(1_719_792_000)); // 2024-07-01
        let p = translate("after:2023-06-01 before:2024 budget", &l, f).expect("ok");
        assert_eq!((p.after, p.before), (Some(1_685_577_600), Some(1_704_067_200)));
        assert_eq!(p.text, "\"budget\"");
        let p = translate("date:2024-02", &l, f).expect("filters only");
        assert_eq!(p.text, "");
        assert_eq!((p.after, p.before), (Some(1_706_745_600), Some(1_709_251_200)));
        // Characters tantivy treats as syntax are searched as text.
        let p = translate("c++ foo:bar http://x.org/a?b re: a^2~", &l, f).expect("ok");
        assert_eq!(p.text, "\"c++\" \"foo:bar\" \"http://x.org/a?b\" \"re:\" \"a^2~\"");
    }

    #[test]
    fn friendly_errors() {
        let l = QueryLimits::default();
        for bad in [
            "date:2024-13",
            "after:yesterday",
            "date:..",
            "-list:a@b.org",
            "s:",
            "date:2025..2024",
        ] {
            match translate(bad, &l, f) {
                Err(QueryError::Invalid(m)) => assert!(!m.is_empty()),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn caps_before_parsing() {
        let l = QueryLimits::default();
        assert_eq!(check("  ", &l), Err(QueryError::Empty));
        let deep = format!("{}a{}", "(".repeat(5000), ")".repeat(5000));
        assert_eq!(check(&deep, &l), Err(QueryError::TooLong { limit: 512 }));
        let nine = format!("{}a{}", "(".repeat(9), ")".repeat(9));
        assert_eq!(check(&nine, &l), Err(QueryError::TooDeep { limit: 8 }));
        assert_eq!(check("(a", &l), Err(QueryError::Unbalanced));
        assert_eq!(check("a)", &l), Err(QueryError::Unbalanced));
        assert_eq!(check("\"(((((((((x\"", &l), Ok(()));
        let many = "a ".repeat(100);
        assert_eq!(check(&many, &l), Err(QueryError::TooManyTerms { limit: 64 }));
        assert_eq!(check("governance AND (standards OR \"open data\")", &l), Ok(()));
    }
}
