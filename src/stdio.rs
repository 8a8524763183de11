//! One SMTP session on standard input and output: `satchel inetd` (inetd,
//! xinetd, systemd `Accept=yes`, ucspi-tcp) and `sendmail -bs`. Same
//! protocol, limits and spool as the daemon. The client address comes from
//! the socket on fd 0 when it is one (getpeername), else from
//! `TCPREMOTEIP` (the ucspi-tcp convention); otherwise the session is
//! local (a program on this host), which may relay.

use std::io;
use std::net::{IpAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::conn::{self, Context, Control};
use crate::smtp::session::Client;

/// Pipes have no time-outs and no early-talker check: the peer is local.
struct Pipe;

impl Control for Pipe {
    fn set_read_timeout(&self, _d: Duration) -> io::Result<()> {
        Ok(())
    }

    fn talks_early(&self, _pause: Duration) -> bool {
        false
    }
}

/// Runs the session; returns the client for the caller's log line.
pub fn serve(ctx: &Context) -> Client {
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
        conn::serve_tcp(&sock, client.clone(), ctx, &in_data);
        return client;
    }
    let ip = std::env::var("TCPREMOTEIP")
        .ok()
        .and_then(|s| s.parse::<IpAddr>().ok());
    let client = match ip {
        Some(ip) => Client {
            auth_required: false,
            ip: Some(ip),
            may_relay: ctx.cfg.may_relay(ip),
        },
        None => Client {
            auth_required: false,
            ip: None,
            may_relay: true,
        },
    };
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    conn::run(
        stdin,
        stdout,
        &Pipe,
        client.clone(),
        ctx,
        &in_data,
        conn::Start::Greet,
        false,
    );
    client
}
