#!/usr/bin/env bash
# POP3 → IMAP APPEND against POP3 → Maildir, side by side in one run.
#
#   bench/imap.sh [--rounds N] [--count N] [--size BYTES] [--no-build]
#
# One private Dovecot (tests/dovecot/start.sh --imap) holds a corpus of
# COUNT messages of about SIZE bytes (default 2000 x 5 KB) for one POP3 user.
# Each round, popsync fetches the whole mailbox over POP3S twice, keeping it
# on the server: once into a fresh Maildir, once into a fresh mailbox of a
# second user on the same Dovecot over IMAPS (MULTIAPPEND, LITERAL+), each
# with a fresh seen-store, in alternating order. It prints the medians of
# wall time, client CPU and peak RSS per target and the ratio IMAP / Maildir,
# and checks after every IMAP run that the mailbox holds COUNT messages.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
die() { echo "imap.sh: $*" >&2; exit 1; }

rounds=5 count=2000 size=5000 build=true
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) rounds=$2; shift ;;
        --count) count=$2; shift ;;
        --size) size=$2; shift ;;
        --no-build) build=false ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
py=$(command -v python3) || die "needs python3"
command -v /usr/bin/time >/dev/null || die "needs GNU time (apt-get install time)"
if $build; then (cd "$repo" && cargo build --release --locked -q) || die "cargo build failed"; fi
bin=${POPSYNC_BIN:-$repo/target/release/popsync}
[[ -x $bin ]] || die "no $bin"

work=$(mktemp -d /tmp/popsync-bench-imap.XXXXXX)
# Dovecot's unprivileged processes must reach the server directory.
chmod 755 "$work"
stop_server=""
cleanup() {
    [[ -n $stop_server ]] && "$stop_server" >/dev/null 2>&1 || true
    [[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

srv_out=$("$repo/tests/dovecot/start.sh" "$work/srv" --imap) || die "could not start Dovecot with IMAP"
field() { sed -n "s/^$1=//p" <<<"$srv_out"; }
pop3s_port=$(field pop3s_port) imaps_port=$(field imaps_port) ca=$(field ca)
stop_server=$(field stop)
[[ -n $imaps_port ]] || die "start.sh printed no imaps_port"
mail_uid=$(sed -n 's/^mail_uid=//p' "$work/srv/mail-owner")
mail_gid=$(sed -n 's/^mail_gid=//p' "$work/srv/mail-owner")
src_maildir=$("$repo/tests/dovecot/add-user.sh" "$work/srv" src src-pw)
"$repo/tests/dovecot/add-user.sh" "$work/srv" dst dst-pw >/dev/null
sleep 1.1 # Dovecot reads its passwd-file at most once a second.
echo "generating $count x $size bytes..." >&2
bytes=$("$py" "$here/gen_corpus.py" "$src_maildir" "$count" "$size" "$mail_uid" "$mail_gid")
bytes=${bytes#* }
# Warm-up: Dovecot indexes the Maildir on first access.
"$py" "$here/stream_limit.py" "$pop3s_port" "$ca" src src-pw >"$work/warmup.log" 2>&1 || { cat "$work/warmup.log" >&2; die "warm-up failed"; }

config() { # TARGET ROUND -> config path
    local f=$work/$1-$2.toml deliver
    if [[ $1 == imap ]]; then
        deliver="{ imap = { host = \"127.0.0.1\", port = $imaps_port, ca_file = \"$ca\", user = \"dst\", password = \"dst-pw\", mailbox = \"bench$2\", create = true } }"
    else
        deliver="{ maildir = \"$work/maildir-$2\" }"
    fi
    cat >"$f" <<TOML
[defaults]
state_dir = "$work/state-$1-$2"
[accounts.src]
host = "127.0.0.1"
port = $pop3s_port
ca_file = "$ca"
user = "src"
password = "src-pw"
received_header = false
deliver = $deliver
TOML
    chmod 600 "$f"
    echo "$f"
}

count_imap() { # MAILBOX -> messages in it
    "$py" - "$imaps_port" "$ca" "$1" <<'PY'
import imaplib, ssl, sys
port, ca, box = int(sys.argv[1]), sys.argv[2], sys.argv[3]
m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ssl.create_default_context(cafile=ca))
m.login("dst", "dst-pw")
typ, data = m.select(box, readonly=True)
print(int(data[0]) if typ == "OK" else -1)
PY
}

results=$work/results.tsv
for ((r = 1; r <= rounds; r++)); do
    order=(maildir imap)
    ((r % 2 == 0)) && order=(imap maildir)
    for target in "${order[@]}"; do
        cfg=$(config "$target" "$r")
        /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$bin" --config "$cfg" fetch src -q \
            || die "round $r, $target: popsync failed"
        read -r wall user sys rss <"$work/time"
        if [[ $target == imap ]]; then
            got=$(count_imap "bench$r")
            [[ $got == "$count" ]] || die "round $r: the IMAP mailbox holds $got messages, not $count"
        else
            got=$(find "$work/maildir-$r/new" -type f | wc -l)
            [[ $got == "$count" ]] || die "round $r: the Maildir holds $got messages, not $count"
        fi
        printf '%s\t%s\t%s\t%s\t%s\n' "$target" "$wall" "$user" "$sys" "$rss" >>"$results"
        echo "round $r $target: ${wall}s" >&2
    done
done

"$py" - "$results" "$count" "$bytes" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
count, nbytes = int(sys.argv[2]), int(sys.argv[3])
med = {}
for t in ("maildir", "imap"):
    r = [x for x in rows if x[0] == t]
    med[t] = (statistics.median(float(x[1]) for x in r),
              statistics.median(float(x[2]) + float(x[3]) for x in r),
              statistics.median(int(x[4]) for x in r) / 1024)
print(f"{count} messages, {nbytes / 1e6:.1f} MB over POP3S, {len(rows) // 2} rounds (medians)")
print("| target | wall s | client CPU s | peak RSS MB |")
print("|---|---:|---:|---:|")
for t, (w, c, m) in med.items():
    print(f"| {t} | {w:.2f} | {c:.2f} | {m:.1f} |")
print(f"IMAP / Maildir: wall {med['imap'][0] / med['maildir'][0]:.2f}x, "
      f"client CPU {med['imap'][1] / med['maildir'][1]:.2f}x")
PY
