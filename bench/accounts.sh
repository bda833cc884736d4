#!/usr/bin/env bash
# popsync with many accounts: N accounts × 20 messages (~2 KB) on one private
# Dovecot over POP3S, `fetch --all --jobs J` into fresh Maildirs, for several
# N, several rounds. Prints one markdown table: median wall time, client CPU,
# peak RSS, and the wall time per account (constant = linear scaling).
# See "Many accounts" in bench/README.md.
#
#   bench/accounts.sh [--counts 50,100,200] [--jobs 16] [--rounds 3]
#                     [--messages 20] [--no-build]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
repo=$(cd "$here/.." && pwd -P)
py=/usr/bin/python3
[[ -x $py ]] || py=$(command -v python3)
counts=50,100,200
jobs=16
rounds=3
per=20
build=true
die() { echo "accounts.sh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --counts) counts=${2:?}; shift ;;
        --jobs) jobs=${2:?}; shift ;;
        --rounds) rounds=${2:?}; shift ;;
        --messages) per=${2:?}; shift ;;
        --no-build) build=false ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
for n in ${counts//,/ } "$jobs" "$rounds" "$per"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a positive integer: $n"
done
command -v dovecot >/dev/null || die "dovecot is not installed (Debian: apt-get install -y dovecot-pop3d)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is not installed (Debian: apt-get install -y time)"
if [[ -n ${POPSYNC_BIN:-} ]]; then
    bin=$POPSYNC_BIN
else
    if $build; then (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"; fi
    bin=$repo/target/release/popsync
fi
[[ -x $bin ]] || die "no popsync binary at $bin"

work=$(mktemp -d /tmp/psa.XXXXXX)
chmod 0755 "$work"
stop_server=""
cleanup() {
    if [[ -n $stop_server ]]; then "$stop_server" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

srv_out=$("$repo/tests/dovecot/start.sh" "$work/srv") || die "could not start Dovecot"
port=$(sed -n 's/^pop3s_port=//p' <<<"$srv_out")
ca=$(sed -n 's/^ca=//p' <<<"$srv_out")
stop_server=$(sed -n 's/^stop=//p' <<<"$srv_out")
mail_uid=$(sed -n 's/^mail_uid=//p' "$work/srv/mail-owner")
mail_gid=$(sed -n 's/^mail_gid=//p' "$work/srv/mail-owner")

max=0
for n in ${counts//,/ }; do ((n > max)) && max=$n; done
echo "adding $max users with $per messages each..." >&2
# All users first: Dovecot looks at its passwd-file at most once a second.
for ((a = 0; a < max; a++)); do
    maildir=$("$repo/tests/dovecot/add-user.sh" "$work/srv" "acct$a" "pw-$a")
    "$py" "$here/gen_corpus.py" "$maildir" "$per" 2000 "$mail_uid" "$mail_gid" >/dev/null
done

config() {   # N DIR
    local n=$1 c=$2
    {
        printf '[defaults]\nstate_dir = "%s/state"\nca_file = "%s"\nreceived_header = false\n' "$c" "$ca"
        for ((a = 0; a < n; a++)); do
            printf '\n[accounts.acct%d]\nhost = "127.0.0.1"\nport = %d\nuser = "acct%d"\npassword = "pw-%d"\ndeliver = { maildir = "%s/mail/acct%d" }\n' \
                "$a" "$port" "$a" "$a" "$c" "$a"
        done
    } >"$c/config.toml"
    chmod 0600 "$c/config.toml"
}

run() {   # N -> "wall user sys rss"
    local n=$1 c=$work/client
    rm -rf "$c"
    mkdir -p "$c"
    config "$n" "$c"
    sync
    /usr/bin/time -o "$c.time" -f '%e %U %S %M' "$bin" --config "$c/config.toml" fetch --all --jobs "$jobs" -q ||
        die "popsync failed with $n accounts"
    local got
    got=$(find "$c/mail" -path '*/new/*' -type f | wc -l)
    [[ $got -eq $((n * per)) ]] || die "$n accounts: $got messages delivered, expected $((n * per))"
    tail -1 "$c.time"
    rm -rf "$c" "$c.time"
}

# Warm-up: Dovecot indexes every mailbox once, outside the timings.
run "$max" >/dev/null

declare -A results=()
for ((r = 1; r <= rounds; r++)); do
    for n in ${counts//,/ }; do
        row=$(run "$n")
        results[$n]+="$row;"
        echo "  $n accounts, round $r: wall user sys rss = $row" >&2
    done
done

median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
echo "| accounts × $per messages, --jobs $jobs | wall (median) | client CPU user+sys | peak RSS | wall per account |"
echo "|---|---:|---:|---:|---:|"
for n in ${counts//,/ }; do
    IFS=';' read -r -a rows <<<"${results[$n]%;}"
    wall=$(printf '%s\n' "${rows[@]}" | awk '{print $1}' | median)
    cpu=$(printf '%s\n' "${rows[@]}" | awk '{print $2 + $3}' | median)
    rss=$(printf '%s\n' "${rows[@]}" | awk '{print $4}' | median)
    awk -v n="$n" -v w="$wall" -v c="$cpu" -v m="$rss" \
        'BEGIN {printf "| %d | %.2f s | %.2f s | %.1f MB | %.1f ms |\n", n, w, c, m / 1000, w * 1000 / n}'
done
