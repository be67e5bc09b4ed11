//! Durability: a message answered with 250 survives `kill -9` at any instant.
//!
//! Sixteen sessions send messages with unique Message-IDs and unique search tokens while the
//! daemon is SIGKILLed at random moments, several times. After the last restart every message
//! that got a 250 must be in the archive and findable by its own token.

use plenary_e2e::{Daemon, Smtp};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIST: &str = "crash@lists.example.org";
const SESSIONS: usize = 16;
const ROUNDS: usize = 5;

fn sender(
    addr: std::net::SocketAddr,
    round: usize,
    t: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let Ok(stream) = std::net::TcpStream::connect(addr) else {
            return;
        };
        drop(stream);
        let mut c = Smtp::connect(addr);
        if !c.reply().starts_with("220") || !c.cmd("EHLO crash.test").starts_with("250") {
            return;
        }
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            n += 1;
            let id = format!("crash-{round}-{t}-{n}@example.org");
            let token = format!("zq{round}q{t}q{n}");
            if !c.cmd("MAIL FROM:<load@crash.test>").starts_with("250") {
                return;
            }
            if !c.cmd(&format!("RCPT TO:<{LIST}>")).starts_with("250") {
                return;
            }
            if !c.cmd("DATA").starts_with("354") {
                return;
            }
            let body = format!("Message-ID: <{id}>\r\nSubject: crash test {token}\r\nFrom: load@crash.test\r\n\r\ncrashword {token}\r\n{}\r\n.\r\n", "filler text for a realistic four kilobyte message body\r\n".repeat(60));
            c.send(body.as_bytes());
            let r = c.reply();
            if r.starts_with("250") {
                acked.lock().unwrap_or_else(|p| p.into_inner()).push((id, token));
            } else {
                return;
            }
        }
        c.cmd("QUIT");
    }
}

#[test]
fn every_acknowledged_message_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::start(dir.path(), "", "");
    d.create_list(LIST);
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut rng = rand::thread_rng();
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..SESSIONS)
            .map(|t| {
                let (stop, acked, addr) = (stop.clone(), acked.clone(), d.smtp);
                std::thread::spawn(move || sender(addr, round, t, stop, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..900)));
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        for th in threads {
            let _ = th.join();
        }
        d.restart();
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        acked.len() > 100,
        "the load generator got too few 250s ({}) to prove anything",
        acked.len()
    );
    // Every acknowledged message is stored...
    let mut missing = Vec::new();
    for (id, _) in &acked {
        let (status, _) = d.get(&format!("/api/v1/lists/{LIST}/messages/{id}"));
        if status != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages lost after {ROUNDS} kills: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // ...and searchable by its own token once the index has caught up.
    let stored = d.count(LIST);
    let all = d.wait_search("crashword", stored);
    if all["total"].as_u64() != Some(stored) {
        let log = d.log_text();
        let notes: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("quarantine") || l.contains("ERROR") || l.contains("index"))
            .collect();
        panic!(
            "index must cover the whole store: {} of {stored} searchable; daemon log lines about indexing:\n{}",
            all["total"],
            notes.join("\n")
        );
    }
    let mut unsearchable = Vec::new();
    for (id, token) in &acked {
        let v = d.api(&format!("/api/v1/search?q={token}"));
        let found = v["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|h| h["message_id"] == id.as_str());
        if !found {
            unsearchable.push(id.clone());
        }
    }
    assert!(
        unsearchable.is_empty(),
        "{} acknowledged messages not searchable: {:?}",
        unsearchable.len(),
        &unsearchable[..unsearchable.len().min(10)]
    );
    eprintln!(
        "crash test: {} acknowledged messages checked after {ROUNDS} kill -9s; {} stored in all (the rest were committed but the 250 was lost with the process)",
        acked.len(),
        stored
    );
}
