//! Delivery through a mail delivery agent (procmail, maildrop, `dovecot-lda`):
//! `/bin/sh -c CMD` with the message on stdin, `%F` (envelope sender) and `%T`
//! (the account's user) substituted, shell-quoted.
//!
//! Each message is spooled whole to an unnamed temporary file in the state
//! directory (bounded memory; unlinked at once, so nothing is left behind)
//! and the MDA gets that file as its stdin, only once the message is
//! complete. Whatever happens to popsync meanwhile (a second signal, a
//! SIGKILL), an MDA sees a whole message or none: never end of input in the
//! middle of one. `command_timeout` bounds the MDA and everything it starts
//! (see `command`).
//!
//! Exit 0 means delivered, 75 temporary (the message stays on the server),
//! anything else a failure. An MDA cannot be asked afterwards whether it
//! delivered, so after a crash the message is delivered again: at-least-once.

use std::io::{BufWriter, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::command::{RunError, expand_command, run_shell_on_file};

use super::{
    DeliveryError, Finished, FinishedKind, HeadBuffer, MessageInfo, Prepared, Sink, Target,
    envelope_sender,
};

/// A configured MDA command.
pub struct Mda {
    command: String,
    user: String,
    timeout: Duration,
    spool_dir: PathBuf,
}

impl Mda {
    /// Messages are spooled in `spool_dir` (the state directory: private,
    /// and on disk rather than in a tmpfs) before the MDA sees them.
    pub fn new(command: String, user: String, timeout: Duration, spool_dir: PathBuf) -> Mda {
        Mda {
            command,
            user,
            timeout,
            spool_dir,
        }
    }
}

impl Target for Mda {
    fn delivery(&self) -> crate::config::Delivery {
        crate::config::Delivery::Mda(self.command.clone())
    }

    /// One message at a time: a crash can only make the MDA see again the
    /// one message it was handed last.
    fn batch_limit(&self) -> usize {
        1
    }

    fn prepare_batch(&mut self, n: usize) -> Result<Vec<Prepared>, DeliveryError> {
        Ok((0..n)
            .map(|_| Prepared {
                location: "mda".into(),
                offset: None,
            })
            .collect())
    }

    fn commit(&mut self, batch: Vec<Finished>) -> Result<Vec<String>, DeliveryError> {
        // The MDA took each message when it exited 0; nothing is left to do.
        Ok(batch
            .into_iter()
            .map(|f| match f.kind {
                FinishedKind::Mda(location) => location,
                _ => String::new(),
            })
            .collect())
    }

    fn start(
        &mut self,
        _prepared: &Prepared,
        info: &MessageInfo<'_>,
    ) -> Result<Box<dyn Sink>, DeliveryError> {
        let file =
            tempfile::tempfile_in(&self.spool_dir).map_err(|source| DeliveryError::Write {
                path: self.spool_dir.clone(),
                source,
            })?;
        let mut sink = MdaSink {
            command: self.command.clone(),
            user: self.user.clone(),
            timeout: self.timeout,
            spool_dir: self.spool_dir.clone(),
            spool: BufWriter::with_capacity(64 << 10, file),
            head: Some(HeadBuffer::default()),
            sender: String::new(),
            written: 0,
        };
        if let Some(r) = info.received {
            sink.put(r.as_bytes())?;
        }
        Ok(Box::new(sink))
    }

    fn recover(
        &mut self,
        _pending: &Prepared,
        _started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        Ok(None)
    }
}

/// One message on its way to the MDA: spooled until `finish`, which runs
/// the MDA on the whole of it.
struct MdaSink {
    command: String,
    user: String,
    timeout: Duration,
    spool_dir: PathBuf,
    spool: BufWriter<std::fs::File>,
    /// The start of the message, held until its headers are complete (the
    /// sender for `%F` comes from them).
    head: Option<HeadBuffer>,
    sender: String,
    written: u64,
}

impl MdaSink {
    fn put(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        self.written += data.len() as u64;
        self.spool.write_all(data).map_err(|e| self.spool_error(e))
    }

    fn take_head(&mut self, head: &[u8]) -> Result<(), DeliveryError> {
        self.head = None;
        self.sender = envelope_sender(head);
        self.put(head)
    }

    fn spool_error(&self, source: std::io::Error) -> DeliveryError {
        DeliveryError::Write {
            path: self.spool_dir.clone(),
            source,
        }
    }
}

impl Sink for MdaSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        match self.head.as_mut() {
            Some(head) => match head.push(data) {
                Some(whole) => self.take_head(&whole),
                None => Ok(()),
            },
            None => self.put(data),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, DeliveryError> {
        if let Some(mut head) = self.head.take() {
            let whole = head.finish();
            self.take_head(&whole)?;
        }
        self.spool.flush().map_err(|e| self.spool_error(e))?;
        let mut file = self
            .spool
            .get_ref()
            .try_clone()
            .map_err(|e| self.spool_error(e))?;
        file.rewind().map_err(|e| self.spool_error(e))?;
        let expanded = expand_command(&self.command, &[('F', &self.sender), ('T', &self.user)]);
        let finished = run_shell_on_file(&expanded, file, self.timeout).map_err(|e| match e {
            RunError::Spawn(source) => DeliveryError::MdaSpawn {
                command: self.command.clone(),
                source,
            },
            RunError::TimedOut {
                timeout,
                exited: None,
            } => DeliveryError::MdaTimeout {
                command: self.command.clone(),
                timeout,
            },
            // It exited, but left a child holding stderr: the command as a
            // whole overran command_timeout, and there is no telling what
            // the child was still doing with the message.
            e @ RunError::TimedOut {
                exited: Some(_), ..
            } => DeliveryError::MdaFailed {
                command: self.command.clone(),
                status: e.to_string(),
                stderr: String::new(),
            },
            RunError::Stopped => DeliveryError::MdaFailed {
                command: self.command.clone(),
                status: "killed: popsync was asked to stop; the message stays on the server".into(),
                stderr: String::new(),
            },
        })?;
        let stderr = finished.stderr;
        match finished.status.code() {
            Some(0) => Ok(Finished {
                kind: FinishedKind::Mda(format!("mda:{expanded}")),
                size: self.written,
            }),
            Some(75) => Err(DeliveryError::MdaTemporary {
                command: self.command.clone(),
                stderr,
            }),
            _ => Err(DeliveryError::MdaFailed {
                command: self.command.clone(),
                status: finished.status.to_string(),
                stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Instant;

    const T: Duration = Duration::from_secs(10);

    fn deliver(cmd: &str, msg: &[u8], timeout: Duration) -> Result<Vec<String>, DeliveryError> {
        let spool = tempfile::tempdir().unwrap();
        let mut m = Mda::new(
            cmd.into(),
            "me@example.com".into(),
            timeout,
            spool.path().to_owned(),
        );
        let p = m.prepare_batch(1)?.remove(0);
        let info = MessageInfo {
            server_size: 0,
            received: None,
        };
        let mut s = m.start(&p, &info)?;
        for c in msg.chunks(5) {
            s.write(c)?;
        }
        let f = s.finish()?;
        m.commit(vec![f])
    }

    #[test]
    fn message_reaches_the_mda_on_stdin_with_sender_substituted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let cmd = format!("cat > {}; echo %F >> {}", out.display(), out.display());
        let msg = b"Return-Path: <x@y>\nSubject: hi\n\nbody\n";
        deliver(&cmd, msg, T).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got, [&msg[..], b"x@y\n"].concat());
    }

    #[test]
    fn exit_75_is_temporary_and_others_fail_with_the_mda_stderr() {
        let e = deliver("cat >/dev/null; exit 75", b"S: x\n\nb\n", T).unwrap_err();
        assert!(matches!(e, DeliveryError::MdaTemporary { .. }), "{e}");
        assert_eq!(e.exit_code(), crate::exit::ExitCode::TempFail);
        let e = deliver(
            "cat >/dev/null; echo disk on fire >&2; exit 3",
            b"S: x\n\nb\n",
            T,
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk on fire"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::ExitCode::IoError);
    }

    #[test]
    fn an_mda_that_hangs_is_killed_after_the_timeout() {
        let started = Instant::now();
        let e = deliver("sleep 30", &vec![b'x'; 1 << 20], Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, DeliveryError::MdaTimeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_mda_reads_the_whole_message_from_a_file_that_is_gone_from_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).unwrap();
        // stdin is a regular file, and the spool directory holds no name.
        let cmd = format!(
            "test -f /dev/stdin && test -z \"$(ls -A {})\" && cat > {}",
            spool.display(),
            out.display()
        );
        let mut m = Mda::new(cmd, "me".into(), T, spool.clone());
        let p = m.prepare_batch(1).unwrap().remove(0);
        let info = MessageInfo {
            server_size: 0,
            received: Some("Received: by test\n"),
        };
        let mut s = m.start(&p, &info).unwrap();
        let body = vec![b'z'; 3 << 20];
        s.write(b"Subject: big\n\n").unwrap();
        for c in body.chunks(4096) {
            s.write(c).unwrap();
        }
        let f = s.finish().unwrap();
        assert_eq!(f.size, 18 + 14 + (3 << 20));
        let got = std::fs::read(&out).unwrap();
        assert_eq!(
            got,
            [&b"Received: by test\nSubject: big\n\n"[..], &body].concat()
        );
    }

    #[test]
    fn an_mda_that_leaves_a_child_holding_stderr_is_killed_at_the_timeout() {
        let started = Instant::now();
        let e = deliver(
            "cat >/dev/null; sleep 30 & exit 0",
            b"S: x\n\nb\n",
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, DeliveryError::MdaFailed { .. }), "{e}");
        assert!(e.to_string().contains("command_timeout"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::ExitCode::IoError);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_mda_killed_by_a_signal_is_a_failure() {
        let e = deliver("kill -9 $$", b"S: x\n\nb\n", T).unwrap_err();
        assert!(matches!(e, DeliveryError::MdaFailed { .. }), "{e}");
    }
}
