//! The example echo upstream as a standalone gRPC server.
//!
//! ```text
//! cargo run --example echo_upstream -- --listen 127.0.0.1:50051
//! cargo run -- --upstream http://127.0.0.1:50051      # a node that uses it
//! ```
//!
//! The upstream itself (echo, `/whoami`, `/label`, `/broadcast`, `/to`, `/close`, receipts, and
//! the gRPC health service) is `ppp::echo`, in `src/echo.rs`, so that `ppp demo`, the tests and
//! the benchmark run exactly this code. Read it as the reference for writing an upstream in Rust;
//! `docs/protocol.md` describes the protocol for any language.

use clap::Parser;
use ppp::echo::{self, EchoUpstream};
use tokio::net::TcpListener;

/// Serves the echo upstream.
#[derive(Parser)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "ECHO_LISTEN", default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Greet every socket when it opens.
    #[arg(long)]
    greet: bool,
    /// Never acknowledge events (as an upstream written before acks did).
    #[arg(long)]
    no_ack: bool,
    /// Answer `ConnectBatch` UNIMPLEMENTED (as an upstream written before batches did).
    #[arg(long)]
    no_batch: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    eprintln!("echo upstream serving gRPC on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let upstream = EchoUpstream { greet: args.greet, no_ack: args.no_ack, no_batch: args.no_batch };
    echo::serve(listener, upstream, shutdown).await?;
    Ok(())
}
