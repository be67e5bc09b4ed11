//! The list engine end to end: the real daemon, a real capture relay (`tests/py/relay.py`,
//! which treats a bare LF as a line end like the relays SMTP smuggling abuses), and an
//! independent DKIM verifier (dkimpy).

use plenary_e2e::{http_get_full, http_post, openssl, send_from, Captured, Daemon, Relay};
use std::process::Command;

const LIST: &str = "gov@lists.example.org";

struct Env {
    _dir: tempfile::TempDir,
    d: Daemon,
    relay: Relay,
    pubkey: String,
    ed_pubkey: String,
}

fn env(extra: &str) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("relay"));
    let key = dir.path().join("dkim.pem");
    openssl(&["genrsa", "-out", &key.to_string_lossy(), "2048"]);
    let der = openssl(&["rsa", "-in", &key.to_string_lossy(), "-pubout", "-outform", "DER"]);
    let pubkey = plenary_e2e::base64(&der);
    let ed = dir.path().join("ed25519.pem");
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &ed.to_string_lossy()]);
    let ed_der = openssl(&["pkey", "-in", &ed.to_string_lossy(), "-pubout", "-outform", "DER"]);
    let ed_pubkey = plenary_e2e::base64(&ed_der[ed_der.len() - 32..]);
    let d = Daemon::start(
        dir.path(),
        "",
        &format!(
            "[relay]\nport = {}\n\n[fanout]\nretry_initial_secs = 1\nretry_max_secs = 2\nbatch = 50\n\n[dkim]\nselector = \"test\"\nrsa_key = \"{}\"\ned25519_key = \"{}\"\n\n{extra}",
            relay.port,
            key.display(),
            ed.display()
        ),
    );
    d.create_list(LIST);
    d.cli_ok(&[
        "list",
        "set",
        LIST,
        "posting=members",
        "owners=owner@example.org",
        "subject_prefix=[gov]",
    ]);
    Env {
        _dir: dir,
        d,
        relay,
        pubkey,
        ed_pubkey,
    }
}

fn verify_dkim(e: &Env) -> String {
    let out = Command::new("/usr/bin/python3")
        .arg(plenary_e2e::workspace().join("tests/py/dkim_verify.py"))
        .arg(e.relay.dir.join("messages.jsonl"))
        .args(["test", "lists.example.org", &e.pubkey, &e.ed_pubkey])
        .output()
        .expect("run dkim_verify.py");
    assert!(
        out.status.success(),
        "DKIM verification failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "verified N ed25519 E unsigned U": with keys configured, every message must be signed.
    let counts: Vec<u64> = v.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(
        counts.len() == 3 && counts[0] > 0 && counts[2] == 0,
        "every captured message must be signed and verify: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v
}

fn post(from: &str, id: &str, subject: &str, body: &str) -> String {
    format!("From: {from}\r\nTo: {LIST}\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n")
}

/// The confirmation token in a captured notice (from its Reply-To).
fn token_of(m: &Captured) -> String {
    let rt = m.header("Reply-To").expect("a Reply-To with the token");
    rt.split('+')
        .nth(1)
        .and_then(|t| t.split('@').next())
        .expect("token")
        .to_string()
}

fn member_csv(e: &Env) -> String {
    e.d.cli_ok(&["member", "ls", LIST])
}

fn wait_member(e: &Env, addr: &str, present: bool) {
    for _ in 0..100 {
        if member_csv(e).lines().any(|l| l.starts_with(&format!("{addr},"))) == present {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{addr} member={present} never happened; members:\n{}", member_csv(e));
}

#[test]
fn members_get_one_signed_copy_each_with_list_headers_and_digests_go_to_digest_members() {
    let e = env("");
    let added = e.d.cli_stdin(
        &["member", "add", LIST, "-"],
        "address,name,delivery\nana@example.net,Ana\nbo@example.net,Bo,digest\ncy@example.net,\"Cy, Jr\"\nnomail@example.net,,none\n",
    );
    assert!(added.contains("4 added"), "{added}");
    let r = send_from(
        e.d.smtp,
        "ana@example.net",
        LIST,
        &post(
            "Ana <ana@example.net>",
            "p1@example.net",
            "Agenda",
            "Hello all.\r\n..\r\nA line with a dot.",
        ),
    );
    assert!(r.starts_with("250"), "{r}");
    e.relay.wait_for("copies for ana and cy", 30, |m| m.len() >= 2);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let msgs: Vec<_> = e
        .relay
        .messages()
        .into_iter()
        .filter(|m| m.data.contains("p1@example.net"))
        .collect();
    assert!(msgs.len() >= 2, "{msgs:?}");
    let mut rcpts: Vec<String> = msgs.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["ana@example.net", "cy@example.net"],
        "each-message members get exactly one copy; digest and no-mail members none"
    );
    for m in &msgs {
        let to = &m.rcpts[0];
        let (local, domain) = to.split_once('@').expect("addr");
        assert_eq!(
            m.mail_from,
            format!("gov-bounces+{local}={domain}@lists.example.org"),
            "VERP"
        );
        assert_eq!(
            m.header("List-Id").as_deref(),
            Some("\"Test list\" <gov.lists.example.org>")
        );
        assert_eq!(m.header("List-Post").as_deref(), Some("<mailto:gov@lists.example.org>"));
        assert!(m.header("List-Help").is_some_and(|v| v.contains("gov-request@")));
        assert!(m.header("List-Subscribe").is_some());
        assert!(m.header("List-Owner").is_some_and(|v| v.contains("gov-owner@")));
        assert!(m.header("List-Archive").is_some());
        assert!(m
            .header("Archived-At")
            .is_some_and(|v| v.contains("/lists/gov@lists.example.org/m/p1@example.net/")));
        let unsub = m.header("List-Unsubscribe").expect("List-Unsubscribe");
        assert!(unsub.contains("/u/") && unsub.contains("mailto:gov-leave@"), "{unsub}");
        assert_eq!(
            m.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        // The signature covers the List-* headers (RFC 8058 §4 asks it of the one-click
        // pair); dkimpy checks that it verifies, this checks what it covers.
        let sig = m.header("DKIM-Signature").expect("DKIM-Signature");
        let h: Vec<String> = sig
            .split(';')
            .map(|t| t.split_whitespace().collect::<String>())
            .find_map(|t| t.strip_prefix("h=").map(str::to_ascii_lowercase))
            .expect("h= tag")
            .split(':')
            .map(str::to_string)
            .collect();
        for want in [
            "from",
            "list-id",
            "list-post",
            "list-help",
            "list-subscribe",
            "list-unsubscribe",
            "list-unsubscribe-post",
            "list-owner",
            "list-archive",
        ] {
            assert!(h.iter().any(|x| x == want), "h= must cover {want}: {sig}");
        }
        assert_eq!(
            m.header("Message-ID").as_deref(),
            Some("<p1@example.net>"),
            "Message-ID unchanged"
        );
        assert_eq!(m.header("Subject").as_deref(), Some("[gov] Agenda"));
        assert!(
            m.data.contains("Hello all.\r\n.\r\nA line with a dot."),
            "dot line survives: {}",
            m.data
        );
    }
    // One-click tokens differ per recipient.
    assert_ne!(msgs[0].header("List-Unsubscribe"), msgs[1].header("List-Unsubscribe"));
    let v = verify_dkim(&e);
    let counts: Vec<u64> = v.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(
        counts.len() == 3 && counts[0] >= 2 && counts[1] >= 2,
        "RSA and Ed25519 signatures verified: {v}"
    );

    // The digest member gets the post in a digest, not singly.
    assert!(e.relay.to("bo@example.net").is_empty());
    let out = e.d.cli_ok(&["digest", "send", LIST]);
    assert!(out.contains("digest queued"), "{out}");
    let m = e.relay.wait_for("a digest for bo", 30, |m| {
        m.iter().any(|x| x.rcpts.contains(&"bo@example.net".to_string()))
    });
    let digest: Vec<_> = m
        .iter()
        .filter(|x| x.rcpts.contains(&"bo@example.net".to_string()))
        .collect();
    assert_eq!(digest.len(), 1);
    assert!(digest[0].data.contains("multipart/digest"), "{}", digest[0].data);
    assert!(digest[0].data.contains("Message-ID: <p1@example.net>"));
    assert!(
        e.relay.to("nomail@example.net").is_empty(),
        "no-mail members get nothing"
    );

    // Digests also go out on their own once `digest_size` posts wait (no CLI), and a
    // plain-digest member gets the RFC 1153 text form.
    e.d.cli_stdin(
        &["member", "add", LIST, "-"],
        "address,name,delivery\npl@example.net,,plain\n",
    );
    e.d.cli_ok(&["list", "set", LIST, "digest_size=2"]);
    for (i, subject) in ["Minutes", "Decisions"].iter().enumerate() {
        let r = send_from(
            e.d.smtp,
            "ana@example.net",
            LIST,
            &post(
                "Ana <ana@example.net>",
                &format!("auto{i}@example.net"),
                subject,
                "Text.",
            ),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let m = e.relay.wait_for("the automatic digests", 60, |m| {
        let has = |rcpt: &str| {
            m.iter().any(|x| {
                x.rcpts.contains(&rcpt.to_string())
                    && x.data.contains("auto0@example.net")
                    && x.data.contains("auto1@example.net")
            })
        };
        has("bo@example.net") && has("pl@example.net")
    });
    let of = |rcpt: &str| {
        m.iter()
            .filter(|x| x.rcpts.contains(&rcpt.to_string()) && x.data.contains("auto1@example.net"))
            .collect::<Vec<_>>()
    };
    let (mime, plain) = (of("bo@example.net"), of("pl@example.net"));
    assert_eq!((mime.len(), plain.len()), (1, 1), "one digest each");
    assert!(mime[0].data.contains("multipart/digest"), "{}", mime[0].data);
    assert!(!plain[0].data.contains("multipart/digest"), "{}", plain[0].data);
    assert!(
        plain[0].data.contains("\r\n------------------------------\r\n")
            && plain[0].data.contains("End of gov@lists.example.org digest"),
        "RFC 1153 layout: {}",
        plain[0].data
    );
    assert!(
        !e.relay
            .to("pl@example.net")
            .iter()
            .any(|x| x.header("Message-ID").is_some_and(|v| v.contains("auto0@example.net"))),
        "digest members never get the posts singly"
    );
    verify_dkim(&e);
}

#[test]
fn join_by_mail_and_by_web_form_with_double_opt_in_and_one_click_leave() {
    // new@ asks for four confirmations below; the default limit is three an hour.
    let e = env("[list]\nconfirm_per_address = 10\n");
    // By e-mail: LIST-join@, then a reply to the confirmation.
    let r = send_from(
        e.d.smtp,
        "new@example.net",
        "gov-join@lists.example.org",
        "From: New <new@example.net>\r\nSubject: join\r\nMessage-ID: <j1@example.net>\r\n\r\nplease\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    let m = e.relay.wait_for("confirmation", 30, |m| {
        m.iter().any(|x| x.rcpts.contains(&"new@example.net".to_string()))
    });
    let conf = m
        .iter()
        .find(|x| x.rcpts.contains(&"new@example.net".to_string()))
        .expect("confirmation")
        .clone();
    assert!(conf.header("Subject").is_some_and(|s| s.contains("Confirm")));
    assert_eq!(conf.header("Auto-Submitted").as_deref(), Some("auto-replied"));
    assert!(
        !member_csv(&e).contains("new@example.net"),
        "not a member before confirming"
    );
    let tok = token_of(&conf);
    let reply_to = format!("gov-confirm+{tok}@lists.example.org");
    let r = send_from(
        e.d.smtp,
        "new@example.net",
        &reply_to,
        "From: new@example.net\r\nSubject: Re: confirm\r\nIn-Reply-To: <x@y>\r\n\r\nyes\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    wait_member(&e, "new@example.net", true);
    assert!(member_csv(&e)
        .lines()
        .any(|l| l.starts_with("new@example.net,") && l.contains(",email,")));

    // Leaving and joining again by the other command addresses: LIST-leave@, then
    // LIST-request@ with "subscribe" and "unsubscribe" commands; each asks for a confirming
    // reply, and nothing changes before it.
    // Confirming also sends a welcome or goodbye, asynchronously: each round trip waits for
    // a confirmation request it has not seen before, not just for any new mail.
    let seen = std::cell::RefCell::new(vec![token_of(&conf)]);
    let round_trip = |to: &str, subject: &str, body: &str, member_after: bool| {
        let r = send_from(
            e.d.smtp,
            "new@example.net",
            to,
            &format!("From: new@example.net\r\nSubject: {subject}\r\n\r\n{body}\r\n"),
        );
        assert!(r.starts_with("250"), "{to}: {r}");
        let fresh = |x: &Captured| {
            x.rcpts.contains(&"new@example.net".to_string())
                && x.header("Subject").is_some_and(|s| s.contains("Confirm"))
                && x.header("Reply-To")
                    .is_some_and(|_| !seen.borrow().contains(&token_of(x)))
        };
        let m = e
            .relay
            .wait_for("a new confirmation request", 30, |m| m.iter().any(fresh));
        let conf = m.iter().find(|x| fresh(x)).expect("the new confirmation request");
        let tok = token_of(conf);
        seen.borrow_mut().push(tok.clone());
        assert_eq!(
            member_csv(&e).contains("new@example.net"),
            !member_after,
            "{to} {subject}: nothing changes before the confirmation"
        );
        let r = send_from(
            e.d.smtp,
            "new@example.net",
            &format!("gov-confirm+{tok}@lists.example.org"),
            "From: new@example.net\r\nSubject: Re: confirm\r\n\r\nyes\r\n",
        );
        assert!(r.starts_with("250"), "{r}");
        wait_member(&e, "new@example.net", member_after);
    };
    round_trip("gov-leave@lists.example.org", "leave", "please remove me", false);
    round_trip("gov-request@lists.example.org", "subscribe", "", true);
    // A command in the body, under a subject that is none.
    round_trip("gov-request@lists.example.org", "list admin", "unsubscribe", false);

    // By the web form: GET sets the CSRF cookie; a POST without it is refused.
    let (status, head, body) = http_get_full(e.d.web, "/lists/gov@lists.example.org/");
    assert_eq!(status, 200);
    let cookie = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("csrf cookie")
        .to_string();
    let csrf = cookie.split('=').nth(1).expect("value").to_string();
    assert!(body.contains(&format!("name=\"csrf\" value=\"{csrf}\"")));
    let form = format!("csrf={csrf}&email=web%40example.net&name=Web&delivery=each");
    let (status, _, _) = http_post(e.d.web, "/lists/gov@lists.example.org/subscribe", &form, &[]);
    assert_eq!(status, 403, "a POST without the cookie is refused");
    let (status, _, body) = http_post(
        e.d.web,
        "/lists/gov@lists.example.org/subscribe",
        &form,
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Check your mailbox"));
    let m = e.relay.wait_for("web confirmation", 30, |m| {
        m.iter().any(|x| x.rcpts.contains(&"web@example.net".to_string()))
    });
    let conf = m
        .iter()
        .find(|x| x.rcpts.contains(&"web@example.net".to_string()))
        .expect("conf")
        .clone();
    let tok = token_of(&conf);
    assert!(conf.data.contains(&format!("/confirm/{tok}")));
    // GET shows the button and changes nothing.
    let (status, _, body) = http_get_full(e.d.web, &format!("/confirm/{tok}"));
    assert_eq!(status, 200);
    assert!(body.contains("Confirm subscription") && body.contains("method=\"post\""));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!member_csv(&e).contains("web@example.net"));
    let (status, _, body) = http_post(
        e.d.web,
        &format!("/confirm/{tok}"),
        &format!("csrf={csrf}"),
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(status, 200, "{body}");
    wait_member(&e, "web@example.net", true);
    assert!(member_csv(&e)
        .lines()
        .any(|l| l.starts_with("web@example.net,Web,each,") && l.contains(",web,")));
    // Used tokens do not work twice.
    let (status, _, _) = http_post(
        e.d.web,
        &format!("/confirm/{tok}"),
        &format!("csrf={csrf}"),
        &[&format!("Cookie: {cookie}")],
    );
    assert_eq!(status, 404);

    // One-click: a post gives web@ its own List-Unsubscribe URL; GET changes nothing, POST leaves.
    let r = send_from(
        e.d.smtp,
        "web@example.net",
        LIST,
        &post("web@example.net", "p2@example.net", "Hi", "hello"),
    );
    assert!(r.starts_with("250"), "{r}");
    let m = e.relay.wait_for("copy for web", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"web@example.net".to_string()) && x.data.contains("p2@example.net"))
    });
    let copy = m
        .iter()
        .find(|x| x.rcpts.contains(&"web@example.net".to_string()) && x.data.contains("p2@example.net"))
        .expect("copy");
    let unsub = copy.header("List-Unsubscribe").expect("header");
    let path = unsub
        .split("/u/")
        .nth(1)
        .and_then(|t| t.split('>').next())
        .map(|t| format!("/u/{t}"))
        .expect("https url");
    let (status, _, body) = http_get_full(e.d.web, &path);
    assert_eq!(status, 200);
    assert!(body.contains("Unsubscribe web@example.net"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(member_csv(&e).contains("web@example.net"), "GET must not unsubscribe");
    let (status, _, body) = http_post(e.d.web, &path, "List-Unsubscribe=One-Click", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(!member_csv(&e).contains("web@example.net"), "POST unsubscribes at once");
    verify_dkim(&e);
}

#[test]
fn posting_policies_moderation_by_reply_and_cli_and_bounces() {
    let e = env("");
    e.d.cli_stdin(&["member", "add", LIST, "-"], "ana@example.net\nowner@example.org\n");
    // A non-member's post is held (default) and the owner is told.
    let r = send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "h1@example.com", "Question", "May I?"),
    );
    assert!(r.starts_with("250") && r.contains("held"), "{r}");
    let held = e.d.cli_ok(&["moderate", "ls"]);
    assert!(
        held.contains("stranger@example.com") && held.contains("not a member"),
        "{held}"
    );
    let m = e.relay.wait_for("moderation notice", 30, |m| {
        m.iter().any(|x| x.rcpts.contains(&"owner@example.org".to_string()))
    });
    let notice = m
        .iter()
        .find(|x| x.rcpts.contains(&"owner@example.org".to_string()))
        .expect("notice")
        .clone();
    assert!(notice.data.contains("held for moderation"));
    assert!(e.relay.to("ana@example.net").is_empty(), "a held post is not delivered");
    // The owner approves by replying.
    let tok = token_of(&notice);
    let r = send_from(
        e.d.smtp,
        "owner@example.org",
        &format!("gov-confirm+{tok}@lists.example.org"),
        "From: owner@example.org\r\nSubject: Re: held\r\n\r\napprove\r\n\r\n> A post to gov is held\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    e.relay.wait_for("approved post delivered", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"ana@example.net".to_string()) && x.data.contains("h1@example.com"))
    });
    assert_eq!(e.d.count(LIST), 1, "approved post is archived");

    // Held again, then rejected from the CLI with a reason mailed to the author.
    send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "h2@example.com", "Spam", "buy"),
    );
    let id =
        e.d.cli_ok(&["moderate", "ls"])
            .split('\t')
            .next()
            .expect("id")
            .trim()
            .to_string();
    let out = e.d.cli_ok(&["moderate", "reject", &id, "--reason", "off topic"]);
    assert!(out.contains("rejected"), "{out}");
    e.relay.wait_for("rejection notice", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"stranger@example.com".to_string()) && x.data.contains("off topic"))
    });
    let log = e.d.cli_ok(&["moderate", "log", LIST]);
    assert!(log.contains("owner@example.org\tapprove\th1@example.com"), "{log}");
    assert!(log.contains("cli\treject\th2@example.com\toff topic"), "{log}");

    // Reject policy: refused during SMTP, nothing stored; discard: accepted, nothing sent.
    e.d.cli_ok(&["list", "set", LIST, "nonmember=reject"]);
    let r = send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "h3@example.com", "Again", "x"),
    );
    assert!(r.starts_with("550 5.7.1"), "{r}");
    e.d.cli_ok(&["list", "set", LIST, "nonmember=discard"]);
    let r = send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "h4@example.com", "Again", "x"),
    );
    assert!(r.starts_with("250"), "{r}");
    // Announce list: a member may not post; an owner may, and List-Post says NO.
    e.d.cli_ok(&["list", "set", LIST, "posting=announce", "nonmember=reject"]);
    let r = send_from(
        e.d.smtp,
        "ana@example.net",
        LIST,
        &post("ana@example.net", "a1@example.net", "Me too", "x"),
    );
    assert!(r.starts_with("550"), "{r}");
    let r = send_from(
        e.d.smtp,
        "owner@example.org",
        LIST,
        &post("owner@example.org", "a2@example.org", "News", "x"),
    );
    assert!(r.starts_with("250"), "{r}");
    let m = e.relay.wait_for("announcement", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"ana@example.net".to_string()) && x.data.contains("a2@example.org"))
    });
    let ann = m
        .iter()
        .find(|x| x.data.contains("a2@example.org") && x.rcpts.contains(&"ana@example.net".to_string()))
        .expect("ann");
    assert_eq!(ann.header("List-Post").as_deref(), Some("NO"));
    assert_eq!(
        e.d.count(LIST),
        2,
        "rejected, discarded and refused posts are not archived"
    );

    // Owner mail reaches the owners; automated mail to a command address is never answered.
    let r = send_from(e.d.smtp, "someone@example.com", "gov-owner@lists.example.org", "From: someone@example.com\r\nSubject: A question for the owners\r\nMessage-ID: <o1@example.com>\r\n\r\nHello owners.\r\n");
    assert!(r.starts_with("250"), "{r}");
    e.relay.wait_for("owner mail forwarded", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"owner@example.org".to_string()) && x.data.contains("o1@example.com"))
    });
    let r = send_from(
        e.d.smtp,
        "robot@example.com",
        "gov-request@lists.example.org",
        "From: robot@example.com\r\nSubject: subscribe\r\nAuto-Submitted: auto-replied\r\n\r\nsubscribe\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    // A person's help request is answered.
    let ask_help = |who: &str, extra_header: &str| {
        let r = send_from(
            e.d.smtp,
            who,
            "gov-request@lists.example.org",
            &format!("From: {who}\r\nSubject: help\r\n{extra_header}\r\nhelp\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    };
    let help_is_answered = |who: &str| {
        ask_help(who, "");
        e.relay.wait_for(&format!("help reply to {who}"), 30, |m| {
            m.iter().any(|x| x.rcpts.iter().any(|r| r == who))
        });
    };
    help_is_answered("human@example.com");
    for (who, precedence) in [
        ("bulk@example.com", "bulk"),
        ("junk@example.com", "junk"),
        ("lister@example.com", "list"),
    ] {
        ask_help(who, &format!("Precedence: {precedence}\r\n"));
    }
    // The help reply to human@ came after the automated ones were sent; give the engine
    // one more round for anything it might still send them.
    help_is_answered("human2@example.com");
    for who in [
        "robot@example.com",
        "bulk@example.com",
        "junk@example.com",
        "lister@example.com",
    ] {
        assert!(
            e.relay.to(who).is_empty(),
            "no reply to automated mail (RFC 3834: Auto-Submitted, Precedence bulk/junk/list): {who}"
        );
    }

    // Members added by the owner with --welcome get the welcome message; without, nothing.
    e.d.cli_stdin(&["member", "add", "--welcome", LIST, "-"], "welcomed@example.net\n");
    e.d.cli_stdin(&["member", "add", LIST, "-"], "quiet@example.net\n");
    let m = e.relay.wait_for("the welcome message", 30, |m| {
        m.iter().any(|x| x.rcpts.contains(&"welcomed@example.net".to_string()))
    });
    let welcome = m
        .iter()
        .find(|x| x.rcpts.contains(&"welcomed@example.net".to_string()))
        .expect("welcome");
    assert!(
        welcome
            .header("Subject")
            .is_some_and(|s| s.contains("Welcome to gov@lists.example.org")),
        "{}",
        welcome.data
    );
    assert!(
        e.relay.to("quiet@example.net").is_empty(),
        "no welcome without --welcome"
    );

    // Discard sent nothing to the stranger (no backscatter): the only mail they ever got is
    // the rejection with its reason.
    let to_stranger = e.relay.to("stranger@example.com");
    assert_eq!(to_stranger.len(), 1, "only the rejection notice reaches the stranger");
    assert!(to_stranger[0].data.contains("off topic"));

    // Moderated: a member's post is held too; approved from the CLI it goes out, discarded
    // from the CLI it goes nowhere (and its author is not told).
    e.d.cli_ok(&["list", "set", LIST, "posting=moderated"]);
    let held_id = |subject: &str| -> String {
        for _ in 0..100 {
            let ls = e.d.cli_ok(&["moderate", "ls"]);
            if let Some(line) = ls.lines().find(|l| l.contains(subject)) {
                return line.split('\t').next().unwrap_or_default().trim().to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{subject:?} is not in the moderation queue");
    };
    let r = send_from(
        e.d.smtp,
        "ana@example.net",
        LIST,
        &post("ana@example.net", "m1@example.net", "Moderated one", "x"),
    );
    assert!(r.starts_with("250") && r.contains("held"), "{r}");
    let r = send_from(
        e.d.smtp,
        "ana@example.net",
        LIST,
        &post("ana@example.net", "m2@example.net", "Moderated two", "x"),
    );
    assert!(r.starts_with("250") && r.contains("held"), "{r}");
    let (m1, m2) = (held_id("Moderated one"), held_id("Moderated two"));
    let out = e.d.cli_ok(&["moderate", "approve", &m1]);
    assert!(out.contains("approved"), "{out}");
    let out = e.d.cli_ok(&["moderate", "discard", &m2]);
    assert!(out.contains("discarded"), "{out}");
    e.relay.wait_for("moderated post approved from the CLI", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"owner@example.org".to_string()) && x.data.contains("m1@example.net"))
    });
    // Open: a non-member's post goes straight out.
    e.d.cli_ok(&["list", "set", LIST, "posting=open"]);
    let r = send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "o2@example.com", "Open door", "x"),
    );
    assert!(r.starts_with("250") && !r.contains("held"), "{r}");
    e.relay.wait_for("non-member post on an open list", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.contains(&"ana@example.net".to_string()) && x.data.contains("o2@example.com"))
    });
    assert!(
        !e.relay.messages().iter().any(|x| x.data.contains("m2@example.net")),
        "a discarded post is delivered to nobody"
    );
    assert_eq!(e.relay.to("stranger@example.com").len(), 1, "discard tells nobody");
    let log = e.d.cli_ok(&["moderate", "log", LIST]);
    assert!(log.contains("cli\tapprove\tm1@example.net"), "{log}");
    assert!(log.contains("cli\tdiscard\tm2@example.net"), "{log}");

    // A DSN to ana's VERP address raises ana's bounce score, not anyone else's; with a
    // threshold of 1 it disables delivery and tells ana and the owner.
    e.d.cli_ok(&["list", "set", LIST, "bounce_threshold=1"]);
    let dsn = "From: MAILER-DAEMON@mx.example.net\r\nTo: gov-bounces+ana=example.net@lists.example.org\r\nSubject: Undelivered Mail Returned to Sender\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; ana@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n";
    let r = send_from(e.d.smtp, "", "gov-bounces+ana=example.net@lists.example.org", dsn);
    assert!(r.starts_with("250"), "{r}");
    for _ in 0..100 {
        if member_csv(&e)
            .lines()
            .any(|l| l.starts_with("ana@example.net,") && l.contains(",1.0,"))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let csv = member_csv(&e);
    assert!(
        csv.lines()
            .any(|l| l.starts_with("ana@example.net,") && l.contains(",1.0,")),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("owner@example.org,") && l.contains(",0.0,")),
        "{csv}"
    );
    let ana_row = csv
        .lines()
        .find(|l| l.starts_with("ana@example.net,"))
        .unwrap_or_default();
    assert!(
        !ana_row.ends_with(','),
        "past the threshold, delivery to ana is disabled (last column): {ana_row}"
    );
    e.relay.wait_for("the bounce notices to ana and the owner", 30, |m| {
        m.iter().any(|x| {
            x.rcpts.contains(&"ana@example.net".to_string()) && x.data.contains("delivery to you is now disabled")
        }) && m.iter().any(|x| {
            x.rcpts.contains(&"owner@example.org".to_string())
                && x.data.contains("Delivery to ana@example.net was disabled")
        })
    });
    // With delivery disabled, ana gets no more posts; the owner still does (the list is
    // still open, so the stranger may post).
    let r = send_from(
        e.d.smtp,
        "stranger@example.com",
        LIST,
        &post("stranger@example.com", "after-bounce@example.org", "After", "x"),
    );
    assert!(r.starts_with("250"), "{r}");
    e.relay
        .wait_for("the post after the bounce reaches the owner", 30, |m| {
            m.iter().any(|x| {
                x.rcpts.contains(&"owner@example.org".to_string()) && x.data.contains("after-bounce@example.org")
            })
        });
    assert!(
        !e.relay
            .to("ana@example.net")
            .iter()
            .any(|x| x.data.contains("after-bounce@example.org")),
        "a disabled member gets no posts"
    );
    assert!(
        !e.relay
            .messages()
            .iter()
            .any(|x| x.data.contains("Undelivered Mail Returned")),
        "mail to the bounce address is never delivered"
    );
    assert_eq!(
        e.d.count(LIST),
        5,
        "mail to the bounce address is never archived (archived: h1, a2, m1, o2 and the last post)"
    );
    verify_dkim(&e);
}

#[test]
fn bulk_member_csv_over_a_megabyte_through_the_running_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(dir.path(), "", "");
    d.create_list(LIST);
    let csv: String = (0..50_000)
        .map(|i| format!("member{i:06}@example.net,Member {i}\n"))
        .collect();
    assert!(csv.len() > 1 << 20, "the CSV must exceed the old 1 MiB request cap");
    let out = d.cli_stdin(&["member", "add", LIST, "-"], &csv);
    assert!(out.contains("50000 added"), "{out}");
    let ls = d.cli_ok(&["member", "ls", LIST]);
    assert_eq!(ls.lines().count(), 50_001, "header + every member");
    assert!(ls.contains("member049999@example.net,Member 49999,each,"));
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "new1@example.net\nnot-an-address\n").expect("write csv");
    let out = d.cli(&["member", "add", LIST, &bad.to_string_lossy()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing added") && err.contains("line 2"), "{err}");
    assert!(
        !d.cli_ok(&["member", "ls", LIST]).contains("new1@example.net"),
        "a bad line adds nothing"
    );
}
