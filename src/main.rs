//! `ppp`: reads the configuration, sets up logging, binds the listener and runs a node (or, with
//! `ppp demo`, a node and the example echo upstream in one process). Everything else is library
//! code.

use std::process::ExitCode;

use std::sync::Arc;

use ppp::{
    Listeners,
    config::{self, Action, ConfigError},
    downstream::listener,
    echo::{self, EchoUpstream},
    logging::{self, LogFilter},
};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let cli = match config::load() {
        Ok(cli) => cli,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => return fail(&e),
    };
    match cli.action {
        Some(Action::Ready) => return probe(ppp::admin::probe::ready(cli.config.admin_listen)),
        Some(Action::Drain) => {
            return probe(ppp::admin::probe::drain(cli.config.admin_listen, cli.config.admin_token.as_deref()));
        }
        _ => {}
    }
    let log = Arc::new(logging::init(cli.config.log_format));
    if let Err(e) = cli.config.validate() {
        return fail(&e);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&e),
    };
    let result = runtime.block_on(async move {
        match cli.action {
            None => node(cli.config, log).await,
            Some(Action::Demo) => demo(cli.config, log).await,
            Some(Action::Ready | Action::Drain) => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&*e),
    }
}

/// `ppp ready` and `ppp drain`: exit 0 when the node answered as asked, else 1 (not 2: Docker
/// reserves 2 in health checks). They need no valid node configuration, only where the admin
/// API is (and its token).
fn probe(ask: impl std::future::Future<Output = Result<(), ppp::admin::probe::ProbeError>>) -> ExitCode {
    let probe = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(ask).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match probe {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ppp: {e}");
            ExitCode::from(1)
        }
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("ppp: {e}");
    ExitCode::from(2)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn node(config: config::Config, log: Arc<LogFilter>) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    let listeners = bind(&config).await?;
    ppp::run(config, listeners, log, shutdown).await?;
    Ok(())
}

/// Binds the downstream listener and the admin API's.
async fn bind(config: &config::Config) -> Result<Listeners, BoxError> {
    let downstream = listener::bind(config.listen).map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("cannot serve the admin API on {}: {e}", config.admin_listen))?;
    Ok(Listeners { downstream, admin: Some(admin) })
}

/// A node and the echo upstream in one process: the quickest way to see it work.
async fn demo(mut config: config::Config, log: Arc<LogFilter>) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    let upstream_listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_uri = format!("http://{}", upstream_listener.local_addr()?);
    tokio::spawn(echo::serve(upstream_listener, EchoUpstream::new(true), std::future::pending()));
    config.upstream.push(upstream_uri.clone());
    let listeners = bind(&config).await?;
    let port = listeners.downstream.local_addr()?.port();
    let admin = listeners.admin.as_ref().map(TcpListener::local_addr).transpose()?;
    // Not `println!`: a closed stdout must not take the demo down.
    let mut intro = format!(
        "PersistentParadoxPlex demo: a standalone node with the echo upstream at {upstream_uri}.\n\
         Connect with:  nc 127.0.0.1 {port}   (type a line; try /help, /whoami, /label user=ada, /broadcast hi)\n"
    );
    if !on_path("nc") {
        intro.push_str(&format!(
            "               (no `nc` here: apt-get install netcat-openbsd; or, in bash without it:\n\
             \x20               exec 3<>/dev/tcp/127.0.0.1/{port}; cat <&3 & cat >&3 )\n"
        ));
    }
    if let Some(admin) = admin {
        intro.push_str(&format!("Admin API:     curl http://{admin}/v1/sockets\n"));
    }
    intro.push_str("Stop with Ctrl-C.\n");
    let _ = std::io::Write::write_all(&mut std::io::stdout(), intro.as_bytes());
    ppp::run(config, listeners, log, shutdown).await?;
    Ok(())
}

/// Whether an executable named `name` is in one of `PATH`'s folders.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
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
