//! What an upstream sends on its stream: commands, carried out here (for this node's sockets) or
//! by the owning node (in order, without holding up the rest of the stream), receipts queued back
//! on the upstream's own queue, and acks, which confirm the replay window.

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tracing::warn;

use super::pool::Upstream;
use crate::{
    command::{Command, Dispatcher, Receipt},
    metrics as m,
    proto::{self, CommandResult, upstream_command},
    socket::event::Event,
};

/// Carries out one command and, when it carries a `command_id`, queues its receipt. A command
/// for a socket of another node waits for that node; it goes to `remote` (carried out in order by
/// [`remote_commands`]) so that it never holds up the commands behind it on this stream.
pub(super) async fn handle_command(
    upstream: &Upstream,
    command: proto::UpstreamCommand,
    dispatcher: &Dispatcher,
    remote: &mpsc::Sender<(Option<String>, Command)>,
) {
    if let Some(upstream_command::Command::Ack(ack)) = &command.command {
        upstream.delivery.ack(ack.event_seq);
        return;
    }
    let (command_id, parsed) = Command::from_proto(command);
    let receipt = match parsed {
        Ok(command) if command.socket().is_some() => match dispatcher.execute_local(&command) {
            Some(receipt) => {
                m::hot().command(command.kind(), receipt.status_label());
                receipt
            }
            None => {
                if let Err(mpsc::error::SendError((command_id, _))) = remote.send((command_id, command)).await {
                    send_receipt(upstream, command_id, Receipt::failed("the stream is closing"));
                }
                return;
            }
        },
        Ok(command) => dispatcher.execute(&command).await,
        Err(e) => {
            warn!(error = %e, command_id = command_id.as_deref().unwrap_or(""), "invalid command");
            m::hot().command("invalid", "failed");
            Receipt::failed(e.to_string())
        }
    };
    send_receipt(upstream, command_id, receipt);
}

/// Commands of one stream for other nodes' sockets whose receipts are still awaited; when that
/// many are, the stream waits (backpressure, through the stream's remote queue) before it
/// forwards more.
pub const REMOTE_IN_FLIGHT: usize = 4096;
/// Most commands forwarded together.
const REMOTE_BATCH: usize = 512;

/// Carries the commands of one stream for sockets held by other nodes to their nodes: those that
/// are ready together in one go, in order (a socket gets its commands in the order the upstream
/// sent them), with up to [`REMOTE_IN_FLIGHT`] awaiting their receipts at once.
pub(super) async fn remote_commands(
    upstream: Arc<Upstream>,
    mut commands: mpsc::Receiver<(Option<String>, Command)>,
    dispatcher: Dispatcher,
) {
    let in_flight = Arc::new(Semaphore::new(REMOTE_IN_FLIGHT));
    let mut batch = Vec::with_capacity(REMOTE_BATCH);
    while commands.recv_many(&mut batch, REMOTE_BATCH).await > 0 {
        let Ok(permits) = in_flight.clone().acquire_many_owned(batch.len() as u32).await else { return };
        let (ids, batch_commands): (Vec<_>, Vec<_>) = std::mem::take(&mut batch).into_iter().unzip();
        let pending = dispatcher.forward(&batch_commands).await;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let receipts = futures_util::future::join_all(pending).await;
            for ((command_id, command), receipt) in ids.into_iter().zip(&batch_commands).zip(receipts) {
                m::hot().command(command.kind(), receipt.status_label());
                send_receipt(&upstream, command_id, receipt);
            }
            drop(permits);
        });
    }
}

/// Queues the receipt of a command that carried a `command_id`.
fn send_receipt(upstream: &Upstream, command_id: Option<String>, receipt: Receipt) {
    let Some(command_id) = command_id else { return };
    let result = CommandResult { command_id, status: receipt.status as i32, detail: receipt.detail };
    if upstream.try_forward(Event::result(result)).is_err() {
        warn!("receipt refused: the upstream's queue is full");
        metrics::counter!(m::MESSAGES_REFUSED, "reason" => "receipt_queue_full").increment(1);
    }
}
