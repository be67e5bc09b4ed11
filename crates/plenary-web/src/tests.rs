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
const REPLY: &str = "From: Bob <bob@example.net>\r\nSubject: Re: Charter\r\nMessage-ID: <reply@example.net>\r\nIn-Reply-To: <root/1?x#y@example.org>\r\nDate: Wed, 2 Jul 2025 10:00:00 +0000\r\n\r\nOn Tuesday Ada wrote:\r\n> Draft charter.\r\n> line two\r\n> line three\r\n> line four\r\n> line five\r\nI agree with the zebra clause, see https://example.org/zebra.\r\nFrom the desk of Bob\r\n-- \r\nBob, Zebra WG\r\n";
/// A later reply with attachments (a PDF, a PNG and an SVG).
const FILES: &str = "From: Chloé <chloe@example.fr>\r\nSubject: Re: Charter\r\nMessage-ID: <files@example.fr>\r\nIn-Reply-To: <reply@example.net>\r\nReferences: <root/1?x#y@example.org> <reply@example.net>\r\nDate: Thu, 3 Jul 2025 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFiles attached.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"../../report \\\"final\\\".pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"chart.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: inline; filename=\"x.svg\"\r\n\r\n<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>\r\n--b--\r\n";
/// HTML-only mail, a month later.
const HTML: &str = "From: Dee <dee@example.org>\r\nSubject: Newsletter\r\nMessage-ID: <html@example.org>\r\nDate: Mon, 4 Aug 2025 10:00:00 +0000\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><head><style>body{background:url(https://tracker.example/bg)}</style></head><body><p onclick=\"alert(1)\">Hello <b>all</b>, <a href=\"javascript:alert(2)\">click</a> <img src=\"https://tracker.example/pixel.gif\"> write dee@example.org</p><script>alert(3)</script></body></html>\r\n";

async fn app() -> (tempfile::TempDir, Router) {
    let (dir, router, _) = app_with_store().await;
    (dir, router)
}

async fn app_with_store() -> (tempfile::TempDir, Router, Store) {
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
    for raw in [ROOT, REPLY, FILES, HTML] {
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
        threads: ThreadCache::new(store.clone()).expect("threads"),
        store: store.clone(),
        search,
        templates: Templates::load(None).expect("templates"),
        settings: WebSettings::default(),
    });
    (dir, router(state), store)
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
        // Strict: nothing allowed by default, no scripts at all, no inline anything.
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{uri} lacks CSP"));
        for must in [
            "default-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(must), "{uri}: CSP {csp:?} lacks {must}");
        }
        for never in ["unsafe-inline", "unsafe-eval", "script-src", "*", "data:", "http:"] {
            assert!(!csp.contains(never), "{uri}: CSP {csp:?} allows {never}");
        }
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
    let (_, _, html) = get(&app, "/lists/gov@lists.example.org/m/html@example.org/").await;
    assert!(
        html.contains("Hello <b>all</b>"),
        "HTML-only mail is shown as sanitised HTML: {html}"
    );
    for bad in [
        "onclick",
        "javascript:",
        "tracker.example",
        "<script>alert(3)",
        "<style",
        "dee@example.org",
    ] {
        assert!(!html.contains(bad), "{bad} in {html}");
    }
    let (_, _, search) = get(&app, "/search?q=zebra").await;
    assert!(search.contains("<mark>zebra</mark>"));
    let (_, _, list) = get(&app, "/lists/gov@lists.example.org/").await;
    assert!(
        list.contains("data-label=\"Replies\">2<") && list.contains("data-label=\"Participants\">3<"),
        "thread row: {list}"
    );
    assert!(list.contains("A &lt;b&gt;test&lt;/b&gt; list"), "{list}");
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

async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::get(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = res.status();
    let h = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, h, body)
}

const ROOT_ID: &str = "root%2F1%3Fx%23y@example.org";

#[tokio::test]
async fn views_and_navigation() {
    let (_dir, app) = app().await;
    let base = "/lists/gov@lists.example.org";
    // Threads: the charter thread (3 messages) and the newsletter.
    let (_, _, list) = get(&app, &format!("{base}/")).await;
    assert!(
        list.contains("Newsletter") && list.contains("data-label=\"Replies\">2<"),
        "{list}"
    );
    assert!(list.find("Newsletter") < list.find("Charter"), "newest activity first");
    // By month, as threads and by date.
    let (_, _, july) = get(&app, &format!("{base}/2025/07/")).await;
    assert!(july.contains("Charter") && !july.contains("Newsletter"));
    assert!(july.contains("rel=\"next\""), "link to August: {july}");
    let (s, _, by_date) = get(&app, &format!("{base}/2025/07/?by=date")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(by_date.matches("thread</a></span></li>").count(), 3, "{by_date}");
    assert_eq!(
        get(&app, &format!("{base}/2025/07/?by=size")).await.0,
        StatusCode::BAD_REQUEST
    );
    // Authors.
    let (_, _, authors) = get(&app, &format!("{base}/authors/")).await;
    for who in ["Ada Lovelace", "Bob", "Chloé", "Dee"] {
        assert!(authors.contains(who), "{who} in {authors}");
    }
    let href = authors
        .split("href=\"")
        .find(|h| h.contains("authors/") && h.len() > 40)
        .and_then(|h| h.split('"').next())
        .map(|h| h.replace("&#x2f;", "/"))
        .expect("an author link");
    let (s, _, author) = get(&app, &href).await;
    assert_eq!(s, StatusCode::OK, "{href}");
    assert!(author.contains("1 message"), "{author}");
    assert_eq!(
        get(&app, &format!("{base}/authors/00000000000000zz/")).await.0,
        StatusCode::NOT_FOUND
    );
    // Thread: tree and flat views, contents with jumps, folded quote and signature.
    let (_, _, tree) = get(&app, &format!("{base}/t/{ROOT_ID}/")).await;
    assert!(
        tree.contains("class=\"d2"),
        "the third message is two levels deep: {tree}"
    );
    assert!(tree.contains("href=\"#m3\""), "contents jump to each message");
    assert!(tree.contains("<details class=\"quote\"><summary>Quoted text (5 lines)</summary>"));
    assert!(tree.contains("<details class=\"sig\"><summary>Signature</summary>"));
    assert!(tree.contains("<a href=\"https://example.org/zebra\" rel=\"nofollow noopener noreferrer ugc\">"));
    let (_, _, flat) = get(&app, &format!("{base}/t/{ROOT_ID}/?view=flat")).await;
    assert!(
        flat.contains("in reply to #2"),
        "flat view says what each message answers: {flat}"
    );
    assert_eq!(
        get(&app, &format!("{base}/t/{ROOT_ID}/?page=2")).await.0,
        StatusCode::NOT_FOUND
    );
    // Message: neighbours in the thread and by date, reply instructions, permalink.
    let (_, _, m) = get(&app, &format!("{base}/m/reply@example.net/")).await;
    assert!(m.contains("Previous in thread") && m.contains("Next in thread"));
    assert!(m.contains("Previous by date") && m.contains("Next by date"));
    assert!(m.contains("message 2 of 3"));
    assert!(
        m.contains("mailto:gov@lists.example.org?In-Reply-To=%3Creply@example.net%3E&amp;subject=Re:%20Charter"),
        "{m}"
    );
    assert!(m
        .replace("&#x2f;", "/")
        .contains("value=\"http://127.0.0.1:8080/lists/gov@lists.example.org/m/reply@example.net/\""));
    // The "From " line in the body is text, not a header.
    assert!(m.contains("From the desk of Bob"));
}

#[tokio::test]
async fn attachments_download_safely() {
    let (_dir, app) = app().await;
    let (_, _, m) = get(&app, "/lists/gov@lists.example.org/m/files@example.fr/").await;
    assert_eq!(m.matches("<img src=").count(), 1, "only the PNG is shown inline: {m}");
    assert!(!m.contains("onload"), "the SVG is never inlined");
    let base = "/lists/gov@lists.example.org/m/files@example.fr/a";
    let (s, h, body) = get_with(&app, &format!("{base}/0/x"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, b"%PDF-1.4\n");
    assert_eq!(h["content-type"], "application/octet-stream");
    let cd = h["content-disposition"].to_str().expect("ascii");
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(!cd.contains("../") && !cd.contains("\\\""), "{cd}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h["content-security-policy"].to_str().unwrap_or("").contains("sandbox"));
    let (_, h, _) = get_with(&app, &format!("{base}/1/chart.png"), &[]).await;
    assert_eq!(h["content-type"], "image/png");
    assert!(h["content-disposition"]
        .to_str()
        .unwrap_or("")
        .starts_with("attachment"));
    let (_, h, body) = get_with(&app, &format!("{base}/2/x.svg"), &[]).await;
    assert_eq!(
        h["content-type"], "application/octet-stream",
        "SVG is served as opaque bytes"
    );
    assert!(String::from_utf8_lossy(&body).contains("<svg"));
    assert_eq!(
        get_with(&app, &format!("{base}/9/x"), &[]).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get_with(&app, &format!("{base}/-1/x"), &[]).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn feeds_and_mbox_downloads() {
    let (_dir, app) = app().await;
    let base = "/lists/gov@lists.example.org";
    for uri in [
        format!("{base}/atom.xml"),
        format!("{base}/t/{ROOT_ID}/atom.xml"),
        "/search/atom.xml?q=charter".to_string(),
    ] {
        let (s, h, body) = get_with(&app, &uri, &[]).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(h["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("application/atom+xml"));
        let body = String::from_utf8(body).expect("utf8");
        assert!(body.starts_with("<?xml") && body.contains("<feed xmlns=\"http://www.w3.org/2005/Atom\""));
        assert!(!body.contains("ada@example.org") && !body.contains("<script>"), "{uri}");
        assert!(body.contains("<entry>"), "{uri}");
    }
    let (s, h, body) = get_with(&app, &format!("{base}/mbox"), &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["content-type"], "application/mbox");
    let text = String::from_utf8(body).expect("utf8");
    assert_eq!(text.matches("From mboxrd@z ").count(), 4, "{text}");
    assert!(text.contains("\n>From the desk of Bob\n"), "mboxrd quoting");
    assert!(
        !text.contains("ada@example.org") && !text.contains("192.0.2.7"),
        "public form only"
    );
    let (_, _, t) = get_with(&app, &format!("{base}/t/{ROOT_ID}/mbox"), &[]).await;
    assert_eq!(String::from_utf8_lossy(&t).matches("From mboxrd@z ").count(), 3);
    let (_, _, m) = get_with(&app, &format!("{base}/2025/08/mbox"), &[]).await;
    assert_eq!(String::from_utf8_lossy(&m).matches("From mboxrd@z ").count(), 1);
}

#[tokio::test]
async fn crawl_controls_noindex_and_private() {
    let (_dir, app, store) = app_with_store().await;
    let base = "/lists/gov@lists.example.org";
    let (_, h, body) = get(&app, &format!("{base}/")).await;
    assert!(h.get("x-robots-tag").is_none() && !body.contains("noindex"));
    let mut settings = store
        .list("gov@lists.example.org")
        .expect("read")
        .expect("list")
        .settings;
    settings.set("archive", "noindex").expect("set");
    store
        .set_list_settings("gov@lists.example.org", settings.clone())
        .expect("save");
    for uri in [
        format!("{base}/"),
        format!("{base}/m/reply@example.net/"),
        format!("{base}/t/{ROOT_ID}/"),
    ] {
        let (s, h, body) = get(&app, &uri).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["x-robots-tag"], "noindex, nofollow", "{uri}");
        assert!(body.contains("<meta name=\"robots\" content=\"noindex, nofollow\">"));
    }
    let (_, _, robots) = get(&app, "/robots.txt").await;
    assert!(robots.contains("Disallow: /lists/gov@lists.example.org/"), "{robots}");
    assert!(robots.contains("Disallow: /search"));
    settings.set("archive", "private").expect("set");
    store
        .set_list_settings("gov@lists.example.org", settings)
        .expect("save");
    for uri in [
        format!("{base}/"),
        format!("{base}/m/reply@example.net/"),
        format!("{base}/m/reply@example.net/raw"),
        format!("{base}/t/{ROOT_ID}/"),
        format!("{base}/2025/07/"),
        format!("{base}/authors/"),
        format!("{base}/atom.xml"),
        format!("{base}/mbox"),
        format!("{base}/api/v1/lists/gov@lists.example.org/messages"),
    ] {
        let (s, _, body) = get(&app, &uri).await;
        assert!(s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND, "{uri}: {s}");
        assert!(!body.contains("zebra"), "{uri}");
    }
    let (_, _, search) = get(&app, "/search?q=zebra").await;
    assert!(search.contains("0 results"), "private lists are not searched: {search}");
    let (_, _, feed) = get(&app, "/search/atom.xml?q=zebra").await;
    assert!(!feed.contains("<entry>"));
    let (_, _, index) = get(&app, "/").await;
    assert!(index.contains("for members only"));
}

#[tokio::test]
async fn interface_in_french() {
    let (_dir, app) = app().await;
    let (_, h, body) = get_with(
        &app,
        "/lists/gov@lists.example.org/",
        &[("accept-language", "fr-FR,fr;q=0.9,en;q=0.5")],
    )
    .await;
    let body = String::from_utf8(body).expect("utf8");
    assert!(body.contains("<html lang=\"fr\">"));
    assert!(body.contains("Fils récents") && body.contains("juillet 2025"), "{body}");
    assert_eq!(h["content-language"], "fr");
    // The reader's choice wins over the browser's.
    let (s, h, _) = get_with(&app, "/lang?to=fr&back=/lists/gov@lists.example.org/", &[]).await;
    assert!(s.is_redirection());
    assert_eq!(h["location"], "/lists/gov@lists.example.org/");
    assert!(h["set-cookie"].to_str().unwrap_or("").starts_with("plenary_lang=fr;"));
    let (_, _, body) = get_with(&app, "/", &[("cookie", "plenary_lang=fr"), ("accept-language", "en")]).await;
    assert!(String::from_utf8_lossy(&body).contains("Listes"));
    // Never an open redirect.
    for back in ["//evil.example/", "https://evil.example/", "/\\evil.example"] {
        let (_, h, _) = get_with(&app, &format!("/lang?to=fr&back={}", urls::query_value(back)), &[]).await;
        assert_eq!(h["location"], "/", "{back}");
    }
    // So are the result pages of the membership forms and links.
    let (s, _, body) = get_with(
        &app,
        "/confirm/aaaaaaaaaaaaaaaaaaaaaaaaaa",
        &[("accept-language", "fr")],
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("Lien non valable") && body.contains("<html lang=\"fr\">"),
        "{body}"
    );
    // The thread page's folding labels are translated too.
    let (_, _, t) = get_with(
        &app,
        &format!("/lists/gov@lists.example.org/t/{ROOT_ID}/"),
        &[("accept-language", "fr")],
    )
    .await;
    let t = String::from_utf8_lossy(&t);
    assert!(
        t.contains("Texte cité (5 lignes)") && t.contains("<summary>Signature</summary>"),
        "{t}"
    );
}

#[test]
fn every_interface_text_has_a_french_translation() {
    let c = i18n::Catalogs::load(None).expect("catalogs");
    let re = regex::Regex::new(r#"\b_n?\(\s*(?:"([^"]*)"|'([^']*)')"#).expect("regex");
    let mut missing = Vec::new();
    let mut n = 0;
    for (name, src) in templates::BUILTIN {
        for cap in re.captures_iter(src) {
            let Some(id) = cap.get(1).or(cap.get(2)).map(|m| m.as_str()) else {
                continue;
            };
            n += 1;
            if !c.translates("fr", id) {
                missing.push(format!("{name}: {id}"));
            }
        }
    }
    for id in [
        "Signature",
        "Quoted text",
        "lines",
        "Thread",
        "Authors",
        "Search",
        "Search help",
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "In-Reply-To",
        "References",
        "January",
        "December",
    ] {
        if !c.translates("fr", id) {
            missing.push(format!("rust: {id}"));
        }
    }
    // The result pages built in membership.rs: every Text::new id and every title/button.
    let src = include_str!("membership.rs");
    let re_text = regex::Regex::new(r#"Text::new\(\s*"([^"]*)""#).expect("regex");
    let re_title = regex::Regex::new(r#"(?:title|button): "([^"]*)""#).expect("regex");
    let re_msg = regex::Regex::new(r#"StatusCode::[A-Z_]+,\s*"([^"]*)""#).expect("regex");
    for re in [&re_text, &re_title, &re_msg] {
        for cap in re.captures_iter(src) {
            n += 1;
            if !cap[1].is_empty() && !c.translates("fr", &cap[1]) {
                missing.push(format!("membership.rs: {}", &cap[1]));
            }
        }
    }
    for id in [
        "If the address can be subscribed, a message with a confirmation link is on its way to it. Open the link, or reply to the message, to finish.",
        "If the address can be unsubscribed, a message with a confirmation link is on its way to it. Open the link, or reply to the message, to finish.",
    ] {
        if !c.translates("fr", id) {
            missing.push(format!("membership.rs: {id}"));
        }
    }
    assert!(n > 130, "only {n} texts found");
    assert!(missing.is_empty(), "untranslated: {missing:#?}");
}

#[tokio::test]
async fn search_sorts_groups_and_explains() {
    let (_dir, app) = app().await;
    let (_, _, r) = get(&app, "/search?q=s:charter&sort=date").await;
    let first = r.find("files@example.fr").expect("newest");
    let last = r.find("root%2F1").expect("oldest");
    assert!(first < last, "newest first");
    let (_, _, g) = get(&app, "/search?q=charter&group=thread").await;
    assert!(g.contains("3 messages in this thread"), "{g}");
    assert!(g.contains("1 result"), "one thread: {g}");
    let (s, _, bad) = get(&app, "/search?q=date:2025-13").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(bad.contains("not a date"), "{bad}");
    let (s, _, help) = get(&app, "/help/search").await;
    assert_eq!(s, StatusCode::OK);
    for syntax in [
        "from:",
        "to:",
        "subject:",
        "body:",
        "list:",
        "attachment:",
        "date:2024-01..2024-06",
        "after:",
        "before:",
        "OR",
        "NOT",
    ] {
        assert!(help.contains(syntax), "help explains {syntax}");
    }
}

async fn post_form(app: &Router, uri: &str, body: &str, cookie: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let res = app
        .clone()
        .oneshot(
            Request::post(uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", cookie)
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = res.status();
    let h = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

fn set_cookie_pair(h: &axum::http::HeaderMap) -> Option<String> {
    h.get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string)
}

/// Access links mailed so far (from the delivery queue's notices).
fn mailed_access_links(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for job in store.jobs().expect("jobs") {
        if let plenary_store::JobKind::Notice { raw, .. } = job.what {
            for w in raw.split_whitespace() {
                if let Some(i) = w.find("/access/") {
                    out.push(w[i..].to_string());
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn members_only_archive_opens_with_a_mailed_link() {
    let (_dir, app, store) = app_with_store().await;
    let list = "gov@lists.example.org";
    let mut settings = store.list(list).expect("read").expect("list").settings;
    settings.set("archive", "private").expect("set");
    store.set_list_settings(list, settings).expect("save");
    let engine = plenary_list::Engine::new(store.clone(), Default::default());
    let ana = plenary_core::MemberAddress::parse("ana@example.net").expect("addr");
    engine
        .add_members(
            list,
            vec![(ana.clone(), "Ana".into(), plenary_core::list::Delivery::Each)],
            false,
        )
        .expect("add");
    // Without access: 403 with a form to ask for a link, nothing of the archive.
    let (s, h, page) = get_with(&app, "/lists/gov@lists.example.org/", &[]).await;
    let page = String::from_utf8_lossy(&page).into_owned();
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        page.contains("action=\"/lists/gov@lists.example.org/access\"") && !page.contains("Charter"),
        "{page}"
    );
    let csrf_cookie = set_cookie_pair(&h).expect("a CSRF cookie");
    let csrf = csrf_cookie
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    // A non-member and a member get the same answer; only the member gets mail.
    let (s1, _, a1) = post_form(
        &app,
        "/lists/gov@lists.example.org/access",
        &format!("csrf={csrf}&email=eve%40example.org"),
        &csrf_cookie,
    )
    .await;
    let (s2, _, a2) = post_form(
        &app,
        "/lists/gov@lists.example.org/access",
        &format!("csrf={csrf}&email=ana%40example.net"),
        &csrf_cookie,
    )
    .await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        a1.replace("eve@example.org", "X"),
        a2.replace("ana@example.net", "X"),
        "no membership oracle"
    );
    let links = mailed_access_links(&store);
    assert_eq!(links.len(), 1, "one link, to the member");
    // Without the form's CSRF token nothing is sent.
    let (s, _, _) = post_form(
        &app,
        "/lists/gov@lists.example.org/access",
        "email=ana%40example.net",
        "",
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The link: a GET asks, a POST opens (once) and sets a signed cookie.
    let (s, _, ask) = get_with(&app, &links[0], &[]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&ask).contains("Open the archive"));
    let (s, h, _) = post_form(&app, &links[0], &format!("csrf={csrf}"), &csrf_cookie).await;
    assert!(s.is_redirection(), "{s}");
    let access = set_cookie_pair(&h).expect("access cookie");
    assert!(h["set-cookie"].to_str().unwrap_or("").contains("HttpOnly"));
    let (s, _, _) = post_form(&app, &links[0], &format!("csrf={csrf}"), &csrf_cookie).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a link works once");
    // With the cookie: every view, search and the feed.
    for uri in [
        "/lists/gov@lists.example.org/".to_string(),
        format!("/lists/gov@lists.example.org/t/{ROOT_ID}/"),
        "/lists/gov@lists.example.org/m/reply@example.net/".to_string(),
        "/lists/gov@lists.example.org/atom.xml".to_string(),
    ] {
        let (s, h, body) = get_with(&app, &uri, &[("cookie", &access)]).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(String::from_utf8_lossy(&body).contains("Charter"), "{uri}");
        if uri.ends_with('/') {
            assert_eq!(
                h["x-robots-tag"], "noindex, nofollow",
                "members-only pages are never indexed"
            );
        }
    }
    let (_, _, found) = get_with(&app, "/search?q=zebra", &[("cookie", &access)]).await;
    assert!(String::from_utf8_lossy(&found).contains("1 result"));
    let (_, _, none) = get_with(&app, "/search?q=zebra", &[]).await;
    assert!(String::from_utf8_lossy(&none).contains("0 results"));
    // A forged cookie (another address, same MAC) or one for another list does nothing.
    let forged = access.replacen(&hex::encode("ana@example.net"), &hex::encode("bob@example.net"), 1);
    assert_eq!(
        get_with(&app, "/lists/gov@lists.example.org/", &[("cookie", &forged)])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // Leaving the list ends access at once.
    engine.remove_members(list, vec![ana]).expect("remove");
    assert_eq!(
        get_with(&app, "/lists/gov@lists.example.org/", &[("cookie", &access)])
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}
