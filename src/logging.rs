//! Where log lines go: stderr with a time stamp (`serve`, `queue run`,
//! the terminal), or syslog datagrams to `syslog_socket` (inetd sessions,
//! whose stderr may be the client's socket, `sendmail`, the queue verbs).
//! One line per event, in Postfix's style; the lines themselves are
//! written where the events happen.

use std::io::Write;

use crate::config::Config;
use crate::time;

/// Where log lines go: stderr, or syslog when stderr may be the client's
/// socket (inetd and systemd `Accept=yes` hand the socket to fd 2 too).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Stderr,
    Syslog,
}

/// Sends each log line as one datagram to `syslog_socket` (RFC 3164 form,
/// facility mail, severity info: `<22>`).
struct Syslog {
    sock: Option<std::os::unix::net::UnixDatagram>,
    line: Vec<u8>,
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(i) = self.line.iter().position(|&b| b == b'\n') {
            let rest = self.line.split_off(i + 1);
            let mut msg = format!("<22>satchel[{}]: ", std::process::id()).into_bytes();
            msg.extend_from_slice(&self.line[..i]);
            if let Some(s) = &self.sock {
                let _ = s.send(&msg);
            }
            self.line = rest;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up the `log` crate's output for this process.
pub fn init(cfg: &Config, to: LogTo) {
    let mut b = env_logger::Builder::new();
    b.filter_level(cfg.log_level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if to == LogTo::Syslog {
        let sock = std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(&cfg.syslog_socket).map(|_| s))
            .ok();
        b.format(|buf, record| writeln!(buf, "{}", record.args()));
        b.target(env_logger::Target::Pipe(Box::new(Syslog {
            sock,
            line: Vec::new(),
        })));
    } else {
        b.format(|buf, record| {
            writeln!(
                buf,
                "{} satchel[{}]: {}",
                time::iso8601(time::unix_now()),
                std::process::id(),
                record.args()
            )
        });
        b.target(env_logger::Target::Stderr);
    }
    let _ = b.try_init();
}
