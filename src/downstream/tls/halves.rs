//! A TLS socket's two halves, as its reader and writer use them: [`TlsInbound`] (an
//! [`Inbound`]) and [`TlsOutbound`] (an `AsyncWrite`), sharing the socket's [`Session`].
//!
//! The reader waits for the TCP socket to be readable, then reads its records onto the stack and
//! decrypts them straight into the reader's buffer: an idle TLS socket holds no read buffer, of
//! the node's or of rustls's. The writer encrypts into a buffer that lives only
//! until its records are written.

use std::{
    io,
    pin::Pin,
    sync::{Mutex, MutexGuard},
    task::{Context, Poll, ready},
};

use bytes::{Buf, BufMut, BytesMut};
use tokio::{
    io::AsyncWrite,
    net::tcp::{ReadHalf, WriteHalf},
};

use super::session::{Outbound, Session, Stopped, keep_all};
use crate::downstream::transport::Inbound;

/// Most bytes encrypted by one write: what waits to be written stays bounded.
pub(crate) const MAX_WRITE: usize = 64 << 10;

/// The session, whatever a panic elsewhere left in it (its buffers are consistent between calls).
fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reading half of a TLS socket.
pub(crate) struct TlsInbound<'a> {
    /// The TCP stream's read half.
    read: ReadHalf<'a>,
    /// The session, shared with the writer.
    session: &'a Mutex<Session>,
}

impl<'a> TlsInbound<'a> {
    /// The reading half of `session` over `read`.
    pub(crate) fn new(read: ReadHalf<'a>, session: &'a Mutex<Session>) -> Self {
        Self { read, session }
    }
}

impl Inbound for TlsInbound<'_> {
    async fn ready(&mut self) -> io::Result<()> {
        {
            let session = lock(self.session);
            if !session.plaintext.is_empty() || session.read_closed {
                return Ok(());
            }
        }
        self.read.readable().await
    }

    fn try_read_buf<B: BufMut>(&mut self, buf: &mut B) -> io::Result<usize> {
        let mut session = lock(self.session);
        let session = &mut *session;
        let mut n = take_plaintext(&mut session.plaintext, buf);
        if n > 0 || (session.read_closed && session.plaintext.is_empty()) {
            return Ok(n);
        }
        // Every record read is processed now, whether or not the buffer has room for it, so that
        // nothing waits in rustls for the writer to find.
        let received = session.receive(self.read.as_ref(), &mut |payload: &[u8], rest: &mut BytesMut| {
            let fits = if rest.is_empty() { payload.len().min(buf.remaining_mut()) } else { 0 };
            buf.put_slice(&payload[..fits]);
            rest.extend_from_slice(&payload[fits..]);
            n += fits;
        });
        if session.sending() {
            // An alert, say: best effort, the writer sends what is left with its next write.
            let _ = session.send_now(self.read.as_ref());
        }
        match received {
            Ok(_) if n > 0 => Ok(n),
            Ok(_) if session.read_closed && session.plaintext.is_empty() => Ok(0),
            Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
            Err(_) if n > 0 => Ok(n), // The error again at the next read.
            Err(e) => Err(e),
        }
    }
}

/// Moves what of `plaintext` fits into `buf`; releases `plaintext` once it is empty.
fn take_plaintext<B: BufMut>(plaintext: &mut BytesMut, buf: &mut B) -> usize {
    let n = plaintext.len().min(buf.remaining_mut());
    buf.put_slice(&plaintext[..n]);
    plaintext.advance(n);
    if plaintext.is_empty() {
        *plaintext = BytesMut::new();
    }
    n
}

/// The writing half of a TLS socket.
pub(crate) struct TlsOutbound<'a> {
    /// The TCP stream's write half.
    write: WriteHalf<'a>,
    /// The session, shared with the reader.
    session: &'a Mutex<Session>,
    /// `close_notify` is encrypted (shutting down).
    closing: bool,
}

impl<'a> TlsOutbound<'a> {
    /// The writing half of `session` over `write`.
    pub(crate) fn new(write: WriteHalf<'a>, session: &'a Mutex<Session>) -> Self {
        Self { write, session, closing: false }
    }
}

impl AsyncWrite for TlsOutbound<'_> {
    /// Encrypts up to [`MAX_WRITE`] bytes once the records of the last write are written, and
    /// starts writing them (a flush finishes).
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut session = lock(this.session);
        ready!(session.poll_send(&mut this.write, cx))?;
        let n = buf.len().min(MAX_WRITE);
        if session.process(Outbound::Data(&buf[..n]), &mut keep_all)? != Stopped::Traffic {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if let Poll::Ready(Err(e)) = session.poll_send(&mut this.write, cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        lock(this.session).poll_send(&mut this.write, cx)
    }

    /// Sends `close_notify`, then ends the TCP stream's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        {
            let mut session = lock(this.session);
            if !this.closing {
                this.closing = true;
                // Both sides closed already: nothing more to say.
                let _ = session.process(Outbound::CloseNotify, &mut keep_all);
            }
            ready!(session.poll_send(&mut this.write, cx))?;
        }
        Pin::new(&mut this.write).poll_shutdown(cx)
    }
}
