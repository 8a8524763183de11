//! Delivery to a command (Postfix's local(8) `|command` and
//! `mailbox_command`): `/bin/sh -c COMMAND` in a process group of its own,
//! without a terminal, its standard input the message with `Return-Path:`
//! and `Delivered-To:` first and LF line ends, its environment local(8)'s
//! (`SENDER`, `RECIPIENT`, `USER`, `HOME`, ... and a fixed `PATH`), as the
//! account the caller names: never root. The exit status decides, as
//! sysexits(3) says: 0 delivered, 75 (EX_TEMPFAIL) or a signal deferred,
//! anything else bounced with the first line the command wrote. Past
//! `command_time_limit` the whole group is killed and the delivery
//! deferred. What the command writes is read as it comes and kept only
//! up to 4 KiB, so a chatty command cannot grow satchel's memory.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Batch, Delivery, Transport};
use crate::envelope::RcptState;
use crate::smtp::reply::Enhanced;
use crate::status::Status;

/// What is kept of a command's output, for the bounce and the log.
const MAX_OUTPUT: usize = 4096;

/// One command to run for one recipient.
pub struct Run {
    pub command: String,
    /// A program and its arguments to run instead of `/bin/sh -c command`.
    pub argv: Vec<String>,
    /// `(uid, gid)` to run as; `None`: as this process (not root).
    pub account: Option<(u32, u32)>,
    pub env: Vec<(String, String)>,
    pub home: String,
}

/// The pipe transport: `plan` says, for a recipient (an index into the
/// envelope's), what to run, or why nothing can be.
pub struct Pipe<'a> {
    pub plan: &'a dyn Fn(usize) -> Result<Run, RcptState>,
    pub time_limit: Duration,
    /// For the logs: `pipe` or `file`.
    pub relay: &'static str,
}

impl Transport for Pipe<'_> {
    fn deliver(&self, batch: &Batch) -> Delivery {
        let states = batch
            .rcpts
            .iter()
            .map(|&i| match (self.plan)(i) {
                Ok(run) => self.execute(&run, batch, i),
                Err(state) => state,
            })
            .collect();
        Delivery {
            states,
            relay: self.relay.into(),
            remote_mta: None,
            success_notice: Some(crate::bounce::Action::Delivered),
        }
    }
}

impl Pipe<'_> {
    fn execute(&self, run: &Run, batch: &Batch, i: usize) -> RcptState {
        match self.spawn_and_wait(run, batch, i) {
            Ok(state) => state,
            Err(e) => RcptState::Deferred(Status::new(
                451,
                Enhanced(4, 3, 0),
                format!("cannot run the command: {e}"),
            )),
        }
    }

    fn spawn_and_wait(&self, run: &Run, batch: &Batch, i: usize) -> io::Result<RcptState> {
        let (mut output, writer) = io::pipe()?;
        let mut cmd = match run.argv.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(&run.command);
                c
            }
        };
        cmd.env_clear()
            .envs(run.env.iter().map(|(k, v)| (k, v)))
            .current_dir(if std::path::Path::new(&run.home).is_dir() {
                &run.home
            } else {
                "/"
            })
            .stdin(Stdio::piped())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            .process_group(0);
        if let Some((uid, gid)) = run.account {
            // std clears the supplementary groups when root drops to uid.
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn()?;
        // Our copies of the output pipe's write end go with `cmd`: the
        // reader sees the end of output when the command's are closed.
        drop(cmd);
        let reader = std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            kept
        });
        let input = child.stdin.take();
        let head = format!(
            "Return-Path: {}\nDelivered-To: {}\n",
            batch.env.from,
            batch.env.rcpts[i].addr.bare()
        );
        let content = batch.content.clone();
        // A command that does not read its input must not stop the clock.
        let writer = std::thread::spawn(move || -> io::Result<()> {
            let Some(mut stdin) = input else {
                return Ok(());
            };
            stdin.write_all(head.as_bytes())?;
            let mut msg = content.open()?;
            super::local::copy_crlf_as_lf(&mut msg, &mut stdin)
        });
        let deadline = Instant::now() + self.time_limit;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                crate::os::kill_group(child.id());
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = writer.join();
        let said = reader.join().unwrap_or_default();
        Ok(verdict(status, &said, self.time_limit))
    }
}

/// The state sysexits(3) and the command's words give.
fn verdict(status: Option<std::process::ExitStatus>, said: &[u8], limit: Duration) -> RcptState {
    let first = String::from_utf8_lossy(said)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>();
    let with = |text: String| match first.is_empty() {
        true => text,
        false => format!("{text}: {first}"),
    };
    let Some(status) = status else {
        return RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 3, 0),
            format!(
                "command time limit of {}s exceeded; killed",
                limit.as_secs()
            ),
        ));
    };
    match status.code() {
        Some(0) => RcptState::Sent(Status::new(250, Enhanced(2, 0, 0), "delivered via command")),
        Some(75) => RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 3, 0),
            with("command deferred (exit 75)".into()),
        )),
        Some(code) => RcptState::Failed(Status::new(
            554,
            Enhanced(5, 3, 0),
            with(format!("command failed (exit {code})")),
        )),
        None => RcptState::Deferred(Status::new(
            451,
            Enhanced(4, 3, 0),
            with("command killed by a signal".into()),
        )),
    }
}
