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
    let relay = Relay::start(&dir.path().join("relay"));
    let d = Daemon::start(
        dir.path(),
        "",
        &format!(
            "[relay]\nport = {}\n\n[dns]\nservers = \"127.0.0.1:{}\"\ntimeout_secs = 2\n",
            relay.port, dns.port
        ),
    );
    d.create_list(LIST);
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
