//! `plenary serve`: every part in one process and one tokio runtime.
//!
//! Start-up order: open the store (taking sled's lock), bind SMTP/LMTP/web and the admin
//! socket and load the templates (a port in use or a broken template fails here, before
//! anything runs), seed the demo if asked, open the search index
//! (re-queueing the store if the index is new, of another schema, or out of step), start
//! the indexer thread, start serving and the admin API. Shutdown
//! (SIGINT/SIGTERM): stop accepting, let sessions reach a safe point (421), let the web
//! server drain, commit the index batch in hand, flush the store.

use crate::admin;
use crate::config::Config;
use anyhow::Context as _;
use plenary_index::{Indexer, SearchIndex};
use plenary_smtp::session::Context;
use plenary_smtp::Protocol;
use plenary_store::Store;
use plenary_web::{AppState, Templates};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Exit code when the store failed and the daemon must be restarted (EX_TEMPFAIL).
const EXIT_STORE_FAILED: i32 = 75;

pub fn serve(config: Config, demo: bool) -> anyhow::Result<()> {
    // Before the runtime starts any thread.
    crate::trim::limit_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Defence in depth: parsers get room even though inputs are pre-scanned.
        .thread_stack_size(8 * 1024 * 1024)
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(config, demo))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(config: Config, demo: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let store = Store::open(config.store.clone()).context("cannot open the store")?;
    // Bind before anything starts (indexer, workers), so a port in use fails fast and
    // cleanly; after the store, so a second daemon on the same data is told that instead.
    let smtp = TcpListener::bind(config.smtp_listen)
        .await
        .with_context(|| format!("cannot listen for SMTP on {}", config.smtp_listen))?;
    let smtp_addr = smtp.local_addr()?;
    let lmtp = match config.lmtp_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen for LMTP on {a}"))?,
        ),
        None => None,
    };
    let web = TcpListener::bind(config.web_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.web_listen))?;
    let web_addr = web.local_addr()?;
    let admin = admin::bind(&config.admin_socket)
        .with_context(|| format!("cannot create the admin socket {}", config.admin_socket.display()))?;
    let templates = Templates::load(config.web.templates_dir.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    if demo {
        crate::demo::seed(&store, &config)
            .await
            .map_err(|e| anyhow::anyhow!("cannot seed the demo list: {e}"))?;
    }
    let index_dir = config.data_dir.join("index");
    let (search, created) = SearchIndex::open(&index_dir, config.query).context("cannot open the search index")?;
    let mut indexer =
        Indexer::new(store.clone(), search.clone(), config.indexer.clone()).context("cannot start the indexer")?;
    indexer
        .reconcile(created)
        .context("cannot bring the search index in step with the store")?;
    let indexer_thread = IndexerThread::start(indexer, &store)?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let engine = plenary_list::Engine::new(store.clone(), config.engine.clone());
    let mut keys = Vec::new();
    let selectors = [
        (&config.dkim.rsa_key, &config.dkim.selector),
        (&config.dkim.ed25519_key, &config.dkim.ed25519_selector),
    ];
    for (path, selector) in selectors {
        if let Some(path) = path {
            keys.push(
                plenary_fanout::dkim::DkimKey::load(path, selector, config.dkim.domain.clone())
                    .context("cannot load the DKIM key")?,
            );
        }
    }
    if keys.is_empty() {
        tracing::warn!("no DKIM key configured: list mail goes out unsigned (set dkim.rsa_key)");
    }
    // The RSA key, when configured, is the first one loaded above.
    let rsa_key = config.dkim.rsa_key.as_ref().and_then(|_| keys.first());
    let arc = match (&config.arc, rsa_key) {
        (a, Some(key)) if a.enabled => {
            let key = key.share();
            Some(
                plenary_fanout::arc::Sealer::new(
                    key,
                    &a.authserv_id,
                    a.check_spf,
                    &config.fanout.dns_servers,
                    config.fanout.dns_timeout,
                )
                .map_err(|e| anyhow::anyhow!(e))
                .context("cannot set up ARC sealing")?,
            )
        }
        _ => None,
    };
    let worker = Arc::new(
        plenary_fanout::Worker::new(store.clone(), engine.clone(), config.fanout.clone(), keys, arc)
            .context("cannot set up delivery")?,
    );
    let engine_task = tokio::spawn(engine.clone().run(shutdown_rx.clone()));
    let fanout_task = tokio::spawn(worker.run(shutdown_rx.clone()));

    let ctx = Arc::new(Context {
        settings: config.smtp.clone(),
        store: store.clone(),
        shutdown: shutdown_rx.clone(),
    });
    let threads = plenary_web::ThreadCache::new(store.clone()).map_err(|e| anyhow::anyhow!("thread views: {e}"))?;
    let state = Arc::new(AppState {
        engine: engine.clone(),
        store: store.clone(),
        search: search.clone(),
        templates,
        settings: config.web.clone(),
        threads,
    });
    {
        // Thread every list now, off the request path, so the first visitor does not wait.
        let st = state.clone();
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            match st.threads.warm() {
                Ok(()) => tracing::info!(ms = t.elapsed().as_millis() as u64, "thread views ready"),
                Err(e) => tracing::warn!(error = %e, "threading the archive failed; pages will retry"),
            }
        });
    }

    // Detached: it holds nothing and ends with the runtime.
    tokio::spawn(crate::trim::run());

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(plenary_smtp::serve(smtp, Protocol::Smtp, ctx.clone()));
    let mut lmtp_addr = None;
    if let Some(l) = lmtp {
        lmtp_addr = l.local_addr().ok();
        tasks.spawn(plenary_smtp::serve(l, Protocol::Lmtp, ctx.clone()));
    }
    {
        let mut rx = shutdown_rx.clone();
        let app = plenary_web::router(state);
        tasks.spawn(async move {
            let graceful = async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(web, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %e, "web server failed");
            }
        });
    }
    let admin_task = tokio::spawn(admin::serve(admin, engine.clone(), config.clone()));
    {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if store.has_failed() {
                    // sled errors are sticky: exit so the supervisor restarts us on a fresh
                    // handle. Nothing acknowledged is lost: no 250 was sent for the failed batch.
                    eprintln!("plenary: the store failed (see the log above); exiting so the service manager restarts the daemon");
                    std::process::exit(EXIT_STORE_FAILED);
                }
            }
        });
    }

    // One machine-readable line, then the human one.
    println!(
        "plenary: listening smtp={smtp_addr}{} web=http://{web_addr}/ data={}",
        lmtp_addr.map(|a| format!(" lmtp={a}")).unwrap_or_default(),
        config.data_dir.display()
    );
    println!("Open http://{web_addr}/ in a browser; send mail to a list address via SMTP at {smtp_addr}.");
    let _ = std::io::stdout().flush();

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let _ = engine_task.await;
    let _ = fanout_task.await;
    admin_task.abort();
    let _ = tokio::task::spawn_blocking(move || indexer_thread.stop()).await;
    store.close().context("final flush of the store failed")?;
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// The indexer's thread, stopped (after committing the batch in hand) by [`IndexerThread::stop`]
/// or, on an early return from [`run`] (a start-up error after it began), by its destructor.
struct IndexerThread {
    stop: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IndexerThread {
    fn start(indexer: Indexer, store: &Store) -> anyhow::Result<IndexerThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = store.index_notify();
        let thread = {
            let (stop, wake) = (stop.clone(), wake.clone());
            std::thread::Builder::new()
                .name("plenary-index".into())
                .stack_size(64 * 1024 * 1024)
                .spawn(move || {
                    if !crate::nice::lower_this_thread(crate::nice::INDEXER_NICE) {
                        tracing::debug!("the indexer runs at the daemon's priority");
                    }
                    indexer.run(stop, wake)
                })
                .context("cannot start the indexer thread")?
        };
        Ok(IndexerThread {
            stop,
            wake,
            thread: Some(thread),
        })
    }

    /// Ask the thread to stop and wait for it (blocking).
    fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            self.wake.notify_one();
            if t.join().is_err() {
                tracing::error!("the indexer thread panicked");
            }
        }
    }
}

impl Drop for IndexerThread {
    fn drop(&mut self) {
        self.halt();
    }
}
