//! Many accounts at once: 200 accounts × 20 messages on one Dovecot with
//! `--jobs 16` all succeed, each Maildir gets exactly its own mail, and a
//! second run fetches nothing. (Timing is measured by bench/, not here.)

mod common;

use common::*;

#[test]
fn two_hundred_accounts_with_sixteen_jobs_all_fetch_exactly_their_mail() {
    let Some(dovecot) = Dovecot::start() else {
        return;
    };
    let env = TestEnv::new();
    let mut blocks = Vec::new();
    let mut expected = Vec::new();
    for a in 0..200 {
        let name = format!("acct{a:03}");
        let user = dovecot.add_user(&name, &format!("pw-{a}"));
        let mut mail = Vec::new();
        for m in 0..20 {
            let msg = format!(
                "From: sender{m}@example.com\nTo: {name}@example.com\nSubject: {name} message {m}\n\nbody of {name}/{m}\n"
            )
            .into_bytes();
            user.deliver(&msg);
            mail.push(msg);
        }
        let maildir = env.maildir(&name);
        blocks.push(account_toml(
            &name, &dovecot, &user, "implicit", &maildir, "",
        ));
        expected.push((maildir, sorted(mail)));
    }
    env.write_accounts(&blocks);

    let out = env.run(&["fetch", "--all", "--jobs", "16", "--json"]);
    out.assert_code_with(0, &dovecot);
    let reports: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(reports.len(), 200);
    for r in &reports {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["fetched"], 20, "{r}");
    }
    for (maildir, mail) in &expected {
        assert_eq!(&maildir_messages(maildir), mail, "{}", maildir.display());
    }

    let again = env.run(&["fetch", "--all", "--jobs", "16", "-q"]);
    again.assert_code_with(0, &dovecot);
    for (maildir, mail) in &expected {
        assert_eq!(maildir_messages(maildir).len(), mail.len());
    }
}
