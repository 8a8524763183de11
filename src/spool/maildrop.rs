//! Local submission without privileges: the maildrop.
//!
//! When satchel runs system-wide as its own user, an ordinary user's
//! `sendmail` cannot write the spool. It writes the message into
//! `spool/maildrop/` instead, and the queue runner (the daemon's scheduler,
//! or `satchel queue run`) picks it up. This is Postfix's design (a
//! maildrop directory plus a pickup service) without the setgid `postdrop`
//! helper:
//!
//! - `maildrop/` is mode 1733, owned by the service user: anyone may create
//!   files, nobody else may list the directory, and the sticky bit stops
//!   users from renaming or deleting each other's files.
//! - A file is written under a dot name, fsync'd, and only then renamed to
//!   its final name (`<microseconds>.<pid>.<random>`, which other users
//!   cannot guess to read it). Pickup passes over dot names, so it never
//!   takes half a file; one a dead submitter left is removed after a day.
//! - Pickup trusts nothing in the file: it reads it without following
//!   symbolic links, caps its size, parses the envelope strictly, and takes
//!   the submitter's identity from the file's owner (the kernel's word, not
//!   the user's) for the `Received:` line. A broken file goes to `corrupt/`.
//! - The pickup runs as the service user and never as root, so a user can
//!   make it read nothing they could not read themselves.
//!
//! File format: `satchel-maildrop 1`, `from <a@b>`, one `rcpt <c@d>` per
//! recipient (each may be followed by a `dsn` line, as in the envelope),
//! `ret` and `envid` when the sender asked for them (RFC 3461), `end`,
//! then the message (CRLF lines).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::address::{ForwardPath, ReversePath};
use crate::dsn::Ret;
use crate::envelope::{self, Envelope};
use crate::spool::Spool;
use crate::time;

const MAGIC: &str = "satchel-maildrop 1";

/// Recipients a maildrop file may name (its reader's bound).
pub const MAX_RCPTS: usize = 1000;

/// The maildrop's name in the spool.
pub const NAME: &str = "maildrop";

/// The maildrop directory of the spool at `spool_root`.
pub fn dir(spool_root: &Path) -> PathBuf {
    spool_root.join(NAME)
}

/// Creates `maildrop/` with mode 1733 (call as the spool's owner).
pub fn prepare(spool_root: &Path) -> io::Result<()> {
    let d = dir(spool_root);
    fs::create_dir_all(&d)?;
    fs::set_permissions(&d, fs::Permissions::from_mode(0o1733))
}

/// A name for a new submission: `<microseconds>.<pid>.<random>`, which
/// other users cannot guess (std's hasher keys come from the OS).
pub fn new_name() -> String {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let rnd = std::collections::hash_map::RandomState::new().hash_one(now.as_nanos());
    format!("{}.{}.{rnd}", now.as_micros(), std::process::id())
}

/// Writes one submission (as the submitting user) of the sender,
/// recipients and DSN requests of `env`; returns its name.
pub fn submit(spool_root: &Path, env: &Envelope, message: &[u8]) -> io::Result<String> {
    let name = new_name();
    submit_as(spool_root, &name, env, message)?;
    Ok(name)
}

/// The head of a maildrop file for `env`.
fn head(env: &Envelope) -> String {
    let mut head = format!("{MAGIC}\nfrom {}\n", env.from);
    for r in &env.rcpts {
        head.push_str(&format!("rcpt {}\n", r.addr));
        if let Some(line) = envelope::dsn_line(&r.dsn) {
            head.push_str(&format!("dsn {line}\n"));
        }
    }
    if let Some(ret) = env.ret {
        head.push_str(&format!("ret {}\n", ret.keyword()));
    }
    if let Some(envid) = &env.envid {
        head.push_str(&format!("envid {envid}\n"));
    }
    head.push_str("end\n");
    head
}

/// `submit` under a name from `new_name`.
pub fn submit_as(spool_root: &Path, name: &str, env: &Envelope, message: &[u8]) -> io::Result<()> {
    let d = dir(spool_root);
    // Written under a dot name, which pickup passes over, and renamed once
    // whole and synced: pickup never sees a file still being written.
    let path = d.join(name);
    let part = d.join(format!(".{name}"));
    let head = head(env);
    let result = (|| {
        // 0644: the pickup runs as the service user, not as the submitter.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&part)?;
        f.write_all(head.as_bytes())?;
        f.write_all(message)?;
        f.sync_all()?;
        fs::rename(&part, &path)?;
        // On Linux file systems with a journal (ext4, XFS) the rename is
        // committed with the next fsync on the file system; the directory
        // itself cannot be opened for an fsync by users who may not list
        // it (mode 1733), so this is best effort.
        if let Ok(dirf) = File::open(&d) {
            let _ = dirf.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&part);
    }
    result
}

/// How old an unfinished submission is before pickup removes it.
const STALE_PART: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Parses a maildrop file: the envelope of a local message (helo and
/// time still to set) and the offset where the message starts. Nothing in
/// it is trusted: DSN values are checked as a server checks them.
pub fn parse(bytes: &[u8]) -> Result<(Envelope, usize), String> {
    let mut pos = 0;
    let mut from = None;
    let mut rcpts = Vec::new();
    let mut dsn = Vec::new();
    let (mut ret, mut envid) = (None, None);
    let mut first = true;
    loop {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no 'end' line")?
            + pos;
        let line =
            std::str::from_utf8(&bytes[pos..end]).map_err(|_| "invalid UTF-8 in the envelope")?;
        pos = end + 1;
        if first {
            if line != MAGIC {
                return Err("not a maildrop file".into());
            }
            first = false;
            continue;
        }
        if line == "end" {
            break;
        }
        match line.split_once(' ') {
            Some(("from", v)) => {
                from = Some(ReversePath::parse(v).map_err(|e| format!("bad sender: {e}"))?)
            }
            Some(("rcpt", v)) => {
                rcpts.push(ForwardPath::parse(v).map_err(|e| format!("bad recipient: {e}"))?);
                dsn.push(Default::default());
            }
            Some(("dsn", v)) => {
                let d = envelope::parse_dsn_line(v)?;
                let fine = d
                    .orcpt
                    .as_deref()
                    .is_none_or(|o| o.len() <= crate::dsn::MAX_ORCPT && crate::dsn::valid_orcpt(o));
                *dsn.last_mut().filter(|_| fine).ok_or("bad dsn line")? = d;
            }
            Some(("ret", v)) => ret = Some(Ret::parse(v).ok_or("bad ret")?),
            Some(("envid", v)) if crate::dsn::is_xtext(v) && v.len() <= crate::dsn::MAX_ENVID => {
                envid = Some(v.to_string())
            }
            _ => {
                return Err(format!(
                    "unexpected line '{}'",
                    line.chars().take(40).collect::<String>()
                ))
            }
        }
        if rcpts.len() > MAX_RCPTS {
            return Err("too many recipients".into());
        }
    }
    let from = from.ok_or("no sender")?;
    if rcpts.is_empty() {
        return Err("no recipients".into());
    }
    let mut env = Envelope::local(from, rcpts, "", 0, &bytes[pos..]);
    for (r, d) in env.rcpts.iter_mut().zip(dsn) {
        r.dsn = d;
    }
    (env.ret, env.envid) = (ret, envid);
    Ok((env, pos))
}

/// Moves every finished maildrop file into the queue. Returns the IDs queued.
pub fn pickup(spool: &Spool, hostname: &str, size_limit: u64) -> Vec<String> {
    let d = dir(spool.root());
    let Ok(rd) = fs::read_dir(&d) else {
        return Vec::new();
    };
    let mut queued = Vec::new();
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let path = e.path();
        if name.starts_with('.') {
            // Being written, or left by a submitter that died a day ago.
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_PART));
            if stale {
                log::warn!("warning: maildrop/{name}: an unfinished submission; removed");
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        match pickup_one(spool, &path, hostname, size_limit) {
            Ok(id) => {
                let _ = fs::remove_file(&path);
                queued.push(id);
            }
            Err(Unqueued::Retry(why)) => {
                log::warn!("warning: maildrop/{name}: {why}; left for the next scan");
            }
            Err(Unqueued::Bad(why)) => {
                // Kept for a person to look at, never removed.
                let to = spool.dir("corrupt").join(format!("maildrop.{name}"));
                match fs::rename(&path, to) {
                    Ok(()) => log::warn!("warning: maildrop/{name}: {why}; moved to corrupt/"),
                    Err(e) => log::warn!(
                        "warning: maildrop/{name}: {why}; cannot move it to corrupt/: {e}"
                    ),
                }
            }
        }
    }
    queued
}

/// Why a maildrop file was not queued.
enum Unqueued {
    /// The file cannot be queued as it is (corrupt/).
    Bad(String),
    /// This time only (a full disk, an I/O error): left for the next scan.
    Retry(String),
}

fn pickup_one(
    spool: &Spool,
    path: &Path,
    hostname: &str,
    size_limit: u64,
) -> Result<String, Unqueued> {
    use Unqueued::{Bad, Retry};
    // O_NOFOLLOW: no symbolic link; O_NONBLOCK: a FIFO put in its place
    // cannot make the open wait. What counts is the file opened (fstat).
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENXIO) | Some(libc::EACCES) | Some(libc::EPERM) => {
                Bad(e.to_string())
            }
            _ => Retry(e.to_string()),
        })?;
    let meta = f.metadata().map_err(|e| Retry(e.to_string()))?;
    if !meta.file_type().is_file() {
        return Err(Bad("not a regular file".into()));
    }
    if meta.len() > size_limit.saturating_add(64 * 1024) {
        return Err(Bad(format!(
            "larger than message_size_limit ({} octets)",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    Read::by_ref(&mut f)
        .take(size_limit.saturating_add(64 * 1024))
        .read_to_end(&mut bytes)
        .map_err(|e| Retry(e.to_string()))?;
    let (mut env, start) = parse(&bytes).map_err(Bad)?;
    let uid = meta.uid();
    let now = time::unix_now();
    let mut inc = spool.create().map_err(|e| Retry(e.to_string()))?;
    let id = inc.id.clone();
    // The submitter is who the kernel says owns the file.
    inc.write(
        format!(
            "Received: by {hostname} (satchel, from userid {uid})\r\n\tid {id}; {}\r\n",
            time::rfc5322(now)
        )
        .as_bytes(),
    );
    inc.write(&bytes[start..]);
    (env.helo, env.created) = (format!("uid{uid}"), now);
    inc.commit(&mut env).map_err(|e| Retry(e.to_string()))?;
    log::info!(
        "{id}: uid={uid} from={}, size={}, nrcpt={} (picked up from maildrop)",
        env.from,
        env.size,
        env.rcpts.len()
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh spool at `root` with its maildrop and one submission in it.
    fn spool_with_a_submission(root: &Path) -> (Spool, String) {
        let _ = fs::remove_dir_all(root);
        let spool = Spool::open(root).unwrap();
        prepare(root).unwrap();
        let from = ReversePath::parse("<a@b.test>").unwrap();
        let to = vec![ForwardPath::parse("<c@d.test>").unwrap()];
        let msg = b"Subject: x\r\n\r\nbody\r\n";
        let env = Envelope::local(from, to, "", 0, msg);
        let name = submit(root, &env, msg).unwrap();
        (spool, name)
    }

    #[test]
    fn pickup_takes_finished_files_and_passes_over_unfinished_ones() {
        let root = std::env::temp_dir().join(format!("satchel-maildrop-{}", std::process::id()));
        let (spool, name) = spool_with_a_submission(&root);
        assert!(!name.starts_with('.'));
        // One being written (empty so far), and one a day and more old.
        let d = dir(&root);
        File::create(d.join(".1.2.3")).unwrap();
        let old = File::create(d.join(".4.5.6")).unwrap();
        old.set_modified(std::time::SystemTime::now() - 2 * STALE_PART)
            .unwrap();
        let queued = pickup(&spool, "me.test", 1 << 20);
        assert_eq!(queued.len(), 1);
        assert!(d.join(".1.2.3").exists(), "an unfinished file was taken");
        assert!(!d.join(".4.5.6").exists(), "a stale one was left");
        assert!(!d.join(&name).exists());
        assert_eq!(fs::read_dir(spool.dir("corrupt")).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_spool_that_cannot_take_it_now_leaves_it_and_a_fifo_cannot_stall_pickup() {
        let root = std::env::temp_dir().join(format!("satchel-maildrop-r-{}", std::process::id()));
        let (spool, name) = spool_with_a_submission(&root);
        // tmp/ unusable (as a full disk would be): nothing queued, nothing lost.
        fs::remove_dir_all(spool.dir("tmp")).unwrap();
        fs::write(spool.dir("tmp"), b"not a directory").unwrap();
        assert!(pickup(&spool, "me.test", 1 << 20).is_empty());
        assert!(
            dir(&root).join(&name).exists(),
            "the submission was dropped"
        );
        assert_eq!(fs::read_dir(spool.dir("corrupt")).unwrap().count(), 0);
        fs::remove_file(spool.dir("tmp")).unwrap();
        fs::create_dir(spool.dir("tmp")).unwrap();
        // A FIFO under a submission's name: refused, not waited on.
        let fifo = dir(&root).join("1.2.3");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(pickup(&spool, "me.test", 1 << 20).len(), 1);
        assert!(spool.dir("corrupt").join("maildrop.1.2.3").exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn maildrop_files_parse_strictly() {
        let f = b"satchel-maildrop 1\nfrom <a@b.test>\nrcpt <c@d.test>\nend\nSubject: x\r\n\r\nbody\r\n";
        let (env, start) = parse(f).unwrap();
        assert_eq!(env.from.to_string(), "<a@b.test>");
        assert_eq!(env.rcpts.len(), 1);
        assert_eq!(&f[start..], b"Subject: x\r\n\r\nbody\r\n");
        // DSN requests (sendmail -N, -R, -V), checked as a server would.
        let f = b"satchel-maildrop 1\nfrom <a@b.test>\nrcpt <c@d.test>\ndsn SUCCESS rfc822;C+40d.test\nrcpt <e@d.test>\nret HDRS\nenvid x+2B1\nend\n";
        let (env, _) = parse(f).unwrap();
        assert!(env.rcpts[0].dsn.notify.success() && !env.rcpts[1].dsn.notify.success());
        assert_eq!(env.rcpts[0].dsn.orcpt.as_deref(), Some("rfc822;C+40d.test"));
        assert_eq!(
            (env.ret, env.envid.as_deref()),
            (Some(Ret::Hdrs), Some("x+2B1"))
        );
        assert_eq!(head(&env).as_bytes(), f, "written as read");
        for bad in [
            "dsn SUCCESS\nrcpt <c@d>",
            "rcpt <c@d>\ndsn SUCCESS rfc822;a+4",
            "rcpt <c@d>\ndsn ALWAYS",
            "rcpt <c@d>\nenvid a=b",
            "rcpt <c@d>\nret ALL",
        ] {
            let f = format!("satchel-maildrop 1\nfrom <a@b>\n{bad}\nend\n");
            assert!(parse(f.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(b"satchel-maildrop 2\nend\n").is_err());
        assert!(
            parse(b"satchel-maildrop 1\nfrom <a@b>\nend\n").is_err(),
            "no recipients"
        );
        assert!(
            parse(b"satchel-maildrop 1\nfrom <a@b>\nrcpt <c@d>\n").is_err(),
            "no end"
        );
        assert!(parse(b"satchel-maildrop 1\nfrom <a@b>\nrcpt <../x>\nend\n").is_err());
        assert!(parse(b"satchel-maildrop 1\nhelo evil\nend\n").is_err());
    }
}
