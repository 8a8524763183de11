//! The spool: the only thing the receiving and delivering halves share.
//! It owns the directory layout, queue IDs, the crash protocol and the
//! queue-file format. It never talks to the network and knows nothing of
//! SMTP.
//!
//! ```text
//! spool/tmp/<id>       a queue file being written (locked by its writer)
//! spool/queue/<id>     a waiting message; its rename into place is the commit
//! spool/active/<id>    a message claimed by a delivery thread
//! spool/hold/<id>      a message put on hold by the operator (never delivered until released)
//! spool/corrupt/<id>   queue files that failed to parse, kept for a human
//! spool/msg/<id>       the content of a message whose envelope changed (and of
//!                      version 1 envelopes, from before queue files)
//! ```
//!
//! ## Queue files
//!
//! One file per message, as in Postfix: the envelope (see `envelope`)
//! first, then the message bytes, `Received:` first, at the offset the
//! envelope's `data` line gives. A message being received is written
//! `HEAD_ROOM` bytes into its file; at the end of DATA the envelope is
//! written into the room before it (padded with newlines), so one file,
//! one sync, makes the message durable. An envelope that outgrows the room
//! (hundreds of recipients) gets a new file with the content copied after
//! it.
//!
//! Delivery never updates a file in place and never copies the content:
//! the first change of an envelope (a deferral, an alias expansion) links
//! the queue file as `msg/<id>` and replaces the queue file by the new
//! envelope alone, which says where the content is (`data msg N`); see
//! `Spool::rewrite`. The hot path, a message delivered at the first
//! attempt, stays one file.
//!
//! ## Receiving: the crash protocol
//!
//! | step | action                                          | a crash after it leaves            | recovery at start                       |
//! |------|-------------------------------------------------|------------------------------------|-----------------------------------------|
//! | 1    | create `tmp/<id>` (O_EXCL, or a recycled file), lock it, write the content after the room | a `tmp/<id>`  | unlocked: removed   |
//! | 2    | write the envelope into the room, cut the file to length, fdatasync it | same                               | same                                    |
//! | 3    | rename `tmp/<id>` -> `queue/<id>`               | the rename may or may not persist  | queued, or a `tmp/` file removed (no 250 sent) |
//! | 4    | fsync `queue/`                                  | a queued message                   | found by the scan                       |
//! | 5    | unlock; reply `250 Ok: queued as <id>`          | a queued message                   | found by the scan                       |
//!
//! A 250 is sent only after step 4, so an acknowledged message is on disk
//! with its envelope.
//!
//! ## Group commit
//!
//! Each session syncs its own file (step 2, with fdatasync: the new size
//! and blocks are what matter) in its own thread, so the syncs of many
//! sessions overlap and the kernel merges their flushes. Steps 3 and 4
//! are shared by the sessions that reach them at the same time: a session
//! that finds no commit running becomes the leader, takes every message
//! waiting, renames each into `queue/`, fsyncs `queue/` once, and wakes
//! the others with their own results. Sessions arriving meanwhile wait
//! for the next leader, which is one of them. With one session nothing
//! waits; with many, one directory fsync serves a whole batch. No message
//! hears 250 before its own file and the directory have been synced.
//!
//! Nothing is half-visible: a file in `tmp/` is not a message. Its writer
//! holds an advisory lock on it from step 1 to step 5, so another
//! process's recovery (an inetd-mode session or a queue runner sharing the
//! spool) never takes a live transaction for a leftover.
//!
//! ## Recycled files
//!
//! Creating and deleting inodes is most of what a busy spool costs the
//! kernel (a profile of 32 sessions showed ext4's inode allocator in half
//! of the CPU time, scanning past recently deleted inodes). So the daemon
//! does not delete the file of a delivered message: it renames it to
//! `tmp/free.<pid>.<n>` (at most `POOL_MAX` files, and never more than
//! `POOL_BYTES_MAX`, 32 MiB, of disk: beyond that a file is removed), and
//! the next message takes one instead of creating a file. A recycled file
//! is locked first, then moved into place with RENAME_NOREPLACE (so a
//! name is never taken twice, by two threads or two processes), then
//! rewritten and cut to its new length before it is synced (its old
//! blocks are reused: nothing to allocate, nothing to free). That is step
//! 1 above, with the same guarantees as an exclusive create. A crash
//! leaves unlocked `free.*` files, which recovery removes like any other
//! leftover.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::{Data, Envelope};

/// Spool sub-directories, created at open (`msg/` is made by the first
/// rewrite of an envelope).
pub const DIRS: [&str; 5] = ["tmp", "queue", "active", "hold", "corrupt"];

/// Room for the envelope before the content of a message being received:
/// enough for a few dozen recipients, and with a small message still one
/// 4 KiB block.
const HEAD_ROOM: u64 = 2048;

/// The longest envelope read: far beyond any real one (a recipient line is
/// at most a few hundred bytes), a bound on what a damaged file without an
/// `end` line can make a reader hold.
const MAX_HEAD: usize = 64 << 20;

/// A queue ID: 16 upper-case hex digits, the microseconds since the epoch
/// at arrival (strictly increasing within a process), so IDs sort by
/// arrival and stay unique across restarts. A clash (another process in
/// the same microsecond, or a clock stepped back while older messages
/// wait) is prevented when the message is created: `tmp/<id>` is taken
/// exclusively; a process that has listed the spool (the daemon, a queue
/// run) makes its IDs above every ID it has seen there, and any other
/// looks the ID up in `queue/`, `active/` and `hold/`. The commit's
/// RENAME_NOREPLACE into `queue/` is the last guard.
pub type QueueId = String;

static LAST_ID: Mutex<u64> = Mutex::new(0);

/// The highest queue ID known to be in the spool once this process has
/// listed it (`recover`, then `note_id`); `u64::MAX` until then. New IDs
/// are made above it, so only an ID at or below it (a process that has not
/// listed the spool) needs the look-up in `queue/`, `active/` and `hold/`.
static KNOWN_MAX: AtomicU64 = AtomicU64::new(u64::MAX);

/// Records that the queue ID `id` is in the spool (the daemon's scans):
/// the IDs this process makes from now on are above it.
pub fn note_id(id: &str) {
    let Ok(v) = u64::from_str_radix(id, 16) else {
        return;
    };
    let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
    *last = (*last).max(v);
    let _ = KNOWN_MAX.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| {
        (k != u64::MAX && k < v).then_some(v)
    });
}

fn next_id_value() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
    *last = now.max(*last + 1);
    *last
}

/// True for strings that can be queue IDs (and so safe as file names).
pub fn is_queue_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    shared: Arc<Shared>,
}

/// What every clone of a `Spool` shares: the group committer, the
/// directories where messages wait (kept open so that a commit or a
/// listing does not look them up again), and the recycled files.
#[derive(Debug)]
struct Shared {
    queue_dir: File,
    active_dir: File,
    hold_dir: File,
    commits: Mutex<Commits>,
    done: Condvar,
    pool: Mutex<Pool>,
    /// This process's ID, for the names of recycled files.
    pid: u32,
}

/// At most this many recycled files are kept.
const POOL_MAX: usize = 512;
/// Recycled files keep their blocks, so the pool holds at most this much
/// disk: a file that would take it over the budget is removed instead.
const POOL_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Recycled files (see "Recycled files" above), in `tmp/`, each with its
/// size. Only a process that enables it keeps any.
#[derive(Debug, Default)]
struct Pool {
    enabled: bool,
    files: Vec<(PathBuf, u64)>,
    /// Files whose old names (in `from`) may not be gone for good yet:
    /// usable once those directories are synced (see `take_recycled`).
    pending: Vec<(PathBuf, u64)>,
    from: Vec<PathBuf>,
    bytes: u64,
    next: u64,
}

impl Pool {
    fn push(&mut self, path: PathBuf, size: u64) {
        self.bytes += size;
        self.files.push((path, size));
    }

    fn pop(&mut self) -> Option<(PathBuf, u64)> {
        let (path, size) = self.files.pop()?;
        self.bytes -= size;
        Some((path, size))
    }
}

/// One message waiting for the group commit (steps 3 and 4).
#[derive(Debug)]
struct Job {
    ticket: u64,
    /// Held (with its lock) until the batch is done: step 5 unlocks.
    _file: File,
    tmp: PathBuf,
    queued: PathBuf,
}

#[derive(Debug, Default)]
struct Commits {
    waiting: Vec<Job>,
    next_ticket: u64,
    leader: bool,
    results: HashMap<u64, io::Result<()>>,
}

/// Where a listed message was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueState {
    Queued,
    Active,
    Held,
}

/// What start-up recovery found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub tmp_removed: usize,
    pub orphans_removed: usize,
    pub requeued: usize,
    pub queued: usize,
}

/// Where the content of a queued message is: in its queue file after the
/// envelope, or (version 1) in `msg/<id>` from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Content {
    /// The content's bytes, read from the start.
    pub fn open(&self) -> io::Result<ContentReader> {
        let mut f = open_noatime(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(ContentReader {
            file: f,
            left: self.len,
        })
    }

    /// True when the content is a version 1 message file, not part of the
    /// queue file at `queue_file`.
    pub fn is_separate(&self, queue_file: &Path) -> bool {
        self.path != queue_file
    }
}

/// Exactly the `len` bytes of a message's content: reading fails, rather
/// than ending early, if the file is shorter than its envelope says, so a
/// damaged or mistaken file is never delivered cut short.
#[derive(Debug)]
pub struct ContentReader {
    file: File,
    left: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..max])?;
        if n == 0 && max > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the message is {} bytes shorter than its envelope says",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A queue file that was read.
#[derive(Debug)]
pub struct Queued {
    pub env: Envelope,
    pub content: Content,
    /// The envelope as stored (`queue show` prints it as it is).
    pub text: String,
    /// The queue file as it was opened and read.
    pub file: File,
    /// The content is in a file of its own (`msg/<id>`), not in `file`.
    pub separate: bool,
}

impl Queued {
    /// The content's bytes, read from the start: from the file that was
    /// read, so a rename or rewrite meanwhile cannot swap it for another.
    pub fn open_content(&self) -> io::Result<ContentReader> {
        if self.separate {
            return self.content.open();
        }
        let mut f = self.file.try_clone()?;
        f.seek(SeekFrom::Start(self.content.offset))?;
        Ok(ContentReader {
            file: f,
            left: self.content.len,
        })
    }
}

/// Why a queue file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Reading failed (`NotFound`: the message moved on).
    Io(io::Error),
    /// The file is damaged: it is not to be acted upon.
    Damaged(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => e.fmt(f),
            ReadError::Damaged(d) => f.write_str(d),
        }
    }
}

/// The head of a queue file: `env` as text with its content at `room`, or
/// right after the text when it does not fit, padded with newlines to
/// where the content starts.
fn queue_head(env: &Envelope, room: u64) -> Vec<u8> {
    // The text with the longest possible offset bounds every other.
    let most = env.to_text(Data::Here(u64::MAX)).len() as u64;
    let data = room.max(most);
    let mut head = env.to_text(Data::Here(data)).into_bytes();
    head.resize(data as usize, b'\n');
    head
}

/// Reads the envelope at the head of the queue file `f`: the envelope,
/// where its content is, and its text as stored; `f` is handed back.
fn read_head(mut f: File) -> Result<(Envelope, Data, Vec<u8>, File), ReadError> {
    // Most envelopes are a few hundred bytes: read little, grow if needed.
    let mut buf = vec![0u8; 1024];
    let mut len = 0;
    let end = loop {
        if let Some(p) = find_end(&buf[..len]) {
            break p;
        }
        if len == buf.len() {
            if len >= MAX_HEAD {
                return Err(ReadError::Damaged("no 'end' line".into()));
            }
            buf.resize(len * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break len,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    };
    buf.truncate(end);
    let text = std::str::from_utf8(&buf).map_err(|e| ReadError::Damaged(e.to_string()))?;
    let (env, data) = Envelope::parse(text).map_err(|e| ReadError::Damaged(e.to_string()))?;
    Ok((env, data, buf, f))
}

/// The length of the envelope text in `b` (through its `end` line), once
/// it is all there.
fn find_end(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(p) = b[at..].iter().position(|&c| c == b'\n') {
        let line = at + p + 1;
        if b[line..].starts_with(b"end\n") {
            return Some(line + 4);
        }
        at = line;
    }
    None
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A copy of `e` for each message of a batch that one error fails.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Steps 3 and 4 for a batch; one result per job. The files are closed
/// (their locks released, step 5) when the batch is done.
fn commit_batch(sh: &Shared, batch: Vec<Job>) -> Vec<(u64, io::Result<()>)> {
    // The files were synced by their own sessions, in parallel.
    let mut results: Vec<(u64, io::Result<()>)> = batch
        .iter()
        .map(|j| (j.ticket, crate::os::rename_noreplace(&j.tmp, &j.queued)))
        .collect();
    let renamed: Vec<bool> = results.iter().map(|(_, r)| r.is_ok()).collect();
    if renamed.iter().any(|&ok| ok) {
        if let Err(e) = sh.queue_dir.sync_all() {
            for (_, res) in results.iter_mut().filter(|(_, r)| r.is_ok()) {
                *res = Err(copy_error(&e));
            }
        }
    }
    for ((j, (_, r)), was_renamed) in batch.iter().zip(&results).zip(renamed) {
        if r.is_err() {
            // No 250 will be sent: take the message back wherever it is.
            let _ = fs::remove_file(&j.tmp);
            if was_renamed {
                let _ = fs::remove_file(&j.queued);
            }
        }
    }
    results
}

impl Spool {
    /// Opens (creating when needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        for d in DIRS {
            fs::create_dir_all(root.join(d))?;
        }
        Spool::open_existing(root)
    }

    /// Opens the spool at `root` without creating anything (the read-only
    /// tools): `NotFound` when it has not been made yet.
    pub fn open_existing(root: &Path) -> io::Result<Spool> {
        Ok(Spool {
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                queue_dir: File::open(root.join("queue"))?,
                active_dir: File::open(root.join("active"))?,
                hold_dir: File::open(root.join("hold"))?,
                commits: Mutex::new(Commits::default()),
                done: Condvar::new(),
                pool: Mutex::new(Pool::default()),
                pid: std::process::id(),
            }),
        })
    }

    /// Keeps the files of delivered messages for reuse (the daemon does;
    /// short-lived processes do not, or their pools would be left over).
    pub fn enable_recycling(&self) {
        self.pool().enabled = true;
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.shared.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Disposes of the queue file of a message that is done: moved into
    /// the pool when recycling is on and there is room, removed otherwise.
    pub fn discard(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(path);
        if let (Ok(m), Some(name)) = (&meta, path.file_name()) {
            if m.nlink() > 1 {
                // Its content also named `msg/<id>` by a rewrite that a
                // crash cut short: both names go, and it is not reused.
                let _ = fs::remove_file(self.dir("msg").join(name));
                return fs::remove_file(path);
            }
        }
        let (true, Ok(size)) = (self.pool().enabled, meta.map(|m| m.len())) else {
            return fs::remove_file(path);
        };
        let to = {
            let mut pool = self.pool();
            if pool.files.len() + pool.pending.len() >= POOL_MAX
                || pool.bytes + size > POOL_BYTES_MAX
            {
                None
            } else {
                pool.bytes += size; // reserved while the rename runs
                pool.next += 1;
                Some(
                    self.dir("tmp")
                        .join(format!("free.{}.{}", self.shared.pid, pool.next)),
                )
            }
        };
        let Some(to) = to else {
            return fs::remove_file(path);
        };
        if fs::rename(path, &to).is_err() {
            self.pool().bytes -= size;
            return fs::remove_file(path);
        }
        // Reused only once its old name is gone for good (a crash must not
        // bring the delivered message back over a new message's bytes):
        // pending until its directory is synced, once for many files.
        let mut pool = self.pool();
        pool.pending.push((to, size));
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if !pool.from.contains(&dir) {
            pool.from.push(dir);
        }
        Ok(())
    }

    /// A recycled file to reuse, if any. When only pending ones are left,
    /// the directories they were discarded from are synced first (one
    /// sync makes all of them usable).
    fn take_recycled(&self) -> Option<(PathBuf, u64)> {
        let (dirs, batch) = {
            let mut pool = self.pool();
            if let Some(f) = pool.pop() {
                return Some(f);
            }
            if pool.pending.is_empty() {
                return None;
            }
            (
                std::mem::take(&mut pool.from),
                std::mem::take(&mut pool.pending),
            )
        };
        let synced = dirs.iter().all(|d| sync_dir(d).is_ok());
        let mut pool = self.pool();
        for (f, size) in batch {
            if synced {
                pool.files.push((f, size));
            } else {
                pool.bytes -= size;
                let _ = fs::remove_file(&f);
            }
        }
        pool.pop()
    }

    /// Creates `dest` exclusively, locked, for reading and writing: a
    /// recycled file moved there when the pool has one, else a new file.
    /// `AlreadyExists` when `dest` exists. A recycled file keeps its old
    /// bytes: the caller writes and then sets the length (`set_len`)
    /// before syncing, so a rewrite of similar size allocates no blocks
    /// and frees none (freeing means a synchronous discard on file
    /// systems mounted with `discard`).
    fn create_locked(&self, dest: &Path) -> io::Result<File> {
        loop {
            let recycled = self.take_recycled();
            let Some((from, size)) = recycled else {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(dest)?;
                if let Err(e) = f.lock() {
                    let _ = fs::remove_file(dest);
                    return Err(e);
                }
                return Ok(f);
            };
            // Lock first: the file is never in place unlocked.
            let Ok(f) = OpenOptions::new().read(true).write(true).open(&from) else {
                continue; // gone: try the next one
            };
            if f.lock().is_err() {
                let _ = fs::remove_file(&from);
                continue;
            }
            match crate::os::rename_noreplace(&from, dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    drop(f);
                    self.pool().push(from, size);
                    return Err(e);
                }
                Err(_) => continue,
            }
            return Ok(f);
        }
    }

    /// Writes a whole file at `dest` (created locked, see `create_locked`):
    /// `head`, then `content` copied (in the kernel where it can), cut to
    /// length, synced. `len` is the length `content` must have.
    fn write_file(
        &self,
        dest: &Path,
        head: &[u8],
        content: &mut impl Read,
        len: u64,
    ) -> io::Result<File> {
        let mut f = self.create_locked(dest)?;
        let written = (|| {
            f.write_all(head)?;
            let n = io::copy(content, &mut f)?;
            if n != len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the content is {n} bytes, its envelope says {len}"),
                ));
            }
            f.set_len(head.len() as u64 + n)?;
            f.sync_data()
        })();
        match written {
            Ok(()) => Ok(f),
            Err(e) => {
                let _ = fs::remove_file(dest);
                Err(e)
            }
        }
    }

    /// Replaces the envelope of the claimed message at `path` by `env`,
    /// atomically and durably, and returns where its content is now.
    ///
    /// The content is never copied: the first change gives the queue file
    /// a second name, `msg/<id>` (a hard link, its directory synced), and
    /// from then on the message is an envelope alone (`data msg N`) and
    /// that file. The envelope is written to `tmp/`, synced and renamed
    /// over `path`, whose directory is synced: a crash leaves the old or
    /// the new envelope, and either finds its content. So a deferral costs
    /// a few hundred bytes of disk, not a copy of the message.
    pub fn rewrite(&self, path: &Path, env: &Envelope, content: &Content) -> io::Result<Content> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("no file name"))?;
        let msg = self.dir("msg").join(name);
        if !content.is_separate(path) {
            self.link_content(path, &msg)?;
        }
        let tmp = self.dir("tmp").join(name);
        let head = env.to_text(Data::Msg(content.offset));
        let replaced = (|| {
            self.write_file(&tmp, head.as_bytes(), &mut io::empty(), 0)?;
            fs::rename(&tmp, path)
        })();
        if let Err(e) = replaced {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Renamed: whichever envelope a crash leaves finds the content in
        // msg/<id>, so a failed sync is no reason to go on with the old one.
        if let Err(e) = sync_dir(path.parent().unwrap_or(Path::new("."))) {
            log::warn!(
                "warning: {}: directory sync after a rewrite: {e}",
                path.display()
            );
        }
        Ok(Content {
            path: msg,
            offset: content.offset,
            len: content.len,
        })
    }

    /// Gives the queue file `path` the second name `msg` (see `rewrite`);
    /// fine if it already has it (a rewrite a crash cut short), an error if
    /// the name is another file's.
    fn link_content(&self, path: &Path, msg: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        fs::create_dir_all(self.dir("msg"))?;
        if let Err(e) = fs::hard_link(path, msg) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e);
            }
            // Already this file (a rewrite a crash cut short); another file
            // under that name is never removed: it may be all there is of
            // some message.
            let (a, b) = (fs::metadata(path)?, fs::metadata(msg)?);
            if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is another file", msg.display()),
                ));
            }
        }
        sync_dir(&self.dir("msg"))
    }

    /// Steps 3 and 4 for `job`, shared with whoever commits at the same
    /// time (see "Group commit" above). Returns this job's own result.
    fn group_commit(&self, mut job: Job) -> io::Result<()> {
        let sh = &*self.shared;
        let mut c = sh.commits.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = c.next_ticket;
        c.next_ticket += 1;
        job.ticket = ticket;
        c.waiting.push(job);
        loop {
            if let Some(r) = c.results.remove(&ticket) {
                return r;
            }
            if !c.leader {
                c.leader = true;
                let batch = std::mem::take(&mut c.waiting);
                drop(c);
                let results = commit_batch(sh, batch);
                c = sh.commits.lock().unwrap_or_else(|p| p.into_inner());
                c.results.extend(results);
                c.leader = false;
                sh.done.notify_all();
                continue;
            }
            c = sh.done.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Starts a new message: creates `tmp/<id>` exclusively and locks it.
    pub fn create(&self) -> io::Result<Incoming> {
        for _ in 0..100 {
            let value = next_id_value();
            let id = format!("{value:016X}");
            let path = self.dir("tmp").join(&id);
            match self.create_locked(&path) {
                Ok(_) if value <= KNOWN_MAX.load(Ordering::SeqCst) && self.id_in_use(&id) => {
                    let _ = fs::remove_file(&path);
                    continue;
                }
                Ok(mut f) => {
                    let started = f.seek(SeekFrom::Start(HEAD_ROOM));
                    let mut inc = Incoming {
                        id,
                        path,
                        spool: self.clone(),
                        // The session hands over at most its reader's
                        // 16 KiB at a time.
                        file: Some(BufWriter::with_capacity(16 * 1024, f)),
                        written: 0,
                        error: None,
                        committed: false,
                    };
                    if let Err(e) = started {
                        inc.error = Some(e);
                    }
                    return Ok(inc);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not allocate a unique queue ID"))
    }

    /// True when a waiting, claimed or held message has the ID `id`.
    fn id_in_use(&self, id: &str) -> bool {
        ["queue", "active", "hold"]
            .iter()
            .any(|d| fs::symlink_metadata(self.dir(d).join(id)).is_ok())
    }

    /// Queues a whole message held in memory (bounces, local submission);
    /// returns its queue ID once it is durable.
    pub fn queue_bytes(&self, bytes: &[u8], env: &mut Envelope) -> io::Result<QueueId> {
        let mut inc = self.create()?;
        inc.write(bytes);
        let id = inc.id.clone();
        inc.commit(env)?;
        Ok(id)
    }

    /// Takes the queue-runner lock (`spool/runner.lock`): whoever holds it
    /// (the daemon, or one `satchel queue run`) is the only process that
    /// delivers, and so the only one allowed to move `active/` back to
    /// `queue/`. `Ok(None)` when another process holds it. The lock lasts
    /// as long as the returned file is open; the kernel drops it when the
    /// process dies, so a crashed runner never blocks the next one.
    pub fn try_runner_lock(&self) -> io::Result<Option<File>> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("runner.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// True while some process holds the runner lock.
    pub fn runner_active(&self) -> bool {
        matches!(self.try_runner_lock(), Ok(None))
    }

    /// Start-up recovery (call it holding the runner lock): removes dead
    /// temporary files and version 1 message files without an envelope,
    /// moves `active/` back to `queue/`, and counts what is queued.
    /// Files locked by a live writer are left alone.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut r = Recovery::default();
        for name in list_names(&self.dir("tmp"))? {
            let p = self.dir("tmp").join(&name);
            if unlocked(&p) {
                match fs::remove_file(&p) {
                    Ok(()) => r.tmp_removed += 1,
                    // Committed by its writer between the two looks.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for id in list_names(&self.dir("active"))? {
            fs::rename(self.dir("active").join(&id), self.dir("queue").join(&id))?;
            r.requeued += 1;
        }
        if r.requeued > 0 {
            sync_dir(&self.dir("queue"))?;
        }
        // One listing of each directory instead of a lookup per message:
        // start-up with a large queue stays quick.
        let mut queued = std::collections::HashSet::new();
        for d in ["queue", "hold"] {
            queued.extend(list_names(&self.dir(d))?);
        }
        r.queued = queued.len();
        // What is kept in corrupt/ for a person to look at keeps its content.
        queued.extend(list_names(&self.dir("corrupt")).unwrap_or_default());
        // From now on this process makes IDs above every one in the spool.
        let highest = queued
            .iter()
            .filter_map(|id| u64::from_str_radix(id, 16).ok())
            .max()
            .unwrap_or(0);
        {
            let mut last = LAST_ID.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(highest);
        }
        KNOWN_MAX.store(highest, Ordering::SeqCst);
        let msg = self.dir("msg");
        let old = match list_names(&msg) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            other => other?,
        };
        for id in old {
            let p = msg.join(&id);
            // Locked = a version 1 writer still at work.
            if !queued.contains(&id) && unlocked(&p) {
                fs::remove_file(&p)?;
                r.orphans_removed += 1;
            }
        }
        Ok(r)
    }

    /// Every message in `queue/`, `active/` and `hold/`, sorted by ID
    /// (arrival). Damaged queue files are returned as errors naming the file.
    pub fn list(&self) -> io::Result<Vec<Result<(QueueState, Envelope), String>>> {
        Ok(self
            .list_ids()?
            .into_iter()
            .filter_map(|(id, state)| self.read_envelope(&id, state))
            .collect())
    }

    /// The IDs of every message in `queue/`, `active/` and `hold/`, sorted
    /// by ID (arrival): a listing that holds names, not envelopes, so that
    /// a large queue can be streamed with `read_envelope`.
    pub fn list_ids(&self) -> io::Result<Vec<(QueueId, QueueState)>> {
        let mut out = Vec::new();
        for (dir, state) in [
            ("queue", QueueState::Queued),
            ("active", QueueState::Active),
            ("hold", QueueState::Held),
        ] {
            for id in list_names(&self.dir(dir))? {
                if is_queue_id(&id) {
                    out.push((id, state));
                }
            }
        }
        // IDs are hexadecimal numbers of one width: sorted as numbers,
        // not strings (a tenth of the instructions of listing the queue).
        let mut keyed: Vec<(u64, QueueState, QueueId)> = out
            .into_iter()
            .map(|(id, state)| (u64::from_str_radix(&id, 16).unwrap_or(0), state, id))
            .collect();
        keyed.sort_unstable_by_key(|&(n, state, _)| (n, state));
        Ok(keyed
            .into_iter()
            .map(|(_, state, id)| (id, state))
            .collect())
    }

    /// The envelope of `id` in the directory of `state`; `None` when it
    /// has moved on since it was listed (delivered or claimed meanwhile).
    pub fn read_envelope(
        &self,
        id: &str,
        state: QueueState,
    ) -> Option<Result<(QueueState, Envelope), String>> {
        let (dir, fd) = match state {
            QueueState::Queued => ("queue", &self.shared.queue_dir),
            QueueState::Active => ("active", &self.shared.active_dir),
            QueueState::Held => ("hold", &self.shared.hold_dir),
        };
        match crate::os::open_in(fd, id)
            .map_err(ReadError::Io)
            .and_then(read_head)
        {
            Ok((env, ..)) => Some(Ok((state, env))),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("{}: {e}", self.dir(dir).join(id).display()))),
        }
    }

    /// True when `f`, opened as message `id`, is still one of its names
    /// (in `queue/`, `active/`, `hold/`, or `msg/` after a rewrite): it has
    /// not been delivered, and its file recycled, since.
    pub fn still_names(&self, id: &str, f: &File) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = f.metadata() else {
            return false;
        };
        ["queue", "active", "hold", "msg"].iter().any(|d| {
            fs::metadata(self.dir(d).join(id))
                .is_ok_and(|n| (n.dev(), n.ino()) == (m.dev(), m.ino()))
        })
    }

    /// Reads the queue file at `path`: its envelope, and where its content
    /// is, checked to be all there.
    pub fn read_queued(&self, path: &Path) -> Result<Queued, ReadError> {
        let (env, data, text, f) = open_noatime(path)
            .map_err(ReadError::Io)
            .and_then(read_head)?;
        let content = match data {
            Data::Here(offset) => Content {
                path: path.to_path_buf(),
                offset,
                len: env.size,
            },
            Data::Msg(offset) => Content {
                path: self.dir("msg").join(&env.id),
                offset,
                len: env.size,
            },
        };
        let have = if content.is_separate(path) {
            fs::metadata(&content.path).map(|m| m.len())
        } else {
            f.metadata().map(|m| m.len())
        };
        // A damaged `data` or `size` may be anything: no overflow.
        let end = content.offset.checked_add(content.len);
        match have {
            Ok(n) if end.is_some_and(|end| n >= end) => Ok(Queued {
                env,
                separate: content.is_separate(path),
                content,
                text: String::from_utf8_lossy(&text).into_owned(),
                file: f,
            }),
            Ok(n) => Err(ReadError::Damaged(format!(
                "the message is cut short: {} of {} bytes",
                n.saturating_sub(content.offset),
                content.len
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ReadError::Damaged("the message file is missing".into()))
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}

/// Opens `p` for reading without updating its access time: a deferred
/// message's mtime is in the future (its next attempt), so with
/// `relatime` every read would otherwise dirty the inode. O_NOATIME is
/// only allowed to the file's owner; others read it the usual way.
pub fn open_noatime(p: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
    {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(p),
        r => r,
    }
}

/// True when nobody holds the advisory lock on `p` (or it vanished).
fn unlocked(p: &Path) -> bool {
    match File::open(p) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => false,
    }
}

fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if let Ok(name) = e.file_name().into_string() {
            v.push(name);
        }
    }
    Ok(v)
}

/// A message being received. Dropping it without `commit` removes it.
#[derive(Debug)]
pub struct Incoming {
    pub id: QueueId,
    path: PathBuf,
    spool: Spool,
    file: Option<BufWriter<File>>,
    written: u64,
    error: Option<io::Error>,
    committed: bool,
}

impl Incoming {
    /// Appends message bytes. The first error is kept and reported by
    /// `commit`; later writes are skipped, so a full disk costs nothing more.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(bytes) {
                Ok(()) => self.written += bytes.len() as u64,
                Err(e) => self.error = Some(e),
            }
        }
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Makes the message durable and queues it with `env` (steps 2 to 4 of
    /// the crash protocol). Only after `Ok` may the client hear 250.
    pub fn commit(mut self, env: &mut Envelope) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut f = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already closed"))?;
        f.flush()?;
        let file = f.into_inner().map_err(|e| e.into_error())?;
        env.id = self.id.clone();
        env.size = self.written;
        let head = queue_head(env, HEAD_ROOM);
        let file = if head.len() as u64 == HEAD_ROOM {
            // Step 2: the envelope into its room; the length cuts what a
            // recycled file held beyond the new content. In the session's
            // own thread, so that the sessions' syncs overlap (the kernel
            // and the device merge concurrent flushes); fdatasync covers
            // the new size and blocks, the directory entry is the batch's.
            file.write_all_at(&head, 0)?;
            file.set_len(HEAD_ROOM + self.written)?;
            file.sync_data()?;
            file
        } else {
            // Too many recipients for the room: a new file, the envelope
            // first and the content copied after it.
            let big = self.spool.dir("tmp").join(format!("{}.big", self.id));
            let content = Content {
                path: self.path.clone(),
                offset: HEAD_ROOM,
                len: self.written,
            };
            let head = queue_head(env, 0);
            let f = self
                .spool
                .write_file(&big, &head, &mut content.open()?, self.written)?;
            if let Err(e) = fs::rename(&big, &self.path) {
                let _ = fs::remove_file(&big);
                return Err(e);
            }
            f
        };
        let job = Job {
            ticket: 0,
            _file: file,
            tmp: self.path.clone(),
            queued: self.spool.dir("queue").join(&self.id),
        };
        // On error the batch has removed the file. On success it is closed,
        // which unlocks it.
        let r = self.spool.group_commit(job);
        self.committed = true;
        r
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::{ForwardPath, ReversePath};
    use crate::envelope::{RcptState, Recipient};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "satchel-spool-{tag}-{}-{}",
            std::process::id(),
            next_id_value()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn envelope() -> Envelope {
        Envelope {
            id: String::new(),
            created: 1,
            client: "127.0.0.1".into(),
            helo: "c".into(),
            protocol: "ESMTP".into(),
            body: "7BIT".into(),
            smtputf8: false,
            size: 0,
            from: ReversePath::parse("<a@b.test>").unwrap(),
            attempts: 0,
            next_attempt: 0,
            warned: false,
            rcpts: vec![Recipient {
                addr: ForwardPath::parse("<c@d.test>").unwrap(),
                state: RcptState::Pending,
                expanded: false,
            }],
        }
    }

    /// The content of the queued message `id`.
    fn content(s: &Spool, id: &str) -> Vec<u8> {
        let q = s.read_queued(&s.dir("queue").join(id)).unwrap();
        let mut v = Vec::new();
        q.content.open().unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn queue_ids_are_unique_and_sorted() {
        let ids: Vec<String> = (0..1000)
            .map(|_| format!("{:016X}", next_id_value()))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
        assert!(ids.iter().all(|i| is_queue_id(i)));
    }

    #[test]
    fn committed_message_is_listed_with_its_bytes() {
        let d = tempdir("commit");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: x\r\n\r\nbody\r\n");
        let mut env = envelope();
        inc.commit(&mut env).unwrap();
        assert_eq!(content(&s, &id), b"Subject: x\r\n\r\nbody\r\n");
        // One file: the envelope in its room, then the content.
        let file = fs::read(s.dir("queue").join(&id)).unwrap();
        assert_eq!(file.len() as u64, HEAD_ROOM + 20);
        assert!(file.starts_with(b"version 2\nid "));
        let end = find_end(&file).unwrap();
        assert!(file[..end].ends_with(b"\ndata 2048\nend\n"));
        assert!(file[end..2048].iter().all(|&b| b == b'\n'), "padding");
        assert_eq!(&file[2048..], b"Subject: x\r\n\r\nbody\r\n");
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1);
        let (state, e) = listed[0].as_ref().unwrap();
        assert_eq!(*state, QueueState::Queued);
        assert_eq!(e.id, id);
        assert_eq!(e.size, 20);
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn concurrent_commits_share_batches_and_each_gets_its_message() {
        let d = tempdir("group");
        let s = Spool::open(&d).unwrap();
        let ids: Vec<String> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let s = s.clone();
                    sc.spawn(move || {
                        let mut inc = s.create().unwrap();
                        let id = inc.id.clone();
                        inc.write(format!("message {i}\r\n").as_bytes());
                        inc.commit(&mut envelope()).unwrap();
                        (id, i)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    let (id, i) = h.join().unwrap();
                    assert_eq!(content(&s, &id), format!("message {i}\r\n").into_bytes());
                    id
                })
                .collect()
        });
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 16);
        let mut sorted = ids.clone();
        sorted.sort();
        let listed_ids: Vec<String> = listed
            .iter()
            .map(|r| r.as_ref().unwrap().1.id.clone())
            .collect();
        assert_eq!(listed_ids, sorted);
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        // Every file was unlocked when its commit returned.
        assert!(ids.iter().all(|id| unlocked(&s.dir("queue").join(id))));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_envelope_too_big_for_its_room_gets_a_file_of_its_own_size() {
        let d = tempdir("big");
        let s = Spool::open(&d).unwrap();
        let mut env = envelope();
        for i in 0..200 {
            env.rcpts.push(Recipient {
                addr: ForwardPath::parse(&format!("<user{i}@example.net>")).unwrap(),
                state: RcptState::Pending,
                expanded: false,
            });
        }
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: many\r\n\r\nx\r\n");
        inc.commit(&mut env).unwrap();
        let q = s.read_queued(&s.dir("queue").join(&id)).unwrap();
        assert!(q.content.offset > HEAD_ROOM);
        assert_eq!(q.env.rcpts.len(), 201);
        assert_eq!(content(&s, &id), b"Subject: many\r\n\r\nx\r\n");
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn content_shorter_than_its_envelope_says_is_an_error_not_a_short_message() {
        let d = tempdir("short");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: short\r\n\r\nbody\r\n");
        inc.commit(&mut envelope()).unwrap();
        let queued = s.dir("queue").join(&id);
        let q = s.read_queued(&queued).unwrap();
        // Cut after it was read, as a stale `Content` would see it.
        let f = OpenOptions::new().write(true).open(&queued).unwrap();
        f.set_len(q.content.offset + 5).unwrap();
        let mut v = Vec::new();
        let e = q.content.open().unwrap().read_to_end(&mut v).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // And a rewrite never puts another file's name over msg/<id>.
        fs::create_dir_all(s.dir("msg")).unwrap();
        fs::write(s.dir("msg").join(&id), b"someone else").unwrap();
        assert!(s.rewrite(&queued, &q.env, &q.content).is_err());
        assert_eq!(fs::read(s.dir("msg").join(&id)).unwrap(), b"someone else");
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn recovery_keeps_the_content_of_a_message_kept_in_corrupt() {
        let d = tempdir("corrupt");
        let s = Spool::open(&d).unwrap();
        fs::create_dir_all(s.dir("msg")).unwrap();
        fs::write(s.dir("corrupt").join("00000000000000AA"), b"version 2\n").unwrap();
        fs::write(s.dir("msg").join("00000000000000AA"), b"the only copy").unwrap();
        s.recover().unwrap();
        assert!(s.dir("msg").join("00000000000000AA").exists());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_message_read_is_its_own_until_its_file_is_recycled() {
        let d = tempdir("still");
        let s = Spool::open(&d).unwrap();
        s.enable_recycling();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: first\r\n\r\nbody\r\n");
        inc.commit(&mut envelope()).unwrap();
        let queued = s.dir("queue").join(&id);
        let q = s.read_queued(&queued).unwrap();
        assert!(s.still_names(&id, &q.file));
        // Claimed for delivery and rewritten after a deferral: the file
        // read is now msg/<id>, and its content is still this message's.
        let active = s.dir("active").join(&id);
        fs::rename(&queued, &active).unwrap();
        assert!(s.still_names(&id, &q.file));
        let claimed = s.read_queued(&active).unwrap();
        s.rewrite(&active, &claimed.env, &claimed.content).unwrap();
        assert!(s.still_names(&id, &q.file));
        let mut v = Vec::new();
        q.open_content().unwrap().read_to_end(&mut v).unwrap();
        assert_eq!(v, b"Subject: first\r\n\r\nbody\r\n");

        // A file delivered and recycled is no longer the message's.
        let mut inc = s.create().unwrap();
        let id2 = inc.id.clone();
        inc.write(b"Subject: second\r\n\r\nbody\r\n");
        inc.commit(&mut envelope()).unwrap();
        let other = s.dir("queue").join(&id2);
        let r = s.read_queued(&other).unwrap();
        s.discard(&other).unwrap();
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 1, "recycled");
        assert!(!s.still_names(&id2, &r.file));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_rewrite_replaces_the_envelope_and_never_copies_the_content() {
        use std::os::unix::fs::MetadataExt;
        let d = tempdir("rewrite");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: kept\r\n\r\nbody\r\n");
        inc.commit(&mut envelope()).unwrap();
        let active = s.dir("active").join(&id);
        fs::rename(s.dir("queue").join(&id), &active).unwrap();
        let ino = fs::metadata(&active).unwrap().ino();
        let mut q = s.read_queued(&active).unwrap();
        q.env.attempts = 3;
        q.env.rcpts[0].state = RcptState::Deferred("451 4.3.0 try again\r\nlater".into());
        let c = s.rewrite(&active, &q.env, &q.content).unwrap();
        // The content stays in its file, now named msg/<id>; the envelope
        // is a small file of its own.
        let msg = s.dir("msg").join(&id);
        assert_eq!((c.path.clone(), c.offset), (msg.clone(), HEAD_ROOM));
        assert_eq!(fs::metadata(&msg).unwrap().ino(), ino);
        assert_eq!(
            fs::read_to_string(&active).unwrap(),
            q.env.to_text(Data::Msg(HEAD_ROOM))
        );
        let again = s.read_queued(&active).unwrap();
        assert_eq!((&again.env, &again.content), (&q.env, &c));
        let mut v = Vec::new();
        c.open().unwrap().read_to_end(&mut v).unwrap();
        assert_eq!(v, b"Subject: kept\r\n\r\nbody\r\n");
        // A second change writes the envelope again, and only that.
        q.env.attempts = 4;
        assert_eq!(s.rewrite(&active, &q.env, &c).unwrap(), c);
        assert_eq!(s.read_queued(&active).unwrap().env.attempts, 4);
        assert_eq!(fs::metadata(&msg).unwrap().ino(), ino);
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);

        // A content file cut short is damaged, not delivered.
        let f = OpenOptions::new().write(true).open(&msg).unwrap();
        f.set_len(c.offset + 3).unwrap();
        match s.read_queued(&active) {
            Err(ReadError::Damaged(why)) => assert!(why.contains("cut short"), "{why}"),
            other => panic!("{other:?}"),
        }
        // So is one whose size and offset add up past 2^64 (wrapped, to 5).
        let text = q.env.to_text(Data::Here(10_000)).replace(
            &format!("size {}\n", q.env.size),
            &format!("size {}\n", u64::MAX - 9_994),
        );
        fs::write(&active, text).unwrap();
        match s.read_queued(&active) {
            Err(ReadError::Damaged(why)) => assert!(why.contains("cut short"), "{why}"),
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_rewrite_cut_short_by_a_crash_leaves_a_deliverable_message() {
        let d = tempdir("relink");
        let s = Spool::open(&d).unwrap();
        s.enable_recycling();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        inc.write(b"Subject: linked\r\n\r\nx\r\n");
        inc.commit(&mut envelope()).unwrap();
        let queued = s.dir("queue").join(&id);
        // The crash came after the link, before the new envelope.
        fs::create_dir_all(s.dir("msg")).unwrap();
        fs::hard_link(&queued, s.dir("msg").join(&id)).unwrap();
        assert_eq!(
            s.recover().unwrap().orphans_removed,
            0,
            "it has an envelope"
        );
        let q = s.read_queued(&queued).unwrap();
        assert!(!q.content.is_separate(&queued));
        // A later rewrite takes the existing link as it is.
        let c = s.rewrite(&queued, &q.env, &q.content).unwrap();
        assert_eq!(content(&s, &id), b"Subject: linked\r\n\r\nx\r\n");
        assert!(c.is_separate(&queued));
        // Done without a rewrite: both names go, and the file is not reused.
        fs::remove_file(&queued).unwrap();
        let mut inc = s.create().unwrap();
        let other = inc.id.clone();
        inc.write(b"y\r\n");
        inc.commit(&mut envelope()).unwrap();
        let queued = s.dir("queue").join(&other);
        fs::hard_link(&queued, s.dir("msg").join(&other)).unwrap();
        s.discard(&queued).unwrap();
        assert!(list_names(&s.dir("msg")).unwrap() == vec![id.clone()]);
        assert!(
            list_names(&s.dir("tmp")).unwrap().is_empty(),
            "not in the pool"
        );
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn new_ids_are_made_above_every_id_seen_in_the_spool() {
        // A message queued before the clock stepped back 1,000 s.
        let ahead = next_id_value() + 1_000_000_000;
        note_id(&format!("{ahead:016X}"));
        let next = next_id_value();
        assert!(next > ahead, "{next:X} after {ahead:X}");
    }

    #[test]
    fn a_queue_id_in_use_is_never_overwritten() {
        let d = tempdir("clash");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        let id = inc.id.clone();
        // Another message has the ID meanwhile (a clock stepped back, or
        // another process in the same microsecond).
        fs::write(s.dir("queue").join(&id), b"the older message").unwrap();
        inc.write(b"x\r\n");
        let e = inc.commit(&mut envelope()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            fs::read(s.dir("queue").join(&id)).unwrap(),
            b"the older message"
        );
        assert!(list_names(&s.dir("tmp")).unwrap().is_empty());
        // A new message never takes an ID that is waiting, claimed or held.
        for dir in ["queue", "active", "hold"] {
            fs::write(s.dir(dir).join("00000000000000AB"), b"x").unwrap();
            assert!(s.id_in_use("00000000000000AB"), "{dir}");
            fs::remove_file(s.dir(dir).join("00000000000000AB")).unwrap();
        }
        assert!(!s.id_in_use("00000000000000AB"));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn delivered_files_are_recycled_cut_to_length_and_never_shared() {
        use std::os::unix::fs::MetadataExt;
        let d = tempdir("recycle");
        let s = Spool::open(&d).unwrap();
        let names = |dir: &str| -> Vec<String> { list_names(&s.dir(dir)).unwrap() };
        // Off by default: discarding removes.
        let mut inc = s.create().unwrap();
        let first = inc.id.clone();
        inc.write(b"first message, rather long\r\n");
        inc.commit(&mut envelope()).unwrap();
        s.discard(&s.dir("queue").join(&first)).unwrap();
        assert!(names("queue").is_empty() && names("tmp").is_empty());

        s.enable_recycling();
        let mut inc = s.create().unwrap();
        let second = inc.id.clone();
        inc.write(b"second message, rather long\r\n");
        inc.commit(&mut envelope()).unwrap();
        let ino = fs::metadata(s.dir("queue").join(&second)).unwrap().ino();
        s.discard(&s.dir("queue").join(&second)).unwrap();
        assert!(names("queue").is_empty());
        assert_eq!(names("tmp").len(), 1);

        // The next message takes the same inode, cut to its new length.
        let mut inc = s.create().unwrap();
        let third = inc.id.clone();
        inc.write(b"3rd\r\n");
        inc.commit(&mut envelope()).unwrap();
        let path = s.dir("queue").join(&third);
        assert_eq!(fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(fs::metadata(&path).unwrap().len(), HEAD_ROOM + 5);
        assert_eq!(content(&s, &third), b"3rd\r\n");
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].as_ref().unwrap().1.id, third);
        assert!(names("tmp").is_empty(), "the pool was used");

        // A message that would take the pool over its disk budget is
        // removed, not kept.
        let mut inc = s.create().unwrap();
        let big = inc.id.clone();
        inc.write(&vec![b'x'; POOL_BYTES_MAX as usize + 1]);
        inc.commit(&mut envelope()).unwrap();
        s.discard(&s.dir("queue").join(&big)).unwrap();
        assert_eq!(names("queue"), vec![third.clone()]);
        assert!(names("tmp").is_empty(), "the big file is gone");

        // A recycled file never replaces an existing one.
        let taken = s.dir("queue").join(&third);
        let other = s.dir("queue").join("0000000000000001");
        fs::copy(&taken, &other).unwrap();
        s.discard(&other).unwrap();
        assert_eq!(names("tmp").len(), 1);
        let e = s.create_locked(&taken).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(content(&s, &third), b"3rd\r\n");

        // Recovery removes what a crash leaves in the pool.
        let r = s.recover().unwrap();
        assert_eq!((r.tmp_removed, r.orphans_removed, r.queued), (1, 0, 1));
        assert!(names("tmp").is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn dropped_message_leaves_nothing_behind() {
        let d = tempdir("drop");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        inc.write(b"partial");
        drop(inc);
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        assert!(s.list().unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    /// `env` as a version 1 envelope (its content in `msg/<id>`).
    fn version_1(env: &Envelope) -> String {
        env.to_text(Data::Msg(0))
            .replace("version 2\n", "version 1\n")
            .replace("data msg 0\n", "")
    }

    #[test]
    fn recovery_removes_leftovers_but_not_live_transactions() {
        let d = tempdir("recover");
        let s = Spool::open(&d).unwrap();
        fs::write(s.dir("tmp").join("junk"), b"x").unwrap();
        // A spool written by version 1: an orphan, and a claimed message.
        fs::create_dir(s.dir("msg")).unwrap();
        fs::write(s.dir("msg").join("0000000000000001"), b"orphan").unwrap();
        let live = s.create().unwrap(); // locked by this process
        let mut done = s.create().unwrap();
        done.write(b"kept");
        done.commit(&mut envelope()).unwrap();
        let mut old = envelope();
        old.id = "0000000000000002".into();
        old.size = 7;
        fs::write(s.dir("active").join(&old.id), version_1(&old)).unwrap();
        fs::write(s.dir("msg").join(&old.id), b"claimed").unwrap();
        let r = s.recover().unwrap();
        assert_eq!(
            r,
            Recovery {
                tmp_removed: 1,
                orphans_removed: 1,
                requeued: 1,
                queued: 2
            }
        );
        assert!(
            s.dir("tmp").join(&live.id).exists(),
            "a locked file belongs to a live writer"
        );
        // The version 1 message is still read, and rewritten in place of
        // its envelope; its content stays in msg/.
        let queued = s.dir("queue").join(&old.id);
        let q = s.read_queued(&queued).unwrap();
        assert_eq!(q.env, old);
        assert!(q.content.is_separate(&queued));
        let c = s.rewrite(&queued, &q.env, &q.content).unwrap();
        assert_eq!(c, q.content);
        assert!(fs::read_to_string(&queued)
            .unwrap()
            .starts_with("version 2\n"));
        assert_eq!(content(&s, &old.id), b"claimed");
        drop(live);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn write_errors_surface_at_commit_and_leave_nothing() {
        let d = tempdir("fail");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        inc.write(b"data");
        // Make the commit's rename into queue/ impossible.
        fs::remove_dir(s.dir("queue")).unwrap();
        fs::write(s.dir("queue"), b"not a directory").unwrap();
        assert!(inc.commit(&mut envelope()).is_err());
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }
}
