#!/usr/bin/python3
"""A loopback TCP proxy that delays every chunk by a fixed time per direction.

    delay_proxy.py LISTEN_PORT TARGET_PORT [DELAY_MS] [--port-file FILE]
                   [--tls-cert CERT --tls-key KEY [--strip-pipelining]]
                   [--trace]

Listens on 127.0.0.1:LISTEN_PORT (0 = pick one; the port is written to
--port-file and printed as "port=N") and forwards every connection to
127.0.0.1:TARGET_PORT. Each chunk read from either side is written to the
other side DELAY_MS (default 25) after it was read, in order: a link with a
one-way delay of DELAY_MS, so a round trip through the proxy costs
2 x DELAY_MS (50 ms RTT by default).

Pass-through mode (the default): the proxy only moves bytes; the TLS session
is end to end between client and Dovecot (TARGET_PORT is its POP3S port), so
certificate checks work as without it.

POP3S-terminating mode (--tls-cert CERT --tls-key KEY): TARGET_PORT is a
*plain* POP3 port. The proxy plays the POP3S server itself: behind the
delayed link it ends TLS with CERT/KEY (the bench Dovecot's own certificate,
so clients verify it against the same CA as usual) and talks plain POP3 to
TARGET_PORT. The delay is applied to the encrypted bytes, exactly as in
pass-through mode, so the TCP and TLS handshakes cost their round trips as
before. Because the proxy now sees the protocol, it follows it: it matches
every server reply to the client command it answers (in order, as POP3
does; multi-line replies of CAPA, RETR, TOP, and of LIST, UIDL, AUTH and
LANG without argument are followed to their terminating "."; AUTH
continuations are followed), and
  * removes STLS from every CAPA reply (a POP3S server does not offer it;
    Dovecot's plain port does);
  * with --strip-pipelining also removes PIPELINING from every CAPA reply:
    a server without PIPELINING (RFC 2449), which Dovecot cannot be told to
    be. The server behind still accepts pipelined commands, so a client that
    pipelines anyway keeps working; it is only counted (see below).
Everything else passes unchanged, in order. Dovecot treats a connection from
127.0.0.1 to 127.0.0.1 as secured, so USER/PASS and AUTH work on its plain
port without STLS.

In POP3S-terminating mode each connection ends with one line on stderr:
  conn N: C commands in F flights, P sent with a reply outstanding (max
  outstanding M), B before the greeting; CAPA replies R, stripped ...;
  flights: CAPA | AUTH | + | CAPA | UIDL+LIST | RETR*500 | QUIT
A "flight" is what the client sent after it had every reply it asked for:
one application round trip (commands sent while a reply is outstanding are
pipelined and join the flight: "UIDL+LIST", "RETR*500" = 500 RETRs in one
flight). Identical consecutive flights are written once with " xN", so a
client fetching 500 messages one at a time shows "RETR x500" (and one that
asks LIST n before each RETR, "(LIST | RETR) x500"). Arguments
are never logged, except message numbers (the others hold user names and
passwords). With --trace every command and the first word of every reply
line are also logged, with the time since the TLS handshake ended and, for
commands, the number of replies outstanding.

Bandwidth: not limited on purpose (the "link" is as fast as the proxy can
copy); in flight per direction it holds at most WINDOW bytes (32 MiB),
like a receive window far larger than the bandwidth-delay product, so the
delay, not a window, is what a client sees. Both sockets have TCP_NODELAY
and 4 MiB buffers.

The kernel here has no netem qdisc, which is why this is a user-space proxy.
"""
import asyncio
import itertools
import os
import socket
import ssl
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


def log(line):
    print(line, file=sys.stderr, flush=True)


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


# --- POP3S termination ---------------------------------------------------------

# Replies that are multi-line when they start with +OK (AUTH and LANG only
# without an argument: the list of mechanisms, of languages).
MULTI = {b"CAPA", b"RETR", b"TOP"}
MULTI_WITHOUT_ARG = {b"LIST", b"UIDL", b"AUTH", b"LANG"}
# Commands whose arguments may be logged (the others carry credentials).
SHOW_ARG = {b"RETR", b"TOP", b"LIST", b"UIDL", b"DELE"}


class Pop3Follower:
    """Follows one POP3 conversation in both directions and edits CAPA replies.

    client_data() sees the client's bytes (which pass unchanged): every line
    is a command (or an AUTH continuation answer) that the server will answer
    once, in order. server_data() sees the server's bytes and returns what to
    forward: the same bytes, minus the CAPA lines in `drop`.
    """

    def __init__(self, drop, trace_prefix=None):
        self.drop = drop                  # upper-case CAPA tags to remove
        self.trace_prefix = trace_prefix
        self.start = time.monotonic()
        self.pending = deque()            # (keyword, has_arg) per unanswered line
        self.cbuf = b""
        self.sbuf = bytearray()
        self.greeted = False
        self.state = "status"             # status | body | capa
        self.bol = True                   # body: at the start of a line
        self.sasl = False                 # an AUTH exchange is under way
        # statistics
        self.commands = 0
        self.pipelined = 0
        self.max_outstanding = 0
        self.before_greeting = 0
        self.capa_replies = 0
        self.stripped = {}
        self.flights = []                 # list of lists of keywords

    # -- client to server --
    def outstanding(self):
        busy = 1 if self.state in ("body", "capa") else 0
        return len(self.pending) + busy + (0 if self.greeted else 1)

    def client_data(self, data):
        self.cbuf += data
        while True:
            k = self.cbuf.find(b"\n")
            if k < 0:
                break
            line, self.cbuf = self.cbuf[:k + 1], self.cbuf[k + 1:]
            words = line.strip().split(None, 1)
            kw = words[0].upper() if words else b""
            has_arg = len(words) > 1
            waiting = self.outstanding()
            if self.sasl and not self.pending and self.state == "status":
                shown = "+"           # an answer to an AUTH challenge
            else:
                shown = kw.decode("ascii", "replace")
                if kw in SHOW_ARG and has_arg:
                    shown += " " + words[1].decode("ascii", "replace")
            self.commands += 1
            if not self.greeted:
                self.before_greeting += 1
            if waiting:
                self.pipelined += 1
                self.max_outstanding = max(self.max_outstanding, waiting)
                if self.flights:
                    self.flights[-1].append(shown.split()[0])
                else:
                    self.flights.append([shown.split()[0]])
            else:
                self.flights.append([shown.split()[0]])
            if self.trace_prefix is not None:
                log(f"{self.trace_prefix} +{(time.monotonic() - self.start) * 1000:7.1f} ms "
                    f"C: {shown} (outstanding {waiting})")
            self.pending.append((kw, has_arg))

    # -- server to client --
    def server_data(self, data):
        out = bytearray()
        buf = self.sbuf
        buf += data
        while buf:
            if self.state == "status":
                k = buf.find(b"\n")
                if k < 0:
                    break
                line = bytes(buf[:k + 1])
                del buf[:k + 1]
                out += line
                self.status_line(line)
            elif self.state == "capa":
                k = buf.find(b"\n")
                if k < 0:
                    break
                line = bytes(buf[:k + 1])
                del buf[:k + 1]
                tag = line.strip().split(None, 1)
                tag = tag[0].upper() if tag else b""
                if line.rstrip(b"\r\n") == b".":
                    self.state = "status"
                elif tag in self.drop:
                    name = tag.decode("ascii", "replace")
                    self.stripped[name] = self.stripped.get(name, 0) + 1
                    continue
                out += line
            else:  # body: pass through up to the terminating "."
                end = None
                if self.bol and buf[:3] == b".\r\n":
                    end = 3
                else:
                    k = buf.find(b"\n.\r\n")
                    if k >= 0:
                        end = k + 4
                if end is not None:
                    out += buf[:end]
                    del buf[:end]
                    self.state = "status"
                    continue
                n = len(buf) - 3        # the last 3 bytes may start "\n.\r\n"
                if n <= 0:
                    break
                out += buf[:n]
                self.bol = buf[n - 1] == 0x0A
                del buf[:n]
                break
        return bytes(out)

    def status_line(self, line):
        if self.trace_prefix is not None:
            word = line.split(None, 1)[0] if line.strip() else b""
            log(f"{self.trace_prefix} +{(time.monotonic() - self.start) * 1000:7.1f} ms "
                f"S: {word.decode('ascii', 'replace')}")
        if not self.greeted:
            self.greeted = True
            return
        if not self.pending:
            return                        # unsolicited (e.g. a timeout notice)
        kw, has_arg = self.pending.popleft()
        ok = line.startswith(b"+OK")
        challenge = not ok and (line.startswith(b"+ ") or line.rstrip(b"\r\n") == b"+")
        if self.sasl or (kw == b"AUTH" and has_arg):
            # The next client line answers the challenge; +OK or -ERR ends it.
            self.sasl = challenge
            return
        if ok and (kw in MULTI or (kw in MULTI_WITHOUT_ARG and not has_arg)):
            self.state = "capa" if kw == b"CAPA" else "body"
            if kw == b"CAPA":
                self.capa_replies += 1
            self.bol = True

    def summary(self):
        def shape_of(flight):
            parts = []
            for kw, group in itertools.groupby(flight):
                n = len(list(group))
                parts.append(kw if n == 1 else f"{kw}*{n}")
            return "+".join(parts)

        shapes = compress([shape_of(f) for f in self.flights])
        stripped = ", ".join(f"{k} x{v}" for k, v in sorted(self.stripped.items())) or "nothing"
        return (f"{self.commands} commands in {len(self.flights)} flights, "
                f"{self.pipelined} sent with a reply outstanding (max outstanding "
                f"{self.max_outstanding}), {self.before_greeting} before the greeting; "
                f"CAPA replies {self.capa_replies}, stripped {stripped}; "
                f"flights: {' | '.join(shapes)}")


def compress(items, longest=3):
    """Write repeated runs of 1-3 items once: "RETR x500", "(LIST | RETR) x500"."""
    out = []
    i = 0
    while i < len(items):
        best_p, best_n = 1, 1
        for p in range(1, longest + 1):
            n = 1
            while items[i + n * p:i + (n + 1) * p] == items[i:i + p] and i + (n + 1) * p <= len(items):
                n += 1
            if n > 1 and n * p > best_n * best_p:
                best_p, best_n = p, n
        unit = " | ".join(items[i:i + best_p])
        if best_n == 1:
            out.append(unit)
        else:
            out.append(f"({unit}) x{best_n}" if best_p > 1 else f"{unit} x{best_n}")
        i += best_p * best_n
    return out


conn_ids = itertools.count(1)


async def terminate(reader, writer, target_port, drop, trace):
    """One decrypted client connection: relay to the plain POP3 port."""
    n = next(conn_ids)
    follower = Pop3Follower(drop, f"conn {n}:" if trace else None)
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError as e:
        log(f"conn {n}: cannot reach 127.0.0.1:{target_port}: {e}")
        writer.close()
        return
    tune(up_writer.get_extra_info("socket"))

    async def client_to_server():
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                follower.client_data(data)
                up_writer.write(data)
                await up_writer.drain()
        except (OSError, ssl.SSLError):
            pass
        try:
            up_writer.write_eof()
        except (OSError, RuntimeError):
            pass

    async def server_to_client():
        try:
            while True:
                data = await up_reader.read(CHUNK)
                if not data:
                    rest = bytes(follower.sbuf)   # an unfinished line: as it is
                    if rest:
                        writer.write(rest)
                    break
                out = follower.server_data(data)
                if out:
                    writer.write(out)
                    await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        writer.close()                # TLS has no half-close here

    await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)
    up_writer.close()
    log(f"conn {n}: {follower.summary()}")


async def main():
    args = [a for a in sys.argv[1:]]

    def option(name):
        if name in args:
            k = args.index(name)
            value = args[k + 1]
            del args[k:k + 2]
            return value
        return None

    def flag(name):
        if name in args:
            args.remove(name)
            return True
        return False

    port_file = option("--port-file")
    cert = option("--tls-cert")
    key = option("--tls-key")
    strip = flag("--strip-pipelining")
    trace = flag("--trace")
    if len(args) not in (2, 3) or bool(cert) != bool(key) or (strip and not cert):
        sys.exit(__doc__)
    listen_port, target_port = int(args[0]), int(args[1])
    delay = (float(args[2]) if len(args) == 3 else 25.0) / 1000.0
    loop = asyncio.get_running_loop()

    forward_port = target_port
    if cert:
        # The POP3S end: a TLS server on a private loopback port, behind the
        # delayed link, relaying plain POP3 to TARGET_PORT.
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        drop = {b"STLS"} | ({b"PIPELINING"} if strip else set())
        inner = await asyncio.start_server(
            lambda r, w: terminate(r, w, target_port, drop, trace),
            "127.0.0.1", 0, ssl=ctx, limit=CHUNK)
        for s in inner.sockets:
            tune(s)
        forward_port = inner.sockets[0].getsockname()[1]

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
        loop.create_task(handle(loop, client, forward_port, delay))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
