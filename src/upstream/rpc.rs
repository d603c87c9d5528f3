//! The two RPCs a stream may use: `ConnectBatch` first, `Connect` when the upstream answers it
//! `UNIMPLEMENTED` (DESIGN §3). Both carry the same events and commands, which the node hands
//! out in batches of what is ready together ([`super::outbound`]): `ConnectBatch` sends each as
//! one message, `Connect` event by event.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
};

use futures_util::{Stream, StreamExt, stream};
use http::uri::PathAndQuery;
use tonic::{Code, GrpcMethod, Status, Streaming, client::Grpc, transport::Channel};
use tonic_prost::ProstCodec;

use crate::{
    proto::{UpstreamCommand, UpstreamCommandBatch},
    socket::{event::Event, wire::EventBatch},
};

/// Largest command an upstream may send (a payload plus a little), in bytes.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;

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

    /// The next command of the batch being read, when one is left: there without waiting.
    pub fn next_ready(&mut self) -> Option<UpstreamCommand> {
        match self {
            Self::Single(_) => None,
            Self::Batch(_, rest) => rest.pop_front(),
        }
    }
}

/// A call under way: resolves to the upstream's side once it answers.
pub type Call = Pin<Box<dyn Future<Output = Result<Commands, Status>> + Send>>;

/// Opens the stream with the RPC `rpc` says, sending `events` on it.
///
/// The call is made as the generated `UpstreamClient` makes it, with the events written by
/// [`crate::socket::wire`] instead of as `NodeEvent`s (which would copy every message first).
pub fn call(rpc: &Rpc, channel: Channel, batches: impl Stream<Item = EventBatch> + Send + 'static) -> Call {
    if rpc.batches() {
        Box::pin(async move {
            let inbound = streaming(channel, batches, "ConnectBatch", CONNECT_BATCH).await?;
            Ok(Commands::Batch(inbound, VecDeque::new()))
        })
    } else {
        Box::pin(async move { Ok(Commands::Single(streaming(channel, unbatched(batches), "Connect", CONNECT).await?)) })
    }
}

/// The RPCs' paths.
const CONNECT: &str = "/ppp.v1.Upstream/Connect";
const CONNECT_BATCH: &str = "/ppp.v1.Upstream/ConnectBatch";

/// Calls `method` of `ppp.v1.Upstream` (at `path`) with `events`, as the generated client does:
/// waits until the channel can take the call, then opens the stream; returns the upstream's side.
async fn streaming<E, C>(
    channel: Channel,
    events: impl Stream<Item = E> + Send + 'static,
    method: &'static str,
    path: &'static str,
) -> Result<Streaming<C>, Status>
where
    E: prost::Message + Send + 'static,
    C: prost::Message + Default + Send + 'static,
{
    let mut grpc = Grpc::new(channel).max_decoding_message_size(MAX_COMMAND_BYTES);
    grpc.ready().await.map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = tonic::Request::new(events);
    request.extensions_mut().insert(GrpcMethod::new("ppp.v1.Upstream", method));
    let response = grpc.streaming(request, PathAndQuery::from_static(path), ProstCodec::<E, C>::default()).await?;
    Ok(response.into_inner())
}

/// The events of `batches` one by one, for `Connect`.
fn unbatched(batches: impl Stream<Item = EventBatch> + Send) -> impl Stream<Item = Event> + Send {
    batches.flat_map(|batch| stream::iter(batch.events))
}
