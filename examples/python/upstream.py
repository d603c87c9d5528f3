#!/usr/bin/env python3
"""The example echo upstream of PersistentParadoxPlex, in Python (grpcio, asyncio API).

It behaves like the Rust example (`src/echo.rs`), so either can stand in for the other: it
echoes every message back to its socket as it is, and understands a few commands typed by the
client, to show what an upstream can do:

    typed                 what the upstream does
    /help                 replies with this list
    /whoami               replies with the socket id, its seq and its labels, tagged "(python)"
    /label k=v ...        `set_labels` (merge) on the socket; an empty value removes the label
    /broadcast text       `broadcast` to every socket of the cluster
    /to <socket> text     `send` to another socket, and reports the receipt
    /close                `close` the socket
    anything else         `send` it back

It is stateless about sockets: who is talking comes with every `data` event (`labels`). The only
state is per stream: which `command_id` belongs to which socket, to report receipts.

It also serves the standard gRPC health service (SERVING for `ppp.v1.Upstream` and for ""), which
the node polls for readiness. On SIGTERM (or Ctrl-C) it answers NOT_SERVING, so that nodes stop
sending it events, and stops after a grace period in which open streams keep working.

    python upstream.py --listen 127.0.0.1:50052      # or PPP_PY_LISTEN=...
    cargo run -- --upstream http://127.0.0.1:50052  # a node that uses it

docs/protocol.md describes the protocol; proto/ppp/v1/upstream.proto is its definition.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

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

# A node sends events as large as its `--max-frame` allows (1 MiB unless raised); gRPC's default
# limit of 4 MiB would break the whole stream on one larger event. 16 MiB is the node's own limit
# for commands.
MAX_MESSAGE_BYTES = 16 << 20

SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Nodes send an HTTP/2 keepalive ping every 10 s, also on a quiet stream or connection. By
    # default a gRPC server accepts pings only every 5 minutes while it sends no data, and
    # answers repeated ones with GOAWAY "too_many_pings": with a long `--health-interval` a quiet
    # stream breaks within a minute. Accept one every 5 s, also on a connection without calls.
    # (The key is GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS's; its name differs.)
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # gRPC sets SO_REUSEPORT by default: a second upstream started on a taken port would
    # silently share it instead of failing.
    ("grpc.so_reuseport", 0),
]

log = logging.getLogger("ppp.upstream")


def send(socket_id: str, text: str) -> pb.UpstreamCommand:
    """A `send` of `text` to one socket, without receipt."""
    return pb.UpstreamCommand(send=pb.Send(socket_id=socket_id, payload=text.encode()))


class Session:
    """One node's `Connect` stream: turns the node's events into commands.

    Its only state is `pending`, the sockets waiting to be told the receipt of a command they
    asked for. Receipts come back on the stream that sent the command, so a per-stream map is
    enough, and the ids need only be unique within the stream.
    """

    def __init__(self, greet: bool) -> None:
        self.greet = greet
        self.pending: dict[str, str] = {}  # command_id -> socket to tell about its receipt
        self.next_id = 0
        self.node_id = "?"  # set by `hello`, for the logs

    def handle(self, event: pb.NodeEvent) -> Iterator[pb.UpstreamCommand]:
        """The commands answering one event (none, one or several)."""
        kind = event.WhichOneof("event")
        if kind == "hello":
            self.node_id = event.hello.node_id
            log.info(
                "hello from node %s (cluster %s, version %s)",
                event.hello.node_id,
                event.hello.cluster,
                event.hello.version,
            )
        elif kind == "opened":
            socket = event.opened.socket
            log.info("opened %s from %s on node %s", socket.id, socket.remote_addr, socket.node_id)
            if self.greet:
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
            # "(python)" goes last: clients parse the id as what stands between "you are " and
            # the first comma, as they do with the Rust upstream's answer.
            yield send(me, f"you are {me}, seq {d.seq}, labels [{shown}] (python)")
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


class EchoUpstream(pb_grpc.UpstreamServicer):
    """The `ppp.v1.Upstream` service: one `Session` per `Connect` stream."""

    def __init__(self, greet: bool) -> None:
        self.greet = greet
        # Set when the grace period after SIGTERM is over: the streams still open end their side
        # then, cleanly. Left to `server.stop`, they would be cancelled instead, and grpcio logs
        # every cancelled stream as an error with a traceback.
        self.stopping = asyncio.Event()
        self.open_streams = 0

    async def Connect(  # noqa: N802 (the name is the RPC's)
        self, request_iterator: AsyncIterator[pb.NodeEvent], context: grpc.aio.ServicerContext
    ) -> None:
        """Answers one node's events with commands, until either side ends the stream."""
        # `request_iterator` stays unused: events are read with `context.read()`, which
        # `events` can race against `stopping` (grpcio allows one of the two styles per call).
        #
        # A node takes the stream as open when the response headers arrive, and gives up after
        # 5 s without them. grpcio sends them with the first response message, which may be
        # long in coming (a node with no sockets sends only `hello`), so send them now.
        await context.send_initial_metadata(())
        session = Session(self.greet)
        self.open_streams += 1
        try:
            # `aclosing`: the pending read is given up at once, whichever way this ends.
            async with contextlib.aclosing(self.events(context)) as events:
                async for event in events:
                    for command in session.handle(event):
                        # Waits for HTTP/2 flow control, so a node that does not read our
                        # commands stops us reading its events: backpressure, not an unbounded
                        # buffer.
                        await context.write(command)
        finally:
            self.open_streams -= 1
            log.info("stream from node %s (%s) ended", session.node_id, context.peer())

    async def events(self, context: grpc.aio.ServicerContext) -> AsyncGenerator[pb.NodeEvent, None]:
        """The node's events, until it ends its side (it drains) or `stopping` is set.

        `Connect` then returns, which ends the RPC with status OK: our side ends too, as the
        protocol asks.
        """
        stopping = asyncio.ensure_future(self.stopping.wait())
        read = None
        try:
            while True:
                read = asyncio.ensure_future(context.read())
                await asyncio.wait((read, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # stopping
                    return
                event = read.result()
                if event is grpc.aio.EOF:  # the node ended its side
                    return
                yield event
        finally:
            # Leaves nothing waiting behind (cancelling a finished task does nothing).
            stopping.cancel()
            if read is not None:
                read.cancel()


async def serve(listen: str, greet: bool, grace: float) -> None:
    """Serves the upstream and the health service on `listen` until SIGTERM or SIGINT."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    upstream = EchoUpstream(greet)
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
    log.info("serving ppp.v1.Upstream and grpc.health.v1.Health on %s", listen)

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
    parser.add_argument("--greet", action="store_true", help="greet every socket when it opens")
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds open streams keep working after SIGTERM (default 5)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.listen, args.greet, args.grace))


if __name__ == "__main__":
    main()
