//! The header `filter`, through the real binary against a real, throwaway
//! Dovecot: what it is given (headers, sender, size), what its exit status
//! does (fetch, delete on the server without downloading, skip for now),
//! how a failing, hanging or killed filter is reported, and `--dry-run`.
//! Asserted is what a user would check: the exit code, stdout and stderr,
//! the Maildir, what is left on the server. The contract is
//! /work/shared/DESIGN.md.

mod common;
mod cpf;
mod fault;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{
    Account, Dovecot, TestEnv, assert_contains, maildir_files, maildir_messages, require_dovecot,
    run_rows, sorted,
};
use cpf::*;
use fault::FaultServer;

// ---------------------------------------------------------------------------
// The header filter
// ---------------------------------------------------------------------------

/// ham, spam (subject), ham.
fn ham_spam_ham() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        plain(1, "Minutes of the Monday meeting"),
        mail(
            2,
            "bulk@pharma.example",
            "Best Deals <deals@pharma.example>",
            "Cheap V1AGRA - 90% OFF - BUY NOW",
            3,
        ),
        plain(3, "Re: Minutes of the Monday meeting"),
    )
}

const SPAM_FILTER: &str = "grep -qi '^Subject:.*v1agra' && exit 1; exit 0";

#[test]
fn filter_exit_1_deletes_spam_on_the_server_without_downloading_it() {
    let dovecot = require_dovecot!();
    let (ham1, spam, ham2) = ham_spam_ham();
    let (alice, env) = alice_with(&dovecot, [&ham1, &spam, &ham2], &filter_line(SPAM_FILTER));

    let out = env.run(&["fetch", "alice", "-v"]);
    out.assert_code_with(0, &dovecot);
    assert_contains(
        &out.stderr,
        "without downloading it (filter)",
        "stderr with -v",
    );
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(vec![ham1.clone(), ham2.clone()]),
        "the spam is gone from the server, the rest stays (retention forever)"
    );
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ham1.clone(), ham2.clone()]),
        "the spam never reaches the Maildir"
    );
    assert!(
        !maildir_messages(&env.maildir("alice"))
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("V1AGRA")),
    );

    let again = env.run(&["fetch", "alice", "--json"]);
    again.assert_code_with(0, &dovecot);
    let r = report(&again);
    assert_eq!(
        (r["fetched"].clone(), r["deleted"].clone()),
        (0.into(), 0.into()),
        "{r}"
    );
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![ham1, ham2])
    );
    assert_eq!(
        seen_rows(&env, "alice").len(),
        2,
        "after the next run the store no longer lists the deleted spam"
    );
}

#[test]
fn filter_deletions_are_counted_in_json_deleted() {
    let dovecot = require_dovecot!();
    let (ham1, spam, ham2) = ham_spam_ham();
    let (alice, env) = alice_with(&dovecot, [&ham1, &spam, &ham2], &filter_line(SPAM_FILTER));

    let out = env.run(&["fetch", "--all", "--json"]);
    out.assert_code_with(0, &dovecot);
    let r = report(&out);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["fetched"], 2, "{r}");
    assert_eq!(r["deleted"], 1, "the filter's DELE is counted: {r}");
    assert_eq!(
        r["bytes"],
        (ham1.len() + ham2.len()) as u64,
        "only delivered octets count: {r}"
    );
    assert_eq!(alice.server_messages().len(), 2);
}

#[test]
fn filter_using_size_leaves_a_1mb_message_on_the_server_and_asks_again_next_run() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let small = plain(1, "small");
    let huge = big(2, "a 1 MB attachment", 1_000_000);
    alice.deliver(&small);
    alice.deliver(&huge);
    let env = TestEnv::new();
    let log = env.path().join("filter.log");
    let skip_big = format!(
        "cat >/dev/null; echo %S >> {log}; test %S -gt 500000 && exit 2; exit 0",
        log = log.display()
    );
    let write = |filter: &str| {
        env.write_accounts(&[Account::new("alice", &dovecot, &alice)
            .maildir(&env.maildir("alice"))
            .extra(&filter_line(filter))
            .toml()])
    };
    write(&skip_big);

    let first = env.run(&["fetch", "alice", "--json"]);
    first.assert_code_with(0, &dovecot);
    let r = report(&first);
    assert_eq!(
        (r["fetched"].clone(), r["skipped"].clone()),
        (1.into(), 1.into()),
        "{r}"
    );
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small.clone()]);
    assert_eq!(
        sorted(alice.server_messages()),
        sorted(vec![small.clone(), huge.clone()]),
        "a skipped message stays on the server"
    );
    let mut sizes = log_lines(&log);
    sizes.sort();
    let mut expected = vec![wire_size(&small).to_string(), wire_size(&huge).to_string()];
    expected.sort();
    assert_eq!(sizes, expected, "%S is the size of each message");

    let second = env.run(&["fetch", "alice"]);
    second.assert_code_with(0, &dovecot);
    assert_eq!(
        log_lines(&log)[2..],
        [wire_size(&huge).to_string()],
        "next run the filter is asked again about the skipped message only"
    );
    assert_eq!(maildir_messages(&env.maildir("alice")), vec![small.clone()]);

    let plan = env.run(&["fetch", "alice", "--dry-run"]);
    plan.assert_code_with(0, &dovecot);
    let lines = plan_lines(&plan);
    assert_eq!(lines.len(), 2, "{}", plan.stdout);
    let skip = lines
        .iter()
        .find(|(a, ..)| a == "skip")
        .unwrap_or_else(|| panic!("no skip line:\n{}", plan.stdout));
    assert_eq!(skip.2, wire_size(&huge));
    assert_eq!(skip.3, "filter: exit 2 (not now)");

    // On a faster link the filter lets it through.
    write(&format!("echo %S >> {}; exit 0", log.display()));
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(
        maildir_messages(&env.maildir("alice")),
        sorted(vec![small, huge]),
        "the 1 MB message arrives byte for byte"
    );
}

#[test]
fn filter_gets_the_headers_on_stdin_and_sender_and_size_as_arguments() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let m = plain(7, "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=");
    alice.deliver(&m);
    let env = TestEnv::new();
    let dir = env.path().display().to_string();
    // Exit 2: the filter may be asked again; nothing is delivered.
    let filter = format!("cat > {dir}/headers; echo %F %S > {dir}/args; exit 2");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&filter))
        .toml()]);

    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    let headers = fs::read(env.path().join("headers")).expect("the filter saw stdin");
    let head_end = m
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("message has a header block")
        + 1;
    let text = String::from_utf8_lossy(&headers);
    assert!(
        headers.starts_with(&m[..head_end]),
        "stdin holds the message's header block:\n{text}"
    );
    assert!(
        !text.contains("Body line"),
        "stdin holds no body lines (TOP n 0):\n{text}"
    );
    assert_eq!(
        fs::read_to_string(env.path().join("args")).unwrap(),
        format!("sender7@example.org {}\n", wire_size(&m)),
        "%F is the envelope sender (Return-Path), %S the size"
    );
    assert!(maildir_files(&env.maildir("alice")).is_empty());
}

#[test]
fn spamassassin_style_filter_script_deletes_spam_and_lets_ham_through() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    let ham = plain(1, "Quarterly report");
    let flagged = {
        let mut m = b"X-Spam-Flag: YES\nX-Spam-Status: Yes, score=9.1 required=5.0\n".to_vec();
        m.extend(plain(2, "Important business proposal"));
        m
    };
    let lottery = plain(3, "You are a lottery WINNER!!!");
    let bulk = mail(
        4,
        "newsletter@spam.example",
        "News <newsletter@spam.example>",
        "Weekly news",
        3,
    );
    let encoded_ham = plain(5, "=?UTF-8?Q?R=C3=A9union_de_l=27=C3=A9quipe?=");
    let all = [&ham, &flagged, &lottery, &bulk, &encoded_ham];
    for m in all {
        alice.deliver(m);
    }
    let env = TestEnv::new();
    let log = env.path().join("spamfilter.log");
    let script = env.path().join("spamfilter");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             # headers on stdin, $1 = envelope sender, $2 = size (as in the README)\n\
             headers=$(cat)\n\
             echo \"$1 $2\" >> {log}\n\
             [ \"$2\" -gt 20000000 ] && exit 2\n\
             if printf '%s\\n' \"$headers\" | grep -qi '^X-Spam-Flag: *YES'; then exit 1; fi\n\
             if printf '%s\\n' \"$headers\" | grep -qiE '^Subject:.*(lottery|viagra)'; then exit 1; fi\n\
             case \"$1\" in *@spam.example) exit 1;; esac\n\
             exit 0\n",
            log = log.display()
        ),
    )
    .expect("write the filter script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod filter");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&format!("{} %F %S", script.display())))
        .toml()]);

    let out = env.run(&["fetch", "alice", "--json"]);
    out.assert_code_with(0, &dovecot);
    let r = report(&out);
    assert_eq!(
        (r["fetched"].clone(), r["deleted"].clone()),
        (2.into(), 3.into()),
        "{r}"
    );
    let hams = sorted(vec![ham.clone(), encoded_ham.clone()]);
    assert_eq!(maildir_messages(&env.maildir("alice")), hams);
    assert_eq!(
        sorted(alice.server_messages()),
        hams,
        "spam deleted on the server"
    );
    let mut args = log_lines(&log);
    args.sort();
    let mut expected: Vec<String> = [
        ("sender1@example.org", &ham),
        ("sender2@example.org", &flagged),
        ("sender3@example.org", &lottery),
        ("newsletter@spam.example", &bulk),
        ("sender5@example.org", &encoded_ham),
    ]
    .iter()
    .map(|(s, m)| format!("{s} {}", wire_size(m)))
    .collect();
    expected.sort();
    assert_eq!(args, expected, "the script got sender and size of each");
}

#[test]
fn dry_run_shows_the_filter_decisions_and_changes_nothing() {
    let dovecot = require_dovecot!();
    let (ham, spam, _) = ham_spam_ham();
    let huge = big(3, "video", 200_000);
    let filter = format!("test %S -gt 100000 && exit 2; {SPAM_FILTER}");
    let (alice, env) = alice_with(&dovecot, [&ham, &spam, &huge], &filter_line(&filter));

    let out = env.run(&["fetch", "alice", "--dry-run"]);
    out.assert_code_with(0, &dovecot);
    let lines = plan_lines(&out);
    assert_eq!(lines.len(), 3, "one line per message:\n{}", out.stdout);
    let by_size = |m: &[u8]| {
        lines
            .iter()
            .find(|l| l.2 == wire_size(m))
            .cloned()
            .unwrap_or_else(|| panic!("no plan line of size {}:\n{}", wire_size(m), out.stdout))
    };
    let (action, _, _, _) = by_size(&ham);
    assert_eq!(action, "fetch", "{}", out.stdout);
    let (action, _, _, reason) = by_size(&spam);
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("delete", "filter: exit 1"),
        "{}",
        out.stdout
    );
    let (action, _, _, reason) = by_size(&huge);
    assert_eq!(
        (action.as_str(), reason.as_str()),
        ("skip", "filter: exit 2 (not now)"),
        "{}",
        out.stdout
    );
    // The UIDLs are the server's.
    let peek = env.run(&["peek", "alice", "--json"]);
    peek.assert_code_with(0, &dovecot);
    let mut server_uidls: Vec<String> = json_lines(&peek)
        .iter()
        .map(|m| m["uidl"].as_str().unwrap().to_owned())
        .collect();
    server_uidls.sort();
    let mut planned: Vec<String> = lines.iter().map(|l| l.1.clone()).collect();
    planned.sort();
    assert_eq!(planned, server_uidls);

    assert_eq!(
        alice.server_messages().len(),
        3,
        "--dry-run deletes nothing"
    );
    assert!(maildir_files(&env.maildir("alice")).is_empty());
    assert!(seen_rows(&env, "alice").is_empty());
}

#[test]
fn filter_is_not_asked_about_messages_already_fetched() {
    let dovecot = require_dovecot!();
    let alice = dovecot.add_user("alice", "secret");
    alice.deliver(&plain(1, "one"));
    let env = TestEnv::new();
    let log = env.path().join("filter.log");
    env.write_accounts(&[Account::new("alice", &dovecot, &alice)
        .maildir(&env.maildir("alice"))
        .extra(&filter_line(&format!(
            "grep '^Subject:' >> {}; exit 0",
            log.display()
        )))
        .toml()]);
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log), ["Subject: one"]);
    alice.deliver(&plain(2, "two"));
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log), ["Subject: one", "Subject: two"]);
    env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
    assert_eq!(log_lines(&log).len(), 2, "nothing new, nothing asked");
}

/// A filter that misbehaves (`bad`) on the one of three messages whose
/// subject is "TRIGGER" and accepts the others: that message stays on the
/// server, the others are fetched, and the run exits `code`; once the filter
/// is gone the message arrives and the others are not fetched twice.
struct FilterFailure {
    name: &'static str,
    bad: &'static str,
    /// More account lines (`command_timeout`).
    extra: &'static str,
    code: i32,
    /// The `status` of the `--json` report.
    status: &'static str,
    /// Texts stderr must contain besides "filter" (what went wrong).
    says: &'static [&'static str],
    /// The run ends within this.
    within: Option<Duration>,
}

impl FilterFailure {
    fn run(&self) {
        let dovecot = Dovecot::start().expect("dovecot is installed (checked by the test)");
        let alice = dovecot.add_user("alice", "secret");
        let ok1 = plain(1, "fine");
        let trigger = plain(2, "TRIGGER");
        let ok2 = plain(3, "also fine");
        for m in [&ok1, &trigger, &ok2] {
            alice.deliver(m);
        }
        let filter = format!(
            "if grep -q '^Subject: TRIGGER'; then {}; fi; exit 0",
            self.bad
        );
        let env = dovecot_env(
            &dovecot,
            &[(
                "alice",
                &alice,
                &format!("{}\n{}", filter_line(&filter), self.extra),
            )],
        );
        let out = env.run(&["fetch", "alice", "--json"]);
        out.assert_code_with(self.code, &dovecot);
        assert_eq!(
            maildir_messages(&env.maildir("alice")),
            sorted(vec![ok1.clone(), ok2.clone()]),
            "the other messages are fetched; the one the filter failed on is not"
        );
        assert_eq!(
            alice.server_messages().len(),
            3,
            "the message stays on the server"
        );
        assert_contains(&out.stderr, "filter", "stderr");
        let r = report(&out);
        assert_eq!(r["fetched"], 2, "{r}");

        // The filter heals: the message arrives, the others are not fetched twice.
        let healed = Account::new("alice", &dovecot, &alice)
            .maildir(&env.maildir("alice"))
            .extra(self.extra)
            .toml();
        env.write_accounts(&[healed]);
        env.run(&["fetch", "alice"]).assert_code_with(0, &dovecot);
        assert_eq!(
            maildir_messages(&env.maildir("alice")),
            sorted(vec![ok1, trigger, ok2])
        );
        assert_eq!(report(&out)["status"], self.status);
        for text in self.says {
            assert_contains(&out.stderr, text, "stderr");
        }
        if let Some(limit) = self.within {
            assert!(
                out.elapsed < limit,
                "the filter is killed after command_timeout; the run took {:?}",
                out.elapsed
            );
        }
    }
}

#[test]
fn a_failing_filter_leaves_its_message_on_the_server_and_fetches_the_rest() {
    if !common::dovecot_installed() {
        common::cannot_run(common::DOVECOT_MISSING);
        return;
    }
    let rows = vec![
        FilterFailure {
            name: "filter_exit_75_leaves_the_message_and_exits_75_after_fetching_the_rest",
            bad: "exit 75",
            extra: "",
            code: 75,
            status: "temporary",
            says: &["exited 75 (temporary failure)"],
            within: None,
        },
        FilterFailure {
            name: "filter_failing_exit_status_leaves_the_message_and_exits_74_after_fetching_the_rest",
            bad: "echo spamd unreachable >&2; exit 3",
            extra: "",
            code: 74,
            status: "failed",
            // The filter's own words, and its exit status.
            says: &["spamd unreachable", "exit status: 3"],
            within: None,
        },
        FilterFailure {
            name: "filter_killed_by_a_signal_exits_74",
            bad: "kill -9 $$",
            extra: "",
            code: 74,
            status: "failed",
            says: &["signal: 9"],
            within: None,
        },
        FilterFailure {
            name: "filter_past_command_timeout_is_killed_and_exits_74",
            bad: "exec sleep 30",
            extra: "command_timeout = 2",
            code: 74,
            status: "failed",
            says: &["command_timeout"],
            within: Some(Duration::from_secs(20)),
        },
    ];
    run_rows(rows, 2, |r| r.name, FilterFailure::run);
}

#[test]
fn filter_past_command_timeout_leaves_no_process_of_it_running() {
    let srv = FaultServer::builder().messages(small_mail(1)).start();
    let env = TestEnv::new();
    let pidfile = env.path().join("filter.pid");
    // The filter starts a child (as a pipeline or a script would) and hangs.
    let filter = format!("sleep 30 & echo $! > {}; wait; exit 0", pidfile.display());
    let out = run_fault(
        &env,
        &srv,
        &format!("command_timeout = 1\n{}", filter_line(&filter)),
        &["fetch", "test"],
        None,
    );
    out.assert_code(74);
    assert_contains(&out.stderr, "command_timeout", "stderr");
    let pid = fs::read_to_string(&pidfile)
        .expect("the filter wrote its child's pid")
        .trim()
        .to_owned();
    // Give a kill a moment to land.
    std::thread::sleep(Duration::from_millis(300));
    // Dead means gone or a zombie: an orphan waits for PID 1 to reap it,
    // which some containers' PID 1 never does.
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let alive = state
        .split(") ")
        .nth(1)
        .is_some_and(|rest| !rest.starts_with('Z'));
    if alive {
        // Clean up the process this test started, by its id.
        let _ = std::process::Command::new("kill").arg(&pid).status();
    }
    assert!(
        !alive,
        "the timed-out filter's child (pid {pid}) still runs after popsync exited"
    );
    assert_eq!(srv.mailbox().len(), 1, "the message stays on the server");
}

#[test]
fn filter_arguments_are_shell_quoted_so_a_sender_cannot_inject_commands() {
    let srv = FaultServer::builder()
        .messages(vec![
            b"Return-Path: <a';touch${IFS}injected1;'b@evil.example>\nSubject: x\n\nx\n".to_vec(),
            b"Return-Path: <$(touch${IFS}injected2)@evil.example>\nSubject: y\n\ny\n".to_vec(),
            b"Return-Path: <`touch${IFS}injected3`\"x\"@evil.example>\nSubject: z\n\nz\n".to_vec(),
        ])
        .start();
    let env = TestEnv::new();
    let log = env.path().join("senders");
    let filter = format!("echo %F >> {}; exit 0", log.display());
    let out = run_fault(&env, &srv, &filter_line(&filter), &["fetch", "test"], None);
    out.assert_code(0);
    for n in 1..=3 {
        for dir in [env.path().to_path_buf(), env.path().join("home")] {
            assert!(
                !dir.join(format!("injected{n}")).exists(),
                "the envelope sender ran a command through the filter's shell"
            );
        }
    }
    let senders = log_lines(&log);
    assert_eq!(senders.len(), 3, "{senders:?}");
    assert!(
        senders.iter().any(|s| s.contains("touch${IFS}injected1")),
        "the sender reaches the filter literally: {senders:?}"
    );
    assert_eq!(maildir_messages(&env.maildir(fault::ACCOUNT)).len(), 3);
}

#[test]
fn filter_delete_never_retrieves_the_message_and_quiet_success_prints_nothing() {
    let (ham1, spam, ham2) = ham_spam_ham();
    let srv = FaultServer::builder()
        .messages(vec![ham1.clone(), spam, ham2.clone()])
        .start();
    let env = TestEnv::new();
    let out = run_fault(
        &env,
        &srv,
        &filter_line(SPAM_FILTER),
        &["fetch", "test", "-q"],
        None,
    );
    out.assert_code(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "-q: nothing on success"
    );
    let commands = srv.commands();
    assert!(
        commands.iter().any(|c| c == "TOP 2 0"),
        "headers read with TOP 2 0: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c == "RETR 2"),
        "the condemned message is never downloaded: {commands:?}"
    );
    assert!(commands.iter().any(|c| c == "DELE 2"), "{commands:?}");
    assert!(commands.iter().any(|c| c == "QUIT"), "{commands:?}");
    assert_eq!(srv.mailbox(), vec![ham1.clone(), ham2.clone()]);
    assert_eq!(
        maildir_messages(&env.maildir(fault::ACCOUNT)),
        sorted(vec![ham1, ham2])
    );
}
