use super::*;
use plenary_core::meta::Fallback;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

fn meta(raw: &[u8]) -> MessageMeta {
    MessageMeta::extract(
        raw,
        Fallback {
            envelope_date: None,
            received_at: 2_000_000_000,
        },
    )
}

fn synth(id: &str, refs: &[&str], irt: Option<&str>, subject: &str, date: i64) -> MessageMeta {
    let mut raw = format!("Message-ID: <{id}>\r\nSubject: {subject}\r\nFrom: a@example.org\r\n");
    if !refs.is_empty() {
        let r: Vec<String> = refs.iter().map(|r| format!("<{r}>")).collect();
        raw.push_str(&format!("References: {}\r\n", r.join(" ")));
    }
    if let Some(i) = irt {
        raw.push_str(&format!("In-Reply-To: <{i}>\r\n"));
    }
    let d = chrono_like(date);
    raw.push_str(&format!("Date: {d}\r\n\r\nbody\r\n"));
    meta(raw.as_bytes())
}

/// RFC 2822 date for a Unix time (days from 2020-01-01 are enough for these tests).
fn chrono_like(ts: i64) -> String {
    let day = ts / 86_400 - 18_262; // days since 2020-01-01
    let secs = ts % 86_400;
    let (mut y, mut d) = (2020, day);
    loop {
        let len = if y % 4 == 0 { 366 } else { 365 };
        if d < len {
            break;
        }
        d -= len;
        y += 1;
    }
    let months = [
        31,
        if y % 4 == 0 { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let names = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut m = 0;
    while d >= months[m] {
        d -= months[m];
        m += 1;
    }
    format!(
        "{} {} {y} {:02}:{:02}:{:02} +0000",
        d + 1,
        names[m],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

const T0: i64 = 1_600_000_000;

/// (message-id, depth) of a thread in reading order; ghosts as "-".
fn shape(t: &mut Threads, ids: &HashMap<u64, String>, seq: u64) -> Vec<(String, usize)> {
    let Some(id) = t.thread_of(seq) else { return Vec::new() };
    t.tree(id)
        .into_iter()
        .map(|i| (i.seq.map(|s| ids[&s].clone()).unwrap_or_else(|| "-".into()), i.depth))
        .collect()
}

/// Every seq appears in exactly one thread tree, once; counts add up.
fn check_partition(t: &mut Threads, seqs: &[u64]) -> Vec<Vec<u64>> {
    let all = t.recent(0, usize::MAX);
    let mut seen = HashSet::new();
    let mut parts = Vec::new();
    let mut total = 0;
    for info in &all {
        let tree = t.tree(info.id);
        let msgs: Vec<u64> = tree.iter().filter_map(|i| i.seq).collect();
        assert_eq!(msgs.len(), info.count, "thread count matches its tree");
        for s in &msgs {
            assert!(seen.insert(*s), "message {s} shown twice");
            assert_eq!(t.thread_of(*s), Some(info.id));
        }
        total += info.count;
        let mut sorted = msgs.clone();
        sorted.sort_unstable();
        parts.push(sorted);
    }
    assert_eq!(total, seqs.len(), "no message lost or duplicated");
    for s in seqs {
        assert!(seen.contains(s), "message {s} is in no thread");
    }
    parts.sort();
    parts
}

#[test]
fn base_subjects() {
    assert_eq!(
        base_subject("Re: [dc-is] Re:  Agenda  items"),
        ("agenda items".into(), true)
    );
    assert_eq!(base_subject("AW: WG: Bericht"), ("bericht".into(), true));
    assert_eq!(base_subject("Réf. : Compte rendu"), ("compte rendu".into(), true));
    assert_eq!(base_subject("RE[2]: budget"), ("budget".into(), true));
    assert_eq!(base_subject("Fwd: minutes"), ("minutes".into(), false));
    assert_eq!(base_subject("Regarding: minutes"), ("regarding: minutes".into(), false));
    assert_eq!(base_subject("回复：会议"), ("会议".into(), true));
    assert_eq!(base_subject(""), (String::new(), false));
}

#[test]
fn references_build_the_tree_in_any_order() {
    let msgs = [
        synth("a", &[], None, "Agenda", T0),
        synth("b", &["a"], Some("a"), "Re: Agenda", T0 + 10),
        synth("c", &["a", "b"], Some("b"), "Re: Agenda", T0 + 20),
        synth("d", &["a"], Some("a"), "Re: Agenda", T0 + 30),
        synth("e", &["a", "b", "c"], None, "Re: Agenda", T0 + 40),
    ];
    let ids: HashMap<u64, String> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| (i as u64 + 1, m.message_id.clone()))
        .collect();
    let expect = vec![
        ("a".to_string(), 0),
        ("b".to_string(), 1),
        ("c".to_string(), 2),
        ("e".to_string(), 3),
        ("d".to_string(), 1),
    ];
    for order in permutations(5) {
        let mut t = Threads::new();
        for &i in &order {
            t.add(i as u64 + 1, &msgs[i], 0);
        }
        assert_eq!(shape(&mut t, &ids, 1), expect, "order {order:?}");
        assert_eq!(t.thread_count(), 1);
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(prefix: &mut Vec<usize>, rest: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if rest.is_empty() {
            out.push(prefix.clone());
            return;
        }
        for i in 0..rest.len() {
            let x = rest.remove(i);
            prefix.push(x);
            go(prefix, rest, out);
            prefix.pop();
            rest.insert(i, x);
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), &mut (0..n).collect(), &mut out);
    out
}

#[test]
fn reference_loops_do_not_hang_or_lose_messages() {
    // a says its parent is b, b says its parent is a; c references both ways round.
    let msgs = [
        synth("a", &["b"], Some("b"), "x", T0),
        synth("b", &["a"], Some("a"), "x", T0 + 1),
        synth("c", &["a", "b", "a"], Some("c"), "x", T0 + 2),
        synth("d", &["d"], Some("d"), "self", T0 + 3),
    ];
    for order in permutations(4) {
        let mut t = Threads::new();
        for &i in &order {
            t.add(i as u64 + 1, &msgs[i], 0);
        }
        let parts = check_partition(&mut t, &[1, 2, 3, 4]);
        assert!(parts.contains(&vec![4]), "the self-referencing message stands alone");
        assert!(parts.contains(&vec![1, 2, 3]), "{parts:?} for {order:?}");
    }
}

#[test]
fn ghosts_keep_siblings_together() {
    // The root was never archived; two replies name it.
    let msgs = [
        synth("r1", &["root"], Some("root"), "Re: Plan", T0 + 10),
        synth("r2", &["root"], Some("root"), "Re: Plan", T0 + 20),
        synth("r3", &["root", "r1"], Some("r1"), "Re: Plan", T0 + 30),
    ];
    let mut t = Threads::new();
    let ids: HashMap<u64, String> = (1..=3).map(|i| (i, msgs[i as usize - 1].message_id.clone())).collect();
    for (i, m) in msgs.iter().enumerate() {
        t.add(i as u64 + 1, m, i as u64);
    }
    assert_eq!(
        shape(&mut t, &ids, 2),
        vec![
            ("-".to_string(), 0),
            ("r1".to_string(), 1),
            ("r3".to_string(), 2),
            ("r2".to_string(), 1)
        ]
    );
    let info = t.recent(0, 1).remove(0);
    assert_eq!((info.root, info.count, info.participants), (1, 3, 3));
    assert_eq!(info.last, T0 + 30);
}

#[test]
fn subject_joins_only_headerless_replies_within_the_window() {
    let msgs = [
        synth("a", &[], None, "[dc] Agenda", T0),
        // Lost its headers but says "Re:": joins a.
        synth("b", &[], None, "Re: [dc] Agenda", T0 + 3600),
        // Same subject, not a reply: a new thread.
        synth("c", &[], None, "Agenda", T0 + 7200),
        // A reply long after the window: stays alone.
        synth("d", &[], None, "Re: Unrelated", T0),
        synth("e", &[], None, "Re: Agenda", T0 + SUBJECT_WINDOW_SECS + 7300),
    ];
    let mut t = Threads::new();
    for (i, m) in msgs.iter().enumerate() {
        t.add(i as u64 + 1, m, 0);
    }
    assert_eq!(t.thread_of(2), t.thread_of(1));
    assert_ne!(t.thread_of(3), t.thread_of(1));
    assert_ne!(t.thread_of(5), t.thread_of(1));
    assert_ne!(
        t.thread_of(5),
        t.thread_of(3),
        "c started less than the window before e, but e is too late for a"
    );
    check_partition(&mut t, &[1, 2, 3, 4, 5]);
    let id = t.thread_of(1).expect("thread");
    let tree = t.tree(id);
    assert_eq!(
        tree,
        vec![TreeItem { seq: Some(1), depth: 0 }, TreeItem { seq: Some(2), depth: 1 }]
    );
}

#[test]
fn duplicate_message_ids_are_all_kept() {
    let msgs = [
        synth("a", &[], None, "one", T0),
        synth("a", &[], None, "one again", T0 + 1),
        synth("b", &["a"], Some("a"), "Re: one", T0 + 2),
    ];
    let mut t = Threads::new();
    for (i, m) in msgs.iter().enumerate() {
        t.add(i as u64 + 1, m, 0);
    }
    check_partition(&mut t, &[1, 2, 3]);
    assert_eq!(t.thread_of(3), t.thread_of(1), "the reply goes to the first copy");
    t.add(3, &msgs[2], 0);
    assert_eq!(t.len(), 3, "a sequence number is added once");
}

// ---- corpora ----------------------------------------------------------------------------

/// The shared corpora, if present; under CI (`CI` set) a missing corpus fails the test.
fn corpora() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora");
    if !p.is_dir() && std::env::var_os("CI").is_some() {
        panic!("{} is missing, and CI must run the corpus tests", p.display());
    }
    p.is_dir().then_some(p)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Thread a maildir-like folder in the given order; returns (threads, seq → Message-ID).
/// With `dedupe`, only the first file (in name order) of each Message-ID is threaded, as
/// the store keeps only the first copy.
fn thread_files(files: &[PathBuf], order: &[usize], dedupe: bool) -> (Threads, HashMap<u64, String>) {
    let metas: Vec<MessageMeta> = files
        .iter()
        .map(|f| meta(&std::fs::read(f).unwrap_or_default()))
        .collect();
    let mut first = HashMap::new();
    for (i, m) in metas.iter().enumerate() {
        first.entry(m.message_id.clone()).or_insert(i);
    }
    let mut t = Threads::new();
    let mut ids = HashMap::new();
    for &i in order {
        if dedupe && first[&metas[i].message_id] != i {
            continue;
        }
        ids.insert(i as u64 + 1, metas[i].message_id.clone());
        t.add(i as u64 + 1, &metas[i], i as u64);
    }
    (t, ids)
}

fn orders(n: usize) -> Vec<Vec<usize>> {
    let fwd: Vec<usize> = (0..n).collect();
    let rev: Vec<usize> = (0..n).rev().collect();
    // A fixed pseudo-random shuffle (LCG), so failures reproduce.
    let mut shuf = fwd.clone();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        shuf.swap(i, (x >> 33) as usize % (i + 1));
    }
    vec![fwd, rev, shuf]
}

#[test]
fn notmuch_ghost_root() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return;
    };
    let files = files_under(&c.join("notmuch-test-corpora/threading/ghost-root"));
    assert_eq!(files.len(), 9);
    for order in orders(files.len()) {
        let (mut t, ids) = thread_files(&files, &order, true);
        let seq_of = |id: &str| ids.iter().find(|(_, v)| v.as_str() == id).map(|(k, _)| *k);
        let root = seq_of("000-real-root@example.org").expect("root");
        let got = shape(&mut t, &ids, root);
        let want: Vec<(String, usize)> = [
            ("000-real-root@example.org", 0),
            ("001-child@example.org", 1),
            // Its In-Reply-To names a message nobody has; the ghost has one reply, so it
            // is skipped and the fake root sits where the ghost would be.
            ("001-fake-message-root@example.org", 2),
            ("001-grand-child@example.org", 2),
            ("001-great-grand-child@example.org", 3),
            ("001-grand-child2@example.org", 2),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), *b))
        .collect();
        assert_eq!(got, want, "order {order:?}");
        // The request-tracker messages: one ghost ticket with the original and its replies.
        let orig = seq_of("87bmc6lp3h.fsf@len.workgroup").expect("original");
        let rt: Vec<u64> = ids.keys().copied().filter(|s| ids[s].starts_with("rt-")).collect();
        assert_eq!(rt.len(), 2);
        for s in rt {
            assert_eq!(t.thread_of(s), t.thread_of(orig), "order {order:?}");
        }
        let seqs: Vec<u64> = ids.keys().copied().collect();
        let parts = check_partition(&mut t, &seqs);
        assert_eq!(parts.len(), 2);
    }
}

#[test]
fn notmuch_parent_priority() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return;
    };
    let files = files_under(&c.join("notmuch-test-corpora/threading/parent-priority"));
    assert_eq!(files.len(), 3);
    for order in permutations(3) {
        let (mut t, ids) = thread_files(&files, &order, true);
        let root = ids
            .iter()
            .find(|(_, v)| v.as_str() == "B00-root@example.org")
            .map(|(k, _)| *k);
        let got = shape(&mut t, &ids, root.expect("root"));
        assert_eq!(
            got,
            vec![
                ("B00-root@example.org".to_string(), 0),
                ("B01-child@example.org".to_string(), 1),
                ("B01-grand-child@example.org".to_string(), 2)
            ],
            "order {order:?}"
        );
    }
}

#[test]
fn notmuch_duplicates_and_default_corpus() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return;
    };
    for dir in ["duplicate", "default", "lkml"] {
        let files = files_under(&c.join("notmuch-test-corpora").join(dir));
        assert!(files.len() >= 9, "{dir}");
        let mut partitions = Vec::new();
        for order in orders(files.len()) {
            let (mut t, ids) = thread_files(&files, &order, true);
            let seqs: Vec<u64> = ids.keys().copied().collect();
            partitions.push(check_partition(&mut t, &seqs));
        }
        assert_eq!(
            partitions[0], partitions[1],
            "{dir}: same threads forwards and backwards"
        );
        assert_eq!(partitions[0], partitions[2], "{dir}: same threads shuffled");
    }
    // Known threads of the default corpus: every message whose base subject is one of these
    // is in one thread, which holds that many messages (the patch thread also holds its
    // "[PATCH 2/2]" reply).
    let files = files_under(&c.join("notmuch-test-corpora/default"));
    let (mut t, _) = thread_files(&files, &(0..files.len()).collect::<Vec<_>>(), true);
    for (subject, size, thread_size) in [
        ("working with maildir storage?", 7, 7),
        ("close message file after parsing message headers", 4, 5),
        ("mac os x/darwin compatibility issues", 4, 4),
    ] {
        let members: Vec<u64> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                let m = meta(&std::fs::read(f).unwrap_or_default());
                base_subject(&m.subject).0 == subject
            })
            .map(|(i, _)| i as u64 + 1)
            .collect();
        assert_eq!(members.len(), size, "{subject}");
        let id = t.thread_of(members[0]).expect("threaded");
        for s in &members {
            assert_eq!(t.thread_of(*s), Some(id), "{subject}");
        }
        assert_eq!(t.info(id).map(|i| i.count), Some(thread_size), "{subject}");
    }
}

/// Messages of an mboxrd file (lore's `From mboxrd@z` separators), unquoted.
fn mboxrd(path: &Path) -> Vec<Vec<u8>> {
    let mut data = Vec::new();
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            out.push(Vec::new());
            continue;
        }
        if let Some(cur) = out.last_mut() {
            let l = if line.starts_with(b">") && line.iter().skip_while(|&&b| b == b'>').take(5).eq(b"From ".iter()) {
                &line[1..]
            } else {
                line
            };
            cur.extend_from_slice(l);
        }
    }
    out
}

#[test]
fn real_archive_replies_stay_with_their_parents() {
    let Some(c) = corpora() else {
        eprintln!("SKIPPED: ../shared/corpora not found");
        return;
    };
    for name in ["jailhouse-dev-lore", "usrp-users-lore"] {
        let dir = c.join(name);
        let files: Vec<PathBuf> = files_under(&dir)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".gz"))
            .collect();
        // The store keeps the first copy of a Message-ID; so does this test.
        let mut metas: Vec<MessageMeta> = Vec::new();
        let mut seen = HashSet::new();
        for f in &files {
            for raw in mboxrd(f) {
                let m = meta(&raw);
                if seen.insert(m.message_id.clone()) {
                    metas.push(m);
                }
            }
        }
        assert!(metas.len() > 1000, "{name}: {}", metas.len());
        let by_id: HashMap<&str, u64> = metas
            .iter()
            .enumerate()
            .map(|(i, m)| (m.message_id.as_str(), i as u64 + 1))
            .collect();
        let mut partitions = Vec::new();
        for order in orders(metas.len()) {
            let mut t = Threads::new();
            for &i in &order {
                t.add(i as u64 + 1, &metas[i], 0);
            }
            let seqs: Vec<u64> = (1..=metas.len() as u64).collect();
            partitions.push(check_partition(&mut t, &seqs));
            // Every reply whose In-Reply-To is archived is in its parent's thread, and so
            // is every message whose references name an archived message.
            let mut replies = 0;
            for (i, m) in metas.iter().enumerate() {
                let seq = i as u64 + 1;
                for p in m.in_reply_to.iter().chain(m.references.iter()) {
                    if let Some(&ps) = by_id.get(p.as_str()) {
                        if metas[ps as usize - 1].message_id != m.message_id {
                            assert_eq!(t.thread_of(seq), t.thread_of(ps), "{name}: {} → {p}", m.message_id);
                            replies += 1;
                        }
                    }
                }
            }
            assert!(replies > 500, "{name}: only {replies} links checked");
        }
        assert_eq!(partitions[0], partitions[1], "{name}: order does not change threads");
        assert_eq!(partitions[0], partitions[2], "{name}: order does not change threads");
    }
}

#[test]
fn parent_rows_follow_depths() {
    let rows: Vec<TreeItem> = [0, 1, 2, 2, 1, 2, 3, 1]
        .iter()
        .enumerate()
        .map(|(i, d)| TreeItem {
            seq: Some(i as u64),
            depth: *d,
        })
        .collect();
    assert_eq!(
        parent_rows(&rows),
        vec![None, Some(0), Some(1), Some(1), Some(0), Some(4), Some(5), Some(0)]
    );
}
