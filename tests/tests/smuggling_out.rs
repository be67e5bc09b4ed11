//! SECURITY.md SM-05 on the way out: a stored message whose body holds `<LF>.<LF>` followed by
//! SMTP commands must reach a relay that treats a bare LF as a line end (tests/py/relay.py)
//! as one message to one recipient, never as a second, smuggled transaction.
//!
//! SMTP ingress already refuses bare LF, so the message is put in the store directly (as an
//! import or an older store could hold it) and delivered by the real fan-out worker.

use plenary_core::list::Delivery;
use plenary_core::meta::Fallback;
use plenary_core::{ListAddress, MemberAddress, MessageMeta, Origin, RecipientKind};
use plenary_e2e::Relay;
use plenary_fanout::{FanoutSettings, Worker};
use plenary_list::{Engine, EngineSettings};
use plenary_store::{IngestRequest, IngestTarget, PostHandling, Store, StoreSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_dot_in_a_stored_message_cannot_smuggle_a_second_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(&dir.path().join("relay"));
    let mut s = StoreSettings::new(dir.path().join("data"));
    s.min_free_bytes = 0;
    let store = Store::open(s).expect("store");
    let list = store
        .create_list(&ListAddress::parse("sm@lists.example.org").expect("valid"), "SM", "")
        .expect("list");
    let engine = Engine::new(store.clone(), EngineSettings::default());
    engine
        .add_members(
            "sm@lists.example.org",
            vec![(
                MemberAddress::parse("member@example.net").expect("valid"),
                String::new(),
                Delivery::Each,
            )],
            false,
        )
        .expect("member");
    let raw = b"From: a@example.org\nTo: sm@lists.example.org\nSubject: smuggle\nMessage-ID: <sm05@example.org>\n\nhello\n.\nMAIL FROM:<attacker@evil.example>\nRCPT TO:<victim@example.com>\nDATA\nFrom: ceo@bank.example\nSubject: wire money\n\nsmuggled\n.\n".to_vec();
    let meta = MessageMeta::extract(
        &raw,
        Fallback {
            envelope_date: None,
            received_at: 1_800_000_000,
        },
    );
    store
        .ingest(IngestRequest {
            raw,
            meta,
            origin: Origin::Import,
            envelope_from: String::new(),
            targets: vec![IngestTarget {
                list: list.id,
                kind: RecipientKind::Post,
            }],
            received_at: 1_800_000_000,
            handling: PostHandling::Approved,
        })
        .await
        .expect("ingest");
    let settings = FanoutSettings {
        relay_port: relay.port,
        ..FanoutSettings::default()
    };
    let worker = Arc::new(Worker::new(store.clone(), engine, settings, Vec::new(), None).expect("worker"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(worker.run(stop_rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.messages().is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let _ = task.await;
    let msgs = relay.messages();
    assert_eq!(msgs.len(), 1, "exactly one transaction reached the relay: {msgs:#?}");
    assert_eq!(msgs[0].rcpts, ["member@example.net"]);
    assert!(msgs.iter().all(|m| !m.rcpts.iter().any(|r| r.contains("victim"))));
    // The would-be commands arrive as (dot-stuffed, then unstuffed) body text of the one message.
    assert!(
        msgs[0].data.contains("\r\n.\r\nMAIL FROM:<attacker@evil.example>\r\n"),
        "{}",
        msgs[0].data
    );
}
