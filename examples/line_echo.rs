//! A plain line-echo TCP server: the baseline that HAProxy fronts in `bench/run.sh`.
//!
//! ```text
//! line_echo --listen 127.0.0.1:7000
//! ```
//!
//! One thread (a current-thread tokio runtime), one task per socket. Each read goes into a
//! buffer; every complete line in it is echoed back in one write (so a burst of lines read
//! together is answered by one write), and a partial line waits for the rest. A line longer than
//! the buffer is echoed in pieces, so a socket never holds more than [`BUFFER`] bytes. Runs until
//! killed.

use std::{net::SocketAddr, time::Duration};

use anyhow::Result;
use clap::Parser;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Read buffer per socket, in bytes; also the longest line echoed in one piece.
const BUFFER: usize = 64 << 10;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The command line.
#[derive(Parser)]
#[command(about = "Line-echo TCP server (one thread), the HAProxy baseline of the ppp benchmark")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(args.listen))
}

/// Accepts sockets forever, one echo task each.
async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("line_echo listening on {}", listener.local_addr()?);
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                tokio::spawn(async move {
                    if let Err(e) = echo(socket).await {
                        eprintln!("line_echo: socket error: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("line_echo: accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// Echoes complete lines back until the client closes.
async fn echo(mut socket: TcpStream) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let mut buf = vec![0u8; BUFFER];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // One line fills the buffer: send what there is and keep going.
            socket.write_all(&buf).await?;
            filled = 0;
        }
        let n = socket.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        // Only the new bytes can hold a `\n` not yet seen.
        let Some(last) = buf[filled..filled + n].iter().rposition(|&b| b == b'\n').map(|p| filled + p) else {
            filled += n;
            continue;
        };
        filled += n;
        socket.write_all(&buf[..=last]).await?;
        buf.copy_within(last + 1..filled, 0);
        filled -= last + 1;
    }
}
