#!/usr/bin/env bash
# Add a mail user to the throwaway Dovecot made by start.sh.
#
#   tests/dovecot/add-user.sh DIR USER PASSWORD [--settle]
#
# Appends a passwd-file line to DIR/users (password stored {PLAIN}, so every
# SASL mechanism works) and creates the empty Maildir DIR/home/USER/Maildir
# (new/ cur/ tmp/). Dovecot re-reads the passwd-file when it changes. Prints
# the Maildir path on stdout.
#
# The mail owner is the invoking user, or an unprivileged account when run as
# root (Dovecot refuses mail access as UID 0); start.sh records which.
set -euo pipefail

die() { echo "add-user.sh: $*" >&2; exit 1; }

[[ $# -eq 3 || ( $# -eq 4 && $4 == --settle ) ]] || die "usage: add-user.sh DIR USER PASSWORD [--settle]"
dir=$1 user=$2 password=$3 settle=${4:-}
[[ -f $dir/mail-owner ]] || die "$dir is not a server made by start.sh"
dir=$(cd "$dir" && pwd -P)
[[ $user =~ ^[A-Za-z0-9._@+-]+$ ]] || die "user name must match [A-Za-z0-9._@+-]+: $user"
[[ $password != *:* && $password != *$'\n'* ]] || die "password must not contain ':' or a newline"
# Tests that share one server add users concurrently.
exec 9>>"$dir/users.lock"
flock 9
if grep -q "^$user:" "$dir/users"; then die "user $user exists already"; fi

# Who owns the server mailbox (start.sh wrote it down).
mail_uid=$(sed -n 's/^mail_uid=//p' "$dir/mail-owner")
mail_gid=$(sed -n 's/^mail_gid=//p' "$dir/mail-owner")
home=$dir/home/$user
mkdir -p "$home/Maildir/new" "$home/Maildir/cur" "$home/Maildir/tmp"
if [[ $(id -u) -eq 0 ]]; then
    chown -R "$mail_uid:$mail_gid" "$home"
    # The harness (root) drops messages into new/ as root; Dovecot reads them.
fi

printf '%s:{PLAIN}%s:%s:%s::%s::\n' "$user" "$password" "$mail_uid" "$mail_gid" "$home" >> "$dir/users"
flock -u 9
# --settle, for a server that others log in to meanwhile: Dovecot looks at the
# passwd-file at most once a second, so a lookup earlier in this second may
# have read it just before the new line. Return once the next second has
# begun, when the next lookup reads the file again.
[[ -z $settle ]] || sleep "$(awk -v now="$(date +%s.%N)" 'BEGIN { printf "%.3f", int(now) + 1.02 - now }')"
echo "$home/Maildir"
