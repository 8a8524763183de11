//! One SMTP session on standard input and output: `satchel inetd` (inetd,
//! xinetd, systemd `Accept=yes`, ucspi-tcp, socat, stunnel) and
//! `sendmail -bs`. Same protocol, limits and spool as the daemon.
//!
//! The client address comes from the TCP socket on fd 0 when it is one
//! (getpeername), else from what the super-server put in the environment:
//! `TCPREMOTEIP` (ucspi-tcp), `SOCAT_PEERADDR` (socat `EXEC` over a
//! socket pair), `REMOTE_HOST` (stunnel). Without one, `sendmail -bs` is a
//! program on this host, which may relay like any local submission, but
//! `satchel inetd` is a peer nobody can name, which may not: it may be
//! anywhere on the network.

use std::io;
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::receive::{self, Context, Control};
use crate::smtp::session::Client;

/// A pipe, or a socket that is not TCP (a socket pair from socat or
/// stunnel): no early-talker check; time-outs on a socket.
struct Pipe(Option<UnixStream>);

impl Control for Pipe {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        match &self.0 {
            Some(s) => s.set_read_timeout(Some(d)),
            None => Ok(()), // a pipe: a local program at the other end
        }
    }

    fn talks_early(&self, _pause: Duration) -> bool {
        false
    }
}

/// Runs the session; returns the client for the caller's log line.
/// `local`: the session is `sendmail -bs`, run by a program on this host.
pub fn serve(ctx: &Context, local: bool) -> Client {
    let in_data = AtomicBool::new(false);
    // fd 0 as a socket, when inetd handed us one.
    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(TcpStream::from)
        .filter(|s| s.peer_addr().is_ok());
    if let Some(sock) = socket {
        let ip = sock.peer_addr().map(|a| a.ip().to_canonical()).ok();
        let client = Client {
            auth_required: false,
            ip,
            may_relay: ip.is_some_and(|ip| ctx.cfg.may_relay(ip)),
        };
        log::info!(
            "connect from [{}]",
            ip.map(|i| i.to_string()).unwrap_or_default()
        );
        let _ = sock.set_write_timeout(Some(ctx.cfg.command_timeout));
        receive::serve_tcp(&sock, client.clone(), ctx, &in_data, false);
        return client;
    }
    let ip = ["TCPREMOTEIP", "SOCAT_PEERADDR", "REMOTE_HOST"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical());
    let client = match ip {
        Some(ip) => Client {
            auth_required: false,
            ip: Some(ip),
            may_relay: ctx.cfg.may_relay(ip),
        },
        None => Client {
            auth_required: false,
            ip: None,
            may_relay: local,
        },
    };
    if ip.is_none() && !local {
        log::warn!(
            "warning: inetd: the client's address is unknown (fd 0 is not a TCP socket, and \
             TCPREMOTEIP, SOCAT_PEERADDR and REMOTE_HOST are unset); it may not relay"
        );
    }
    let socket = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(UnixStream::from)
        .filter(|s| s.local_addr().is_ok() || s.peer_addr().is_ok());
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    receive::run(
        stdin,
        stdout,
        &Pipe(socket),
        client.clone(),
        ctx,
        &in_data,
        receive::Start::Greet,
        false,
    );
    client
}
