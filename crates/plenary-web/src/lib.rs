//! The public archive: HTML pages, the JSON read API and search, over axum.
//!
//! [`router`] is a function from state to a `Router`, so tests drive it with `oneshot` and the
//! binary only binds and serves. Handlers read the store but render only
//! [`plenary_redact::PublicMessage`] and [`plenary_redact::PublicSummary`] values, which
//! only the redaction crate can build. Every response carries a strict
//! Content-Security-Policy; templates are autoescaped, and message bodies are shown as text.

mod api;
mod error;
mod feeds;
pub mod i18n;
mod mbox;
mod membership;
mod pages;
mod render;
mod search;
mod templates;
mod views;
use plenary_core::urls;

pub use error::WebError;
pub use templates::Templates;
pub use views::ThreadCache;

use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use plenary_index::SearchIndex;
use plenary_store::Store;
use std::path::PathBuf;
use std::sync::Arc;

/// Settings of the web layer, resolved from the config file.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Public base URL, for permalinks (no trailing slash).
    pub base_url: String,
    pub site_name: String,
    /// A directory whose files override the built-in templates and CSS.
    pub templates_dir: Option<PathBuf>,
    /// Results per search page.
    pub page_size: usize,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            base_url: "http://127.0.0.1:8080".into(),
            site_name: "Plenary archives".into(),
            templates_dir: None,
            page_size: 20,
        }
    }
}

/// Shared state of the web layer.
pub struct AppState {
    pub engine: plenary_list::Engine,
    pub store: Store,
    pub search: SearchIndex,
    pub templates: Templates,
    pub settings: WebSettings,
    /// Per-list JWZ threads, derived from the store.
    pub threads: ThreadCache,
}

const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Build the router.
pub fn router(state: Arc<AppState>) -> Router {
    use axum::middleware::map_response;
    Router::new()
        .route("/", get(pages::index))
        .route("/healthz", get(pages::healthz))
        .route("/robots.txt", get(pages::robots))
        .route("/static/style.css", get(pages::style))
        .route("/lang", get(pages::set_lang))
        .route("/help/search", get(pages::search_help))
        .route("/search", get(search::search))
        .route("/search/atom.xml", get(search::search_feed))
        .route("/lists/{list}", get(pages::list_redirect))
        .route("/lists/{list}/", get(pages::list))
        .route("/lists/{list}/atom.xml", get(feeds::list_feed))
        .route("/lists/{list}/mbox", get(mbox::list_mbox))
        .route("/lists/{list}/authors/", get(pages::authors))
        .route("/lists/{list}/authors/{key}/", get(pages::author))
        .route("/lists/{list}/subscribe", post(membership::subscribe))
        .route("/lists/{list}/unsubscribe", post(membership::unsubscribe))
        .route("/lists/{list}/access", post(membership::access_request))
        .route(
            "/access/{token}",
            get(membership::confirm_page).post(membership::access_post),
        )
        .route(
            "/confirm/{token}",
            get(membership::confirm_page).post(membership::confirm_post),
        )
        .route(
            "/u/{token}",
            get(membership::one_click_page).post(membership::one_click_post),
        )
        .route("/lists/{list}/{year}/{month}/", get(pages::month))
        .route("/lists/{list}/{year}/{month}/mbox", get(mbox::month_mbox))
        .route("/lists/{list}/m/{mid}/", get(pages::message))
        .route("/lists/{list}/m/{mid}/raw", get(pages::raw))
        .route("/lists/{list}/m/{mid}/a/{index}/{name}", get(pages::attachment))
        .route("/lists/{list}/t/{mid}/", get(pages::thread))
        .route("/lists/{list}/t/{mid}/atom.xml", get(feeds::thread_feed))
        .route("/lists/{list}/t/{mid}/mbox", get(mbox::thread_mbox))
        .route("/api/v1/lists", get(api::api_lists))
        .route("/api/v1/lists/{list}/messages", get(api::api_messages))
        .route("/api/v1/lists/{list}/threads", get(api::api_threads))
        .route("/api/v1/lists/{list}/messages/{mid}", get(api::api_message))
        .route("/api/v1/search", get(search::api_search))
        .fallback(pages::not_found)
        .layer(map_response(|mut res: axum::response::Response| async move {
            let h = res.headers_mut();
            // Attachments set their own, stricter policy.
            if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
                h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            }
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            res
        }))
        .with_state(state)
}

#[cfg(test)]
mod tests;
