#!/usr/bin/env bash
# Install what tests/courier/start.sh needs to run a private Courier POP3
# server (Debian/Ubuntu). Idempotent; quiet when everything is there.
#
#   tests/courier/install.sh
#
# Debian's POP3 servers all Provide and Conflict with `pop3-server`, so
# courier-pop cannot be installed next to dovecot-pop3d. And courier-base
# depends on courier-authdaemon, whose package starts a system-wide
# authdaemond. So:
#   - apt-get installs only what conflicts with nothing and starts no daemon:
#     courier-authlib (libcourierauth, authdaemond, courierlogger; its
#     postinst adds the system user `courier`), courier-authlib-userdb
#     (userdb module, makeuserdb, userdbpw), libcourier-unicode4, openssl;
#   - courier-pop and courier-base (same version) are fetched with
#     `apt-get download` and unpacked with `dpkg-deb -x` into
#     target/test-servers/courier/root/ under the repository root; nothing of
#     them is registered with dpkg, and nothing is written to /etc or /run.
#
# As root it installs what is missing and fails loudly if it cannot. Without
# root it installs nothing: it says what is missing (on stderr) and exits 0,
# and the Courier tests then skip themselves (or fail under CI=true).
set -euo pipefail

die() { echo "tests/courier/install.sh: $*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
dest=$repo/target/test-servers/courier
apt_packages=(courier-authlib courier-authlib-userdb libcourier-unicode4 openssl)
private_packages=(courier-pop courier-base)
# The private files start.sh runs, relative to $dest/root.
private_files=(
    usr/sbin/couriertcpd
    usr/bin/couriertls
    usr/lib/courier/courier/courierpop3login
    usr/lib/courier/courier/courierpop3d
)

installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

private_complete() {
    [[ -s $dest/installed ]] || return 1
    local f
    for f in "${private_files[@]}"; do
        [[ -x $dest/root/$f ]] || return 1
    done
}

missing_apt=()
command -v dpkg-query >/dev/null || die "dpkg-query not found: this script needs Debian or Ubuntu"
for p in "${apt_packages[@]}"; do
    installed "$p" || missing_apt+=("$p")
done
missing_private=false
private_complete || missing_private=true

if ((${#missing_apt[@]} == 0)) && ! $missing_private; then
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    what=()
    ((${#missing_apt[@]})) && what+=("apt packages ${missing_apt[*]}")
    $missing_private && what+=("${private_packages[*]} unpacked in $dest")
    echo "tests/courier/install.sh: missing $(IFS=';'; echo "${what[*]}"); run it as root to install them (the Courier tests are skipped until then)" >&2
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian or Ubuntu"
export DEBIAN_FRONTEND=noninteractive

mkdir -p "$dest"
exec 9>"$dest/.install.lock"
flock 9

if ((${#missing_apt[@]})); then
    # Make sure installing removes nothing (dovecot-pop3d in particular).
    sim=$(apt-get install -s --no-install-recommends "${missing_apt[@]}" 2>&1) || {
        apt-get update -qq || die "apt-get update failed"
        sim=$(apt-get install -s --no-install-recommends "${missing_apt[@]}" 2>&1) ||
            die "apt-get cannot install ${missing_apt[*]}:"$'\n'"$sim"
    }
    if grep -q '^Remv ' <<<"$sim"; then
        die "installing ${missing_apt[*]} would remove packages; refusing:"$'\n'"$(grep '^Remv ' <<<"$sim")"
    fi
    log=$(apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" 2>&1) ||
        die "apt-get install ${missing_apt[*]} failed:"$'\n'"$log"
    for p in "${missing_apt[@]}"; do
        installed "$p" || die "$p is still not installed after apt-get install"
    done
fi

if ! private_complete; then
    version=$(apt-cache policy courier-pop 2>/dev/null | sed -n 's/^ *Candidate: //p')
    if [[ -z $version || $version == "(none)" ]]; then
        apt-get update -qq || die "apt-get update failed"
        version=$(apt-cache policy courier-pop 2>/dev/null | sed -n 's/^ *Candidate: //p')
    fi
    [[ -n $version && $version != "(none)" ]] || die "apt knows no courier-pop package"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # apt drops privileges to _apt for downloads; let it write here.
    id _apt >/dev/null 2>&1 && chown _apt "$tmp"
    specs=()
    for p in "${private_packages[@]}"; do specs+=("$p=$version"); done
    log=$(cd "$tmp" && apt-get download -qq "${specs[@]}" 2>&1) ||
        die "apt-get download ${specs[*]} failed:"$'\n'"$log"
    rm -rf "$dest/root.new"
    mkdir -p "$dest/root.new"
    for deb in "$tmp"/*.deb; do
        dpkg-deb -x "$deb" "$dest/root.new" || die "dpkg-deb -x $deb failed"
    done
    for f in "${private_files[@]}"; do
        [[ -x $dest/root.new/$f ]] || die "the unpacked packages lack $f"
        if ldd "$dest/root.new/$f" 2>/dev/null | grep -q 'not found'; then
            die "$f misses shared libraries:"$'\n'"$(ldd "$dest/root.new/$f" | grep 'not found')"
        fi
    done
    rm -rf "$dest/root"
    mv "$dest/root.new" "$dest/root"
    printf '%s\n' "${private_packages[@]/%/=$version}" > "$dest/installed"
fi
