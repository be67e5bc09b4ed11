//! Fault test for the fan-out queue: the relay first refuses (4xx), then goes away, and the
//! daemon is killed with SIGKILL and restarted in the middle of delivering to 2,000 members.
//! In the end every member must have the post; the test reports how many got a duplicate
//! and checks nobody got more than one extra copy for the one crash.

use plenary_e2e::{send_from, Daemon, Relay};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LIST: &str = "fault@lists.example.org";
const MEMBERS: usize = 2000;

#[test]
fn every_member_gets_the_post_through_refusal_outage_and_kill9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut relay = Relay::start(&dir.path().join("relay"));
    let port = relay.port;
    let mut d = Daemon::start(
        dir.path(),
        "",
        &format!("[relay]\nport = {port}\n\n[fanout]\nretry_initial_secs = 1\nretry_max_secs = 2\nbatch = 100\nconcurrency = 8\n"),
    );
    d.create_list(LIST);
    let csv: String = (0..MEMBERS).map(|i| format!("m{i:05}@example.net\n")).collect();
    let out = d.cli_stdin(&["member", "add", LIST, "-"], &csv);
    assert!(out.contains(&format!("{MEMBERS} added")), "{out}");

    // 1. The relay refuses every recipient with 451.
    relay.refuse(true);
    let post = format!("From: chair@example.org\r\nTo: {LIST}\r\nSubject: Outcome document\r\nMessage-ID: <fault-1@example.org>\r\n\r\nThe text.\r\n");
    let r = send_from(d.smtp, "chair@example.org", LIST, &post);
    assert!(r.starts_with("250"), "{r}");
    // Wait until the first pass parked recipients for retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = String::from_utf8_lossy(&d.cli(&["queue"]).stdout).into_owned();
        let waiting: usize = q
            .split(", ")
            .find(|p| p.contains("waiting to retry"))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if waiting >= 500 {
            break;
        }
        assert!(Instant::now() < deadline, "retries never parked: {q}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(relay.messages().is_empty(), "a refusing relay accepted nothing");

    // 2. The relay goes away for a while (connection refused).
    relay.stop();
    std::thread::sleep(Duration::from_secs(3));

    // 3. It comes back; kill -9 the daemon while it is delivering, then restart it.
    relay.refuse(false);
    let relay = Relay::start_on(&dir.path().join("relay"), port);
    relay.wait_for("deliveries to start", 60, |m| m.len() >= 300);
    d.kill9();
    let before_kill = relay.messages().len();
    d.spawn();

    let deadline = Instant::now() + Duration::from_secs(180);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in relay.messages() {
            if m.data.contains("fault-1@example.org") {
                for r in m.rcpts {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        if counts.len() >= MEMBERS {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {MEMBERS} members got the post; log:\n{}",
            counts.len(),
            d.log_text().lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the queue settle, then count again.
    std::thread::sleep(Duration::from_secs(2));
    let dups = counts.values().filter(|c| **c > 1).count();
    let max = counts.values().copied().max().unwrap_or(0);
    println!("fan-out fault test: {MEMBERS} members all delivered; {before_kill} copies before the kill; {dups} members got a duplicate; max copies per member {max}");
    assert_eq!(counts.len(), MEMBERS, "every member got the post");
    assert!(max <= 2, "one crash may cause at most one extra copy, saw {max}");
    assert!(
        before_kill < MEMBERS,
        "the kill must land during the fan-out ({before_kill} delivered before it)"
    );
    // The job ends once every recipient is delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = String::from_utf8_lossy(&d.cli(&["queue"]).stdout).into_owned();
        if q.starts_with("0 jobs") && q.contains(" 0 deliveries waiting") {
            break;
        }
        assert!(Instant::now() < deadline, "the queue never drained: {q}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
