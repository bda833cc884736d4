#!/usr/bin/env bash
# Start a private, throwaway Courier POP3 server under DIR, on 127.0.0.1 only.
#
#   tests/courier/start.sh DIR [--owner-pid PID [--cleanup]]
#
# Used by the Rust test harness (tests/common/courier.rs). Needs what
# tests/courier/install.sh installs (courier-pop and courier-base unpacked in
# target/test-servers/courier/root, courier-authlib and courier-authlib-userdb
# from apt), openssl, util-linux's unshare, and root.
#
# Creates DIR (if missing) and in it: a private CA (ca.pem, ca.key), a server
# certificate signed by it (server.pem, server.key; SAN IP:127.0.0.1,
# DNS:localhost; both in courier-cert.pem, which Courier reads), etc/
# (authdaemonrc and the userdb, filled by add-user.sh), authdaemon/
# (authdaemond's socket), ns/ (mount point of the private tmpfs), home/ (one
# home with a Maildir per user), mail-owner, courier.env (the daemons'
# environment), courier.sh (the supervisor), courier.log (every daemon's
# stderr), courier.pid, stop.sh.
#
# On success it prints machine-readable lines on stdout and exits 0:
#   pop3_port=P        plain POP3, offers STLS
#   pop3s_port=S       implicit TLS (POP3S)
#   ca=DIR/ca.pem      the CA that signed the server certificate
#   pid=N              the supervisor; every server process is in its session
#   stop=DIR/stop.sh   stops every process started and waits until they exited
#
# --owner-pid PID: also start a detached watchdog that runs stop.sh once PID
# has exited (polled every second), for a server that lives in a static. It
# exits by itself once the server was stopped otherwise.
# --cleanup (with --owner-pid): the watchdog also removes DIR after stopping.
#
# Ports: two free ports on 127.0.0.1 are picked unless POP3_PORT / POP3S_PORT
# are set; a port taken meanwhile makes start.sh fail with "Address already in
# use" on stderr (the caller retries).
#
# How it stays private: Courier's authentication library has its paths
# compiled in (authdaemond reads /etc/courier/authdaemonrc, the userdb module
# reads /etc/courier/userdb.dat, and login processes reach authdaemond at
# /run/courier/authdaemon/socket). So every server process runs in a private
# mount namespace (unshare --mount) in which DIR/etc is mounted on
# /etc/courier and DIR/authdaemon on /run/courier/authdaemon (over an overlay
# of /etc and /run, held on a private tmpfs, when those directories do not
# exist). Outside that namespace nothing changes; the rest of the config is
# environment variables, as Courier's own start scripts set them.
# Messages are owned by `nobody` (Courier setuid()s to the mail user).
#
# Observed facts (Debian bookworm courier-pop 1.0.16, this config; the full
# wire transcripts are in the report of the commit that added this file):
# - Greeting "+OK Hello there." on both ports: no APOP timestamp (Courier has
#   no APOP; "APOP ..." gets "-ERR Invalid command.").
# - CAPA ("+OK Here's what I can do:") is the same before and after login,
#   with STLS listed whenever TLS is not active (even after a plain-text
#   login, where STLS then gets "-ERR Invalid command."); USER/PASS work
#   before STLS: SASL PLAIN LOGIN CRAM-MD5 CRAM-SHA1 CRAM-SHA256, [STLS], TOP,
#   USER, LOGIN-DELAY 10, PIPELINING, UIDL, UTF8 USER, IMPLEMENTATION Courier
#   Mail Server. No RESP-CODES, AUTH-RESP-CODE, EXPIRE or LANG; replies never
#   carry response codes. LOGIN-DELAY 10 is hard-coded and not enforced.
# - UIDL "UID<n>-<uidvalidity>" (e.g. "1 UID1-1796186977"), kept in
#   Maildir/courierpop3dsizelist. At login pop3d moves new/ to cur/ (":2,"),
#   and RETR (not TOP) adds the S flag to the file name.
# - pop3login execs pop3d after a successful PASS or AUTH: whatever the
#   client sent behind that line before reading "+OK logged in." is lost
#   (USER+PASS+STAT in one write: STAT never answered). Commands pipelined
#   before the login line (UTF8, USER) and in TRANSACTION state are fine.
# - A failed PASS/AUTH answers "-ERR Login failed." / "-ERR Authentication
#   failed." after 5 s (hard-coded sleep); the session stays usable.
#   authdaemond unreachable: "-ERR Temporary problem, please try again
#   later" and the connection closes.
# - UTF8 ("+OK UTF8 enabled") is accepted before and after login. Without
#   it, a message with raw UTF-8 in its headers comes wrapped: a
#   multipart/mixed "Cannot display Unicode content" message by "Mail
#   Delivery Subsystem <postmaster>" with the original as a message/global
#   part, and RETR announces the wrapped size while LIST gives the stored
#   one. With UTF8 it comes as stored. UTF-8 only in the body: never wrapped.
# - RETR sends the file as stored with LF -> CRLF and dot-stuffing (a bare
#   CR or a stored CRLF passes through as is: CRLF becomes CR CR LF); a last
#   line without LF gets CRLF added, and LIST/RETR sizes are then 2 short.
# - Other replies: LIST "+OK POP3 clients that break here, they violate
#   STD53.", RETR "+OK N octets follow.", TOP "+OK headers follow.", DELE
#   "+OK Deleted.", NOOP "+OK Yup.", RSET "+OK Resurrected.", QUIT "+OK
#   Bye-bye." (before login "+OK Better luck next time."), errors "-ERR
#   Invalid command." / "-ERR Invalid message number.".
set -euo pipefail

die() { echo "start.sh: $*" >&2; exit 1; }
# shellcheck source=tests/server-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../server-lib.sh"

usage="usage: start.sh DIR [--owner-pid PID [--cleanup]]"
[[ $# -ge 1 ]] || die "$usage"
dir=$1
shift
owner_pid=""
cleanup=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --cleanup) cleanup=true ;;
        --owner-pid)
            [[ $# -ge 2 ]] || die "--owner-pid needs a PID; $usage"
            owner_pid=$2
            shift
            ;;
        --owner-pid=*) owner_pid=${1#--owner-pid=} ;;
        *) die "unknown argument: $1; $usage" ;;
    esac
    shift
done
[[ -z $owner_pid || $owner_pid =~ ^[0-9]+$ ]] || die "--owner-pid needs a number: $owner_pid"
[[ -n $owner_pid ]] || ! $cleanup || die "--cleanup needs --owner-pid; $usage"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
priv=$repo/target/test-servers/courier/root
couriertcpd=$priv/usr/sbin/couriertcpd
couriertls=$priv/usr/bin/couriertls
pop3login=$priv/usr/lib/courier/courier/courierpop3login
pop3d=$priv/usr/lib/courier/courier/courierpop3d
authdaemond=/usr/lib/courier/courier-authlib/authdaemond
for f in "$couriertcpd" "$couriertls" "$pop3login" "$pop3d" "$authdaemond" /usr/sbin/makeuserdb /usr/sbin/userdbpw; do
    [[ -x $f ]] || die "Courier is not installed ($f missing): run tests/courier/install.sh as root"
done
command -v openssl >/dev/null || die "openssl is not installed"
command -v unshare >/dev/null || die "unshare (util-linux) is not installed"
id courier >/dev/null 2>&1 || die "user 'courier' missing (made by courier-authlib): run tests/courier/install.sh as root"
[[ $(id -u) -eq 0 ]] || die "needs root: Courier's authentication daemon has its socket and config paths compiled in, so it runs in a private mount namespace, which needs root"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
# The mail user (nobody) must reach the Maildirs under DIR.
chmod 0755 "$dir"

# --- users -------------------------------------------------------------------
mail_user=nobody
mail_uid=$(id -u "$mail_user") || die "user '$mail_user' missing"
mail_gid=$(id -g "$mail_user")
printf 'mail_uid=%s\nmail_gid=%s\n' "$mail_uid" "$mail_gid" > "$dir/mail-owner"

# --- certificates ------------------------------------------------------------
make_test_certificates "$dir"

# Courier reads key and certificate from one file. For STLS, pop3login runs
# couriertls as the user `courier` (compiled in), so that user must own it.
(umask 077 && cat "$dir/server.key" "$dir/server.pem" > "$dir/courier-cert.pem")
chown courier:courier "$dir/courier-cert.pem"

# --- ports -------------------------------------------------------------------
pick_ports

# --- configuration -----------------------------------------------------------
mkdir -p "$dir/etc" "$dir/authdaemon" "$dir/home" "$dir/ns"
chmod 0755 "$dir/etc" "$dir/home"
chmod 0750 "$dir/authdaemon"
# The userdb source, filled by add-user.sh; makeuserdb wants it mode 0600.
touch "$dir/etc/userdb"
chmod 0600 "$dir/etc/userdb"
[[ -s $dir/etc/userdb.dat ]] || /usr/sbin/makeuserdb -f "$dir/etc/userdb" ||
    die "makeuserdb failed"
: > "$dir/courier.log"
rm -f "$dir/courier.pid"

cat > "$dir/etc/authdaemonrc" <<CONF
# Throwaway test server written by tests/courier/start.sh; do not edit.
# Seen by authdaemond as /etc/courier/authdaemonrc (private mount namespace).
authmodulelist="authuserdb"
daemons=3
authdaemonvar=/run/courier/authdaemon
DEBUG_LOGIN=0
DEFAULTOPTIONS=""
LOGGEROPTS=""
CONF

# The server's environment (Courier's pop3d and pop3d-ssl config files are
# shell variable assignments its start scripts export; these are the ones
# that matter, the rest keep their defaults).
cat > "$dir/courier.env" <<ENV
# Throwaway test server written by tests/courier/start.sh; do not edit.
PATH=/usr/bin:/bin:/usr/sbin:/sbin
SHELL=/bin/sh
DEBUG_LOGIN=0
MAXDAEMONS=200
MAXPERIP=200
# Every SASL mechanism Courier's pop3login has; it offers the same before
# and after TLS.
POP3AUTH="PLAIN LOGIN CRAM-MD5 CRAM-SHA1 CRAM-SHA256"
POP3AUTH_TLS="PLAIN LOGIN CRAM-MD5 CRAM-SHA1 CRAM-SHA256"
POP3_PROXY=0
POP3_STARTTLS=YES
POP3_TLS_REQUIRED=0
MAILDIRPATH=Maildir
MIME_UNICODE_MESSAGE_TYPE=message/global
COURIERTLS=$couriertls
TLS_CERTFILE=$dir/courier-cert.pem
TLS_PRIORITY="NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CTYPE-OPENPGP"
TLS_VERIFYPEER=NONE
TLS_TRUSTCERTS=$dir/ca.pem
ENV


# Runs inside the private mount namespace, as the leader of its own session.
cat > "$dir/courier.sh" <<SCRIPT
#!/usr/bin/env bash
# Throwaway test server written by tests/courier/start.sh; do not edit.
set -euo pipefail
echo \$\$ > "$dir/courier.pid.new"
# Mount DIR/SRC on TARGET, a directory under TOP (/etc or /run); if TARGET
# does not exist, first lay a writable overlay on TOP (held on the private
# tmpfs DIR/ns) so it can be made without touching the real TOP.
private_mount() {
    local src=\$1 top=\$2 target=\$3
    if [[ ! -d \$target ]]; then
        local ns=$dir/ns/\${top#/}
        mkdir -p "\$ns/upper" "\$ns/work"
        mount -t overlay popsync-courier -o "lowerdir=\$top,upperdir=\$ns/upper,workdir=\$ns/work" "\$top"
        mkdir -p "\$target"
    fi
    mount --bind "\$src" "\$target"
}
mount -t tmpfs -o mode=0755,size=4m popsync-courier "$dir/ns"
private_mount "$dir/etc" /etc /etc/courier
private_mount "$dir/authdaemon" /run /run/courier/authdaemon

set -a
. "$dir/courier.env"
set +a
cd /

"$authdaemond" &
for _ in \$(seq 200); do
    [[ -S /run/courier/authdaemon/socket ]] && break
    sleep 0.05
done
[[ -S /run/courier/authdaemon/socket ]] || { echo "authdaemond made no socket" >&2; exit 1; }

"$couriertcpd" -address=127.0.0.1 -maxprocs=\$MAXDAEMONS -maxperip=\$MAXPERIP \\
    -nodnslookup -noidentlookup $pop3_port \\
    "$pop3login" "$pop3d" \$MAILDIRPATH &
POP3_TLS=1 POP3_STARTTLS=NO "$couriertcpd" -address=127.0.0.1 -maxprocs=\$MAXDAEMONS \\
    -maxperip=\$MAXPERIP -nodnslookup -noidentlookup $pop3s_port \\
    "$couriertls" -server -tcpd -user=courier "$pop3login" "$pop3d" \$MAILDIRPATH &
mv "$dir/courier.pid.new" "$dir/courier.pid"
# On TERM (stop.sh signals every process of the session), reap the daemons.
trap 'kill -TERM \$(jobs -p) 2>/dev/null; wait; exit 0' TERM
# Any daemon exiting ends the server.
wait -n || true
echo "a Courier daemon exited; stopping the server" >&2
trap '' TERM
kill -TERM \$(jobs -p) 2>/dev/null
wait
exit 1
SCRIPT
chmod 0755 "$dir/courier.sh"

cat > "$dir/stop.sh" <<STOP
#!/usr/bin/env bash
# Stops the throwaway Courier started by start.sh (every process in the
# session of the supervisor in $dir/courier.pid) and waits until all exited.
pid=\$(cat "$dir/courier.pid" 2>/dev/null || cat "$dir/courier.pid.new" 2>/dev/null) || exit 0
[[ \$pid =~ ^[0-9]+\$ ]] || exit 0
# Live (not zombie) processes of session \$pid, except this script.
members() {
    local stat rest state ppid pgrp sid f p
    for f in /proc/[0-9]*/stat; do
        read -r stat 2>/dev/null <"\$f" || continue
        rest=\${stat##*) }
        read -r state ppid pgrp sid _ <<<"\$rest"
        p=\${f#/proc/}
        p=\${p%/stat}
        [[ \$sid == "\$pid" && \$state != Z && \$p != \$\$ && \$p != \$BASHPID ]] && echo "\$p"
    done
    return 0
}
signal() {
    local p
    for p in \$(members); do kill "-\$1" "\$p" 2>/dev/null; done
    return 0
}
signal TERM
for _ in \$(seq 200); do
    [[ -z \$(members) ]] && { rm -f "$dir/courier.pid"; exit 0; }
    sleep 0.05
done
echo "stop.sh: Courier (session \$pid) did not stop within 10 s; killing it" >&2
signal KILL
for _ in \$(seq 100); do
    [[ -z \$(members) ]] && break
    sleep 0.05
done
rm -f "$dir/courier.pid"
STOP
chmod 0755 "$dir/stop.sh"

# --- start -------------------------------------------------------------------
setsid unshare --mount --propagation private bash "$dir/courier.sh" \
    </dev/null >>"$dir/courier.log" 2>&1 &
launcher=$!

started=false
stop_unless_started() {
    $started && return
    "$dir/stop.sh" || true
}
trap stop_unless_started EXIT

fail() {
    cat "$dir/courier.log" >&2
    die "$* (log above: $dir/courier.log)"
}

greets() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 2 line <&3 || exit 1
        printf 'QUIT\r\n' >&3
        [[ $line == "+OK"* ]]
    ) 2>/dev/null
}
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

deadline=$((SECONDS + 10))
until [[ -s $dir/courier.pid ]]; do
    kill -0 "$launcher" 2>/dev/null || fail "Courier failed to start"
    (( SECONDS < deadline )) || fail "Courier did not start within 10 s"
    sleep 0.05
done
pid=$(cat "$dir/courier.pid")
for port in "$pop3_port" "$pop3s_port"; do
    check=port_open
    [[ $port == "$pop3_port" ]] && check=greets
    until "$check" "$port"; do
        kill -0 "$pid" 2>/dev/null || fail "Courier exited"
        grep -q 'Address already in use' "$dir/courier.log" &&
            fail "Courier cannot listen on 127.0.0.1:$port"
        (( SECONDS < deadline )) ||
            fail "Courier did not accept connections on 127.0.0.1:$port within 10 s"
        sleep 0.1
    done
done

if [[ -n $owner_pid ]]; then
    # A detached watchdog (its own session, no inherited stdout) that stops
    # the server once the owner has exited, or exits itself once the server
    # was stopped otherwise. Start time from /proc guards against PID reuse.
    read -r owner_stat 2>/dev/null <"/proc/$owner_pid/stat" ||
        fail "--owner-pid $owner_pid: no such process"
    # shellcheck disable=SC2206 # numbers and a state letter: split them
    owner_fields=(${owner_stat##*) })
    owner_start=${owner_fields[19]}
    setsid bash -c '
        owner=$1 start=$2 dir=$3 cleanup=$4
        while [[ -e $dir/courier.pid ]]; do
            # Field 22 of /proc/PID/stat (the start time), read without a fork.
            now=""
            if read -r stat 2>/dev/null <"/proc/$owner/stat"; then
                fields=(${stat##*) })
                now=${fields[19]}
            fi
            if [[ $now != "$start" ]]; then
                "$dir/stop.sh"
                if $cleanup; then rm -rf "$dir"; fi
                exit 0
            fi
            sleep 1
        done
    ' courier-watchdog "$owner_pid" "$owner_start" "$dir" "$cleanup" </dev/null >/dev/null 2>&1 &
fi

started=true
echo "pop3_port=$pop3_port"
echo "pop3s_port=$pop3s_port"
echo "ca=$dir/ca.pem"
echo "pid=$pid"
echo "stop=$dir/stop.sh"
