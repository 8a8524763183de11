//! Readiness for systemd's `Type=notify` (sd_notify(3), without
//! libsystemd): one datagram to the socket `NOTIFY_SOCKET` names, a path
//! or (starting with `@`) an abstract name. Nothing when the variable is
//! not set; a failure to send is logged, never fatal.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `RELOADING=1`, `STOPPING=1`) to systemd.
pub fn send(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    if let Err(e) = datagram(&target, state) {
        log::warn!("warning: cannot tell systemd {state}: {target}: {e}");
    }
}

fn datagram(target: &str, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), target)?;
        }
    }
    Ok(())
}
