#!/usr/bin/python3
"""The 'limit' client: how fast can the server alone stream the mailbox?

    stream_limit.py PORT CA USER PASSWORD [--lockstep] [--scram] [--rtts]

Connects to 127.0.0.1:PORT with implicit TLS (verifying the certificate
against CA), logs in with one AUTH PLAIN (initial response), asks STAT, then
sends every "RETR n" at once (pipelined, without waiting) and reads and
discards the answers, counting the CRLF.CRLF terminators; then QUIT. No
parsing, no unstuffing, no storage: a lower bound for any client that
fetches everything, including the round trips it cannot avoid:
TCP connect 1, TLS 1.3 handshake 1, greeting 1 (Dovecot greets once the
handshake is complete on its side, i.e. after the client's Finished), AUTH 1,
STAT 1, RETR... 1, QUIT 1. Prints one line to stderr:
"messages=N bytes=B" (B = octets read in the RETR answers).

With --lockstep it sends one RETR at a time, each after the previous answer
has ended: the least a client can do on a server without PIPELINING
(RFC 2449 allows no pipelining there), 6 + N round trips for N messages.

With --scram it logs in with AUTH SCRAM-SHA-256 (initial response, then
the client's proof and the empty answer to the server's signature: three
round trips, two more than AUTH PLAIN) as popsync does by default: the
least a client that logs in that way can do.

With --rtts it prints the count of unavoidable round trips (7, 9 with
--scram; with --lockstep "6+N", "8+N") and exits.
"""
import base64
import hashlib
import hmac
import os
import socket
import ssl
import sys

RTTS = 7
TERM = b"\r\n.\r\n"


def readline(sock, buf):
    while b"\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("stream_limit: connection closed")
        buf += data
    k = buf.index(b"\r\n") + 2
    return bytes(buf[:k]), buf[k:]


class Counter:
    """Reads RETR answers into one reused buffer, counting terminators."""

    def __init__(self, sock, buf):
        # A terminator may straddle two reads, so the last 4 bytes of the
        # previous read are kept in front of the buffer.
        self.sock = sock
        self.seen = bytes(buf).count(TERM)
        self.total = len(buf)
        self.size = 1 << 20
        self.mem = bytearray(4 + self.size)
        self.view = memoryview(self.mem)
        self.carry = bytes(buf)[-4:]

    def until(self, count):
        while self.seen < count:
            k = len(self.carry)
            self.view[:k] = self.carry
            n = self.sock.recv_into(self.view[k:], self.size)
            if not n:
                raise SystemExit("stream_limit: connection closed early")
            self.total += n
            self.seen += self.mem.count(TERM, 0, k + n)
            self.carry = bytes(self.view[max(0, k + n - 4):k + n])


def b64(text):
    return base64.b64encode(text.encode())


def login_scram(sock, buf, user, password):
    """AUTH SCRAM-SHA-256 (RFC 5802, RFC 5034): three round trips."""
    bare = "n=%s,r=%s" % (user, base64.b64encode(os.urandom(18)).decode())
    sock.sendall(b"AUTH SCRAM-SHA-256 " + b64("n,," + bare) + b"\r\n")
    line, buf = readline(sock, buf)
    assert line.startswith(b"+ "), line
    server_first = base64.b64decode(line[2:].strip()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(),
                                 base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    without_proof = "c=biws,r=" + attrs["r"]
    message = ",".join([bare, server_first, without_proof]).encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    sock.sendall(b64(without_proof + ",p=" + base64.b64encode(proof).decode()) + b"\r\n")
    line, buf = readline(sock, buf)
    if line.startswith(b"+ "):
        # The server's signature as a challenge: an empty answer ends it.
        sock.sendall(b"\r\n")
        line, buf = readline(sock, buf)
    assert line.startswith(b"+OK"), line
    return buf


def main():
    args = sys.argv[1:]
    lockstep = "--lockstep" in args
    scram = "--scram" in args
    args = [a for a in args if a not in ("--lockstep", "--scram")]
    if "--rtts" in args:
        extra = 2 if scram else 0
        print(f"{6 + extra}+N" if lockstep else RTTS + extra)
        return
    if len(args) != 4:
        sys.exit(__doc__)
    port, ca, user, password = int(args[0]), args[1], args[2], args[3]
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    buf = bytearray()
    line, buf = readline(sock, buf)            # greeting
    assert line.startswith(b"+OK"), line
    if scram:
        buf = login_scram(sock, buf, user, password)
    else:
        cred = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        sock.sendall(b"AUTH PLAIN " + cred + b"\r\n")
        line, buf = readline(sock, buf)
        assert line.startswith(b"+OK"), line
    sock.sendall(b"STAT\r\n")
    line, buf = readline(sock, buf)
    assert line.startswith(b"+OK"), line
    count = int(line.split()[1])
    reader = Counter(sock, buf)
    if lockstep:
        for i in range(1, count + 1):
            sock.sendall(b"RETR %d\r\n" % i)
            reader.until(i)
    else:
        sock.sendall(b"".join(b"RETR %d\r\n" % i for i in range(1, count + 1)))
        reader.until(count)
    sock.sendall(b"QUIT\r\n")
    rest = b""
    while b"\r\n" not in rest:
        data = sock.recv(4096)
        if not data:
            break
        rest += data
    sock.close()
    print(f"messages={reader.seen} bytes={reader.total}", file=sys.stderr)


if __name__ == "__main__":
    main()
