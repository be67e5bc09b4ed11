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
use plenary_core::ListAddress;
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

/// Run one request against an open store.
pub async fn execute(
    store: &Store,
    config: &Config,
    mode: &Mode,
    req: Request,
    progress: mpsc::UnboundedSender<String>,
) -> Result<String, String> {
    match req {
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
pub async fn serve(listener: UnixListener, store: Store, config: Config) -> std::io::Result<()> {
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

async fn handle(stream: UnixStream, store: Store, config: Config) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(1 << 20)).lines();
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
