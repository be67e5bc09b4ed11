//! Conversation threading for the archive views: Jamie Zawinski's algorithm
//! (<https://www.jwz.org/doc/threading.html>), kept incrementally in memory per list.
//!
//! Why in memory and not in sled: a thread is a *view* of the archive, and JWZ threading
//! changes its mind as mail arrives (a late message can reveal that two threads were one,
//! or fill in a "ghost" parent). Keeping the derived structure out of the durable store
//! keeps sled the only truth and the ingest path untouched; the web layer feeds each list's
//! [`Threads`] with the messages added since it last looked (messages have increasing
//! per-list sequence numbers) and rebuilds it from sled after a restart.
//!
//! What follows JWZ, and where we depart:
//! - **References for the ancestry, In-Reply-To for the direct parent.** Consecutive
//!   Message-IDs in References are linked parent → child when the child has no parent yet,
//!   the link makes no loop, and the child is a ghost or a message without threading
//!   headers of its own. The message hangs under its In-Reply-To when it has one (clients
//!   that mangle References, as in notmuch's "parent-priority" corpus, usually get
//!   In-Reply-To right), else under its last reference. A message's own headers are
//!   definitive: they replace a guessed parent, and a guessed link that would make them
//!   close a loop is cut. So the result hardly depends on the order mail arrives in.
//! - **Ghosts.** A Message-ID that is referenced but not archived gets an empty container,
//!   so its replies stay together. In the tree a ghost with one child is skipped and a ghost
//!   with several is shown as a placeholder ([`TreeItem::seq`] is `None`).
//! - **Loops** never form: a link that would make a node its own ancestor is refused.
//! - **Duplicate Message-IDs** (the store keeps the first, but imports can carry others)
//!   each get their own container; the later one never collects children.
//! - **Subject, as a last resort, and only for mail that lost its headers.** JWZ merges
//!   every root with the same subject; over an archive spanning years that glues unrelated
//!   "Agenda" threads together. We only attach a thread whose first message has neither
//!   References nor In-Reply-To *and* a reply subject ("Re: …", "AW: …", "Réf. : …") to the
//!   most recent earlier thread with the same base subject that started within
//!   [`SUBJECT_WINDOW_SECS`].

use plenary_core::MessageMeta;
use std::collections::HashMap;

mod entry;
pub use entry::{author_id, DecodeError, Entry, MAX_REFS};

const NONE: u32 = u32::MAX;
/// Bound on parent-chain walks. Links never form loops; this only caps absurd depths.
const MAX_DEPTH: usize = 100_000;
/// How long after a thread started a headerless reply may still be attached to it by subject.
pub const SUBJECT_WINDOW_SECS: i64 = 120 * 86_400;

/// A thread, named by its top container. Stable while the process runs; not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadId(u32);

#[derive(Debug, Clone)]
struct Msg {
    seq: u64,
    date: i64,
    subject: u32,
    reply: bool,
    headerless: bool,
    author: u64,
}

#[derive(Debug, Clone)]
struct Node {
    msg: Option<Msg>,
    parent: u32,
    /// The parent came from another message's References, not from this one's headers.
    guessed: bool,
    /// Children as an intrusive list (first child, then each child's next sibling): no
    /// allocation per node. Their order carries no meaning; readers sort them.
    first_child: u32,
    next_sibling: u32,
}

/// What the list views show of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadInfo {
    pub id: ThreadId,
    /// The message shown as the thread's start: the top message, or the earliest one when
    /// the top is a ghost.
    pub root: u64,
    pub count: usize,
    pub first: i64,
    pub last: i64,
    /// The newest message.
    pub last_seq: u64,
    /// Distinct authors (by the caller's author key).
    pub participants: usize,
}

/// One row of a thread tree, in reading order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeItem {
    /// The message, or `None` for a placeholder of a missing parent that has several replies.
    pub seq: Option<u64>,
    pub depth: usize,
}

/// The parent of each row of a [`Threads::tree`]: the nearest earlier row with a smaller
/// depth (`None` for the top). Linear time.
pub fn parent_rows(tree: &[TreeItem]) -> Vec<Option<usize>> {
    let mut out = Vec::with_capacity(tree.len());
    let mut open: Vec<usize> = Vec::new();
    for (i, row) in tree.iter().enumerate() {
        while open.last().is_some_and(|&j| tree[j].depth >= row.depth) {
            open.pop();
        }
        out.push(open.last().copied());
        open.push(i);
    }
    out
}

#[derive(Debug, Default)]
struct View {
    /// Effective thread (top container) of each node that holds a message.
    top: Vec<u32>,
    /// Threads attached by subject: target top → attached tops.
    attached: HashMap<u32, Vec<u32>>,
    /// Every thread, newest activity first.
    threads: Vec<ThreadInfo>,
    /// Top → position in `threads`.
    pos: HashMap<u32, usize>,
    /// [`Threads::authors`], counted on first use after a change.
    authors: Option<Vec<(u64, usize, i64, u64)>>,
}

/// Sequence number → node, for the dense per-list numbers the store hands out (a slot per
/// number up to the highest: 4 bytes each, against about 20 in a hash map).
#[derive(Debug, Default)]
struct SeqMap {
    slots: Vec<u32>,
    len: usize,
}

impl SeqMap {
    fn get(&self, seq: u64) -> Option<u32> {
        let i = usize::try_from(seq).ok()?;
        self.slots.get(i).copied().filter(|&n| n != NONE)
    }

    fn insert(&mut self, seq: u64, node: u32) {
        let Ok(i) = usize::try_from(seq) else { return };
        if i >= self.slots.len() {
            self.slots.resize(i + 1, NONE);
        }
        if self.slots[i] == NONE {
            self.len += 1;
        }
        self.slots[i] = node;
    }

    fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots.iter().copied().filter(|&n| n != NONE)
    }

    fn shrink_to_fit(&mut self) {
        self.slots.shrink_to_fit();
    }
}

/// The threads of one list.
#[derive(Debug, Default)]
pub struct Threads {
    /// Message-ID (as its [`key`]) → node.
    ids: HashMap<u64, u32>,
    nodes: Vec<Node>,
    by_seq: SeqMap,
    /// Base subject (as its [`key`]) → subject number.
    subjects: HashMap<u64, u32>,
    last_seq: u64,
    view: Option<View>,
}

/// The 64-bit key a Message-ID or base subject is kept under: the first 8 bytes of its
/// SHA-256. Only lookups need the strings, and a list's worth of them (every Message-ID,
/// including referenced ones not in the archive) as separate heap strings was most of the
/// views' memory. A chance collision among a million Message-IDs is about 3·10^-8; one
/// made on purpose needs a 64-bit preimage to touch anyone else's message (two colliding
/// IDs of one's own only move one's own mail).
fn key(s: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Reply and forward markers (lower case, without the colon) stripped from subjects, in the
/// languages coalitions write in. `true` marks a reply.
const PREFIXES: &[(&str, bool)] = &[
    ("re", true),
    ("aw", true),
    ("sv", true),
    ("antw", true),
    ("réf", true),
    ("ref", true),
    ("rif", true),
    ("odp", true),
    ("vá", true),
    ("ynt", true),
    ("rv", false),
    ("fwd", false),
    ("fw", false),
    ("tr", false),
    ("wg", false),
    ("enc", false),
    ("答复", true),
    ("回复", true),
    ("ответ", true),
    ("رد", true),
];

/// The base subject (lower case, without list tags and reply/forward markers) and whether a
/// reply marker was found.
pub fn base_subject(subject: &str) -> (String, bool) {
    let mut s = subject.trim();
    let mut reply = false;
    loop {
        let before = s;
        if let Some(rest) = s.strip_prefix('[') {
            if let Some(end) = rest.find(']') {
                s = rest[end + 1..].trim_start();
            }
        }
        // "Re:", "RE :", "Re[2]:", "Réf. :", "答复：" and the like.
        let lower = s.to_lowercase();
        for (p, is_reply) in PREFIXES {
            let Some(after) = lower.strip_prefix(p) else { continue };
            let mut rest = after.trim_start_matches(['.', ' ']);
            if let Some(r) = rest.strip_prefix('[') {
                match r.find(']') {
                    Some(e) if r[..e].chars().all(|c| c.is_ascii_digit()) => rest = &r[e + 1..],
                    _ => continue,
                }
            } else if let Some(r) = rest.strip_prefix('(') {
                match r.find(')') {
                    Some(e) if r[..e].chars().all(|c| c.is_ascii_digit()) => rest = &r[e + 1..],
                    _ => continue,
                }
            }
            let rest = rest.trim_start();
            let Some(rest) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('：')) else {
                continue;
            };
            // Map the position in `lower` back to `s` (lower-casing may change byte lengths).
            let consumed = lower.len() - rest.len();
            let chars = lower[..consumed].chars().count();
            s = s
                .char_indices()
                .nth(chars)
                .map(|(i, _)| &s[i..])
                .unwrap_or("")
                .trim_start();
            reply |= is_reply;
            break;
        }
        if s == before {
            break;
        }
    }
    let base = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    (base, reply)
}

impl Threads {
    pub fn new() -> Threads {
        Threads::default()
    }

    /// Highest sequence number added so far.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Give back the spare capacity the tables grew with (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        self.ids.shrink_to_fit();
        self.nodes.shrink_to_fit();
        self.by_seq.shrink_to_fit();
        self.subjects.shrink_to_fit();
    }

    /// Number of messages threaded.
    pub fn len(&self) -> usize {
        self.by_seq.len
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.len == 0
    }

    fn node_for(&mut self, k: u64) -> u32 {
        if let Some(&n) = self.ids.get(&k) {
            return n;
        }
        let n = self.push_node();
        self.ids.insert(k, n);
        n
    }

    fn push_node(&mut self) -> u32 {
        let n = self.nodes.len() as u32;
        self.nodes.push(Node {
            msg: None,
            parent: NONE,
            guessed: false,
            first_child: NONE,
            next_sibling: NONE,
        });
        n
    }

    /// True if `a` is `b` or one of its ancestors.
    fn is_ancestor(&self, a: u32, b: u32) -> bool {
        let mut cur = b;
        for _ in 0..MAX_DEPTH {
            if cur == a {
                return true;
            }
            if cur == NONE {
                return false;
            }
            cur = self.nodes[cur as usize].parent;
        }
        true
    }

    fn unlink(&mut self, child: u32) {
        let p = self.nodes[child as usize].parent;
        if p != NONE {
            let next = self.nodes[child as usize].next_sibling;
            if self.nodes[p as usize].first_child == child {
                self.nodes[p as usize].first_child = next;
            } else {
                let mut c = self.nodes[p as usize].first_child;
                while c != NONE {
                    let n = self.nodes[c as usize].next_sibling;
                    if n == child {
                        self.nodes[c as usize].next_sibling = next;
                        break;
                    }
                    c = n;
                }
            }
            self.nodes[child as usize].next_sibling = NONE;
            self.nodes[child as usize].parent = NONE;
        }
    }

    fn link(&mut self, parent: u32, child: u32, guessed: bool) {
        self.nodes[child as usize].parent = parent;
        self.nodes[child as usize].guessed = guessed;
        self.nodes[child as usize].next_sibling = self.nodes[parent as usize].first_child;
        self.nodes[parent as usize].first_child = child;
    }

    /// Add an archived message. `author` is the caller's key for its sender (used only to
    /// count participants and to list by author). Messages not meant for the archive and
    /// sequence numbers already seen are ignored.
    pub fn add(&mut self, seq: u64, meta: &MessageMeta, author: u64) {
        if let Some(mut e) = Entry::from_meta(seq, meta) {
            e.author = author;
            self.add_entry(&e);
        }
    }

    /// Add an archived message from its compact [`Entry`] (`entry.author` is taken as the
    /// caller's key, as in [`Threads::add`]). Sequence numbers already seen are ignored.
    pub fn add_entry(&mut self, e: &Entry) {
        if self.by_seq.get(e.seq).is_some() {
            return;
        }
        let seq = e.seq;
        self.view = None;
        self.last_seq = self.last_seq.max(seq);
        let node = match self.ids.get(&e.id) {
            Some(&n) if self.nodes[n as usize].msg.is_none() => n,
            Some(_) => self.push_node(),
            None => self.node_for(e.id),
        };
        let next = self.subjects.len() as u32;
        let subject = *self.subjects.entry(e.subject).or_insert(next);
        let headerless = e.headerless;
        self.nodes[node as usize].msg = Some(Msg {
            seq,
            date: e.date,
            subject,
            reply: e.reply,
            headerless,
            author: e.author,
        });
        self.by_seq.insert(seq, node);

        // The ancestry comes from References; the direct parent is In-Reply-To when there is
        // one (clients that mangle References usually get In-Reply-To right), else the last
        // reference. (The entry's references already leave out the message and its
        // In-Reply-To.)
        let chain = e.refs.iter().copied().chain(e.irt);
        // This message's own headers are definitive: drop a parent guessed from others'
        // References (a message without any such headers keeps the guess: it is all we know).
        if !headerless {
            self.unlink(node);
        }
        let mut prev = NONE;
        for id in chain {
            let c = self.node_for(id);
            // Another message's References may place a ghost, or an archived message that
            // has no threading headers of its own, but never move one that has them.
            let open = match &self.nodes[c as usize].msg {
                None => true,
                Some(m) => m.headerless,
            };
            if prev != NONE && c != prev && open && self.nodes[c as usize].parent == NONE && !self.is_ancestor(c, prev)
            {
                self.link(prev, c, true);
            }
            prev = c;
        }
        if prev == NONE || prev == node || self.nodes[node as usize].parent == prev {
            return;
        }
        if self.is_ancestor(node, prev) {
            // The link would close a loop. If the loop runs through a guessed link below
            // this message, the guess was wrong: cut it.
            let mut x = prev;
            while self.nodes[x as usize].parent != node {
                x = self.nodes[x as usize].parent;
                if x == NONE {
                    return;
                }
            }
            if !self.nodes[x as usize].guessed {
                return;
            }
            self.unlink(x);
        }
        self.unlink(node);
        self.link(prev, node, false);
    }

    fn view(&mut self) -> &View {
        if self.view.is_none() {
            self.view = Some(self.compute());
        }
        match &self.view {
            Some(v) => v,
            None => unreachable!("view computed just above"),
        }
    }

    fn compute(&self) -> View {
        // Raw tops, memoised along each walk.
        let mut top_of: Vec<u32> = vec![NONE; self.nodes.len()];
        let mut path = Vec::new();
        for n in self.by_seq.values() {
            path.clear();
            let mut cur = n;
            let top = loop {
                if top_of[cur as usize] != NONE {
                    break top_of[cur as usize];
                }
                path.push(cur);
                let p = self.nodes[cur as usize].parent;
                if p == NONE || path.len() > MAX_DEPTH {
                    break cur;
                }
                cur = p;
            };
            for &x in &path {
                top_of[x as usize] = top;
            }
        }
        // Per raw top: earliest message (date, seq), and whether the top message is a
        // headerless reply.
        let mut start: HashMap<u32, (i64, u64)> = HashMap::new();
        for n in self.by_seq.values() {
            let Some(m) = &self.nodes[n as usize].msg else { continue };
            let t = top_of[n as usize];
            let e = start.entry(t).or_insert((m.date, m.seq));
            if (m.date, m.seq) < *e {
                *e = (m.date, m.seq);
            }
        }
        // Subject fallback for tops that are headerless replies.
        let mut by_subject: HashMap<u32, Vec<(i64, u32)>> = HashMap::new();
        let mut orphans = Vec::new();
        for (&t, &(date, _)) in &start {
            // A ghost top takes part in neither role: it has no subject of its own.
            match &self.nodes[t as usize].msg {
                Some(m) if m.headerless && m.reply => orphans.push((t, m.subject, date)),
                Some(m) => by_subject.entry(m.subject).or_default().push((date, t)),
                None => {}
            }
        }
        for v in by_subject.values_mut() {
            v.sort_unstable();
        }
        let mut merged: HashMap<u32, u32> = HashMap::new();
        let mut attached: HashMap<u32, Vec<u32>> = HashMap::new();
        orphans.sort_unstable_by_key(|&(t, _, d)| (d, t));
        for (t, subject, date) in orphans {
            let Some(cands) = by_subject.get(&subject) else {
                continue;
            };
            let i = cands.partition_point(|&(d, _)| d <= date);
            if i == 0 {
                continue;
            }
            let (d, target) = cands[i - 1];
            if date - d <= SUBJECT_WINDOW_SECS && target != t {
                merged.insert(t, target);
                attached.entry(target).or_default().push(t);
            }
        }
        // Effective top per message node, and thread aggregates.
        struct Acc {
            count: usize,
            first: (i64, u64),
            last: (i64, u64),
            authors: Vec<u64>,
        }
        let mut top = vec![NONE; self.nodes.len()];
        let mut acc: HashMap<u32, Acc> = HashMap::new();
        for n in self.by_seq.values() {
            let Some(m) = &self.nodes[n as usize].msg else { continue };
            let raw = top_of[n as usize];
            let t = merged.get(&raw).copied().unwrap_or(raw);
            top[n as usize] = t;
            let a = acc.entry(t).or_insert(Acc {
                count: 0,
                first: (m.date, m.seq),
                last: (m.date, m.seq),
                authors: Vec::new(),
            });
            a.count += 1;
            a.first = a.first.min((m.date, m.seq));
            a.last = a.last.max((m.date, m.seq));
            a.authors.push(m.author);
        }
        let mut threads: Vec<ThreadInfo> = acc
            .into_iter()
            .map(|(t, mut a)| {
                a.authors.sort_unstable();
                a.authors.dedup();
                let root = match &self.nodes[t as usize].msg {
                    Some(m) => m.seq,
                    None => a.first.1,
                };
                ThreadInfo {
                    id: ThreadId(t),
                    root,
                    count: a.count,
                    first: a.first.0,
                    last: a.last.0,
                    last_seq: a.last.1,
                    participants: a.authors.len(),
                }
            })
            .collect();
        threads.sort_unstable_by_key(|t| std::cmp::Reverse((t.last, t.last_seq)));
        let pos = threads.iter().enumerate().map(|(i, t)| (t.id.0, i)).collect();
        View {
            top,
            attached,
            threads,
            pos,
            authors: None,
        }
    }

    /// The thread holding message `seq`.
    pub fn thread_of(&mut self, seq: u64) -> Option<ThreadId> {
        let n = self.by_seq.get(seq)?;
        self.view()
            .top
            .get(n as usize)
            .copied()
            .filter(|&t| t != NONE)
            .map(ThreadId)
    }

    pub fn info(&mut self, id: ThreadId) -> Option<ThreadInfo> {
        let v = self.view();
        v.pos.get(&id.0).map(|&i| v.threads[i].clone())
    }

    /// Number of threads.
    pub fn thread_count(&mut self) -> usize {
        self.view().threads.len()
    }

    /// Threads by latest activity, newest first.
    pub fn recent(&mut self, offset: usize, limit: usize) -> Vec<ThreadInfo> {
        self.view().threads.iter().skip(offset).take(limit).cloned().collect()
    }

    /// Earliest date in the subtree under `n` (for ordering ghosts among their siblings).
    fn subtree_date(&self, n: u32) -> i64 {
        let mut best = i64::MAX;
        let mut stack = vec![n];
        let mut steps = 0;
        while let Some(x) = stack.pop() {
            steps += 1;
            if steps > MAX_DEPTH {
                break;
            }
            match &self.nodes[x as usize].msg {
                Some(m) => best = best.min(m.date),
                None => stack.extend(self.children(x)),
            }
        }
        best
    }

    fn children(&self, n: u32) -> impl Iterator<Item = u32> + '_ {
        let mut c = self.nodes[n as usize].first_child;
        std::iter::from_fn(move || {
            if c == NONE {
                return None;
            }
            let this = c;
            c = self.nodes[c as usize].next_sibling;
            Some(this)
        })
    }

    fn sorted_children(&self, n: u32) -> Vec<u32> {
        let mut kids: Vec<u32> = self.children(n).collect();
        kids.sort_by_cached_key(|&k| (self.subtree_date(k), k));
        kids
    }

    /// The whole thread in reading order: depth-first, replies by date. Ghosts with one
    /// reply are skipped; threads attached by subject hang under the top.
    pub fn tree(&mut self, id: ThreadId) -> Vec<TreeItem> {
        let attached = self.view().attached.get(&id.0).cloned().unwrap_or_default();
        let mut out = Vec::new();
        // (node, depth); children pushed in reverse so they pop in order.
        let mut stack: Vec<(u32, usize)> = Vec::new();
        let mut extra: Vec<u32> = attached;
        extra.sort_by_cached_key(|&k| (self.subtree_date(k), k));
        for &a in extra.iter().rev() {
            stack.push((a, 1));
        }
        stack.push((id.0, 0));
        while let Some((n, depth)) = stack.pop() {
            if out.len() > MAX_DEPTH {
                break;
            }
            let node = &self.nodes[n as usize];
            let kids = self.sorted_children(n);
            let (child_depth, show) = match &node.msg {
                Some(m) => (depth + 1, Some(Some(m.seq))),
                None if kids.len() >= 2 => (depth + 1, Some(None)),
                None => (depth, None),
            };
            if let Some(seq) = show {
                out.push(TreeItem { seq, depth });
            }
            for &k in kids.iter().rev() {
                stack.push((k, child_depth));
            }
        }
        out
    }

    /// The thread's messages by date (the flat view).
    pub fn messages(&mut self, id: ThreadId) -> Vec<u64> {
        let tree = self.tree(id);
        let mut v: Vec<(i64, u64)> = tree
            .iter()
            .filter_map(|t| t.seq)
            .filter_map(|s| {
                let n = self.by_seq.get(s)?;
                self.nodes[n as usize].msg.as_ref().map(|m| (m.date, m.seq))
            })
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Messages by one author, newest first.
    pub fn by_author(&self, author: u64) -> Vec<u64> {
        let mut v: Vec<(i64, u64)> = self
            .nodes
            .iter()
            .filter_map(|n| n.msg.as_ref())
            .filter(|m| m.author == author)
            .map(|m| (m.date, m.seq))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// Every author key with its message count, latest date and latest message, most active
    /// first. Counted once per change of the list, not per call.
    pub fn authors(&mut self) -> Vec<(u64, usize, i64, u64)> {
        if let Some(a) = self.view.as_ref().and_then(|v| v.authors.clone()) {
            return a;
        }
        let a = self.count_authors();
        self.view();
        if let Some(v) = self.view.as_mut() {
            v.authors = Some(a.clone());
        }
        a
    }

    fn count_authors(&self) -> Vec<(u64, usize, i64, u64)> {
        let mut m: HashMap<u64, (usize, i64, u64)> = HashMap::new();
        for msg in self.nodes.iter().filter_map(|n| n.msg.as_ref()) {
            let e = m.entry(msg.author).or_insert((0, msg.date, msg.seq));
            e.0 += 1;
            if (msg.date, msg.seq) > (e.1, e.2) {
                e.1 = msg.date;
                e.2 = msg.seq;
            }
        }
        let mut v: Vec<(u64, usize, i64, u64)> = m.into_iter().map(|(a, (c, d, s))| (a, c, d, s)).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests;
