//! OAuth2 built in (issue 17), the login side: `popsync auth
//! login|status|logout` against the scripted authorization server
//! (`tests/oauth/`): the device flow, `--browser` with PKCE, status, logout,
//! and the config checks. `fetch` with the tokens is `oauth_fetch.rs`.
//! Each test asserts what a user sees: exit codes, stderr, the mail
//! delivered, the token files, and that no token is ever printed.

mod common;
mod fault;
mod oauth;
mod oauthcase;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{TestEnv, assert_mentions, maildir_messages, sorted, toml_string};
use oauth::{
    CLIENT_ID, CODE_GRANT, DEVICE_GRANT, OAuthServer, Poll, REFRESH_GRANT, SCOPES, USER_CODE,
    VERIFICATION_URI,
};

use oauthcase::*;

#[test]
fn device_login_waits_through_pending_and_slow_down_then_stores_tokens_and_fetch_uses_them() {
    let Setup { env, oauth, pop } = setup(
        OAuthServer::builder().polls(&[Poll::Pending, Poll::SlowDown, Poll::Grant]),
        2,
    );
    let out = login(&env, NAME);
    assert!(
        out.stderr.contains(VERIFICATION_URI),
        "stderr:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains(USER_CODE), "stderr:\n{}", out.stderr);
    assert_no_secret(&out, &oauth);

    let device: Vec<_> = oauth
        .requests()
        .into_iter()
        .filter(|r| r.path == "/device")
        .collect();
    assert_eq!(device.len(), 1, "one device authorization request");
    assert_eq!(device[0].field("client_id"), Some(CLIENT_ID));
    assert_eq!(device[0].field("scope"), Some(SCOPES.join(" ").as_str()));

    let polls = oauth.token_requests(DEVICE_GRANT);
    let answers: Vec<Option<&str>> = polls.iter().map(|r| r.error.as_deref()).collect();
    assert_eq!(
        answers,
        [Some("authorization_pending"), Some("slow_down"), None],
        "the client polls until the grant, and stops then"
    );
    let gap = |a: usize, b: usize| polls[b].at.duration_since(polls[a].at);
    assert!(
        gap(0, 1) >= Duration::from_millis(900),
        "polled again after {:?}, before the interval of 1 s",
        gap(0, 1)
    );
    assert!(
        gap(1, 2) >= Duration::from_millis(5_500),
        "after slow_down the interval is 1 + 5 s; the next poll came after {:?}",
        gap(1, 2)
    );
    assert_tokens_stored(&env, &current_refresh(&oauth));

    let out = env.run(&["fetch", NAME, "-vv"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    assert_eq!(maildir_messages(&env.maildir(NAME)), sorted(mail("m", 2)));
    assert!(pop.mailbox().len() == 2, "retention forever: mail stays");
    let current = oauth.current_access_token().expect("an access token");
    assert_eq!(bearer_tokens(&pop), [current]);
    assert!(
        oauth.token_requests(REFRESH_GRANT).is_empty(),
        "a token with an hour left is used as it is"
    );
}

#[test]
fn device_login_denied_by_the_user_is_77_and_stores_nothing() {
    let Setup { env, oauth, .. } = setup(
        OAuthServer::builder().polls(&[Poll::Pending, Poll::Denied]),
        1,
    );
    let out = env.run(&["auth", "login", NAME]);
    out.assert_code(77);
    assert_no_secret(&out, &oauth);
    assert_eq!(
        oauth.token_requests(DEVICE_GRANT).len(),
        2,
        "no poll after access_denied"
    );
    assert!(token_file_text(&env).is_empty(), "no tokens stored");
}

#[test]
fn device_login_answered_expired_token_is_75_saying_to_log_in_again() {
    let Setup { env, oauth, .. } = setup(
        OAuthServer::builder().polls(&[Poll::Pending, Poll::Expired]),
        1,
    );
    let out = env.run(&["auth", "login", NAME]);
    out.assert_code(75);
    assert_mentions(&out.stderr, &format!("popsync auth login {NAME}"), "stderr");
    assert_eq!(
        oauth.token_requests(DEVICE_GRANT).len(),
        2,
        "no poll after expired_token"
    );
    assert!(token_file_text(&env).is_empty(), "no tokens stored");
}

#[test]
fn device_login_stops_by_itself_when_the_code_expires() {
    let Setup { env, oauth, .. } = setup(
        OAuthServer::builder()
            .pending_forever()
            .device_expires_in(3),
        1,
    );
    let out = env.run(&["auth", "login", NAME]);
    out.assert_code(75);
    assert_mentions(&out.stderr, &format!("popsync auth login {NAME}"), "stderr");
    assert!(
        out.elapsed < Duration::from_secs(15),
        "a device code valid 3 s is given up soon after: {:?}",
        out.elapsed
    );
    let polls = oauth.token_requests(DEVICE_GRANT).len();
    assert!(
        (1..=5).contains(&polls),
        "{polls} polls in 3 s at 1 s intervals"
    );
}

#[test]
fn browser_login_uses_pkce_s256_and_the_loopback_redirect() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder(), 1);
    let click = browser(&env, &oauth);
    let click = click.to_string_lossy().into_owned();
    let out = env.run_with_env(
        &["auth", "login", NAME, "--browser"],
        &[("POPSYNC_OAUTH_BROWSER", &click)],
    );
    out.assert_code(0);
    assert_no_secret(&out, &oauth);

    let requests = oauth.requests();
    let authorize = requests
        .iter()
        .find(|r| r.path == "/authorize")
        .expect("the browser opened the authorization endpoint");
    assert_eq!(authorize.param("response_type"), Some("code"));
    assert_eq!(authorize.param("client_id"), Some(CLIENT_ID));
    assert_eq!(authorize.param("code_challenge_method"), Some("S256"));
    assert_eq!(authorize.param("scope"), Some(SCOPES.join(" ").as_str()));
    let redirect = authorize.param("redirect_uri").unwrap_or_default();
    assert!(
        redirect.starts_with("http://127.0.0.1:"),
        "a loopback redirect on 127.0.0.1 (RFC 8252): {redirect}"
    );
    assert!(
        authorize.param("state").is_some_and(|s| s.len() >= 16),
        "a state of some length: {:?}",
        authorize.param("state")
    );
    let exchange = oauth.token_requests(CODE_GRANT);
    assert_eq!(exchange.len(), 1, "one code exchange");
    let verifier = exchange[0].field("code_verifier").unwrap_or_default();
    assert!(
        (43..=128).contains(&verifier.len()),
        "an RFC 7636 verifier: {verifier:?}"
    );
    assert_eq!(
        Some(oauth::s256(verifier).as_str()),
        authorize.param("code_challenge")
    );
    assert_eq!(exchange[0].status, 200, "the server took the verifier");
    assert_tokens_stored(&env, &current_refresh(&oauth));

    let out = env.run(&["fetch", NAME]);
    out.assert_code(0);
    assert_eq!(maildir_messages(&env.maildir(NAME)).len(), 1);
    assert_eq!(
        bearer_tokens(&pop),
        [oauth.current_access_token().unwrap_or_default()]
    );
}

#[test]
fn browser_login_whose_verifier_the_server_refuses_fails_and_stores_nothing() {
    let Setup { env, oauth, .. } = setup(OAuthServer::builder(), 1);
    oauth.tamper_challenge();
    let click = browser(&env, &oauth);
    let click = click.to_string_lossy().into_owned();
    let out = env.run_with_env(
        &["auth", "login", NAME, "--browser"],
        &[("POPSYNC_OAUTH_BROWSER", &click)],
    );
    assert_eq!(out.code, 77, "stderr:\n{}", out.stderr);
    assert_no_secret(&out, &oauth);
    assert_mentions(&out.stderr, "refused the authorization code", "stderr");
    assert!(
        !out.stderr.contains("refresh token"),
        "a refused code is not a refused refresh token:\n{}",
        out.stderr
    );
    let exchange = oauth.token_requests(CODE_GRANT);
    assert_eq!(exchange.len(), 1, "one code exchange");
    assert_eq!(exchange[0].error.as_deref(), Some("invalid_grant"));
    assert_mentions(&out.stderr, "invalid_grant", "stderr");
    assert!(token_file_text(&env).is_empty(), "no tokens stored");
}

#[test]
fn browser_login_refuses_a_redirect_with_a_forged_state() {
    let Setup { env, oauth, .. } = setup(OAuthServer::builder(), 1);
    let click = browser_script(&env, &oauth, Some("forged-by-someone-else"));
    let click = click.to_string_lossy().into_owned();
    let out = env.run_with_env(
        &["auth", "login", NAME, "--browser"],
        &[("POPSYNC_OAUTH_BROWSER", &click)],
    );
    assert_eq!(out.code, 77, "stderr:\n{}", out.stderr);
    assert_mentions(&out.stderr, "did not carry this login's state", "stderr");
    assert!(
        oauth.token_requests(CODE_GRANT).is_empty(),
        "a code that came with a forged state is never exchanged"
    );
    assert!(token_file_text(&env).is_empty(), "no tokens stored");
}

/// The harness itself: the authorization server's PKCE check refuses a
/// wrong verifier and takes the right one.
#[test]
fn the_scripted_server_checks_the_code_verifier() {
    if which("curl").is_none() {
        common::cannot_run("curl is not installed");
        return;
    }
    let oauth = OAuthServer::builder().start();
    let ca = oauth.ca_pem_path().to_string_lossy().into_owned();
    let curl = |args: &[&str]| -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert", &ca])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let code_for = |verifier: &str| -> String {
        let url = format!(
            "{}?response_type=code&client_id={CLIENT_ID}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F\
             &state=xyz&code_challenge={}&code_challenge_method=S256",
            oauth.url("authorize"),
            oauth::s256(verifier)
        );
        let head = curl(&["-D", "-", "-o", "/dev/null", &url]);
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("Location: "))
            .unwrap_or_else(|| panic!("no redirect: {head}"));
        let query = location
            .trim()
            .split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("");
        oauth::form_decode(query)
            .into_iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v)
            .expect("a code in the redirect")
    };
    let right = "a-verifier-of-at-least-forty-three-characters-0123";
    let exchange = |code: &str, verifier: &str| -> serde_json::Value {
        let body = format!(
            "grant_type=authorization_code&code={code}&code_verifier={verifier}\
             &redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F&client_id={CLIENT_ID}"
        );
        serde_json::from_str(&curl(&["-d", &body, &oauth.url("token")])).expect("JSON answer")
    };
    let wrong = exchange(
        &code_for(right),
        "another-verifier-of-forty-three-characters-98765",
    );
    assert_eq!(wrong["error"], "invalid_grant", "{wrong}");
    let good = exchange(&code_for(right), right);
    assert!(good["access_token"].is_string(), "{good}");
    assert!(oauth.accepts(good["access_token"].as_str().unwrap_or_default()));
}

#[test]
fn oauth_with_a_password_or_without_an_oauth_mechanism_is_78() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, Vec::new()).start();
    let env = TestEnv::new();
    let block = account(&env, NAME, &pop, &oauth, "xoauth2", "");
    for (what, bad) in [
        (
            "a password with oauth",
            block.replace(
                "user = \"alice\"\n",
                "user = \"alice\"\npassword = \"secret\"\n",
            ),
        ),
        (
            "oauth with auth = [\"plain\"]",
            block.replace("auth = [\"xoauth2\"]", "auth = [\"plain\"]"),
        ),
    ] {
        write(&env, 10, &[bad]);
        let out = env.run(&["fetch", NAME]);
        assert_eq!(out.code, 78, "{what}: stderr:\n{}", out.stderr);
        assert_eq!(pop.connections(), 0, "{what}: no connection");
    }
}

#[test]
fn auth_status_shows_expiry_scopes_and_refresh_token_and_never_a_token() {
    let Setup { env, oauth, .. } = setup(OAuthServer::builder(), 0);
    let before = env.run(&["auth", "status", NAME]);
    before.assert_code(0);
    assert_mentions(&before.stdout, NAME, "stdout");
    assert_mentions(&before.stdout, "not logged in", "stdout");
    let json = status_json(&env);
    assert_eq!(json["logged_in"], false, "{json}");
    assert_eq!(json["has_refresh_token"], false, "{json}");

    login(&env, NAME);
    let logged_in_at = chrono::Utc::now();
    let after = env.run(&["auth", "status", NAME]);
    after.assert_code(0);
    assert_no_secret(&after, &oauth);
    for scope in SCOPES {
        assert_mentions(&after.stdout, scope, "stdout");
    }
    assert!(
        !after.stdout.to_lowercase().contains("not logged in"),
        "{}",
        after.stdout
    );
    let out = env.run(&["auth", "status", NAME, "--json"]);
    assert_no_secret(&out, &oauth);
    let json = status_json(&env);
    assert_eq!(json["logged_in"], true, "{json}");
    assert_eq!(json["has_refresh_token"], true, "{json}");
    assert_eq!(json["scopes"], serde_json::json!(SCOPES), "{json}");
    let expires = json["expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("expires_at is an RFC 3339 time: {json}"));
    let left = expires.with_timezone(&chrono::Utc) - logged_in_at;
    assert!(
        (3_500..=3_600).contains(&left.num_seconds()),
        "the token expires an hour after login: {left:?} ({json})"
    );
}

#[test]
fn auth_logout_removes_the_tokens() {
    let Setup { env, oauth, pop } = setup(OAuthServer::builder(), 1);
    login(&env, NAME);
    let refresh = current_refresh(&oauth);
    let out = env.run(&["auth", "logout", NAME]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    assert!(
        !token_file_text(&env).contains(&refresh),
        "no token file holds the refresh token after logout"
    );
    assert_eq!(status_json(&env)["logged_in"], false);
    let out = env.run(&["fetch", NAME]);
    assert_eq!(out.code, 77, "no tokens, no login:\n{}", out.stderr);
    assert_mentions(&out.stderr, &format!("popsync auth login {NAME}"), "stderr");
    assert_eq!(pop.mailbox().len(), 1);
}

#[test]
fn each_slow_down_adds_five_seconds_to_the_interval() {
    let Setup { env, oauth, .. } = setup(
        OAuthServer::builder().polls(&[Poll::SlowDown, Poll::SlowDown, Poll::Grant]),
        0,
    );
    let out = env.run(&["auth", "login", NAME, "-vv"]);
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
    let polls = oauth.token_requests(DEVICE_GRANT);
    assert_eq!(polls.len(), 3);
    let gap = |a: usize, b: usize| polls[b].at.duration_since(polls[a].at);
    assert!(gap(0, 1) >= Duration::from_millis(5_500), "{:?}", gap(0, 1));
    assert!(
        gap(1, 2) >= Duration::from_millis(10_500),
        "{:?}",
        gap(1, 2)
    );
}

#[test]
fn browser_login_with_vv_prints_no_secret() {
    let Setup { env, oauth, .. } = setup(OAuthServer::builder(), 0);
    let click = browser(&env, &oauth);
    let click = click.to_string_lossy().into_owned();
    let out = env.run_with_env(
        &["auth", "login", NAME, "--browser", "-vv"],
        &[("POPSYNC_OAUTH_BROWSER", &click)],
    );
    out.assert_code(0);
    assert_no_secret(&out, &oauth);
}

#[test]
fn auth_login_of_an_account_without_oauth_is_78_and_status_lists_every_oauth_account() {
    let oauth = OAuthServer::builder().start();
    let pop = pop_builder(&oauth, Vec::new()).start();
    let env = TestEnv::new();
    let plain = format!(
        "[accounts.plain]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         allow_plaintext = true\nuser = \"alice\"\npassword_command = \"printf secret\"\n\
         deliver = {{ maildir = {} }}\n",
        pop.port(),
        toml_string(&env.maildir("plain").to_string_lossy()),
    );
    write(
        &env,
        10,
        &[account(&env, NAME, &pop, &oauth, "xoauth2", ""), plain],
    );
    let out = env.run(&["auth", "login", "plain"]);
    out.assert_code(78);
    assert_mentions(&out.stderr, "oauth", "stderr");
    assert!(oauth.requests().is_empty(), "nothing asked of the provider");
    let out = env.run(&["auth", "status"]);
    out.assert_code(0);
    assert_mentions(&out.stdout, NAME, "stdout");
}

#[test]
fn a_config_others_can_read_with_a_client_secret_is_78() {
    let oauth = OAuthServer::builder()
        .client_secret("shh-its-secret")
        .start();
    let pop = pop_builder(&oauth, Vec::new()).start();
    let env = TestEnv::new();
    let block = account(&env, NAME, &pop, &oauth, "xoauth2", "").replace(
        &oauth.oauth_toml(true, ""),
        &oauth.oauth_toml(true, ", client_secret = \"shh-its-secret\""),
    );
    write(&env, 10, &[block]);
    fs::set_permissions(env.config_path(), fs::Permissions::from_mode(0o644))
        .expect("chmod config");
    let out = env.run(&["auth", "login", NAME]);
    out.assert_code(78);
    assert!(!out.stderr.contains("shh-its-secret"), "{}", out.stderr);
    assert!(oauth.requests().is_empty(), "nothing sent to the provider");
}
