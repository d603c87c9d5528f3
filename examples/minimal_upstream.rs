//! The smallest complete upstream in Rust (tonic): it echoes every message back to its socket.
//! `docs/protocol.md` ("Write an upstream in 30 lines") quotes it; `src/echo.rs` is the full one.
//!
//!     cargo run --example minimal_upstream [host:port]    # gRPC on 0.0.0.0:50051
//!     cargo run -- --upstream http://127.0.0.1:50051      # a node that uses it

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use ppp::proto::{
    NodeEvent, NodeEventBatch, Send, UpstreamCommand, UpstreamCommandBatch,
    node_event::Event,
    upstream_command::Command,
    upstream_server::{Upstream as UpstreamService, UpstreamServer},
};
use tonic::{Request, Response, Status, Streaming, transport::Server};

struct Echo;

#[tonic::async_trait]
impl UpstreamService for Echo {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<UpstreamCommand, Status>> + std::marker::Send>>;
    type ConnectBatchStream = Pin<Box<dyn Stream<Item = Result<UpstreamCommandBatch, Status>> + std::marker::Send>>;

    async fn connect(&self, request: Request<Streaming<NodeEvent>>) -> Result<Response<Self::ConnectStream>, Status> {
        let echoes = request.into_inner().filter_map(|event| async move {
            match event.ok()?.event? {
                Event::Data(d) => Some(Ok(UpstreamCommand {
                    command_id: String::new(),
                    command: Some(Command::Send(Send { socket_id: d.socket_id, payload: d.payload })),
                })),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(echoes)))
    }

    async fn connect_batch(
        &self,
        _: Request<Streaming<NodeEventBatch>>,
    ) -> Result<Response<Self::ConnectBatchStream>, Status> {
        Err(Status::unimplemented("use Connect"))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("ppp.v1.Upstream", tonic_health::ServingStatus::Serving).await;
    let addr = std::env::args().nth(1).unwrap_or_else(|| "0.0.0.0:50051".to_owned()).parse()?;
    Server::builder().add_service(health).add_service(UpstreamServer::new(Echo)).serve(addr).await?;
    Ok(())
}
