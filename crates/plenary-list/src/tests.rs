use super::*;
use plenary_core::list::ListSettings;
use plenary_store::StoreSettings;

fn engine(dir: &std::path::Path) -> Engine {
    let mut s = StoreSettings::new(dir);
    s.min_free_bytes = 0;
    let store = Store::open(s).expect("open store");
    let list = ListAddress::parse("gov@lists.example.org").expect("valid");
    store.create_list(&list, "Gov", "").expect("create list");
    Engine::new(store, EngineSettings::default())
}

/// Mail as it arrives over SMTP for one of `list`'s addresses, under the list's policy.
fn smtp_request(list: ListId, kind: RecipientKind, envelope_from: &str, raw: &[u8]) -> IngestRequest {
    let meta = MessageMeta::extract(
        raw,
        Fallback {
            envelope_date: None,
            received_at: now(),
        },
    );
    IngestRequest {
        raw: raw.to_vec(),
        meta,
        origin: plenary_core::Origin::Smtp,
        envelope_from: envelope_from.into(),
        targets: vec![IngestTarget { list, kind }],
        received_at: now(),
        handling: PostHandling::ByPolicy,
    }
}

fn notices(e: &Engine) -> Vec<(Vec<MemberAddress>, String)> {
    e.store()
        .jobs()
        .expect("jobs")
        .into_iter()
        .filter_map(|j| match j.what {
            JobKind::Notice { to, raw } => Some((to, raw)),
            _ => None,
        })
        .collect()
}

fn token_in(raw: &str) -> String {
    let i = raw.find("/confirm/").expect("a confirm link") + 9;
    raw[i..i + 26].to_string()
}

#[tokio::test]
async fn double_opt_in_then_one_click_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let r = e
        .request_subscribe(
            "gov@lists.example.org",
            "Ana@Example.net",
            "Ana",
            Delivery::Each,
            JoinedVia::Web,
            None,
        )
        .expect("request");
    assert_eq!(r, Requested::ConfirmationSent);
    let list = e.store().list("gov@lists.example.org").expect("read").expect("list");
    let ana = MemberAddress::parse("ana@example.net").expect("valid");
    assert!(
        e.store().member(list.id, &ana).expect("read").is_none(),
        "not a member before confirming"
    );
    let n = notices(&e);
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].0, vec![ana.clone()]);
    let tok = token_in(&n[0].1);
    assert!(n[0]
        .1
        .contains(&format!("Reply-To: <gov-confirm+{tok}@lists.example.org>")));
    assert_eq!(
        e.confirm(&tok, None, "").await.expect("confirm"),
        Confirmed::Subscribed(ana.clone())
    );
    let m = e.store().member(list.id, &ana).expect("read").expect("member now");
    assert_eq!(m.joined_via, JoinedVia::Web);
    // Single use.
    assert!(matches!(e.confirm(&tok, None, "").await, Err(EngineError::BadToken)));
    // One-click with the member's own token.
    let (_, who) = e.one_click_unsubscribe(&m.unsub_token).expect("one-click");
    assert_eq!(who, ana);
    assert!(e.store().member(list.id, &ana).expect("read").is_none());
    assert!(matches!(
        e.one_click_unsubscribe(&m.unsub_token),
        Err(EngineError::BadToken)
    ));
    let log = e.store().log(Some(list.id)).expect("log");
    let actions: Vec<&str> = log.iter().map(|l| l.action.as_str()).collect();
    assert_eq!(actions, ["subscribe", "unsubscribe"]);
}

#[tokio::test]
async fn confirmation_mail_is_rate_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let ip: IpAddr = "192.0.2.7".parse().expect("ip");
    let mut sent = 0;
    for _ in 0..10 {
        if e.request_subscribe(
            "gov@lists.example.org",
            "victim@example.net",
            "",
            Delivery::Each,
            JoinedVia::Web,
            Some(ip),
        )
        .is_ok()
        {
            sent += 1;
        }
    }
    assert_eq!(sent, EngineSettings::default().confirm_per_address);
    let mut by_ip = 0;
    for i in 0..30 {
        if e.request_subscribe(
            "gov@lists.example.org",
            &format!("v{i}@example.net"),
            "",
            Delivery::Each,
            JoinedVia::Web,
            Some(ip),
        )
        .is_ok()
        {
            by_ip += 1;
        }
    }
    assert!(by_ip < 10, "per-IP limit must stop a form flood, sent {by_ip}");
}

#[tokio::test]
async fn rate_limits_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ask = |e: &Engine| {
        e.request_subscribe(
            "gov@lists.example.org",
            "victim@example.net",
            "",
            Delivery::Each,
            JoinedVia::Web,
            None,
        )
        .is_ok()
    };
    {
        let e = engine(dir.path());
        let sent = (0..10).filter(|_| ask(&e)).count();
        assert_eq!(sent, EngineSettings::default().confirm_per_address);
        e.store().close().expect("close");
    }
    // A new process on the same data: the victim still gets no more mail this hour.
    let mut s = StoreSettings::new(dir.path());
    s.min_free_bytes = 0;
    let e = Engine::new(Store::open(s).expect("reopen"), EngineSettings::default());
    assert!(!ask(&e), "the limit must not reset on restart");
    // The store's window logic: a hit an hour old no longer counts.
    let st = e.store();
    assert!(st.rate_hit("k", 1, 3600, 1_000).expect("hit"));
    assert!(!st.rate_hit("k", 1, 3600, 4_599).expect("hit"));
    assert!(st.rate_hit("k", 1, 3600, 4_600).expect("hit"));
}

#[tokio::test]
async fn held_post_is_approved_into_the_archive_and_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let mut settings = ListSettings::default();
    settings.set("owners", "owner@example.org").expect("valid");
    let list = e
        .store()
        .set_list_settings("gov@lists.example.org", settings)
        .expect("settings");
    let raw = b"From: stranger@example.com\r\nSubject: hi\r\nMessage-ID: <h1@x>\r\n\r\nhello\r\n";
    let out = e
        .store()
        .ingest(smtp_request(list.id, RecipientKind::Post, "stranger@example.com", raw))
        .await
        .expect("ingest");
    let Some(TargetOutcome::Held(id)) = out.first() else {
        panic!("a non-member post must be held, got {out:?}");
    };
    assert_eq!(e.store().archived_count(list.id).expect("count"), 0);
    // A member to deliver the approved post to (a list nobody receives gets no job).
    e.add_members(
        "gov@lists.example.org",
        vec![(
            MemberAddress::parse("ana@example.net").expect("valid"),
            String::new(),
            Delivery::Each,
        )],
        false,
    )
    .expect("add member");
    e.tick().await.expect("tick");
    let n = notices(&e);
    assert_eq!(n.len(), 1, "one notice to the owner");
    assert!(n[0].1.contains("held for moderation"));
    let reply_to = n[0]
        .1
        .lines()
        .find(|l| l.starts_with("Reply-To:"))
        .expect("reply-to")
        .to_string();
    let tok = reply_to
        .split('+')
        .nth(1)
        .expect("token")
        .split('@')
        .next()
        .expect("token")
        .to_string();
    // A non-moderator cannot approve by reply.
    let intruder = MemberAddress::parse("stranger@example.com").expect("valid");
    assert!(matches!(
        e.confirm(&tok, Some(&intruder), "approve").await,
        Err(EngineError::NotAllowed)
    ));
    let owner = MemberAddress::parse("owner@example.org").expect("valid");
    let r = e
        .confirm(&tok, Some(&owner), "> quoted\n\napprove\n")
        .await
        .expect("approve by reply");
    assert_eq!(r, Confirmed::Moderated(ModAction::Approve));
    assert!(e.store().held_post(*id).expect("read").is_none());
    assert_eq!(e.store().archived_count(list.id).expect("count"), 1);
    assert!(e
        .store()
        .jobs()
        .expect("jobs")
        .iter()
        .any(|j| matches!(j.what, JobKind::Post { .. })));
    let log = e.store().log(Some(list.id)).expect("log");
    assert_eq!(
        log.last().map(|l| (l.actor.as_str(), l.action.as_str())),
        Some(("owner@example.org", "approve"))
    );
}

#[test]
fn moderator_replies_and_commands_parse() {
    assert_eq!(
        ModAction::from_reply("> approve\n\nReject: off topic, sorry"),
        Some(ModAction::Reject("off topic, sorry".into()))
    );
    assert_eq!(ModAction::from_reply("Discard\n"), Some(ModAction::Discard));
    assert_eq!(ModAction::from_reply("thanks!"), None);
    assert_eq!(
        Command::find("Re: subscribe digest", ""),
        Some(Command::Subscribe(Delivery::Digest))
    );
    assert_eq!(Command::find("", "\n> help\nunsubscribe\n"), Some(Command::Unsubscribe));
    assert_eq!(Command::find("hello", "how do I join?"), None);
}

#[tokio::test]
async fn approve_policy_needs_the_owner_after_confirmation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let mut settings = ListSettings::default();
    settings.set("subscription", "approve").expect("valid");
    settings.set("owners", "owner@example.org").expect("valid");
    let list = e
        .store()
        .set_list_settings("gov@lists.example.org", settings)
        .expect("settings");
    e.request_subscribe(
        "gov@lists.example.org",
        "dee@example.net",
        "",
        Delivery::Each,
        JoinedVia::Email,
        None,
    )
    .expect("request");
    let tok = token_in(&notices(&e)[0].1);
    let dee = MemberAddress::parse("dee@example.net").expect("valid");
    assert_eq!(
        e.confirm(&tok, Some(&dee), "").await.expect("confirm"),
        Confirmed::AwaitingApproval(dee.clone())
    );
    assert!(
        e.store().member(list.id, &dee).expect("read").is_none(),
        "not a member until approved"
    );
    let to_owner = notices(&e)
        .into_iter()
        .find(|(to, _)| to[0].as_str() == "owner@example.org")
        .expect("the owner is asked");
    let approve = token_in(&to_owner.1);
    // Only an owner may approve by reply.
    assert!(matches!(
        e.confirm(&approve, Some(&dee), "").await,
        Err(EngineError::NotAllowed)
    ));
    let owner = MemberAddress::parse("owner@example.org").expect("valid");
    assert_eq!(
        e.confirm(&approve, Some(&owner), "").await.expect("approve"),
        Confirmed::Subscribed(dee.clone())
    );
    assert!(e.store().member(list.id, &dee).expect("read").is_some());
    // Closed lists refuse requests outright.
    let mut closed = e
        .store()
        .list("gov@lists.example.org")
        .expect("read")
        .expect("list")
        .settings;
    closed.set("subscription", "closed").expect("valid");
    e.store()
        .set_list_settings("gov@lists.example.org", closed)
        .expect("settings");
    assert!(matches!(
        e.request_subscribe(
            "gov@lists.example.org",
            "eve@example.net",
            "",
            Delivery::Each,
            JoinedVia::Web,
            None
        ),
        Err(EngineError::Closed)
    ));
}

#[tokio::test]
async fn digests_in_both_forms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let list = e.store().list("gov@lists.example.org").expect("read").expect("list");
    let mut keys = Vec::new();
    for i in 0..3 {
        let raw = format!("From: a{i}@example.org\r\nSubject: Topic {i}\r\nMessage-ID: <d{i}@x>\r\nDate: Mon, 23 Nov 2026 10:00:0{i} +0000\r\n\r\nBody {i}\r\n").into_bytes();
        let meta = MessageMeta::extract(
            &raw,
            Fallback {
                envelope_date: None,
                received_at: now(),
            },
        );
        let out = e
            .store()
            .ingest(IngestRequest::post(
                list.id,
                raw,
                meta,
                plenary_core::Origin::Smtp,
                now(),
            ))
            .await
            .expect("ingest");
        if let Some(TargetOutcome::Archived(k)) = out.first() {
            keys.push(*k);
        }
    }
    let d = digest::build(e.store(), &list, &keys, 7).expect("digest");
    let mime = String::from_utf8(d.mime).expect("utf8");
    assert!(mime.contains("Content-Type: multipart/digest; boundary="));
    assert_eq!(mime.matches("Content-Type: message/rfc822").count(), 3);
    assert!(mime.contains("Subject: gov digest, Vol 7, 3 messages"));
    let plain = String::from_utf8(d.plain).expect("utf8");
    // RFC 1153: each message as Date/From/Subject, a blank line, the text, 30 dashes.
    assert_eq!(plain.matches("\r\n------------------------------\r\n").count(), 3);
    assert!(plain.contains("Subject: Topic 1\r\nMessage-ID: <d1@x>\r\n\r\nBody 1\r\n"));
    assert!(plain.contains("End of gov@lists.example.org digest, Vol 7"));
    assert!(!plain.replace("\r\n", "").contains('\n'), "CRLF only");
}

/// A confirmation token works within its lifetime and not after: the subscription it would
/// have made does not happen, on the web page (describe) or by reply (confirm).
#[tokio::test]
async fn confirmation_tokens_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = StoreSettings::new(dir.path());
    s.min_free_bytes = 0;
    let store = Store::open(s).expect("open store");
    let address = ListAddress::parse("gov@lists.example.org").expect("valid");
    let list = store.create_list(&address, "Gov", "").expect("create list");
    let e = Engine::new(
        store,
        EngineSettings {
            token_ttl: std::time::Duration::from_secs(3),
            ..EngineSettings::default()
        },
    );
    let ask = |who: &str| {
        e.request_subscribe("gov@lists.example.org", who, "", Delivery::Each, JoinedVia::Web, None)
            .expect("request")
    };
    assert_eq!(ask("late@example.net"), Requested::ConfirmationSent);
    let late = token_in(&notices(&e)[0].1);
    // Expiry is checked against whole seconds: wait past the lifetime plus one second.
    std::thread::sleep(std::time::Duration::from_millis(4_100));
    assert!(matches!(e.describe_token(&late), Err(EngineError::BadToken)));
    assert!(matches!(e.confirm(&late, None, "").await, Err(EngineError::BadToken)));
    let who = MemberAddress::parse("late@example.net").expect("valid");
    assert!(
        e.store().member(list.id, &who).expect("read").is_none(),
        "an expired token subscribes nobody"
    );

    // The same request made again gets a fresh token that works at once.
    assert_eq!(ask("late@example.net"), Requested::ConfirmationSent);
    let fresh = notices(&e)
        .iter()
        .map(|(_, raw)| token_in(raw))
        .find(|t| *t != late)
        .expect("a second confirmation");
    assert_eq!(
        e.confirm(&fresh, None, "").await.expect("confirm"),
        Confirmed::Subscribed(who.clone())
    );
    assert!(e.store().member(list.id, &who).expect("read").is_some());
}

/// Posts wait for a digest only while somebody takes digests: on a list whose members all
/// take each message, the due posts leave the queue without a digest job, and once a member
/// switches to digests the next posts make one.
#[tokio::test]
async fn no_digest_job_while_nobody_takes_digests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let mut settings = e
        .store()
        .list("gov@lists.example.org")
        .expect("read")
        .expect("list")
        .settings;
    settings.set("posting", "open").expect("valid");
    let list = e
        .store()
        .set_list_settings("gov@lists.example.org", settings)
        .expect("settings");
    let ana = MemberAddress::parse("ana@example.net").expect("valid");
    e.add_members(
        "gov@lists.example.org",
        vec![(ana, String::new(), Delivery::Each)],
        false,
    )
    .expect("add");
    let post = |i: u32| {
        let raw = format!("From: x@example.org\r\nSubject: S{i}\r\nMessage-ID: <n{i}@x>\r\n\r\nBody\r\n").into_bytes();
        let meta = MessageMeta::extract(
            &raw,
            Fallback {
                envelope_date: None,
                received_at: now(),
            },
        );
        let mut req = IngestRequest::post(list.id, raw, meta, plenary_core::Origin::Smtp, now());
        req.handling = plenary_store::PostHandling::ByPolicy;
        req
    };
    let digests = |e: &Engine| {
        e.store()
            .jobs()
            .expect("jobs")
            .into_iter()
            .filter(|j| matches!(j.what, JobKind::Digest { .. }))
            .count()
    };
    e.store().ingest(post(1)).await.expect("ingest");
    assert_eq!(e.store().digest_pending().expect("pending").len(), 1);
    assert_eq!(e.make_digests(Some(list.id)).await.expect("digests"), 0);
    assert!(e.store().digest_pending().expect("pending").is_empty());
    assert_eq!(digests(&e), 0);
    e.set_member_option("gov@lists.example.org", "ana@example.net", "delivery", "digest")
        .expect("option");
    e.store().ingest(post(2)).await.expect("ingest");
    assert_eq!(e.make_digests(Some(list.id)).await.expect("digests"), 1);
    assert!(e.store().digest_pending().expect("pending").is_empty());
    assert_eq!(digests(&e), 1);
}

/// The engine answers only durable mail. A `-request` message the committer applied and
/// the syncer has not flushed (a crash would undo it; its sender has no `250` yet) is not
/// acted on until it is on disk: no confirmation goes out for a request that may vanish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_only_once_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path());
    let list = e.store().list("gov@lists.example.org").expect("read").expect("list");
    let req = smtp_request(
        list.id,
        RecipientKind::Request,
        "ana@example.net",
        b"From: Ana <ana@example.net>\r\nSubject: subscribe\r\nMessage-ID: <r1@x>\r\n\r\n",
    );
    let hold = e.store().hold_durability();
    let store = e.store().clone();
    let ingest = tokio::spawn(async move { store.ingest(req).await });
    assert!(
        e.store()
            .wait_applied(|s| s.inbox(10).is_ok_and(|i| !i.is_empty()))
            .await,
        "the committer never applied the mail"
    );
    let e = std::sync::Arc::new(e);
    let engine = e.clone();
    let tick = tokio::spawn(async move { engine.tick().await.map_err(|e| e.to_string()) });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!tick.is_finished(), "the engine took mail that is not durable");
    assert!(notices(&e).is_empty(), "nothing was answered");
    drop(hold);
    tick.await.expect("join").expect("tick");
    ingest.await.expect("join").expect("ingest");
    let n = notices(&e);
    assert_eq!(n.len(), 1, "the request is answered once durable: {n:?}");
    assert_eq!(n[0].0, vec![MemberAddress::parse("ana@example.net").expect("valid")]);
}
