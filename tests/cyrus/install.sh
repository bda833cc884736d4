#!/usr/bin/env bash
# Install what tests/cyrus/start.sh needs to run a private Cyrus pop3d.
#
#   tests/cyrus/install.sh
#
# Debian's POP3 servers all Provide and Conflict `pop3-server`, so apt cannot
# install cyrus-pop3d next to dovecot-pop3d. Hence two parts:
#
#   1. apt installs only what conflicts with nothing and starts no service:
#      the shared libraries cyrus-common and cyrus-pop3d link against,
#      sasl2-bin (saslpasswd2, for the private sasldb) and libsasl2-modules
#      (the PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5, SCRAM and sasldb plugins).
#      cyrus-common itself is NOT apt-installed: it pulls in an MTA
#      (default-mta, i.e. exim4, listening on port 25) and its maintainer
#      scripts create the system user `cyrus`, /var/lib/cyrus and a system
#      service.
#   2. `apt-get download` fetches cyrus-common and cyrus-pop3d and
#      `dpkg-deb -x` unpacks them into target/test-servers/cyrus/root under
#      the repository root. No maintainer script runs; nothing outside that
#      directory changes. start.sh runs the binaries from there with
#      LD_LIBRARY_PATH pointing at root/usr/lib/x86_64-linux-gnu (or the
#      multiarch directory of this machine).
#
# Idempotent: a finished unpack is marked by root/.installed (holding the
# package versions); a second run only checks. Fails loudly (exit 1) when
# something cannot be installed. Without root it installs nothing, says what is
# missing and exits 0; the Cyrus tests then report themselves skipped (or fail
# under CI=true).
set -euo pipefail

die() { echo "tests/cyrus/install.sh: $*" >&2; exit 1; }
say() { echo "tests/cyrus/install.sh: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
dest=$repo/target/test-servers/cyrus
root=$dest/root
debs=(cyrus-common cyrus-pop3d)
apt_needed_always=(sasl2-bin libsasl2-modules openssl)

installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]; }

unpacked() {
    [[ -f $root/.installed && -x $root/usr/lib/cyrus/bin/pop3d && -x $root/usr/lib/cyrus/bin/master \
        && -x $root/usr/lib/cyrus/bin/lmtpd ]]
}

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    if unpacked; then exit 0; fi
    say "not a Debian-like system (no apt-get/dpkg-deb); the Cyrus tests will be skipped"
    exit 0
fi

# The run-time libraries of the two packages: their lib* dependencies (not
# the MTA, perl, adduser and friends the maintainer scripts need).
lib_deps() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "${debs[@]}" 2>/dev/null |
        sed -n 's/^ *|\{0,1\}Depends: \(lib[^ <]*\|zlib1g\)$/\1/p' | sort -u
}

missing=()
for pkg in "${apt_needed_always[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if ! unpacked || ((${#missing[@]})); then
    # Only consult apt's lists when something may be missing.
    mapfile -t libs < <(lib_deps)
    if ! ((${#libs[@]})) && [[ $(id -u) -eq 0 ]]; then
        say "apt knows no ${debs[*]}; running apt-get update"
        apt-get update -qq || die "apt-get update failed"
        mapfile -t libs < <(lib_deps)
    fi
    if ! ((${#libs[@]})) && [[ $(id -u) -eq 0 ]]; then
        die "apt-cache knows no ${debs[*]} (is this Debian bookworm?)"
    fi
    for pkg in "${libs[@]}"; do
        installed "$pkg" || missing+=("$pkg")
    done
fi

if [[ $(id -u) -ne 0 ]]; then
    todo=()
    ((${#missing[@]})) && todo+=("apt-get install --no-install-recommends ${missing[*]}")
    unpacked || todo+=("unpack ${debs[*]} into $root")
    if ((${#todo[@]})); then
        say "not root, so nothing installed; the Cyrus tests need (run as root):"
        for t in "${todo[@]}"; do say "  $t"; done
        say "  or simply: sudo bash tests/cyrus/install.sh"
    fi
    exit 0
fi

if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # --no-install-recommends: libsasl2-modules is all the SASL we need, and
    # nothing here may pull in an MTA or a server. policy-rc.d (if present)
    # keeps sasl2-bin's saslauthd from starting; it is disabled anyway.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
for pkg in "${apt_needed_always[@]}"; do
    installed "$pkg" || die "$pkg is still not installed"
done
command -v saslpasswd2 >/dev/null || [[ -x /usr/sbin/saslpasswd2 ]] || die "saslpasswd2 missing after installing sasl2-bin"

if unpacked; then
    exit 0
fi

say "downloading and unpacking ${debs[*]} into $root"
work=$(mktemp -d "${TMPDIR:-/tmp}/popsync-cyrus-debs.XXXXXX")
trap 'rm -rf "$work"' EXIT
# _apt downloads into a directory it may write to; otherwise apt warns and
# falls back to downloading as root.
chmod 0777 "$work"
# A stale package list names versions the mirror no longer has.
(cd "$work" && apt-get download -q "${debs[@]}" >/dev/null 2>&1) ||
    { apt-get update -qq && cd "$work" && apt-get download "${debs[@]}"; } ||
    die "apt-get download ${debs[*]} failed"
rm -rf "$root.new"
mkdir -p "$root.new"
versions=()
for pkg in "${debs[@]}"; do
    deb=$(compgen -G "$work/${pkg}_*.deb" | head -n1) || true
    [[ -n $deb ]] || die "apt-get download left no ${pkg}_*.deb"
    dpkg-deb -x "$deb" "$root.new" || die "dpkg-deb -x $deb failed"
    versions+=("$pkg $(dpkg-deb -f "$deb" Version)")
done
for bin in pop3d master lmtpd; do
    [[ -x $root.new/usr/lib/cyrus/bin/$bin ]] || die "unpacked packages lack usr/lib/cyrus/bin/$bin"
done
printf '%s\n' "${versions[@]}" > "$root.new/.installed"
rm -rf "$root"
mv "$root.new" "$root"

# Every library the binaries need must now resolve.
libdir=$(dirname "$(compgen -G "$root/usr/lib/*/libcyrus_min.so.0" | head -n1)")
unresolved=$(LD_LIBRARY_PATH=$libdir ldd "$root"/usr/lib/cyrus/bin/{pop3d,master,lmtpd} 2>&1 |
    grep 'not found' | sort -u || true)
[[ -z $unresolved ]] || die "unresolved libraries after install:
$unresolved"
say "installed: $(tr '\n' ' ' < "$root/.installed")"
