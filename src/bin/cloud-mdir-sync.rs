//! `cloud-mdir-sync`: parses the command line, reads the environment, sets
//! up logging and hands over to the library. Exit codes: 0 success, 1 a
//! failed run, 2 an unusable config or command line.

/// jemalloc with its background purging thread: a daemon that holds
/// 100,000 messages' indexes for months and frees a full cycle's copies
/// every hour. Measured at 100,000 messages after 30 idle polls
/// (`bench/run.py`, P4): 105 MiB resident against 113–116 MiB with glibc's
/// malloc (whose per-thread arenas keep the freed copies' pages) and
/// 142 MiB with mimalloc. CPython and SQLite keep the C library's malloc.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use cloud_mdir_sync::config::{self, PathContext, PyActor};
use cloud_mdir_sync::endpoints::Endpoints;
use cloud_mdir_sync::shutdown::CancellationToken;

/// Mirror Office365 and Gmail mailboxes into local Maildirs and push local
/// changes back.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file (Python).
    #[arg(short = 'c', long = "cfg", default_value = "cms.cfg")]
    cfg: PathBuf,
    /// On the first cycle trust local flags over the cloud (missing local
    /// files are ignored).
    #[arg(long)]
    offline: bool,
    /// Run one full sync cycle, then exit (non-zero if it failed).
    #[arg(long)]
    once: bool,
    /// Load and validate the config, print a JSON summary, exit.
    #[arg(long)]
    check: bool,
    /// More logging (repeat for more); shows Python tracebacks.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log Office365 accounts in with the device code flow (for machines
    /// without a browser); the code and URL are printed and shown on the
    /// login page.
    #[arg(long = "device-code")]
    device_code: bool,
    /// Less logging: warnings and errors only.
    #[arg(short = 'q', long = "quiet", conflicts_with = "verbose")]
    quiet: bool,
}

fn init_logging(args: &Args) {
    let default = match (args.quiet, args.verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(args.verbose > 0)
        .init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloud-mdir-sync: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let paths = PathContext { home, cwd };
    let actor = PyActor::spawn();
    let loaded = match config::load(&actor, &args.cfg, &paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            if let (true, Some(tb)) = (args.verbose > 0, &e.traceback) {
                eprintln!("{tb}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    if args.check {
        println!("{}", config::check_summary(&loaded.config));
        return Ok(ExitCode::SUCCESS);
    }
    let opts = cloud_mdir_sync::daemon::Options {
        once: args.once,
        offline: args.offline,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let env = cloud_mdir_sync::daemon::Environment {
        endpoints: match std::env::var("CMS_CLOUD_BASE_URL") {
            Ok(base) if !base.is_empty() => Endpoints::emulated(&base),
            _ => Endpoints::real(),
        },
        oauth_listen: match std::env::var("CMS_OAUTH_LISTEN") {
            Ok(v) if !v.is_empty() => v
                .parse()
                .with_context(|| format!("CMS_OAUTH_LISTEN={v:?} is not an address"))?,
            _ => "127.0.0.1:8080".parse().expect("valid default address"),
        },
        browser: std::env::var("BROWSER").ok().filter(|b| !b.is_empty()),
        device_code_all: args.device_code,
        quota_scale: match std::env::var("CMS_QUOTA_SCALE") {
            Ok(v) if !v.is_empty() => v
                .parse::<u32>()
                .ok()
                .filter(|k| *k >= 1)
                .with_context(|| format!("CMS_QUOTA_SCALE={v:?} is not a whole number >= 1"))?,
            _ => 1,
        },
    };
    let result = rt.block_on(async move {
        // The root of the shutdown tree: the first SIGTERM or SIGINT
        // cancels it, and the daemon winds down under it.
        let root = CancellationToken::new();
        let signals = stop_signals();
        let daemon = cloud_mdir_sync::daemon::run_config(loaded, opts, env, root.clone());
        tokio::pin!(daemon);
        tokio::select! {
            r = &mut daemon => r?,
            () = signals => {
                root.cancel();
                daemon.await?;
            }
        }
        anyhow::Ok(())
    });
    // What is still being freed is not waited for.
    rt.shutdown_background();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Listens for SIGINT and SIGTERM from now on (registered before the daemon
/// starts, so an early signal is not fatal); the future resolves on the
/// first of them.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
