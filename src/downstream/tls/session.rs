//! One downstream TLS session on rustls's unbuffered API, where the node, not rustls, owns the
//! buffers: rustls's buffered `ServerConnection` keeps a read buffer of at least 4 KiB for the
//! connection's whole life (it never shrinks below that), which was most of what an idle TLS
//! socket cost. Here every buffer is empty, and holds no allocation, while nothing is in it.
//!
//! [`Session`] is rustls's connection and the node's three buffers for it. The handshake
//! ([`handshake`]) drives it alone; after it, the socket's reader and writer (`halves.rs`) share
//! it behind a mutex. Both run in the socket's one task, so the mutex is never contended; it is
//! there because either side may have to process records: whoever calls rustls handles
//! whatever it asks for (records to send, data to hand on), so nothing stays waiting in rustls.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
};

use bytes::BytesMut;
use rustls::{
    ServerConfig,
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{ConnectionState, EncodeError, EncryptError, ReadTraffic, UnbufferedStatus, WriteTraffic},
};
use tokio::{
    io::AsyncWrite,
    net::{TcpStream, tcp::WriteHalf},
};

use super::with_hello_name;

/// Most bytes one read from a TLS socket takes: a whole record of the largest size (16 KiB of
/// data and what encryption adds to it), so that one read can complete one.
pub(crate) const READ_SIZE: usize = 17 << 10;
/// Most bytes read and not yet processed. rustls joins a handshake message split over several
/// records in this buffer (up to 64 KiB, its limit for one message); after the handshake, only
/// the start of one record is ever left in it between reads.
pub(crate) const MAX_INCOMING: usize = 80 << 10;

thread_local! {
    /// Where a TLS socket's reads land, one buffer per thread (sockets keep only what rustls
    /// leaves of a read): neither zeroed per read, as one on the stack would be, nor allocated
    /// per read, as one on the heap would be. rustls decrypts in place, so it holds the last
    /// reads' plaintext until later reads overwrite it, as freed memory would.
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

/// A TLS socket after its handshake: the TCP stream, and the session its reader and writer
/// share. Boxed (one allocation, made before the handshake's own): inline it would make every
/// socket's future, plain ones too, as big as a TLS session.
pub(crate) struct TlsSocket {
    /// The client's TCP stream.
    pub(crate) tcp: TcpStream,
    /// The TLS session over it.
    pub(crate) session: Mutex<Session>,
}

/// rustls's connection and the node's buffers for it.
pub(crate) struct Session {
    /// rustls's side: the handshake, then the record keys.
    conn: UnbufferedServerConnection,
    /// Bytes read from the client and not yet processed (at most the start of one record
    /// between reads, once the handshake is done).
    incoming: Vec<u8>,
    /// Records to send; `outgoing[sent..]` is not written yet.
    outgoing: Vec<u8>,
    /// How much of `outgoing` is written.
    sent: usize,
    /// Decrypted bytes the reader had no room for yet (a record holds up to 16 KiB).
    pub(super) plaintext: BytesMut,
    /// The client ended its side: `close_notify`, or the end of its TCP stream.
    pub(super) read_closed: bool,
    /// rustls failed the session: it is not to be called again (it would process the bad
    /// records once more).
    failed: bool,
}

/// What [`Session::process`] encrypts once rustls can send application data.
pub(super) enum Outbound<'a> {
    /// Nothing: only process what was read.
    Nothing,
    /// These bytes.
    Data(&'a [u8]),
    /// The `close_notify` alert.
    CloseNotify,
}

/// Where [`Session::process`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    /// The handshake needs more records from the client.
    NeedsRecords,
    /// The handshake is over: all that was read is processed, what was to be encrypted is in
    /// the outgoing buffer.
    Traffic,
    /// Both sides sent `close_notify`: nothing more can be sent.
    Closed,
}

/// What the caller of [`Session::process`] does with decrypted data: given the bytes and the
/// session's plaintext buffer, it keeps them (in order).
pub(super) type Keep<'a> = dyn FnMut(&[u8], &mut BytesMut) + 'a;

/// Decrypted data kept in the session's plaintext buffer (for when no reader is asking).
pub(super) fn keep_all(payload: &[u8], rest: &mut BytesMut) {
    rest.extend_from_slice(payload);
}

impl Session {
    /// A session for a new client.
    fn new(config: Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plaintext: BytesMut::new(),
            read_closed: false,
            failed: false,
        })
    }

    /// Processes the records read so far and, once rustls can send application data, encrypts
    /// `send`. Records rustls wants sent go to the outgoing buffer (the caller sends them);
    /// decrypted data goes to `keep`.
    ///
    /// # Errors
    /// `InvalidData` with the rustls error inside: the client broke the protocol (the alert
    /// saying why is in the outgoing buffer), or the session had failed already.
    pub(super) fn process(&mut self, send: Outbound<'_>, keep: &mut Keep<'_>) -> io::Result<Stopped> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (used, processed) = self.process_in(&mut incoming, send, keep);
        incoming.drain(..used);
        if !incoming.is_empty() {
            self.incoming = incoming; // Else it is released.
        }
        processed
    }

    /// Reads what the socket holds, without waiting, and processes it as [`Session::process`]
    /// does. The bytes go to this thread's read buffer ([`READ_BUFFER`]) and are processed
    /// there: only what rustls leaves (the start of a record) is kept, in the session's buffer,
    /// which later reads go to until it is empty again.
    ///
    /// # Errors
    /// `WouldBlock` when the socket had nothing; the socket's errors; [`Session::process`]'s;
    /// `InvalidData` when more than [`MAX_INCOMING`] bytes would wait unprocessed.
    pub(super) fn receive(&mut self, tcp: &TcpStream, keep: &mut Keep<'_>) -> io::Result<Stopped> {
        if !self.incoming.is_empty() {
            if self.incoming.len() >= MAX_INCOMING {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS records too large"));
            }
            self.incoming.reserve(READ_SIZE);
            self.read_closed |= tcp.try_read_buf(&mut self.incoming)? == 0;
            return self.process(Outbound::Nothing, keep);
        }
        READ_BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut read) => self.receive_into(tcp, &mut read, keep),
            // Not while another read on this thread holds it (none does: nothing here reads).
            Err(_) => self.receive_into(tcp, &mut vec![0; READ_SIZE], keep),
        })
    }

    /// [`Session::receive`] through `read`, a buffer of [`READ_SIZE`] bytes.
    fn receive_into(&mut self, tcp: &TcpStream, read: &mut [u8], keep: &mut Keep<'_>) -> io::Result<Stopped> {
        let n = tcp.try_read(read)?;
        self.read_closed |= n == 0;
        let (used, processed) = self.process_in(&mut read[..n], Outbound::Nothing, keep);
        self.incoming.extend_from_slice(&read[used..n]);
        processed
    }

    /// [`Session::process`] on `incoming`; returns, with the outcome, how many of its bytes
    /// rustls is done with (the rest is to be processed again with what comes after it).
    fn process_in(
        &mut self,
        incoming: &mut [u8],
        mut send: Outbound<'_>,
        keep: &mut Keep<'_>,
    ) -> (usize, io::Result<Stopped>) {
        if self.failed {
            return (0, Err(invalid("the TLS session failed")));
        }
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(&mut incoming[used..]);
            let stopped = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(records)) => {
                    take_records(records, keep, &mut self.plaintext, &mut discard).map(|()| None)
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    append(&mut self.outgoing, |out| data.encode(out), encode_room).map(|()| None).map_err(general)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done(); // The caller sends the outgoing buffer once `process` returns.
                    Ok(None)
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    let send = std::mem::replace(&mut send, Outbound::Nothing);
                    encrypt(&mut traffic, send, &mut self.outgoing).map(|()| Some(Stopped::Traffic))
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stopped::NeedsRecords)),
                Ok(ConnectionState::PeerClosed) => Ok(self.closed_by_peer(None)),
                Ok(ConnectionState::Closed) => Ok(self.closed_by_peer(Some(Stopped::Closed))),
                // Early data is off (`max_early_data_size` 0): rustls refuses it before this.
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".to_owned())),
            };
            used = (used + discard).min(incoming.len());
            match stopped {
                Ok(None) => {}
                Ok(Some(stopped)) => return (used, Ok(self.stopped(stopped))),
                Err(e) => {
                    self.failed = true;
                    self.encode_alert(&mut incoming[used..]);
                    return (used, Err(invalid(e)));
                }
            }
        }
    }

    /// Notes that the client sent `close_notify`; returns `then`.
    fn closed_by_peer(&mut self, then: Option<Stopped>) -> Option<Stopped> {
        self.read_closed = true;
        then
    }

    /// `stopped`, except that `Traffic` before the handshake is over (a TLS 1.3 server may send
    /// data before the client's Finished) still needs the client's records.
    fn stopped(&self, stopped: Stopped) -> Stopped {
        if stopped == Stopped::Traffic && self.conn.is_handshaking() { Stopped::NeedsRecords } else { stopped }
    }

    /// After rustls failed the session: encodes the alert it queued saying why. rustls hands out
    /// what it queued before it looks at the records again (which would fail once more), and
    /// only as long as something is queued.
    fn encode_alert(&mut self, incoming: &mut [u8]) {
        while self.conn.wants_write() {
            let Ok(ConnectionState::EncodeTlsData(mut data)) = self.conn.process_tls_records(incoming).state else {
                return;
            };
            if append(&mut self.outgoing, |out| data.encode(out), encode_room).is_err() {
                return;
            }
        }
    }

    /// Writes what the outgoing buffer holds without waiting; `Ok(true)` once all of it is
    /// written (the buffer is then released).
    pub(super) fn send_now(&mut self, tcp: &TcpStream) -> io::Result<bool> {
        while self.sent < self.outgoing.len() {
            match tcp.try_write(&self.outgoing[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(true)
    }

    /// Writes the outgoing buffer through the writer's half, until all of it is written.
    pub(super) fn poll_send(&mut self, write: &mut WriteHalf<'_>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            match ready!(Pin::new(&mut *write).poll_write(cx, &self.outgoing[self.sent..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Whether the outgoing buffer holds records not written yet.
    pub(super) fn sending(&self) -> bool {
        self.sent < self.outgoing.len()
    }
}

/// Hands every decrypted record to `keep`, adding to `discard` what rustls says to.
fn take_records(
    mut records: ReadTraffic<'_, '_, ServerConnectionData>,
    keep: &mut Keep<'_>,
    plaintext: &mut BytesMut,
    discard: &mut usize,
) -> Result<(), rustls::Error> {
    while let Some(record) = records.next_record() {
        let record = record?;
        *discard += record.discard;
        keep(record.payload, plaintext);
    }
    Ok(())
}

/// Encrypts what `send` asks for into `outgoing`.
fn encrypt(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    send: Outbound<'_>,
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let encrypted = match send {
        Outbound::Nothing => return Ok(()),
        Outbound::Data(data) => append(outgoing, |out| traffic.encrypt(data, out), encrypt_room),
        Outbound::CloseNotify => append(outgoing, |out| traffic.queue_close_notify(out), encrypt_room),
    };
    encrypted.map_err(general)
}

/// An error of rustls's unbuffered API that is not a [`rustls::Error`] (no room to encode into,
/// which [`append`] prevents; the keys used up) as one.
fn general(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// Appends what `write` writes to `out`, asking it first (with no room) how much it needs.
fn append<E>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    room: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let needed = match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(e) => room(&e).ok_or(e)?,
    };
    let start = out.len();
    out.resize(start + needed, 0);
    let written = write(&mut out[start..]);
    out.truncate(start + *written.as_ref().unwrap_or(&0));
    written.map(drop)
}

/// The room an [`EncodeError`] asks for.
fn encode_room(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

/// The room an [`EncryptError`] asks for.
fn encrypt_room(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

/// A rustls error as the I/O error the socket's code sees (as tokio-rustls makes it).
fn invalid(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Makes the server side of the handshake on `tcp`; returns the socket, ready for traffic
/// (data the client sent right after its Finished already decrypted and waiting for the
/// reader), and the name the client asked for (SNI), if any.
///
/// # Errors
/// The socket's errors, `UnexpectedEof` when the client left, `InvalidData` with rustls's error
/// inside when the handshake failed (the alert saying why is sent, if the socket takes it).
pub(super) async fn handshake(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<(Box<TlsSocket>, Option<Box<str>>)> {
    let session = Session::new(config).map_err(invalid)?;
    let mut socket = Box::new(TlsSocket { tcp, session: Mutex::new(session) });
    let TlsSocket { tcp, session } = &mut *socket;
    let session = session.get_mut().unwrap_or_else(|e| e.into_inner());
    let (mut name, mut stopped) = (None, Stopped::NeedsRecords);
    loop {
        match stopped {
            Stopped::Traffic => return Ok((socket, name)),
            Stopped::NeedsRecords if !session.read_closed => {}
            Stopped::NeedsRecords | Stopped::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
        }
        tcp.readable().await?;
        let (received, hello) = with_hello_name(|| session.receive(tcp, &mut keep_all));
        if let Some(hello) = hello {
            name = hello;
        }
        stopped = match received {
            Ok(stopped) => stopped,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                let _ = session.send_now(tcp);
                return Err(e);
            }
        };
        while !session.send_now(tcp)? {
            tcp.writable().await?;
        }
    }
}
