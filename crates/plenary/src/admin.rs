//! The local admin API: how the CLI works while the daemon holds the database.
//!
//! sled allows one process per database, so `plenary list …`, `plenary import` and
//! `plenary index rebuild` send their request to the running daemon over a Unix socket in
//! the data directory (mode 0600, in a 0700 directory: only the daemon's user can use it;
//! it is never reachable from the web listener). When no daemon runs, the CLI opens the data
//! directly and runs the very same [`execute`].
//!
//! Protocol: one JSON request line; then JSON lines `{"progress": "…"}`, ending with
//! `{"done": "…"}` or `{"error": "…"}`.

use crate::config::Config;
use crate::import::{self, ImportLimits};
use plenary_core::list::Delivery;
use plenary_core::{ListAddress, MemberAddress};
use plenary_list::{Engine, ModAction};
use plenary_store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    ListCreate {
        address: String,
        name: String,
        description: String,
    },
    ListLs,
    Import {
        list: String,
        paths: Vec<PathBuf>,
    },
    IndexRebuild,
    ListSet {
        address: String,
        settings: Vec<(String, String)>,
    },
    ListShow {
        address: String,
    },
    MemberAdd {
        list: String,
        /// CSV: address[,name[,delivery]] per line.
        csv: String,
        welcome: bool,
    },
    MemberRm {
        list: String,
        addresses: Vec<String>,
    },
    MemberLs {
        list: String,
    },
    MemberSet {
        list: String,
        address: String,
        key: String,
        value: String,
    },
    ModLs {
        list: Option<String>,
    },
    Moderate {
        id: u64,
        action: String,
        reason: String,
    },
    ModLog {
        list: Option<String>,
    },
    DigestSend {
        list: String,
    },
    Queue,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Progress(String),
    Done(String),
    Error(String),
}

/// Where work runs: in the daemon (the indexer picks up queued messages) or offline.
pub enum Mode {
    Daemon,
    Offline { index_dir: PathBuf },
}

fn list_id(store: &Store, list: &str) -> Result<plenary_store::ListRecord, String> {
    store
        .list(list)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no list {list}"))
}

/// CSV field quoting for `member ls` (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Split one CSV line (RFC 4180 quoting).
fn csv_split(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Parse `member add` CSV: address[,name[,delivery]]; a header line and `#` comments are
/// skipped. Every bad line is reported, nothing is added when one is bad.
fn parse_member_csv(csv: &str) -> Result<Vec<(MemberAddress, String, Delivery)>, String> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.to_ascii_lowercase().starts_with("address")) {
            continue;
        }
        let f = csv_split(line);
        let addr = match MemberAddress::parse(&f[0]) {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("line {}: {:?}: {e}", i + 1, f[0]));
                continue;
            }
        };
        let name = f.get(1).cloned().unwrap_or_default();
        let delivery = match Delivery::parse(f.get(2).map(String::as_str).unwrap_or("")) {
            Some(d) => d,
            None => {
                errors.push(format!("line {}: delivery must be each, digest, plain or none", i + 1));
                continue;
            }
        };
        rows.push((addr, name, delivery));
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(format!("nothing added; fix these lines:\n{}", errors.join("\n")))
    }
}

/// Run one request against an open store.
pub async fn execute(
    engine: &Engine,
    config: &Config,
    mode: &Mode,
    req: Request,
    progress: mpsc::UnboundedSender<String>,
) -> Result<String, String> {
    let store = engine.store();
    let e2s = |e: plenary_list::EngineError| e.to_string();
    match req {
        Request::ListSet { address, settings } => {
            let rec = list_id(store, &address)?;
            let mut s = rec.settings.clone();
            for (k, v) in &settings {
                s.set(k, v)?;
            }
            let warning = dkim_warning(&s);
            store
                .set_list_settings(rec.address.as_str(), s)
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{}: {} setting(s) changed{warning}",
                rec.address,
                settings.len()
            ))
        }
        Request::ListShow { address } => {
            let rec = list_id(store, &address)?;
            let mut out = format!(
                "{}\nname: {}\nmembers: {}\nheld posts: {}\n",
                rec.address,
                rec.name,
                store.member_count(rec.id),
                store.held(Some(rec.id)).map_err(|e| e.to_string())?.len()
            );
            let v = serde_json::to_value(&rec.settings).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object() {
                for (k, v) in o {
                    out.push_str(&format!("{k}: {v}\n"));
                }
            }
            Ok(out.trim_end().to_string())
        }
        Request::MemberAdd { list, csv, welcome } => {
            let rows = parse_member_csv(&csv)?;
            let (added, existing) = engine.add_members(&list, rows, welcome).map_err(e2s)?;
            Ok(format!("{added} added, {existing} already members"))
        }
        Request::MemberRm { list, addresses } => {
            let addrs = addresses
                .iter()
                .map(|a| MemberAddress::parse(a).map_err(|e| format!("{a:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let (removed, missing) = engine.remove_members(&list, addrs).map_err(e2s)?;
            Ok(format!("{removed} removed, {missing} were not members"))
        }
        Request::MemberLs { list } => {
            let rec = list_id(store, &list)?;
            let mut out = String::from("address,name,delivery,joined_at,joined_via,moderated,bounce_score,disabled\n");
            let mut cursor: Option<String> = None;
            loop {
                let batch = store
                    .members_after(rec.id, cursor.as_deref(), 5000)
                    .map_err(|e| e.to_string())?;
                let Some(last) = batch.last() else { break };
                cursor = Some(last.address.to_string());
                for m in &batch {
                    out.push_str(&format!(
                        "{},{},{},{},{},{},{}.{},{}\n",
                        m.address,
                        csv_field(&m.name),
                        m.delivery.name(),
                        chrono::DateTime::from_timestamp(m.joined_at, 0)
                            .unwrap_or_default()
                            .to_rfc3339(),
                        serde_json::to_value(m.joined_via)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default(),
                        m.moderated,
                        m.bounce_score / 10,
                        m.bounce_score % 10,
                        csv_field(m.disabled.as_deref().unwrap_or("")),
                    ));
                }
            }
            Ok(out.trim_end().to_string())
        }
        Request::MemberSet {
            list,
            address,
            key,
            value,
        } => {
            let m = engine.set_member_option(&list, &address, &key, &value).map_err(e2s)?;
            Ok(format!("{}: {key} = {value}", m.address))
        }
        Request::ModLs { list } => {
            let id = match list {
                Some(l) => Some(list_id(store, &l)?.id),
                None => None,
            };
            let mut out = String::new();
            for h in store.held(id).map_err(|e| e.to_string())? {
                let l = store.list_by_id(h.list).map_err(|e| e.to_string())?;
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    h.id,
                    l.map(|l| l.address.to_string()).unwrap_or_default(),
                    h.meta.from_addr.as_deref().unwrap_or(&h.envelope_from),
                    h.meta.subject,
                    h.reason
                ));
            }
            if out.is_empty() {
                out.push_str("no held posts");
            }
            Ok(out.trim_end().to_string())
        }
        Request::Moderate { id, action, reason } => {
            let a = match action.as_str() {
                "approve" => ModAction::Approve,
                "reject" => ModAction::Reject(reason),
                "discard" => ModAction::Discard,
                other => return Err(format!("unknown moderation action {other:?}")),
            };
            engine.moderate(id, a, "cli").await.map_err(e2s)
        }
        Request::ModLog { list } => {
            let id = match list {
                Some(l) => Some(list_id(store, &l)?.id),
                None => None,
            };
            let mut out = String::new();
            for e in store.log(id).map_err(|e| e.to_string())? {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    chrono::DateTime::from_timestamp(e.at, 0)
                        .unwrap_or_default()
                        .to_rfc3339(),
                    e.actor,
                    e.action,
                    e.subject,
                    e.reason
                ));
            }
            Ok(out.trim_end().to_string())
        }
        Request::DigestSend { list } => {
            let rec = list_id(store, &list)?;
            let n = engine.make_digests(Some(rec.id)).await.map_err(e2s)?;
            Ok(if n > 0 {
                "digest queued".into()
            } else {
                "no digest queued: no posts wait for one, or no member takes digests".into()
            })
        }
        Request::Queue => {
            let jobs = store.jobs().map_err(|e| e.to_string())?;
            let retries = store.retries().map_err(|e| e.to_string())?;
            Ok(format!(
                "{} jobs ({} walking), {} deliveries waiting to retry, {} inbox",
                jobs.len(),
                jobs.iter().filter(|j| !j.walked).count(),
                retries.len(),
                store.inbox_len()
            ))
        }
        Request::ListCreate {
            address,
            name,
            description,
        } => {
            let addr = ListAddress::parse(&address).map_err(|e| format!("invalid list address {address:?}: {e}"))?;
            let clean = |s: &str| s.chars().filter(|c| !c.is_control()).collect::<String>();
            let rec = store
                .create_list(&addr, &clean(&name), &clean(&description))
                .map_err(|e| e.to_string())?;
            Ok(format!("created list {} (id {})", rec.address, rec.id.0))
        }
        Request::ListLs => {
            let mut out = String::new();
            for l in store.lists().map_err(|e| e.to_string())? {
                let n = store.archived_count(l.id).map_err(|e| e.to_string())?;
                out.push_str(&format!("{}\t{}\t{} messages\n", l.address, l.name, n));
            }
            if out.is_empty() {
                out.push_str("no lists yet\n");
            }
            Ok(out.trim_end().to_string())
        }
        Request::Import { list, paths } => {
            let addr = ListAddress::parse(&list).map_err(|e| format!("invalid list address {list:?}: {e}"))?;
            let rec = store
                .list(addr.as_str())
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no list {addr}; create it first with `plenary list create {addr}`"))?;
            let limits = ImportLimits {
                max_message_size: config.smtp.max_message_size,
                mime: config.smtp.mime,
            };
            let summary = import::import(store.clone(), rec.id, paths, limits, progress.clone()).await?;
            if let Mode::Offline { index_dir } = mode {
                let _ = progress.send("indexing".into());
                index_offline(store, config, index_dir, false)?;
            }
            Ok(summary.to_string())
        }
        Request::IndexRebuild => match mode {
            Mode::Daemon => {
                let n = store.index_requeue_all(true).map_err(|e| e.to_string())?;
                Ok(format!("re-indexing {n} messages in the background"))
            }
            Mode::Offline { index_dir } => {
                let n = index_offline(store, config, index_dir, true)?;
                Ok(format!("index rebuilt: {n} messages"))
            }
        },
    }
}

/// Drain the index queue (optionally after clearing the index) without a daemon.
fn index_offline(store: &Store, config: &Config, dir: &Path, rebuild: bool) -> Result<u64, String> {
    let (search, created) = plenary_index::SearchIndex::open(dir, config.query).map_err(|e| e.to_string())?;
    let mut ix =
        plenary_index::Indexer::new(store.clone(), search, config.indexer.clone()).map_err(|e| e.to_string())?;
    if rebuild || created {
        ix.clear().map_err(|e| e.to_string())?;
        store.index_requeue_all(rebuild).map_err(|e| e.to_string())?;
    }
    let mut total = 0u64;
    while store.index_pending_len() > 0 {
        total += ix.step().map_err(|e| e.to_string())? as u64;
    }
    Ok(total)
}

/// Bind the admin socket (mode 0600). Called before the daemon announces that it is ready,
/// so a CLI started right after finds it.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // We hold the database lock, so no other daemon owns this socket.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

/// Serve the admin socket until the task is dropped.
pub async fn serve(listener: UnixListener, store: Engine, config: Config) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let store = store.clone();
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, store, config).await {
                tracing::warn!(error = %e, "admin connection failed");
            }
        });
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), line: &Line) -> std::io::Result<()> {
    let mut s = serde_json::to_string(line).unwrap_or_default();
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

async fn handle(stream: UnixStream, store: Engine, config: Config) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    // Requests carry whole member CSVs (100,000 members is about 2.5 MB); the socket is
    // local and mode 0600, so the cap only stops runaway input.
    let mut lines = BufReader::new(r.take(256 << 20)).lines();
    let Some(first) = lines.next_line().await? else {
        return Ok(());
    };
    let req: Request = match serde_json::from_str(&first) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &Line::Error(format!("bad admin request: {e}"))).await,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let job = tokio::spawn(async move { execute(&store, &config, &Mode::Daemon, req, tx).await });
    while let Some(p) = rx.recv().await {
        send(&mut w, &Line::Progress(p)).await?;
    }
    let result = job.await.unwrap_or_else(|e| Err(format!("admin task failed: {e}")));
    match result {
        Ok(done) => send(&mut w, &Line::Done(done)).await,
        Err(e) => send(&mut w, &Line::Error(e)).await,
    }
}

use tokio::io::AsyncReadExt;

/// Run a request through the daemon if one answers on `socket`; `None` if none does.
pub async fn try_daemon(socket: &Path, req: &Request) -> Option<Result<String, String>> {
    let stream = UnixStream::connect(socket).await.ok()?;
    let (r, mut w) = stream.into_split();
    let mut s = serde_json::to_string(req).unwrap_or_default();
    s.push('\n');
    if let Err(e) = w.write_all(s.as_bytes()).await {
        return Some(Err(format!("cannot talk to the daemon on {}: {e}", socket.display())));
    }
    let mut lines = BufReader::new(r).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) => match serde_json::from_str::<Line>(&l) {
                Ok(Line::Progress(p)) => eprintln!("{p}"),
                Ok(Line::Done(d)) => return Some(Ok(d)),
                Ok(Line::Error(e)) => return Some(Err(e)),
                Err(e) => return Some(Err(format!("bad reply from the daemon: {e}"))),
            },
            Ok(None) => return Some(Err("the daemon closed the admin connection without an answer".into())),
            Err(e) => return Some(Err(format!("reading from the daemon: {e}"))),
        }
    }
}

/// With `dmarc = off` the list promises to leave posts as they came, so the author's DKIM
/// signature still verifies; a subject prefix or footer changes what that signature covers.
/// The owner may want them anyway, so this is a warning, not a refusal.
fn dkim_warning(s: &plenary_core::list::ListSettings) -> String {
    let changes = !s.subject_prefix.is_empty() || !s.footer.is_empty();
    if s.dmarc == plenary_core::list::DmarcMode::Off && changes {
        "\nwarning: dmarc=off with a subject prefix or footer: posts are modified, so authors' DKIM \
         signatures break and receivers may reject posts from domains with a strict DMARC policy \
         (set dmarc=munge, or clear subject_prefix and footer)"
            .to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plenary_core::list::{DmarcMode, ListSettings};

    #[test]
    fn dmarc_off_with_a_prefix_or_footer_is_warned_about() {
        let mut s = ListSettings::default();
        assert_eq!(s.dmarc, DmarcMode::Off);
        assert!(dkim_warning(&s).is_empty(), "defaults change nothing");
        s.subject_prefix = "[gov]".into();
        assert!(dkim_warning(&s).contains("DKIM"));
        s.subject_prefix.clear();
        s.footer = "Gov list".into();
        assert!(dkim_warning(&s).contains("DKIM"));
        s.dmarc = DmarcMode::Munge;
        assert!(dkim_warning(&s).is_empty(), "munge is the mitigation");
    }
}
