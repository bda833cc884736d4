#!/usr/bin/env bash
# Add a mail user to the throwaway Cyrus made by tests/cyrus/start.sh.
#
#   tests/cyrus/add-user.sh DIR USER PASSWORD
#
# Stores USER (realm `localhost`, the server's servername) with PASSWORD in
# the private sasldb DIR/sasldb2 (saslpasswd2 -f; the plain text is kept, so
# every SASL mechanism and APOP work), records the name in DIR/users (which
# deliver.sh checks: Cyrus would otherwise autocreate a mailbox for any
# name), and creates the user's empty INBOX by logging in once on the
# harness's reader port: `autocreate_quota: 0` makes pop3d create the INBOX
# at login. That session ends without QUIT, so it does not count as a login
# for `popminpoll`. It also creates DIR/conf/log/USER, where pop3d then
# writes a transcript of each of USER's sessions (from the login on).
set -euo pipefail

die() { echo "add-user.sh: $*" >&2; exit 1; }

[[ $# -eq 3 ]] || die "usage: add-user.sh DIR USER PASSWORD"
dir=$1 user=$2 password=$3
[[ -f $dir/cyrus.env && -f $dir/imapd.conf ]] || die "$dir is not a server made by tests/cyrus/start.sh"
dir=$(cd "$dir" && pwd -P)
# Lower case: lmtpd lower-cases recipients (lmtp_downcase_rcpt).
[[ $user =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "user name must match [a-z0-9][a-z0-9_-]*: $user"
[[ $password =~ ^[[:graph:]]+$ ]] || die "password must be printable ASCII without spaces"
touch "$dir/users"
if grep -qx -- "$user" "$dir/users"; then die "user $user exists already"; fi

saslpasswd2=$(sed -n 's/^saslpasswd2=//p' "$dir/cyrus.env")
cyrus_user=$(sed -n 's/^cyrus_user=//p' "$dir/cyrus.env")
cyrus_group=$(sed -n 's/^cyrus_group=//p' "$dir/cyrus.env")
reader_port=$(sed -n 's/^reader_port=//p' "$dir/cyrus.env")
[[ -n $reader_port ]] || die "$dir/cyrus.env names no reader_port"

# -p: the password comes from stdin, without a newline.
printf '%s' "$password" | "$saslpasswd2" -f "$dir/sasldb2" -u localhost -c -p "$user" ||
    die "saslpasswd2 could not add $user to $dir/sasldb2"
# The services run as the Cyrus user and read the sasldb.
if [[ $(id -u) -eq 0 ]]; then
    chown "$cyrus_user:$cyrus_group" "$dir/sasldb2"
fi
chmod 0640 "$dir/sasldb2"
echo "$user" >> "$dir/users"
# Protocol telemetry: pop3d logs each session of USER after its login into
# DIR/conf/log/USER/<pid> (Cyrus's own logs go to syslog, often absent).
mkdir -p "$dir/conf/log/$user"
if [[ $(id -u) -eq 0 ]]; then
    chown "$cyrus_user:$cyrus_group" "$dir/conf/log/$user"
fi

# Log in once: the INBOX is created, and the password is proven to work.
reply=$(
    exec 3<>"/dev/tcp/127.0.0.1/$reader_port" || exit 1
    read -r -t 10 greeting <&3 || exit 1
    printf 'USER %s\r\n' "$user" >&3
    read -r -t 10 line <&3 || exit 1
    [[ $line == "+OK"* ]] || { echo "USER: $line"; exit 1; }
    printf 'PASS %s\r\n' "$password" >&3
    read -r -t 10 line <&3 || exit 1
    echo "$line"
    # No QUIT: leaving without it changes nothing in the mailbox.
) || die "logging in as $user on 127.0.0.1:$reader_port failed: ${reply:-no answer}"
[[ $reply == "+OK"* ]] || die "logging in as $user on 127.0.0.1:$reader_port failed: $reply"
