use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use plenary_core::meta::Fallback;
use plenary_core::{ListAddress, MessageMeta, Origin};
use plenary_index::{Indexer, IndexerSettings, QueryLimits};
use plenary_store::{IngestRequest, StoreSettings};
use tower::ServiceExt;

const ROOT: &str = "From: Ada Lovelace <ada@example.org>\r\nTo: gov@lists.example.org\r\nSubject: Charter <script>alert(1)</script>\r\nMessage-ID: <root/1?x#y@example.org>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\nReceived: from secret.example ([192.0.2.7])\r\n\r\nDraft charter. Contact ada@example.org.\r\n<img src=x onerror=alert(1)>\r\n";
const REPLY: &str = "From: Bob <bob@example.net>\r\nSubject: Re: Charter\r\nMessage-ID: <reply@example.net>\r\nIn-Reply-To: <root/1?x#y@example.org>\r\nDate: Wed, 2 Jul 2025 10:00:00 +0000\r\n\r\nI agree with the zebra clause.\r\n";

async fn app() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = StoreSettings::new(dir.path());
    s.min_free_bytes = 0;
    let store = Store::open(s).expect("store");
    let list = store
        .create_list(
            &ListAddress::parse("gov@lists.example.org").expect("addr"),
            "Governance",
            "A <b>test</b> list",
        )
        .expect("list");
    for raw in [ROOT, REPLY] {
        let meta = MessageMeta::extract(
            raw.as_bytes(),
            Fallback {
                envelope_date: None,
                received_at: 1_800_000_000,
            },
        );
        store
            .ingest(IngestRequest::post(
                list.id,
                raw.as_bytes().to_vec(),
                meta,
                Origin::Smtp,
                1_800_000_000,
            ))
            .await
            .expect("ingest");
    }
    let (search, _) = SearchIndex::open(&dir.path().join("index"), QueryLimits::default()).expect("index");
    let mut ix = Indexer::new(store.clone(), search.clone(), IndexerSettings::default()).expect("indexer");
    ix.step().expect("index");
    search.reload().expect("reload");
    let state = Arc::new(AppState {
        engine: plenary_list::Engine::new(store.clone(), Default::default()),
        store,
        search,
        templates: Templates::load(None).expect("templates"),
        settings: WebSettings::default(),
    });
    (dir, router(state))
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn pages_render_escaped_and_redacted() {
    let (_dir, app) = app().await;
    let mid = "root%2F1%3Fx%23y@example.org";
    let pages = [
        "/".to_string(),
        "/lists/gov@lists.example.org/".to_string(),
        "/lists/gov@lists.example.org/2025/07/".to_string(),
        format!("/lists/gov@lists.example.org/m/{mid}/"),
        format!("/lists/gov@lists.example.org/t/{mid}/"),
        format!("/lists/gov@lists.example.org/m/{mid}/raw"),
        "/search?q=zebra".to_string(),
        "/search?q=charter&list=gov@lists.example.org".to_string(),
        "/api/v1/lists".to_string(),
        "/api/v1/lists/gov@lists.example.org/messages".to_string(),
        format!("/api/v1/lists/gov@lists.example.org/messages/{mid}"),
        "/api/v1/search?q=draft".to_string(),
    ];
    for uri in &pages {
        let (status, headers, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert!(headers.get("content-security-policy").is_some(), "{uri} lacks CSP");
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
        for secret in ["ada@example.org", "bob@example.net", "192.0.2.7", "secret.example"] {
            assert!(!body.contains(secret), "{uri} leaks {secret}");
        }
        let ctype = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if ctype.starts_with("text/html") {
            assert!(
                !body.contains("<script>") && !body.contains("<img src=x"),
                "{uri} renders markup from a message"
            );
        } else {
            assert!(
                ctype.starts_with("text/plain") || ctype.starts_with("application/json"),
                "{uri}: {ctype}"
            );
        }
    }
    let (_, _, msg) = get(&app, &format!("/lists/gov@lists.example.org/m/{mid}/")).await;
    assert!(msg.contains("&lt;script&gt;"), "subject must be escaped");
    assert!(msg.contains("Draft charter. Contact a…@e…"));
    assert!(msg.contains("reply@example.net"), "replies are linked");
    let (_, _, thread) = get(&app, &format!("/lists/gov@lists.example.org/t/{mid}/")).await;
    assert!(thread.contains("zebra clause") && thread.contains("Draft charter"));
    let (_, _, search) = get(&app, "/search?q=zebra").await;
    assert!(search.contains("<mark>zebra</mark>"));
    let (_, _, list) = get(&app, "/lists/gov@lists.example.org/").await;
    assert!(list.contains("2 messages"), "thread count: {list}");
    assert!(list.contains("A &lt;b&gt;test&lt;&#x2f;b&gt; list"), "{list}");
}

#[tokio::test]
async fn unknown_things_are_404_without_echo() {
    let (_dir, app) = app().await;
    for uri in [
        "/lists/nope@x.org/",
        "/lists/gov@lists.example.org/m/nope@x/",
        "/lists/gov@lists.example.org/t/nope@x/",
        "/lists/gov@lists.example.org/2025/13/",
        "/a/%3Cscript%3Ealert(1)%3C%2Fscript%3E/",
        "/lists/Your%20account%20is%20suspended/",
    ] {
        let (status, _, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            !body.contains("script") && !body.contains("suspended"),
            "{uri} echoes input"
        );
    }
    let (status, _, body) = get(&app, "/api/v1/lists/gov@lists.example.org/messages/nope@x").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.starts_with('{'));
}

#[tokio::test]
async fn hostile_queries_get_a_friendly_400() {
    let (_dir, app) = app().await;
    let deep = format!("/search?q={}a{}", "(".repeat(5000), ")".repeat(5000));
    let nested = format!("/search?q={}a{}", "%28".repeat(20), "%29".repeat(20));
    for uri in [
        deep.as_str(),
        nested.as_str(),
        "/search?q=a&page=0",
        "/search?q=a&page=999999",
        "/search?q=a&list=nosuch@x.org",
    ] {
        let (status, _, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(body.contains("role=\"alert\""));
    }
    let (status, _, _) = get(&app, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}
