//! The control socket in the spool: `flush` (try everything waiting now),
//! `scan` (look for new messages now) and `release ID` (due now), asked
//! by the queue tools, `sendmail -q` and local submissions.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::{kick_runner, Control, Event};
use crate::handoff::Handoff;
use crate::spool::{is_queue_id, Spool};

/// The path of the control socket in the spool.
pub fn control_path(spool: &Path) -> PathBuf {
    crate::spool::control_path(spool)
}

/// Listens on `spool/control` for `flush` requests. Refuses to start when
/// another live server already answers there.
pub fn control_socket(spool: &Path, inbox: Handoff<Event>) -> Result<(), String> {
    let listener = crate::spool::bind_control(spool)?;
    thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                let mut r = BufReader::new(&stream).take(256);
                let answer = match r.read_line(&mut line) {
                    Ok(_) if line.trim() == "flush" => {
                        // A flush is also the operator's word that a
                        // relay host's problem is fixed.
                        crate::transport::breaker::reset();
                        inbox.send(Event::Control(Control::Flush));
                        "ok\n"
                    }
                    Ok(_) if line.trim() == "scan" => {
                        inbox.send(Event::Control(Control::Scan));
                        "ok\n"
                    }
                    // Released from hold: due now, whatever was planned.
                    Ok(_)
                        if line
                            .trim()
                            .strip_prefix("release ")
                            .is_some_and(is_queue_id) =>
                    {
                        let id = line.trim()["release ".len()..].to_string();
                        inbox.send(Event::Queued(id));
                        "ok\n"
                    }
                    _ => "error: unknown request\n",
                };
                let _ = (&stream).write_all(answer.as_bytes());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// After `queue release`: the running server schedules the message now;
/// without one, a queue run is started as after a submission.
pub fn release(spool: &Spool, id: &str, config: Option<&Path>) {
    if control_request(spool.root(), &format!("release {id}")).is_err() {
        kick_runner(spool, config);
    }
}

/// Asks a running server to flush its queue. `Err` when none answers.
pub fn request_flush(spool: &Path) -> io::Result<String> {
    control_request(spool, "flush")
}

pub(super) fn control_request(spool: &Path, what: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(control_path(spool))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    Ok(answer.trim().to_string())
}
