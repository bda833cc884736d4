#!/usr/bin/python3
"""A loopback TCP proxy that delays every chunk by a fixed time per direction.

    delay_proxy.py LISTEN_PORT TARGET_PORT [DELAY_MS] [--port-file FILE]

Listens on 127.0.0.1:LISTEN_PORT (0 = pick one; the port is written to
--port-file and printed as "port=N") and forwards every connection to
127.0.0.1:TARGET_PORT. Each chunk read from either side is written to the
other side DELAY_MS (default 25) after it was read, in order: a link with a
one-way delay of DELAY_MS, so a round trip through the proxy costs
2 x DELAY_MS (50 ms RTT by default). The proxy only moves bytes (the TLS
session is end to end between client and Dovecot, so certificate checks work
as without it).

Bandwidth: not limited on purpose (the "link" is as fast as the proxy can
copy); in flight per direction it holds at most WINDOW bytes (32 MiB),
like a receive window far larger than the bandwidth-delay product, so the
delay, not a window, is what a client sees. Both sockets have TCP_NODELAY
and 4 MiB buffers.

The kernel here has no netem qdisc, which is why this is a user-space proxy.
"""
import asyncio
import os
import socket
import sys
import time
from collections import deque

WINDOW = 32 << 20
CHUNK = 256 << 10
BUF = 4 << 20


def tune(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, BUF)
        except OSError:
            pass


class Pipe:
    """One direction: read chunks, stamp them, write each at stamp + delay."""

    def __init__(self, loop, src, dst, delay, not_before=0.0):
        self.loop, self.src, self.dst, self.delay = loop, src, dst, delay
        self.not_before = not_before
        self.queue = deque()
        self.inflight = 0
        self.more = asyncio.Event()      # a chunk was queued (or EOF)
        self.room = asyncio.Event()      # inflight dropped below WINDOW
        self.room.set()

    async def reader(self):
        try:
            while True:
                await self.room.wait()
                data = await self.loop.sock_recv(self.src, CHUNK)
                sent = max(time.monotonic(), self.not_before)
                self.queue.append((sent + self.delay, data))
                self.more.set()
                if not data:
                    return
                self.inflight += len(data)
                if self.inflight >= WINDOW:
                    self.room.clear()
        except OSError:
            self.queue.append((time.monotonic() + self.delay, b""))
            self.more.set()

    async def writer(self):
        try:
            while True:
                while not self.queue:
                    self.more.clear()
                    await self.more.wait()
                due, data = self.queue.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    try:
                        self.dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                await self.loop.sock_sendall(self.dst, data)
                self.inflight -= len(data)
                if self.inflight < WINDOW:
                    self.room.set()
        except OSError:
            pass


async def handle(loop, client, target_port, delay):
    accepted = time.monotonic()
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tune(upstream)
    upstream.setblocking(False)
    try:
        await loop.sock_connect(upstream, ("127.0.0.1", target_port))
    except OSError:
        client.close()
        upstream.close()
        return
    # On a real link the TCP handshake costs one round trip before the
    # client can send anything (SYN, SYN-ACK); here connect() returned at
    # once, so the client's bytes count as sent only 2 x delay after accept.
    up = Pipe(loop, client, upstream, delay, not_before=accepted + 2 * delay)
    down = Pipe(loop, upstream, client, delay)
    tasks = [loop.create_task(t) for t in (up.reader(), up.writer(), down.reader(), down.writer())]
    await asyncio.gather(*tasks, return_exceptions=True)
    client.close()
    upstream.close()


async def main():
    args = [a for a in sys.argv[1:]]
    port_file = None
    if "--port-file" in args:
        k = args.index("--port-file")
        port_file = args[k + 1]
        del args[k:k + 2]
    if len(args) not in (2, 3):
        sys.exit(__doc__)
    listen_port, target_port = int(args[0]), int(args[1])
    delay = (float(args[2]) if len(args) == 3 else 25.0) / 1000.0
    loop = asyncio.get_running_loop()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tune(lsock)
    lsock.bind(("127.0.0.1", listen_port))
    lsock.listen(64)
    lsock.setblocking(False)
    port = lsock.getsockname()[1]
    if port_file:
        with open(port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.rename(port_file + ".tmp", port_file)
    print(f"port={port}", flush=True)
    while True:
        client, _ = await loop.sock_accept(lsock)
        tune(client)
        client.setblocking(False)
        loop.create_task(handle(loop, client, target_port, delay))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
