//! Securing the connection, through the real `popsync` binary against a
//! real Dovecot (and the scripted server of `tests/fault/` where Dovecot
//! cannot misbehave): certificates that are for another host, expired,
//! self-signed or from an unknown authority, `tls_fingerprint` pins,
//! STARTTLS without or refused STLS, and plain text. What a user would
//! check: the exit code, the error text, and that no password was sent.
//! The contract is /work/shared/DESIGN.md: promise 3 (credentials never in
//! clear text, certificates verified), exit code 77, the `tls*` config keys.

mod common;
mod fault;
mod login;

use common::{
    Account, Dovecot, Output, TestEnv, User, assert_mentions, maildir_messages, pem_fingerprint,
    require_dovecot, sorted, toml_string,
};
use fault::FaultServer;
use login::*;

// --- TLS: certificates ---------------------------------------------------------

/// Fetch with `account`, expecting 77 and no login attempt; returns the run.
fn refused_77(dovecot: &Dovecot, alice: &User, account: Account) -> Output {
    let env = env_with(account);
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(77, dovecot);
    assert_no_auth_attempt(dovecot, &out);
    assert!(maildir_messages(&env.maildir("acct")).is_empty());
    assert_eq!(alice.server_messages().len(), 1, "nothing deleted");
    out
}

#[test]
fn certificate_for_another_host_name_is_77_naming_the_host() {
    let dovecot = require_dovecot!("--cert", "wronghost");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(&dovecot, &alice, Account::new("acct", &dovecot, &alice));
    assert_mentions(&out.stderr, "host name", "stderr");
    assert_mentions(&out.stderr, "127.0.0.1", "stderr");
    assert_mentions(&out.stderr, "certificate", "stderr");
}

#[test]
fn expired_certificate_is_77_saying_it_expired() {
    let dovecot = require_dovecot!("--cert", "expired");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(&dovecot, &alice, Account::new("acct", &dovecot, &alice));
    assert_mentions(&out.stderr, "expired", "stderr");
    assert_mentions(&out.stderr, "certificate", "stderr");
}

#[test]
fn certificate_from_unknown_authority_is_77_over_implicit_tls() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(
        &dovecot,
        &alice,
        Account::new("acct", &dovecot, &alice).without_ca_file(),
    );
    assert_mentions(&out.stderr, "not trusted", "stderr");
    assert_mentions(&out.stderr, "ca_file", "stderr");
}

#[test]
fn certificate_from_unknown_authority_is_77_over_starttls_before_any_login() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(
        &dovecot,
        &alice,
        Account::new("acct", &dovecot, &alice)
            .tls("starttls")
            .without_ca_file(),
    );
    assert_mentions(&out.stderr, "not trusted", "stderr");
}

#[test]
fn self_signed_certificate_is_77_even_with_ca_file() {
    let dovecot = require_dovecot!("--cert", "selfsigned");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(&dovecot, &alice, Account::new("acct", &dovecot, &alice));
    assert_mentions(&out.stderr, "not trusted", "stderr");
}

#[test]
fn right_pin_works_without_ca_file_in_any_spelling() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let pin = pem_fingerprint(&dovecot.served_cert());
    // As probe prints it; and lower-case without colons (DESIGN.md: "64 hex
    // digits, colons optional, any case").
    let bare = format!(
        "sha256:{}",
        pin.trim_start_matches("sha256:")
            .replace(':', "")
            .to_lowercase()
    );
    for spelling in [pin.clone(), bare] {
        let env = env_with(
            Account::new("acct", &dovecot, &alice)
                .without_ca_file()
                .extra(&format!("tls_fingerprint = \"{spelling}\"")),
        );
        let out = env.run(&["fetch", "acct"]);
        out.assert_code_with(0, &dovecot);
        assert_eq!(
            maildir_messages(&env.maildir("acct")),
            sorted(sent.clone()),
            "tls_fingerprint = {spelling:?}"
        );
    }
}

#[test]
fn right_pin_works_for_a_self_signed_certificate_over_implicit_tls_and_starttls() {
    let dovecot = require_dovecot!("--cert", "selfsigned");
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let pin = pem_fingerprint(&dovecot.served_cert());
    for tls in ["implicit", "starttls"] {
        let env = env_with(
            Account::new("acct", &dovecot, &alice)
                .tls(tls)
                .without_ca_file()
                .extra(&format!("tls_fingerprint = \"{pin}\"")),
        );
        let out = env.run(&["fetch", "acct"]);
        out.assert_code_with(0, &dovecot);
        assert_eq!(
            maildir_messages(&env.maildir("acct")),
            sorted(sent.clone()),
            "tls = {tls}"
        );
    }
}

#[test]
fn wrong_pin_is_77_naming_tls_fingerprint_even_with_a_trusted_ca() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let wrong = format!("sha256:{}", ["AB"; 32].join(":"));
    for with_ca in [false, true] {
        let mut account =
            Account::new("acct", &dovecot, &alice).extra(&format!("tls_fingerprint = \"{wrong}\""));
        if !with_ca {
            account = account.without_ca_file();
        }
        let out = refused_77(&dovecot, &alice, account);
        assert_mentions(&out.stderr, "tls_fingerprint", "stderr");
    }
}

#[test]
fn pin_does_not_excuse_a_wrong_host_name() {
    let dovecot = require_dovecot!("--cert", "wronghost");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let pin = pem_fingerprint(&dovecot.served_cert());
    let out = refused_77(
        &dovecot,
        &alice,
        Account::new("acct", &dovecot, &alice)
            .without_ca_file()
            .extra(&format!("tls_fingerprint = \"{pin}\"")),
    );
    assert_mentions(&out.stderr, "host name", "stderr");
    assert_mentions(&out.stderr, "127.0.0.1", "stderr");
}

// --- TLS: STLS and plain text --------------------------------------------------

#[test]
fn starttls_to_a_server_without_stls_is_77_and_sends_no_password() {
    let dovecot = require_dovecot!("--no-stls");
    let alice = dovecot.add_user("alice", PASSWORD);
    deliver_samples(&alice, 1);
    let out = refused_77(
        &dovecot,
        &alice,
        Account::new("acct", &dovecot, &alice).tls("starttls"),
    );
    assert_mentions(&out.stderr, "STLS", "stderr");
}

#[test]
fn starttls_without_stls_sends_nothing_but_capa_to_the_fault_server() {
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "SASL PLAIN"])
        .messages(vec![b"Subject: x\n\nhi\n".to_vec()])
        .start();
    let env = TestEnv::new();
    let config = format!(
        "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\n\
         user = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\n",
        state = toml_string(&env.path().join("state").to_string_lossy()),
        port = srv.port(),
        maildir = toml_string(&env.path().join("mail").to_string_lossy()),
    );
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
    assert_eq!(code, 77, "stderr:\n{stderr}");
    assert_mentions(&stderr, "STLS", "stderr");
    let commands = srv.commands();
    assert!(
        commands.iter().all(|c| c == "CAPA" || c == "QUIT"),
        "only CAPA (and QUIT) may be sent in clear text: {commands:?}"
    );
}

#[test]
fn stls_refused_by_the_server_sends_no_password() {
    // The server announces STLS but answers it with -ERR (the fault server
    // does not know the command).
    let srv = FaultServer::builder()
        .capa(&["USER", "UIDL", "STLS", "SASL PLAIN"])
        .messages(vec![b"Subject: x\n\nhi\n".to_vec()])
        .start();
    let env = TestEnv::new();
    let config = format!(
        "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"starttls\"\n\
         user = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\n",
        state = toml_string(&env.path().join("state").to_string_lossy()),
        port = srv.port(),
        maildir = toml_string(&env.path().join("mail").to_string_lossy()),
    );
    let Output { code, stderr, .. } = env.run_config(&config, &["fetch", "acct"]);
    assert_eq!(code, 76, "stderr:\n{stderr}");
    assert_mentions(&stderr, "STLS failed", "stderr");
    let commands = srv.commands();
    assert!(
        commands
            .iter()
            .all(|c| c == "CAPA" || c == "STLS" || c == "QUIT"),
        "nothing but CAPA, STLS (and QUIT) may be sent in clear text: {commands:?}"
    );
}

#[test]
fn tls_none_without_allow_plaintext_is_78_and_with_it_works() {
    let dovecot = require_dovecot!("--no-stls");
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent = deliver_samples(&alice, 1);
    let env = env_with(Account::new("acct", &dovecot, &alice).tls("none"));
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(78, &dovecot);
    assert_mentions(&out.stderr, "allow_plaintext", "stderr");
    assert_no_auth_attempt(&dovecot, &out);

    let env = env_with(
        Account::new("acct", &dovecot, &alice)
            .tls("none")
            .extra("allow_plaintext = true"),
    );
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
}
