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
    TooLong { limit: usize },
    TooDeep { limit: usize },
    TooManyTerms { limit: usize },
    OffsetTooLarge { limit: usize },
    Unbalanced,
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

#[cfg(test)]
mod tests {
    use super::*;

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
