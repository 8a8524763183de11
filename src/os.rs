//! The one module that calls the operating system through `unsafe`:
//! dropping root privileges after the listeners are bound (setgroups,
//! setgid, setuid, in that order, then a check that root cannot be
//! regained) and handing root's files over to the service user first, an exclusive rename for the spool's file recycling,
//! openat(2) for listing a large queue, and fcntl(2) record locks for
//! mbox delivery. User
//! and group names are resolved by reading /etc/passwd and /etc/group,
//! without unsafe code.

#![allow(unsafe_code)]

use std::io;

/// The effective user ID of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The user ID and primary group ID of `name`, from /etc/passwd.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// An account of /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// The /etc/passwd entry of the first account for which `want` holds.
pub fn passwd(want: impl Fn(&str, u32) -> bool) -> Option<Passwd> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let uid: u32 = f.get(2)?.parse().ok()?;
        if f.len() < 7 || !want(f[0], uid) {
            return None;
        }
        Some(Passwd {
            name: f[0].to_string(),
            uid,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        })
    })
}

/// The listening sockets systemd passed (sd_listen_fds(3), without
/// libsystemd): `LISTEN_PID` is this process, `LISTEN_FDS` sockets from
/// descriptor 3 on, `LISTEN_FDNAMES` their names. The variables are taken
/// out of the environment (commands never see them) and the descriptors
/// closed on exec.
pub fn listen_fds() -> Vec<(String, std::net::TcpListener)> {
    use std::os::fd::FromRawFd;
    let var = |k: &str| std::env::var(k).ok();
    let ours = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = var("LISTEN_FDS")
        .and_then(|n| n.parse::<i32>().ok())
        .unwrap_or(0);
    let names = var("LISTEN_FDNAMES").unwrap_or_default();
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    if !ours || !(1..=64).contains(&count) {
        return Vec::new();
    }
    let mut names = names.split(':');
    (3..3 + count)
        .map(|fd| {
            // SAFETY: plain integer arguments on a descriptor systemd
            // passed to this process.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let name = names.next().unwrap_or("").to_string();
            // SAFETY: the protocol gives this process descriptors 3 to
            // 3 + LISTEN_FDS - 1, each a listening socket owned by nobody
            // else here.
            (name, unsafe { std::net::TcpListener::from_raw_fd(fd) })
        })
        .collect()
}

/// The bytes an unprivileged user may still write on the file system of
/// `path`, and its size (statvfs(2)).
pub fn free_space(path: &std::path::Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated string and `st` a valid
    // struct, both alive for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
}

/// Kills the process group `pgid` (a command past its time limit, and
/// whatever it started).
pub fn kill_group(pgid: u32) {
    if let Ok(p) = i32::try_from(pgid) {
        // SAFETY: plain integer arguments; a negative pid names a group.
        unsafe {
            libc::kill(-p, libc::SIGKILL);
        }
    }
}

/// The group ID of `name`, from /etc/group.
pub fn lookup_group(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// An account to become: looked up in /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    /// `user`, with `group` or else the user's primary group.
    pub fn lookup(user: &str, group: Option<&str>) -> Result<Account, String> {
        let (uid, primary) =
            lookup_user(user).ok_or_else(|| format!("user '{user}' not found in /etc/passwd"))?;
        let gid = match group {
            Some(g) => {
                lookup_group(g).ok_or_else(|| format!("group '{g}' not found in /etc/group"))?
            }
            None => primary,
        };
        Ok(Account {
            name: user.to_string(),
            uid,
            gid,
        })
    }

    /// Becomes this account for good (see `drop_privileges`).
    pub fn become_it(&self) -> Result<(), String> {
        drop_privileges(self.uid, self.gid).map_err(|e| format!("cannot become {}: {e}", self.name))
    }
}

/// chown of a directory and what it holds, `depth` levels down.
/// Gives the service user what root made in the spool and mail
/// directories (a first start, a root `queue run`): only entries root
/// owns, never through a symbolic link (lchown; directories opened with
/// O_NOFOLLOW and walked through their open descriptor, so swapping one
/// for a link while the walk runs leads nowhere), and never in the directory `skip` names (the spool's `maildrop/`),
/// whose files belong to the users who submitted them (and whose owner
/// pickup reports: `skip` names it). Anything owned by someone else stays
/// theirs.
pub fn chown_tree(
    p: &std::path::Path,
    uid: u32,
    gid: u32,
    depth: u32,
    skip: Option<&str>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let meta = std::fs::symlink_metadata(p)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.uid() == 0 {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    }
    let skipped = skip.is_some_and(|s| p.file_name() == Some(std::ffi::OsStr::new(s)));
    if depth == 0 || !meta.is_dir() || skipped {
        return Ok(());
    }
    let dir = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(p)
    {
        Ok(d) => d,
        // Swapped for a link or for something else since the look above.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let pinned = std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    // Without /proc, the path itself (the parents are the service user's
    // own or root's, so only a compromised service account could race it).
    let base = if pinned.is_dir() {
        pinned
    } else {
        p.to_path_buf()
    };
    for e in std::fs::read_dir(&base)? {
        chown_tree(&base.join(e?.file_name()), uid, gid, depth - 1, skip)?;
    }
    Ok(())
}

/// Becomes `uid`/`gid` for good: supplementary groups cleared first (or
/// they would stay root's), then the group, then the user.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid as libc::gid_t];
    // SAFETY: `groups` is a valid array of one gid_t for the duration of the call.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain system calls on integers.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; this must fail now that root is gone.
    if uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(io::Error::other(
            "root privileges could be regained after setuid",
        ));
    }
    Ok(())
}

/// Renames `from` to `to` only if `to` does not exist (renameat2 with
/// RENAME_NOREPLACE, through syscall(2) so that it works with any C
/// library): `AlreadyExists` if it does, `NotFound` if `from` is gone.
/// Atomic: of two processes moving the same file, one gets `NotFound`.
pub fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (f, t) = (cstr(from)?, cstr(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive
    // the call; the other arguments are plain integers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `name` in the directory `dir` for reading (openat(2)): no path
/// walk from the root for each of 100,000 queue files. O_NOATIME where
/// allowed (only to the file's owner), as `spool::open_noatime`.
pub fn open_in(dir: &std::fs::File, name: &str) -> io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in file name"))?;
    let open = |flags: libc::c_int| {
        // SAFETY: `dir` is an open descriptor and `c` a valid
        // NUL-terminated string, both alive for the call.
        unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags) }
    };
    let base = libc::O_RDONLY | libc::O_CLOEXEC;
    let mut fd = open(base | libc::O_NOATIME);
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EPERM) {
        fd = open(base);
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A TCP connection to `to` from the local address `from` (port chosen by
/// the kernel), within `timeout`: what `TcpStream::connect_timeout` does,
/// with a bind(2) first (`smtp_bind_address`). `from` must be of `to`'s
/// family. The stream comes back in blocking mode.
pub fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    // SAFETY: plain integer arguments.
    let fd = unsafe { libc::socket(family, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just made and is owned by nobody else; from here
    // on it is closed on every return.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (local, local_len) = sockaddr(std::net::SocketAddr::new(from, 0));
    // SAFETY: `local` is a valid sockaddr of `local_len` bytes.
    if unsafe { libc::bind(fd, std::ptr::addr_of!(local).cast(), local_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (remote, remote_len) = sockaddr(to);
    // SAFETY: `remote` is a valid sockaddr of `remote_len` bytes.
    if unsafe { libc::connect(fd, std::ptr::addr_of!(remote).cast(), remote_len) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        wait_connected(&sock, timeout)?;
    }
    let stream = std::net::TcpStream::from(sock);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Waits until a non-blocking connect(2) on `sock` is done; its outcome
/// is SO_ERROR.
fn wait_connected(sock: &std::os::fd::OwnedFd, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ));
        }
        let mut p = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: `p` is one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut err: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `err` and `len` are valid for writing, `len` its size.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::addr_of_mut!(err).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        return match err {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
}

/// `addr` as the C sockaddr storage connect(2) and bind(2) take.
fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value of the plain
    // C struct.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and
            // suitably aligned for it.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Takes a POSIX record lock (fcntl F_SETLK, F_WRLCK) on all of `f`
/// without waiting: `Ok(false)` when another process holds one. This is
/// the lock mail readers on Linux (Dovecot, mutt, procmail) take on an
/// mbox; flock(2) locks do not exclude it. Released when `f` is closed.
pub fn try_lock_record(f: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value of the plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however long it grows.
    // SAFETY: `f` is an open descriptor and `fl` a valid struct, both
    // alive for the call.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn accounts_are_looked_up_with_their_primary_or_named_group() {
        let root = Account::lookup("root", None).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(Account::lookup("root", Some("no-such-group-here")).is_err());
        assert!(Account::lookup("no-such-user-here", None)
            .unwrap_err()
            .contains("not found in /etc/passwd"));
    }

    #[test]
    fn the_hand_over_changes_roots_files_only_and_follows_no_link() {
        let d = std::env::temp_dir().join(format!("satchel-chown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("queue")).unwrap();
        std::fs::create_dir_all(d.join("maildrop")).unwrap();
        std::fs::write(d.join("queue/m"), b"x").unwrap();
        std::fs::write(d.join("maildrop/u"), b"x").unwrap();
        let outside = d.with_extension("outside");
        std::fs::write(&outside, b"not ours").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("queue/link")).unwrap();
        let owner = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().uid();
        // Unprivileged, root owns nothing here: nothing to change, no error.
        let (to_uid, to_gid) = if euid() == 0 {
            (12345, 12345)
        } else {
            (euid(), 0)
        };
        chown_tree(&d, to_uid, to_gid, 3, Some("maildrop")).unwrap();
        if euid() != 0 {
            // Nothing of root's here to hand over: nothing changed.
            assert_eq!(owner(&d.join("queue/m")), euid());
            assert_eq!(owner(&outside), euid());
        } else {
            assert_eq!(owner(&d.join("queue/m")), 12345);
            assert_eq!(owner(&d), 12345);
            assert_eq!(owner(&d.join("maildrop")), 12345, "the directory itself");
            assert_eq!(owner(&d.join("maildrop/u")), 0, "not what is in it");
            assert_eq!(owner(&outside), 0, "no link is followed");
        }
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_file(&outside).unwrap();
    }
}
