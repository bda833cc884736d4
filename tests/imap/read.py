#!/usr/bin/env python3
"""Read one IMAP mailbox back, as an independent client (Python's imaplib).

Used by tests/imap/mod.rs to check what popsync APPENDed, byte for byte:

    read.py --host H --port P --tls implicit|starttls|none [--ca FILE]
            --user U --password PW --mailbox M
            [--append FILE [--date "DD-Mon-YYYY HH:MM:SS +ZZZZ"] [--flags "(\\Seen)"]]

With --append, FILE's bytes are APPENDed first (for the harness's own checks
and for setting a mailbox up). Then the mailbox is EXAMINEd (read-only, so
reading changes no flag) and every message fetched with
`UID FETCH 1:* (UID INTERNALDATE FLAGS BODY.PEEK[])`.

Prints one JSON object on stdout:
    {"exists": true, "uidvalidity": V, "capabilities": [...],
     "messages": [{"uid": N, "internaldate": EPOCH, "flags": [...], "body": BASE64}, ...]}
or {"exists": false, ...} when the mailbox does not exist. Any other failure
is a message on stderr and exit status 1.
"""

import argparse
import base64
import datetime
import imaplib
import json
import re
import ssl
import sys


def connect(args):
    if args.tls == "implicit":
        ctx = ssl.create_default_context(cafile=args.ca)
        return imaplib.IMAP4_SSL(args.host, args.port, ssl_context=ctx, timeout=30)
    conn = imaplib.IMAP4(args.host, args.port, timeout=30)
    if args.tls == "starttls":
        conn.starttls(ssl_context=ssl.create_default_context(cafile=args.ca))
    return conn


def internaldate_epoch(text):
    when = datetime.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    return int(when.timestamp())


def parse_fetch(data):
    """imaplib's FETCH data: (meta, literal) tuples, each followed by the
    bytes after the literal (the closing parenthesis, maybe more items)."""
    messages = []
    i = 0
    while i < len(data):
        item = data[i]
        i += 1
        if not isinstance(item, tuple):
            continue
        meta, body = item[0], item[1]
        if i < len(data) and isinstance(data[i], bytes):
            meta += b" " + data[i]
            i += 1
        meta = meta.decode("utf-8", "replace")
        uid = re.search(r"\bUID (\d+)", meta)
        date = re.search(r'\bINTERNALDATE "([^"]+)"', meta)
        flags = re.search(r"\bFLAGS \(([^)]*)\)", meta)
        if not (uid and date and flags):
            raise SystemExit(f"read.py: cannot parse FETCH response: {meta!r}")
        messages.append(
            {
                "uid": int(uid.group(1)),
                "internaldate": internaldate_epoch(date.group(1)),
                "flags": flags.group(1).split(),
                "body": base64.b64encode(body).decode("ascii"),
            }
        )
    return messages


def quote(mailbox):
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", choices=["implicit", "starttls", "none"], default="implicit")
    p.add_argument("--ca")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--mailbox", default="INBOX")
    p.add_argument("--append")
    p.add_argument("--date")
    p.add_argument("--flags")
    args = p.parse_args()

    conn = connect(args)
    typ, data = conn.login(args.user, args.password)
    if typ != "OK":
        raise SystemExit(f"read.py: LOGIN failed: {data!r}")
    caps = sorted(c.decode() if isinstance(c, bytes) else c for c in conn.capabilities)
    if args.append:
        with open(args.append, "rb") as f:
            raw = f.read()
        date = f'"{args.date}"' if args.date else None
        typ, data = conn.append(quote(args.mailbox), args.flags, date, raw)
        if typ != "OK":
            raise SystemExit(f"read.py: APPEND failed: {data!r}")
    typ, data = conn.select(quote(args.mailbox), readonly=True)
    if typ != "OK":
        print(json.dumps({"exists": False, "uidvalidity": None, "capabilities": caps, "messages": []}))
        conn.logout()
        return
    # select() answers with the EXISTS count (and takes it out of
    # untagged_responses).
    count = int(data[-1] or 0)
    typ, data = conn.response("UIDVALIDITY")
    uidvalidity = int(data[-1]) if data and data[-1] else None
    messages = []
    if count:
        typ, data = conn.uid("FETCH", "1:*", "(UID INTERNALDATE FLAGS BODY.PEEK[])")
        if typ != "OK":
            raise SystemExit(f"read.py: UID FETCH failed: {data!r}")
        messages = parse_fetch(data)
    conn.logout()
    messages.sort(key=lambda m: m["uid"])
    print(json.dumps({"exists": True, "uidvalidity": uidvalidity, "capabilities": caps, "messages": messages}))


if __name__ == "__main__":
    try:
        main()
    except (OSError, imaplib.IMAP4.error) as e:
        print(f"read.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
