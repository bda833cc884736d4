#!/usr/bin/env bash
# Start a private, throwaway Cyrus POP3 server under DIR, on 127.0.0.1 only.
#
#   tests/cyrus/start.sh DIR [--owner-pid PID [--cleanup]] [--popminpoll MINUTES]
#
# Used by tests/common/cyrus.rs. Runs Debian bookworm's Cyrus 3.6 pop3d and
# lmtpd from the packages tests/cyrus/install.sh unpacked into
# target/test-servers/cyrus/root (or $CYRUS_ROOT), under their own master
# with their own imapd.conf and cyrus.conf: nothing on system ports, nothing
# in /etc or /var/lib/cyrus. Users: tests/cyrus/add-user.sh; mail:
# tests/cyrus/deliver.sh (through lmtpd on DIR/conf/socket/lmtp).
#
# Creates DIR (if missing, at most 80 bytes long: the LMTP socket is in it)
# and in it: ca.pem/ca.key (private CA), server.pem/server.key (signed by it,
# SAN IP:127.0.0.1, DNS:localhost), imapd.conf, imapd-reader.conf,
# cyrus.conf, cyrus.env (paths and ports for the other scripts), sasldb2
# (made by add-user.sh), users, conf/ (configdirectory: mailboxes.db, socket/,
# log/USER/ telemetry), spool/ (the partition), master.log, stop.sh.
#
# On success it prints, and exits 0:
#   pop3_port=P        plain POP3; offers STLS (USER and PLAIN/LOGIN only after it)
#   pop3s_port=S       implicit TLS
#   reader_port=R      the harness's own reader: same mailboxes, no LOGIN-DELAY,
#                      USER/PASS in clear text (for Mailbox::server_messages)
#   ca=DIR/ca.pem      the CA that signed the server certificate
#   pid=N              the Cyrus master; its pop3d/lmtpd children share its session
#   stop=DIR/stop.sh   stops the master and its children and waits for them
# A port that is taken makes it fail with "Address already in use" (the
# caller retries). As root the services run as `nobody` (there is no `cyrus`
# user); otherwise as the invoking user.
#
# --owner-pid PID: also start a detached watchdog (pid in DIR/watchdog.pid)
#   that runs stop.sh once PID has exited (checked every second); with
#   --cleanup it then deletes DIR too. For a server kept in a static.
# --popminpoll N: `popminpoll: N` (minutes). CAPA then says LOGIN-DELAY <N*60>,
#   and a login sooner than N minutes after the last one that ended with QUIT
#   is refused after authenticating (see below).
#
# What this Cyrus does on the wire (observed; quotes are exact):
# - Greeting: "+OK localhost Cyrus POP3 3.6.1-Debian-3.6.1-4+deb12u5 server
#   ready <RANDOM.TIME@localhost>" (APOP timestamp, APOP works, both ports).
# - CAPA, plain port before STLS: SASL CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1
#   SCRAM-SHA-256 / STLS / EXPIRE NEVER / LOGIN-DELAY 0 / TOP / UIDL /
#   PIPELINING / RESP-CODES / AUTH-RESP-CODE / IMPLEMENTATION Cyrus POP3 ...
#   After STLS (and on POP3S): SASL PLAIN LOGIN CRAM-MD5 DIGEST-MD5
#   SCRAM-SHA-1-PLUS SCRAM-SHA-1 SCRAM-SHA-256-PLUS SCRAM-SHA-256, no STLS,
#   plus USER. After login: as after STLS minus USER. No UTF8.
#   USER before TLS: "-ERR [AUTH] USER command only available under a layer";
#   AUTH PLAIN before TLS: "-ERR [AUTH] authenticating: encryption needed to
#   use mechanism". Data pipelined behind STLS is discarded.
# - UIDL: "UIDVALIDITY.UID", e.g. "1 1796186779.1"; kept across sessions.
# - SCRAM-SHA-1/-256: the server-final message comes as a continuation,
#   "+ dj0uLi4=" (v=...); the client must answer it with an empty line, and
#   only then comes "+OK Mailbox locked and ready SESSIONID=<...>". The gs2
#   header must be "n,,": "y,," fails over TLS, where -PLUS is offered.
# - AUTH success plus commands pipelined behind it: those commands get no
#   answer, and the next command sent is garbled into "-ERR Unrecognized
#   command" (pop3d re-reads the start of its buffer when it switches to the
#   SASL layer). USER/PASS/APOP may be pipelined; TRANSACTION commands
#   pipelined together are all answered in order.
# - popminpoll: "-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart"
#   (after PASS, APOP, or the AUTH exchange: for SCRAM after the empty line).
#   Only a session ending in QUIT counts as a login.
# - Wrong password: "-ERR [AUTH] Invalid login" (PASS), "-ERR [AUTH]
#   authenticating: authentication failure" (AUTH, APOP); no delay here
#   (failedloginpause: 0; Cyrus's default waits 3 s).
# - RETR is not the delivered message: lmtpd puts Return-Path (envelope
#   sender, the message's own Return-Path is dropped), Received,
#   X-Cyrus-Session-Id and X-Sieve in front, and appends Message-ID and Date
#   to a header without them; the rest is kept byte for byte (CRLF on the
#   wire). See deliver.sh.
# - DELE then QUIT expunges; the message files stay in the spool (delayed
#   expunge), so read mailboxes over POP3, never from the spool.
set -euo pipefail

die() { echo "start.sh: $*" >&2; exit 1; }
# shellcheck source=tests/server-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../server-lib.sh"

usage="usage: start.sh DIR [--owner-pid PID [--cleanup]] [--popminpoll MINUTES]"
[[ $# -ge 1 ]] || die "$usage"
dir=$1
shift
owner_pid=""
popminpoll=""
cleanup=false
while [[ $# -gt 0 ]]; do
    case $1 in
        --owner-pid)
            [[ $# -ge 2 ]] || die "--owner-pid needs a PID; $usage"
            owner_pid=$2
            shift
            ;;
        --owner-pid=*) owner_pid=${1#--owner-pid=} ;;
        --cleanup) cleanup=true ;;
        --popminpoll)
            [[ $# -ge 2 ]] || die "--popminpoll needs MINUTES; $usage"
            popminpoll=$2
            shift
            ;;
        --popminpoll=*) popminpoll=${1#--popminpoll=} ;;
        *) die "unknown argument: $1; $usage" ;;
    esac
    shift
done
[[ -z $owner_pid || $owner_pid =~ ^[1-9][0-9]*$ ]] || die "--owner-pid wants a process id: $owner_pid"
[[ -z $popminpoll || $popminpoll =~ ^[0-9]+$ ]] || die "--popminpoll wants whole minutes: $popminpoll"
[[ -z $owner_pid || -d /proc/$owner_pid ]] || die "--owner-pid $owner_pid: no such process"
! $cleanup || [[ -n $owner_pid ]] || die "--cleanup needs --owner-pid"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
root=${CYRUS_ROOT:-$repo/target/test-servers/cyrus/root}
bin=$root/usr/lib/cyrus/bin
[[ -x $bin/master && -x $bin/pop3d && -x $bin/lmtpd ]] ||
    die "Cyrus is not unpacked in $root; run tests/cyrus/install.sh as root"
libdir=$(compgen -G "$root/usr/lib/*/libcyrus_min.so.0" | head -n1) || true
[[ -n $libdir ]] || die "no libcyrus_min.so.0 under $root/usr/lib; run tests/cyrus/install.sh again"
libdir=$(dirname "$libdir")
saslpasswd2=$(command -v saslpasswd2 || true)
[[ -n $saslpasswd2 ]] || saslpasswd2=/usr/sbin/saslpasswd2
[[ -x $saslpasswd2 ]] || die "saslpasswd2 is not installed (Debian: apt-get install sasl2-bin)"
command -v openssl >/dev/null || die "openssl is not installed"

mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
# The LMTP socket lives at DIR/conf/socket/lmtp; sun_path holds 107 bytes.
if (( ${#dir} > 80 )); then
    die "DIR is too long for Cyrus's unix sockets (${#dir} > 80 bytes): $dir"
fi

# --- user --------------------------------------------------------------------
# master drops privileges to `cyrus_user`. As root that is an unprivileged
# account (there is no `cyrus` user: cyrus-common is unpacked, not installed);
# otherwise everything runs as the invoking user.
if [[ $(id -u) -eq 0 ]]; then
    cyrus_user=nobody
    id "$cyrus_user" >/dev/null 2>&1 || die "user '$cyrus_user' missing"
    chmod 0755 "$dir"
else
    cyrus_user=$(id -un)
fi
cyrus_group=$(id -gn "$cyrus_user")

# --- certificates ------------------------------------------------------------
make_test_certificates "$dir"

# --- ports -------------------------------------------------------------------
pick_ports
reader_port=$(free_port)
while [[ $reader_port == "$pop3_port" || $reader_port == "$pop3s_port" ]]; do reader_port=$(free_port); done

# --- configuration -----------------------------------------------------------
# configdirectory (mailboxes.db, sockets, proc, locks) and the mail partition
# belong to the Cyrus user; everything else stays the invoker's.
mkdir -p "$dir/conf/socket" "$dir/conf/proc" "$dir/conf/lock" "$dir/conf/log" "$dir/spool"
: > "$dir/master.log"
rm -f "$dir/master.pid"

common_conf() {
    cat <<CONF
# Throwaway test server written by tests/cyrus/start.sh; do not edit.
configdirectory: $dir/conf
partition-default: $dir/spool
defaultpartition: default
proc_path: $dir/conf/proc
mboxname_lockpath: $dir/conf/lock
lmtpsocket: $dir/conf/socket/lmtp
idlesocket: $dir/conf/socket/idle
notifysocket: $dir/conf/socket/notify
# The greeting names it, and it is the SASL realm of the sasldb users.
servername: localhost
cyrus_user: $cyrus_user
cyrus_group: $cyrus_group
syslog_prefix: popsync-cyrus-$pop3_port

sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: $dir/sasldb2
sasl_auto_transition: no
# Only what libsasl2-modules does with a sasldb password, and no more, so
# CAPA does not change when another SASL plugin is installed. After TLS the
# library adds SCRAM-SHA-1-PLUS and SCRAM-SHA-256-PLUS (channel binding).
sasl_mech_list: PLAIN LOGIN CRAM-MD5 DIGEST-MD5 SCRAM-SHA-1 SCRAM-SHA-256
tls_server_cert: $dir/server.pem
tls_server_key: $dir/server.key
tls_versions: tls1_2 tls1_3
tls_session_timeout: 0
# Wrong passwords are answered at once (default: after 3 s).
failedloginpause: 0

# Mail for a user without an INBOX creates it (LMTP delivery, POP3 login).
autocreate_post: 1
autocreate_quota: 0
# Tests may deliver the same Message-ID twice; both must arrive.
duplicatesuppression: 0
# Keep 8-bit header bytes as they are (the default turns them into 'X').
munge8bit: 0
reject8bit: 0
CONF
}

{
    common_conf
    # USER/PASS and AUTH PLAIN/LOGIN only after STLS (or on the POP3S port).
    echo "allowplaintext: no"
    [[ -n $popminpoll ]] && echo "popminpoll: $popminpoll"
} > "$dir/imapd.conf"
# The harness's private reader (Mailbox::server_messages): the same mail
# store without LOGIN-DELAY, USER/PASS in clear text on 127.0.0.1. It leaves
# without QUIT, so it neither expunges nor counts as a login for popminpoll.
{
    common_conf
    echo "allowplaintext: yes"
} > "$dir/imapd-reader.conf"

cat > "$dir/cyrus.conf" <<CONF
# Throwaway test server written by tests/cyrus/start.sh; do not edit.
SERVICES {
  pop3 cmd="$bin/pop3d -C $dir/imapd.conf" listen="127.0.0.1:$pop3_port" prefork=1
  pop3s cmd="$bin/pop3d -s -C $dir/imapd.conf" listen="127.0.0.1:$pop3s_port" prefork=1
  reader cmd="$bin/pop3d -C $dir/imapd-reader.conf" listen="127.0.0.1:$reader_port" prefork=0
  lmtpunix cmd="$bin/lmtpd -C $dir/imapd.conf" listen="$dir/conf/socket/lmtp" prefork=0
}
CONF

# Remembered for add-user.sh and deliver.sh.
cat > "$dir/cyrus.env" <<ENV
bin=$bin
libdir=$libdir
saslpasswd2=$saslpasswd2
cyrus_user=$cyrus_user
cyrus_group=$cyrus_group
pop3_port=$pop3_port
pop3s_port=$pop3s_port
reader_port=$reader_port
ENV

chown -R "$cyrus_user:$cyrus_group" "$dir/conf" "$dir/spool"
# The services (Cyrus user) read the key; the master reads it as that user too.
chown "$cyrus_user:$cyrus_group" "$dir/server.key"
chmod 0644 "$dir/imapd.conf" "$dir/imapd-reader.conf" "$dir/cyrus.conf" "$dir/cyrus.env"

cat > "$dir/stop.sh" <<STOP
#!/usr/bin/env bash
# Stops the throwaway Cyrus started by start.sh and waits until the master and
# every process of its session (pop3d, lmtpd) have exited.
pid=\$(cat "$dir/master.pid.start" 2>/dev/null) || exit 0
session() {
    # Processes whose session id is the master's (it was started by setsid).
    local stat rest
    for stat in /proc/[0-9]*/stat; do
        read -r rest 2>/dev/null < "\$stat" || continue
        rest=\${rest##*) }
        set -- \$rest
        # \$1 state, \$4 session
        [[ \$4 == "\$pid" && \$1 != Z ]] && echo "\${stat//[^0-9]/}"
    done
}
kill -TERM "\$pid" 2>/dev/null
for _ in \$(seq 200); do
    [[ -z \$(session) ]] && exit 0
    sleep 0.05
done
echo "stop.sh: Cyrus (master \$pid) did not stop within 10 s; killing its processes" >&2
for p in \$(session); do kill -KILL "\$p" 2>/dev/null; done
for _ in \$(seq 40); do
    [[ -z \$(session) ]] && exit 0
    sleep 0.05
done
echo "stop.sh: Cyrus processes still running: \$(session | tr '\n' ' ')" >&2
exit 1
STOP
chmod 0755 "$dir/stop.sh"

# --- start -------------------------------------------------------------------
# setsid: the master leads its own session (stop.sh finds its children by it)
# and no terminal signal of the caller reaches it. Its output goes to
# master.log, never to our stdout: callers wait for that pipe to close.
export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
setsid "$bin/master" -C "$dir/imapd.conf" -M "$dir/cyrus.conf" -p "$dir/master.pid" -L "$dir/master.log" \
    </dev/null >>"$dir/master.log" 2>&1 &
pid=$!
echo "$pid" > "$dir/master.pid.start"

started=false
stop_unless_started() {
    $started || "$dir/stop.sh" || true
}
trap stop_unless_started EXIT

fail() {
    {
        echo "--- $dir/master.log ---"
        cat "$dir/master.log" 2>/dev/null
        echo "--- (Cyrus logs to syslog; /dev/log is $( [[ -S /dev/log ]] && echo present || echo absent))"
    } >&2
    die "$*"
}

# The inode of the socket listening on 127.0.0.1:PORT, if any.
listen_inode() {
    local hex
    hex=$(printf '0100007F:%04X' "$1")
    awk -v local="$hex" '$2 == local && $4 == "0A" { print $10; exit }' /proc/net/tcp
}
# Does the master hold the socket listening on PORT?
ours() {
    local inode
    inode=$(listen_inode "$1")
    [[ -n $inode ]] && find "/proc/$pid/fd" -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null | grep -q .
}
greets() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        IFS= read -r -t 5 line <&3 || exit 1
        printf 'QUIT\r\n' >&3
        [[ $line == "+OK"*"Cyrus POP3"* ]]
    ) 2>/dev/null
}

deadline=$((SECONDS + 15))
for port in "$pop3_port" "$pop3s_port" "$reader_port"; do
    waited=0
    until ours "$port"; do
        kill -0 "$pid" 2>/dev/null || fail "the Cyrus master exited at once (config: $dir/imapd.conf, $dir/cyrus.conf)"
        # The master binds every listener before it forks the first child;
        # a port someone else listens on by then is lost (Cyrus only logs
        # that to syslog and carries on without the service).
        if (( waited > 20 )) && [[ -n $(listen_inode "$port") ]]; then
            fail "cannot listen on 127.0.0.1:$port: Address already in use"
        fi
        (( SECONDS < deadline )) || fail "Cyrus did not listen on 127.0.0.1:$port within 15 s"
        sleep 0.1
        waited=$((waited + 1))
    done
done
until [[ -S $dir/conf/socket/lmtp ]]; do
    (( SECONDS < deadline )) || fail "Cyrus made no LMTP socket $dir/conf/socket/lmtp within 15 s"
    sleep 0.1
done
until greets "$pop3_port"; do
    kill -0 "$pid" 2>/dev/null || fail "the Cyrus master exited"
    (( SECONDS < deadline )) || fail "Cyrus did not greet on 127.0.0.1:$pop3_port within 15 s"
    sleep 0.1
done

# --- watchdog ----------------------------------------------------------------
if [[ -n $owner_pid ]]; then
    # PID's start time (field 22 of /proc/PID/stat, counted after the
    # parenthesised name, which may hold spaces) tells the owner from a later
    # process that reuses its pid.
    watchdog='
        started() {
            local stat
            stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
            stat=${stat##*) }
            set -- $stat
            [[ $1 != Z ]] && echo "${20}"
        }
        owner=$1 master=$2 stop=$3 cleanup=$4 dir=$5
        since=$(started "$owner")
        while started "$master" >/dev/null; do
            if [[ -z $since || $(started "$owner") != "$since" ]]; then
                "$stop"
                [[ $cleanup == true ]] && rm -rf -- "$dir"
                exit 0
            fi
            sleep 1
        done
    '
    setsid bash -c "$watchdog" popsync-cyrus-watchdog "$owner_pid" "$pid" "$dir/stop.sh" "$cleanup" "$dir" \
        </dev/null >/dev/null 2>&1 &
    echo "$!" > "$dir/watchdog.pid"
fi

started=true
echo "pop3_port=$pop3_port"
echo "pop3s_port=$pop3s_port"
echo "reader_port=$reader_port"
echo "ca=$dir/ca.pem"
echo "pid=$pid"
echo "stop=$dir/stop.sh"
