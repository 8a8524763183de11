//! Final delivery into local mailboxes under `mail_dir`: Maildir (one file
//! per message, `<user>/{tmp,new,cur}`, written to `tmp/`, fsync'd, then
//! renamed into `new/`) or mbox (one file per user, `From ` separator
//! lines, mboxrd `>From` quoting, an exclusive lock while appending, cut
//! back to its old length if the append fails).
//!
//! Prepends `Return-Path:` (RFC 5321 §4.4: added at final delivery) and
//! `Delivered-To:`. Both formats store the local line convention, LF, as
//! Postfix's local(8) and Dovecot's own deliveries do (the spool's CRLF is
//! wire format): a CR LF pair becomes LF, a lone CR inside a line stays as
//! it is; mbox also gets its `From ` quoting. Every failure here is
//! temporary (a full disk, a permission problem): the message stays queued.
//! Never talks to the network.

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use std::collections::HashSet;

use super::{Batch, Delivery, Transport};
use crate::address::ForwardPath;
use crate::config::valid_user_name;
use crate::envelope::RcptState;
use crate::smtp::reply::Enhanced;
use crate::spool::{sync_dir, Content};
use crate::status::Status;
use crate::time;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxFormat {
    Maildir,
    Mbox,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Delivers the spooled message `msg` to `user`'s mailbox.
/// `return_path` is the reverse-path with angle brackets (`<>` allowed).
pub fn deliver(
    mail_dir: &Path,
    format: MailboxFormat,
    hostname: &str,
    user: &str,
    return_path: &str,
    delivered_to: &str,
    msg: &Content,
) -> io::Result<PathBuf> {
    // The policy already refused such names at RCPT; this is the last line.
    if !valid_user_name(user) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unsafe mailbox name '{user}'"),
        ));
    }
    // With mbox, `<user>.lock` is the lock of `<user>`'s mailbox.
    if format == MailboxFormat::Mbox && user.ends_with(".lock") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mailbox name '{user}' is another mailbox's lock file"),
        ));
    }
    let head = format!("Return-Path: {return_path}\nDelivered-To: {delivered_to}\n");
    match format {
        MailboxFormat::Maildir => maildir(&mail_dir.join(user), hostname, head.as_bytes(), msg),
        MailboxFormat::Mbox => mbox(&mail_dir.join(user), return_path, head.as_bytes(), msg),
    }
}

fn maildir(dir: &Path, hostname: &str, head: &[u8], msg: &Content) -> io::Result<PathBuf> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // The Maildir convention: time, then something unique on this host.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{:06}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        hostname.replace(['/', ':'], "_")
    );
    let tmp = dir.join("tmp").join(&name);
    let result = (|| {
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, f);
        out.write_all(head)?;
        copy_crlf_as_lf(&mut msg.open()?, &mut out)?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        let dest = dir.join("new").join(&name);
        fs::rename(&tmp, &dest)?;
        sync_dir(&dir.join("new"))?;
        Ok(dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn mbox(path: &Path, return_path: &str, head: &[u8], msg: &Content) -> io::Result<PathBuf> {
    let mut input = head.chain(msg.open()?);
    append_mbox(path, return_path, &mut input)
}

/// Appends `input` (headers first) to the mbox `path` under the locks
/// mail readers take, as one message: a `From ` line, the lines with LF
/// ends and mboxrd quoting, an empty line. Cut back to where it was on
/// any error. Also the file targets of aliases (`satchel deliver-file`).
pub fn append_mbox(path: &Path, return_path: &str, input: &mut dyn Read) -> io::Result<PathBuf> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // The locks of Postfix on Linux (a dot lock, then fcntl), and flock for
    // our own delivery threads (fcntl locks do not exclude threads of one
    // process). Each is tried for a while; a mailbox that stays locked
    // defers the message to a later attempt.
    let _dot = DotLock::take(path)?;
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut tries = 0;
    loop {
        let flocked = match f.try_lock() {
            Ok(()) => true,
            Err(std::fs::TryLockError::WouldBlock) => false,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        };
        if flocked && crate::os::try_lock_record(&f)? {
            break;
        }
        let _ = f.unlock();
        tries += 1;
        if tries >= LOCK_TRIES {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another program", path.display()),
            ));
        }
        std::thread::sleep(LOCK_PAUSE);
    }
    let old_len = f.seek(SeekFrom::End(0))?;
    let sender = match return_path.trim_start_matches('<').trim_end_matches('>') {
        "" => "MAILER-DAEMON".to_string(),
        s => s.replace(' ', "_"),
    };
    let result = (|| {
        let mut out = io::BufWriter::new(&f);
        // The separator, in the asctime form readers expect.
        writeln!(out, "From {sender} {}", asctime(time::unix_now()))?;
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.ends_with(b"\r\n") {
                line.truncate(line.len() - 2);
                line.push(b'\n');
            }
            // mboxrd: ">*From " gets one more '>'.
            let body = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
            if line[body..].starts_with(b"From ") {
                out.write_all(b">")?;
            }
            out.write_all(&line)?;
        }
        if !line.ends_with(b"\n") && !line.is_empty() {
            out.write_all(b"\n")?;
        }
        out.write_all(b"\n")?;
        out.flush()?;
        drop(out);
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = f.set_len(old_len);
        return Err(e);
    }
    Ok(path.to_path_buf())
}

/// Copies `r` to `w` with each CR LF pair written as LF (the local line
/// convention); a CR not followed by LF is kept, also across reads.
pub(crate) fn copy_crlf_as_lf(r: &mut impl Read, w: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut held_cr = false;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        if std::mem::take(&mut held_cr) && chunk[0] != b'\n' {
            w.write_all(b"\r")?;
        }
        let mut start = 0;
        for (i, _) in chunk.iter().enumerate().filter(|&(_, &b)| b == b'\r') {
            match chunk.get(i + 1) {
                Some(b'\n') => {
                    w.write_all(&chunk[start..i])?;
                    start = i + 1;
                }
                Some(_) => {}
                None => {
                    w.write_all(&chunk[start..i])?;
                    start = n;
                    held_cr = true;
                }
            }
        }
        w.write_all(&chunk[start..])?;
    }
    if held_cr {
        w.write_all(b"\r")?;
    }
    Ok(())
}

/// How often, and how far apart, a locked mbox is tried before the
/// delivery is deferred (Postfix: 20 tries a second apart).
const LOCK_TRIES: u32 = 20;
const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// A dot lock older than this was left by a program that died (Postfix's
/// stale_lock_time).
const STALE_DOT_LOCK: std::time::Duration = std::time::Duration::from_secs(500);

/// `<mbox>.lock`, made with O_EXCL, removed when dropped.
struct DotLock(PathBuf);

impl DotLock {
    fn take(mbox: &Path) -> io::Result<DotLock> {
        let mut name = mbox.as_os_str().to_owned();
        name.push(".lock");
        let lock = PathBuf::from(name);
        for _ in 0..LOCK_TRIES {
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(_) => return Ok(DotLock(lock)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // A lock file is empty or holds a PID: anything larger
                    // is not one, and is never removed.
                    let stale = fs::symlink_metadata(&lock).is_ok_and(|m| {
                        m.is_file()
                            && m.len() <= 64
                            && m.modified()
                                .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > STALE_DOT_LOCK))
                    });
                    if stale {
                        log::warn!("warning: {}: removing a stale lock", lock.display());
                        let _ = fs::remove_file(&lock);
                        continue;
                    }
                    std::thread::sleep(LOCK_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is locked (dot lock)", mbox.display()),
        ))
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `Sun Nov 29 01:54:17 2026`
fn asctime(secs: u64) -> String {
    format!("{} {}", time::mailq(secs), time::civil(secs).year)
}

/// Final delivery into the mailboxes of local users, as Postfix's
/// local(8): a recipient who is no local user bounces (user unknown), a
/// message that already carries the recipient's `Delivered-To:` has looped
/// and bounces (5.4.6), and a mailbox reached through several recipients
/// (an alias and its member, two spellings, two local domains) gets one
/// copy. A failure to write is temporary: the message stays queued.
pub struct Local<'a> {
    pub mail_dir: &'a Path,
    pub format: MailboxFormat,
    pub hostname: &'a str,
    /// True for a user who may receive mail here (the name exactly).
    pub known: &'a dyn Fn(&str) -> bool,
    /// `recipient_delimiter`: `alice+lists` is alice's when it is nobody's.
    pub delimiter: &'a str,
    /// Mailboxes that had this message in an earlier attempt.
    pub delivered_before: HashSet<String>,
}

/// The mailbox a local recipient's mail goes to: the local part, lower
/// case (`postmaster` for `<postmaster>`).
pub fn mailbox_name(addr: &ForwardPath) -> String {
    match addr {
        ForwardPath::Postmaster => "postmaster".into(),
        ForwardPath::Mailbox(m) => m.local_unquoted().to_ascii_lowercase(),
    }
}

/// The mailbox of a local recipient: its name, or (when that is nobody's)
/// the name without its extension (`recipient_delimiter`).
pub fn mailbox_user(addr: &ForwardPath, delimiter: &str, known: &dyn Fn(&str) -> bool) -> String {
    let full = mailbox_name(addr);
    if delimiter.is_empty() || known(&full) {
        return full;
    }
    crate::config::virtual_alias::strip_extension(&full, delimiter).to_string()
}

impl Transport for Local<'_> {
    fn deliver(&self, batch: &Batch) -> Delivery {
        let mut delivered = self.delivered_before.clone();
        // The message's own Delivered-To: fields, read when first needed.
        let mut delivered_to: Option<Vec<String>> = None;
        let states = batch
            .rcpts
            .iter()
            .map(|&i| {
                let r = &batch.env.rcpts[i];
                let user = mailbox_user(&r.addr, self.delimiter, self.known);
                if delivered.contains(&user) {
                    return RcptState::Sent(Status::new(
                        250,
                        Enhanced(2, 0, 0),
                        "delivered to mailbox (once for all its recipients)",
                    ));
                }
                let addr = r.addr.bare();
                let looped = |dt: &mut Option<Vec<String>>| {
                    dt.get_or_insert_with(|| delivered_to_of(batch.content))
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(&addr))
                };
                if !(self.known)(&user) || !valid_user_name(&user) {
                    RcptState::Failed(Status::new(
                        550,
                        Enhanced(5, 1, 1),
                        format!("<{addr}>: user unknown"),
                    ))
                } else if looped(&mut delivered_to) {
                    RcptState::Failed(Status::new(
                        554,
                        Enhanced(5, 4, 6),
                        format!("<{addr}>: mail forwarding loop"),
                    ))
                } else {
                    self.write(batch, &user, &addr, &mut delivered)
                }
            })
            .collect();
        Delivery {
            states,
            relay: "local".into(),
            remote_mta: None,
            success_notice: Some(crate::bounce::Action::Delivered),
        }
    }
}

impl Local<'_> {
    fn write(
        &self,
        batch: &Batch,
        user: &str,
        addr: &str,
        done: &mut HashSet<String>,
    ) -> RcptState {
        let from = batch.env.from.to_string();
        match deliver(
            self.mail_dir,
            self.format,
            self.hostname,
            user,
            &from,
            addr,
            batch.content,
        ) {
            Ok(_) => {
                done.insert(user.to_string());
                RcptState::Sent(Status::new(250, Enhanced(2, 0, 0), "delivered to mailbox"))
            }
            Err(e) => RcptState::Deferred(Status::new(
                451,
                Enhanced(4, 3, 0),
                format!("cannot deliver to mailbox of {user}: {e}"),
            )),
        }
    }
}

/// The addresses in the `Delivered-To:` fields of the message's header
/// (RFC 9228); none if it cannot be read (delivery reports that itself).
fn delivered_to_of(msg: &Content) -> Vec<String> {
    let mut head = Vec::new();
    if msg
        .open()
        .and_then(|f| {
            f.take(crate::bounce::MAX_RETURNED_HEADERS as u64)
                .read_to_end(&mut head)
        })
        .is_err()
    {
        return Vec::new();
    }
    // Only a real header section (one that ends in an empty line), with
    // folded fields unfolded (RFC 5322 §2.2.3).
    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
        return Vec::new();
    }
    let section = crate::bounce::header_section(&head);
    let text = String::from_utf8_lossy(section)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("Delivered-To").then(|| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_to_fields_are_read_unfolded_and_only_from_a_header_section() {
        let read = |bytes: &[u8]| {
            let p = std::env::temp_dir().join(format!("satchel-dt-{}", std::process::id()));
            fs::write(&p, bytes).unwrap();
            let c = Content {
                path: p.clone(),
                offset: 0,
                len: bytes.len() as u64,
            };
            let v = delivered_to_of(&c);
            fs::remove_file(&p).unwrap();
            v
        };
        assert_eq!(
            read(b"Delivered-To:\r\n bob@h.test\r\ndelivered-to: <Carol@h.test>\r\n\r\nDelivered-To: body@h.test\r\n"),
            vec!["bob@h.test".to_string(), "Carol@h.test".to_string()]
        );
        // No empty line: no header section to speak of.
        assert!(read(b"Delivered-To: bob@h.test\r\nno end of headers").is_empty());
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("satchel-local-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// `bytes` as the content of a queue file: after a head, which is
    /// never delivered.
    fn queued(d: &Path, bytes: &[u8]) -> Content {
        let path = d.join("queued");
        fs::write(&path, [b"version 2\nend\n".as_slice(), bytes].concat()).unwrap();
        Content {
            path,
            offset: 14,
            len: bytes.len() as u64,
        }
    }

    #[test]
    fn maildir_delivery_prepends_return_path_and_stores_lf_line_ends() {
        let d = tmp("maildir");
        let msg = queued(&d, b"Subject: x\r\n\r\nFrom here\r\nlone\rcr\r\n");
        let p = deliver(
            &d.join("mail"),
            MailboxFormat::Maildir,
            "h",
            "alice",
            "<a@b>",
            "alice@h",
            &msg,
        )
        .unwrap();
        assert!(p.starts_with(d.join("mail/alice/new")));
        assert_eq!(
            fs::read(&p).unwrap(),
            b"Return-Path: <a@b>\nDelivered-To: alice@h\nSubject: x\n\nFrom here\nlone\rcr\n"
        );
        assert_eq!(fs::read_dir(d.join("mail/alice/tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mbox_delivery_quotes_from_lines_and_separates_messages() {
        let d = tmp("mbox");
        let msg = queued(&d, b"Subject: x\r\n\r\nFrom here\r\n>From there\r\n");
        for _ in 0..2 {
            deliver(&d, MailboxFormat::Mbox, "h", "bob", "<>", "bob@h", &msg).unwrap();
        }
        let text = fs::read_to_string(d.join("bob")).unwrap();
        assert!(text.starts_with("From MAILER-DAEMON "));
        assert_eq!(text.matches("\nFrom MAILER-DAEMON ").count(), 1);
        assert!(text.contains(
            "Return-Path: <>\nDelivered-To: bob@h\nSubject: x\n\n>From here\n>>From there\n\n"
        ));
        assert!(!text.contains('\r'));
        fs::remove_dir_all(d).unwrap();
    }

    /// A reader that hands out at most `n` bytes a read, so CR LF pairs
    /// fall across the reads.
    struct Drip<'a>(&'a [u8], usize);

    impl Read for Drip<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn crlf_becomes_lf_across_reads_and_lone_crs_stay() {
        let input = b"a\r\nb\rc\r\r\n\r\nend\r";
        for step in 1..=input.len() {
            let mut out = Vec::new();
            copy_crlf_as_lf(&mut Drip(input, step), &mut out).unwrap();
            assert_eq!(out, b"a\nb\rc\r\n\nend\r", "reads of {step}");
        }
    }

    #[test]
    fn unsafe_user_names_are_refused() {
        let d = tmp("unsafe");
        let msg = queued(&d, b"x\r\n");
        for user in ["../etc", "a/b", ".x", "a\0b"] {
            assert!(deliver(&d, MailboxFormat::Maildir, "h", user, "<>", "<x>", &msg).is_err());
        }
        fs::remove_dir_all(d).unwrap();
    }
}
