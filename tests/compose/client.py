#!/usr/bin/env python3
"""Downstream clients for the compose test (stdlib only; runs on the host or in a container).

    client.py hold HOST:PORT N      open N sockets, print `SOCKET <id>` for each and `READY`, then
                                    ping every socket every second; print `LOST <id> <why>` for a
                                    socket that closes or stops echoing. Runs until killed.
    client.py cross A:PORT B:PORT   one socket on each address: echo, a `/to` from A to B with its
                                    receipt, and a `/broadcast` that both receive. Exit 0 or 1.
"""

import os
import re
import socket
import sys
import time

# How long a read may wait (PPP_CLIENT_DEADLINE seconds, default 10): short to retry quickly.
DEADLINE = float(os.environ.get("PPP_CLIENT_DEADLINE", "10"))
WHOAMI = re.compile(r"you are ([0-9a-f-]{36})")


class Line:
    """A line-framed socket."""

    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def read_until(self, pattern: str) -> str:
        """Reads lines until one contains `pattern`; raises when the socket closes or stalls."""
        end = time.monotonic() + DEADLINE
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if pattern in text:
                    return text
            if time.monotonic() > end:
                raise TimeoutError(f"no line with {pattern!r}")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the node")
            self.buf += chunk

    def whoami(self) -> str:
        self.send("/whoami")
        return WHOAMI.search(self.read_until("you are")).group(1)


def hold(address: str, count: int) -> None:
    sockets = {}
    for _ in range(count):
        s = Line(address)
        sockets[s.whoami()] = s
    for sid in sockets:
        print("SOCKET", sid, flush=True)
    print("READY", flush=True)
    n = 0
    while sockets:
        n += 1
        for sid, s in list(sockets.items()):
            try:
                s.send(f"ping-{n}")
                s.read_until(f"ping-{n}")
            except Exception as e:  # noqa: BLE001 - any failure is a lost socket
                print("LOST", sid, repr(e), flush=True)
                del sockets[sid]
        time.sleep(1)


def cross(a_address: str, b_address: str) -> None:
    a, b = Line(a_address), Line(b_address)
    a.send("echo-check")
    a.read_until("echo-check")
    # Messages are spread round-robin over the three upstreams: every language answers.
    answers = set()
    for _ in range(30):
        a.send("/whoami")
        answer = a.read_until("you are")
        answers.add("python" if "(python)" in answer else "go" if "(go)" in answer else "rust")
        if len(answers) == 3:
            break
    if len(answers) != 3:
        raise SystemExit(f"only the {answers} upstreams answered")
    b_id = b.whoami()
    a.send(f"/to {b_id} hello-from-a")
    b.read_until("hello-from-a")
    a.read_until("STATUS_OK")
    a.send("/broadcast hey-everyone")
    a.read_until("hey-everyone")
    b.read_until("hey-everyone")
    print("echo from the Rust, the Python and the Go upstream, cross-node send and broadcast: ok", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "hold":
        hold(sys.argv[2], int(sys.argv[3]))
    elif mode == "cross":
        cross(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"unknown mode {mode}")
