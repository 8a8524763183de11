//! The one module that calls the operating system through `unsafe`:
//! dropping root privileges after the listeners are bound (setgroups,
//! setgid, setuid, in that order, then a check that root cannot be
//! regained), an exclusive rename for the spool's file recycling,
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
