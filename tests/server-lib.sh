# shellcheck shell=bash
# What the start scripts of the test servers (tests/dovecot/start.sh,
# tests/courier/start.sh, tests/cyrus/start.sh) share; each sources it after
# defining `die`:
#
#   make_test_certificates DIR   a private CA and a server certificate it
#                                signed, unless DIR/server.pem exists
#   free_port                    a port no socket on this machine uses now
#   pick_ports                   pop3_port and pop3s_port (POP3_PORT and
#                                POP3S_PORT override), never the same

# A private CA (DIR/ca.pem, ca.key) and a server certificate it signed
# (DIR/server.pem, server.key; SAN IP:127.0.0.1, DNS:localhost). ECDSA P-256
# keys are quick to generate and accepted by rustls and Python's ssl module
# alike.
make_test_certificates() {
    local dir=$1
    [[ -s $dir/server.pem ]] && return 0
    (
        cd "$dir"
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 3650 -subj "/CN=popsync test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
        cat > server.ext <<EXT
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
EXT
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 825 -extfile server.ext 2>/dev/null
        rm -f server.csr server.ext ca.srl
        chmod 0600 ca.key
        chmod 0644 ca.pem server.pem
        chmod 0600 server.key   # read by the server's master process (root or the invoking user)
    ) || die "openssl failed to create the certificates"
}

# A random port below the kernel's ephemeral range that no socket uses now.
# Two servers starting at once may still pick the same port; the loser fails
# with "Address already in use" and its caller retries (tests/common does).
port_in_use() {
    local hex
    hex=$(printf ':%04X ' "$1")
    grep -qs -- "$hex" /proc/net/tcp /proc/net/tcp6
}
free_port() {
    local port
    while :; do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
        port_in_use "$port" || break
    done
    echo "$port"
}

# Sets pop3_port and pop3s_port.
pick_ports() {
    pop3_port=${POP3_PORT:-$(free_port)}
    pop3s_port=${POP3S_PORT:-$(free_port)}
    while [[ -z ${POP3S_PORT:-} && $pop3s_port == "$pop3_port" ]]; do pop3s_port=$(free_port); done
}
