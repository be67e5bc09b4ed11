//! The fan-out worker: delivers the durable outbound queue through an SMTP relay.
//!
//! A job (one post, digest, notice or forward) is walked in recipient order in batches. For
//! each batch the copies are built and signed on blocking threads (one RSA operation per
//! copy; the body hash is computed once per job), handed to the relay over a pool of
//! reused connections with `lettre`, and then the job's cursor, the failures parked for
//! retry and the bounce scores are written in one durable transaction. A crash replays at
//! most the batch in flight: a recipient may get a copy once more than intended, never zero
//! times. Temporary failures (4xx, connection errors) retry with exponential backoff until
//! `give_up`, then count as a bounce; permanent ones (5xx) count at once.

pub mod arc;
pub mod compose;
pub mod dkim;
pub mod dmarc;
mod relay;

use compose::{prepare, Prepared, Transform};
use dkim::DkimKey;
use lettre::address::Envelope;
use plenary_core::list::{Delivery, DmarcMode, Member};
use plenary_core::MemberAddress;
use plenary_list::Engine;
use plenary_store::{FanoutJob, JobKind, ListRecord, RetryEntry, Store, StoreError, Write};
use relay::RelayTlsConfig;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the worker reaches its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    None,
    StartTls,
    Tls,
}

/// Fan-out settings (the `[relay]` and `[fanout]` config sections).
#[derive(Debug, Clone)]
pub struct FanoutSettings {
    pub relay_host: String,
    pub relay_port: u16,
    pub tls: RelayTls,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Name servers for DMARC policy lookups (empty: the system's resolv.conf).
    pub dns_servers: Vec<std::net::SocketAddr>,
    pub dns_timeout: Duration,
    /// Extra trusted root certificate(s) for the relay's TLS (PEM), e.g. a self-signed one.
    pub ca_file: Option<std::path::PathBuf>,
    /// Parallel SMTP transactions (pooled connections).
    pub concurrency: usize,
    /// Recipients per durable batch.
    pub batch: usize,
    /// Largest hand-over rate in messages per second (0: unlimited).
    pub max_per_second: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// After this long a temporarily failing recipient counts as bounced.
    pub give_up: Duration,
    /// Public base URL of the archive (one-click links and permalinks).
    pub base_url: String,
    pub timeout: Duration,
}

impl Default for FanoutSettings {
    fn default() -> FanoutSettings {
        FanoutSettings {
            relay_host: "127.0.0.1".into(),
            relay_port: 25,
            tls: RelayTls::None,
            username: None,
            password: None,
            ca_file: None,
            dns_servers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            concurrency: 16,
            batch: 500,
            max_per_second: 0,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            give_up: Duration::from_secs(5 * 86_400),
            base_url: "http://127.0.0.1:8080".into(),
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("relay settings: {0}")]
    Relay(String),
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
    #[error("list engine: {0}")]
    Engine(String),
}

/// Base64 (standard, padded), for DKIM values.
pub(crate) fn b64(b: &[u8]) -> String {
    plenary_list::notice::base64(b)
}

/// The result of one SMTP transaction.
enum Sent {
    Ok,
    /// 5xx: the recipient bounced.
    Permanent(String),
    /// 4xx or no connection: try again later.
    Temporary(String),
}

/// One recipient's copy, built and ready for the relay.
struct Copy {
    rcpt: MemberAddress,
    from: String,
    bytes: Vec<u8>,
    /// Already sent once on a connection that broke.
    retried: bool,
}

impl AsRef<[u8]> for Copy {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The copy with its envelope, or (into `bad`) why it has none.
fn txn(copy: Copy, bad: &mut Vec<(MemberAddress, Sent)>) -> Option<relay::Txn<Copy>> {
    let env = (|| {
        let from = copy.from.parse().map_err(|e| format!("bad envelope sender: {e}"))?;
        let to = copy.rcpt.as_str().parse().map_err(|e| format!("bad recipient: {e}"))?;
        Envelope::new(Some(from), vec![to]).map_err(|e| format!("bad envelope: {e}"))
    })();
    match env {
        Ok(env) => Some(relay::Txn { env, item: copy }),
        Err(why) => {
            bad.push((copy.rcpt, Sent::Permanent(why)));
            None
        }
    }
}

/// Copies of a freshly signed chunk per relay lane woken for them (see [`Queue::push`]).
/// Measured on 2 cores against smtp-sink (10k members, three interleaved runs each): waking
/// one lane per chunk of 32, or all 16, was 2.2 and 3.0 % slower than one per 8 copies.
const COPIES_PER_LANE: usize = 8;

/// Signed copies waiting for a relay lane, shared by the lanes of one batch.
struct Queue {
    state: std::sync::Mutex<QueueState>,
    more: tokio::sync::Notify,
    /// Copies the queue holds before [`Queue::room`] waits.
    cap: usize,
    /// Signalled when a pop brings the queue down to `cap`.
    space: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    copies: std::collections::VecDeque<Copy>,
    /// No more copies will come.
    closed: bool,
}

impl Queue {
    fn new(cap: usize) -> Queue {
        Queue {
            state: Default::default(),
            more: tokio::sync::Notify::new(),
            cap: cap.max(1),
            space: tokio::sync::Notify::new(),
        }
    }

    /// Wait until the queue holds no more than its cap.
    async fn room(&self) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            if self.state().copies.len() <= self.cap {
                return;
            }
            space.await;
        }
    }

    /// Take the front copy; tell [`Queue::room`] when that makes room.
    fn pop_front(&self, s: &mut QueueState) -> Option<Copy> {
        let c = s.copies.pop_front();
        if c.is_some() && s.copies.len() == self.cap {
            self.space.notify_one();
        }
        c
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic elsewhere while holding the lock leaves the queue itself consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a signed chunk and wake one waiting lane per [`COPIES_PER_LANE`] copies in it.
    /// A woken lane sends copies one after another on one connection, each pipelined
    /// behind the last, for as long as the queue has more; another lane joins when a chunk
    /// comes while the first is still busy. So few lanes work at a time on a fast local
    /// relay (each copy then costs one write on each side, see
    /// [`relay::RelayConn::send_run`]), and more as the relay's round trips grow.
    fn push(&self, copies: Vec<Copy>) {
        let wake = copies.len().div_ceil(COPIES_PER_LANE);
        self.state().copies.extend(copies);
        for _ in 0..wake {
            self.more.notify_one();
        }
    }

    /// No more copies: every waiting lane finishes.
    fn close(&self) {
        self.state().closed = true;
        self.more.notify_waiters();
    }

    fn try_pop(&self) -> Option<Copy> {
        self.pop_front(&mut self.state())
    }

    /// The next copy, waiting for one; `None` once the queue is closed and empty.
    async fn pop(&self) -> Option<Copy> {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            {
                let mut s = self.state();
                if let Some(c) = self.pop_front(&mut s) {
                    return Some(c);
                }
                if s.closed {
                    return None;
                }
            }
            more.await;
        }
    }
}

/// The next stretch of a job's walk.
struct Next {
    rcpts: Vec<(MemberAddress, Option<String>, usize)>,
    /// Where the walk got to: the cursor to save once `rcpts` are handed over.
    cursor: Option<String>,
}

/// What one job sends, prepared once.
struct JobPlan {
    list: ListRecord,
    /// For digests: the MIME and the plain form.
    prepared: Vec<Arc<Prepared>>,
    author: Option<MemberAddress>,
}

pub struct Worker {
    store: Store,
    engine: Engine,
    settings: FanoutSettings,
    keys: Arc<Vec<DkimKey>>,
    /// TLS material when the relay is reached over TLS.
    tls: Option<RelayTlsConfig>,
    /// DMARC policy lookups (or why the resolver could not be set up).
    dmarc: Result<dmarc::Dmarc, String>,
    /// Idle relay connections, opened by [`relay::connect`], for reuse.
    idle: std::sync::Mutex<Vec<relay::RelayConn>>,
    /// ARC sealing of posts, when enabled.
    arc: Option<arc::Sealer>,
    /// Signing threads per batch: one per core (looked up once; on Linux it reads cgroup files).
    signers: usize,
}

/// Longest wait for the DNS checks of ARC sealing, per post (then it goes out unsealed).
const SEAL_TIMEOUT: Duration = Duration::from_secs(20);

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The next stretch of `len` recipients for a signer to take, shared through `next`:
/// [`CHUNK`] at a time, then less towards the end (half of what is left per thread),
/// so the signers run out of work together instead of one idling through the other's last
/// chunk. `None` when every recipient is taken.
fn take_chunk(next: &std::sync::atomic::AtomicUsize, len: usize, threads: usize) -> Option<std::ops::Range<usize>> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut start = next.load(Relaxed);
    loop {
        let left = len.checked_sub(start).filter(|&l| l > 0)?;
        let n = (left / (threads.max(1) * 2)).clamp(1, CHUNK);
        match next.compare_exchange_weak(start, start + n, Relaxed, Relaxed) {
            Ok(_) => return Some(start..start + n),
            Err(now) => start = now,
        }
    }
}

/// Most recipients a signer takes at once (see [`take_chunk`]).
const CHUNK: usize = 32;

impl Worker {
    pub fn new(
        store: Store,
        engine: Engine,
        settings: FanoutSettings,
        keys: Vec<DkimKey>,
        arc: Option<arc::Sealer>,
    ) -> Result<Worker, FanoutError> {
        let tls = RelayTlsConfig::new(&settings)?;
        let dmarc = dmarc::Dmarc::new(&settings.dns_servers, settings.dns_timeout);
        if let Err(e) = &dmarc {
            tracing::error!(error = %e, "no DNS for DMARC lookups: lists with dmarc = munge munge every post");
        }
        Ok(Worker {
            store,
            engine,
            settings,
            keys: Arc::new(keys),
            tls,
            dmarc,
            idle: std::sync::Mutex::new(Vec::new()),
            arc,
            signers: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        })
    }

    /// One relay lane of a batch: takes copies from `queue` and hands them to the relay
    /// over one connection at a time (from the idle pool, or a new one), pipelining each
    /// copy behind the last while the queue has more (see [`relay::RelayConn::send_run`]).
    /// The connection goes back to the pool whenever the lane waits, so the lanes that are
    /// woken share the open connections. A copy whose connection broke is tried once more
    /// on a fresh one (a pooled connection may have been closed by the relay meanwhile);
    /// after that, and after a stall or a failed connect, it is a temporary failure.
    async fn lane(self: Arc<Self>, queue: Arc<Queue>) -> Vec<(MemberAddress, Sent)> {
        let mut out = Vec::new();
        let mut again: std::collections::VecDeque<Copy> = std::collections::VecDeque::new();
        let mut conn: Option<relay::RelayConn> = None;
        loop {
            let first = match again.pop_front() {
                Some(c) => c,
                None => match queue.try_pop() {
                    Some(c) => c,
                    None => {
                        if let Some(c) = conn.take() {
                            self.keep(c);
                        }
                        match queue.pop().await {
                            Some(c) => c,
                            None => break,
                        }
                    }
                },
            };
            let mut bad = Vec::new();
            let Some(first) = txn(first, &mut bad) else {
                out.extend(bad);
                continue;
            };
            let retry = first.item.retried;
            // A retried copy skips the pool (its connection may be as stale as the one
            // that broke) but may use the lane's own, opened since the break.
            let reuse = if retry {
                conn.take()
            } else {
                conn.take().or_else(|| self.idle.lock().ok().and_then(|mut v| v.pop()))
            };
            let mut c = match reuse {
                Some(c) => c,
                None => match relay::connect(&self.settings, self.tls.as_ref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        out.push((first.item.rcpt, Sent::Temporary(e)));
                        continue;
                    }
                },
            };
            // A copy retried after a broken connection goes alone on a new one.
            let next = || {
                if retry {
                    return None;
                }
                while let Some(c) = queue.try_pop() {
                    if let Some(t) = txn(c, &mut bad) {
                        return Some(t);
                    }
                }
                None
            };
            let results = c.send_run(first, next, self.settings.timeout).await;
            out.extend(bad);
            for (mut copy, r) in results {
                let sent = match r {
                    Ok(()) => Sent::Ok,
                    Err(relay::Refused::Permanent(why)) => Sent::Permanent(why),
                    Err(relay::Refused::Transient(why)) => Sent::Temporary(why),
                    Err(relay::Refused::Broken(why)) => {
                        if !copy.retried {
                            copy.retried = true;
                            again.push_back(copy);
                            continue;
                        }
                        Sent::Temporary(why)
                    }
                };
                out.push((copy.rcpt, sent));
            }
            if c.usable() {
                conn = Some(c);
            }
        }
        out
    }

    /// Put a connection back in the idle pool.
    fn keep(&self, c: relay::RelayConn) {
        if c.usable() {
            if let Ok(mut v) = self.idle.lock() {
                v.push(c);
            }
        }
    }

    /// Build the plan of a job: load and prepare its message(s) once.
    /// Whether the author's domain asks receivers to quarantine or reject mail that fails
    /// DMARC (for lists with `dmarc = munge`). A DNS failure counts as yes (see `dmarc.rs`).
    async fn strict_dmarc(&self, list: &ListRecord, raw: &[u8]) -> bool {
        if list.settings.dmarc != DmarcMode::Munge {
            return false;
        }
        let Some(domain) = compose::from_domain(raw) else {
            return false;
        };
        if list.settings.always_munge.contains(&domain) {
            return true;
        }
        let dmarc = match &self.dmarc {
            Ok(d) => d,
            Err(_) => return true,
        };
        match dmarc.policy(&domain).await {
            Ok(p) => {
                tracing::debug!(list = %list.address, %domain, policy = ?p, "DMARC policy");
                p.strict()
            }
            Err(e) => {
                tracing::warn!(list = %list.address, %domain, error = %e, "DMARC lookup failed; munging From");
                true
            }
        }
    }

    async fn plan(&self, job: &FanoutJob) -> Result<Option<JobPlan>, FanoutError> {
        let Some(list) = self.store.list_by_id(job.list)? else {
            return Ok(None);
        };
        let base = &self.settings.base_url;
        let (prepared, author) = match &job.what {
            JobKind::Post { key, author } => {
                let Some(m) = self.store.message(*key)? else {
                    return Ok(None);
                };
                let raw = self.store.raw(&m)?;
                let t = Transform {
                    archived_at: (!m.meta.no_archive).then(|| compose::permalink(base, &list, &m.meta.message_id)),
                    list_changes: true,
                    list_headers: true,
                    strict_dmarc: self.strict_dmarc(&list, &raw).await,
                    authserv_id: self.arc.as_ref().map(|a| a.authserv_id().to_string()),
                };
                let mut p = prepare(&list, &raw, base, &t);
                if let Some(sealer) = &self.arc {
                    let arrival = arc::Arrival {
                        raw: &raw,
                        smtp: m.origin == plenary_core::Origin::Smtp,
                    };
                    let sealed = tokio::time::timeout(
                        SEAL_TIMEOUT,
                        sealer.seal(&arrival, &p.template(), list.address.domain()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(format!("the checks took over {} s", SEAL_TIMEOUT.as_secs())));
                    match sealed {
                        Ok(set) => p.set_arc(set),
                        Err(e) => tracing::warn!(list = %list.address, error = %e, "post goes out without an ARC seal"),
                    }
                }
                (vec![Arc::new(p)], author.clone())
            }
            JobKind::Digest { keys, number } => {
                let d = plenary_list::digest::build(&self.store, &list, keys, *number)?;
                let t = Transform {
                    archived_at: None,
                    list_changes: false,
                    list_headers: true,
                    strict_dmarc: false,
                    authserv_id: None,
                };
                (
                    vec![
                        Arc::new(prepare(&list, &d.mime, base, &t)),
                        Arc::new(prepare(&list, &d.plain, base, &t)),
                    ],
                    None,
                )
            }
            JobKind::Notice { raw, .. } => {
                let t = Transform::default();
                (vec![Arc::new(prepare(&list, raw.as_bytes(), base, &t))], None)
            }
            JobKind::Forward { raw, .. } => {
                let raw = self.store.blob_raw(raw)?;
                (vec![Arc::new(prepare(&list, &raw, base, &Transform::default()))], None)
            }
        };
        Ok(Some(JobPlan { list, prepared, author }))
    }

    /// The next recipients of a job after its cursor: (address, one-click token, variant),
    /// and how far the walk got (past members who take no copy, too).
    fn next_recipients(&self, job: &FanoutJob, plan: &JobPlan) -> Result<Next, FanoutError> {
        let limit = self.settings.batch.max(1);
        let explicit = |to: &[MemberAddress]| {
            to.iter()
                .filter(|a| job.cursor.as_deref().is_none_or(|c| a.as_str() > c))
                .take(limit)
                .map(|a| (a.clone(), None, 0))
                .collect::<Vec<_>>()
        };
        match &job.what {
            JobKind::Notice { to, .. } | JobKind::Forward { to, .. } => {
                let mut to = to.clone();
                to.sort();
                to.dedup();
                let rcpts = explicit(&to);
                let cursor = rcpts.last().map(|r| r.0.to_string()).or_else(|| job.cursor.clone());
                Ok(Next { rcpts, cursor })
            }
            JobKind::Post { .. } | JobKind::Digest { .. } => {
                let digest = matches!(job.what, JobKind::Digest { .. });
                let mut out = Vec::new();
                let mut cursor = job.cursor.clone();
                // Skip members who take no copy without ending the walk early.
                loop {
                    let members = self.store.members_after(job.list, cursor.as_deref(), limit)?;
                    let Some(last) = members.last() else { break };
                    cursor = Some(last.address.to_string());
                    let full = members.len() == limit;
                    for m in members {
                        if let Some(r) = self.wants(&m, job, plan, digest) {
                            out.push(r);
                        }
                    }
                    if out.len() >= limit / 2 || !full {
                        break;
                    }
                }
                Ok(Next { rcpts: out, cursor })
            }
        }
    }

    fn wants(
        &self,
        m: &Member,
        job: &FanoutJob,
        plan: &JobPlan,
        digest: bool,
    ) -> Option<(MemberAddress, Option<String>, usize)> {
        if m.joined_at > job.created {
            return None; // joined after the post arrived
        }
        if digest {
            if !m.gets_digest() {
                return None;
            }
            let v = if m.delivery == Delivery::PlainDigest { 1 } else { 0 };
            return Some((
                m.address.clone(),
                Some(m.unsub_token.clone()),
                v.min(plan.prepared.len() - 1),
            ));
        }
        m.gets_post_from(plan.author.as_ref())
            .then(|| (m.address.clone(), Some(m.unsub_token.clone()), 0))
    }

    /// Build, sign and send the copies for `rcpts`; returns each recipient's result.
    ///
    /// Signing (one RSA operation per copy) runs on one blocking thread per core, each
    /// taking the next chunk of recipients as soon as it has handed over the last one, and
    /// each chunk goes to the relay as soon as it is signed, so signing and sending overlap.
    /// The signers pick up work themselves: a scheme that started every chunk from an async
    /// task left the cores idle between chunks (about 15 % of the time on 2 cores) while
    /// that task waited for a CPU to be scheduled on. Signed chunks go into a [`Queue`]
    /// that up to `concurrency` relay lanes ([`Worker::lane`]) take copies from.
    async fn deliver(
        self: &Arc<Self>,
        plan: &JobPlan,
        rcpts: Vec<(MemberAddress, Option<String>, usize)>,
    ) -> Result<(usize, Vec<(MemberAddress, Sent)>), FanoutError> {
        if rcpts.is_empty() {
            return Ok((0, Vec::new()));
        }
        let threads = self.signers.min(rcpts.len().div_ceil(CHUNK));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<Copy>, dkim::DkimError>>(threads * 2);
        let rcpts = Arc::new(rcpts);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..threads {
            let (rcpts, next, tx) = (rcpts.clone(), next.clone(), tx.clone());
            let (prepared, keys, list) = (plan.prepared.clone(), self.keys.clone(), plan.list.clone());
            tokio::task::spawn_blocking(move || {
                while let Some(part) = take_chunk(&next, rcpts.len(), threads).and_then(|r| rcpts.get(r)) {
                    let t = now();
                    let r: Result<Vec<Copy>, dkim::DkimError> = part
                        .iter()
                        .map(|(rcpt, tok, v)| {
                            let bytes = prepared[*v].render(&keys, tok.as_deref(), t)?;
                            Ok(Copy {
                                from: compose::envelope_from(&list, rcpt),
                                rcpt: rcpt.clone(),
                                bytes,
                                retried: false,
                            })
                        })
                        .collect();
                    let failed = r.is_err();
                    // A closed channel means delivery of this batch stopped: sign no more.
                    if tx.blocking_send(r).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let lanes_n = self.settings.concurrency.max(1).min(rcpts.len());
        let queue = Arc::new(Queue::new(lanes_n * COPIES_PER_LANE * 2));
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..lanes_n {
            lanes.spawn(self.clone().lane(queue.clone()));
        }
        let mut sent = 0;
        let mut failure = None;
        // Ends when every signer has finished (or stopped after a failure).
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Ok(copies) => {
                    // A slow relay holds the signers back here, not in memory.
                    queue.room().await;
                    sent += copies.len();
                    queue.push(copies);
                }
                Err(e) => {
                    failure = Some(FanoutError::from(e));
                    break;
                }
            }
        }
        drop(rx); // after a failure: the signers stop at their next chunk
        queue.close();
        let mut out = Vec::with_capacity(sent);
        while let Some(r) = lanes.join_next().await {
            match r {
                Ok(r) => out.extend(r),
                // Which copies it had is unknown: the whole batch is replayed.
                Err(e) => {
                    failure.get_or_insert(FanoutError::Engine(format!("a relay lane failed: {e}")));
                }
            }
        }
        match failure {
            // Copies already handed over are reported by the caller's retry of this batch.
            Some(e) => Err(e),
            None => Ok((sent, out)),
        }
    }

    fn backoff(&self, attempts: u32) -> i64 {
        let base = self.settings.retry_initial.as_secs().max(1);
        let d = base
            .saturating_mul(1u64 << attempts.min(20))
            .min(self.settings.retry_max.as_secs().max(base));
        d as i64
    }

    /// Writes for results of one batch.
    fn outcome_writes(
        &self,
        job: &FanoutJob,
        list: &ListRecord,
        results: Vec<(MemberAddress, Sent)>,
        prior: &HashMap<MemberAddress, RetryEntry>,
    ) -> Result<(Vec<Write>, u64), FanoutError> {
        let mut writes = Vec::new();
        let mut delivered = 0;
        let t = now();
        let member_job = matches!(job.what, JobKind::Post { .. } | JobKind::Digest { .. });
        // One log line per batch for temporary failures (a relay outage would otherwise
        // write one per recipient), with the first reason.
        let temporary: Vec<&str> = results
            .iter()
            .filter_map(|(_, r)| match r {
                Sent::Temporary(why) => Some(why.as_str()),
                _ => None,
            })
            .collect();
        if let Some(first) = temporary.first() {
            tracing::warn!(
                list = %list.address,
                job = job.id,
                recipients = temporary.len(),
                error = %first,
                "temporary delivery failure; will retry"
            );
        }
        for (rcpt, r) in results {
            let old = prior.get(&rcpt);
            match r {
                Sent::Ok => {
                    delivered += 1;
                    if old.is_some() {
                        writes.push(Write::RemoveRetry(job.id, rcpt));
                    }
                }
                Sent::Permanent(why) => {
                    tracing::info!(list = %list.address, job = job.id, error = %why, "permanent delivery failure");
                    if old.is_some() {
                        writes.push(Write::RemoveRetry(job.id, rcpt.clone()));
                    }
                    if member_job {
                        writes.extend(
                            self.engine
                                .bounce_writes(list, &rcpt, true, &why)
                                .map_err(|e| FanoutError::Engine(e.to_string()))?,
                        );
                    }
                }
                Sent::Temporary(why) => {
                    let attempts = old.map(|o| o.attempts + 1).unwrap_or(1);
                    let first = old.map(|o| o.first_failure).unwrap_or(t);
                    if t - first >= self.settings.give_up.as_secs() as i64 {
                        writes.push(Write::RemoveRetry(job.id, rcpt.clone()));
                        if member_job {
                            writes.extend(
                                self.engine
                                    .bounce_writes(list, &rcpt, true, &format!("gave up: {why}"))
                                    .map_err(|e| FanoutError::Engine(e.to_string()))?,
                            );
                        }
                    } else {
                        writes.push(Write::PutRetry(RetryEntry {
                            job: job.id,
                            rcpt,
                            attempts,
                            first_failure: first,
                            due: t + self.backoff(attempts - 1),
                            last_error: why.chars().take(300).collect(),
                        }));
                    }
                }
            }
        }
        Ok((writes, delivered))
    }

    /// Walk one batch of a job. Returns the number of copies handed over.
    async fn step_job(
        self: &Arc<Self>,
        mut job: FanoutJob,
        plans: &mut HashMap<u64, Arc<JobPlan>>,
    ) -> Result<usize, FanoutError> {
        let plan = match plans.get(&job.id) {
            Some(p) => p.clone(),
            None => match self.plan(&job).await? {
                Some(p) => {
                    let p = Arc::new(p);
                    plans.insert(job.id, p.clone());
                    p
                }
                None => {
                    tracing::warn!(
                        job = job.id,
                        "delivery job refers to a missing list or message; dropped"
                    );
                    self.store.apply(vec![Write::RemoveJob(job.id)])?;
                    return Ok(0);
                }
            },
        };
        if job.walked {
            if !self.store.job_has_retries(job.id) {
                self.finish(job, plans)?;
            }
            return Ok(0);
        }
        let Next { rcpts, cursor } = self.next_recipients(&job, &plan)?;
        if rcpts.is_empty() {
            if cursor == job.cursor {
                // The walk is over. Every cursor step before this was saved durably, so
                // neither marking the job walked nor removing it needs its own fsync: lost
                // in a crash, the job walks past the end again and finds nobody.
                if self.store.job_has_retries(job.id) {
                    job.walked = true;
                    self.store.apply_with(vec![Write::PutJob(job)], false)?;
                } else {
                    self.finish(job, plans)?;
                }
            } else {
                // Only members who take no copy in this stretch: move the cursor on.
                job.cursor = cursor;
                self.store.apply_with(vec![Write::PutJob(job)], false)?;
            }
            return Ok(0);
        }
        let started = Instant::now();
        let (n, results) = self.deliver(&plan, rcpts).await?;
        let (mut writes, delivered) = self.outcome_writes(&job, &plan.list, results, &HashMap::new())?;
        job.cursor = cursor;
        job.delivered += delivered;
        writes.push(Write::PutJob(job));
        self.store.apply(writes)?;
        self.pace(n, started).await;
        Ok(n)
    }

    /// Remove a job that was walked to its end and has no retries left (see `step_job` for
    /// why this write is not made durable on its own).
    fn finish(&self, job: FanoutJob, plans: &mut HashMap<u64, Arc<JobPlan>>) -> Result<(), FanoutError> {
        let mut w = vec![Write::RemoveJob(job.id)];
        if let JobKind::Forward { raw, .. } = job.what {
            w.push(Write::RemoveBlob(raw));
        }
        self.store.apply_with(w, false)?;
        plans.remove(&job.id);
        tracing::info!(job = job.id, delivered = job.delivered, "delivery job done");
        Ok(())
    }

    async fn pace(&self, n: usize, started: Instant) {
        if self.settings.max_per_second > 0 {
            let want = Duration::from_secs_f64(n as f64 / f64::from(self.settings.max_per_second));
            if let Some(rest) = want.checked_sub(started.elapsed()) {
                tokio::time::sleep(rest).await;
            }
        }
    }

    /// Retry the parked deliveries that are due.
    async fn step_retries(self: &Arc<Self>, plans: &mut HashMap<u64, Arc<JobPlan>>) -> Result<usize, FanoutError> {
        let t = now();
        let mut due: HashMap<u64, Vec<RetryEntry>> = HashMap::new();
        for r in self.store.retries()? {
            if r.due <= t {
                due.entry(r.job).or_default().push(r);
            }
        }
        let mut total = 0;
        for (job_id, entries) in due {
            let Some(job) = self.store.job(job_id)? else {
                self.store
                    .apply(entries.into_iter().map(|e| Write::RemoveRetry(e.job, e.rcpt)).collect())?;
                continue;
            };
            let plan = match plans.get(&job_id) {
                Some(p) => p.clone(),
                None => match self.plan(&job).await? {
                    Some(p) => {
                        let p = Arc::new(p);
                        plans.insert(job_id, p.clone());
                        p
                    }
                    None => continue,
                },
            };
            for chunk in entries.chunks(self.settings.batch.max(1)) {
                let mut rcpts = Vec::new();
                for e in chunk {
                    let (tok, v) = match &job.what {
                        JobKind::Post { .. } | JobKind::Digest { .. } => match self.store.member(job.list, &e.rcpt)? {
                            Some(m) => {
                                let v = usize::from(m.delivery == Delivery::PlainDigest).min(plan.prepared.len() - 1);
                                (Some(m.unsub_token), v)
                            }
                            None => {
                                // Left the list meanwhile: nothing more to send.
                                self.store.apply(vec![Write::RemoveRetry(e.job, e.rcpt.clone())])?;
                                continue;
                            }
                        },
                        _ => (None, 0),
                    };
                    rcpts.push((e.rcpt.clone(), tok, v));
                }
                let prior: HashMap<MemberAddress, RetryEntry> =
                    chunk.iter().map(|e| (e.rcpt.clone(), e.clone())).collect();
                let (n, results) = self.deliver(&plan, rcpts).await?;
                total += n;
                let (mut writes, delivered) = self.outcome_writes(&job, &plan.list, results, &prior)?;
                if delivered > 0 {
                    if let Some(mut j) = self.store.job(job_id)? {
                        j.delivered += delivered;
                        writes.push(Write::PutJob(j));
                    }
                }
                self.store.apply(writes)?;
            }
        }
        Ok(total)
    }

    /// One pass over the queue. Returns how many copies were handed to the relay, and
    /// says whether a job was still being walked (more work is waiting right now).
    async fn step(self: &Arc<Self>, plans: &mut HashMap<u64, Arc<JobPlan>>) -> Result<(usize, bool), FanoutError> {
        let mut n = 0;
        let mut walking = false;
        // Posts to a list nobody receives (no members at all): nothing to plan or send. They
        // go in one transaction per pass, not one each (an archive-only list can take mail
        // at ingest speed). Removing them need not be durable: if the removal is lost in a
        // crash, the jobs come back, find nobody again and go.
        let mut unread = Vec::new();
        let mut memberless: HashMap<plenary_core::ListId, bool> = HashMap::new();
        // Only durable jobs: a post whose commit a crash could still undo was not answered
        // `250`, and its sender will send it again (plenary-store's `durable.rs`).
        let jobs = self.store.read_durable(plenary_store::Store::jobs).await?;
        for job in jobs {
            if matches!(job.what, JobKind::Post { .. } | JobKind::Digest { .. })
                && job.cursor.is_none()
                && !plans.contains_key(&job.id)
            {
                let nobody = match memberless.get(&job.list) {
                    Some(v) => *v,
                    None => {
                        let v = self.store.members_after(job.list, None, 1)?.is_empty();
                        memberless.insert(job.list, v);
                        v
                    }
                };
                if nobody {
                    unread.push(Write::RemoveJob(job.id));
                    continue;
                }
            }
            walking |= !job.walked;
            n += self.step_job(job, plans).await?;
        }
        self.store.apply_with(unread, false)?;
        n += self.step_retries(plans).await?;
        Ok((n, walking))
    }

    /// Run until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let wake = self.store.work_notify();
        let mut plans = HashMap::new();
        loop {
            if *stop.borrow() {
                return;
            }
            let busy = match self.step(&mut plans).await {
                Ok((n, walking)) => n > 0 || walking,
                Err(FanoutError::Store(e)) if self.store.has_failed() => {
                    tracing::error!(error = %e, "fan-out stops: the store failed");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fan-out step failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                // An error means the sender is gone (the daemon is giving up): stop too.
                r = stop.changed() => if r.is_err() { return },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signers' stretches cover every recipient once, in order, at most [`CHUNK`] at
    /// a time, and shrink towards the end so two threads run out of work together.
    #[test]
    fn signer_chunks_cover_every_recipient_once_and_shrink_at_the_end() {
        for (len, threads) in [(0, 2), (1, 2), (5, 1), (500, 2), (10_000, 2), (37, 4)] {
            let next = std::sync::atomic::AtomicUsize::new(0);
            let mut sizes = Vec::new();
            let mut expect = 0;
            while let Some(r) = take_chunk(&next, len, threads) {
                assert_eq!(r.start, expect, "len {len}: contiguous");
                assert!(!r.is_empty() && r.len() <= CHUNK, "len {len}: size {}", r.len());
                expect = r.end;
                sizes.push(r.len());
            }
            assert_eq!(expect, len, "len {len}: every recipient taken");
            assert!(
                sizes.windows(2).all(|w| w[1] <= w[0]),
                "len {len}: sizes never grow: {sizes:?}"
            );
            if len >= 500 {
                assert_eq!(sizes[0], CHUNK, "len {len}: full chunks while there is much left");
                assert_eq!(sizes.last(), Some(&1), "len {len}: single copies at the very end");
            }
        }
        // Five copies, one signer: the first two are handed over together.
        let next = std::sync::atomic::AtomicUsize::new(0);
        assert_eq!(take_chunk(&next, 5, 1), Some(0..2));
    }
    use plenary_core::list::JoinedVia;
    use plenary_core::meta::Fallback;
    use plenary_core::{ListAddress, MessageMeta, Origin, RecipientKind};
    use plenary_store::{IngestRequest, IngestTarget, PostHandling, StoreSettings, TargetOutcome};

    fn member(address: &str) -> Member {
        Member {
            address: MemberAddress::parse(address).expect("valid address"),
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
        }
    }

    async fn post(store: &Store, list: plenary_core::ListId, id: &str) {
        let raw = format!("From: a@b.org\r\nMessage-ID: <{id}@x>\r\nSubject: s\r\n\r\nbody\r\n").into_bytes();
        let req = IngestRequest {
            meta: MessageMeta::extract(
                &raw,
                Fallback {
                    envelope_date: None,
                    received_at: 1_800_000_000,
                },
            ),
            raw,
            origin: Origin::Smtp,
            envelope_from: "a@b.org".into(),
            targets: vec![IngestTarget {
                list,
                kind: RecipientKind::Post,
            }],
            received_at: 1_800_000_000,
            handling: PostHandling::Approved,
        };
        let out = store.ingest(req).await.expect("ingest");
        assert!(matches!(out[0], TargetOutcome::Archived(_)), "{out:?}");
    }

    /// Retries back off exponentially from `retry_initial`, doubling per attempt, and stop
    /// growing at `retry_max`.
    #[tokio::test]
    async fn retry_backoff_doubles_up_to_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = StoreSettings::new(dir.path());
        settings.min_free_bytes = 0;
        let store = Store::open(settings).expect("open store");
        let fanout = FanoutSettings {
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            dns_servers: vec!["127.0.0.1:9".parse().expect("socket addr")],
            dns_timeout: Duration::from_millis(100),
            ..FanoutSettings::default()
        };
        let engine = Engine::new(store.clone(), Default::default());
        let worker = Worker::new(store, engine, fanout, Vec::new(), None).expect("worker");
        let waits: Vec<i64> = (0..8).map(|a| worker.backoff(a)).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(worker.backoff(u32::MAX), 3600, "no overflow on absurd attempt counts");
    }

    /// A worker whose relay refuses connections (a port just freed), so every attempted
    /// copy becomes a retry, and whose DNS lookups fail fast.
    fn worker_with_relay_down(store: &Store) -> Arc<Worker> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let fanout = FanoutSettings {
            relay_port: port,
            dns_servers: vec!["127.0.0.1:9".parse().expect("socket addr")],
            dns_timeout: Duration::from_millis(100),
            ..FanoutSettings::default()
        };
        let engine = Engine::new(store.clone(), Default::default());
        Arc::new(Worker::new(store.clone(), engine, fanout, Vec::new(), None).expect("worker"))
    }

    /// The worker mails only durable posts. A post the committer applied and the syncer has
    /// not flushed (a crash would undo it, its sender has no `250` and will send it again)
    /// is not sent until it is on disk: otherwise every member could get it twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_durable_posts_are_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = StoreSettings::new(dir.path());
        settings.min_free_bytes = 0;
        let store = Store::open(settings).expect("open store");
        let list = store
            .create_list(&ListAddress::parse("l@x.org").expect("addr"), "L", "")
            .expect("create");
        store
            .apply(vec![Write::PutMember(list.id, member("ana@example.net"))])
            .expect("member");
        let worker = worker_with_relay_down(&store);
        let hold = store.hold_durability();
        let st = store.clone();
        let ingest = tokio::spawn(async move { post(&st, list.id, "not yet durable").await });
        assert!(
            store.wait_applied(|s| s.jobs().is_ok_and(|j| !j.is_empty())).await,
            "the committer never applied the post"
        );
        let w = worker.clone();
        let step = tokio::spawn(async move { w.step(&mut HashMap::new()).await.map_err(|e| e.to_string()) });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!step.is_finished(), "the worker took a post that is not durable");
        assert!(store.retries().expect("retries").is_empty(), "nothing was attempted");
        drop(hold);
        let (sent, _) = step.await.expect("join").expect("step");
        assert_eq!(sent, 1, "the post is sent once durable (to a relay that is down here)");
        ingest.await.expect("ingest");
    }

    /// A post whose list had members when it was accepted, and none when the worker gets to
    /// it (everyone left), is dropped unsent in the worker's pass; a post to a list that still
    /// has a member is not (its delivery is attempted, here against a relay that is down).
    #[tokio::test]
    async fn jobs_of_lists_whose_members_all_left_are_dropped_unsent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = StoreSettings::new(dir.path());
        settings.min_free_bytes = 0;
        let store = Store::open(settings).expect("open store");
        let left = store
            .create_list(&ListAddress::parse("left@x.org").expect("addr"), "Left", "")
            .expect("create");
        let kept = store
            .create_list(&ListAddress::parse("kept@x.org").expect("addr"), "Kept", "")
            .expect("create");
        store
            .apply(vec![
                Write::PutMember(left.id, member("ana@example.net")),
                Write::PutMember(kept.id, member("bo@example.net")),
            ])
            .expect("members");
        post(&store, left.id, "to-left").await;
        post(&store, kept.id, "to-kept").await;
        let jobs = store.jobs().expect("jobs");
        assert_eq!(jobs.len(), 2, "one job per post while both lists have a member");
        store
            .apply(vec![Write::RemoveMember(
                left.id,
                MemberAddress::parse("ana@example.net").expect("valid"),
            )])
            .expect("remove member");

        // A relay that refuses connections: any attempted copy becomes a retry.
        let worker = worker_with_relay_down(&store);
        let mut plans = HashMap::new();
        let (sent, _) = worker.step(&mut plans).await.expect("step");
        assert_eq!(sent, 1, "one copy attempted: the remaining member's");

        let jobs = store.jobs().expect("jobs");
        assert_eq!(jobs.len(), 1, "the memberless list's job is gone: {jobs:?}");
        assert_eq!(jobs[0].list, kept.id, "the job left is the one with a member");
        let retries = store.retries().expect("retries");
        assert_eq!(retries.len(), 1, "one failed copy, parked for a retry: {retries:?}");
        assert_eq!(
            retries[0].rcpt.as_str(),
            "bo@example.net",
            "only the remaining member was attempted"
        );

        // The parked member leaves too, and the retry falls due: the retry pass finds
        // nobody to send to (an empty delivery, which must neither fail nor panic).
        let mut due = retries[0].clone();
        due.due = 0;
        store
            .apply(vec![
                Write::PutRetry(due),
                Write::RemoveMember(kept.id, MemberAddress::parse("bo@example.net").expect("valid")),
            ])
            .expect("leave");
        let (sent, _) = worker.step(&mut plans).await.expect("step with an empty retry batch");
        assert_eq!(sent, 0, "nobody left to send to");
        assert!(
            store.retries().expect("retries").is_empty(),
            "the retry of a member who left is dropped"
        );
    }
}
