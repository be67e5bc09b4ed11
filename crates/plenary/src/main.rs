//! The `plenary` binary: command line, configuration and wiring.
//!
//! Entry points: [`serve`] runs the daemon; [`admin`] carries every other command, to the
//! running daemon over its local socket or straight to the data when it is stopped.

mod admin;
mod config;
mod demo;
mod import;
mod nice;
mod serve;
mod trim;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "plenary", version, about = "Mailing lists with open, searchable archives")]
struct Cli {
    /// Configuration file (TOML). Without it the embedded defaults apply.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon: SMTP (and optional LMTP) ingress, indexer and web archive.
    Serve {
        /// Create a demo list with a small archive if there are no lists yet.
        #[arg(long)]
        demo: bool,
    },
    /// Manage lists.
    List {
        #[command(subcommand)]
        cmd: ListCmd,
    },
    /// Import archives (mbox, mboxrd, pipermail .txt/.txt.gz, maildir, .eml) without delivery.
    Import {
        /// The list to import into.
        #[arg(long)]
        list: String,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Search index maintenance.
    Index {
        #[command(subcommand)]
        cmd: IndexCmd,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Manage a list's members (CSV in and out).
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// The moderation queue.
    Moderate {
        #[command(subcommand)]
        cmd: ModCmd,
    },
    /// Send a list's pending digest now.
    Digest {
        #[command(subcommand)]
        cmd: DigestCmd,
    },
    /// Show the outbound queue.
    Queue,
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Add members from CSV lines `address[,name[,delivery]]` (FILE, or - for stdin).
    Add {
        list: String,
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Send each new member the welcome message.
        #[arg(long)]
        welcome: bool,
    },
    /// Remove members.
    Rm {
        list: String,
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// List members as CSV.
    Ls { list: String },
    /// Set a member option: delivery (each|digest|plain|none), moderated, receive_own, enabled.
    Set {
        list: String,
        address: String,
        key: String,
        value: String,
    },
}

#[derive(Subcommand)]
enum ModCmd {
    /// Held posts (all lists, or one).
    Ls { list: Option<String> },
    /// Approve a held post: archive and deliver it.
    Approve { id: u64 },
    /// Reject a held post; the reason is mailed to the author.
    Reject {
        id: u64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Discard a held post silently.
    Discard { id: u64 },
    /// The moderation and membership log.
    Log { list: Option<String> },
}

#[derive(Subcommand)]
enum DigestCmd {
    /// Queue the digest of the posts waiting now.
    Send { list: String },
}

#[derive(Subcommand)]
enum ListCmd {
    /// Create a list.
    Create {
        address: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show every list.
    Ls,
    /// Change list settings: KEY=VALUE ... (posting, subscription, nonmember, owners, ...).
    Set {
        address: String,
        #[arg(required = true)]
        settings: Vec<String>,
    },
    /// Show a list's settings.
    Show { address: String },
}

#[derive(Subcommand)]
enum IndexCmd {
    /// Rebuild the search index from the store.
    Rebuild,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check the configuration and report every problem.
    Check,
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,plenary={level},plenary_store={level},plenary_index={level},plenary_smtp={level},plenary_web={level}"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn admin_command(config: &Config, req: admin::Request) -> anyhow::Result<String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        if let Some(r) = admin::try_daemon(&config.admin_socket, &req).await {
            return r.map_err(|e| anyhow::anyhow!(e));
        }
        let mut opened = plenary_store::Store::open(config.store.clone());
        // A daemon that is starting holds the lock a moment before its socket answers.
        for _ in 0..20 {
            if !matches!(opened, Err(plenary_store::StoreError::Locked { .. })) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Some(r) = admin::try_daemon(&config.admin_socket, &req).await {
                return r.map_err(|e| anyhow::anyhow!(e));
            }
            opened = plenary_store::Store::open(config.store.clone());
        }
        let store = match opened {
            Ok(s) => s,
            Err(plenary_store::StoreError::Locked { path }) => anyhow::bail!(
                "the database at {} is in use by another process, but no daemon answers on its admin socket {}; \
                 stop that process or point --config at the daemon's configuration",
                path.display(),
                config.admin_socket.display()
            ),
            Err(e) => return Err(e).context("cannot open the store"),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                eprintln!("{p}");
            }
        });
        let mode = admin::Mode::Offline {
            index_dir: config.data_dir.join("index"),
        };
        let settle = matches!(req, admin::Request::Import { .. });
        let engine = plenary_list::Engine::new(store.clone(), config.engine.clone());
        let r = admin::execute(&engine, config, &mode, req, tx).await;
        drop(engine);
        let _ = printer.await;
        let closed = store.close();
        drop(store);
        let out = r.map_err(|e| anyhow::anyhow!(e))?;
        closed.context("final flush of the store failed")?;
        if settle {
            // sled rewrites its snapshot only when a database is opened, replaying the log
            // written since. Open it once more here (a fraction of a second after a bulk
            // import), so the daemon's first start finds a fresh snapshot: replaying the
            // import there left about 2 MB more heap in the daemon for the life of the process.
            let mut reopened = plenary_store::Store::open(config.store.clone());
            // sled's last threads let go of the lock a moment after the store is dropped.
            for _ in 0..50 {
                if !matches!(reopened, Err(plenary_store::StoreError::Locked { .. })) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                reopened = plenary_store::Store::open(config.store.clone());
            }
            // The import itself is done and durable: a failure here only costs the daemon
            // that replay, so it is a warning, not a failed import.
            match reopened.map(|s| s.close()) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "reopening the store after the import: final flush failed"),
                Err(e) => tracing::warn!(error = %e, "cannot reopen the store after the import (the daemon's first start will replay it)"),
            }
        }
        Ok(out)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    init_logging(&config.log_level);
    let req = match cli.cmd {
        Cmd::Serve { demo } => return serve::serve(config, demo),
        Cmd::Config { cmd: ConfigCmd::Check } => {
            println!("configuration OK");
            return Ok(());
        }
        Cmd::List {
            cmd:
                ListCmd::Create {
                    address,
                    name,
                    description,
                },
        } => admin::Request::ListCreate {
            address,
            name,
            description,
        },
        Cmd::List { cmd: ListCmd::Ls } => admin::Request::ListLs,
        Cmd::Import { list, paths } => {
            let paths = paths
                .into_iter()
                .map(|p| std::path::absolute(&p).with_context(|| format!("cannot resolve {}", p.display())))
                .collect::<anyhow::Result<Vec<_>>>()?;
            admin::Request::Import { list, paths }
        }
        Cmd::Index { cmd: IndexCmd::Rebuild } => admin::Request::IndexRebuild,
        Cmd::List {
            cmd: ListCmd::Set { address, settings },
        } => admin::Request::ListSet {
            address,
            settings: settings
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                        .ok_or_else(|| anyhow::anyhow!("{kv:?}: settings are written KEY=VALUE"))
                })
                .collect::<anyhow::Result<_>>()?,
        },
        Cmd::List {
            cmd: ListCmd::Show { address },
        } => admin::Request::ListShow { address },
        Cmd::Member { cmd } => match cmd {
            MemberCmd::Add { list, file, welcome } => {
                let csv = if file.as_os_str() == "-" {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("cannot read stdin")?;
                    s
                } else {
                    std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
                };
                admin::Request::MemberAdd { list, csv, welcome }
            }
            MemberCmd::Rm { list, addresses } => admin::Request::MemberRm { list, addresses },
            MemberCmd::Ls { list } => admin::Request::MemberLs { list },
            MemberCmd::Set {
                list,
                address,
                key,
                value,
            } => admin::Request::MemberSet {
                list,
                address,
                key,
                value,
            },
        },
        Cmd::Moderate { cmd } => match cmd {
            ModCmd::Ls { list } => admin::Request::ModLs { list },
            ModCmd::Approve { id } => admin::Request::Moderate {
                id,
                action: "approve".into(),
                reason: String::new(),
            },
            ModCmd::Reject { id, reason } => admin::Request::Moderate {
                id,
                action: "reject".into(),
                reason,
            },
            ModCmd::Discard { id } => admin::Request::Moderate {
                id,
                action: "discard".into(),
                reason: String::new(),
            },
            ModCmd::Log { list } => admin::Request::ModLog { list },
        },
        Cmd::Digest {
            cmd: DigestCmd::Send { list },
        } => admin::Request::DigestSend { list },
        Cmd::Queue => admin::Request::Queue,
    };
    let out = admin_command(&config, req)?;
    println!("{out}");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plenary: {e:#}");
            ExitCode::from(2)
        }
    }
}
