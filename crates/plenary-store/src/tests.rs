use super::*;
use plenary_core::meta::Fallback;
use plenary_core::{ListAddress, MessageKey, MessageMeta, Origin, RecipientKind};

fn settings(dir: &std::path::Path) -> StoreSettings {
    let mut s = StoreSettings::new(dir);
    s.min_free_bytes = 0;
    s
}

fn req(list: plenary_core::ListId, raw: &[u8], kind: RecipientKind) -> IngestRequest {
    IngestRequest {
        raw: raw.to_vec(),
        meta: MessageMeta::extract(
            raw,
            Fallback {
                envelope_date: None,
                received_at: 1_800_000_000,
            },
        ),
        origin: Origin::Smtp,
        envelope_from: "a@b.org".into(),
        targets: vec![IngestTarget { list, kind }],
        received_at: 1_800_000_000,
        handling: PostHandling::ArchiveOnly,
    }
}

#[tokio::test]
async fn ingest_dedupes_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = ListAddress::parse("l@x.org").expect("addr");
    let big_body = "x".repeat(200_000);
    let raw = format!("Message-ID: <m1@x>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\n{big_body}\r\n");
    let key;
    {
        let store = Store::open(settings(dir.path())).expect("open");
        let list = store.create_list(&addr, "L", "d").expect("create");
        assert!(matches!(
            store.create_list(&addr, "L", "d"),
            Err(StoreError::ListExists(_))
        ));
        let out = store
            .ingest(req(list.id, raw.as_bytes(), RecipientKind::Post))
            .await
            .expect("ingest");
        let TargetOutcome::Archived(k) = out[0] else {
            panic!("expected archived, got {out:?}")
        };
        key = k;
        let again = store
            .ingest(req(list.id, raw.as_bytes(), RecipientKind::Post))
            .await
            .expect("ingest");
        assert_eq!(again, vec![TargetOutcome::Duplicate(k)]);
        let inbox = store
            .ingest(req(list.id, b"Subject: subscribe\r\n\r\n", RecipientKind::Request))
            .await
            .expect("ingest");
        assert!(matches!(inbox[0], TargetOutcome::Inbox(_)));
        let reply = "Message-ID: <m2@x>\r\nIn-Reply-To: <m1@x>\r\nDate: Wed, 2 Jul 2025 10:00:00 +0000\r\n\r\nre\r\n";
        store
            .ingest(req(list.id, reply.as_bytes(), RecipientKind::Post))
            .await
            .expect("ingest");
        let deeper =
            "Message-ID: <m3@x>\r\nReferences: <m1@x> <m2@x>\r\nDate: Wed, 2 Jul 2025 11:00:00 +0000\r\n\r\nre re\r\n";
        store
            .ingest(req(list.id, deeper.as_bytes(), RecipientKind::Post))
            .await
            .expect("ingest");
    }
    let store = Store::open(settings(dir.path())).expect("reopen");
    let m = store.message(key).expect("read").expect("present");
    assert_eq!(m.raw.len as usize, raw.len(), "the whole message is one spool record");
    assert_eq!(store.raw(&m).expect("raw"), raw.as_bytes());
    assert_eq!(store.find(key.list, "m1@x").expect("find"), Some(key));
    assert_eq!(
        store.children(key.list, "m1@x").expect("children").len(),
        1,
        "a reply to a reply is linked to its direct parent only"
    );
    assert_eq!(store.children(key.list, "m2@x").expect("children").len(), 1);
    let months = store.months(key.list).expect("months");
    assert_eq!((months[0].year, months[0].month, months[0].count), (2025, 7, 3));
    assert_eq!(store.recent(key.list, 10).expect("recent").len(), 3);
    assert_eq!(store.index_pending_len(), 3);
    assert_eq!(store.inbox_len(), 1);
    let july = store
        .between(key.list, 1_751_328_000, 1_754_006_400, 100)
        .expect("between");
    assert_eq!(july.len(), 3);
}

#[tokio::test]
async fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _a = Store::open(settings(dir.path())).expect("open");
    match Store::open(settings(dir.path())) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("second open must fail"),
    }
}

#[tokio::test]
async fn disk_reserve_refuses_ingest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(dir.path());
    s.min_free_bytes = u64::MAX / 4;
    let store = Store::open(s).expect("open");
    let list = new_list(&store, "l@x.org");
    let err = store
        .ingest(req(list.id, b"Subject: x\r\n\r\ny", RecipientKind::Post))
        .await;
    assert!(matches!(err, Err(ref e) if e.is_disk_full()), "got {err:?}");
    assert!(!store.has_failed(), "a refused batch must not fail the store");
    // Nothing of the refused batch was applied, so readers that act on mail must not wait
    // for it (they would wait for ever: the store is not failed).
    let s = store.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(s.read_durable_blocking(|s| s.index_pending(10)));
    });
    let read = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("a reader must not wait for a refused batch")
        .expect("read");
    assert!(read.is_empty());
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        store.read_durable(|s| s.index_pending(10)),
    )
    .await
    .expect("an async reader must not wait for a refused batch either")
    .expect("read");
    assert!(read.is_empty());
}

#[tokio::test]
async fn no_archive_is_stored_but_not_listed_or_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "l@x.org");
    let out = store
        .ingest(req(
            list.id,
            b"X-No-Archive: yes\r\nMessage-ID: <n@x>\r\n\r\nsecret",
            RecipientKind::Post,
        ))
        .await
        .expect("ingest");
    assert!(matches!(out[0], TargetOutcome::Archived(_)));
    assert_eq!(store.recent(list.id, 10).expect("recent").len(), 0);
    assert_eq!(store.index_pending_len(), 0);
    assert_eq!(store.archived_count(list.id).expect("count"), 0);
}

#[tokio::test]
async fn readers_for_the_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let a = new_list(&store, "a@x.org");
    let b = new_list(&store, "b@x.org");
    assert_eq!(store.last_seq(a.id).expect("last"), 0);
    // Dates out of arrival order: seq 1 is the middle one.
    for (i, day) in [(1, 2), (2, 1), (3, 3)] {
        let raw = format!("Message-ID: <m{i}@x>\r\nDate: {day} Jul 2025 10:00:00 +0000\r\n\r\nbody\r\n");
        store
            .ingest(req(a.id, raw.as_bytes(), RecipientKind::Post))
            .await
            .expect("ingest");
    }
    store
        .ingest(req(b.id, b"Message-ID: <other@x>\r\n\r\nb\r\n", RecipientKind::Post))
        .await
        .expect("ingest");
    assert_eq!(store.last_seq(a.id).expect("last"), 3);
    assert_eq!(store.last_seq(b.id).expect("last"), 1);
    let after: Vec<u64> = store
        .messages_after(a.id, 1, 10)
        .expect("after")
        .iter()
        .map(|m| m.key.seq)
        .collect();
    assert_eq!(after, vec![2, 3], "only this list's, only later ones");
    let m1 = store
        .message(MessageKey { list: a.id, seq: 1 })
        .expect("read")
        .expect("m1");
    let (prev, next) = store.date_neighbours(m1.key, m1.meta.date).expect("neighbours");
    assert_eq!(prev.map(|k| k.seq), Some(2));
    assert_eq!(next.map(|k| k.seq), Some(3));
    let m3 = store
        .message(MessageKey { list: a.id, seq: 3 })
        .expect("read")
        .expect("m3");
    assert_eq!(
        store.date_neighbours(m3.key, m3.meta.date).expect("n").1,
        None,
        "no next across lists"
    );
    let s = store.site_secret().expect("secret");
    assert_eq!(store.site_secret().expect("secret"), s, "stable");
}

#[test]
fn disk_full_is_recognised_in_sleds_sticky_copy_of_the_error() {
    let os = std::io::Error::from_raw_os_error(28);
    assert!(StoreError::Sled(sled::Error::Io(os)).is_disk_full());
    // After its background flusher hit ENOSPC, sled hands out clones of the error: the kind
    // survives, the OS error number does not.
    let sticky = sled::Error::Io(std::io::Error::from_raw_os_error(28)).clone();
    let sled::Error::Io(inner) = &sticky else {
        panic!("an I/O error stays an I/O error");
    };
    assert_eq!(inner.raw_os_error(), None, "sled's clone drops the errno");
    assert!(StoreError::Sled(sticky).is_disk_full());
    assert!(!StoreError::Sled(sled::Error::Io(std::io::Error::other("broken pipe"))).is_disk_full());
}

#[tokio::test]
async fn thread_log_holds_every_archived_post_and_is_built_for_older_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = ListAddress::parse("t@x.org").expect("addr");
    let n = THREAD_CHUNK * 2 + 5;
    let expected: Vec<plenary_thread::Entry>;
    let list;
    {
        let store = Store::open(settings(dir.path())).expect("open");
        list = store.create_list(&addr, "T", "").expect("create").id;
        for i in 1..=n {
            // Every tenth post asks not to be archived: it is stored but has no entry.
            let hide = if i % 10 == 0 { "X-No-Archive: yes\r\n" } else { "" };
            let raw = format!(
                "Message-ID: <m{i}@x>\r\nIn-Reply-To: <m{}@x>\r\nSubject: Re: s\r\n{hide}Date: 1 Jul 2025 10:00:00 +0000\r\n\r\nb\r\n",
                i - 1
            );
            store
                .ingest(req(list, raw.as_bytes(), RecipientKind::Post))
                .await
                .expect("ingest");
        }
        let all = store.thread_entries(list, 0, n).expect("entries");
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        let want: Vec<u64> = (1..=n).filter(|i| i % 10 != 0).collect();
        assert_eq!(seqs, want, "archived posts only, in order, across chunk boundaries");
        for e in &all {
            let m = store
                .message(MessageKey { list, seq: e.seq })
                .expect("read")
                .expect("stored");
            assert_eq!(plenary_thread::Entry::from_meta(e.seq, &m.meta).as_ref(), Some(e));
        }
        let window: Vec<u64> = store
            .thread_entries(list, THREAD_CHUNK - 2, THREAD_CHUNK + 5)
            .expect("entries")
            .iter()
            .map(|e| e.seq)
            .collect();
        let want: Vec<u64> = (THREAD_CHUNK - 1..=THREAD_CHUNK + 5).filter(|i| i % 10 != 0).collect();
        assert_eq!(window, want, "a window across a chunk boundary");
        assert_eq!(want.len(), 6, "the window holds one hidden post");
        assert!(store.thread_entries(list, 5, 5).expect("empty").is_empty());
        expected = all;
        // Make it look like a store from before the log: no flag, no entries.
        store.trees().meta.remove(b"thread_log").expect("unflag");
        store.trees().thread_log.clear().expect("clear");
        store.close().expect("close");
    }
    let store = Store::open(settings(dir.path())).expect("reopen");
    assert_eq!(
        store.thread_entries(list, 0, n).expect("entries"),
        expected,
        "rebuilt on open"
    );
}

#[tokio::test]
async fn a_post_to_a_list_nobody_receives_makes_no_delivery_job() {
    use plenary_core::list::{Delivery, JoinedVia, Member};
    use plenary_core::MemberAddress;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "mirror@x.org");
    let post = |id: &str| {
        let mut r = req(
            list.id,
            format!("From: a@b.org\r\nMessage-ID: <{id}@x>\r\nSubject: s\r\n\r\nbody\r\n").as_bytes(),
            RecipientKind::Post,
        );
        r.handling = PostHandling::Approved;
        r
    };
    let out = store.ingest(post("nobody")).await.expect("ingest");
    assert!(matches!(out[0], TargetOutcome::Archived(_)), "{out:?}");
    assert!(store.jobs().expect("jobs").is_empty(), "no job without members");
    assert_eq!(
        store.digest_pending().expect("digest").len(),
        1,
        "the digest entry stays, for digest members who join later"
    );

    let ana = Member {
        address: MemberAddress::parse("ana@example.net").expect("valid"),
        name: String::new(),
        delivery: Delivery::Each,
        receive_own: true,
        moderated: false,
        joined_at: 1_800_000_000,
        joined_via: JoinedVia::Cli,
        unsub_token: "t".repeat(26),
        bounce_score: 0,
        last_bounce: 0,
        disabled: None,
    };
    store.apply(vec![Write::PutMember(list.id, ana)]).expect("member");
    let out = store.ingest(post("somebody")).await.expect("ingest");
    let TargetOutcome::Archived(key) = out[0] else {
        panic!("expected archived, got {out:?}")
    };
    let jobs = store.jobs().expect("jobs");
    assert_eq!(jobs.len(), 1, "one job once the list has a member");
    assert!(matches!(jobs[0].what, JobKind::Post { key: k, .. } if k == key));
    assert_eq!(store.digest_pending().expect("digest").len(), 2);
}

/// Group commit: requests that arrive while a commit is being made share the next one, so
/// 64 concurrent posts take far fewer than 64 durable commits, and every one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_share_durable_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "g@x.org");
    let (b0, r0) = store.commit_stats();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.spawn(async move {
            let raw = format!("From: a@b.org\r\nMessage-ID: <gc{i}@x>\r\nSubject: s{i}\r\n\r\nbody {i}\r\n");
            store
                .ingest(req(list.id, raw.as_bytes(), RecipientKind::Post))
                .await
                .expect("ingest")
        });
    }
    while let Some(out) = tasks.join_next().await {
        let out = out.expect("task");
        assert!(matches!(out[0], TargetOutcome::Archived(_)), "{out:?}");
    }
    let (b1, r1) = store.commit_stats();
    let (batches, requests) = (b1 - b0, r1 - r0);
    assert_eq!(requests, 64, "every request went through a durable commit");
    // Without group commit this is exactly 64; on ext4 it is a handful.
    assert!(
        batches < requests,
        "64 concurrent posts took {batches} durable commits: no group commit"
    );
    assert_eq!(store.last_seq(list.id).expect("seq"), 64);
}

/// A new list at `addr` (named after it).
fn new_list(store: &Store, addr: &str) -> ListRecord {
    store
        .create_list(&ListAddress::parse(addr).expect("addr"), addr, "")
        .expect("create")
}

/// A new list whose posting policy is `posting`.
fn list_with(store: &Store, addr: &str, posting: plenary_core::list::PostingPolicy) -> ListRecord {
    let list = new_list(store, addr);
    let mut s = list.settings.clone();
    s.posting = posting;
    store.set_list_settings(addr, s).expect("posting policy")
}

/// Every spool segment's bytes, concatenated.
fn spool_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir.join("spool")).expect("spool dir") {
        out.extend(std::fs::read(e.expect("entry").path()).expect("segment"));
    }
    out
}

#[tokio::test]
async fn handled_mail_is_erased_without_touching_what_another_list_archived() {
    use plenary_core::list::PostingPolicy;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let a = list_with(&store, "a@x.org", PostingPolicy::Moderated);
    let b = list_with(&store, "b@x.org", PostingPolicy::Open);

    // One message cross-posted to A (held) and B (archived), and sent to B's owners.
    let raw = b"Message-ID: <cross@x>\r\nFrom: ana@example.net\r\nSubject: cross\r\n\r\ncrossposted body\r\n";
    let mut r = req(a.id, raw, RecipientKind::Post);
    r.handling = PostHandling::ByPolicy;
    r.targets = vec![
        IngestTarget {
            list: a.id,
            kind: RecipientKind::Post,
        },
        IngestTarget {
            list: b.id,
            kind: RecipientKind::Post,
        },
        IngestTarget {
            list: b.id,
            kind: RecipientKind::Owner,
        },
    ];
    let out = store.ingest(r).await.expect("ingest");
    let (TargetOutcome::Held(held), TargetOutcome::Archived(key), TargetOutcome::Inbox(inbox)) =
        (out[0], out[1], out[2])
    else {
        panic!("expected held, archived and inbox, got {out:?}")
    };
    // The moderator discards A's copy and the engine handles the owner mail: both free
    // their bytes, and B's archived message must still read back whole.
    store
        .apply(vec![Write::RemoveHeld(held, true), Write::InboxDone(inbox, true)])
        .expect("apply");
    let m = store.message(key).expect("read").expect("archived");
    assert_eq!(store.raw(&m).expect("B's copy survives"), raw);

    // A post only held, then discarded: its bytes are gone from the disk, not just unlisted.
    let secret = b"Message-ID: <gone@x>\r\nFrom: ana@example.net\r\n\r\nunique-secret-marker-8231\r\n";
    let mut r = req(a.id, secret, RecipientKind::Post);
    r.handling = PostHandling::ByPolicy;
    let out = store.ingest(r).await.expect("ingest");
    let TargetOutcome::Held(held) = out[0] else {
        panic!("expected held, got {out:?}")
    };
    let marker: &[u8] = b"unique-secret-marker-8231";
    assert!(spool_bytes(dir.path()).windows(marker.len()).any(|w| w == marker));
    let h = store.held_post(held).expect("read").expect("held");
    store.apply(vec![Write::RemoveHeld(held, true)]).expect("discard");
    assert!(!spool_bytes(dir.path()).windows(marker.len()).any(|w| w == marker));
    assert!(store.held_raw(&h).is_err(), "erased bytes must not read back");
    assert_eq!(store.raw(&m).expect("B's copy still there"), raw);
}

#[tokio::test]
async fn a_schema_1_store_is_migrated_into_the_spool() {
    use plenary_core::list::PostingPolicy;
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = format!(
        "Message-ID: <old@x>\r\nFrom: ana@example.net\r\nSubject: old\r\n\r\n{}\r\n",
        "an old body ".repeat(6_000)
    );
    let raw = raw.as_bytes();
    let (key, held, lost) = {
        let store = Store::open(settings(dir.path())).expect("open");
        let a = list_with(&store, "a@x.org", PostingPolicy::Moderated);
        let b = list_with(&store, "b@x.org", PostingPolicy::Open);
        let mut r = req(a.id, raw, RecipientKind::Post);
        r.handling = PostHandling::ByPolicy;
        r.targets.push(IngestTarget {
            list: b.id,
            kind: RecipientKind::Post,
        });
        let out = store.ingest(r).await.expect("ingest");
        let (TargetOutcome::Held(h), TargetOutcome::Archived(k)) = (out[0], out[1]) else {
            panic!("expected held and archived, got {out:?}")
        };
        // Two more archived messages and a command mail, to be given lost blobs below.
        let mut lost = Vec::new();
        for id in ["lost@x", "reused@x"] {
            let m = format!("Message-ID: <{id}>\r\nSubject: x\r\n\r\nbody\r\n");
            let out = store
                .ingest(req(b.id, m.as_bytes(), RecipientKind::Post))
                .await
                .expect("ingest");
            let TargetOutcome::Archived(k) = out[0] else {
                panic!("expected archived, got {out:?}")
            };
            lost.push(k);
        }
        let out = store
            .ingest(req(b.id, b"Subject: subscribe\r\n\r\n", RecipientKind::Request))
            .await
            .expect("ingest");
        assert!(matches!(out[0], TargetOutcome::Inbox(_)));
        (k, h, lost)
    };
    // Rewrite it as schema 1 left it: the bytes as 32 KiB chunks in a `blobs` tree, one blob
    // shared by the archived message and the held post, and no spool.
    {
        let db = sled::open(dir.path().join("sled")).expect("sled");
        let blobs = db.open_tree("blobs").expect("tree");
        let mut chunks = 0u32;
        for chunk in raw.chunks(32 * 1024) {
            let mut k = 7u64.to_be_bytes().to_vec();
            k.extend_from_slice(&chunks.to_be_bytes());
            blobs.insert(k, chunk).expect("chunk");
            chunks += 1;
        }
        assert_eq!(chunks, 3);
        // Schema 1's own bug left records whose blob was erased (9, 10: no chunks) or whose
        // blob id was reused by another message (7, of another size).
        let inbox_key = db
            .open_tree("inbox")
            .expect("tree")
            .first()
            .expect("read")
            .expect("entry")
            .0
            .to_vec();
        for (tree, k, blob) in [
            ("messages", key.to_bytes().to_vec(), 7u64),
            ("held", held.to_be_bytes().to_vec(), 7),
            ("messages", lost[0].to_bytes().to_vec(), 9),
            ("messages", lost[1].to_bytes().to_vec(), 7),
            ("inbox", inbox_key, 10),
        ] {
            let t = db.open_tree(tree).expect("tree");
            let v = t.get(&k).expect("get").expect("record");
            let mut j: serde_json::Value = serde_json::from_slice(&v).expect("json");
            let o = j.as_object_mut().expect("object");
            o.remove("raw");
            o.insert("blob".into(), blob.into());
            o.insert("chunks".into(), chunks.into());
            t.insert(k, serde_json::to_vec(&j).expect("json")).expect("put");
        }
        db.open_tree("meta").expect("meta").remove(SPOOL_END).expect("mark");
        db.open_tree("meta")
            .expect("meta")
            .insert(b"schema", &1u64.to_be_bytes())
            .expect("schema");
        db.flush().expect("flush");
    }
    std::fs::remove_dir_all(dir.path().join("spool")).expect("remove spool");

    let store = Store::open(settings(dir.path())).expect("the migrating open");
    let m = store.message(key).expect("read").expect("archived");
    assert_eq!(store.raw(&m).expect("migrated"), raw);
    let h = store.held_post(held).expect("read").expect("held");
    assert_eq!(store.held_raw(&h).expect("migrated"), raw);
    assert_ne!(m.raw, h.raw, "the held post gets a copy of its own");
    store.apply(vec![Write::RemoveHeld(held, true)]).expect("discard");
    assert_eq!(store.raw(&m).expect("the archived copy survives"), raw);
    // Lost bytes: the messages stay listed but do not read (never another message's
    // bytes); the command mail is dropped.
    for k in &lost {
        let m = store.message(*k).expect("read").expect("still listed");
        assert_eq!(m.raw, BlobRef::LOST);
        assert!(store.raw(&m).is_err());
    }
    assert!(store.inbox(10).expect("inbox").is_empty());
    drop(store);

    // Migrated once: the old tree is gone and a second open changes nothing.
    let store = Store::open(settings(dir.path())).expect("reopen");
    assert!(!store.inner.db.tree_names().iter().any(|n| n == b"blobs"));
    let m2 = store.message(key).expect("read").expect("archived");
    assert_eq!(m2.raw, m.raw);
    assert_eq!(store.raw(&m2).expect("raw"), raw);
}

#[tokio::test]
async fn a_store_whose_spool_is_missing_or_truncated_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(settings(dir.path())).expect("open");
        let list = new_list(&store, "l@x.org");
        store
            .ingest(req(list.id, b"Message-ID: <a@x>\r\n\r\nbody\r\n", RecipientKind::Post))
            .await
            .expect("ingest");
    }
    let seg = dir.path().join("spool/00000001.seg");
    let len = std::fs::metadata(&seg).expect("segment").len();
    // Cut one byte: appending from there would overwrite what a record points at.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .and_then(|f| f.set_len(len - 1))
        .expect("truncate");
    let err = Store::open(settings(dir.path()))
        .err()
        .expect("a truncated spool is refused");
    assert!(err.to_string().contains("missing or truncated"), "{err}");
    std::fs::remove_dir_all(dir.path().join("spool")).expect("rm spool");
    let err = Store::open(settings(dir.path()))
        .err()
        .expect("a missing spool is refused");
    assert!(err.to_string().contains("missing or truncated"), "{err}");
}

#[tokio::test]
async fn updating_a_held_post_that_was_discarded_meanwhile_does_not_bring_it_back() {
    use plenary_core::list::PostingPolicy;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = list_with(&store, "m@x.org", PostingPolicy::Moderated);
    let mut r = req(list.id, b"Message-ID: <h@x>\r\n\r\nbody\r\n", RecipientKind::Post);
    r.handling = PostHandling::ByPolicy;
    let out = store.ingest(r).await.expect("ingest");
    let TargetOutcome::Held(id) = out[0] else {
        panic!("expected held, got {out:?}")
    };
    // The notifier read the post before a moderator discarded it, and writes it back after.
    let mut h = store.held_post(id).expect("read").expect("held");
    store.apply(vec![Write::RemoveHeld(id, true)]).expect("discard");
    h.notified = true;
    store.apply(vec![Write::PutHeld(h)]).expect("late update");
    assert!(store.held_post(id).expect("read").is_none());
}

/// `list_ident` finds a list by its address in any case, forgets nothing, and finds a list
/// created after an earlier miss (misses are not remembered).
#[test]
fn list_ident_is_remembered_only_once_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    assert_eq!(store.list_ident("gov@x.org").expect("ident"), None);
    let addr = ListAddress::parse("gov@x.org").expect("addr");
    let list = store.create_list(&addr, "G", "").expect("create");
    for _ in 0..2 {
        assert_eq!(
            store.list_ident("GOV@x.org").expect("ident"),
            Some((list.id, addr.clone()))
        );
    }
    let mut settings = list.settings.clone();
    settings.digest_size = 7;
    store.set_list_settings("gov@x.org", settings).expect("settings");
    assert_eq!(store.list_ident("gov@x.org").expect("ident"), Some((list.id, addr)));
}

/// Posts waiting for a digest: one entry per list and group commit, read back post by post
/// beside an entry of the old one-post layout, and taken whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_entries_hold_a_group_commit_and_are_taken_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "d@x.org");
    // An entry as stores before group entries wrote it: the post's key, its time.
    let old = MessageKey {
        list: list.id,
        seq: 1_000_000,
    };
    store
        .trees()
        .digest
        .insert(old.to_bytes(), &7i64.to_be_bytes())
        .expect("insert");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let mut r = req(
            list.id,
            format!("From: a@b.org\r\nMessage-ID: <g{i}@x>\r\n\r\nbody\r\n").as_bytes(),
            RecipientKind::Post,
        );
        r.handling = PostHandling::Approved;
        tasks.push(tokio::spawn(async move { store.ingest(r).await }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        let out = t.await.expect("task").expect("ingest");
        let TargetOutcome::Archived(k) = out[0] else {
            panic!("expected archived, got {out:?}")
        };
        keys.push(k);
    }
    let pending = store.digest_pending().expect("pending");
    assert_eq!(pending.len(), 41, "every post once, and the old entry");
    assert!(pending.contains(&(old, 7)));
    for k in &keys {
        assert!(pending.iter().any(|(p, at)| p == k && *at == 1_800_000_000), "{k}");
    }
    assert!(
        store.trees().digest.len() < 41,
        "concurrent posts share entries ({} entries)",
        store.trees().digest.len()
    );
    store
        .apply(vec![Write::DigestTaken(pending.iter().map(|(k, _)| *k).collect())])
        .expect("taken");
    assert!(store.digest_pending().expect("pending").is_empty());
}

/// Readers that act on mail (the indexer, the fan-out, the list engine) see a group commit
/// only once it is durable. With the syncer held between the committer's two stages the
/// batch is applied (a plain read sees its index entry) but unanswered, and neither
/// `read_durable` nor `read_durable_blocking` returns until the flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_act_on_mail_wait_until_it_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "l@x.org");
    // Idle: nothing begun and not durable, so no wait.
    assert!(store
        .read_durable_blocking(|s| s.index_pending(10))
        .expect("read")
        .is_empty());

    let hold = store.hold_durability();
    let s = store.clone();
    let ingest = tokio::spawn(async move {
        s.ingest(req(list.id, b"Message-ID: <d1@x>\r\n\r\nhi\r\n", RecipientKind::Post))
            .await
    });
    assert!(
        store.wait_applied(|s| s.index_pending_len() > 0).await,
        "the committer never applied the batch"
    );
    assert_eq!(
        store.index_pending(10).expect("plain read").len(),
        1,
        "applied records are visible"
    );

    let (tx, rx) = std::sync::mpsc::channel();
    let s = store.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s.read_durable_blocking(|s| s.index_pending(10)));
    });
    let s = store.clone();
    let async_read = tokio::spawn(async move { s.read_durable(|s| s.index_pending(10)).await });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        rx.try_recv().is_err(),
        "a blocking reader saw a commit that is not durable"
    );
    assert!(
        !async_read.is_finished(),
        "an async reader saw a commit that is not durable"
    );
    assert!(!ingest.is_finished(), "a sender was answered before the flush");

    drop(hold);
    let blocking = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the blocking reader returns after the flush")
        .expect("read");
    assert_eq!(blocking.len(), 1);
    let read = async_read.await.expect("join").expect("read");
    assert_eq!(read.len(), 1);
    let out = ingest.await.expect("join").expect("ingest");
    assert!(matches!(out[0], TargetOutcome::Archived(_)), "{out:?}");
}

/// A reader waiting for a commit that will never be durable (the store failed meanwhile)
/// gets an error instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_waiting_for_durability_give_up_when_the_store_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "l@x.org");
    let hold = store.hold_durability();
    let s = store.clone();
    let ingest = tokio::spawn(async move {
        s.ingest(req(list.id, b"Message-ID: <f1@x>\r\n\r\nhi\r\n", RecipientKind::Post))
            .await
    });
    assert!(
        store.wait_applied(|s| s.index_pending_len() > 0).await,
        "the committer never applied the batch"
    );
    let s = store.clone();
    let waiting = std::thread::spawn(move || s.read_durable_blocking(|s| s.index_pending(10)));
    let s = store.clone();
    let waiting_async = tokio::spawn(async move { s.read_durable(|s| s.index_pending(10)).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished() && !waiting_async.is_finished());
    store.mark_failed();
    assert!(matches!(waiting.join().expect("join"), Err(StoreError::Failed)));
    assert!(matches!(waiting_async.await.expect("join"), Err(StoreError::Failed)));
    drop(hold);
    // The held batch is answered with an error, never a success.
    assert!(ingest.await.expect("join").is_err());
}

/// `Store::apply` (the list engine's and the fan-out's own writes) is covered too: what it
/// applied is visible before its sync, and readers that act on it wait for that sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_wait_for_the_sync_of_engine_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(settings(dir.path())).expect("open");
    let list = new_list(&store, "l@x.org");
    let job = FanoutJob {
        id: 7,
        list: list.id,
        what: JobKind::Notice {
            to: vec![plenary_core::MemberAddress::parse("ana@example.net").expect("valid")],
            raw: "Subject: hi\r\n\r\nhello\r\n".into(),
        },
        created: 1_800_000_000,
        cursor: None,
        walked: false,
        delivered: 0,
    };
    let hold = store.hold_durability();
    let s = store.clone();
    let writer = std::thread::spawn(move || s.apply(vec![Write::PutJob(job)]));
    assert!(
        store.wait_applied(|s| s.jobs().is_ok_and(|j| !j.is_empty())).await,
        "the write was never applied"
    );
    let s = store.clone();
    let reader = tokio::spawn(async move { s.read_durable(Store::jobs).await });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !reader.is_finished(),
        "a reader saw an engine write that is not durable"
    );
    assert!(!writer.is_finished(), "apply returned before its sync");
    drop(hold);
    writer.join().expect("join").expect("apply");
    assert_eq!(reader.await.expect("join").expect("read").len(), 1);
}
