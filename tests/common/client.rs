//! The downstream line client: a real TCP socket to a node.

use ppp::Node;
use std::net::SocketAddr;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpStream, tcp::OwnedWriteHalf},
};

use super::wait::DEADLINE;

/// A downstream client over a real TCP socket, reading lines.
pub struct Client {
    pub reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Client {
    /// Connects to a node.
    pub async fn connect(node: &Node) -> Self {
        Self::connect_to(node.local_addr()).await
    }

    /// Connects to a node's downstream listener at `addr`.
    pub async fn connect_to(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (r, w) = stream.into_split();
        Self { reader: BufReader::new(r), writer: w }
    }

    /// Writes raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Reads one line (without `\n`); fails the test after the deadline or at EOF.
    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        let n =
            tokio::time::timeout(DEADLINE, self.reader.read_line(&mut line)).await.expect("a line in time").unwrap();
        assert!(n > 0, "unexpected EOF");
        line.trim_end_matches('\n').to_owned()
    }

    /// Reads exactly `n` bytes.
    pub async fn exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        tokio::time::timeout(DEADLINE, self.reader.read_exact(&mut buf)).await.expect("bytes in time").unwrap();
        buf
    }

    /// Waits for the node to close the socket, returning whatever was still delivered first.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, self.reader.read_to_end(&mut rest)).await.expect("close in time");
        // A reset after the node closed is also a close.
        let _ = read;
        rest
    }
}

/// `len` bytes of noise, the same for the same seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    StdRng::seed_from_u64(seed).fill(&mut bytes[..]);
    bytes
}

/// Writes without failing the test: the node may close the socket (and reset it) mid-write.
pub async fn write_lossy(c: &mut Client, bytes: &[u8]) {
    let _ = c.writer.write_all(bytes).await;
}
