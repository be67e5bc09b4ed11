//! Import tests on the real archives in ../shared/corpora. They run when the corpora are there
//! (CI has them) and say so when they are not.

use plenary_e2e::{corpora, urlencode, workspace, Daemon, Smtp};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIST: &str = "archive@lists.example.org";

fn python_counts(paths: &[PathBuf]) -> serde_json::Value {
    let out = std::process::Command::new("python3")
        .arg(workspace().join("tests/py/count_mbox.py"))
        .args(paths)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "count_mbox.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Parse "N messages read: I imported, D duplicates, R repaired, X rejected".
fn summary(stdout: &str) -> [u64; 5] {
    let line = stdout
        .lines()
        .find(|l| l.contains("messages read:"))
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    [nums[0], nums[1], nums[2], nums[3], nums[4]]
}

/// Import offline (daemon stopped), check against Python's mailbox, then serve and check
/// threads and search. Returns the running daemon.
fn import_and_check(dir: &Path, paths: &[PathBuf]) -> Daemon {
    let mut d = Daemon::start(dir, "", "");
    d.create_list(LIST);
    d.stop();
    let args: Vec<String> = ["import", "--list", LIST]
        .iter()
        .map(|s| s.to_string())
        .chain(paths.iter().map(|p| p.display().to_string()))
        .collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = d.cli(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let [read, imported, duplicates, _repaired, rejected] = summary(&stdout);
    let py = python_counts(paths);
    let count = py["count"].as_u64().expect("count");
    let unique = py["unique_ids"].as_u64().expect("unique");
    let missing = py["missing_ids"].as_u64().expect("missing");
    eprintln!(
        "imported {} in {:?}: {stdout}python: {count} messages, {unique} distinct ids, {missing} without id",
        paths.len(),
        started.elapsed()
    );
    assert_eq!(read, count, "we must read exactly the messages Python's mailbox reads");
    assert_eq!(imported + duplicates + rejected, read, "every message is accounted for");
    assert!(
        imported >= unique && imported <= unique + missing,
        "imported {imported}, python distinct ids {unique} (+{missing} without id)"
    );
    // Re-importing adds nothing.
    let again = d.cli(&argv);
    let [read2, imported2, dup2, _, _] = summary(&String::from_utf8_lossy(&again.stdout));
    assert_eq!((read2, imported2, dup2), (read, 0, imported + duplicates));
    d.restart();
    assert_eq!(d.count(LIST), imported);
    // Threads link up: a reply's page names its parent and its thread holds both.
    for pair in py["pairs"].as_array().into_iter().flatten().take(5) {
        let (child, parent) = (pair[0].as_str().expect("child"), pair[1].as_str().expect("parent"));
        let (status, page) = d.get(&format!("/lists/{LIST}/m/{}/", urlencode(child)));
        assert_eq!(status, 200, "{child}");
        assert!(page.contains("In reply to"), "{child} must link its parent");
        let parent_url = urlencode(parent);
        assert!(
            page.contains(&parent_url) || page.contains(&parent_url.replace("%2F", "&#x2f;")),
            "the page of {child} must link its parent {parent}"
        );
        let (status, thread) = d.get(&format!("/lists/{LIST}/t/{}/", urlencode(parent)));
        assert_eq!(status, 200);
        assert!(
            thread.contains(&urlencode(child).replace("%2F", "&#x2f;")) || thread.contains(child),
            "thread of {parent} lacks {child}"
        );
    }
    // Search finds known phrases (subjects, as a quoted phrase).
    let mut checked = 0;
    for s in py["subjects"].as_array().into_iter().flatten().take(5) {
        let words: Vec<&str> = s[1]
            .as_str()
            .unwrap_or("")
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(4)
            .collect();
        if words.len() < 3 {
            continue;
        }
        let q = format!("\"{}\"", words.join(" "));
        let v = d.wait_search(&q, 1);
        assert!(v["total"].as_u64().unwrap_or(0) >= 1, "search {q} found nothing");
        checked += 1;
    }
    assert!(checked > 0, "no subject phrase checked");
    d
}

#[test]
fn pipermail_txt_gz_and_txt() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED pipermail import test: ../shared/corpora is not present");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for list in [
        "divunal-author",
        "divunal-devel",
        "divunal-list",
        "inheritance",
        "reality",
        "twisted-web",
    ] {
        for e in std::fs::read_dir(c.join("twisted-pipermail").join(list)).expect("dir") {
            paths.push(e.expect("entry").path());
        }
    }
    paths.sort();
    // One month as a plain .txt, as pipermail also publishes it.
    let gz = paths.pop().expect("a file");
    let txt = dir.path().join("month.txt");
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&gz).expect("open")),
        &mut plain,
    )
    .expect("gunzip");
    std::fs::write(&txt, plain).expect("write");
    paths.push(txt);
    let d = import_and_check(dir.path(), &paths);
    // Pipermail leaves body lines starting with "From " unquoted, so some messages are cut
    // in two (as Python's mailbox cuts them); the headerless fragment must date from the
    // message it came from, not from the day of the import (it led the archive before).
    let (_, api) = d.get(&format!("/api/v1/lists/{LIST}/messages"));
    let v: serde_json::Value = serde_json::from_str(&api).expect("json");
    let newest = v["messages"][0]["date"].as_str().expect("a newest message");
    assert!(
        newest < "2022",
        "the newest message of archives that end in 2021 is dated {newest}"
    );
    // Pipermail's "user at host" addresses are obfuscated too.
    let (_, page) = d.get(&format!("/lists/{LIST}/"));
    assert!(
        !page.contains(" at twistedmatrix.com"),
        "pipermail-style addresses must be hidden"
    );
}

#[test]
fn lore_mboxrd() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED lore import test: ../shared/corpora is not present");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(c.join("jailhouse-dev-lore"))
        .expect("dir")
        .map(|e| e.expect("e").path())
        .filter(|p| p.extension().is_some_and(|x| x == "gz"))
        .collect();
    paths.sort();
    import_and_check(dir.path(), &paths);
}

#[test]
fn maildir() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED maildir import test: ../shared/corpora is not present");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    import_and_check(dir.path(), &[c.join("notmuch-test-corpora/lkml")]);
}

#[test]
fn hard_message_corpora_import_and_render() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED hard-message corpora test: ../shared/corpora is not present");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for corpus in [
        "mime4j-testmsgs",
        "flanker-fixtures",
        "nodemailer-fixtures",
        "mimekit-testdata",
        "ruby-mail-fixtures",
        "charset-torture",
    ] {
        let mut stack = vec![c.join(corpus)];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).expect("dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.file_name().is_some_and(|n| n != "SOURCES.md") {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    let mut d = Daemon::start(dir.path(), "", "");
    d.create_list(LIST);
    d.stop();
    let mut args = vec!["import".to_string(), "--list".into(), LIST.into()];
    args.extend(files.iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.cli(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let [read, imported, duplicates, _repaired, rejected] = summary(&stdout);
    eprintln!("{} files: {stdout}", files.len());
    assert_eq!(imported + duplicates + rejected, read);
    d.restart();
    // Render every message: permalink, thread and raw, each within a time budget.
    let budget = Duration::from_secs(5);
    let mut rendered = 0;
    let mut slowest = Duration::ZERO;
    for m in d.listed_messages(LIST) {
        let id = m["message_id"].as_str().expect("id");
        for path in [
            format!("/lists/{LIST}/m/{}/", urlencode(id)),
            format!("/lists/{LIST}/t/{}/", urlencode(id)),
            format!("/lists/{LIST}/m/{}/raw", urlencode(id)),
        ] {
            let t = Instant::now();
            let (status, body) = d.get(&path);
            let took = t.elapsed();
            slowest = slowest.max(took);
            assert_eq!(status, 200, "{path}: {body}");
            assert!(took < budget, "{path} took {took:?}");
        }
        rendered += 1;
    }
    eprintln!("rendered {rendered} messages (3 pages each); slowest page {slowest:?}");
    assert_eq!(rendered as u64, imported);
    // Most of these files are messages: a run that rejects them wholesale shows nothing.
    assert!(
        imported > 0 && rejected * 10 <= read,
        "imported {imported}, rejected {rejected} of {read}"
    );
    assert_eq!(d.get("/healthz").0, 200);
}

/// A message the MIME parser cannot handle still gets its 250 over SMTP, is stored with the
/// reason, and is shown (as text) with that reason in the API. The messages are fragments of
/// mimekit's Content-Length mbox cut at `From ` lines; some make mail-parser 0.11 panic (the
/// store's unit test finds them the same way).
#[test]
fn unparseable_mail_over_smtp_is_stored_with_its_reason() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED unparseable-mail test: ../shared/corpora is not present");
        return;
    };
    let data = std::fs::read(c.join("mimekit-testdata/mbox/content-length.mbox.txt")).expect("corpus file");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(dir.path(), "max_errors = 1000", "");
    d.create_list(LIST);
    let mut accepted = 0u64;
    for frag in data
        .split(|&b| b == b'\n')
        .collect::<Vec<_>>()
        .split(|l| l.starts_with(b"From "))
    {
        if frag.iter().all(|l| l.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        // CRLF line ends and dot-stuffing, as any SMTP client sends it.
        let mut wire = Vec::new();
        for line in frag {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.first() == Some(&b'.') {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
            wire.extend_from_slice(b"\r\n");
        }
        let mut s = Smtp::open(d.smtp);
        assert!(s.cmd("EHLO t.test").starts_with("250"));
        assert!(s.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
        assert!(s.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
        assert!(s.cmd("DATA").starts_with("354"));
        s.send(&wire);
        s.send(b".\r\n");
        let r = s.reply();
        assert!(r.starts_with("250"), "every fragment is stored: {r}");
        accepted += 1;
    }
    let mut reasons = Vec::new();
    for m in d.listed_messages(LIST) {
        let id = m["message_id"].as_str().expect("id");
        let full = d.api(&format!("/api/v1/lists/{LIST}/messages/{}", urlencode(id)));
        if let Some(reason) = full["unparsed"].as_str() {
            assert!(full["body"].is_string(), "shown as text: {full}");
            let (status, page) = d.get(&format!("/lists/{LIST}/m/{}/", urlencode(id)));
            assert_eq!(status, 200, "{page}");
            assert!(
                page.contains("This message could not be parsed, so it is shown as plain text."),
                "the page says so"
            );
            reasons.push(reason.to_string());
        }
    }
    eprintln!("{accepted} fragments accepted; unparsed: {reasons:?}");
    assert!(
        reasons.iter().any(|r| r == "the MIME parser failed on this message"),
        "a fragment that makes the parser fail is stored with that reason: {reasons:?}"
    );
}
