//! Errors as responses: 4xx say what the reader can do; 5xx are generic and logged here.
//! Nothing from the request path or from a message is ever echoed in an error.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("not found")]
    NotFound,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("search unavailable: {0}")]
    SearchUnavailable(String),
    #[error("archive not public")]
    Private,
}

impl From<plenary_store::StoreError> for WebError {
    fn from(e: plenary_store::StoreError) -> Self {
        WebError::Internal(e.to_string())
    }
}

impl From<minijinja::Error> for WebError {
    fn from(e: minijinja::Error) -> Self {
        WebError::Internal(format!("template: {e:#}"))
    }
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WebError::SearchUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WebError::Private => StatusCode::FORBIDDEN,
        }
    }

    fn texts(&self) -> (&'static str, String) {
        match self {
            WebError::NotFound => (
                "Not found",
                "There is no list or message at this address. It may never have existed, or it is not public.".into(),
            ),
            WebError::BadRequest(m) => ("Bad request", m.clone()),
            WebError::Internal(_) => (
                "Something went wrong",
                "The server could not show this page. Please try again later.".into(),
            ),
            WebError::SearchUnavailable(_) => (
                "Search unavailable",
                "Search is temporarily unavailable; the archive pages still work.".into(),
            ),
            WebError::Private => (
                "Archive not public",
                "The archive of this list is for its members only; it is not shown on the web.".into(),
            ),
        }
    }
}

/// Minimal page used when the template environment itself fails.
fn fallback_page(title: &str, text: &str) -> String {
    let esc = |s: &str| {
        let mut out = String::new();
        crate::render::escape(s, &mut out);
        out
    };
    format!("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{0}</title><link rel=\"stylesheet\" href=\"/static/style.css\"></head><body><a class=\"skip\" href=\"#main\">Skip to content</a><header><nav aria-label=\"Site\" class=\"top\"><a href=\"/\" class=\"site\">Home</a></nav></header><main id=\"main\" tabindex=\"-1\"><h1>{0}</h1><p>{1}</p><p><a href=\"/\">All lists</a></p></main></body></html>", esc(title), esc(text))
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if matches!(self, WebError::Internal(_) | WebError::SearchUnavailable(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let (title, text) = self.texts();
        (self.status(), Html(fallback_page(title, &text))).into_response()
    }
}

/// JSON form of an error for the API.
pub fn json_error(e: WebError) -> Response {
    if matches!(e, WebError::Internal(_) | WebError::SearchUnavailable(_)) {
        tracing::error!(error = %e, "api request failed");
    }
    let (title, text) = e.texts();
    (
        e.status(),
        axum::Json(serde_json::json!({ "error": title, "detail": text })),
    )
        .into_response()
}
