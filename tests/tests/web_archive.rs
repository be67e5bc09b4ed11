//! The archive as readers get it, through the real binary:
//! - JWZ threads over a real list archive (jailhouse-dev, 1,333 messages): every message in
//!   exactly one thread, every reply with its parent, a known 74-message patch series whole;
//! - Atom feeds read by Python's feedparser and mbox downloads read by Python's mailbox,
//!   holding exactly the public messages;
//! - every page type in headless Chromium (Debian's `chromium`, driven by playwright-core):
//!   axe-core finds no violation, the keyboard reaches everything with a visible focus, the
//!   page works with JavaScript off, and no horizontal scrolling at 360 px; screenshots at
//!   phone and desktop widths go to `target/browser/`;
//! - the XSS battery: every hostile message of the corpora rendered, and the browser sees no
//!   dialog, popup, navigation or request to any other host.

use plenary_e2e::{corpora, send_raw, urlencode, workspace, Daemon};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const LIST: &str = "coalition@lists.example.org";
const HOSTILE: &str = "hostile@lists.example.org";
/// A members-only list (its page is the access form).
const MEMBERS: &str = "members@lists.example.org";

/// Start a daemon with the jailhouse-dev archive imported and a few messages sent by SMTP
/// (French, Arabic, HTML-only, with attachments).
fn archive(dir: &Path) -> Option<Daemon> {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return None;
    };
    let mut d = Daemon::start(dir, "", "");
    d.create_list(LIST);
    d.cli_ok(&["list", "set", LIST, "language=english"]);
    d.create_list(MEMBERS);
    d.cli_ok(&["list", "set", MEMBERS, "archive=private"]);
    d.stop();
    let files: Vec<String> = (2022..=2024)
        .map(|y| {
            c.join(format!("jailhouse-dev-lore/jailhouse-dev-{y}.mbox.gz"))
                .display()
                .to_string()
        })
        .collect();
    let mut args = vec!["import", "--list", LIST];
    args.extend(files.iter().map(String::as_str));
    d.cli_ok(&args);
    d.spawn();
    for msg in [
        "From: Chloé Martin <chloe@example.fr>\r\nSubject: Compte rendu de la réunion\r\nMessage-ID: <fr@example.fr>\r\nDate: Mon, 2 Dec 2024 10:00:00 +0100\r\nContent-Language: fr\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nBonjour à toutes et à tous, voici le compte \r\nrendu de la réunion.\r\n",
        "From: =?utf-8?b?2KPZhdmEINit2LPZhg==?= <amal@example.eg>\r\nSubject: =?utf-8?b?2KfZhNit2YjZg9mF2Kkg2KfZhNmF2YHYqtmI2K3YqQ==?=\r\nMessage-ID: <ar@example.eg>\r\nDate: Tue, 3 Dec 2024 10:00:00 +0200\r\nContent-Language: ar\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nناقشت الحكومات المعايير المفتوحة في الاجتماع.\r\n",
        "From: Newsletter <news@example.org>\r\nSubject: Monthly newsletter\r\nMessage-ID: <html@example.org>\r\nDate: Wed, 4 Dec 2024 10:00:00 +0000\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1>News</h1><p>Read <a href=\"https://example.org/news\">the news</a>.<img src=\"https://tracker.example/p.gif\" alt=\"\"></p><table><tr><td>a</td><td>b</td></tr></table></body></html>\r\n",
        "From: Ana <ana@example.es>\r\nSubject: Slides attached\r\nMessage-ID: <files@example.es>\r\nIn-Reply-To: <fr@example.fr>\r\nDate: Thu, 5 Dec 2024 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe slides and a chart.\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"slides.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=\"chart.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==\r\n--b--\r\n",
    ] {
        let r = send_raw(d.smtp, LIST, msg);
        assert!(r.starts_with("250"), "{r}");
    }
    Some(d)
}

#[derive(Debug, Clone)]
struct Msg {
    id: String,
    subject: String,
    parent: Option<String>,
    date: String,
}

fn all_messages(d: &Daemon, list: &str) -> Vec<Msg> {
    d.listed_messages(list)
        .into_iter()
        .map(|m| Msg {
            id: m["message_id"].as_str().unwrap_or_default().to_string(),
            subject: m["subject"].as_str().unwrap_or_default().to_string(),
            parent: m["in_reply_to"].as_str().map(str::to_string),
            date: m["date"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Every thread: its messages (None for a placeholder) with depths.
fn all_threads(d: &Daemon, list: &str) -> Vec<Vec<(Option<String>, u64)>> {
    let mut out = Vec::new();
    for page in 1.. {
        let v = d.api(&format!("/api/v1/lists/{list}/threads?page={page}"));
        let items = v["threads"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            break;
        }
        for t in items {
            out.push(
                t["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        (
                            m["message_id"].as_str().map(str::to_string),
                            m["depth"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The Python with feedparser (Debian's python3-feedparser lives under /usr/bin/python3).
fn python_with_feedparser() -> Option<PathBuf> {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import feedparser"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(PathBuf::from(p));
        }
    }
    None
}

fn require(what: &str) -> bool {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing, and CI must run this test (.ci/run installs it)");
    }
    eprintln!("SKIPPED: {what} is missing");
    false
}

#[test]
fn threads_feeds_and_downloads_on_a_real_archive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(d) = archive(dir.path()) else { return };
    let msgs = all_messages(&d, LIST);
    assert_eq!(msgs.len() as u64, d.count(LIST));
    assert!(msgs.len() > 1300, "{}", msgs.len());
    let ids: HashSet<&str> = msgs.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), msgs.len(), "Message-IDs are unique in the archive");

    // Threads: every message exactly once.
    let threads = all_threads(&d, LIST);
    let mut thread_of: HashMap<String, usize> = HashMap::new();
    for (i, t) in threads.iter().enumerate() {
        for (m, _) in t {
            if let Some(m) = m {
                assert!(thread_of.insert(m.clone(), i).is_none(), "{m} is in two threads");
            }
        }
    }
    let threaded: HashSet<&str> = thread_of.keys().map(String::as_str).collect();
    assert_eq!(threaded, ids, "every message is in a thread, and nothing else is");
    // Every reply is in its parent's thread.
    let mut links = 0;
    for m in &msgs {
        if let Some(p) = m.parent.as_deref().filter(|p| ids.contains(p)) {
            assert_eq!(thread_of[&m.id], thread_of[p], "{} replies to {p}", m.id);
            links += 1;
        }
    }
    assert!(links > 800, "{links} reply links checked");
    // A known thread: the 73-patch RISC-V series with its cover letter, whole, each patch
    // directly under the cover letter.
    let cover = "20230519204033.643200-1-ralf.ramsauer@oth-regensburg.de";
    let series = &threads[thread_of[cover]];
    assert_eq!(
        series[0],
        (Some(cover.to_string()), 0),
        "the cover letter starts the thread"
    );
    let subjects: HashMap<&str, &str> = msgs.iter().map(|m| (m.id.as_str(), m.subject.as_str())).collect();
    for n in 1..=73 {
        let want = format!("[PATCH v3 {n:02}/73]");
        let row = series.iter().find(|(m, _)| {
            m.as_deref()
                .and_then(|m| subjects.get(m))
                .is_some_and(|s| s.contains(&want))
        });
        let (_, depth) = row.unwrap_or_else(|| panic!("{want} is not in the series thread"));
        assert_eq!(*depth, 1, "{want} answers the cover letter");
    }
    assert!(series.len() >= 74);
    // The thread page paginates at 50 messages and every page renders.
    let (s, page1) = d.get(&format!("/lists/{LIST}/t/{}/", urlencode(cover)));
    assert_eq!(s, 200);
    assert!(page1.contains("page 1 of 2"), "a long thread paginates");
    let (s, page2) = d.get(&format!("/lists/{LIST}/t/{}/?page=2", urlencode(cover)));
    assert_eq!(s, 200);
    assert!(page2.contains("id=\"m51\""), "page two starts at message 51");

    // Feeds with feedparser, downloads with Python's mailbox.
    let Some(py) = python_with_feedparser() else {
        require("python3-feedparser");
        return;
    };
    let month = msgs.iter().find(|m| m.date.starts_with("2023-05")).map(|_| "2023/05");
    let month_count = msgs.iter().filter(|m| m.date.starts_with("2023-05")).count();
    assert!(month.is_some() && month_count > 0);
    let thread_feed = format!("/lists/{LIST}/t/{}/atom.xml", urlencode(cover));
    let list_feed = format!("/lists/{LIST}/atom.xml");
    let search_feed = "/search/atom.xml?q=jailhouse".to_string();
    let list_mbox = format!("/lists/{LIST}/mbox");
    let month_mbox = format!("/lists/{LIST}/2023/05/mbox");
    let thread_mbox = format!("/lists/{LIST}/t/{}/mbox", urlencode(cover));
    d.wait_search("jailhouse", 1);
    let out = Command::new(&py)
        .arg(workspace().join("tests/py/check_feeds_mbox.py"))
        .arg(format!("http://{}", d.web))
        .args(["--feed", &list_feed, &thread_feed, &search_feed])
        .args(["--mbox", &list_mbox, &month_mbox, &thread_mbox])
        .output()
        .expect("python");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "feeds: {report:#}");
    for f in [&list_feed, &thread_feed, &search_feed] {
        let r = &report["feeds"][f.as_str()];
        assert_eq!(r["version"], "atom10", "{f}");
        assert_eq!(r["bozo"], 0, "{f}: {}", r["bozo_exception"]);
        let n = r["entries"].as_array().map(Vec::len).unwrap_or(0);
        assert!(n > 0 && n <= 30, "{f}: {n} entries");
    }
    let newest = &report["feeds"][list_feed.as_str()]["entries"][0]["link"];
    assert!(
        newest.as_str().unwrap_or("").ends_with("/m/files@example.es/"),
        "newest first: {newest}"
    );
    let ids_of = |p: &str| -> Vec<String> {
        report["mbox"][p]["ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let whole: Vec<String> = ids_of(&list_mbox);
    assert_eq!(whole.len(), msgs.len(), "the list mbox holds every public message once");
    let whole_set: HashSet<&str> = whole.iter().map(String::as_str).collect();
    assert_eq!(whole_set, ids);
    assert_eq!(ids_of(&month_mbox).len(), month_count);
    let series_ids: HashSet<String> = series.iter().filter_map(|(m, _)| m.clone()).collect();
    let thread_ids: HashSet<String> = ids_of(&thread_mbox).into_iter().collect();
    assert_eq!(thread_ids, series_ids, "the thread mbox is the thread");
    // The public form only: no address survives in a download, except inside Message-IDs
    // (they are the permalinks, see ARCHITECTURE.md).
    let (_, body) = d.get(&list_mbox);
    let leaks: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("ralf.ramsauer@oth-regensburg.de") || l.contains("jan.kiszka@siemens.com"))
        .filter(|l| !l.starts_with("Message-ID:") && !l.starts_with("In-Reply-To:") && !l.starts_with("References:"))
        .collect();
    assert!(
        leaks.is_empty(),
        "addresses in the download: {:?}",
        &leaks[..leaks.len().min(5)]
    );
}

/// Where the browser harness is, if it can run here.
fn browser_harness() -> Option<PathBuf> {
    let dir = workspace().join("tests/browser");
    if !dir.join("node_modules/playwright-core").is_dir() || !dir.join("node_modules/axe-core").is_dir() {
        require("tests/browser/node_modules (run: npm ci --prefix tests/browser)");
        return None;
    }
    if !Path::new("/usr/bin/chromium").exists() {
        require("/usr/bin/chromium (Debian's chromium)");
        return None;
    }
    Some(dir)
}

fn out_dir(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let d = target.join("browser").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("browser output dir");
    d
}

fn run_harness(script: &str, d: &Daemon, pages: &serde_json::Value, out: &Path, extra: &[&str]) {
    let Some(dir) = browser_harness() else { return };
    let pages_file = out.join("pages.json");
    std::fs::write(&pages_file, serde_json::to_vec_pretty(pages).expect("json")).expect("write pages");
    let res = Command::new("node")
        .arg(dir.join(script))
        .args(["--base", &format!("http://{}", d.web)])
        .arg("--pages")
        .arg(&pages_file)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    eprintln!("{script}:\n{stdout}{stderr}");
    assert!(
        res.status.success(),
        "{script} found problems (exit {:?}); see {}:\n{stdout}{stderr}",
        res.status.code(),
        out.display()
    );
}

/// The first link in `html` whose path contains `part` (HTML-unescaped).
fn link_containing(html: &str, part: &str) -> Option<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|h| h.split('"').next())
        .map(|h| h.replace("&#x2f;", "/").replace("&amp;", "&"))
        .find(|h| h.contains(part))
}

#[test]
fn every_page_type_passes_axe_keyboard_and_no_js() {
    if browser_harness().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(d) = archive(dir.path()) else { return };
    d.wait_search("jailhouse", 1);
    let l = format!("/lists/{LIST}");
    let cover = urlencode("20230519204033.643200-1-ralf.ramsauer@oth-regensburg.de");
    let (_, authors) = d.get(&format!("{l}/authors/"));
    let author = link_containing(&authors, "/authors/").filter(|h| h.len() > l.len() + 20);
    let (_, root) = d.get(&format!("{l}/"));
    let quoted = "20230519204033.643200-2-ralf.ramsauer@oth-regensburg.de";
    let mut pages = vec![
        ("index", "/".to_string(), 200),
        ("list", format!("{l}/"), 200),
        ("list-page-2", format!("{l}/?page=2"), 200),
        ("month-threads", format!("{l}/2023/05/"), 200),
        ("month-by-date", format!("{l}/2023/05/?by=date"), 200),
        ("authors", format!("{l}/authors/"), 200),
        ("thread-tree", format!("{l}/t/{cover}/"), 200),
        ("thread-flat", format!("{l}/t/{cover}/?view=flat&page=2"), 200),
        ("message-patch", format!("{l}/m/{}/", urlencode(quoted)), 200),
        ("message-french", format!("{l}/m/fr@example.fr/"), 200),
        ("message-arabic-rtl", format!("{l}/m/ar@example.eg/"), 200),
        ("message-html-only", format!("{l}/m/html@example.org/"), 200),
        ("message-attachments", format!("{l}/m/files@example.es/"), 200),
        (
            "search",
            "/search?q=riscv+OR+jailhouse&list=coalition@lists.example.org".to_string(),
            200,
        ),
        ("search-grouped", "/search?q=jailhouse&group=thread".to_string(), 200),
        ("search-help", "/help/search".to_string(), 200),
        ("search-error", "/search?q=date:2024-13".to_string(), 400),
        ("not-found", format!("{l}/m/no-such-message@x/"), 404),
        ("members-only-access", format!("/lists/{MEMBERS}/"), 403),
        (
            "confirm-invalid-link",
            "/confirm/aaaaaaaaaaaaaaaaaaaaaaaaaa".to_string(),
            404,
        ),
    ];
    if let Some(a) = author {
        pages.push(("author", a, 200));
    }
    assert!(root.contains("Recent threads"));
    let pages: Vec<serde_json::Value> = pages
        .into_iter()
        .map(|(name, path, status)| serde_json::json!({ "name": name, "path": path, "status": status }))
        .collect();
    // Each page is fetched once here first: a broken page fails with its body, not a screenshot.
    for p in &pages {
        let (s, body) = d.get(p["path"].as_str().unwrap_or("/"));
        assert_eq!(
            u64::from(s),
            p["status"].as_u64().unwrap_or(200),
            "{}: {body}",
            p["path"]
        );
    }
    let out = out_dir("pages");
    run_harness("check.mjs", &d, &serde_json::Value::Array(pages), &out, &[]);
    assert!(out.join("thread-tree-phone.png").is_file() && out.join("thread-tree-desktop.png").is_file());
}

/// Messages carrying every payload of the adversarial corpora.
fn hostile_messages(c: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    // Each message's Message-ID is hostile-N@test.example, N its position from 1.
    fn push(raw: String, out: &mut Vec<(String, String)>) {
        out.push((format!("hostile-{}@test.example", out.len() + 1), raw));
    }
    // One-line payload lists: in chunks, as subject, sender name, text body and HTML body.
    let mut files: Vec<PathBuf> = std::fs::read_dir(c.join("adversarial/xss-payloads/intruders"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for chunk in lines.chunks(120) {
            let first: String = chunk[0].chars().filter(|c| !c.is_control()).take(200).collect();
            let body = chunk.join("\r\n");
            let id = out.len() + 1;
            push(
                format!(
                    "From: \"{}\" <x@test.example>\r\nSubject: {first}\r\nMessage-ID: <hostile-{id}@test.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
                    first.replace(['"', '\\'], "")
                ),
                &mut out,
            );
            let id = out.len() + 1;
            push(
                format!(
                    "From: x <x@test.example>\r\nSubject: html {id}\r\nMessage-ID: <hostile-{id}@test.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<html><body>{}</body></html>\r\n",
                    chunk.join("<br>\r\n")
                ),
                &mut out,
            );
        }
    }
    // SVG payloads as attachments (listed, downloadable, never inlined) and as HTML bodies.
    let mut svgs: Vec<PathBuf> = std::fs::read_dir(c.join("adversarial/xss-payloads/svg"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    svgs.sort();
    let mut parts = String::new();
    for s in &svgs {
        let body = String::from_utf8_lossy(&std::fs::read(s).unwrap_or_default()).replace("\r\n", "\n");
        let name = s
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        parts.push_str(&format!(
            "--b\r\nContent-Type: image/svg+xml\r\nContent-Disposition: inline; filename=\"{name}\"\r\n\r\n{}\r\n",
            body.replace('\n', "\r\n")
        ));
        let id = out.len() + 1;
        push(
            format!("From: x <x@test.example>\r\nSubject: svg body {name}\r\nMessage-ID: <hostile-{id}@test.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n", body.replace('\n', "\r\n")),
            &mut out,
        );
    }
    let id = out.len() + 1;
    push(
        format!("From: x <x@test.example>\r\nSubject: svg attachments\r\nMessage-ID: <hostile-{id}@test.example>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attachments\r\n{parts}--b--\r\n"),
        &mut out,
    );
    // Whole hostile HTML documents and messages as they are.
    if let Ok(html) = std::fs::read(c.join("adversarial/html/cure53-httpleaks-leak.html")) {
        let id = out.len() + 1;
        push(
            format!(
                "From: x <x@test.example>\r\nSubject: http leaks\r\nMessage-ID: <hostile-{id}@test.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{}\r\n",
                String::from_utf8_lossy(&html).replace("\r\n", "\n").replace('\n', "\r\n")
            ),
            &mut out,
        );
    }
    let mut emls: Vec<PathBuf> = Vec::new();
    for sub in [
        "adversarial/from-spoofing",
        "notmuch-test-corpora/html",
        "nodemailer-fixtures/mailparser",
        "nodemailer-fixtures/postal-mime",
    ] {
        let mut stack = vec![c.join(sub)];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
            } else if !p.extension().is_some_and(|e| e == "json" || e == "md") {
                emls.push(p);
            }
        }
    }
    emls.sort();
    for p in emls {
        let raw = String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned();
        let raw = raw.replace("\r\n", "\n").replace('\n', "\r\n");
        // Give each its own Message-ID so the test can find its page.
        let id = out.len() + 1;
        let body = raw
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("message-id:"))
            .collect::<Vec<_>>()
            .join("\r\n");
        push(
            format!("Message-ID: <hostile-{id}@test.example>\r\n{body}\r\n"),
            &mut out,
        );
    }
    out
}

#[test]
fn hostile_messages_run_no_script() {
    if browser_harness().is_none() {
        return;
    }
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(
        dir.path(),
        "max_message_size = 52428800\nmax_line_length = 1048576\n",
        "",
    );
    d.create_list(HOSTILE);
    let msgs = hostile_messages(&c);
    assert!(msgs.len() > 60, "{} hostile messages", msgs.len());
    let mut pages = vec![
        serde_json::json!({ "name": "list", "path": format!("/lists/{HOSTILE}/") }),
        serde_json::json!({ "name": "authors", "path": format!("/lists/{HOSTILE}/authors/") }),
    ];
    for (id, raw) in &msgs {
        let r = send_raw(d.smtp, HOSTILE, raw);
        assert!(r.starts_with("250"), "{id}: {r}");
        let name = id.replace('@', "-at-");
        pages.push(serde_json::json!({ "name": name, "path": format!("/lists/{HOSTILE}/m/{}/", urlencode(id)) }));
    }
    // Thread pages render the same bodies, several per page.
    for (id, _) in msgs.iter().step_by(25) {
        pages.push(
            serde_json::json!({ "name": format!("thread-{}", id.replace('@', "-at-")), "path": format!("/lists/{HOSTILE}/t/{}/", urlencode(id)) }),
        );
    }
    d.wait_search("alert", 1);
    pages.push(serde_json::json!({ "name": "search", "path": "/search?q=alert+OR+script+OR+onerror" }));
    pages.push(serde_json::json!({ "name": "feed", "path": format!("/lists/{HOSTILE}/atom.xml") }));
    for p in &pages {
        let (s, body) = d.get(p["path"].as_str().unwrap_or("/"));
        assert_eq!(s, 200, "{}: {body}", p["path"]);
    }
    let out = out_dir("xss");
    run_harness(
        "xss.mjs",
        &d,
        &serde_json::Value::Array(pages),
        &out,
        &["--body-selector", ".msg-body"],
    );
}

/// The harness itself can fail: its selftest serves accessible, inaccessible and hostile
/// pages from a fixture server and checks that check.mjs and xss.mjs pass and fail the right
/// ones (so a green browser test is not a check that cannot fail).
#[test]
fn browser_harness_fails_bad_pages() {
    let Some(dir) = browser_harness() else { return };
    let out = Command::new("node")
        .arg(dir.join("selftest.mjs"))
        .output()
        .expect("node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser harness selftest failed:\n{text}");
    assert!(text.contains("0 failed"), "{text}");
}
