//! popsync's IMAP delivery target (issue 16, DESIGN.md "Delivery") killed
//! with SIGKILL at named instants (stall points of the scripted IMAP
//! server, and during the recovery search) and at timed ones (Dovecot, 200
//! messages), each followed by a clean run: every message in the mailbox
//! exactly once, none left on the POP3 server. Also the corner cases of
//! that recovery: a message without Message-ID, a second copy with the same
//! Message-ID, an IMAP server that is down for the run after the kill.

mod common;
mod imap;

use std::time::Duration;

use imap::case::{
    Case, NOW, REACH, assert_clean_run_delivers_each_once, assert_same_bytes, bodies, crlf_all,
    explain, fault_case, in_fault_server_inbox, message,
};
use imap::fault::{Fault, FaultServer, Point, Trigger};
use imap::require_imap_dovecot;

// --- SIGKILL ---------------------------------------------------------------------

/// Kills popsync when the scripted server stalls at `point` on `trigger`,
/// optionally changes UIDVALIDITY, then checks that a clean run leaves
/// every message in the mailbox exactly once and nothing on the POP3 server.
fn kill_at_stall(
    name: &str,
    srv: FaultServer,
    trigger: Trigger,
    point: Point,
    extra: &str,
    change_uidvalidity: bool,
) {
    let dovecot = require_imap_dovecot!();
    srv.fault(trigger.clone(), Fault::Stall(point));
    let extra = format!("retention = \"0d\"\n{extra}");
    let case = fault_case(dovecot, name, &srv, 4, 6000, "INBOX", &extra);
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "killed",
    );
    let reached = srv.wait_reached(point, REACH);
    let was_running = imap::kill9(&mut child);
    assert!(
        reached && was_running,
        "popsync never stalled at {point:?} on {trigger:?} (reached {reached}, running {was_running}); \
         commands: {:#?}\nstderr: {}",
        srv.commands(),
        imap::spawned_stderr(&case.env, "killed")
    );
    srv.clear_faults();
    srv.release();
    assert!(srv.wait_idle(Duration::from_secs(10)));
    if change_uidvalidity {
        srv.change_uidvalidity("INBOX");
    }
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn killed_after_the_append_line_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "k-line",
        FaultServer::builder().start(),
        Trigger::Append(2),
        Point::AfterAppendLine,
        "",
        false,
    );
}

#[test]
fn killed_mid_literal_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "k-mid",
        FaultServer::builder().start(),
        Trigger::Append(2),
        Point::MidLiteral,
        "",
        false,
    );
}

#[test]
fn killed_after_the_literal_before_the_tagged_ok_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "k-lit",
        FaultServer::builder().start(),
        Trigger::Append(2),
        Point::AfterLiteral,
        "",
        false,
    );
}

#[test]
fn killed_after_the_tagged_ok_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "k-ok",
        FaultServer::builder().start(),
        Trigger::Append(2),
        Point::AfterTaggedOk,
        "",
        false,
    );
}

#[test]
fn killed_after_a_literal_plus_append_line_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "kp-line",
        FaultServer::builder().literal_plus().start(),
        Trigger::Append(3),
        Point::AfterAppendLine,
        "",
        false,
    );
}

#[test]
fn killed_mid_literal_plus_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "kp-mid",
        FaultServer::builder().literal_plus().start(),
        Trigger::Append(3),
        Point::MidLiteral,
        "",
        false,
    );
}

#[test]
fn killed_after_a_literal_plus_before_the_tagged_ok_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "kp-lit",
        FaultServer::builder().literal_plus().start(),
        Trigger::Append(3),
        Point::AfterLiteral,
        "",
        false,
    );
}

#[test]
fn killed_after_the_tagged_ok_of_a_literal_plus_append_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "kp-ok",
        FaultServer::builder().literal_plus().start(),
        Trigger::Append(1),
        Point::AfterTaggedOk,
        "",
        false,
    );
}

#[test]
fn killed_mid_multiappend_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "km-mid",
        FaultServer::builder().multiappend().literal_plus().start(),
        Trigger::Append(1),
        Point::MidLiteral,
        "",
        false,
    );
}

#[test]
fn killed_after_a_multiappend_before_the_tagged_ok_delivers_exactly_once_on_rerun() {
    kill_at_stall(
        "km-lit",
        FaultServer::builder().multiappend().start(),
        Trigger::Append(1),
        Point::AfterLiteral,
        "",
        false,
    );
}

#[test]
fn killed_before_the_tagged_ok_with_received_header_is_found_by_its_id() {
    kill_at_stall(
        "k-token",
        FaultServer::builder().literal_plus().start(),
        Trigger::Append(2),
        Point::AfterLiteral,
        "received_header = true\n",
        false,
    );
}

#[test]
fn killed_before_the_tagged_ok_then_uidvalidity_changed_delivers_exactly_once() {
    kill_at_stall(
        "k-uidv",
        FaultServer::builder().start(),
        Trigger::Append(2),
        Point::AfterLiteral,
        "",
        true,
    );
}

#[test]
fn killed_before_the_tagged_ok_without_uidplus_delivers_exactly_once() {
    kill_at_stall(
        "k-nouidplus",
        FaultServer::builder().without_uidplus().start(),
        Trigger::Append(2),
        Point::AfterLiteral,
        "",
        false,
    );
}

#[test]
fn killed_again_during_the_recovery_search_still_delivers_exactly_once() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(2), Fault::Stall(Point::AfterLiteral));
    let case = fault_case(
        dovecot,
        "k-search",
        &srv,
        4,
        3000,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "first",
    );
    assert!(
        srv.wait_reached(Point::AfterLiteral, REACH),
        "no stall before the tagged OK"
    );
    assert!(imap::kill9(&mut child));
    srv.clear_faults();
    srv.release();
    assert!(srv.wait_idle(Duration::from_secs(10)));

    // The next run must look for the interrupted APPEND: kill it there.
    let before = srv.commands().len();
    srv.fault(
        Trigger::Command("UID SEARCH".into()),
        Fault::Stall(Point::BeforeReply),
    );
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "second",
    );
    let reached = srv.wait_reached(Point::BeforeReply, REACH);
    let running = imap::kill9(&mut child);
    assert!(
        reached && running,
        "the run after a kill before the tagged OK sent no UID SEARCH; commands: {:#?}\nstderr: {}",
        srv.commands().split_off(before),
        imap::spawned_stderr(&case.env, "second")
    );
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

/// Kills a 200-message fetch into Dovecot `delay` after `when` first holds
/// while popsync runs, then runs again: every message exactly once, none
/// left on the POP3 server. (A kill that comes after popsync has finished
/// is reported on stderr; the clean run is checked all the same.)
fn kill_dovecot_fetch(name: &str, when: &dyn Fn(&imap::MailUser) -> bool, delay: Duration) {
    let dovecot = require_imap_dovecot!();
    let target_user = dovecot.add_user(&format!("{name}-imap"), "imap-pw-k");
    let messages: Vec<Vec<u8>> = (1..=200).map(|i| message(name, i, 2500)).collect();
    let case = Case::new(
        dovecot,
        name,
        messages,
        &dovecot.target(&target_user, "INBOX"),
        "retention = \"0d\"\n",
    );
    let started = std::time::Instant::now();
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "killed",
    );
    let hit = imap::wait_while_running(&mut child, Duration::from_secs(60), || when(&target_user));
    if !hit {
        imap::kill9(&mut child);
        panic!(
            "{name}: the kill point was never reached while popsync ran\nstderr: {}",
            imap::spawned_stderr(&case.env, "killed")
        );
    }
    let reached = started.elapsed();
    std::thread::sleep(delay);
    let interrupted = imap::kill9(&mut child);
    eprintln!(
        "{name}: point reached after {reached:?}, kill {delay:?} later {}; \
         {} in the mailbox, {} left on POP3",
        if interrupted {
            "interrupted popsync"
        } else {
            "came after popsync had finished"
        },
        target_user.stored_count("INBOX"),
        case.left_on_pop3().len()
    );
    // Dovecot finishes (or aborts) what it was given before the next run.
    let tmp = target_user.maildir().join("tmp");
    let settle = std::time::Instant::now();
    while std::fs::read_dir(&tmp).map_or(0, |d| d.count()) > 0
        && settle.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = case.run();
    assert_eq!(out.code, 0, "the clean run failed\n{}", explain(&out));
    let got = dovecot.read(&target_user, "INBOX");
    imap::assert_each_exactly_once(&got.bodies(), &case.sent, "after the kill and a clean run");
    assert_same_bytes(&got.bodies(), &crlf_all(&case.sent));
    assert!(
        case.left_on_pop3().is_empty(),
        "{} messages left on the POP3 server",
        case.left_on_pop3().len()
    );
}

fn tmp_count(user: &imap::MailUser) -> usize {
    std::fs::read_dir(user.maildir().join("tmp")).map_or(0, |d| d.count())
}

#[test]
fn dovecot_killed_when_the_append_begins_delivers_exactly_once() {
    kill_dovecot_fetch("kd-begin", &|u| tmp_count(u) >= 1, Duration::ZERO);
}

#[test]
fn dovecot_killed_in_the_middle_of_the_append_delivers_exactly_once() {
    kill_dovecot_fetch("kd-middle", &|u| tmp_count(u) >= 100, Duration::ZERO);
}

#[test]
fn dovecot_killed_once_the_server_has_the_mail_delivers_exactly_once() {
    kill_dovecot_fetch(
        "kd-stored",
        &|u| u.stored_count("INBOX") >= 1,
        Duration::ZERO,
    );
}

#[test]
fn dovecot_killed_while_the_pop3_side_is_fetching_delivers_exactly_once() {
    // The IMAP connection is open (its login is in Dovecot's log as soon as
    // the mailbox was examined), the messages are being spooled.
    kill_dovecot_fetch("kd-spool", &|_| true, Duration::from_millis(150));
}

#[test]
fn dovecot_killed_at_timed_instants_after_the_append_began_delivers_exactly_once() {
    // Seeded by the clock (printed); POPSYNC_TEST_SEED replays a run.
    let seed: u64 = std::env::var("POPSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        });
    eprintln!("dovecot_killed_at_timed_instants: POPSYNC_TEST_SEED={seed}");
    let mut x = seed | 1;
    let mut next = |below: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % below
    };
    // During the MULTIAPPEND, and around the moment Dovecot commits it
    // (before or after popsync's seen-store commit, DELE, QUIT).
    for (n, spread) in [300u64, 300, 60].iter().enumerate() {
        let delay = Duration::from_millis(next(*spread));
        if n < 2 {
            kill_dovecot_fetch(&format!("kd-t{n}"), &|u| tmp_count(u) >= 1, delay);
        } else {
            kill_dovecot_fetch(
                &format!("kd-t{n}"),
                &|u| u.stored_count("INBOX") >= 1,
                delay,
            );
        }
    }
}

// --- corner cases of recovery ---------------------------------------------------

/// A message without Message-ID, about `size` bytes, unique by `i`.
fn message_without_id(tag: &str, i: usize, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: noid{i}@example.org\nSubject: {tag} {i} without Message-ID\n\
         Date: Mon, 2 Jun 2025 09:00:00 +0000\n\n"
    );
    let mut k = 0;
    while m.len() < size {
        m.push_str(&format!("{tag} {i} line {k}\n"));
        k += 1;
    }
    m.into_bytes()
}

#[test]
fn killed_before_an_append_of_a_message_without_message_id_never_loses_it() {
    // The mailbox's last message has the size the interrupted one would
    // have had. "UID n:*" with n past the last UID still names the last
    // message (RFC 3501 6.4.8), so a search by size alone must not take it
    // for the interrupted APPEND.
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    let sent = vec![
        message_without_id("noid", 1, 3000),
        message_without_id("noid", 2, 3000),
    ];
    let first = imap::lf_to_crlf(&sent[0]);
    let mut lookalike = first.clone();
    // Same size, other bytes: another message the user already had.
    let at = lookalike.len() - 10;
    lookalike[at] = b'#';
    srv.insert("INBOX", &lookalike);
    srv.fault(Trigger::Append(1), Fault::Stall(Point::AfterAppendLine));
    let case = in_fault_server_inbox(dovecot, "noid", sent, &srv);
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "killed",
    );
    assert!(srv.wait_reached(Point::AfterAppendLine, REACH));
    assert!(imap::kill9(&mut child));
    srv.clear_faults();
    srv.release();
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let got = bodies(&srv, "INBOX");
    for (i, m) in crlf_all(&case.sent).iter().enumerate() {
        let n = got.iter().filter(|g| *g == m).count();
        assert_eq!(
            n,
            1,
            "message {} is in the mailbox {n} times; left on the POP3 server: {}; \
             commands of the rerun: {:#?}",
            i + 1,
            case.left_on_pop3().len(),
            srv.commands()
                .iter()
                .filter(|c| c.contains("SEARCH") || c.contains("APPEND"))
                .collect::<Vec<_>>()
        );
    }
    assert!(case.left_on_pop3().is_empty());
}

#[test]
fn after_a_kill_an_unreachable_imap_server_fetches_and_deletes_nothing() {
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    srv.fault(Trigger::Append(2), Fault::Stall(Point::AfterLiteral));
    let case = fault_case(
        dovecot,
        "k-down",
        &srv,
        3,
        2000,
        "INBOX",
        "retention = \"0d\"\n",
    );
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "killed",
    );
    assert!(srv.wait_reached(Point::AfterLiteral, REACH));
    assert!(imap::kill9(&mut child));
    srv.clear_faults();
    srv.release();
    assert!(srv.wait_idle(Duration::from_secs(10)));

    // The IMAP server is down for the next run: it closes every connection.
    srv.set_down(true);
    let out = case.run();
    assert_eq!(
        case.left_on_pop3().len(),
        3,
        "mail was deleted from the POP3 server while the IMAP server was down\n{}",
        explain(&out)
    );
    assert_eq!(out.code, 75, "{}", explain(&out));
    assert!(
        out.stderr.contains(&format!("127.0.0.1:{}", srv.port())),
        "stderr does not name the IMAP server\n{}",
        explain(&out)
    );
    srv.set_down(false);
    assert_clean_run_delivers_each_once(&case, &srv, "INBOX");
}

#[test]
fn killed_before_appending_a_second_copy_with_the_same_message_id_never_loses_it() {
    // Mailing lists deliver a message twice with one Message-ID (the list's
    // copy and the direct one). The first copy is the last message in the
    // mailbox when the second's APPEND is interrupted; "UID n:*" with n past
    // it still names it, so the search must not take it for the second.
    let dovecot = require_imap_dovecot!();
    let srv = FaultServer::builder().start();
    let direct = message("dupid", 1, 2000);
    let mut list_copy = b"List-Id: <list.example.org>\n".to_vec();
    list_copy.extend_from_slice(&direct);
    let sent = vec![direct, list_copy];
    srv.fault(Trigger::Append(2), Fault::Stall(Point::AfterAppendLine));
    let case = in_fault_server_inbox(dovecot, "dupid", sent, &srv);
    let mut child = imap::spawn(
        &case.env,
        &["fetch", "--all"],
        &[("POPSYNC_NOW", NOW)],
        "killed",
    );
    assert!(srv.wait_reached(Point::AfterAppendLine, REACH));
    assert!(imap::kill9(&mut child));
    srv.clear_faults();
    srv.release();
    assert!(srv.wait_idle(Duration::from_secs(10)));
    let out = case.run();
    assert_eq!(out.code, 0, "{}", explain(&out));
    let got = bodies(&srv, "INBOX");
    for (i, m) in crlf_all(&case.sent).iter().enumerate() {
        let n = got.iter().filter(|g| *g == m).count();
        assert_eq!(
            n,
            1,
            "copy {} is in the mailbox {n} times; left on the POP3 server: {}; \
             commands: {:#?}",
            i + 1,
            case.left_on_pop3().len(),
            srv.commands()
                .iter()
                .filter(|c| c.contains("SEARCH") || c.contains("APPEND"))
                .collect::<Vec<_>>()
        );
    }
    assert!(case.left_on_pop3().is_empty());
}
