//! Delivery through a mail delivery agent (procmail, maildrop, `dovecot-lda`):
//! `/bin/sh -c CMD` with the message on stdin, `%F` (envelope sender) and `%T`
//! (the account's user) substituted, shell-quoted.
//!
//! Exit 0 means delivered, 75 temporary (the message stays on the server),
//! anything else a failure. An MDA cannot be asked afterwards whether it
//! delivered, so after a crash the message is delivered again: at-least-once.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::command::expand_command;

use super::{
    DeliveryError, Finished, FinishedKind, HeadBuffer, MessageInfo, Prepared, Sink, Target,
    envelope_sender,
};

/// A configured MDA command.
pub struct Mda {
    command: String,
    user: String,
    timeout: Duration,
}

impl Mda {
    pub fn new(command: String, user: String, timeout: Duration) -> Mda {
        Mda {
            command,
            user,
            timeout,
        }
    }
}

impl Target for Mda {
    fn describe(&self) -> String {
        format!("mda:{}", self.command)
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
        Ok(Box::new(MdaSink {
            command: self.command.clone(),
            user: self.user.clone(),
            timeout: self.timeout,
            received: info.received.map(str::to_owned),
            head: Some(HeadBuffer::default()),
            running: None,
            written: 0,
        }))
    }

    fn recover(
        &mut self,
        _pending: &Prepared,
        _started: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, DeliveryError> {
        Ok(None)
    }
}

struct Running {
    child: Child,
    expanded: String,
    started: Instant,
    tx: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

struct MdaSink {
    command: String,
    user: String,
    timeout: Duration,
    received: Option<String>,
    head: Option<HeadBuffer>,
    running: Option<Running>,
    written: u64,
}

impl MdaSink {
    fn spawn(&mut self, head: &[u8]) -> Result<(), DeliveryError> {
        let sender = envelope_sender(head);
        let expanded = expand_command(&self.command, &[('F', &sender), ('T', &self.user)]);
        let mut child = crate::command::shell(&expanded)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| DeliveryError::MdaSpawn {
                command: self.command.clone(),
                source,
            })?;
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
        let mut stdin = child.stdin.take();
        // A separate writer thread: an MDA that stops reading must not block
        // the session past command_timeout.
        let writer = std::thread::spawn(move || {
            if let Some(pipe) = stdin.as_mut() {
                for chunk in rx {
                    if pipe.write_all(&chunk).is_err() {
                        break;
                    }
                }
            }
        });
        let mut err_pipe = child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(e) = err_pipe.as_mut() {
                let _ = e.take(64 * 1024).read_to_end(&mut buf);
            }
            buf
        });
        self.running = Some(Running {
            child,
            expanded,
            started: Instant::now(),
            tx: Some(tx),
            writer: Some(writer),
            stderr: Some(stderr),
        });
        if let Some(r) = self.received.take() {
            self.send(r.into_bytes())?;
        }
        self.send(head.to_vec())
    }

    fn send(&mut self, mut chunk: Vec<u8>) -> Result<(), DeliveryError> {
        self.written += chunk.len() as u64;
        let Some(run) = self.running.as_mut() else {
            return Ok(());
        };
        let Some(tx) = run.tx.as_ref() else {
            return Ok(());
        };
        loop {
            match tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                // The MDA stopped reading and exited: its exit status decides.
                Err(TrySendError::Disconnected(_)) => {
                    run.tx = None;
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    if run.started.elapsed() >= self.timeout {
                        return Err(DeliveryError::MdaTimeout {
                            command: self.command.clone(),
                            timeout: self.timeout,
                        });
                    }
                    chunk = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

impl Sink for MdaSink {
    fn write(&mut self, data: &[u8]) -> Result<(), DeliveryError> {
        match self.head.as_mut() {
            Some(head) => match head.push(data) {
                Some(whole) => {
                    self.head = None;
                    self.spawn(&whole)
                }
                None => Ok(()),
            },
            None => self.send(data.to_vec()),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<Finished, DeliveryError> {
        if let Some(mut head) = self.head.take() {
            let whole = head.finish();
            self.spawn(&whole)?;
        }
        let Some(mut run) = self.running.take() else {
            return Err(DeliveryError::MdaSpawn {
                command: self.command.clone(),
                source: std::io::Error::other("the MDA was never started"),
            });
        };
        // Closing the channel ends the writer, which closes the MDA's stdin.
        run.tx = None;
        if let Some(w) = run.writer.take() {
            let _ = w.join();
        }
        let status = loop {
            match run.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if run.started.elapsed() >= self.timeout => {
                    crate::command::kill_group(&mut run.child);
                    return Err(DeliveryError::MdaTimeout {
                        command: self.command.clone(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(DeliveryError::MdaSpawn {
                        command: self.command.clone(),
                        source,
                    });
                }
            }
        };
        let stderr = run
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .map(|b| {
                crate::pop3::codec::sanitize(String::from_utf8_lossy(&b).trim().as_bytes(), 500)
            })
            .unwrap_or_default();
        match status.code() {
            Some(0) => Ok(Finished {
                kind: FinishedKind::Mda(format!("mda:{}", run.expanded)),
                size: self.written,
            }),
            Some(75) => Err(DeliveryError::MdaTemporary {
                command: self.command.clone(),
                stderr,
            }),
            _ => Err(DeliveryError::MdaFailed {
                command: self.command.clone(),
                status: status.to_string(),
                stderr,
            }),
        }
    }
}

impl Drop for MdaSink {
    fn drop(&mut self) {
        // Not committed: kill the MDA before its stdin closes, so that it
        // cannot take a truncated message for a whole one.
        if let Some(mut run) = self.running.take() {
            crate::command::kill_group(&mut run.child);
            run.tx = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn deliver(cmd: &str, msg: &[u8], timeout: Duration) -> Result<Vec<String>, DeliveryError> {
        let mut m = Mda::new(cmd.into(), "me@example.com".into(), timeout);
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
    fn an_mda_killed_by_a_signal_is_a_failure() {
        let e = deliver("kill -9 $$", b"S: x\n\nb\n", T).unwrap_err();
        assert!(matches!(e, DeliveryError::MdaFailed { .. }), "{e}");
    }
}
