//! DMARC mitigation with real DNS lookups: a list with `dmarc = munge` rewrites From only
//! for authors whose domain publishes `p=quarantine`/`p=reject` (directly, or through the
//! organizational domain's `sp=`), and when the lookup fails; `p=none` and domains without
//! a record keep their From. The name server is `tests/py/dns_server.py`, a real UDP DNS server.

use plenary_e2e::{send_from, start_dns, Daemon, Relay};

const LIST: &str = "dmarc@lists.example.org";

#[test]
fn from_is_munged_exactly_for_strict_dmarc_domains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = start_dns(
        dir.path(),
        r#"{
            "_dmarc.strict.example": ["v=DMARC1; p=reject; rua=mailto:agg@strict.example"],
            "_dmarc.quarantine.example": [["v=DMARC1; ", "p=quarantine; pct=100"]],
            "_dmarc.relaxed.example": ["v=DMARC1; p=none"],
            "_dmarc.org.example": ["v=DMARC1; p=none; sp=quarantine"],
            "_dmarc.broken.example": "SERVFAIL",
            "_dmarc.spf.example": ["v=spf1 -all"]
        }"#,
    );
    let (relay, d) = list_with_relay_and_dns(dir.path(), &dns);
    d.cli_ok(&["list", "set", LIST, "dmarc=munge", "subject_prefix=[d]"]);
    d.cli_stdin(&["member", "add", LIST, "-"], "reader@example.net\n");

    // (author, munged?)
    let cases = [
        ("ana@strict.example", true),    // p=reject
        ("bo@quarantine.example", true), // p=quarantine, record in two strings
        ("cy@relaxed.example", false),   // p=none
        ("di@mail.org.example", true),   // no record; organizational domain's sp=quarantine
        ("ed@org.example", false),       // the organizational domain itself: p=none
        ("fa@broken.example", true),     // SERVFAIL: munged to be safe
        ("gu@nowhere.example", false),   // NXDOMAIN: no policy
        ("ha@spf.example", false),       // a TXT record that is not DMARC
    ];
    for (i, (author, _)) in cases.iter().enumerate() {
        let msg = format!(
            "From: Author {i} <{author}>\r\nTo: {LIST}\r\nSubject: case {i}\r\nMessage-ID: <dmarc-{i}@example.org>\r\n\r\nText {i}.\r\n"
        );
        let r = send_from(d.smtp, author, LIST, &msg);
        assert!(r.starts_with("250"), "{author}: {r}");
    }
    let got = relay.wait_for("every case delivered", 60, |m| m.len() >= cases.len());
    for (i, (author, munged)) in cases.iter().enumerate() {
        let m = got
            .iter()
            .find(|m| m.data.contains(&format!("<dmarc-{i}@example.org>")))
            .unwrap_or_else(|| panic!("case {i} ({author}) not delivered"));
        let from = m.header("From").unwrap_or_default();
        if *munged {
            assert_eq!(
                from,
                format!("\"Author {i} via dmarc\" <{LIST}>"),
                "{author} must be munged"
            );
            let reply_to = m.header("Reply-To").unwrap_or_default();
            assert!(
                reply_to.contains(author),
                "{author}: Reply-To keeps the author: {reply_to}"
            );
        } else {
            assert_eq!(from, format!("Author {i} <{author}>"), "{author} keeps its From");
        }
    }
    let queries = std::fs::read_to_string(dir.path().join("dns/queries.log")).unwrap_or_default();
    for q in [
        "TXT _dmarc.mail.org.example",
        "TXT _dmarc.org.example",
        "TXT _dmarc.strict.example",
    ] {
        assert!(queries.lines().any(|l| l == q), "{q} was asked; queries:\n{queries}");
    }
    println!(
        "{} posts, {} munged, {} DNS queries",
        cases.len(),
        cases.iter().filter(|c| c.1).count(),
        queries.lines().count()
    );
}

/// `dmarc = always` munges every author, even one whose domain asks for nothing; `off`
/// (the default, with no subject prefix or footer) changes nothing that the author's DKIM
/// signature covers, so dkimpy still verifies the author's own signature on the copy.
#[test]
fn always_munges_everyone_and_off_keeps_the_authors_signature_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = start_dns(dir.path(), r#"{"_dmarc.relaxed.example": ["v=DMARC1; p=none"]}"#);
    let (relay, d) = list_with_relay_and_dns(dir.path(), &dns);
    d.cli_stdin(&["member", "add", LIST, "-"], "reader@example.net\n");

    d.cli_ok(&["list", "set", LIST, "dmarc=always"]);
    let msg = format!("From: Cy <cy@relaxed.example>\r\nTo: {LIST}\r\nSubject: always\r\nMessage-ID: <always@relaxed.example>\r\n\r\nText.\r\n");
    assert!(send_from(d.smtp, "cy@relaxed.example", LIST, &msg).starts_with("250"));
    let got = relay.wait_for("the always copy", 60, |m| {
        m.iter().any(|x| x.data.contains("<always@relaxed.example>"))
    });
    let m = got
        .iter()
        .find(|x| x.data.contains("<always@relaxed.example>"))
        .expect("copy");
    assert_eq!(
        m.header("From").as_deref(),
        Some(&*format!("\"Cy via dmarc\" <{LIST}>"))
    );
    assert!(m.header("Reply-To").is_some_and(|v| v.contains("cy@relaxed.example")));

    // off: the author signs with their own key (dkimpy); the copy must still verify.
    d.cli_ok(&["list", "set", LIST, "dmarc=off"]);
    let key = dir.path().join("author.pem");
    plenary_e2e::openssl(&["genrsa", "-out", &key.to_string_lossy(), "2048"]);
    let der = plenary_e2e::openssl(&["rsa", "-in", &key.to_string_lossy(), "-pubout", "-outform", "DER"]);
    let pubkey = plenary_e2e::base64(&der);
    let signed = dir.path().join("signed.eml");
    let captured = relay.dir.join("messages.jsonl");
    plenary_e2e::system_python(&format!(
        r#"
import dkim
msg = (b"From: Di <di@author.example>\r\nTo: {LIST}\r\nSubject: signed by the author\r\n"
       b"Date: Tue, 24 Nov 2026 08:00:00 +0000\r\nMessage-ID: <off@author.example>\r\n\r\nA signed post.\r\n")
key = open({key:?}, "rb").read()
sig = dkim.sign(msg, b"a", b"author.example", key, include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
open({signed:?}, "wb").write(sig + msg)
"#,
        key = key.display().to_string(),
        signed = signed.display().to_string(),
    ));
    let raw = std::fs::read_to_string(&signed).expect("signed message");
    assert!(send_from(d.smtp, "di@author.example", LIST, &raw).starts_with("250"));
    relay.wait_for("the off copy", 60, |m| {
        m.iter().any(|x| x.data.contains("<off@author.example>"))
    });
    plenary_e2e::system_python(&format!(
        r#"
import dkim, json
records = {{b"a._domainkey.author.example.": b"v=DKIM1; k=rsa; p={pubkey}"}}
def dnsfunc(name, timeout=5):
    return records.get(name if name.endswith(b".") else name + b".")
for line in open({captured:?}):
    m = json.loads(line)
    data = m["data"].encode("latin-1")
    if b"<off@author.example>" not in data:
        continue
    d = dkim.DKIM(data)
    # idx counts DKIM-Signature fields only.
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    mine = [i for i, v in enumerate(sigs) if b"d=author.example" in v]
    assert mine, "the author's signature is kept"
    assert d.verify(idx=mine[0], dnsfunc=dnsfunc), "the author's DKIM no longer verifies"
    break
else:
    raise SystemExit("no copy of the signed post")
"#,
        captured = captured.display().to_string(),
    ));
}

/// The capture relay, and a daemon that delivers to it, asks `dns` for DMARC policies and
/// has the list `LIST`.
fn list_with_relay_and_dns(dir: &std::path::Path, dns: &plenary_e2e::Dns) -> (Relay, Daemon) {
    let relay = Relay::start(&dir.join("relay"));
    let d = Daemon::start(
        dir,
        "",
        &format!(
            "[relay]\nport = {}\n\n[dns]\nservers = \"127.0.0.1:{}\"\ntimeout_secs = 2\n",
            relay.port, dns.port
        ),
    );
    d.create_list(LIST);
    (relay, d)
}
