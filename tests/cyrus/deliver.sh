#!/usr/bin/env bash
# Deliver one message (stdin) to a user of the throwaway Cyrus made by
# tests/cyrus/start.sh, through Cyrus's own LMTP server (lmtpd on the
# private socket DIR/conf/socket/lmtp), as an MTA would.
#
#   tests/cyrus/deliver.sh DIR USER < message
#
# Uses Cyrus's `deliver` (LMTP client) with the empty envelope sender. LF or
# CRLF line ends are both fine. Messages are numbered in delivery order.
# lmtpd changes what it stores; RETR then shows, in this order:
#   Return-Path: <>
#   Received: from deliver ([unix socket])
#   	 by localhost (Cyrus 3.6.1-Debian-...) with LMTPA;
#   	 <date>
#   X-Cyrus-Session-Id: <id>
#   X-Sieve: CMU Sieve 3.0
# before the message's own header (whose own Return-Path lmtpd drops), adds `Message-ID:` and `Date:` at the end
# of the header when the message has none, drops bare CRs, ends the last line
# with CRLF, and refuses a message that starts with an mbox "From " line
# (exit 65, "Message contains invalid header"). A NUL byte would make
# `deliver` silently cut the message there, so this script refuses it.
set -euo pipefail

die() { echo "deliver.sh: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: deliver.sh DIR USER < message"
dir=$1 user=$2
[[ -f $dir/cyrus.env && -f $dir/imapd.conf ]] || die "$dir is not a server made by tests/cyrus/start.sh"
dir=$(cd "$dir" && pwd -P)
# Cyrus would autocreate a mailbox for any name; only users made by
# add-user.sh can log in to read it.
grep -qsx -- "$user" "$dir/users" || die "no such user: $user (add it with add-user.sh first)"

bin=$(sed -n 's/^bin=//p' "$dir/cyrus.env")
libdir=$(sed -n 's/^libdir=//p' "$dir/cyrus.env")

message=$(mktemp "${TMPDIR:-/tmp}/popsync-cyrus-msg.XXXXXX")
trap 'rm -f "$message"' EXIT
cat > "$message"
if [[ $(tr -d '\000' < "$message" | wc -c) -ne $(wc -c < "$message") ]]; then
    die "the message contains NUL bytes; Cyrus's deliver would silently truncate it"
fi

if ! out=$(LD_LIBRARY_PATH=$libdir "$bin/deliver" -C "$dir/imapd.conf" -r "" "$user" < "$message" 2>&1); then
    die "Cyrus deliver to $user failed: ${out:-no message}"
fi
