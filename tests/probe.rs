//! `popsync probe ACCOUNT [--login] [--json]` through the real binary,
//! against a real Dovecot (and the scripted server of `tests/fault/` for
//! LOGIN-DELAY and EXPIRE): what a person setting up an account reads — the
//! address, TLS version and cipher, the certificate (also when it is not
//! trusted, with a `pin with:` line), CAPA before and after STLS, the SASL
//! mechanisms and the one popsync would use, and whether the login works.
//! The contract is /work/shared/DESIGN.md (probe prints to stdout; exit 77
//! for refused logins and untrusted certificates).

mod common;
mod fault;

use common::{
    Account, Dovecot, Output, TestEnv, assert_contains, maildir_messages, pem_fingerprint,
    require_dovecot, sample_message, sorted, toml_string,
};
use fault::FaultServer;

const PASSWORD: &str = "probe-Secret 42";

/// A TestEnv with one account "acct" (delivery into DIR/mail/acct).
fn env_with(account: Account) -> TestEnv {
    let env = TestEnv::new();
    let maildir = env.maildir("acct");
    env.write_accounts(&[account.maildir(&maildir).toml()]);
    env
}

/// The value of the first stdout line `KEY: value` (probe pads the key).
fn field<'a>(out: &'a Output, key: &str) -> Option<&'a str> {
    out.stdout.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

#[track_caller]
fn expect_field<'a>(out: &'a Output, key: &str) -> &'a str {
    field(out, key)
        .unwrap_or_else(|| panic!("probe printed no {key:?} line; stdout:\n{}", out.stdout))
}

/// The pin printed on the `pin with: tls_fingerprint = "..."` line.
#[track_caller]
fn printed_pin(out: &Output) -> String {
    let line = expect_field(out, "pin with");
    line.strip_prefix("tls_fingerprint = \"")
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or_else(|| panic!("`pin with:` line is not `tls_fingerprint = \"...\"`: {line:?}"))
        .to_owned()
}

/// Lines that show the certificate: subject, issuer, and its sha256 line.
#[track_caller]
fn assert_certificate_shown(out: &Output, dovecot: &Dovecot, subject: &str, issuer: &str) {
    assert_contains(
        expect_field(out, "certificate"),
        &format!("subject {subject}"),
        "the certificate: line",
    );
    assert_contains(&out.stdout, &format!("issuer  {issuer}"), "stdout");
    assert_contains(&out.stdout, "valid ", "stdout (validity)");
    let pin = pem_fingerprint(&dovecot.served_cert());
    assert!(
        out.stdout.lines().any(|l| l.trim() == pin),
        "probe should print the certificate's sha256 {pin}; stdout:\n{}",
        out.stdout
    );
    assert_eq!(printed_pin(out), pin, "the pin with: line");
}

#[test]
fn probe_over_implicit_tls_shows_tls_certificate_and_capabilities() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice));

    let out = env.run(&["probe", "acct"]);
    out.assert_code_with(0, &dovecot);
    let port = dovecot.pop3s_port();
    assert_eq!(expect_field(&out, "server"), format!("127.0.0.1:{port}"));
    assert_eq!(expect_field(&out, "address"), format!("127.0.0.1:{port}"));
    let tls = expect_field(&out, "tls");
    assert!(
        tls.starts_with("TLSv1.3") || tls.starts_with("TLSv1.2"),
        "tls: {tls:?}"
    );
    assert!(tls.contains(", "), "tls: version, cipher: {tls:?}");
    assert_certificate_shown(&out, &dovecot, "CN=localhost", "CN=popsync test CA");
    assert_eq!(expect_field(&out, "verified"), "yes");
    let sasl: Vec<&str> = expect_field(&out, "sasl").split(' ').collect();
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"] {
        assert!(sasl.contains(&mech), "sasl: {sasl:?} lacks {mech}");
    }
    assert_eq!(expect_field(&out, "would use"), "SCRAM-SHA-256");
    assert_eq!(expect_field(&out, "pipelining"), "yes");
    assert!(field(&out, "login-delay").is_some(), "{}", out.stdout);
    assert!(field(&out, "expire").is_some(), "{}", out.stdout);
    assert!(
        field(&out, "capa before STLS").is_none(),
        "no STLS over implicit TLS"
    );
    assert!(field(&out, "login").is_none(), "no login without --login");
    // What was asked for goes to stdout; stderr stays quiet on success.
    assert!(out.stderr.trim().is_empty(), "stderr: {}", out.stderr);
}

#[test]
fn probe_over_starttls_shows_capa_before_and_after_stls() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice).tls("starttls"));

    let out = env.run(&["probe", "acct"]);
    out.assert_code_with(0, &dovecot);
    let before: Vec<&str> = expect_field(&out, "capa before STLS")
        .split(" | ")
        .collect();
    assert!(before.contains(&"STLS"), "capa before STLS: {before:?}");
    // CAPA asked again inside TLS: Dovecot no longer lists STLS there.
    let after: Vec<&str> = expect_field(&out, "capa").split(" | ").collect();
    assert!(!after.contains(&"STLS"), "capa after STLS: {after:?}");
    assert!(after.iter().any(|c| c.starts_with("SASL ")), "{after:?}");
    assert!(expect_field(&out, "tls").starts_with("TLSv1."));
    assert_certificate_shown(&out, &dovecot, "CN=localhost", "CN=popsync test CA");
    assert_eq!(expect_field(&out, "would use"), "SCRAM-SHA-256");
    assert_eq!(expect_field(&out, "pipelining"), "yes");
}

#[test]
fn probe_login_reports_ok_with_the_mechanism_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let message = sample_message(1, 3);
    alice.deliver(&message);
    let env = env_with(Account::new("acct", &dovecot, &alice).extra("retention = \"0d\""));

    let out = env.run(&["probe", "acct", "--login"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(expect_field(&out, "login"), "ok (SCRAM-SHA-256)");
    assert!(field(&out, "capa after login").is_some(), "{}", out.stdout);
    assert_eq!(
        alice.server_messages().len(),
        1,
        "probe must not delete anything"
    );
    assert!(
        maildir_messages(&env.maildir("acct")).is_empty(),
        "probe must not download anything"
    );

    // A forced mechanism is what probe uses and reports.
    let env = env_with(Account::new("acct", &dovecot, &alice).extra("auth = [\"plain\"]"));
    let out = env.run(&["probe", "acct", "--login"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(expect_field(&out, "would use"), "PLAIN");
    assert_eq!(expect_field(&out, "login"), "ok (PLAIN)");
}

#[test]
fn probe_login_with_a_wrong_password_is_77_and_says_failed() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice).password("wrong password"));

    let out = env.run(&["probe", "acct", "--login"]);
    out.assert_code_with(77, &dovecot);
    assert_eq!(expect_field(&out, "login"), "failed");
    // The facts found before the login are still there.
    assert_eq!(expect_field(&out, "would use"), "SCRAM-SHA-256");
    assert!(
        out.stderr.to_lowercase().contains("authentication failed"),
        "stderr: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("wrong password") && !out.stderr.contains("wrong password"));
}

#[test]
fn probe_shows_an_untrusted_certificate_with_a_pin_line_and_exits_77() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    for tls in ["implicit", "starttls"] {
        let env = env_with(
            Account::new("acct", &dovecot, &alice)
                .tls(tls)
                .without_ca_file(),
        );
        let out = env.run(&["probe", "acct", "--login"]);
        out.assert_code_with(77, &dovecot);
        assert_certificate_shown(&out, &dovecot, "CN=localhost", "CN=popsync test CA");
        assert!(
            expect_field(&out, "verified").starts_with("NO"),
            "tls = {tls}: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("not trusted"),
            "tls = {tls}: stderr: {}",
            out.stderr
        );
        assert!(
            field(&out, "login").is_none_or(|l| l != "ok" && !l.starts_with("ok ")),
            "no login over an untrusted connection: {}",
            out.stdout
        );
    }
}

#[test]
fn probe_shows_an_expired_certificate_and_says_so() {
    let dovecot = require_dovecot!("--cert", "expired");
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice));
    let out = env.run(&["probe", "acct"]);
    out.assert_code_with(77, &dovecot);
    assert_certificate_shown(&out, &dovecot, "CN=localhost", "CN=popsync test CA");
    let validity = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("valid "))
        .unwrap_or_default();
    assert!(
        validity.contains("2020") && validity.contains("2021"),
        "validity 2020 .. 2021: {validity:?}"
    );
    assert!(
        out.stdout.contains("expired") || out.stderr.contains("expired"),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn probe_json_parses_with_the_documented_fields() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice).tls("starttls"));

    let out = env.run(&["probe", "acct", "--login", "--json"]);
    out.assert_code_with(0, &dovecot);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one JSON object on one line:\n{}",
        out.stdout
    );
    let j: serde_json::Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("probe --json is not JSON ({e}):\n{}", out.stdout));
    let port = dovecot.pop3_port();
    assert_eq!(j["account"], "acct");
    assert_eq!(j["server"], format!("127.0.0.1:{port}"));
    assert_eq!(j["address"], format!("127.0.0.1:{port}"));
    assert!(
        j["tls_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{j}"
    );
    assert!(
        j["tls_cipher"].as_str().is_some_and(|c| !c.is_empty()),
        "{j}"
    );
    let cert = &j["certificates"][0];
    assert_eq!(cert["subject"], "CN=localhost", "{j}");
    assert_eq!(cert["issuer"], "CN=popsync test CA", "{j}");
    assert!(
        cert["not_before"].is_string() && cert["not_after"].is_string(),
        "{j}"
    );
    assert_eq!(
        cert["sha256"],
        pem_fingerprint(&dovecot.served_cert()),
        "{j}"
    );
    assert_eq!(j["certificate_verified"], true, "{j}");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    };
    assert!(
        strings(&j["capa_before_tls"]).contains(&"STLS".to_owned()),
        "{j}"
    );
    assert!(!strings(&j["capa"]).contains(&"STLS".to_owned()), "{j}");
    let sasl = strings(&j["sasl"]);
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256"] {
        assert!(sasl.contains(&mech.to_owned()), "sasl lacks {mech}: {j}");
    }
    assert_eq!(j["would_use"], "SCRAM-SHA-256", "{j}");
    assert!(j["login_delay"].is_null(), "{j}");
    assert!(j["expire"].is_null(), "{j}");
    assert_eq!(j["pipelining"], true, "{j}");
    assert_eq!(j["login"], "ok (SCRAM-SHA-256)", "{j}");
    assert!(j["capa_after_login"].is_array(), "{j}");
    assert!(j["error"].is_null(), "{j}");
}

#[test]
fn probe_json_of_an_untrusted_certificate_has_the_error_and_the_certificate() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", PASSWORD);
    let env = env_with(Account::new("acct", &dovecot, &alice).without_ca_file());
    let out = env.run(&["probe", "acct", "--json"]);
    out.assert_code_with(77, &dovecot);
    let j: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("probe --json is not JSON ({e}):\n{}", out.stdout));
    assert_eq!(j["certificate_verified"], false, "{j}");
    assert_eq!(
        j["certificates"][0]["sha256"],
        pem_fingerprint(&dovecot.served_cert()),
        "{j}"
    );
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("not trusted")),
        "{j}"
    );
}

#[test]
fn fingerprint_printed_by_probe_pins_the_certificate_for_fetch() {
    let dovecot = require_dovecot!("--cert", "selfsigned");
    let alice = dovecot.add_user("alice", PASSWORD);
    let sent: Vec<Vec<u8>> = (1..=2)
        .map(|i| {
            let m = sample_message(i, 2);
            alice.deliver(&m);
            m
        })
        .collect();
    let unpinned = Account::new("acct", &dovecot, &alice).without_ca_file();

    // A self-signed certificate: not trusted, but shown with its pin.
    let env = env_with(unpinned);
    let out = env.run(&["probe", "acct"]);
    out.assert_code_with(77, &dovecot);
    let pin = printed_pin(&out);

    // Pasted into the config, it makes fetch work, without any ca_file.
    let env = env_with(
        Account::new("acct", &dovecot, &alice)
            .without_ca_file()
            .extra(&format!("tls_fingerprint = {}", toml_string(&pin))),
    );
    let out = env.run(&["fetch", "acct"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(maildir_messages(&env.maildir("acct")), sorted(sent));
    let out = env.run(&["probe", "acct", "--login"]);
    out.assert_code_with(0, &dovecot);
    assert_eq!(expect_field(&out, "verified"), "yes");
    assert_eq!(expect_field(&out, "login"), "ok (SCRAM-SHA-256)");
}

#[test]
fn probe_shows_login_delay_expire_and_no_pipelining() {
    let srv = FaultServer::builder()
        .capa(&[
            "USER",
            "UIDL",
            "TOP",
            "RESP-CODES",
            "LOGIN-DELAY 900",
            "EXPIRE 30",
            "SASL PLAIN",
        ])
        .tls()
        .start();
    let env = TestEnv::new();
    let config = format!(
        "[defaults]\nstate_dir = {state}\ntimeout = 5\n\n[accounts.acct]\n\
         host = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\nca_file = {ca}\n\
         user = \"alice\"\npassword = \"secret\"\n\
         deliver = {{ maildir = {maildir} }}\n",
        state = toml_string(&env.path().join("state").to_string_lossy()),
        port = srv.port(),
        ca = toml_string(&srv.ca_pem_path().to_string_lossy()),
        maildir = toml_string(&env.path().join("mail").to_string_lossy()),
    );
    let out = env.run_config(&config, &["probe", "acct"]);
    out.assert_code(0);
    assert_eq!(expect_field(&out, "login-delay"), "900 s");
    assert_eq!(expect_field(&out, "expire"), "30 days");
    assert_eq!(expect_field(&out, "pipelining"), "no");
    assert_eq!(expect_field(&out, "sasl"), "PLAIN");
    assert_eq!(expect_field(&out, "would use"), "PLAIN");
    assert_eq!(
        printed_pin(&out),
        srv.fingerprint(),
        "the pin of the fault server's certificate"
    );
    // Without --login nothing but CAPA (and QUIT) is sent.
    let commands = srv.commands();
    assert!(
        commands.iter().all(|c| c == "CAPA" || c == "QUIT"),
        "{commands:?}"
    );

    let Output {
        code,
        stdout,
        stderr,
        ..
    } = env.run_config(&config, &["probe", "acct", "--json"]);
    assert_eq!(code, 0, "stderr:\n{stderr}");
    let j: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(j["login_delay"], 900, "{j}");
    assert!(
        j["expire"].as_str().is_some_and(|e| e.contains("30")),
        "{j}"
    );
    assert_eq!(j["pipelining"], false, "{j}");
}
