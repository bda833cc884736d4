//! OAuth2 built in (issue 17), the fetch side: `fetch` with the tokens
//! `auth login` stored, against the POP3 fault server, which accepts XOAUTH2
//! and OAUTHBEARER only with the scripted authorization server's current
//! access token: refresh before expiry and after a refusal, rotation,
//! revocation, a token endpoint that fails, and four jobs on one token.
//! Each test asserts what a user sees: exit codes, stderr, the mail
//! delivered, the token files, and that no token is ever printed.

mod common;
mod fault;
mod oauth;
mod oauthcase;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{TestEnv, assert_mentions, maildir_messages, sorted, toml_string};
use fault::{Fault, FaultServer, On};
use oauth::{OAuthServer, REFRESH_GRANT, TokenFault};

use oauthcase::*;

#[test]
fn tokens_are_shared_only_by_accounts_with_the_same_user() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, mail("s", 1)).start();
    let env = TestEnv::new();
    let same = account(&env, "same", &pop, &oauth, "xoauth2", "");
    let other = account(&env, "other", &pop, &oauth, "xoauth2", "")
        .replace("user = \"alice\"", "user = \"bob\"");
    write(
        &env,
        10,
        &[
            account(&env, NAME, &pop, &oauth, "xoauth2", ""),
            same,
            other,
        ],
    );
    login(&env, NAME);
    let out = env.run(&["auth", "status", NAME, "same", "other", "--json"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    let logged_in: Vec<(String, bool)> = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let name = v["account"].as_str().unwrap_or_default().to_owned();
            (name, v["logged_in"] == true)
        })
        .collect();
    assert_eq!(
        logged_in,
        [
            (NAME.to_owned(), true),
            ("same".to_owned(), true),
            ("other".to_owned(), false)
        ],
        "{}",
        out.stdout
    );
}

#[test]
fn fetch_with_oauthbearer_uses_the_stored_token() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, mail("b", 2)).start();
    let env = TestEnv::new();
    write(
        &env,
        10,
        &[account(&env, NAME, &pop, &oauth, "oauthbearer", "")],
    );
    login(&env, NAME);
    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    assert_eq!(maildir_messages(&env.maildir(NAME)), sorted(mail("b", 2)));
    let auth: Vec<String> = pop
        .commands()
        .into_iter()
        .filter(|c| c.to_ascii_uppercase().starts_with("AUTH"))
        .collect();
    assert!(
        auth[0].to_ascii_uppercase().starts_with("AUTH OAUTHBEARER"),
        "{auth:?}"
    );
    assert_eq!(
        bearer_tokens(&pop),
        [oauth.current_access_token().unwrap_or_default()]
    );
}

#[test]
fn a_token_near_expiry_is_refreshed_and_the_rotated_refresh_token_is_sent_next_time() {
    // 60 s left is under the 5 minutes: every fetch refreshes.
    let Setup { env, oauth, pop } = setup(OAuthServer::builder().expires_in(60), 1);
    login(&env, NAME);
    let first = current_refresh(&oauth);

    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    let refreshes = oauth.token_requests(REFRESH_GRANT);
    assert_eq!(refreshes.len(), 1);
    assert_eq!(refreshes[0].field("refresh_token"), Some(first.as_str()));
    let second = current_refresh(&oauth);
    assert_ne!(first, second, "the server rotated the refresh token");
    assert_tokens_stored(&env, &second);
    assert!(
        !token_file_text(&env).contains(&first),
        "the old refresh token is replaced"
    );
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 1);
    assert_eq!(
        bearer_tokens(&pop),
        [oauth.current_access_token().unwrap_or_default()]
    );

    pop.add_message(b"Subject: later\n\nlater\n", "uid-later");
    let out = env.run(&["fetch", NAME]);
    out.assert_code(0);
    let refreshes = oauth.token_requests(REFRESH_GRANT);
    assert_eq!(refreshes.len(), 2);
    assert_eq!(
        refreshes[1].field("refresh_token"),
        Some(second.as_str()),
        "the rotated refresh token is the one sent next"
    );
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 2);
}

#[test]
fn without_rotation_the_same_refresh_token_keeps_working() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder().expires_in(60).no_rotation(), 1);
    login(&env, NAME);
    let only = current_refresh(&oauth);
    env.run(&["fetch", NAME]).assert_code(0);
    pop.add_message(b"Subject: later\n\nlater\n", "uid-later");
    env.run(&["fetch", NAME]).assert_code(0);
    let sent: Vec<Option<String>> = oauth
        .token_requests(REFRESH_GRANT)
        .iter()
        .map(|r| r.field("refresh_token").map(str::to_owned))
        .collect();
    assert_eq!(sent, [Some(only.clone()), Some(only.clone())]);
    assert_tokens_stored(&env, &only);
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 2);
}

#[test]
fn a_revoked_grant_is_77_telling_to_log_in_again_and_touches_no_mail() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder().expires_in(60), 2);
    login(&env, NAME);
    oauth.revoke_refresh_tokens();
    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(77);
    assert_mentions(&out.stderr, &format!("popsync auth login {NAME}"), "stderr");
    assert_no_secret(&out, &oauth);
    assert_eq!(
        oauth.token_requests(REFRESH_GRANT).len(),
        1,
        "one refresh attempt"
    );
    assert_eq!(pop.mailbox().len(), 2);
    assert!(maildir_messages(&env.maildir(NAME)).is_empty());
}

#[test]
fn a_token_endpoint_answering_500_is_75_and_the_next_run_recovers() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder().expires_in(60), 2);
    login(&env, NAME);
    oauth.fail_token(TokenFault::Http500, Some(1));
    let out = env.run(&["fetch", NAME]);
    out.assert_code(75);
    assert!(maildir_messages(&env.maildir(NAME)).is_empty());
    assert_eq!(pop.mailbox().len(), 2);

    let out = env.run(&["fetch", NAME]);
    out.assert_code(0);
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 2);
}

#[test]
fn a_token_endpoint_that_is_down_is_75() {
    let Setup {
        env,
        mut oauth,
        pop,
    } = setup(OAuthServer::builder().expires_in(60), 1);
    login(&env, NAME);
    oauth.stop();
    let out = env.run(&["fetch", NAME]);
    out.assert_code(75);
    assert!(maildir_messages(&env.maildir(NAME)).is_empty());
    assert_eq!(pop.mailbox().len(), 1);
}

#[test]
fn a_token_the_pop3_server_refuses_is_refreshed_once_and_the_login_retried() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder(), 2);
    login(&env, NAME);
    let stale = oauth.current_access_token().expect("a token");
    // Revoked at the provider, though an hour is left by its expires_in.
    oauth.revoke_access_token();
    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    assert_eq!(
        oauth.token_requests(REFRESH_GRANT).len(),
        1,
        "one forced refresh"
    );
    let fresh = oauth.current_access_token().expect("a new token");
    assert_eq!(bearer_tokens(&pop), [stale, fresh]);
    assert_eq!(maildir_messages(&env.maildir(NAME)), sorted(mail("m", 2)));
}

#[test]
fn a_pop3_server_that_refuses_even_a_fresh_token_is_77_without_looping() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, mail("m", 1))
        .bearer(Arc::new(|_| false))
        .start();
    let env = TestEnv::new();
    write(
        &env,
        10,
        &[account(&env, NAME, &pop, &oauth, "xoauth2", "")],
    );
    login(&env, NAME);
    let out = env.run(&["fetch", NAME]);
    out.assert_code(77);
    assert_no_secret(&out, &oauth);
    assert!(oauth.token_requests(REFRESH_GRANT).len() <= 1);
    let tokens = bearer_tokens(&pop);
    assert!(
        (1..=2).contains(&tokens.len()),
        "AUTH attempts: {}",
        tokens.len()
    );
    // Microsoft's two steps: the error challenge is answered with an
    // empty line, then the server says -ERR.
    let first = &pop.sessions()[0];
    let auth = first
        .iter()
        .position(|l| l.to_ascii_uppercase().starts_with("AUTH"))
        .expect("AUTH");
    let answer_at = if first[auth].split(' ').count() == 3 {
        auth + 1
    } else {
        auth + 2
    };
    assert_eq!(
        first.get(answer_at).map(String::as_str),
        Some(""),
        "{first:?}"
    );
    assert_eq!(pop.mailbox().len(), 1);
}

#[test]
fn a_token_that_runs_out_mid_run_is_refreshed_before_the_next_account() {
    // 310 s: enough for the first account, under 5 minutes left by the time
    // the first account's server (stalling 12 s on RETR) is done.
    let oauth = OAuthServer::builder().expires_in(310).start();
    let slow = pop_builder(&oauth, mail("a", 1))
        .fault(On::Retr(1), Fault::Stall(Duration::from_secs(12)))
        .start();
    let quick = pop_builder(&oauth, mail("b", 1)).start();
    let env = TestEnv::new();
    write(
        &env,
        30,
        &[
            account(&env, "a", &slow, &oauth, "xoauth2", ""),
            account(&env, "b", &quick, &oauth, "xoauth2", ""),
        ],
    );
    login(&env, "a");
    let first = oauth.current_access_token().expect("a token");
    let out = env.run(&["fetch", "--all", "--jobs", "1"]);
    out.assert_code(0);
    assert_eq!(oauth.token_requests(REFRESH_GRANT).len(), 1);
    let second = oauth.current_access_token().expect("a token");
    assert_eq!(bearer_tokens(&slow), [first], "account a: the stored token");
    assert_eq!(
        bearer_tokens(&quick),
        [second],
        "account b: a refreshed one, first time"
    );
    assert_eq!(maildir_messages(&env.maildir("a")).len(), 1);
    assert_eq!(maildir_messages(&env.maildir("b")).len(), 1);
}

#[test]
fn four_jobs_on_one_token_refresh_it_once() {
    let oauth = OAuthServer::builder().expires_in(60).start();
    let pops: Vec<FaultServer> = (0..4)
        .map(|i| pop_builder(&oauth, mail(&format!("j{i}"), 1)).start())
        .collect();
    let env = TestEnv::new();
    let names = ["j0", "j1", "j2", "j3"];
    let accounts: Vec<String> = names
        .iter()
        .zip(&pops)
        .map(|(n, p)| account(&env, n, p, &oauth, "xoauth2", ""))
        .collect();
    write(&env, 20, &accounts);
    login(&env, "j0");
    oauth.set_expires_in(3600);
    // A slow token endpoint: four refreshes would all be under way at once.
    oauth.token_delay(Duration::from_secs(1));
    let out = env.run(&["fetch", "--all", "--jobs", "4"]);
    out.assert_code(0);
    assert_eq!(
        oauth.token_requests(REFRESH_GRANT).len(),
        1,
        "four accounts sharing one token refresh it once"
    );
    let current = oauth.current_access_token().expect("a token");
    for (name, pop) in names.iter().zip(&pops) {
        assert_eq!(
            bearer_tokens(pop),
            std::slice::from_ref(&current),
            "account {name}"
        );
        assert_eq!(
            maildir_messages(&env.maildir(name)).len(),
            1,
            "account {name}"
        );
    }
}

#[test]
fn a_confidential_client_gets_its_secret_from_client_secret_command() {
    let secret = "s3cret-from-the-command";
    let oauth = OAuthServer::builder()
        .client_secret(secret)
        .expires_in(60)
        .start();
    let pop = pop_builder(&oauth, mail("c", 1)).start();
    let env = TestEnv::new();
    let block = account(&env, NAME, &pop, &oauth, "xoauth2", "").replace(
        &oauth.oauth_toml(true, ""),
        &oauth.oauth_toml(
            true,
            &format!(", client_secret_command = \"printf {secret}\""),
        ),
    );
    write(&env, 10, &[block]);
    let out = login(&env, NAME);
    assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(0);
    assert!(!out.stderr.contains(secret) && !out.stdout.contains(secret));
    let token_requests: Vec<_> = oauth
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert!(
        token_requests.iter().all(|r| r.status != 401),
        "{token_requests:?}"
    );
    assert_eq!(oauth.token_requests(REFRESH_GRANT).len(), 1);
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 1);
}

#[test]
fn the_token_endpoint_is_trusted_by_the_accounts_ca_file_by_default() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, mail("t", 1)).tls().start();
    let env = TestEnv::new();
    let both = env.path().join("both-cas.pem");
    let pem = |p: &Path| fs::read_to_string(p).expect("read CA");
    fs::write(&both, pem(pop.ca_pem_path()) + &pem(oauth.ca_pem_path())).expect("write CAs");
    let block = format!(
        "[accounts.{NAME}]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"implicit\"\n\
         ca_file = {ca}\nuser = \"alice\"\nauth = [\"xoauth2\"]\noauth = {oauth}\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\n",
        port = pop.port(),
        ca = toml_string(&both.to_string_lossy()),
        oauth = oauth.oauth_toml(false, ""),
        maildir = toml_string(&env.maildir(NAME).to_string_lossy()),
    );
    write(&env, 10, &[block]);
    login(&env, NAME);
    env.run(&["fetch", NAME]).assert_code(0);
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 1);
}

#[test]
fn a_refused_token_with_the_token_endpoint_down_is_75() {
    let Setup {
        env,
        mut oauth,
        pop,
    } = setup(OAuthServer::builder(), 1);
    login(&env, NAME);
    oauth.revoke_access_token();
    oauth.stop();
    let out = env.run(&["fetch", NAME]);
    out.assert_code(75);
    assert_eq!(pop.mailbox().len(), 1);
    assert!(maildir_messages(&env.maildir(NAME)).is_empty());
}

#[test]
fn four_jobs_whose_shared_token_the_server_refuses_refresh_it_once() {
    let oauth = OAuthServer::builder().start();
    let pops: Vec<FaultServer> = (0..4)
        .map(|i| pop_builder(&oauth, mail(&format!("r{i}"), 1)).start())
        .collect();
    let env = TestEnv::new();
    let names = ["r0", "r1", "r2", "r3"];
    let accounts: Vec<String> = names
        .iter()
        .zip(&pops)
        .map(|(n, p)| account(&env, n, p, &oauth, "xoauth2", ""))
        .collect();
    write(&env, 20, &accounts);
    login(&env, "r0");
    // Revoked at the provider: every job is refused, then forces a refresh.
    oauth.revoke_access_token();
    oauth.token_delay(Duration::from_secs(1));
    let out = env.run(&["fetch", "--all", "--jobs", "4"]);
    out.assert_code(0);
    assert_eq!(
        oauth.token_requests(REFRESH_GRANT).len(),
        1,
        "the first job's refresh serves the other three"
    );
    let current = oauth.current_access_token().expect("a token");
    for (name, pop) in names.iter().zip(&pops) {
        assert_eq!(
            maildir_messages(&env.maildir(name)).len(),
            1,
            "account {name}"
        );
        assert_eq!(
            bearer_tokens(pop).last(),
            Some(&current),
            "account {name} logged in with the refreshed token"
        );
    }
}
