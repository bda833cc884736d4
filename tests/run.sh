#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it too):
#
#   bash tests/run.sh
#
# Installs what the integration tests need when it is missing (Dovecot's POP3
# and IMAP servers; Courier's and Cyrus's, unpacked privately by tests/courier/install.sh
# and tests/cyrus/install.sh; openssl, the mail tools the delivery tests read mail back with, and
# fetchmail, getmail and mpop for the import tests),
# then runs the whole suite. Without root it installs nothing and says what is
# missing; the tests that need a missing server or tool then fail, unless
# POPSYNC_TEST_SKIP_SERVERS=1 asks them to print "skipped" and pass (never
# under CI=true).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

needed=()
command -v dovecot >/dev/null || [[ -x /usr/sbin/dovecot ]] || needed+=(dovecot-pop3d)
# Dovecot's IMAP server: the APPEND target of tests/imap_dovecot.rs and imap_kill.rs.
[[ -x /usr/lib/dovecot/imap || -x /usr/libexec/dovecot/imap ]] || needed+=(dovecot-imapd)
command -v openssl >/dev/null || needed+=(openssl)
command -v procmail >/dev/null || needed+=(procmail)
command -v formail >/dev/null || needed+=(procmail)
command -v python3 >/dev/null || needed+=(python3)
# The peers whose state files `popsync seen import` reads (tests/import.rs).
command -v fetchmail >/dev/null || needed+=(fetchmail)
command -v getmail >/dev/null || needed+=(getmail6)
command -v mpop >/dev/null || needed+=(mpop)
# A real SOCKS5 server for the `proxy` tests (tests/socks_proxy.rs).
command -v microsocks >/dev/null || needed+=(microsocks)

if ((${#needed[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "tests/run.sh: installing ${needed[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        echo "tests/run.sh: installing ${needed[*]} (sudo)"
        sudo apt-get update -qq
        sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
    else
        echo "tests/run.sh: missing ${needed[*]}; install them to run every test" >&2
    fi
fi

# Courier and Cyrus conflict with Dovecot as Debian packages (pop3-server):
# these install their parts that do not conflict and unpack the rest under
# target/test-servers/, where the tests run them as private servers.
bash tests/courier/install.sh
bash tests/cyrus/install.sh

exec cargo test --locked "$@"
