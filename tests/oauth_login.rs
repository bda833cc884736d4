//! OAuth2 built in (issue 17): `popsync auth login|status|logout` against
//! the scripted authorization server (`tests/oauth/`), and `fetch` with the
//! stored tokens against the POP3 fault server, which accepts XOAUTH2 and
//! OAUTHBEARER only with the authorization server's current access token.
//! Each test asserts what a user sees: exit codes, stderr, the mail
//! delivered, the token files, and that no token is ever printed.

mod common;
mod fault;
mod oauth;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{Output, TestEnv, assert_mentions, maildir_messages, sorted, toml_string};
use fault::{Fault, FaultServer, On};
use oauth::{
    CLIENT_ID, CODE_GRANT, DEVICE_GRANT, OAuthServer, Poll, REFRESH_GRANT, SCOPES, TokenFault,
    USER_CODE, VERIFICATION_URI,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The account most tests use.
const NAME: &str = "work";

fn mail(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (1..=n)
        .map(|i| {
            format!("Subject: {tag} {i}\nFrom: {tag}@example.org\n\n{tag} body {i}\n").into_bytes()
        })
        .collect()
}

/// A POP3 server that offers XOAUTH2 and OAUTHBEARER and takes only the
/// current access token of `oauth` (for user alice).
fn pop_builder(oauth: &OAuthServer, mail: Vec<Vec<u8>>) -> fault::Builder {
    FaultServer::builder()
        .capa(&[
            "USER",
            "UIDL",
            "TOP",
            "PIPELINING",
            "RESP-CODES",
            "SASL XOAUTH2 OAUTHBEARER",
        ])
        .credentials("alice", "no password is good here")
        .bearer(oauth.bearer_check())
        .messages(mail)
}

/// An account block for `pop` with `mechanism` and the custom provider on
/// `oauth`, delivering into `env.maildir(name)`.
fn account(
    env: &TestEnv,
    name: &str,
    pop: &FaultServer,
    oauth: &OAuthServer,
    mechanism: &str,
    extra: &str,
) -> String {
    format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
         allow_plaintext = true\nuser = \"alice\"\nauth = [\"{mechanism}\"]\noauth = {oauth}\n\
         deliver = {{ maildir = {maildir} }}\nreceived_header = false\n{extra}\n",
        port = pop.port(),
        oauth = oauth.oauth_toml(true, ""),
        maildir = toml_string(&env.maildir(name).to_string_lossy()),
    )
}

/// `[defaults]` (state in DIR/state, a timeout of `timeout` s) and the
/// account blocks, written as the config.
fn write(env: &TestEnv, timeout: u64, accounts: &[String]) {
    let mut toml = format!("{}timeout = {timeout}\n", env.defaults_toml());
    for a in accounts {
        toml.push('\n');
        toml.push_str(a);
    }
    env.write_config(&toml);
}

/// One authorization server, one POP3 server with `n` messages, one
/// account `work` using XOAUTH2.
struct Setup {
    env: TestEnv,
    oauth: OAuthServer,
    pop: FaultServer,
}

fn setup(oauth: oauth::Builder, n: usize) -> Setup {
    let oauth = oauth.start();
    let pop = pop_builder(&oauth, mail("m", n)).start();
    let env = TestEnv::new();
    write(
        &env,
        10,
        &[account(&env, NAME, &pop, &oauth, "xoauth2", "")],
    );
    Setup { env, oauth, pop }
}

/// `popsync auth login NAME` (device flow), which must succeed.
#[track_caller]
fn login(env: &TestEnv, name: &str) -> Output {
    let out = env.run(&["auth", "login", name]);
    out.assert_code(0);
    out
}

/// Every bearer token the POP3 server was sent, one per AUTH, in order
/// (decoded from the XOAUTH2 / OAUTHBEARER initial responses).
fn bearer_tokens(pop: &FaultServer) -> Vec<String> {
    let mut tokens = Vec::new();
    for session in pop.sessions() {
        for (i, line) in session.iter().enumerate() {
            let words: Vec<&str> = line.split(' ').collect();
            if !words[0].eq_ignore_ascii_case("AUTH") {
                continue;
            }
            let ir = match words.get(2) {
                Some(ir) => (*ir).to_owned(),
                None => session.get(i + 1).cloned().unwrap_or_default(),
            };
            let decoded = B64.decode(ir.trim()).unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded).into_owned();
            let token = text
                .split('\x01')
                .find_map(|f| f.strip_prefix("auth=Bearer "))
                .unwrap_or_else(|| panic!("no bearer token in the AUTH exchange {session:?}"));
            tokens.push(token.to_owned());
        }
    }
    tokens
}

/// No token, code or refresh token `oauth` issued appears in `out`, nor
/// an XOAUTH2 / OAUTHBEARER initial response carrying one.
#[track_caller]
fn assert_no_secret(out: &Output, oauth: &OAuthServer) {
    let both = format!("{}\n{}", out.stdout, out.stderr);
    for secret in oauth.issued_secrets() {
        assert!(
            !both.contains(&secret),
            "popsync printed a secret the authorization server issued ({secret}):\n{both}"
        );
        for ir in [
            format!("user=alice\x01auth=Bearer {secret}\x01\x01"),
            format!("n,a=alice,\x01auth=Bearer {secret}\x01\x01"),
        ] {
            assert!(
                !both.contains(&B64.encode(ir)),
                "popsync printed a SASL initial response with a token:\n{both}"
            );
        }
    }
}

/// The files under `state/oauth`, with their modes.
fn token_files(env: &TestEnv) -> Vec<(PathBuf, u32)> {
    let dir = env.state_dir().join("oauth");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(PathBuf, u32)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let mode = fs::metadata(&p)
                .expect("stat token file")
                .permissions()
                .mode()
                & 0o777;
            (p, mode)
        })
        .collect();
    files.sort();
    files
}

/// The text of every token file.
fn token_file_text(env: &TestEnv) -> String {
    token_files(env)
        .iter()
        .map(|(p, _)| fs::read_to_string(p).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tokens are stored in `state/oauth/` (dir 0700, files 0600), holding
/// the refresh token `refresh`.
#[track_caller]
fn assert_tokens_stored(env: &TestEnv, refresh: &str) {
    let dir = env.state_dir().join("oauth");
    let files = token_files(env);
    assert!(!files.is_empty(), "no token file in {}", dir.display());
    let dir_mode = fs::metadata(&dir)
        .expect("stat oauth dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "mode of {}", dir.display());
    for (path, mode) in &files {
        assert_eq!(*mode, 0o600, "mode of {}", path.display());
    }
    assert!(
        token_file_text(env).contains(refresh),
        "the token files should hold the refresh token the server issued last"
    );
}

/// The refresh token the server issued last (the only one still good).
fn current_refresh(oauth: &OAuthServer) -> String {
    let tokens = oauth.refresh_tokens();
    assert_eq!(tokens.len(), 1, "refresh tokens still good: {tokens:?}");
    tokens[0].clone()
}

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

/// A "browser" for `POPSYNC_OAUTH_BROWSER`: a script that, like
/// xdg-open, returns at once and leaves curl to open the URL, follow the
/// authorization server's redirect to popsync's loopback address, and
/// save the page it gets in DIR/browser.page.
fn browser(env: &TestEnv, oauth: &OAuthServer) -> PathBuf {
    browser_script(env, oauth, None)
}

/// `browser`, but the redirect's `state` is replaced by `forged` before
/// it reaches popsync (a cross-site request forgery), when given.
fn browser_script(env: &TestEnv, oauth: &OAuthServer, forged: Option<&str>) -> PathBuf {
    if which("curl").is_none() {
        common::cannot_run("curl is not installed (the test's browser)");
    }
    let path = env.path().join("browser.sh");
    let page = env.path().join("browser.page");
    let forge = match forged {
        None => String::new(),
        Some(state) => format!(" | sed 's/state=[^&]*/state={state}/'"),
    };
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {log}\n\
         (loc=$(curl -sS --max-time 20 --cacert {ca} -o /dev/null -w '%{{redirect_url}}' \"$1\"{forge}) && \
         curl -sS --max-time 20 -o {page} \"$loc\") </dev/null >/dev/null 2>{err} &\n\
         exit 0\n",
        log = sh_quote(&env.path().join("browser.log")),
        ca = sh_quote(oauth.ca_pem_path()),
        page = sh_quote(&page),
        err = sh_quote(&env.path().join("browser.err")),
    );
    fs::write(&path, script).expect("write browser script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod browser");
    path
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
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

/// `auth status NAME --json`: the object of the account.
#[track_caller]
fn status_json(env: &TestEnv) -> serde_json::Value {
    let out = env.run(&["auth", "status", NAME, "--json"]);
    out.assert_code(0);
    let value: serde_json::Value = out
        .stdout
        .lines()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON object on stdout:\n{}", out.stdout));
    assert_eq!(value["account"], NAME, "{value}");
    value
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
