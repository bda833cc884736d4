#!/usr/bin/env bash
# See popsync work, end to end, in about a minute:
#
#   bash tests/demo.sh
#
# Starts a throwaway Dovecot POP3 server on 127.0.0.1 (tests/dovecot/start.sh),
# gives it a user "demo" with five messages, fetches them over POP3S into the
# Maildir ./demo-mail (in the directory you run this from), fetches again to
# show that nothing is downloaded twice, and stops the server. Nothing outside
# ./demo-mail and a temp dir (removed at the end) is touched, except that as
# root it installs dovecot-pop3d when missing.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
maildir=$PWD/demo-mail

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '\n==> %s\n' "$*"; }
fi
die() { echo "demo: $*" >&2; exit 1; }

# --- prerequisites -----------------------------------------------------------
have_dovecot() {
    command -v dovecot >/dev/null || [[ -x /usr/sbin/dovecot ]]
}
if ! have_dovecot || ! command -v openssl >/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "Installing dovecot-pop3d and openssl (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-pop3d openssl >/dev/null
        # The package starts the system-wide Dovecot; the demo runs its own.
    else
        die "the demo needs Dovecot's POP3 server and openssl. Install them, e.g.
    sudo apt-get install dovecot-pop3d openssl     # Debian, Ubuntu
    sudo dnf install dovecot openssl               # Fedora
and run this again."
    fi
fi
command -v cargo >/dev/null || die "cargo is missing; install Rust from https://rustup.rs and run this again."
if [[ -e $maildir ]] && [[ -n $(ls -A "$maildir" 2>/dev/null) ]]; then
    die "$maildir exists already (from an earlier demo?). Remove it, or run the demo from another directory."
fi

say "Building popsync (cargo build --release)"
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
popsync=${CARGO_TARGET_DIR:-$repo/target}/release/popsync
[[ -x $popsync ]] || die "no binary at $popsync after the build"

# --- a throwaway POP3 server -------------------------------------------------
# Under /tmp: Dovecot's unix sockets need a short path.
server=$(mktemp -d /tmp/popsync-demo.XXXXXX)
cleanup() {
    if [[ -x $server/stop.sh ]]; then "$server/stop.sh" || true; fi
    rm -rf "$server"
}
trap cleanup EXIT

say "Starting a private Dovecot on 127.0.0.1"
info=$(bash "$repo/tests/dovecot/start.sh" "$server")
pop3s_port=$(sed -n 's/^pop3s_port=//p' <<<"$info")
ca=$(sed -n 's/^ca=//p' <<<"$info")
echo "POP3S on 127.0.0.1:$pop3s_port, certificate signed by the test CA $ca"

server_maildir=$(bash "$repo/tests/dovecot/add-user.sh" "$server" demo 'demo password')
# Who owns the server mailbox (start.sh wrote it down).
mail_uid=$(sed -n 's/^mail_uid=//p' "$server/mail-owner")
mail_gid=$(sed -n 's/^mail_gid=//p' "$server/mail-owner")
n=0
deliver() {
    # Drop one message (from stdin) into the server's Maildir, as an MTA would.
    n=$((n + 1))
    local name
    name="$(date +%s).M${n}P$$Q$n.demo"
    cat > "$server_maildir/tmp/$name"
    if [[ $(id -u) -eq 0 ]]; then chown "$mail_uid:$mail_gid" "$server_maildir/tmp/$name"; fi
    mv "$server_maildir/tmp/$name" "$server_maildir/new/$name"
}

deliver <<'MAIL'
Return-Path: <welcome@example.org>
From: The popsync demo <welcome@example.org>
To: demo@example.org
Subject: Welcome to popsync
Date: Mon, 2 Jun 2025 09:00:00 +0000
Message-ID: <welcome.demo@example.org>

Hello!

This message travelled from a Dovecot POP3 server, over TLS (POP3S, port
995 in real life), into the Maildir ./demo-mail. popsync remembers what it
has fetched in a small SQLite file, so the next run fetches only new mail.
MAIL

deliver <<'MAIL'
Return-Path: <cron@example.org>
From: Cron Daemon <cron@example.org>
To: demo@example.org
Subject: Cron <demo@host> backup.sh
Date: Mon, 2 Jun 2025 09:05:00 +0000
Message-ID: <cron.demo@example.org>

backup finished: 1234 files, 56 MB
MAIL

deliver <<'MAIL'
Return-Path: <alice@example.org>
From: Alice <alice@example.org>
To: demo@example.org
Subject: Lunch on Friday?
Date: Mon, 2 Jun 2025 09:10:00 +0000
Message-ID: <lunch.demo@example.org>

Shall we try the new place on the corner?
A line with just a dot follows; POP3 has to escape it:
.
Alice
MAIL

deliver <<'MAIL'
Return-Path: <noreply@example.org>
From: Newsletter <noreply@example.org>
To: demo@example.org
Subject: This week in mail
Date: Mon, 2 Jun 2025 09:15:00 +0000
Message-ID: <news.demo@example.org>
Content-Type: text/plain; charset=utf-8

From Maildir to mbox: a line that starts with "From " stays untouched in Maildir.
Grüße aus Köln.
MAIL

deliver <<'MAIL'
Return-Path: <bob@example.org>
From: Bob <bob@example.org>
To: demo@example.org
Subject: Re: Lunch on Friday?
Date: Mon, 2 Jun 2025 09:20:00 +0000
Message-ID: <lunch-reply.demo@example.org>
In-Reply-To: <lunch.demo@example.org>

Count me in.
MAIL
echo "User demo has $n messages waiting."

# --- the popsync config ------------------------------------------------------
config=$server/popsync.toml
(
    umask 077   # a config that holds a password must not be readable by others
    cat > "$config" <<CONFIG
[defaults]
state_dir = "$server/state"

[accounts.demo]
host = "127.0.0.1"
port = $pop3s_port
tls = "implicit"
ca_file = "$ca"
user = "demo"
password = "demo password"
deliver = { maildir = "$maildir" }
CONFIG
)
say "The config ($config, mode 0600)"
sed 's/^password = .*/password = "…"/' "$config"

say "popsync fetch --all -v    (first run: everything is new)"
"$popsync" --config "$config" fetch --all -v

say "popsync fetch --all -v    (second run: nothing new)"
"$popsync" --config "$config" fetch --all -v

say "The Maildir ./demo-mail"
ls -l "$maildir/new" "$maildir/cur" 2>/dev/null || true
first=$(find "$maildir/new" "$maildir/cur" -type f 2>/dev/null | sort | head -1)
if [[ -n $first ]]; then
    say "One of the messages ($first)"
    head -n 12 "$first"
fi

say "Done"
cat <<DONE
Your mail is in $maildir (a Maildir: read it with mutt -f $maildir,
or look at the files in new/). The demo server is stopped and removed now.
To fetch your own mail, write ~/.config/popsync/config.toml (see README.md
and man popsync) and run: popsync fetch --all
DONE
