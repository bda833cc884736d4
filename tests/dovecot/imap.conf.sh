# shellcheck shell=bash
# Sourced by tests/dovecot/start.sh for `--imap`: the same private Dovecot
# also speaks IMAP (dovecot-imapd), as a delivery target for popsync's IMAP
# APPEND tests (tests/imap/mod.rs). Not a script of its own.
#
# Expects from start.sh: $dir, $no_stls, free_port, and dovecot.conf already
# written. Sets imap_port (plain IMAP; it offers STARTTLS unless --no-stls)
# and imaps_port (implicit TLS; empty with --no-stls), appends their
# listeners to dovecot.conf (later settings override earlier ones) and
# writes them to DIR/imap-ports, in the key=value form start.sh prints.
# IMAP_PORT / IMAPS_PORT choose the ports instead.

[[ -x /usr/lib/dovecot/imap || -x /usr/libexec/dovecot/imap ]] \
    || die "dovecot's IMAP server is not installed (Debian/Ubuntu: apt-get install dovecot-imapd)"

imap_port=${IMAP_PORT:-$(free_port)}
imaps_port=""
if ! $no_stls; then
    imaps_port=${IMAPS_PORT:-$(free_port)}
    while [[ -z ${IMAPS_PORT:-} && $imaps_port == "$imap_port" ]]; do imaps_port=$(free_port); done
fi

cat >> "$dir/dovecot.conf" <<CONF

# --imap (tests/dovecot/imap.conf.sh): IMAP on the same users and Maildirs.
protocols = pop3 imap
service imap-login {
  $chroot_setting
  inet_listener imap {
    port = $imap_port
  }
  inet_listener imaps {
    port = ${imaps_port:-0}
    ssl = yes
  }
}
CONF

{
    echo "imap_port=$imap_port"
    [[ -z $imaps_port ]] || echo "imaps_port=$imaps_port"
} > "$dir/imap-ports"
