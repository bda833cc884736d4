#!/usr/bin/python3
"""The 'limit' client: how fast can the server alone stream the mailbox?

    stream_limit.py PORT CA USER PASSWORD [--rtts]

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

With --rtts it prints that count of unavoidable round trips (7) and exits.
"""
import socket
import ssl
import sys
import base64

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


def main():
    if "--rtts" in sys.argv:
        print(RTTS)
        return
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    port, ca, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    ctx = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    buf = bytearray()
    line, buf = readline(sock, buf)            # greeting
    assert line.startswith(b"+OK"), line
    cred = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
    sock.sendall(b"AUTH PLAIN " + cred + b"\r\n")
    line, buf = readline(sock, buf)
    assert line.startswith(b"+OK"), line
    sock.sendall(b"STAT\r\n")
    line, buf = readline(sock, buf)
    assert line.startswith(b"+OK"), line
    count = int(line.split()[1])
    sock.sendall(b"".join(b"RETR %d\r\n" % i for i in range(1, count + 1)))
    # Read into one reused buffer (no allocation per read) and count the
    # terminators; one may straddle two reads, so the last 4 bytes of the
    # previous read are kept in front of the buffer.
    seen = bytes(buf).count(TERM)
    total = len(buf)
    size = 1 << 20
    mem = bytearray(4 + size)
    view = memoryview(mem)
    carry = bytes(buf)[-4:]
    while seen < count:
        k = len(carry)
        view[:k] = carry
        n = sock.recv_into(view[k:], size)
        if not n:
            raise SystemExit("stream_limit: connection closed early")
        total += n
        seen += mem.count(TERM, 0, k + n)
        carry = bytes(view[max(0, k + n - 4):k + n])
    sock.sendall(b"QUIT\r\n")
    rest = b""
    while b"\r\n" not in rest:
        data = sock.recv(4096)
        if not data:
            break
        rest += data
    sock.close()
    print(f"messages={seen} bytes={total}", file=sys.stderr)


if __name__ == "__main__":
    main()
