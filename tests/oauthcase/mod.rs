//! Helpers shared by `oauth_login.rs` and `oauth_fetch.rs`: accounts with
//! `oauth` on the scripted authorization server and the POP3 fault server,
//! `auth login` runs (device flow, and a scripted browser for `--browser`),
//! the token files, and the check that no secret is ever printed.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::common::{Output, TestEnv, toml_string};
use crate::fault::{self, FaultServer};
use crate::oauth::{self, OAuthServer};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The account most tests use.
pub const NAME: &str = "work";

pub fn mail(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (1..=n)
        .map(|i| {
            format!("Subject: {tag} {i}\nFrom: {tag}@example.org\n\n{tag} body {i}\n").into_bytes()
        })
        .collect()
}

/// A POP3 server that offers XOAUTH2 and OAUTHBEARER and takes only the
/// current access token of `oauth` (for user alice).
pub fn pop_builder(oauth: &OAuthServer, mail: Vec<Vec<u8>>) -> fault::Builder {
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
pub fn account(
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
pub fn write(env: &TestEnv, timeout: u64, accounts: &[String]) {
    let mut toml = format!("{}timeout = {timeout}\n", env.defaults_toml());
    for a in accounts {
        toml.push('\n');
        toml.push_str(a);
    }
    env.write_config(&toml);
}

/// One authorization server, one POP3 server with `n` messages, one
/// account `work` using XOAUTH2.
pub struct Setup {
    pub env: TestEnv,
    pub oauth: OAuthServer,
    pub pop: FaultServer,
}

pub fn setup(oauth: oauth::Builder, n: usize) -> Setup {
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
pub fn login(env: &TestEnv, name: &str) -> Output {
    let out = env.run(&["auth", "login", name]);
    out.assert_code(0);
    out
}

/// Every bearer token the POP3 server was sent, one per AUTH, in order
/// (decoded from the XOAUTH2 / OAUTHBEARER initial responses).
pub fn bearer_tokens(pop: &FaultServer) -> Vec<String> {
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
pub fn assert_no_secret(out: &Output, oauth: &OAuthServer) {
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
pub fn token_files(env: &TestEnv) -> Vec<(PathBuf, u32)> {
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
pub fn token_file_text(env: &TestEnv) -> String {
    token_files(env)
        .iter()
        .map(|(p, _)| fs::read_to_string(p).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tokens are stored in `state/oauth/` (dir 0700, files 0600), holding
/// the refresh token `refresh`.
#[track_caller]
pub fn assert_tokens_stored(env: &TestEnv, refresh: &str) {
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
pub fn current_refresh(oauth: &OAuthServer) -> String {
    let tokens = oauth.refresh_tokens();
    assert_eq!(tokens.len(), 1, "refresh tokens still good: {tokens:?}");
    tokens[0].clone()
}

/// A "browser" for `POPSYNC_OAUTH_BROWSER`: a script that, like
/// xdg-open, returns at once and leaves curl to open the URL, follow the
/// authorization server's redirect to popsync's loopback address, and
/// save the page it gets in DIR/browser.page.
pub fn browser(env: &TestEnv, oauth: &OAuthServer) -> PathBuf {
    browser_script(env, oauth, None)
}

/// `browser`, but the redirect's `state` is replaced by `forged` before
/// it reaches popsync (a cross-site request forgery), when given.
pub fn browser_script(env: &TestEnv, oauth: &OAuthServer, forged: Option<&str>) -> PathBuf {
    if which("curl").is_none() {
        crate::common::cannot_run("curl is not installed (the test's browser)");
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

pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// `auth status NAME --json`: the object of the account.
#[track_caller]
pub fn status_json(env: &TestEnv) -> serde_json::Value {
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
