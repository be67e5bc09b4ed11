//! A message sent over SMTP is stored, archived, threaded, searchable and redacted; the CLI
//! works beside the running daemon; only list addresses are accepted.

use lettre::message::header::ContentType;
use lettre::{Message, SmtpTransport, Transport};
use plenary_e2e::{send_raw, Daemon, Smtp};

const LIST: &str = "gov@lists.example.org";

fn daemon(dir: &std::path::Path) -> Daemon {
    let d = Daemon::start(dir, "", "");
    d.create_list(LIST);
    d
}

fn lettre(d: &Daemon) -> SmtpTransport {
    SmtpTransport::builder_dangerous(d.smtp.ip().to_string())
        .port(d.smtp.port())
        .build()
}

#[test]
fn message_sent_with_lettre_appears_everywhere_and_is_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let root = Message::builder()
        .from("Ada Lovelace <ada.private@example.org>".parse().expect("from"))
        .to(LIST.parse().expect("to"))
        .subject("Charter draft for the coalition")
        .message_id(Some("<charter-1@example.org>".into()))
        .header(ContentType::TEXT_PLAIN)
        .body("Please review the quokka clause. Reach me at ada.private@example.org.".to_string())
        .expect("message");
    lettre(&d).send(&root).expect("send root");
    let reply = Message::builder()
        .from("Bob <bob.hidden@example.net>".parse().expect("from"))
        .to(LIST.parse().expect("to"))
        .subject("Re: Charter draft for the coalition")
        .message_id(Some("<charter-2@example.net>".into()))
        .in_reply_to("<charter-1@example.org>".into())
        .references("<charter-1@example.org>".into())
        .body("Agreed on the quokka clause.".to_string())
        .expect("message");
    lettre(&d).send(&reply).expect("send reply");

    let (status, list_page) = d.get("/lists/gov@lists.example.org/");
    assert_eq!(status, 200);
    assert!(
        list_page.contains("Charter draft for the coalition"),
        "list page: {list_page}"
    );
    assert!(
        list_page.contains("data-label=\"Replies\">1<"),
        "a thread of two (one reply) on the list page"
    );
    let (status, msg) = d.get("/lists/gov@lists.example.org/m/charter-1@example.org/");
    assert_eq!(status, 200);
    assert!(
        msg.contains("quokka clause") && msg.contains("charter-2@example.net"),
        "permalink shows the reply"
    );
    let (status, thread) = d.get("/lists/gov@lists.example.org/t/charter-2@example.net/");
    assert_eq!(status, 200);
    assert!(
        thread.contains("Please review") && thread.contains("Agreed on"),
        "thread holds both"
    );
    let hits = d.wait_search("quokka", 2);
    assert_eq!(hits["total"], 2, "{hits}");
    let api = d.api("/api/v1/lists/gov@lists.example.org/messages/charter-1@example.org");
    assert_eq!(api["subject"], "Charter draft for the coalition");
    let (status, _) = d.get("/api/v1/lists/gov@lists.example.org/messages/absent@example.org");
    assert_eq!(status, 404);

    // No address of a person on any public surface.
    let month = chrono_month();
    let surfaces = [
        "/".to_string(),
        "/lists/gov@lists.example.org/".to_string(),
        format!("/lists/gov@lists.example.org/{month}/"),
        "/lists/gov@lists.example.org/m/charter-1@example.org/".to_string(),
        "/lists/gov@lists.example.org/m/charter-1@example.org/raw".to_string(),
        "/lists/gov@lists.example.org/t/charter-1@example.org/".to_string(),
        "/search?q=quokka".to_string(),
        "/search?q=reach".to_string(),
        "/api/v1/lists".to_string(),
        "/api/v1/lists/gov@lists.example.org/messages".to_string(),
        "/api/v1/lists/gov@lists.example.org/messages/charter-1@example.org".to_string(),
        "/api/v1/search?q=reach".to_string(),
    ];
    for path in &surfaces {
        let (status, body) = d.get(path);
        assert_eq!(status, 200, "{path}");
        for secret in [
            "ada.private@example.org",
            "bob.hidden@example.net",
            "sender@test.example",
            "[127.0.0.1]",
            "Received",
        ] {
            assert!(!body.contains(secret), "{path} shows {secret}");
        }
    }
    let snippet = d.api("/api/v1/search?q=reach");
    assert!(
        snippet.to_string().contains("a…@e…"),
        "the snippet shows the obfuscated form: {snippet}"
    );
}

fn chrono_month() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y/%m"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn python_smtplib_interoperates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let script = format!(
        r#"
import smtplib, sys
s = smtplib.SMTP("{ip}", {port})
code, caps = s.ehlo("py.example")
assert code == 250, code
for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8"):
    assert s.has_extn(ext), ext
s.sendmail("py@example.org", ["{LIST}"], b"From: Py <py@example.org>\r\nSubject: from python\r\nMessage-ID: <py-1@example.org>\r\n\r\nsent by smtplib, wombat\r\n")
try:
    s.sendmail("py@example.org", ["someone@elsewhere.example"], b"Subject: relay\r\n\r\nx\r\n")
    sys.exit("relay accepted")
except smtplib.SMTPRecipientsRefused as e:
    code = e.recipients["someone@elsewhere.example"][0]
    assert code == 554, code
s.quit()
print("ok")
"#,
        ip = d.smtp.ip(),
        port = d.smtp.port()
    );
    plenary_e2e::python(&script);
    assert_eq!(d.count(LIST), 1);
    assert_eq!(d.wait_search("wombat", 1)["total"], 1);
}

#[test]
fn only_list_addresses_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let mut c = Smtp::open(d.smtp);
    assert!(c.cmd("EHLO t.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<nosuchlist@lists.example.org>").starts_with("550 5.1.1"),
        "R-02"
    );
    for r in [
        "gov-request",
        "gov-join",
        "gov-leave",
        "gov-owner",
        "gov-bounces",
        "gov-bounces+bob=x.org",
    ] {
        let reply = c.cmd(&format!("RCPT TO:<{r}@lists.example.org>"));
        assert!(reply.starts_with("250"), "{r}: {reply}");
    }
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("VRFY gov").starts_with("252"));
    assert!(c.cmd("EXPN gov").starts_with("502"));
    assert!(c.cmd("HELP").starts_with("214"));
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    // Mail to a command address is kept (for the list engine), not archived.
    let r = send_raw(
        d.smtp,
        "gov-request@lists.example.org",
        "Subject: subscribe\r\n\r\nsubscribe",
    );
    assert!(r.starts_with("250") && r.contains("inbox"), "{r}");
    assert_eq!(d.count(LIST), 0);
}

/// 8BITMIME and SMTPUTF8 are used, not just advertised: an 8-bit UTF-8 body and a UTF-8
/// envelope sender (RFC 6531) are accepted, stored byte for byte and shown as text.
#[test]
fn eight_bit_bodies_and_utf8_addresses_are_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let mut c = Smtp::open(d.smtp);
    let ehlo = c.cmd("EHLO t.test");
    assert!(ehlo.contains("8BITMIME") && ehlo.contains("SMTPUTF8"), "{ehlo}");
    let r = c.cmd("MAIL FROM:<ñandú@ejemplo.test> BODY=8BITMIME SMTPUTF8");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let msg = "From: Ñandú Pérez <ñandú@ejemplo.test>\r\nSubject: Reunión: año nuevo, 会议\r\nMessage-ID: <utf8-1@ejemplo.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nLa reunión del año: señal clara. 会议纪要见附件。\r\n.\r\n";
    c.send(msg.as_bytes());
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("QUIT").starts_with("221"));
    let (status, page) = d.get(&format!("/lists/{LIST}/m/utf8-1@ejemplo.test/"));
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("La reunión del año: señal clara. 会议纪要见附件。"),
        "{page}"
    );
    assert!(page.contains("Reunión: año nuevo, 会议"), "{page}");
    assert!(page.contains("Ñandú Pérez"), "{page}");
    let (status, raw) = d.get(&format!("/lists/{LIST}/m/utf8-1@ejemplo.test/raw"));
    assert_eq!(status, 200);
    assert!(
        raw.contains("La reunión del año: señal clara. 会议纪要见附件。"),
        "8-bit body kept: {raw}"
    );
    let hits = d.wait_search("señal", 1);
    assert!(hits.to_string().contains("utf8-1@ejemplo.test"), "{hits}");
}

/// Search results are ranked (the message about the word comes first) and paged (page 2
/// continues page 1 without repeating it, and together they hold every hit).
#[test]
fn search_results_are_ranked_and_paged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    // The best match goes first, so it is also the oldest: ranking by date would put it last.
    let r = send_raw(
        d.smtp,
        LIST,
        "From: chair@example.org\r\nMessage-ID: <rank-top@example.org>\r\nSubject: Quorum rules\r\n\r\nQuorum: what counts towards quorum, how quorum is checked, and quorum by proxy.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    for i in 0..25 {
        let r = send_raw(
            d.smtp,
            LIST,
            &format!("From: p{i}@example.org\r\nMessage-ID: <rank{i}@example.org>\r\nSubject: Meeting notes {i}\r\n\r\nNotes of meeting {i}. The quorum was reached late, then other business.\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let v = d.wait_search("quorum", 26);
    assert_eq!(v["total"].as_u64(), Some(26), "{v}");
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h["message_id"].as_str().map(str::to_string))
            .collect()
    };
    let page1 = ids(&v);
    assert_eq!(page1.len(), 20, "the first page is full: {v}");
    assert_eq!(page1[0], "rank-top@example.org", "best match first: {page1:?}");
    let scores: Vec<f64> = v["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["score"].as_f64())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "scores descend: {scores:?}");
    assert!(
        scores[0] > scores[1],
        "the best match scores higher than the rest: {scores:?}"
    );
    let v2 = d.api("/api/v1/search?q=quorum&page=2");
    let page2 = ids(&v2);
    assert_eq!(page2.len(), 6, "{v2}");
    assert_eq!(v2["offset"].as_u64(), Some(20), "{v2}");
    let mut all: Vec<String> = page1.iter().chain(&page2).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 26, "the two pages hold every hit once");
}

#[test]
fn same_message_id_twice_is_stored_once_and_no_archive_is_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let m = "Message-ID: <dup@example.org>\r\nSubject: twice\r\n\r\nbody";
    assert!(send_raw(d.smtp, LIST, m).starts_with("250"));
    let again = send_raw(d.smtp, LIST, m);
    assert!(again.starts_with("250") && again.contains("duplicate"), "{again}");
    assert_eq!(d.count(LIST), 1);
    let hidden = "Message-ID: <hidden@example.org>\r\nX-No-Archive: yes\r\nSubject: secret budget\r\n\r\nplatypus";
    assert!(send_raw(d.smtp, LIST, hidden).starts_with("250"));
    let also = "Message-ID: <hidden2@example.org>\r\nArchive: no\r\nSubject: secret budget\r\n\r\nplatypus";
    assert!(send_raw(d.smtp, LIST, also).starts_with("250"));
    assert_eq!(d.count(LIST), 1);
    assert_eq!(d.get("/lists/gov@lists.example.org/m/hidden@example.org/").0, 404);
    assert_eq!(
        d.get("/api/v1/lists/gov@lists.example.org/messages/hidden2@example.org")
            .0,
        404
    );
    let marker = "Message-ID: <after@example.org>\r\nSubject: marker\r\n\r\nplatypus marker";
    assert!(send_raw(d.smtp, LIST, marker).starts_with("250"));
    assert_eq!(
        d.wait_search("platypus", 1)["total"],
        1,
        "only the archivable message is indexed"
    );
}

#[test]
fn lmtp_gives_one_reply_per_recipient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(dir.path(), "lmtp_listen = \"127.0.0.1:0\"", "");
    d.create_list(LIST);
    d.create_list("second@lists.example.org");
    let lmtp = d.lmtp.expect("lmtp listener");
    let mut c = Smtp::open(lmtp);
    assert!(c.cmd("EHLO x").starts_with("503"), "LMTP wants LHLO");
    assert!(c.cmd("LHLO mta.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("RCPT TO:<nobody@lists.example.org>").starts_with("550"));
    assert!(c.cmd("RCPT TO:<second@lists.example.org>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Message-ID: <lmtp-1@example.org>\r\nSubject: via lmtp\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    assert_eq!(d.count(LIST), 1);
    assert_eq!(d.count("second@lists.example.org"), 1);
}

/// RFC 2033: each recipient's reply tells its own outcome. A list whose policy refuses the
/// post answers 550 for itself while the others answer 250 (SMTP has one shared reply).
#[test]
fn lmtp_reports_a_policy_refusal_for_its_own_recipient_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(dir.path(), "lmtp_listen = \"127.0.0.1:0\"", "");
    let closed = "closed@lists.example.org";
    let open2 = "second@lists.example.org";
    for l in [LIST, closed, open2] {
        d.create_list(l);
    }
    d.cli_ok(&["list", "set", closed, "posting=members", "nonmember=reject"]);
    let lmtp = d.lmtp.expect("lmtp listener");
    let mut c = Smtp::open(lmtp);
    assert!(c.cmd("LHLO mta.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<outsider@t.test>").starts_with("250"));
    for l in [LIST, closed, open2] {
        assert!(c.cmd(&format!("RCPT TO:<{l}>")).starts_with("250"), "{l}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(
        b"From: outsider@t.test\r\nMessage-ID: <lmtp-2@example.org>\r\nSubject: to three lists\r\n\r\nhello\r\n.\r\n",
    );
    let replies: Vec<String> = (0..3).map(|_| c.reply()).collect();
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(
        replies[1].starts_with("550"),
        "the closed list refuses for itself: {replies:?}"
    );
    assert!(replies[2].starts_with("250"), "{replies:?}");
    assert!(c.cmd("QUIT").starts_with("221"));
    assert_eq!(d.count(LIST), 1);
    assert_eq!(d.count(open2), 1);
    assert_eq!(d.count(closed), 0);
}

#[test]
fn cli_works_beside_the_daemon_and_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = daemon(dir.path());
    // Through the admin socket while the daemon holds the database.
    let out = d.cli(&["list", "ls"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(LIST));
    let bad = d.cli(&["list", "create", "not an address"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid list address"));
    let dup = d.cli(&["list", "create", LIST]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let mbox = dir.path().join("a.mbox");
    std::fs::write(&mbox, "From x@y Thu Jun 10 12:00:00 1999\nMessage-ID: <imp-1@x>\nDate: Thu, 10 Jun 1999 12:00:00 +0000\nSubject: imported one\n\nnarwhal\n\nFrom x@y Thu Jun 10 13:00:00 1999\nSubject: no id, no date\n\nnarwhal two\n").expect("write");
    let out = d.cli(&["import", "--list", LIST, &mbox.to_string_lossy()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("2 messages read: 2 imported, 0 duplicates, 1 repaired, 0 rejected"),
        "{text}"
    );
    let again = d.cli(&["import", "--list", LIST, &mbox.to_string_lossy()]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 imported, 2 duplicates"));
    assert_eq!(d.wait_search("narwhal", 2)["total"], 2);
    // The repaired date comes from the mbox separator line.
    let (_, june) = d.get("/lists/gov@lists.example.org/1999/06/");
    assert!(june.contains("no id, no date"), "{june}");
    // A second daemon on the same data refuses to start (F-16).
    let second = std::process::Command::new(plenary_e2e::binary())
        .arg("--config")
        .arg(&d.config)
        .arg("serve")
        .output()
        .expect("run");
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // Stopped: the CLI opens the data itself.
    assert_eq!(d.stop(), Some(0), "SIGTERM exits cleanly");
    let out = d.cli(&["list", "create", "offline@lists.example.org"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = d.cli(&["index", "rebuild"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("index rebuilt: 2 messages"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_config_names_every_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[smtp]\nlisten = \"nope\"\nmax_errors = -1\ncolour = 1\n[web]\npage_size = \"x\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(plenary_e2e::binary())
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for k in [
        "smtp.listen",
        "smtp.max_errors",
        "smtp.colour",
        "web.page_size",
        "4 problems",
    ] {
        assert!(err.contains(k), "missing {k}: {err}");
    }
    let ok = std::process::Command::new(plenary_e2e::binary())
        .arg("--config")
        .arg(plenary_e2e::workspace().join("config/plenary.toml"))
        .args(["config", "check"])
        .output()
        .expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

/// A start-up error is one clear message and a failed exit, never a panic, and nothing is
/// served: a port in use, an admin socket that cannot be made, a broken template. (The
/// first used to panic: the indexer thread had already started and used the runtime's timer
/// while it shut down.)
#[test]
fn start_up_errors_are_reported_without_a_panic() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to occupy");
    let port = busy.local_addr().expect("local addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).expect("mkdir");
    std::fs::write(templates.join("base.html"), "{% if %}broken").expect("write template");
    let cases = [
        (
            format!("[smtp]\nlisten = \"127.0.0.1:{port}\"\n[web]\nlisten = \"127.0.0.1:0\"\n"),
            "cannot listen for SMTP on 127.0.0.1:",
        ),
        (
            format!(
                "[smtp]\nlisten = \"127.0.0.1:0\"\n[web]\nlisten = \"127.0.0.1:0\"\n[admin]\nsocket = \"{}\"\n",
                dir.path().join("no/such/dir/admin.sock").display()
            ),
            "cannot create the admin socket",
        ),
        (
            format!(
                "[smtp]\nlisten = \"127.0.0.1:0\"\n[web]\nlisten = \"127.0.0.1:0\"\ntemplates_dir = \"{}\"\n",
                templates.display()
            ),
            "template base.html",
        ),
    ];
    for (i, (extra, want)) in cases.iter().enumerate() {
        let cfg = dir.path().join(format!("c{i}.toml"));
        let data = dir.path().join(format!("data{i}"));
        std::fs::write(
            &cfg,
            format!("[data]\ndir = \"{}\"\nmin_free_mb = 0\n{extra}", data.display()),
        )
        .expect("write config");
        let out = std::process::Command::new(plenary_e2e::binary())
            .arg("--config")
            .arg(&cfg)
            .arg("serve")
            .output()
            .expect("run plenary serve");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i}: serve must fail; stderr:\n{err}");
        assert!(err.contains(want), "case {i}: want {want:?} in stderr:\n{err}");
        assert!(
            !err.contains("panicked"),
            "case {i}: a start-up error must not panic:\n{err}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("plenary: listening"),
            "case {i}: a daemon that failed to start must not say it is listening"
        );
    }
    drop(busy);
}

/// A post to an open list with no members is archived and leaves no delivery job: none is
/// made (the ingest benchmark's case; the store's unit test checks that a member brings it).
#[test]
fn posts_to_a_list_without_members_leave_no_delivery_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    for i in 0..20 {
        let r = send_raw(
            d.smtp,
            LIST,
            &format!("Message-ID: <nomembers-{i}@example.org>\r\nSubject: n {i}\r\n\r\nbody\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    assert_eq!(d.count(LIST), 20);
    let mut q = String::new();
    for _ in 0..100 {
        q = d.cli_ok(&["queue"]);
        if q.starts_with("0 jobs") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(q.starts_with("0 jobs (0 walking), 0 deliveries"), "{q}");
}

/// The README's first command: `plenary serve --demo` with no config file at all keeps its
/// data in `./data`, listens for SMTP on 127.0.0.1:2525 and the web on 127.0.0.1:8080, and
/// shows a demo list with an archive; a post sent as the README shows appears on it. Those
/// fixed ports must be free (they are on CI; elsewhere the test says SKIPPED if not).
#[test]
fn serve_demo_runs_on_the_embedded_defaults() {
    for port in [2525, 8080] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "127.0.0.1:{port} is taken, and CI must run the no-config test"
            );
            eprintln!("SKIPPED no-config test: 127.0.0.1:{port} is in use");
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(plenary_e2e::binary())
        .args(["serve", "--demo"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start plenary serve --demo");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let child = Kill(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("first line");
    assert!(
        line.starts_with("plenary: listening smtp=127.0.0.1:2525 web=http://127.0.0.1:8080/"),
        "{line}"
    );
    assert!(dir.path().join("data/sled").is_dir(), "data in ./data");
    let web: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let (status, home) = plenary_e2e::http_get(web, "/");
    assert_eq!(status, 200);
    assert!(home.contains("demo@plenary.localhost"), "{home}");
    let (status, _) = plenary_e2e::http_get(web, "/lists/demo@plenary.localhost/");
    assert_eq!(status, 200);
    let (status, api) = plenary_e2e::http_get(web, "/api/v1/lists/demo@plenary.localhost/messages");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&api).expect("JSON");
    assert!(
        v["total"].as_u64().unwrap_or(0) > 0,
        "the demo list has an archive: {v}"
    );
    let smtp: std::net::SocketAddr = "127.0.0.1:2525".parse().expect("addr");
    let r = plenary_e2e::send_from(
        smtp,
        "me@example.org",
        "demo@plenary.localhost",
        "From: Me <me@example.org>\r\nSubject: Hello from the README\r\nMessage-ID: <readme@example.org>\r\n\r\nMy first post.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let (status, page) = plenary_e2e::http_get(web, "/lists/demo@plenary.localhost/m/readme@example.org/");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("My first post."));
    drop(child);
}

/// Nice value of each thread of a process, by thread name (from /proc; Linux only).
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's /proc entry");
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let nice = stat[close + 2..]
            .split_ascii_whitespace()
            .nth(16)
            .and_then(|v| v.parse().ok());
        if let Some(nice) = nice {
            out.push((name, nice));
        }
    }
    out
}

#[test]
fn search_indexing_runs_below_the_smtp_sessions_priority() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: reads thread priorities from /proc");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path());
    let msg = Message::builder()
        .from("Ada <ada@example.org>".parse().expect("from"))
        .to(LIST.parse().expect("to"))
        .subject("priority check")
        .body("indexed by a lowered thread, numbat".to_string())
        .expect("message");
    lettre(&d).send(&msg).expect("sent");
    assert_eq!(d.wait_search("numbat", 1)["total"], 1);
    // The index writer stays up for a few seconds after its last commit, so tantivy's
    // indexing thread is there to be checked too.
    let threads = thread_nice(d.pid());
    let nice_of = |prefix: &str| -> Vec<i64> {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| *v)
            .collect()
    };
    let main = threads
        .iter()
        .find(|(n, _)| n == "plenary")
        .map(|(_, v)| *v)
        .expect("the main thread");
    if main >= 19 {
        eprintln!("skipped: the daemon already runs at the lowest priority (nice {main})");
        return;
    }
    let lowered = main + 10;
    assert_eq!(nice_of("plenary-index"), vec![lowered], "{threads:?}");
    // Every thread of tantivy's writer (made on the indexer thread, not at start-up):
    // indexing, segment updater, merges.
    for prefix in ["thrd-tantivy", "segment_update", "merge_thread"] {
        let t = nice_of(prefix);
        assert!(!t.is_empty(), "tantivy's {prefix} thread is up: {threads:?}");
        assert!(t.iter().all(|v| *v == lowered), "{prefix}: {threads:?}");
    }
    let workers = nice_of("tokio-rt-worker");
    assert!(!workers.is_empty() && workers.iter().all(|v| *v == main), "{threads:?}");
}
