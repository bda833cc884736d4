#!/usr/bin/env python3
"""Check a throwaway Dovecot from start.sh with Python's poplib.

    python3 tests/dovecot/selfcheck.py DIR POP3_PORT POP3S_PORT

Creates user `selfcheck`, drops one message into its Maildir, then: POP3S with
the test CA (USER/PASS, UIDL, RETR byte-exact), POP3 + STLS, every SASL
mechanism Dovecot advertises, a TLS handshake without the CA (must fail), and
USER/PASS before STLS. Prints a short transcript; exits non-zero on a failure.
"""
import base64, hashlib, hmac, os, poplib, secrets, ssl, subprocess, sys, time

d, port, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
here = os.path.dirname(os.path.abspath(__file__))
user, pw = "selfcheck", "pa ssw0rd!"  # a space: passwd-file and SASL must cope
maildir = subprocess.run([f"{here}/add-user.sh", d, user, pw], check=True,
                         capture_output=True, text=True).stdout.strip()
msg = (b"From: a@example.org\nTo: selfcheck@example.org\nSubject: hi\n\n"
       b"line one\n.\n..two dots\n.three\nFrom me\n" + b"x" * 1500 + b"\nend\n")
tmp = f"{maildir}/tmp/1.M1P1Q1.selfcheck"
with open(tmp, "wb") as f:
    f.write(msg)
os.rename(tmp, f"{maildir}/new/1.M1P1Q1.selfcheck")

ctx = ssl.create_default_context(cafile=f"{d}/ca.pem")
failures = []

def check(what, cond):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)

def retr_bytes(p):
    _, lines, _ = p.retr(1)
    return b"\n".join(lines) + b"\n"

# POP3S, USER/PASS
p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=10)
print("pop3s greeting:", p.getwelcome().decode())
print("pop3s CAPA:", sorted(p.capa()))
p.user(user); p.pass_(pw)
uidl = p.uidl()
print("UIDL:", uidl[1])
check("pop3s USER/PASS + UIDL", len(uidl[1]) == 1)
check("pop3s RETR byte-exact after unstuffing", retr_bytes(p) == msg)
check("UIDL format %08Xu%08Xv", len(uidl[1][0].split()[1]) == 16)
p.quit()

# POP3 + STLS
p = poplib.POP3("127.0.0.1", port, timeout=10)
capa = p.capa()
print("plain CAPA:", sorted(capa))
check("plain port offers STLS", "STLS" in capa)
p.stls(context=ctx)
print("after STLS CAPA:", sorted(p.capa()))
p.user(user); p.pass_(pw)
check("STLS USER/PASS + RETR", retr_bytes(p) == msg)
p.quit()

# SASL mechanisms over TLS
def sasl(mech):
    p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=10)
    b64 = lambda b: base64.b64encode(b).decode()
    unb64 = lambda s: base64.b64decode(s)
    def cont(resp):  # "+ base64" -> bytes
        assert resp.startswith(b"+"), resp
        return unb64(resp[1:].strip())
    def send(line):
        p._putcmd(line)
        return p._getline()[0]
    if mech == "PLAIN":
        r = send("AUTH PLAIN " + b64(f"\0{user}\0{pw}".encode()))
    elif mech == "LOGIN":
        send("AUTH LOGIN"); send(b64(user.encode())); r = send(b64(pw.encode()))
    elif mech == "CRAM-MD5":
        ch = cont(send("AUTH CRAM-MD5"))
        dig = hmac.new(pw.encode(), ch, hashlib.md5).hexdigest()
        r = send(b64(f"{user} {dig}".encode()))
    else:  # SCRAM-SHA-1 / SCRAM-SHA-256
        h = hashlib.sha1 if mech == "SCRAM-SHA-1" else hashlib.sha256
        cnonce = secrets.token_urlsafe(18)
        bare = f"n={user},r={cnonce}"
        first = cont(send(f"AUTH {mech} " + b64(("n,," + bare).encode()))).decode()
        f = dict(kv.split("=", 1) for kv in first.split(","))
        salted = hashlib.pbkdf2_hmac(h().name, pw.encode(), base64.b64decode(f["s"]), int(f["i"]))
        ckey = hmac.new(salted, b"Client Key", h).digest()
        without_proof = f"c={b64(b'n,,')},r={f['r']}"
        auth_msg = f"{bare},{first},{without_proof}".encode()
        sig = hmac.new(h(ckey).digest(), auth_msg, h).digest()
        proof = bytes(a ^ b for a, b in zip(ckey, sig))
        final = cont(send(b64(f"{without_proof},p={b64(proof)}".encode())))
        skey = hmac.new(salted, b"Server Key", h).digest()
        assert final == b"v=" + base64.b64encode(hmac.new(skey, auth_msg, h).digest()), final
        r = send("")
    ok = r.startswith(b"+OK")
    if ok:
        p.quit()
    else:
        p.close()
    return ok, r

p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=10)
mechs = [c for c in p.capa().get("SASL", [])]
p.quit()
print("SASL advertised:", mechs)
for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"]:
    ok, r = sasl(mech) if mech in mechs else (False, b"not advertised")
    check(f"AUTH {mech}: {r.decode(errors='replace')}", ok)

# wrong password
p = poplib.POP3_SSL("127.0.0.1", sport, context=ctx, timeout=10)
p.user(user)
try:
    p.pass_("wrong")
    check("wrong password refused", False)
except poplib.error_proto as e:
    check(f"wrong password refused: {e}", True)
p.close()

# untrusted certificate (no CA)
try:
    poplib.POP3_SSL("127.0.0.1", sport, context=ssl.create_default_context(), timeout=10)
    check("system roots do not trust the test CA", False)
except ssl.SSLCertVerificationError as e:
    check(f"system roots do not trust the test CA: {e.verify_message}", True)

# USER/PASS before STLS
p = poplib.POP3("127.0.0.1", port, timeout=10)
try:
    p.user(user)
    r = p.pass_(pw)
    print(f"note: USER/PASS before STLS accepted on loopback ({r.decode()}); "
          "Dovecot treats remote IP == local IP as secured")
    p.quit()
except poplib.error_proto as e:
    print(f"USER/PASS before STLS refused: {e}")
    p.close()

sys.exit(1 if failures else 0)
