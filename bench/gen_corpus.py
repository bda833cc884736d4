#!/usr/bin/python3
"""Fill a server-side Maildir (Dovecot's new/) with a benchmark corpus.

    gen_corpus.py MAILDIR COUNT SIZE UID GID [SEED]

COUNT messages of about SIZE bytes each (LF line ends, as Dovecot stores
them), written to MAILDIR/tmp, chowned to UID:GID and renamed into
MAILDIR/new in order, as tests/common/mod.rs does. Sizes vary by +-20 %
around SIZE for corpora of small messages; a message of 64 KiB or more is a
short text part plus a base64 "attachment" of random bytes (76-column lines).
Text bodies include lines that start with "." so clients must dot-unstuff.

Prints "COUNT BYTES" (the total size on disk, LF line ends).
"""
import base64
import os
import random
import sys
import time

WORDS = (
    "the quick brown fox jumps over lazy dog mail server client message "
    "retrieve delete keep maildir popsync benchmark latency throughput "
    "protocol response octets line header body attachment lorem ipsum dolor "
    "sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt"
).split()


def text_lines(rng, nbytes):
    out = []
    total = 0
    k = 0
    while total < nbytes:
        n = rng.randint(6, 13)
        line = " ".join(rng.choice(WORDS) for _ in range(n))
        k += 1
        if k % 37 == 0:
            line = "." + line          # needs dot-stuffing on the wire
        elif k % 101 == 0:
            line = "."                 # a line that is only a dot
        out.append(line)
        total += len(line) + 1
    return "\n".join(out) + "\n"


def headers(i, size_hint, multipart):
    minute = i % 60
    h = (
        f"Return-Path: <sender{i}@example.org>\n"
        f"Received: from mx.example.org (mx.example.org [192.0.2.{i % 250 + 1}])\n"
        f"\tby pop.example.net with ESMTPS id bench{i}; Mon, 2 Jun 2025 10:{minute:02}:00 +0000\n"
        f"From: Sender Number {i} <sender{i}@example.org>\n"
        "To: Alice <alice@example.net>\n"
        f"Subject: Benchmark message {i} (~{size_hint} bytes)\n"
        f"Date: Mon, 2 Jun 2025 10:{minute:02}:00 +0000\n"
        f"Message-ID: <{i}.{size_hint}.popsync-bench@example.org>\n"
        "MIME-Version: 1.0\n"
    )
    if multipart:
        h += 'Content-Type: multipart/mixed; boundary="=_bench_boundary"\n\n'
    else:
        h += "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    return h


def b64_block(rng, nbytes):
    """About nbytes of base64 text in 76-column lines."""
    raw = rng.randbytes(max(3, nbytes * 3 // 4 // 57 * 57))
    enc = base64.b64encode(raw)
    return b"\n".join(enc[k:k + 76] for k in range(0, len(enc), 76)) + b"\n"


def message(rng, i, size):
    if size < 65536:
        target = int(size * rng.uniform(0.8, 1.2))
        h = headers(i, size, False)
        body = text_lines(rng, max(0, target - len(h)))
        return (h + body).encode()
    h = headers(i, size, True).encode()
    text = text_lines(rng, 2000).encode()
    pre = (b"--=_bench_boundary\nContent-Type: text/plain; charset=utf-8\n\n" + text +
           b"--=_bench_boundary\nContent-Type: application/octet-stream; name=\"data.bin\"\n"
           b"Content-Transfer-Encoding: base64\n\n")
    post = b"--=_bench_boundary--\n"
    remaining = size - len(h) - len(pre) - len(post)
    return h, pre, remaining, post


def main():
    if len(sys.argv) not in (6, 7):
        sys.exit(__doc__)
    maildir, count, size, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    seed = int(sys.argv[6]) if len(sys.argv) == 7 else 1
    rng = random.Random(seed)
    secs = int(time.time())
    total = 0
    # One 4 MiB block of base64 reused (shifted) for big attachments keeps
    # generation of the 200 MB message quick.
    block = b64_block(rng, 4 << 20) if size >= 65536 else b""
    for i in range(count):
        name = f"{secs}.M{i:06d}P{os.getpid()}Q{i}.popsync-bench"
        tmp = os.path.join(maildir, "tmp", name)
        with open(tmp, "wb") as f:
            m = message(rng, i, size)
            if isinstance(m, bytes):
                f.write(m)
                total += len(m)
            else:
                h, pre, remaining, post = m
                f.write(h)
                f.write(pre)
                n = len(h) + len(pre)
                # Rotate the block per message so messages differ.
                start = block.find(b"\n", (i * 7919 * 77) % len(block)) + 1
                rot = block[start:] + block[:start]
                while remaining > 0:
                    if remaining >= len(rot):
                        piece = rot
                    else:
                        piece = rot[:rot.rfind(b"\n", 0, remaining) + 1] or rot[:77]
                    f.write(piece)
                    remaining -= len(piece)
                    n += len(piece)
                f.write(post)
                total += n + len(post)
        os.chown(tmp, uid, gid)
        os.rename(tmp, os.path.join(maildir, "new", name))
    print(count, total)


if __name__ == "__main__":
    main()
