//! A socket's writer: drains its bounded outbound queue, coalescing whatever is queued into one
//! write; on a graceful close, flushes what is left (within [`FLUSH_TIMEOUT`]).

use std::{collections::VecDeque, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::framing::{self, Framing};
use crate::{
    metrics as m,
    socket::{CloseReason, SocketState},
};

/// How long queued messages may take to flush when a socket closes gracefully.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes queued messages until the socket closes; on a graceful close, flushes what is queued.
pub(super) async fn write_loop(framing: Framing, socket: &SocketState, mut write: impl AsyncWrite + Unpin) {
    let mut out = BytesMut::new();
    let closing = socket.closing();
    tokio::pin!(closing);
    loop {
        let queued = socket.take_outbound();
        if queued.is_empty() {
            tokio::select! {
                biased;
                () = socket.outbound_ready() => continue,
                () = &mut closing => break,
            }
        }
        encode_all(framing, socket, queued, &mut out);
        let written = tokio::select! {
            biased;
            // The flush is a no-op on plain TCP; TLS may hold back the last record until it.
            r = async { write.write_all(&out).await?; write.flush().await } => r,
            () = abort(socket) => return,
        };
        if written.is_err() {
            socket.close(CloseReason::ClientError);
            return;
        }
        out = BytesMut::new(); // Hold no memory while the socket is quiet.
    }
    let rest = socket.seal_outbound();
    if socket.close_reason().is_some_and(CloseReason::flushes) {
        encode_all(framing, socket, rest, &mut out);
        let flush = async {
            write.write_all(&out).await?;
            write.shutdown().await
        };
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
    }
}

/// Frames every queued payload into `out`, counting them.
fn encode_all(framing: Framing, socket: &SocketState, queued: VecDeque<Bytes>, out: &mut BytesMut) {
    let messages = queued.len() as u64;
    let mut bytes = 0u64;
    for payload in queued {
        framing::encode(framing, &payload, out);
        bytes += payload.len() as u64;
    }
    socket.messages_out.fetch_add(messages, std::sync::atomic::Ordering::Relaxed);
    socket.bytes_out.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    let hot = m::hot();
    hot.messages_out.increment(messages);
    hot.bytes_out.increment(bytes);
}

/// Resolves when the socket closes for a reason that does not flush (a write in progress is
/// abandoned then); never resolves for a graceful close.
async fn abort(socket: &SocketState) {
    socket.closing().await;
    if socket.close_reason().is_some_and(CloseReason::flushes) {
        std::future::pending::<()>().await;
    }
}
