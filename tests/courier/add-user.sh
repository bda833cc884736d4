#!/usr/bin/env bash
# Add a mail user to the throwaway Courier made by start.sh.
#
#   tests/courier/add-user.sh DIR USER PASSWORD
#
# Adds USER to DIR/etc/userdb (the userdb source), with the password as a
# crypt hash (USER/PASS, PLAIN, LOGIN) and as the HMAC precomputations that
# CRAM-MD5, CRAM-SHA1 and CRAM-SHA256 need, then rebuilds userdb.dat and
# userdbshadow.dat with makeuserdb; authdaemond (which sees DIR/etc as
# /etc/courier) notices the new files at the next login. Creates the empty
# Maildir DIR/home/USER/Maildir (new/ cur/ tmp/), owned by the mail user
# start.sh chose (nobody). Prints the Maildir path on stdout.
set -euo pipefail

die() { echo "add-user.sh: $*" >&2; exit 1; }

[[ $# -eq 3 ]] || die "usage: add-user.sh DIR USER PASSWORD"
dir=$1 user=$2 password=$3
[[ -f $dir/mail-owner && -f $dir/etc/userdb ]] || die "$dir is not a server made by tests/courier/start.sh"
dir=$(cd "$dir" && pwd -P)
[[ $user =~ ^[A-Za-z0-9._@+-]+$ ]] || die "user name must match [A-Za-z0-9._@+-]+: $user"
[[ -n $password && $password != *$'\n'* && $password != *$'\r'* ]] ||
    die "password must be non-empty and have no line breaks"
if grep -q "^$user	" "$dir/etc/userdb"; then die "user $user exists already"; fi

mail_uid=$(sed -n 's/^mail_uid=//p' "$dir/mail-owner")
mail_gid=$(sed -n 's/^mail_gid=//p' "$dir/mail-owner")
home=$dir/home/$user
maildir=$home/Maildir
mkdir -p "$maildir/new" "$maildir/cur" "$maildir/tmp"
chmod 0700 "$home" "$maildir" "$maildir/new" "$maildir/cur" "$maildir/tmp"
if [[ $(id -u) -eq 0 ]]; then
    chown -R "$mail_uid:$mail_gid" "$home"
fi

pw() { printf '%s\n' "$password" | /usr/sbin/userdbpw "$@"; }
systempw=$(pw -md5) || die "userdbpw -md5 failed"
hmac_md5=$(pw -hmac-md5) || die "userdbpw -hmac-md5 failed"
hmac_sha1=$(pw -hmac-sha1) || die "userdbpw -hmac-sha1 failed"
hmac_sha256=$(pw -hmac-sha256) || die "userdbpw -hmac-sha256 failed"

(
    flock 9
    printf '%s\tuid=%s|gid=%s|home=%s|mail=%s|systempw=%s|hmac-md5pw=%s|hmac-sha1pw=%s|hmac-sha256pw=%s\n' \
        "$user" "$mail_uid" "$mail_gid" "$home" "$maildir" \
        "$systempw" "$hmac_md5" "$hmac_sha1" "$hmac_sha256" >> "$dir/etc/userdb"
    /usr/sbin/makeuserdb -f "$dir/etc/userdb" >&2 || die "makeuserdb failed"
) 9>"$dir/etc/add-user.lock"
echo "$maildir"
