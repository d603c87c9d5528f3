#!/usr/bin/env python3
"""The example echo upstream of PersistentParadoxPlex, in Python (grpcio, asyncio API).

It behaves like the Rust example (`src/echo.rs`), so either can stand in for the other: it
echoes every message back to its socket as it is, and understands a few commands typed by the
client, to show what an upstream can do:

    typed                 what the upstream does
    /help                 replies with this list
    /whoami               replies with the socket id, its seq and its labels, tagged "(NAME)"
    /label k=v ...        `set_labels` (merge) on the socket; an empty value removes the label
    /broadcast text       `broadcast` to every socket of the cluster
    /to <socket> text     `send` to another socket, and reports the receipt
    /close                `close` the socket
    anything else         `send` it back

It is stateless about sockets: who is talking comes with every `data` event (`labels`). The only
state is per stream: which `command_id` belongs to which socket, to report receipts, and which
events are not acknowledged yet.

It implements both RPCs of the service: `Connect` (one event, one command per message) and
`ConnectBatch` (the same, in batches), which nodes prefer. It acknowledges the events it has
processed (`ack`), so that after a broken stream a node redelivers only what was not.

It also serves the standard gRPC health service (SERVING for `ppp.v1.Upstream` and for ""), which
the node polls for readiness. On SIGTERM (or Ctrl-C) it answers NOT_SERVING, so that nodes stop
sending it events, and stops after a grace period in which open streams keep working.

    python upstream.py --listen 127.0.0.1:50052      # or PPP_PY_LISTEN=...
    cargo run -- --upstream http://127.0.0.1:50052  # a node that uses it

It runs a stock `grpc.aio.server()`, with no options: the protocol needs none.

docs/protocol.md describes the protocol; proto/ppp/v1/upstream.proto is its definition.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ppp.v1 import upstream_pb2 as pb
from ppp.v1 import upstream_pb2_grpc as pb_grpc

# The service name nodes ask the health service about (`UPSTREAM_SERVICE` in the Rust code).
UPSTREAM_SERVICE = "ppp.v1.Upstream"

# Word for word the Rust upstream's, so that clients cannot tell the two apart but by `/whoami`.
HELP = (
    "commands: /whoami, /label k=v ..., /broadcast text, /to <socket-id> text, /close, /help; anything else is echoed"
)

# Acknowledgements. An `ack` is cumulative: one small message ("every event up to N is
# processed") covers every event before it, so acknowledging every 256 events, or 50 ms after the
# first event not yet acknowledged, costs one message per hundreds of events under load and a few
# per second at most when quiet. What it buys: once a stream has seen an `ack`, the node keeps only
# the events not acknowledged yet, and when the stream breaks (this process crashes, the
# connection drops) it redelivers just those, flagged `redelivered`, instead of everything since
# the last health check.
ACK_EVERY = 256  # events processed since the last ack
ACK_AFTER = 0.050  # seconds after the first event processed since the last ack

log = logging.getLogger("ppp.upstream")

# A message read from the stream: a `NodeEvent` on `Connect`, a `NodeEventBatch` on `ConnectBatch`.
Message = TypeVar("Message")


def send(socket_id: str, text: str) -> pb.UpstreamCommand:
    """A `send` of `text` to one socket, without receipt."""
    return pb.UpstreamCommand(send=pb.Send(socket_id=socket_id, payload=text.encode()))


class Session:
    """One node's stream (`Connect` or `ConnectBatch`): turns the node's events into commands.

    Its only state is `pending`, the sockets waiting to be told the receipt of a command they
    asked for. Receipts come back on the stream that sent the command, so a per-stream map is
    enough, and the ids need only be unique within the stream.
    """

    def __init__(self, greet: bool, name: str) -> None:
        self.greet = greet
        self.name = name
        self.pending: dict[str, str] = {}  # command_id -> socket to tell about its receipt
        self.next_id = 0
        self.node_id = "?"  # set by `hello`, for the logs

    def handle(self, event: pb.NodeEvent) -> Iterator[pb.UpstreamCommand]:
        """The commands answering one event (none, one or several)."""
        kind = event.WhichOneof("event")
        if event.redelivered:
            # Handled like any other event: at least once delivery means this upstream (or
            # another) may have seen it before. A data event is known by (socket_id, seq).
            log.debug("redelivered event %d (%s)", event.event_seq, kind)
        if kind == "hello":
            hello = event.hello
            self.node_id = hello.node_id
            log.info(
                "hello from node %s (cluster %s, version %s, run %s)",
                hello.node_id,
                hello.cluster,
                hello.version,
                hello.run_id,
            )
        elif kind == "opened":
            socket = event.opened.socket
            log.info("opened %s from %s on node %s", socket.id, socket.remote_addr, socket.node_id)
            # A socket announced again (`resumed`) was greeted when it first opened.
            if self.greet and not event.opened.resumed:
                yield send(socket.id, f"welcome, you are {socket.id}. {HELP}")
        elif kind == "data":
            yield from self.data(event.data)
        elif kind == "closed":
            log.info("closed %s: %s", event.closed.socket_id, event.closed.reason)
        elif kind == "result":
            yield from self.result(event.result)

    def data(self, d: pb.SocketData) -> Iterator[pb.UpstreamCommand]:
        """The answer to one message from a socket: a typed command, or the echo."""
        # Lossy like the Rust upstream: a message that is not UTF-8 is simply echoed.
        text = d.payload.decode("utf-8", errors="replace")
        verb, _, rest = text.partition(" ")
        me = d.socket_id
        if verb == "/help":
            yield send(me, HELP)
        elif verb == "/whoami":
            shown = ",".join(sorted(f"{k}={v}" for k, v in d.labels.items()))
            # "(NAME)" goes last: clients parse the id as what stands between "you are " and the
            # first comma, as they do with the Rust upstream's answer.
            yield send(me, f"you are {me}, seq {d.seq}, labels [{shown}] ({self.name})")
        elif verb == "/label":
            pairs = (kv.partition("=") for kv in rest.split())
            labels = {k: v for k, eq, v in pairs if eq}
            yield self.tracked(me, pb.UpstreamCommand(set_labels=pb.SetLabels(socket_id=me, labels=labels)))
        elif verb == "/broadcast":
            payload = f"broadcast from {me}: {rest}".encode()
            yield pb.UpstreamCommand(broadcast=pb.Broadcast(scope=pb.SCOPE_ALL, payload=payload))
        elif verb == "/to":
            target, _, message = rest.partition(" ")
            payload = f"from {me}: {message}".encode()
            yield self.tracked(me, pb.UpstreamCommand(send=pb.Send(socket_id=target, payload=payload)))
        elif verb == "/close":
            yield pb.UpstreamCommand(close=pb.Close(socket_id=me, reason="asked for it"))
        else:
            # The payload back as it came (bytes, not the decoded text): a drop-in for the
            # Rust echo.
            yield pb.UpstreamCommand(send=pb.Send(socket_id=me, payload=d.payload))

    def result(self, r: pb.CommandResult) -> Iterator[pb.UpstreamCommand]:
        """Tells the socket that asked for a command how it went."""
        socket = self.pending.pop(r.command_id, None)
        if socket is None:
            return
        try:
            status = pb.Status.Name(r.status)
        except ValueError:  # a status newer than this code
            status = "unknown"
        yield send(socket, f"receipt {r.command_id}: {status} {r.detail}")

    def tracked(self, socket: str, command: pb.UpstreamCommand) -> pb.UpstreamCommand:
        """`command` with a `command_id`, whose receipt is reported to `socket`."""
        self.next_id += 1
        command.command_id = f"echo-{self.next_id}"
        self.pending[command.command_id] = socket
        return command


class Acks:
    """When to acknowledge on one stream: after `ACK_EVERY` events, or `ACK_AFTER` s (see above)."""

    def __init__(self) -> None:
        self.last = 0  # the event_seq of the last event processed
        self.unacked = 0  # events processed since the last ack
        self.deadline: float | None = None  # loop time the next ack is due at, if any is

    def processed(self, event: pb.NodeEvent) -> None:
        """Counts `event` as processed: its commands are written, or about to be."""
        if not event.event_seq:  # a node older than acks numbers nothing: never ack it
            return
        self.last = event.event_seq
        self.unacked += 1
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + ACK_AFTER

    def timeout(self) -> float | None:
        """Seconds until the next ack is due (None: nothing to acknowledge)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def due(self) -> list[pb.UpstreamCommand]:
        """The ack, if one is due now: [] or [ack]."""
        if self.unacked >= ACK_EVERY or self.timeout() == 0.0:
            return self.now()
        return []

    def now(self) -> list[pb.UpstreamCommand]:
        """The ack of everything processed, if anything is not acknowledged: [] or [ack]."""
        if not self.unacked:
            return []
        self.unacked = 0
        self.deadline = None
        return [pb.UpstreamCommand(ack=pb.Ack(event_seq=self.last))]


class EchoUpstream(pb_grpc.UpstreamServicer):
    """The `ppp.v1.Upstream` service: one `Session` per stream, `Connect` or `ConnectBatch`."""

    def __init__(self, greet: bool, name: str, batches: bool = True) -> None:
        # False stands for an upstream written before `ConnectBatch` (the benchmark compares).
        self.batches = batches
        self.greet = greet
        self.name = name
        # Set when the grace period after SIGTERM is over: the streams still open end their side
        # then, cleanly. Left to `server.stop`, they would be cancelled instead, and grpcio logs
        # every cancelled stream as an error with a traceback.
        self.stopping = asyncio.Event()
        self.open_streams = 0

    async def Connect(  # noqa: N802 (the name is the RPC's)
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        """One node's events, one per message, answered with commands, one per message."""

        async def write(commands: list[pb.UpstreamCommand]) -> None:
            for command in commands:
                await context.write(command)

        await self.stream(context, lambda event: (event,), write)

    async def ConnectBatch(  # noqa: N802 (the name is the RPC's)
        self, request_iterator: object, context: grpc.aio.ServicerContext
    ) -> None:
        """The same as `Connect`, in batches: all the commands answering one batch go in one."""
        if not self.batches:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ConnectBatch")

        async def write(commands: list[pb.UpstreamCommand]) -> None:
            if commands:
                await context.write(pb.UpstreamCommandBatch(commands=commands))

        await self.stream(context, lambda batch: batch.events, write)

    async def stream(
        self,
        context: grpc.aio.ServicerContext,
        events_of: Callable[[Message], Iterable[pb.NodeEvent]],
        write: Callable[[list[pb.UpstreamCommand]], Awaitable[None]],
    ) -> None:
        """Serves one stream until the node ends its side (it drains) or `stopping` is set.

        Reads messages, hands their events to a `Session` in order, and writes the commands that
        answer each message, followed by an ack when one is due, with one `write` per message.
        One coroutine does all the writing, so commands and acks go out in processing order.

        Returning ends the RPC with status OK: our side ends too, as the protocol asks.
        `request_iterator` stays unused: messages are read with `context.read()`, which can race
        against `stopping` and the ack timer (grpcio allows one of the two styles per call).
        """
        session = Session(self.greet, self.name)
        acks = Acks()
        self.open_streams += 1
        stopping = asyncio.ensure_future(self.stopping.wait())
        read: asyncio.Future | None = None
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(context.read())
                # Waits for the next message, or until an ack is due (the ack timer), or `stopping`.
                await asyncio.wait((read, stopping), timeout=acks.timeout(), return_when=asyncio.FIRST_COMPLETED)
                if read.done():
                    message = read.result()
                    read = None
                    if message is grpc.aio.EOF:  # the node ended its side
                        break
                    commands: list[pb.UpstreamCommand] = []
                    for event in events_of(message):
                        commands.extend(session.handle(event))
                        acks.processed(event)
                    # Waits for HTTP/2 flow control, so a node that does not read our commands
                    # stops us reading its events: backpressure, not an unbounded buffer.
                    await write(commands + acks.due())
                elif stopping.done():
                    break
                else:  # the ack timer
                    await write(acks.now())
            # Ending cleanly: what was processed is acknowledged, so nothing of it comes again.
            await write(acks.now())
        finally:
            # Leaves nothing waiting behind (cancelling a finished task does nothing).
            stopping.cancel()
            if read is not None:
                read.cancel()
            self.open_streams -= 1
            log.info("stream from node %s (%s) ended", session.node_id, context.peer())


async def serve(listen: str, greet: bool, grace: float, name: str, batches: bool = True) -> None:
    """Serves the upstream and the health service on `listen` until SIGTERM or SIGINT."""
    # gRPC's default settings. The one that matters is the 4 MiB limit on a received message: a
    # node sends events as large as its `--max-frame` allows, 1 MiB by default, which fits. A node
    # run with `--max-frame` above about 4 MiB needs the limit raised here, for example
    # `grpc.aio.server(options=[("grpc.max_receive_message_length", 16 << 20)])`, or its larger
    # messages break the stream.
    server = grpc.aio.server()
    upstream = EchoUpstream(greet, name, batches)
    pb_grpc.add_UpstreamServicer_to_server(upstream, server)
    # Created here, inside the running event loop, because it makes asyncio objects.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", UPSTREAM_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    try:
        server.add_insecure_port(listen)
    except RuntimeError as e:  # grpc's way to say the address is taken or invalid
        raise SystemExit(f"upstream.py: cannot listen on {listen}: {e}") from None
    await server.start()
    log.info("serving ppp.v1.Upstream and grpc.health.v1.Health on %s as %s", listen, name)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    # NOT_SERVING first, while everything else keeps working: nodes see it on their next health
    # check (every 2 s by default) and stop sending events, and the events already on their way
    # are still answered. After the grace period the open streams end their side, and the
    # server stops; its own one-second grace only backs that up (a stream whose node stopped
    # reading is cancelled).
    log.info("stopping: health NOT_SERVING, %.1f s grace for open streams", grace)
    await health_servicer.enter_graceful_shutdown()
    if upstream.open_streams:
        await asyncio.sleep(grace)
    upstream.stopping.set()
    await server.stop(1)
    log.info("stopped")


def main() -> None:
    """Reads the flags, sets up logging to stderr and serves until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="The PersistentParadoxPlex echo upstream, in Python.")
    parser.add_argument(
        "--listen",
        default=os.environ.get("PPP_PY_LISTEN", "0.0.0.0:50052"),
        help="address to serve gRPC on, host:port (env PPP_PY_LISTEN; default 0.0.0.0:50052)",
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("PPP_PY_NAME", "python"),
        help='what `/whoami` answers end with, in parentheses (env PPP_PY_NAME; default "python")',
    )
    parser.add_argument("--greet", action="store_true", help="greet every socket when it opens")
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds open streams keep working after SIGTERM (default 5)",
    )
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG too (redelivered events)")
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="answer ConnectBatch UNIMPLEMENTED, as an upstream written before it (the node uses Connect)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose:
        log.setLevel(logging.DEBUG)
    asyncio.run(serve(args.listen, args.greet, args.grace, args.name, not args.no_batch))


if __name__ == "__main__":
    main()
