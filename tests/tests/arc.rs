//! ARC sealing end to end: the real daemon with `[arc] enabled = true`, a real DNS server
//! (`tests/py/dns_server.py`) holding the author domain's DKIM key, SPF and DMARC records,
//! the capture relay, and dkimpy's ARC verifier (`tests/py/arc_verify.py`), which must
//! validate every copy and must refuse a copy whose Subject was changed afterwards. A post
//! that arrives with an ARC chain (sealed by a forwarder with dkimpy) gets the next
//! instance, with `cv=pass`. A post handed over by a front MTA over LMTP gets DKIM and ARC
//! results only (SPF would check the front MTA, not the sender).

use plenary_e2e::{base64, openssl, send_from, start_dns, Daemon, Relay, Smtp};
use std::process::{Command, Stdio};

const LIST: &str = "coalition@lists.example.org";

fn public_key_b64(pem: &std::path::Path) -> String {
    base64(&openssl(&[
        "rsa",
        "-in",
        &pem.to_string_lossy(),
        "-pubout",
        "-outform",
        "DER",
    ]))
}

/// `msg` signed by dkimpy with `key` for `d=domain; s=selector`.
fn dkim_signed(key: &std::path::Path, selector: &str, domain: &str, msg: &str) -> String {
    run_py("dkim_sign.py", key, selector, domain, msg)
}

/// `msg` ARC-sealed by dkimpy (instance 1) as `domain` would seal it.
fn arc_sealed(key: &std::path::Path, selector: &str, domain: &str, msg: &str) -> String {
    run_py("arc_sign.py", key, selector, domain, msg)
}

fn run_py(script: &str, key: &std::path::Path, selector: &str, domain: &str, msg: &str) -> String {
    let mut child = Command::new("/usr/bin/python3")
        .arg(plenary_e2e::workspace().join("tests/py").join(script))
        .args([&key.to_string_lossy(), selector, domain])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(msg.as_bytes()).expect("write the message");
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[derive(serde::Deserialize, Debug)]
struct Verified {
    rcpts: Vec<String>,
    subject: String,
    cv: String,
    aar: String,
    seal: String,
}

#[test]
fn posts_are_arc_sealed_with_the_results_the_list_saw() {
    let dir = tempfile::tempdir().expect("tempdir");
    let list_key = dir.path().join("list.pem");
    openssl(&["genrsa", "-out", &list_key.to_string_lossy(), "2048"]);
    let author_key = dir.path().join("author.pem");
    openssl(&["genrsa", "-out", &author_key.to_string_lossy(), "2048"]);
    let forwarder_key = dir.path().join("forwarder.pem");
    openssl(&["genrsa", "-out", &forwarder_key.to_string_lossy(), "2048"]);
    let dns = start_dns(
        dir.path(),
        &format!(
            r#"{{
                "a1._domainkey.author.example": ["v=DKIM1; k=rsa; p={}"],
                "author.example": ["v=spf1 ip4:127.0.0.1 -all"],
                "_dmarc.author.example": ["v=DMARC1; p=reject"],
                "f1._domainkey.forwarder.example": ["v=DKIM1; k=rsa; p={}"]
            }}"#,
            public_key_b64(&author_key),
            public_key_b64(&forwarder_key)
        ),
    );
    let relay = Relay::start(&dir.path().join("relay"));
    let d = Daemon::start(
        dir.path(),
        "lmtp_listen = \"127.0.0.1:0\"",
        &format!(
            "[relay]\nport = {}\n\n[dns]\nservers = \"127.0.0.1:{}\"\ntimeout_secs = 2\n\n[dkim]\nselector = \"test\"\nrsa_key = \"{}\"\n\n[arc]\nenabled = true\nauthserv_id = \"lists.example.org\"\n",
            relay.port,
            dns.port,
            list_key.display()
        ),
    );
    d.create_list(LIST);
    // A subject tag and a footer: the author's DKIM signature cannot survive them, which
    // is what ARC is for.
    d.cli_ok(&["list", "set", LIST, "subject_prefix=[dc]", "footer=Coalition list"]);
    d.cli_stdin(
        &["member", "add", LIST, "-"],
        "reader1@example.net\nreader2@example.net\n",
    );

    let signed = dkim_signed(
        &author_key,
        "a1",
        "author.example",
        &format!("From: Ana <ana@author.example>\r\nTo: {LIST}\r\nSubject: signed post\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <arc-1@author.example>\r\n\r\nHello from Ana.\r\n"),
    );
    let r = send_from(d.smtp, "ana@author.example", LIST, &signed);
    assert!(r.starts_with("250"), "{r}");
    // With a forged Authentication-Results in our name, which must not reach anyone.
    let unsigned = format!("Authentication-Results: lists.example.org; dkim=pass header.d=bank.example\r\nFrom: Bo <bo@other.example>\r\nTo: {LIST}\r\nSubject: unsigned post\r\nDate: Mon, 23 Nov 2026 10:01:00 +0000\r\nMessage-ID: <arc-2@other.example>\r\n\r\nHello from Bo.\r\n");
    let r = send_from(d.smtp, "bo@other.example", LIST, &unsigned);
    assert!(r.starts_with("250"), "{r}");

    let forwarded = arc_sealed(
        &forwarder_key,
        "f1",
        "forwarder.example",
        &format!("From: Cy <cy@forwarder.example>\r\nTo: {LIST}\r\nSubject: forwarded post\r\nDate: Mon, 23 Nov 2026 10:02:00 +0000\r\nMessage-ID: <arc-3@forwarder.example>\r\n\r\nHello through a forwarder.\r\n"),
    );
    let r = send_from(d.smtp, "cy@forwarder.example", LIST, &forwarded);
    assert!(r.starts_with("250"), "{r}");

    // The same author, handed over by a front MTA over LMTP.
    let via_lmtp = dkim_signed(
        &author_key,
        "a1",
        "author.example",
        &format!("From: Ana <ana@author.example>\r\nTo: {LIST}\r\nSubject: lmtp post\r\nDate: Mon, 23 Nov 2026 10:03:00 +0000\r\nMessage-ID: <arc-4@author.example>\r\n\r\nHello through the front MTA.\r\n"),
    );
    let mut c = Smtp::open(d.lmtp.expect("lmtp listener"));
    assert!(c.cmd("LHLO mx.lists.example.org").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<ana@author.example>").starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(via_lmtp.as_bytes());
    c.send(b"\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");

    let got = relay.wait_for("four posts to both members", 60, |m| m.len() >= 8);
    assert_eq!(got.len(), 8, "{got:#?}");
    // The copies of a post differ in their one-click tokens (one per member), and one
    // seal per post still covers every copy.
    let unsub: std::collections::BTreeSet<_> = got
        .iter()
        .filter(|m| m.header("Subject").as_deref() == Some("[dc] signed post"))
        .filter_map(|m| m.header("List-Unsubscribe"))
        .collect();
    assert_eq!(unsub.len(), 2, "each member's copy has its own List-Unsubscribe");

    let out = Command::new("/usr/bin/python3")
        .arg(plenary_e2e::workspace().join("tests/py/arc_verify.py"))
        .arg(relay.dir.join("messages.jsonl"))
        .args(["test", "lists.example.org", &public_key_b64(&list_key)])
        .arg(format!("f1:forwarder.example:{}", public_key_b64(&forwarder_key)))
        .output()
        .expect("run arc_verify.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ARC verification failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verified: Vec<Verified> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(verified.len(), 8, "every copy carries a verified ARC set: {stdout}");
    for v in &verified {
        assert_eq!(v.cv, "pass", "{v:?}");
        assert!(
            v.seal.contains("d=lists.example.org") && v.seal.contains("s=test"),
            "{v:?}"
        );
        if v.subject == "[dc] forwarded post" {
            // The forwarder's chain validated, so ours continues it.
            assert!(v.seal.starts_with("i=2;") && v.seal.contains("cv=pass"), "{v:?}");
            assert!(
                v.aar.starts_with("i=2; lists.example.org") && v.aar.contains("arc=pass"),
                "{v:?}"
            );
            continue;
        }
        assert!(
            v.seal.starts_with("i=1;") && v.seal.contains("cv=none"),
            "a new chain: {v:?}"
        );
        assert!(
            v.aar.starts_with("i=1; lists.example.org") && v.aar.contains("arc=none"),
            "{v:?}"
        );
        if v.subject == "[dc] lmtp post" {
            assert!(v.aar.contains("dkim=pass"), "{v:?}");
            assert!(
                !v.aar.contains("spf=") && !v.aar.contains("dmarc="),
                "no SPF of the front MTA: {v:?}"
            );
        } else if v.subject == "[dc] signed post" {
            // What the list saw before it changed the post.
            assert!(
                v.aar.contains("dkim=pass header.i=@author.example")
                    || v.aar.contains("dkim=pass header.d=author.example"),
                "{v:?}"
            );
            assert!(
                v.aar.contains("spf=pass") && v.aar.contains("smtp.mailfrom=ana@author.example"),
                "{v:?}"
            );
            assert!(
                v.aar.contains("dmarc=pass") && v.aar.contains("header.from=author.example"),
                "{v:?}"
            );
        } else {
            assert_eq!(v.subject, "[dc] unsigned post", "{v:?}");
            // No signature: no DKIM result (mail-auth lists only signatures it checked).
            assert!(!v.aar.contains("dkim="), "{v:?}");
            assert!(
                v.aar.contains("spf=none") && v.aar.contains("smtp.mailfrom=bo@other.example"),
                "{v:?}"
            );
            assert!(v.aar.contains("dmarc=none header.from=other.example"), "{v:?}");
        }
        assert_eq!(v.rcpts.len(), 1, "one copy per recipient");
    }
    // One seal per post: both members' copies carry the very same ARC-Seal.
    for subject in [
        "[dc] signed post",
        "[dc] unsigned post",
        "[dc] forwarded post",
        "[dc] lmtp post",
    ] {
        let seals: std::collections::BTreeSet<&str> = verified
            .iter()
            .filter(|v| v.subject == subject)
            .map(|v| v.seal.as_str())
            .collect();
        assert_eq!(seals.len(), 1, "{subject}: {seals:?}");
    }
    assert!(
        !got.iter().any(|m| m.data.contains("bank.example")),
        "forged Authentication-Results passed"
    );
}
