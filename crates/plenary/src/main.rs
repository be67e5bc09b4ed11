//! The `plenary` binary: command line, configuration and wiring.
//!
//! Entry points: [`serve`] runs the daemon; [`admin`] carries every other command, to the
//! running daemon over its local socket or straight to the data when it is stopped.

mod admin;
mod config;
mod demo;
mod import;
mod serve;

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
        let r = admin::execute(&store, config, &mode, req, tx).await;
        let _ = printer.await;
        let closed = store.close();
        let out = r.map_err(|e| anyhow::anyhow!(e))?;
        closed.context("final flush of the store failed")?;
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
