//! `ppp`: reads the configuration, sets up logging, binds the listener and runs a node (or, with
//! `ppp demo`, a node and the example echo upstream in one process). Everything else is library
//! code.

use std::process::ExitCode;

use ppp::{
    config::{self, Command, ConfigError, LogFormat},
    downstream::listener,
    echo::{self, EchoUpstream},
};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match config::load() {
        Ok(cli) => cli,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => return fail(&e),
    };
    init_tracing(cli.config.log_format);
    if let Err(e) = cli.config.validate() {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => node(cli.config).await,
            Some(Command::Demo) => demo(cli.config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ppp: {e}");
    ExitCode::from(2)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn node(config: config::Config) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    let listener = listener::bind(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    ppp::run(config, listener, shutdown).await?;
    Ok(())
}

/// A node and the echo upstream in one process: the quickest way to see it work.
async fn demo(mut config: config::Config) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_uri = format!("http://{}", upstream_listener.local_addr()?);
    tokio::spawn(echo::serve(upstream_listener, EchoUpstream::new(true), std::future::pending()));
    config.upstream.push(upstream_uri.clone());
    let listener = listener::bind(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let port = listener.local_addr()?.port();
    println!("PersistentParadoxPlex demo: a standalone node with the echo upstream at {upstream_uri}.");
    println!("Connect with:  nc 127.0.0.1 {port}   (type a line; try /help, /whoami, /label user=ada, /broadcast hi)");
    println!("Stop with Ctrl-C.");
    ppp::run(config, listener, shutdown).await?;
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives while the node starts
/// is not fatal) and returns a future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::warn!("could not install signal handlers; stop the node with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
        tracing::info!("shutdown signal received");
    }
}
