//! The two RPCs a stream may use: `ConnectBatch` first, `Connect` when the upstream answers it
//! `UNIMPLEMENTED` (DESIGN §3). Both carry the same events and commands; a batch holds what is
//! ready together, and never waits to fill, so batching adds no latency.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::Poll,
};

use futures_util::{Stream, StreamExt, stream};
use prost::Message;
use tonic::{Code, Status, Streaming, transport::Channel};

use crate::proto::{NodeEvent, NodeEventBatch, UpstreamCommand, UpstreamCommandBatch, upstream_client::UpstreamClient};

/// Most events in one batch.
pub const MAX_BATCH_EVENTS: usize = 1024;
/// Most encoded bytes of events in one batch (an event larger than this goes alone): well below
/// the 4 MiB a stock gRPC server accepts per message by default.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Which RPC an upstream takes. Starts with `ConnectBatch`; set to `Connect` for good once the
/// upstream answered `UNIMPLEMENTED`.
#[derive(Debug, Default)]
pub struct Rpc {
    /// The upstream does not implement `ConnectBatch`.
    single: AtomicBool,
}

impl Rpc {
    /// Whether streams use `ConnectBatch`.
    pub fn batches(&self) -> bool {
        !self.single.load(Ordering::Relaxed)
    }

    /// Whether `status` (the answer to a call) means `ConnectBatch` is not implemented; if so,
    /// the next streams use `Connect`.
    pub fn falls_back(&self, status: &Status) -> bool {
        let unimplemented = self.batches() && status.code() == Code::Unimplemented;
        if unimplemented {
            self.single.store(true, Ordering::Relaxed);
        }
        unimplemented
    }
}

/// The upstream's side of a stream, command by command, whichever the RPC.
pub enum Commands {
    /// `Connect`.
    Single(Streaming<UpstreamCommand>),
    /// `ConnectBatch`, with the rest of the batch being read.
    Batch(Streaming<UpstreamCommandBatch>, VecDeque<UpstreamCommand>),
}

impl Commands {
    /// The next command; `None` when the upstream ended the stream.
    ///
    /// # Errors
    /// The stream's status when it broke.
    ///
    /// # Cancel safety
    /// Cancel safe: a batch being read stays in the stream.
    pub async fn message(&mut self) -> Result<Option<UpstreamCommand>, Status> {
        match self {
            Self::Single(inbound) => inbound.message().await,
            Self::Batch(inbound, rest) => loop {
                if let Some(command) = rest.pop_front() {
                    return Ok(Some(command));
                }
                match inbound.message().await? {
                    Some(batch) => rest.extend(batch.commands),
                    None => return Ok(None),
                }
            },
        }
    }
}

/// A call under way: resolves to the upstream's side once it answers.
pub type Call = Pin<Box<dyn Future<Output = Result<Commands, Status>> + Send>>;

/// Opens the stream with the RPC `rpc` says, sending `events` on it.
pub fn call(
    rpc: &Rpc,
    client: UpstreamClient<Channel>,
    events: impl Stream<Item = NodeEvent> + Send + 'static,
) -> Call {
    let mut client = client;
    if rpc.batches() {
        Box::pin(async move {
            let response = client.connect_batch(batched(events)).await?;
            Ok(Commands::Batch(response.into_inner(), VecDeque::new()))
        })
    } else {
        Box::pin(async move { Ok(Commands::Single(client.connect(events).await?.into_inner())) })
    }
}

/// Groups the events that are ready together into batches of at most [`MAX_BATCH_EVENTS`] and
/// [`MAX_BATCH_BYTES`]; never waits for more once one event is there.
pub fn batched(events: impl Stream<Item = NodeEvent> + Send + 'static) -> impl Stream<Item = NodeEventBatch> + Send {
    let mut events = Box::pin(events.fuse());
    // An event that did not fit in the last batch: the first of the next.
    let mut held: Option<NodeEvent> = None;
    stream::poll_fn(move |cx| {
        let mut batch = Vec::new();
        let mut bytes = 0;
        if let Some(event) = held.take() {
            bytes += event.encoded_len();
            batch.push(event);
        }
        while batch.len() < MAX_BATCH_EVENTS {
            match events.as_mut().poll_next(cx) {
                Poll::Ready(Some(event)) => {
                    let len = event.encoded_len();
                    if !batch.is_empty() && bytes + len > MAX_BATCH_BYTES {
                        held = Some(event);
                        break;
                    }
                    bytes += len;
                    batch.push(event);
                }
                Poll::Ready(None) if batch.is_empty() => return Poll::Ready(None),
                Poll::Pending if batch.is_empty() => return Poll::Pending,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        Poll::Ready(Some(NodeEventBatch { events: batch }))
    })
}
