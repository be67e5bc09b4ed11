//! The fan-out worker against relays that want TLS and AUTH, and the retry give-up path.
//!
//! The relay is `tests/py/relay.py` (a real SMTP server) with a certificate made here by
//! `openssl`: STARTTLS on a submission-style relay and implicit TLS (RFC 8314), both
//! requiring AUTH. A daemon without the relay's CA must not deliver (the certificate is
//! checked), and one with a wrong password must not either. A recipient the relay keeps
//! deferring (451) is retried with backoff and, once `fanout.give_up_secs` have passed,
//! counts as bounced. A relay that offers PIPELINING gets each copy's envelope in one write,
//! with the message intact, and a refused recipient does not cost the connection.

use plenary_e2e::{openssl, send_from, Daemon, Relay};
use std::path::Path;
use std::time::{Duration, Instant};

const LIST: &str = "relay@lists.example.org";

/// A private CA and a relay certificate for 127.0.0.1 (the host the daemon dials) signed
/// by it. Returns (CA certificate, relay certificate, relay key).
fn certificate(dir: &Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca, ca_key, csr, cert, key, ext) = (
        p("ca.pem"),
        p("ca-key.pem"),
        p("relay.csr"),
        p("relay-cert.pem"),
        p("relay-key.pem"),
        p("relay.ext"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Test relay CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap_or_else(|e| panic!("{ext}: {e}"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (ca, cert, key)
}

fn post(id: &str) -> String {
    format!("From: chair@example.org\r\nTo: {LIST}\r\nSubject: Relay test {id}\r\nMessage-ID: <{id}@example.org>\r\n\r\nHello.\r\n")
}

fn daemon(root: &Path, relay: &str, members: &[&str]) -> Daemon {
    let (d, out) = daemon_with(root, relay, "retry_initial_secs = 1\nretry_max_secs = 1", members);
    assert!(out.contains(&format!("{} added", members.len())), "{out}");
    d
}

/// A daemon with `[relay]` and `[fanout]` lines, the list and `members` in it; also returns
/// what `member add` printed.
fn daemon_with(root: &Path, relay: &str, fanout: &str, members: &[&str]) -> (Daemon, String) {
    let d = Daemon::start(root, "", &format!("[relay]\n{relay}\n\n[fanout]\n{fanout}\n"));
    d.create_list(LIST);
    let csv: String = members.iter().map(|m| format!("{m}\n")).collect();
    let out = d.cli_stdin(&["member", "add", LIST, "-"], &csv);
    (d, out)
}

const MEMBERS: [&str; 3] = ["ana@example.net", "bo@example.net", "chen@example.com"];

fn deliver_over(mode: &str, relay_flag: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificate(dir.path());
    let relay = Relay::start_with(
        &dir.path().join("relay"),
        0,
        &[relay_flag, &cert, &key, "--auth", "plenary:s3cret pass"],
    );
    let d = daemon(
        &dir.path().join("good"),
        &format!(
            "port = {}\ntls = \"{mode}\"\nusername = \"plenary\"\npassword = \"s3cret pass\"\nca_file = \"{ca}\"",
            relay.port
        ),
        &MEMBERS,
    );
    let r = send_from(d.smtp, "chair@example.org", LIST, &post(mode));
    assert!(r.starts_with("250"), "{r}");
    let got = relay.wait_for(&format!("three copies over {mode}"), 60, |m| m.len() >= 3);
    assert_eq!(got.len(), 3, "one copy per member");
    for m in &got {
        assert!(m.tls, "{mode}: the transaction ran over TLS: {:?}", m.rcpts);
        assert_eq!(m.auth.as_deref(), Some("plenary"), "{mode}: authenticated");
        // Pipelined where the stream under lettre is ours (implicit TLS); after STARTTLS
        // lettre owns the TLS layer and sends one command at a time.
        assert_eq!(m.pipelined, mode == "tls", "{mode}: pipelined {:?}", m.rcpts);
    }
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["ana@example.net", "bo@example.net", "chen@example.com"]);
    println!("{mode}: 3 copies delivered over TLS with AUTH");
}

#[test]
fn delivers_over_starttls_with_auth() {
    deliver_over("starttls", "--starttls");
}

#[test]
fn delivers_over_implicit_tls_with_auth() {
    deliver_over("tls", "--tls");
}

/// Without the relay's CA the certificate does not verify, and with a wrong password AUTH
/// fails: either way nothing reaches the relay and the post stays queued for retry.
#[test]
fn an_untrusted_certificate_or_a_wrong_password_delivers_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificate(dir.path());
    let relay = Relay::start_with(
        &dir.path().join("relay"),
        0,
        &["--starttls", &cert, &key, "--auth", "plenary:right"],
    );
    let untrusted = daemon(
        &dir.path().join("untrusted"),
        &format!(
            "port = {}\ntls = \"starttls\"\nusername = \"plenary\"\npassword = \"right\"",
            relay.port
        ),
        &MEMBERS,
    );
    let wrong = daemon(
        &dir.path().join("wrong"),
        &format!(
            "port = {}\ntls = \"starttls\"\nusername = \"plenary\"\npassword = \"wrong\"\nca_file = \"{ca}\"",
            relay.port
        ),
        &MEMBERS,
    );
    for d in [&untrusted, &wrong] {
        let r = send_from(d.smtp, "chair@example.org", LIST, &post("refused"));
        assert!(r.starts_with("250"), "{r}");
    }
    // Both daemons try (and retry every second) for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut cert_err, mut auth_err) = (false, false);
    while Instant::now() < deadline && !(cert_err && auth_err) {
        std::thread::sleep(Duration::from_millis(200));
        let u = untrusted.log_text().to_lowercase();
        cert_err = u.contains("certificate") || u.contains("unknownissuer");
        auth_err = wrong.log_text().contains("relay AUTH");
    }
    assert!(cert_err, "untrusted daemon's log:\n{}", untrusted.log_text());
    assert!(auth_err, "wrong-password daemon's log:\n{}", wrong.log_text());
    std::thread::sleep(Duration::from_secs(2));
    assert!(relay.messages().is_empty(), "nothing may be delivered");
    for d in [&untrusted, &wrong] {
        let q = String::from_utf8_lossy(&d.cli(&["queue"]).stdout).into_owned();
        assert!(
            q.contains("waiting to retry") || q.contains("1 job"),
            "still queued: {q}"
        );
    }
}

/// A recipient the relay defers (451) on every try is retried with backoff until
/// `give_up_secs`, then counts as bounced; the others get the post at once.
#[test]
fn a_recipient_deferred_past_give_up_counts_as_bounced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("relay"));
    relay.defer(&["bo@example.net"]);
    let d = Daemon::start(
        &dir.path().join("d"),
        "",
        &format!(
            "[relay]\nport = {}\n\n[fanout]\nretry_initial_secs = 1\nretry_max_secs = 1\ngive_up_secs = 4\n",
            relay.port
        ),
    );
    d.create_list(LIST);
    d.cli_ok(&["list", "set", LIST, "bounce_threshold=1", "owners=owner@example.org"]);
    let csv: String = MEMBERS.iter().map(|m| format!("{m}\n")).collect();
    d.cli_stdin(&["member", "add", LIST, "-"], &csv);
    let started = Instant::now();
    let r = send_from(d.smtp, "chair@example.org", LIST, &post("giveup"));
    assert!(r.starts_with("250"), "{r}");
    relay.wait_for("the two others' copies", 30, |m| {
        m.iter().filter(|x| x.data.contains("giveup@example.org")).count() >= 2
    });

    let bo_bounced = |csv: &str| {
        csv.lines()
            .any(|l| l.starts_with("bo@example.net,") && l.contains(",1.0,"))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let csv = loop {
        let csv = d.cli_ok(&["member", "ls", LIST]);
        if bo_bounced(&csv) {
            break csv;
        }
        assert!(
            Instant::now() < deadline,
            "bo never counted as bounced; members:\n{csv}\nrelay answers to bo: {:?}",
            relay.rcpt_answers("bo@example.net")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let waited = started.elapsed();
    let answers = relay.rcpt_answers("bo@example.net");
    assert!(
        answers.len() >= 3 && answers.iter().all(|&c| c == 451),
        "bo was tried several times and always deferred: {answers:?}"
    );
    // The queue keeps whole seconds: the first failure stamped at second T can be at T.99,
    // so the give-up can come up to a second before 4 s of wall time.
    assert!(
        waited >= Duration::from_secs(3),
        "no give-up before give_up_secs: {waited:?}"
    );
    for ok in ["ana@example.net", "chen@example.com"] {
        assert!(
            csv.lines()
                .any(|l| l.starts_with(&format!("{ok},")) && l.contains(",0.0,")),
            "{ok} did not bounce:\n{csv}"
        );
        assert_eq!(relay.rcpt_answers(ok), [250], "{ok} got it on the first try");
    }
    // Nothing is left waiting, and the owner hears of the disabled member.
    let q = String::from_utf8_lossy(&d.cli(&["queue"]).stdout).into_owned();
    assert!(!q.contains(" 1 waiting to retry"), "{q}");
    relay.wait_for("the owner's notice", 30, |m| {
        m.iter()
            .any(|x| x.rcpts.iter().any(|r| r == "owner@example.org") && x.data.contains("bo@example.net"))
    });
    println!(
        "bo deferred {} times, counted as bounced after {:.1} s (give_up_secs = 4)",
        answers.len(),
        waited.as_secs_f64()
    );
}

/// Relay connections are reused across copies and across posts (one connection per worker,
/// not one per copy), and `fanout.max_per_second` paces the copies.
#[test]
fn relay_connections_are_reused_and_the_rate_is_capped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("relay"));
    let d = Daemon::start(
        dir.path(),
        "",
        &format!(
            "[relay]\nport = {}\n\n[fanout]\nconcurrency = 2\nbatch = 5\nmax_per_second = 10\n",
            relay.port
        ),
    );
    d.create_list(LIST);
    d.cli_ok(&["list", "set", LIST, "posting=open"]);
    let members: String = (0..10).map(|i| format!("m{i}@example.net\n")).collect();
    d.cli_stdin(&["member", "add", LIST, "-"], &members);
    for i in 0..2 {
        let r = send_from(
            d.smtp,
            "author@example.org",
            LIST,
            &format!("From: author@example.org\r\nMessage-ID: <pace{i}@example.org>\r\nSubject: pace {i}\r\n\r\nx\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let msgs = relay.wait_for("20 copies", 60, |m| m.len() >= 20);
    assert_eq!(msgs.len(), 20, "one copy per member per post");
    let mut conns: Vec<u64> = msgs.iter().map(|m| m.conn).collect();
    conns.sort_unstable();
    conns.dedup();
    assert!(
        conns.len() <= 2,
        "20 copies over {} connections: connections are not reused ({conns:?})",
        conns.len()
    );
    // 20 copies at 10 a second: the last leaves at least a second after the first, even
    // though the relay and the worker could go much faster.
    let first = msgs.iter().map(|m| m.t).fold(f64::INFINITY, f64::min);
    let last = msgs.iter().map(|m| m.t).fold(0.0, f64::max);
    assert!(
        last - first >= 1.0,
        "20 copies in {:.2} s despite max_per_second = 10",
        last - first
    );
}

/// A relay that offers PIPELINING (RFC 2920) gets each copy's MAIL, RCPT and DATA in one
/// write; one that does not, one command at a time. Either way the message arrives as
/// stored, lines that start with a dot included (dot-stuffed on the wire, RFC 5321 §4.5.2).
#[test]
fn pipelines_when_the_relay_offers_it_and_the_message_arrives_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    // As stored after ingress un-stuffs it: a lone dot, a double dot, a leading dot.
    let stored_body = "Hello.\r\n.\r\n..two\r\n.leading\r\nend\r\n";
    for (name, options) in [("pipelining", &[][..]), ("no-pipelining", &["--no-pipelining"][..])] {
        let relay = Relay::start_with(&dir.path().join(format!("relay-{name}")), 0, options);
        let d = daemon(&dir.path().join(name), &format!("port = {}", relay.port), &MEMBERS);
        // On the wire to the daemon, every line that starts with a dot gets one more.
        let post = format!(
            "From: chair@example.org\r\nTo: {LIST}\r\nSubject: dots\r\nMessage-ID: <dots-{name}@example.org>\r\n\r\nHello.\r\n..\r\n...two\r\n..leading\r\nend\r\n"
        );
        let r = send_from(d.smtp, "chair@example.org", LIST, &post);
        assert!(r.starts_with("250"), "{r}");
        let got = relay.wait_for(&format!("three copies ({name})"), 60, |m| m.len() >= 3);
        assert_eq!(got.len(), 3, "{name}: one transaction per member");
        for m in &got {
            assert_eq!(m.rcpts.len(), 1, "{name}: {:?}", m.rcpts);
            assert_eq!(m.pipelined, name == "pipelining", "{name}: pipelined {:?}", m.rcpts);
            let body = m.data.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            assert!(
                body.starts_with(stored_body),
                "{name}: body as stored, dots included: {body:?}"
            );
        }
        println!("{name}: 3 copies, pipelined = {}", got[0].pipelined);
    }
}

/// Copies signed together go out back to back on one connection: with PIPELINING, the
/// next copy's MAIL, RCPT and DATA travel in the same write as the last copy's message and
/// end marker, so each copy costs the relay one read and one reply write. Without
/// PIPELINING, one command at a time. (The signers hand over the first two of five copies
/// together, so the first copy always has the second behind it; later ones depend on
/// timing.)
#[test]
fn consecutive_copies_share_a_write_when_the_relay_pipelines() {
    let members = [
        "a1@example.net",
        "a2@example.net",
        "a3@example.net",
        "a4@example.net",
        "a5@example.net",
    ];
    for (name, options) in [("pipelining", &[][..]), ("no-pipelining", &["--no-pipelining"][..])] {
        let dir = tempfile::tempdir().expect("tempdir");
        let relay = Relay::start_with(&dir.path().join("relay"), 0, options);
        let port = format!("port = {}", relay.port);
        let (d, _) = daemon_with(&dir.path().join("d"), &port, "concurrency = 1", &members);
        let r = send_from(d.smtp, "chair@example.org", LIST, &post(&format!("runs-{name}")));
        assert!(r.starts_with("250"), "{r}");
        let mut got = relay.wait_for(&format!("five copies ({name})"), 60, |m| m.len() >= 5);
        got.sort_by(|a, b| a.t.total_cmp(&b.t));
        let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
        rcpts.sort();
        assert_eq!(rcpts, members, "{name}: one copy per member");
        let then_more: Vec<bool> = got.iter().map(|m| m.then_more).collect();
        if name == "pipelining" {
            assert!(
                then_more[0],
                "{name}: the second copy's envelope did not follow the first's message: {then_more:?}"
            );
            assert!(!then_more[4], "{name}: something followed the last copy: {then_more:?}");
        } else {
            assert!(then_more.iter().all(|m| !m), "{name}: {then_more:?}");
        }
        assert!(got.iter().all(|m| m.conn == got[0].conn), "{name}: one connection");
        println!("{name}: next envelope in the same write as the message: {then_more:?}");
    }
}

/// A recipient the relay refuses (550) counts as a bounce and the transaction is reset, not
/// the connection: with one connection, the copies before and after the refusal come over the
/// same one, whether the transaction was pipelined or sent one command at a time (the path
/// STARTTLS connections take too).
#[test]
fn a_refused_recipient_does_not_cost_the_relay_connection() {
    for (name, options) in [("pipelining", &[][..]), ("no-pipelining", &["--no-pipelining"][..])] {
        refused_recipient_keeps_the_connection(name, options);
    }
}

fn refused_recipient_keeps_the_connection(name: &str, options: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start_with(&dir.path().join("relay"), 0, options);
    relay.reject(&["bo@example.net"]);
    let port = format!("port = {}", relay.port);
    let (d, _) = daemon_with(&dir.path().join("d"), &port, "concurrency = 1", &MEMBERS);
    let r = send_from(d.smtp, "chair@example.org", LIST, &post("refused-rcpt"));
    assert!(r.starts_with("250"), "{r}");
    let got = relay.wait_for("two copies", 60, |m| m.len() >= 2);
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["ana@example.net", "chen@example.com"], "{name}");
    assert_eq!(
        relay.rcpt_answers("bo@example.net"),
        [550],
        "{name}: refused once, not retried"
    );
    assert!(
        got.iter().all(|m| m.pipelined == (name == "pipelining")),
        "{name}: pipelined only when offered"
    );
    let conns: Vec<u64> = got.iter().map(|m| m.conn).collect();
    assert_eq!(
        conns[0], conns[1],
        "{name}: copies before and after the refusal share a connection"
    );
    // The refusal is a bounce on the member's record.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = d.cli_ok(&["member", "ls", LIST]);
        if out
            .lines()
            .any(|l| l.starts_with("bo@example.net,") && l.contains(",1.0,"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no bounce recorded for bo@example.net:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
