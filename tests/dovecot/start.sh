#!/usr/bin/env bash
# Start a private, throwaway Dovecot POP3 server under DIR, on 127.0.0.1 only.
#
# Used by the Rust test harness (tests/common/mod.rs) and by tests/demo.sh.
#
#   tests/dovecot/start.sh DIR [--no-stls] [--apop] [--cert KIND] [--imap] [--owner-pid PID]
#
# Creates DIR (if missing) and in it: a private CA (ca.pem, ca.key), a server
# certificate signed by it (server.pem, server.key; SAN IP:127.0.0.1,
# DNS:localhost), dovecot.conf, users (passwd-file, filled by add-user.sh),
# home/ (one home with a Maildir per user), dovecot.log, stop.sh.
#
# On success it prints machine-readable lines on stdout and exits 0:
#   pop3_port=P        plain POP3 (offers STLS unless --no-stls)
#   pop3s_port=S       implicit TLS (absent with --no-stls)
#   ca=DIR/ca.pem      the CA that signed the server certificate
#   pid=N              the Dovecot master process
#   stop=DIR/stop.sh   stops the server and waits until it has exited
#
# Ports: two free ports on 127.0.0.1 are picked unless POP3_PORT / POP3S_PORT
# are set. Needs bash, openssl and dovecot; nothing else.
#
# --no-stls: the server has TLS switched off entirely (`ssl = no`), so the
# plain port does not offer STLS and there is no POP3S listener. Dovecot 2.3
# cannot switch STLS off for one listener only, hence the separate mode.
#
# --apop: also offer APOP (`auth_mechanisms` gains `apop`; the greeting then
# carries a <timestamp>). The passwd-file holds {PLAIN} passwords, which APOP
# needs.
#
# --cert KIND: serve another certificate instead of the good one (ca.pem is
# still made, and is what `ca=` names); one more line is printed:
#   cert=DIR/server-KIND.pem   the certificate the server presents
# KIND is one of
#   good        the default certificate (server.pem), printed as cert=
#   expired     signed by the CA, SAN IP:127.0.0.1, DNS:localhost, but valid
#               only from 2020-01-01 to 2021-01-01
#   wronghost   signed by the CA, valid now, but only for DNS:mail.example.net
#   selfsigned  valid now for IP:127.0.0.1 and DNS:localhost, but self-signed
#               (not issued by the CA)
#
# --imap: also serve IMAP (needs dovecot-imapd; tests/dovecot/imap.conf.sh),
# and print imap_port=P (STARTTLS unless --no-stls) and imaps_port=S.
#
# --owner-pid PID: a detached watchdog stops the server and removes DIR once
# process PID has gone (a server shared by a whole test binary lives in a
# static, which Rust never drops).
#
# Note: Dovecot treats a connection whose remote IP equals its local IP (any
# loopback connection to 127.0.0.1) as "secured", so `disable_plaintext_auth`
# does NOT refuse USER/PASS before STLS here. Whether a client sends
# credentials in clear text must be checked on the client side.
#
# Works as root (the mail user is then an unprivileged account, because
# Dovecot refuses mail access as UID 0) and as a normal user (everything runs
# as the invoking user).
set -euo pipefail

die() { echo "start.sh: $*" >&2; exit 1; }
# shellcheck source=tests/server-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../server-lib.sh"

usage="usage: start.sh DIR [--no-stls] [--apop] [--cert good|expired|wronghost|selfsigned] [--imap] [--owner-pid PID]"
[[ $# -ge 1 ]] || die "$usage"
dir=$1
shift
no_stls=false
apop=false
cert_kind=""
owner_pid=""
imap=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-stls) no_stls=true ;;
        --apop) apop=true ;;
        --imap) imap=true ;;
        --cert)
            [[ $# -ge 2 ]] || die "--cert needs a KIND; $usage"
            cert_kind=$2
            shift
            ;;
        --cert=*) cert_kind=${1#--cert=} ;;
        --owner-pid)
            [[ $# -ge 2 && $2 =~ ^[0-9]+$ ]] || die "--owner-pid needs a process id; $usage"
            owner_pid=$2
            shift
            ;;
        *) die "unknown argument: $1; $usage" ;;
    esac
    shift
done
case $cert_kind in
    ""|good|expired|wronghost|selfsigned) ;;
    *) die "unknown certificate kind: $cert_kind; $usage" ;;
esac

dovecot_bin=$(command -v dovecot || true)
[[ -n $dovecot_bin ]] || for candidate in /usr/sbin/dovecot /usr/local/sbin/dovecot; do
    [[ -x $candidate ]] && dovecot_bin=$candidate && break
done
[[ -n $dovecot_bin ]] || die "dovecot is not installed (Debian/Ubuntu: apt-get install dovecot-pop3d)"
command -v openssl >/dev/null || die "openssl is not installed"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)

# Unix sockets live under base_dir; sun_path holds 107 bytes and Dovecot's
# longest socket names are about 30 bytes, so keep the directory short.
base_dir=$dir/run
if (( ${#base_dir} > 70 )); then
    die "DIR is too long for Dovecot's unix sockets (${#base_dir} > 70 bytes): $base_dir; use a short directory such as one made by mktemp -d /tmp/pop.XXXXXX"
fi

# --- users -------------------------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
    # Dovecot refuses mail access as UID 0, and its login and auth processes
    # run as the unprivileged users the package creates.
    login_user=dovenull
    internal_user=dovecot
    internal_group=$(id -gn dovecot 2>/dev/null) || die "user 'dovecot' missing; is dovecot-pop3d installed?"
    id dovenull >/dev/null 2>&1 || die "user 'dovenull' missing; is dovecot-pop3d installed?"
    mail_user=nobody
    id "$mail_user" >/dev/null 2>&1 || die "user '$mail_user' missing"
    chroot_setting=""   # keep Dovecot's default chroots
    # The unprivileged processes must be able to reach DIR.
    chmod 0755 "$dir"
else
    login_user=$(id -un)
    internal_user=$(id -un)
    internal_group=$(id -gn)
    mail_user=$(id -un)
    chroot_setting="chroot ="   # chroot needs root
fi
mail_uid=$(id -u "$mail_user")
mail_gid=$(id -g "$mail_user")

# --- certificates ------------------------------------------------------------
make_test_certificates "$dir"

# An alternative server certificate (--cert KIND), made next to the good one.
served_cert=$dir/server.pem
served_key=$dir/server.key
if [[ -n $cert_kind && $cert_kind != good ]]; then
    served_cert=$dir/server-$cert_kind.pem
    served_key=$dir/server-$cert_kind.key
fi
if [[ ! -s $served_cert ]]; then
    (
        cd "$dir"
        san="IP:127.0.0.1,DNS:localhost"
        [[ $cert_kind == wronghost ]] && san="DNS:mail.example.net"
        cat > "alt-$cert_kind.ext" <<EXT
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $san
EXT
        case $cert_kind in
            selfsigned)
                openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                    -keyout "server-$cert_kind.key" -out "server-$cert_kind.pem" -days 825 \
                    -subj "/CN=localhost self-signed" \
                    -addext "basicConstraints=critical,CA:FALSE" \
                    -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
                    -addext "extendedKeyUsage=serverAuth" \
                    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
                ;;
            wronghost)
                openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                    -keyout "server-$cert_kind.key" -out "alt-$cert_kind.csr" \
                    -subj "/CN=mail.example.net" 2>/dev/null
                openssl x509 -req -in "alt-$cert_kind.csr" -CA ca.pem -CAkey ca.key \
                    -CAcreateserial -out "server-$cert_kind.pem" -days 825 \
                    -extfile "alt-$cert_kind.ext" 2>/dev/null
                ;;
            expired)
                # `openssl x509 -req` cannot back-date; `openssl ca` can.
                openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                    -keyout "server-$cert_kind.key" -out "alt-$cert_kind.csr" \
                    -subj "/CN=localhost" 2>/dev/null
                mkdir -p alt-ca
                : > alt-ca/index.txt
                echo 1000 > alt-ca/serial
                cat > alt-ca/ca.cnf <<CNF
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = $dir/alt-ca
database = \$dir/index.txt
new_certs_dir = \$dir
serial = \$dir/serial
default_md = sha256
policy = any_name
unique_subject = no
[ any_name ]
commonName = supplied
CNF
                openssl ca -batch -config alt-ca/ca.cnf -cert ca.pem -keyfile ca.key \
                    -in "alt-$cert_kind.csr" -out "server-$cert_kind.pem" -notext \
                    -startdate 20200101000000Z -enddate 20210101000000Z \
                    -extfile "alt-$cert_kind.ext" 2>/dev/null >/dev/null
                rm -rf alt-ca
                ;;
        esac
        rm -f "alt-$cert_kind.csr" "alt-$cert_kind.ext" ca.srl
        [[ -s server-$cert_kind.pem ]]
        chmod 0644 "server-$cert_kind.pem"
        chmod 0600 "server-$cert_kind.key"
    ) || die "openssl failed to create the $cert_kind certificate"
fi

# --- ports -------------------------------------------------------------------
pick_ports

# --- configuration -----------------------------------------------------------
mkdir -p "$base_dir" "$dir/lib" "$dir/home"
touch "$dir/users" "$dir/dovecot.log"
if [[ $(id -u) -eq 0 ]]; then
    # auth runs as the internal user and must read the passwd-file; the log
    # file is opened by the master (root).
    chgrp "$internal_group" "$dir/users"
    chmod 0640 "$dir/users"
else
    chmod 0600 "$dir/users"
fi
# Remembered for add-user.sh.
printf 'mail_uid=%s\nmail_gid=%s\n' "$mail_uid" "$mail_gid" > "$dir/mail-owner"

if $no_stls; then
    ssl_block="ssl = no"
    pop3s_listener=""
else
    ssl_block="ssl = yes
ssl_cert = <$served_cert
ssl_key = <$served_key
ssl_min_protocol = TLSv1.2"
    pop3s_listener="inet_listener pop3s {
    port = $pop3s_port
    ssl = yes
  }"
fi

auth_mechanisms="plain login cram-md5 scram-sha-1 scram-sha-256"
$apop && auth_mechanisms+=" apop"

cat > "$dir/dovecot.conf" <<CONF
# Throwaway test server written by tests/dovecot/start.sh; do not edit.
listen = 127.0.0.1
base_dir = $base_dir
state_dir = $dir/lib
instance_name = popsync-test-$pop3_port
protocols = pop3
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
debug_log_path = $dir/dovecot.log

$ssl_block
disable_plaintext_auth = yes
auth_mechanisms = $auth_mechanisms
auth_verbose = yes
# Failed logins answer at once (the default waits 2 s), so tests stay fast.
auth_failure_delay = 0

passdb {
  driver = passwd-file
  args = scheme=PLAIN $dir/users
}
userdb {
  driver = passwd-file
  args = $dir/users
}

mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
first_valid_uid = 0
first_valid_gid = 0
default_login_user = $login_user
default_internal_user = $internal_user
default_internal_group = $internal_group

service pop3-login {
  $chroot_setting
  inet_listener pop3 {
    port = $pop3_port
  }
  $pop3s_listener
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  $chroot_setting
  # The auth process cannot connect to a mode-0 socket, so it switches the
  # per-IP auth penalty off: otherwise one test's failed login would delay
  # every later login from 127.0.0.1 by seconds (up to 15).
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
CONF
if $imap; then source "$(dirname "${BASH_SOURCE[0]}")/imap.conf.sh"; fi

cat > "$dir/stop.sh" <<STOP
#!/usr/bin/env bash
# Stops the throwaway Dovecot started by start.sh and waits until it has exited.
pidfile=$base_dir/master.pid
pid=\$(cat "\$pidfile" 2>/dev/null) || exit 0
kill -TERM "\$pid" 2>/dev/null || exit 0
gone() {
    # Exited, or a zombie waiting for its parent (often init) to reap it.
    local state
    state=\$(awk '{print \$3}' "/proc/\$pid/stat" 2>/dev/null) || return 0
    [[ -z \$state || \$state == Z ]]
}
for _ in \$(seq 200); do
    gone && exit 0
    sleep 0.05
done
echo "stop.sh: Dovecot (pid \$pid) did not stop within 10 s; killing its process group" >&2
kill -KILL -- "-\$pid" 2>/dev/null || kill -KILL "\$pid" 2>/dev/null || true
STOP
chmod 0755 "$dir/stop.sh"

# --- start -------------------------------------------------------------------
if ! "$dovecot_bin" -c "$dir/dovecot.conf" >>"$dir/dovecot.log" 2>&1; then
    cat "$dir/dovecot.log" >&2
    die "dovecot failed to start (config: $dir/dovecot.conf)"
fi
# From here on a failure must not leave a server behind.
started=false
stop_unless_started() {
    $started && return
    for _ in $(seq 40); do
        [[ -s $base_dir/master.pid ]] && break
        sleep 0.05
    done
    "$dir/stop.sh" || true
}
trap stop_unless_started EXIT

port_open() {
    # bash's /dev/tcp: a refused connection to 127.0.0.1 fails at once.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
greets() {
    # pop3-login greets only once its auth process is up: then the server is
    # ready (and a stop right away is quick; a half-started Dovecot takes
    # seconds to shut down).
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        printf 'QUIT\r\n' >&3
        [[ $line == "+OK"* ]]
    ) 2>/dev/null
}

ports=("$pop3_port")
$no_stls || ports+=("$pop3s_port")
if $imap; then ports+=("$imap_port" ${imaps_port:+"$imaps_port"}); fi
deadline=$((SECONDS + 10))
for port in "${ports[@]}"; do
    check=port_open
    [[ $port == "$pop3_port" ]] && check=greets
    until "$check" "$port"; do
        if (( SECONDS >= deadline )); then
            cat "$dir/dovecot.log" >&2
            die "dovecot did not accept connections on 127.0.0.1:$port within 10 s (log above: $dir/dovecot.log)"
        fi
        sleep 0.1
    done
done

# The listeners accept before the daemonized master has written its pid file.
until [[ -s $base_dir/master.pid ]]; do
    if (( SECONDS >= deadline )); then
        cat "$dir/dovecot.log" >&2
        die "dovecot wrote no $base_dir/master.pid within 10 s"
    fi
    sleep 0.05
done
pid=$(cat "$base_dir/master.pid")
started=true
if [[ -n $owner_pid ]]; then
    # Detached and off the caller's pipes, so the caller sees EOF at once.
    setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; bash "$2/stop.sh"; rm -rf "$2"' \
        watchdog "$owner_pid" "$dir" </dev/null >/dev/null 2>&1 &
fi
echo "pop3_port=$pop3_port"
$no_stls || echo "pop3s_port=$pop3s_port"
echo "ca=$dir/ca.pem"
echo "pid=$pid"
echo "stop=$dir/stop.sh"
if $imap; then cat "$dir/imap-ports"; fi
[[ -z $cert_kind ]] || echo "cert=$served_cert"
