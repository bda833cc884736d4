//! Which login mechanism popsync picks and when it moves on (issue 19),
//! through the real binary. Over TLS the default order is SCRAM-SHA-256,
//! SCRAM-SHA-1, PLAIN, LOGIN, USER/PASS, CRAM-MD5, and APOP only when `auth`
//! names it, however the greeting looks; a refusal that does not blame the
//! credentials moves on from an AUTH mechanism to the next, never after
//! `[AUTH]` and never after a refused PASS or APOP; a password SASLprep
//! refuses moves on from SCRAM before anything is sent; `probe --login`
//! logs in the same way. SCRAM SASLpreps the password (RFC 4013), checked
//! against Dovecot with a non-ASCII password.

mod common;
mod fault;

use std::path::Path;

use common::{
    Account, TestEnv, assert_contains, maildir_messages, require_dovecot, sorted, toml_string,
};
use fault::{Fault, FaultServer, On, sent_verb};

/// The fault server `srv` over implicit TLS (its own CA), user alice,
/// password secret, with `extra` account lines.
fn tls_config(dir: &Path, srv: &FaultServer, extra: &str) -> String {
    format!(
        "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\nca_file = {ca}\n\
         user = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\n{extra}\n",
        state = toml_string(&dir.join("state").to_string_lossy()),
        port = srv.port(),
        ca = toml_string(&srv.ca_pem_path().to_string_lossy()),
        maildir = toml_string(&dir.join("mail").to_string_lossy()),
    )
}

fn mail() -> Vec<Vec<u8>> {
    vec![b"Subject: one\nFrom: a@example.org\n\nfirst\n".to_vec()]
}

/// Every command of every session, in order.
fn commands(srv: &FaultServer) -> Vec<String> {
    srv.sessions().concat()
}

#[test]
fn a_timestamp_greeting_does_not_make_popsync_try_apop_over_tls() {
    let srv = FaultServer::builder()
        .tls()
        .apop()
        .capa(&["USER", "UIDL"])
        .messages(mail())
        .fault(On::Apop, Fault::Err("[AUTH] Bad login".into()))
        .start();
    let env = TestEnv::new();
    let out = env.run_config(&tls_config(env.path(), &srv, ""), &["fetch", "acct", "-q"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent = commands(&srv);
    assert!(
        sent_verb(&sent, "APOP").is_empty(),
        "APOP was tried: {sent:?}"
    );
    assert_eq!(sent_verb(&sent, "USER"), ["USER alice"]);
    assert_eq!(
        sorted(maildir_messages(&env.path().join("mail"))),
        sorted(mail())
    );
}

#[test]
fn apop_named_in_auth_is_the_only_one_tried_and_its_refusal_is_77() {
    let srv = FaultServer::builder()
        .tls()
        .apop()
        .capa(&["USER", "UIDL"])
        .messages(mail())
        .fault(On::Apop, Fault::Err("[AUTH] Bad login".into()))
        .start();
    let env = TestEnv::new();
    let out = env.run_config(
        &tls_config(env.path(), &srv, "auth = [\"apop\"]"),
        &["fetch", "acct"],
    );
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert_contains(&out.stderr, "Bad login", "stderr (the server's refusal)");
    let sent = commands(&srv);
    assert_eq!(sent_verb(&sent, "APOP").len(), 1, "{sent:?}");
    assert!(sent_verb(&sent, "USER").is_empty(), "{sent:?}");
}

#[test]
fn auth_plain_refused_as_unsupported_moves_on_to_user_pass() {
    let srv = FaultServer::builder()
        .tls()
        .capa(&["USER", "UIDL", "SASL PLAIN"])
        .messages(mail())
        .fault(On::Auth, Fault::Err("unsupported mechanism".into()))
        .start();
    let env = TestEnv::new();
    let out = env.run_config(&tls_config(env.path(), &srv, ""), &["fetch", "acct", "-q"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent = commands(&srv);
    assert_eq!(sent_verb(&sent, "AUTH").len(), 1, "{sent:?}");
    assert!(
        sent_verb(&sent, "AUTH")[0].starts_with("AUTH PLAIN"),
        "{sent:?}"
    );
    assert_eq!(sent_verb(&sent, "USER"), ["USER alice"]);
    assert_eq!(maildir_messages(&env.path().join("mail")).len(), 1);
}

#[test]
fn auth_refused_with_the_auth_code_is_never_retried_with_another_mechanism() {
    let srv = FaultServer::builder()
        .tls()
        .capa(&["USER", "UIDL", "SASL PLAIN"])
        .messages(mail())
        .fault(On::Auth, Fault::Err("[AUTH] invalid credentials".into()))
        .start();
    let env = TestEnv::new();
    let out = env.run_config(&tls_config(env.path(), &srv, ""), &["fetch", "acct"]);
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert_contains(&out.stderr, "invalid credentials", "stderr");
    let sent = commands(&srv);
    assert!(
        sent_verb(&sent, "USER").is_empty(),
        "a wrong password was tried again: {sent:?}"
    );
}

#[test]
fn a_refused_pass_is_never_followed_by_another_mechanism() {
    let srv = FaultServer::builder()
        .tls()
        .capa(&["USER", "UIDL", "SASL CRAM-MD5"])
        .messages(mail())
        .fault(On::Pass, Fault::Err("password incorrect".into()))
        .start();
    let env = TestEnv::new();
    let out = env.run_config(&tls_config(env.path(), &srv, ""), &["fetch", "acct"]);
    assert_eq!(out.code, 77, "{}", out.stderr);
    let sent = commands(&srv);
    assert_eq!(sent_verb(&sent, "PASS").len(), 1, "{sent:?}");
    assert!(
        sent_verb(&sent, "AUTH").is_empty(),
        "tried again after a refused PASS: {sent:?}"
    );
}

#[test]
fn a_password_scram_cannot_send_moves_on_to_plain_in_fetch_and_probe() {
    // U+0007 is a control character, which SASLprep (RFC 4013) prohibits:
    // SCRAM cannot send this password, PLAIN can.
    let srv = FaultServer::builder()
        .tls()
        .capa(&["USER", "UIDL", "SASL SCRAM-SHA-256 PLAIN"])
        .credentials("alice", "se\u{7}cret")
        .messages(mail())
        .start();
    let config = |env: &TestEnv, extra: &str| {
        tls_config(env.path(), &srv, extra)
            .replace("password = \"secret\"", "password = \"se\\u0007cret\"")
    };
    let env = TestEnv::new();
    let out = env.run_config(&config(&env, ""), &["fetch", "acct", "-v"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_contains(
        &out.stderr,
        "SCRAM-SHA-256 cannot be used",
        "stderr (-v says why SCRAM was passed over)",
    );
    let sent = commands(&srv);
    assert_eq!(sent_verb(&sent, "AUTH").len(), 1, "{sent:?}");
    assert!(
        sent_verb(&sent, "AUTH")[0].starts_with("AUTH PLAIN"),
        "nothing was sent for SCRAM: {sent:?}"
    );
    assert_eq!(maildir_messages(&env.path().join("mail")).len(), 1);

    // probe --login logs in the way fetch does.
    let out = env.run_config(&config(&env, ""), &["probe", "acct", "--login"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_contains(&out.stdout, "ok (PLAIN)", "probe's output");

    // SCRAM alone: nothing to move on to, exit 78 saying what to do.
    let env = TestEnv::new();
    let before = sent_verb(&commands(&srv), "AUTH").len();
    let out = env.run_config(
        &config(&env, "auth = [\"scram-sha-256\"]"),
        &["fetch", "acct"],
    );
    assert_eq!(out.code, 78, "{}", out.stderr);
    assert_contains(&out.stderr, "name another mechanism in `auth`", "stderr");
    assert!(
        !out.stderr.contains('\u{7}'),
        "no character of the password is printed: {:?}",
        out.stderr
    );
    assert_eq!(sent_verb(&commands(&srv), "AUTH").len(), before);
}

#[test]
fn probe_shows_the_order_and_why_each_mechanism_is_in_or_out() {
    let srv = FaultServer::builder()
        .tls()
        .apop()
        .capa(&["USER", "UIDL", "SASL PLAIN CRAM-MD5 XOAUTH2"])
        .start();
    let env = TestEnv::new();
    let out = env.run_config(&tls_config(env.path(), &srv, ""), &["probe", "acct"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "auth order:         1. PLAIN",
        "2. USER",
        "3. CRAM-MD5",
        "SCRAM-SHA-256: not offered by the server",
        "APOP: only when named in `auth` (or first with tls = \"none\")",
        "XOAUTH2: only when named in `auth` (OAuth2)",
        "would use:          PLAIN",
    ] {
        assert_contains(&out.stdout, line, "probe's output");
    }
}

#[test]
fn scram_sha_256_logs_in_to_dovecot_with_a_non_ascii_password() {
    let dovecot = require_dovecot!();
    // Dovecot keeps the password as written (composed, NFC); the config
    // gives it decomposed, as some keyboards and files do. SASLprep makes
    // them the same bytes.
    let composed = "p\u{e4}ssw\u{f6}rd";
    let decomposed = "pa\u{308}sswo\u{308}rd";
    let user = dovecot.add_user("umlaut", composed);
    user.deliver(b"Subject: hi\n\nbody\n");
    for password in [composed, decomposed] {
        let env = TestEnv::new();
        let account = Account::new("u", &dovecot, &user)
            .password(password)
            .maildir(&env.path().join("mail"))
            .extra("auth = [\"scram-sha-256\"]")
            .toml();
        env.write_accounts(&[account]);
        let out = env.run(&["fetch", "u", "-q", "--dry-run"]);
        assert_eq!(out.code, 0, "password {password:?}: {}", out.stderr);
    }
}
