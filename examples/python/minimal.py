"""The smallest complete PersistentParadoxPlex upstream: it echoes every message to its socket.

Run `python minimal.py` (gRPC on 0.0.0.0:50052), then a node: `ppp --upstream http://127.0.0.1:50052`.
"""

import asyncio
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ppp.v1 import upstream_pb2 as pb
from ppp.v1 import upstream_pb2_grpc as pb_grpc


class Echo(pb_grpc.UpstreamServicer):
    async def Connect(self, events, context):  # noqa: N802 (the name is the RPC's)
        async for event in events:  # hello, opened, data, closed, result
            if event.HasField("data"):
                yield pb.UpstreamCommand(send=pb.Send(socket_id=event.data.socket_id, payload=event.data.payload))


async def main():
    server = grpc.aio.server()  # the defaults: nothing to configure
    pb_grpc.add_UpstreamServicer_to_server(Echo(), server)
    health_servicer = health.aio.HealthServicer()  # nodes send events only while it says SERVING
    await health_servicer.set("ppp.v1.Upstream", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(sys.argv[1] if len(sys.argv) > 1 else "0.0.0.0:50052")
    await server.start()
    await server.wait_for_termination()


asyncio.run(main())
