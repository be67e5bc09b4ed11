//! SECURITY.md attack battery, SMTP rows: exact bytes over a real socket against the real
//! daemon. Every case checks the replies *and* that nothing extra was stored.

use plenary_e2e::{corpora, send_raw, Daemon, Smtp};
use std::time::{Duration, Instant};

const LIST: &str = "list@lists.example.org";

fn daemon(dir: &std::path::Path, smtp: &str) -> Daemon {
    let d = Daemon::start(dir, smtp, "");
    d.create_list(LIST);
    d
}

/// EHLO, MAIL, RCPT, DATA and wait for 354 ("PRE" in SECURITY.md).
fn pre(d: &Daemon) -> Smtp {
    let mut c = Smtp::open(d.smtp);
    assert!(c.cmd("EHLO t.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c
}

fn alive(d: &Daemon) {
    assert_eq!(d.get("/healthz").0, 200, "daemon must survive; log:\n{}", d.log_text());
}

/// After 354: send `data`; expect a 521 and the connection closed at once (whatever follows
/// a bare CR/LF or NUL is never read as commands).
fn refused_and_closed(d: &Daemon, data: &[u8]) {
    let mut c = pre(d);
    c.send(data);
    let r = c.reply();
    assert!(r.starts_with("521 5.5.2"), "expected 521, got {r:?}");
    assert_eq!(c.reply(), "", "no reply may follow (a smuggled command was answered)");
    assert!(c.closed(), "connection must be closed");
}

fn smuggle(fake_end: &[u8]) -> Vec<u8> {
    let mut b = b"Subject: s\r\n\r\nhi".to_vec();
    b.extend_from_slice(fake_end);
    b.extend_from_slice(b"MAIL FROM:<x@evil.test>\r\nRCPT TO:<list@lists.example.org>\r\nDATA\r\nFrom: ceo@victim.test\r\n\r\nsmuggled\r\n.\r\n");
    b
}

/// After 354: send `data`, expect exactly one non-250 reply, then the stream is in sync.
fn refused_in_sync(d: &Daemon, data: &[u8], expect_prefix: &str) {
    let mut c = pre(d);
    c.send(data);
    let r = c.reply();
    assert!(r.starts_with(expect_prefix), "expected {expect_prefix}, got {r:?}");
    let q = c.cmd("QUIT");
    assert!(q.starts_with("221"), "stream out of sync after refusal: {q:?}");
}

#[test]
fn sm_smuggling_vectors_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "");
    let vectors: &[&[u8]] = &[
        b"\n.\r\n",       // SM-01
        b"\n.\n",         // SM-02
        b"\r\n.\n",       // SM-02
        b"\r.\r",         // SM-03
        b"\r\n.\rX",      // SM-03 lone CR
        b"\r\n\x00.\r\n", // SM-03 NUL
        b"\r\n.\x00\r\n", // SM-03 NUL
        b"\r\r\n.\r\n",   // SM-04
        b"\r\n.\r\r\n",   // SM-04
    ];
    for v in vectors {
        refused_and_closed(&d, &smuggle(v));
    }
    // SM-01 again with PRE and body in one TCP write: no 354 was waited for.
    let mut c = Smtp::open(d.smtp);
    let mut one = b"EHLO t.test\r\nMAIL FROM:<a@t.test>\r\nRCPT TO:<list@lists.example.org>\r\nDATA\r\n".to_vec();
    one.extend_from_slice(&smuggle(b"\n.\r\n"));
    c.send(&one);
    let mut replies = String::new();
    loop {
        let r = c.reply();
        if r.is_empty() {
            break;
        }
        assert!(!r.starts_with("250 2.0.0"), "a message was accepted: {replies}{r}");
        replies.push_str(&r);
    }
    assert!(replies.contains("554 5.5.0"), "improper pipelining refused: {replies}");
    // SM-06: a lone CR inside a header.
    refused_and_closed(&d, b"Subject: a\rBcc: victim@x.test\r\n\r\nbody\r\n.\r\n");
    assert_eq!(d.count(LIST), 0, "nothing may be stored");
    // The stream really is CRLF-exact: a clean message afterwards is accepted once.
    assert!(send_raw(d.smtp, LIST, "Message-ID: <clean@x>\r\n\r\nclean").starts_with("250"));
    assert_eq!(d.count(LIST), 1);
    alive(&d);
}

#[test]
fn corpus_smuggling_streams_are_refused() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora is not present");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "");
    let streams = c.join("adversarial/smtp-smuggling/data-streams");
    let mut n = 0;
    for e in std::fs::read_dir(&streams).expect("streams") {
        let p = e.expect("entry").path();
        let bytes = std::fs::read(&p).expect("read");
        eprintln!("stream {}", p.display());
        refused_and_closed(&d, &bytes);
        n += 1;
    }
    assert_eq!(n, 12, "all twelve corpus streams");
    assert_eq!(d.count(LIST), 0);
    alive(&d);
}

#[test]
fn s_command_and_data_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "max_message_size = 100000\nmax_errors = 10");
    // S-01: long command lines are refused without buffering them whole.
    let mut c = Smtp::open(d.smtp);
    c.send(&[b'A'; 2049]);
    c.send(b"\r\n");
    assert!(c.reply().starts_with("500 5.5.2"));
    let rss_before = rss(d.pid());
    let mut big = vec![b'B'; 10 * 1024 * 1024];
    big.extend_from_slice(b"\r\n");
    c.send(&big);
    assert!(c.reply().starts_with("500 5.5.2"));
    let rss_after = rss(d.pid());
    assert!(
        rss_after < rss_before + 8 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB on a 10 MB line"
    );
    assert!(c.cmd("NOOP").starts_with("250"), "still in sync");
    // S-02: a 5 MB body line.
    let mut line = vec![b'x'; 5 * 1024 * 1024];
    line.extend_from_slice(b"\r\n.\r\n");
    let mut big_body = b"Subject: long\r\n\r\n".to_vec();
    big_body.extend_from_slice(&line);
    refused_in_sync(&d, &big_body, "55");
    // S-03: SIZE declared too big, and a body over the limit without SIZE.
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    assert!(c.cmd("MAIL FROM:<a@t.test> SIZE=100001").starts_with("552 5.3.4"));
    let mut body = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..2000 {
        body.extend_from_slice(&[b'y'; 98]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    refused_in_sync(&d, &body, "552 5.3.4");
    // S-05: pipelining without EHLO, in one write.
    let mut c = Smtp::open(d.smtp);
    c.send(b"HELO x\r\nMAIL FROM:<a@t>\r\nRCPT TO:<list@lists.example.org>\r\nDATA\r\nbody\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("554 5.5.0"), "{r}");
    assert!(c.closed());
    // S-06: pipelining after a rejected recipient, then 1,000 bogus commands.
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    c.send(b"MAIL FROM:<a@t>\r\nRCPT TO:<nolist@lists.example.org>\r\nDATA\r\nRCPT TO:<list@lists.example.org>\r\nDATA\r\nevil\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("550"));
    let r = c.reply();
    assert!(r.starts_with("554"), "{r}");
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    c.send(&b"BOGUS\r\n".repeat(1000));
    let mut last = String::new();
    for _ in 0..11 {
        last = c.reply();
    }
    assert!(last.starts_with("421 4.7.0"), "{last}");
    assert!(c.closed());
    // S-08: envelope strings are never interpreted.
    let marker = dir.path().join("pwned");
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    let r = c.cmd(&format!("MAIL FROM:<`touch {}`@t.test>", marker.display()));
    assert!(
        r.starts_with("250") || r.starts_with("501") || r.starts_with("553"),
        "{r}"
    );
    c.cmd("RSET");
    let r = c.cmd("MAIL FROM:<\"|sh -c id\"@t.test>");
    assert!(
        r.starts_with("250") || r.starts_with("501") || r.starts_with("553"),
        "{r}"
    );
    let r = c.cmd("RCPT TO:<${run{/bin/id}}@lists.example.org>");
    assert!(r.starts_with('5'), "{r}");
    assert!(!marker.exists());
    // S-09: address length and bytes.
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    assert!(c
        .cmd(&format!("MAIL FROM:<{}@t.test>", "a".repeat(65)))
        .starts_with("553"));
    assert!(c
        .cmd(&format!("MAIL FROM:<a@{}.test>", "b".repeat(995)))
        .starts_with("5"));
    assert!(c
        .cmd(&format!("MAIL FROM:<{}@t.test>", "c".repeat(100_000)))
        .starts_with("500"));
    assert!(c.cmd("MAIL FROM:<a\0b@t>").starts_with("501"));
    c.send(b"EHLO \xff\xfe\r\n");
    assert!(c.reply().starts_with("501"));
    assert!(c.cmd("NOOP").starts_with("250"));
    // S-10: RCPT flood; duplicates collapse and the cap answers 452.
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    c.cmd("MAIL FROM:<a@t.test>");
    c.send(&b"RCPT TO:<list@lists.example.org>\r\n".repeat(10_000));
    let mut ok = 0;
    let mut full = 0;
    for _ in 0..10_000 {
        let r = c.reply();
        if r.starts_with("250") {
            ok += 1;
        } else if r.starts_with("452 4.5.3") {
            full += 1;
        }
    }
    assert_eq!((ok, full), (100, 9_900));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Message-ID: <flood@x>\r\n\r\none copy\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert_eq!(d.count(LIST), 1, "stored once");
    alive(&d);
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn s_timeouts_early_talkers_and_connection_caps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(
        dir.path(),
        "max_connections_per_ip = 10\ngreeting_delay_ms = 300\ncommand_timeout_secs = 2\ndata_timeout_secs = 2\nsession_timeout_secs = 4",
        "",
    );
    d.create_list(LIST);
    // S-04: talking before the greeting.
    let mut c = Smtp::connect(d.smtp);
    c.send(b"EHLO x\r\n");
    let r = c.reply();
    assert!(r.starts_with("554"), "{r}");
    assert!(c.closed());
    // S-11: per-IP cap, and idle connections are closed.
    let mut conns: Vec<Smtp> = (0..14).map(|_| Smtp::connect(d.smtp)).collect();
    let replies: Vec<String> = conns.iter_mut().map(|c| c.reply()).collect();
    let greeted = replies.iter().filter(|r| r.starts_with("220")).count();
    let refused = replies.iter().filter(|r| r.starts_with("421 4.7.0")).count();
    assert_eq!((greeted, refused), (10, 4), "{replies:?}");
    assert_eq!(d.get("/healthz").0, 200, "web unaffected");
    let started = Instant::now();
    for c in conns.iter_mut().filter(|_| true).take(10) {
        let r = c.reply();
        if !r.is_empty() {
            assert!(r.starts_with("421 4.4.2"), "{r}");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle timeout closes connections"
    );
    drop(conns);
    std::thread::sleep(Duration::from_millis(200));
    // S-12: slow DATA is cut off by the session cap.
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    c.cmd("MAIL FROM:<a@t.test>");
    c.cmd(&format!("RCPT TO:<{LIST}>"));
    assert!(c.cmd("DATA").starts_with("354"));
    let start = Instant::now();
    let mut r = String::new();
    while start.elapsed() < Duration::from_secs(15) {
        c.send(b"x");
        std::thread::sleep(Duration::from_millis(500));
        if start.elapsed() > Duration::from_secs(3) {
            r = c.reply();
            break;
        }
    }
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert_eq!(d.count(LIST), 0);
}

#[test]
fn s13_s14_header_bombs_and_loops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "");
    // S-13: 200,000 header fields, and one 20 MB folded header.
    let mut m = b"X:a\r\n".repeat(200_000);
    m.extend_from_slice(b"\r\nbody\r\n.\r\n");
    refused_in_sync(&d, &m, "554 5.6.0");
    let mut folded = b"Subject: x".to_vec();
    for _ in 0..(20 * 1024 * 1024 / 100) {
        folded.extend_from_slice(b"\r\n ");
        folded.extend_from_slice(&[b'z'; 97]);
    }
    folded.extend_from_slice(b"\r\n\r\nbody\r\n.\r\n");
    refused_in_sync(&d, &folded, "554 5.6.0");
    // S-14: our own List-Id, our X-Loop, too many Received headers.
    refused_in_sync(
        &d,
        b"List-Id: Test <list.lists.example.org>\r\n\r\nloop\r\n.\r\n",
        "554 5.4.6",
    );
    refused_in_sync(&d, b"X-Loop: list@lists.example.org\r\n\r\nloop\r\n.\r\n", "554 5.4.6");
    let mut hops = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n".repeat(31);
    hops.extend_from_slice(b"\r\nloop\r\n.\r\n");
    refused_in_sync(&d, &hops, "554 5.4.6");
    assert_eq!(d.count(LIST), 0);
    alive(&d);
}

#[test]
fn r01_r02_no_open_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "max_errors = 50");
    let mut c = Smtp::open(d.smtp);
    c.cmd("EHLO t.test");
    c.cmd("MAIL FROM:<a@t.test>");
    for rcpt in [
        "v@other.test",
        "v%other.test@lists.example.org",
        "@lists.example.org:v@other.test",
        "other.test!v@lists.example.org",
        "\"v@other.test\"@lists.example.org",
        "v@[192.0.2.1]",
        "list@lists.example.org.",
        "nosuchlist@lists.example.org",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert!(
            r.starts_with("550") || r.starts_with("554") || r.starts_with("501") || r.starts_with("553"),
            "{rcpt}: {r}"
        );
    }
    assert!(
        c.cmd("RCPT TO:<nosuchlist@lists.example.org>").starts_with("550 5.1.1"),
        "R-02"
    );
    assert!(c.cmd("RCPT TO:<v@other.test>").starts_with("554 5.7.1"), "R-01");
    assert!(c.cmd("DATA").starts_with("554 5.5.1"), "no valid recipients");
    assert!(
        c.cmd("RCPT TO:<LIST@Lists.Example.Org>").starts_with("250"),
        "exact list address, any case"
    );
    alive(&d);
}

#[test]
fn m_mime_bombs_never_crash_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), "max_line_length = 1048576");
    // M-01: 10,000 nested multiparts.
    let mut m = Vec::new();
    for i in 0..10_000 {
        m.extend_from_slice(format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").as_bytes());
    }
    m.extend_from_slice(b"\r\n.\r\n");
    refused_in_sync(&d, &m, "554 5.6.0");
    // M-02: 50,000 message/rfc822 wrappers (aborts mail-parser 0.11 if it ever sees it).
    let mut m = b"Content-Type: message/rfc822\r\n\r\n".repeat(50_000);
    m.extend_from_slice(b".\r\n");
    refused_in_sync(&d, &m, "554 5.6.0");
    // M-03: 1,000,000 parts.
    let mut m = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n".to_vec();
    m.extend_from_slice(&b"--a\r\n\r\nx\r\n".repeat(1_000_000));
    m.extend_from_slice(b".\r\n");
    refused_in_sync(&d, &m, "554 5.6.0");
    // M-04: a 26 MB base64 attachment on one line: over the size cap while streaming.
    let mut m =
        b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    m.extend(std::iter::repeat_n(b'Q', 26 * 1024 * 1024));
    m.extend_from_slice(b"\r\n--a--\r\n.\r\n");
    refused_in_sync(&d, &m, "552 5.3.4");
    assert_eq!(d.count(LIST), 0);
    alive(&d);
    // A nested message under the caps is fine and renders.
    let ok = "Message-ID: <nested@x>\r\nSubject: fwd\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: message/rfc822\r\n\r\nSubject: innermost\r\n\r\ndeep text\r\n";
    assert!(send_raw(d.smtp, LIST, ok).starts_with("250"));
    assert_eq!(d.get("/lists/list@lists.example.org/m/nested@x/").0, 200);
}

#[test]
fn s07_starttls_discards_injected_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(st.status.success(), "openssl: {}", String::from_utf8_lossy(&st.stderr));
    let d = daemon(
        dir.path(),
        &format!("tls_cert = \"{}\"\ntls_key = \"{}\"", cert.display(), key.display()),
    );
    let script = format!(
        r#"
import socket, ssl
s = socket.create_connection(("{ip}", {port}), timeout=10)
f = s.makefile("rb")
def reply():
    out = b""
    while True:
        line = f.readline()
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out.decode()
assert reply().startswith("220")
s.sendall(b"EHLO t.test\r\n")
r = reply(); assert "STARTTLS" in r, r
s.sendall(b"STARTTLS\r\nMAIL FROM:<attacker@t.test>\r\n")
r = reply(); assert r.startswith("220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="localhost")
g = t.makefile("rb")
def treply():
    out = b""
    while True:
        line = g.readline()
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out.decode()
t.sendall(b"RCPT TO:<{LIST}>\r\n")
r = treply(); assert r.startswith("503"), "injected MAIL must be discarded: " + r
t.sendall(b"MAIL FROM:<a@t.test>\r\n")
r = treply(); assert r.startswith("503"), "state reset, EHLO required again: " + r
t.sendall(b"EHLO t.test\r\n")
r = treply(); assert r.startswith("250") and "STARTTLS" not in r, r
t.sendall(b"STARTTLS\r\n")
r = treply(); assert r.startswith("503"), "second STARTTLS: " + r
t.sendall(b"MAIL FROM:<a@t.test>\r\n"); assert treply().startswith("250")
t.sendall(b"RCPT TO:<{LIST}>\r\n"); assert treply().startswith("250")
t.sendall(b"DATA\r\n"); assert treply().startswith("354")
t.sendall(b"Message-ID: <tls@x>\r\nSubject: over tls\r\n\r\nsecret channel\r\n.\r\n")
r = treply(); assert r.startswith("250"), r
print("ok")
"#,
        ip = d.smtp.ip(),
        port = d.smtp.port()
    );
    plenary_e2e::python(&script);
    assert_eq!(d.count(LIST), 1);
}

/// The limits take their configured values, not just their defaults: recipients per
/// message, DATA line length and the daemon-wide connection cap (below the per-IP one).
#[test]
fn configured_limits_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(
        dir.path(),
        "max_recipients = 3\nmax_line_length = 200\nmax_connections = 4\nmax_connections_per_ip = 10",
    );
    let others = ["b@lists.example.org", "c@lists.example.org", "d@lists.example.org"];
    for l in others {
        d.create_list(l);
    }
    let start = |d: &Daemon| {
        let mut c = Smtp::open(d.smtp);
        assert!(c.cmd("EHLO t.test").starts_with("250"));
        assert!(c.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
        c
    };
    // Recipients: the fourth is refused with 452 4.5.3 (RFC 5321 §4.5.3.1.10); the
    // message still goes to the three accepted.
    let mut c = start(&d);
    let replies: Vec<String> = [LIST, others[0], others[1], others[2]]
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>")))
        .collect();
    assert!(replies[..3].iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(replies[3].starts_with("452 4.5.3"), "{replies:?}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Message-ID: <three@x>\r\nSubject: three\r\n\r\nok\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    drop(c);
    assert_eq!(
        (d.count(others[1]), d.count(others[2])),
        (1, 0),
        "stored for the accepted recipients only"
    );
    // Line length: a 199-byte line (with CRLF) passes, a 302-byte one is refused, and
    // nothing of that message is stored.
    let mut c = start(&d);
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let ok_line = "a".repeat(197);
    c.send(format!("Message-ID: <short@x>\r\n\r\n{ok_line}\r\n.\r\n").as_bytes());
    assert!(c.reply().starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@t.test>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let long_line = "b".repeat(300);
    c.send(format!("Message-ID: <long@x>\r\n\r\n{long_line}\r\n.\r\n").as_bytes());
    let r = c.reply();
    assert!(r.starts_with("554 5.6.0") && r.contains("200"), "{r}");
    drop(c);
    assert_eq!(d.count(LIST), 2, "three@x and short@x, not long@x");
    // Connections: four are served, the fifth is told 421 at once. (The sessions above
    // free their slots when the server sees them close, which may lag a little: retry.)
    let served = || {
        for _ in 0..50 {
            let mut c = Smtp::connect(d.smtp);
            if c.reply().starts_with("220") {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no connection slot came free");
    };
    let conns: Vec<Smtp> = (0..4).map(|_| served()).collect();
    let mut fifth = Smtp::connect(d.smtp);
    let r = fifth.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    drop(conns);
    drop(fifth);
    // Capacity comes back once they close.
    for _ in 0..50 {
        let mut c = Smtp::connect(d.smtp);
        if c.reply().starts_with("220") {
            alive(&d);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the connection cap never freed up after the clients left");
}
