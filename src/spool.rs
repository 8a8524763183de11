//! The spool: the only thing the receiving and delivering halves share.
//! It owns the directory layout, queue IDs, the crash protocol and the one
//! audited atomic-write function. It never talks to the network and knows
//! nothing of SMTP.
//!
//! ```text
//! spool/tmp/<id>       envelopes being written (locked by their writer)
//! spool/msg/<id>       message bytes, `Received:` first; written once, never changed
//! spool/queue/<id>     envelope of a waiting message; its rename into place is the commit
//! spool/active/<id>    envelope claimed by a delivery thread
//! spool/hold/<id>      envelope put on hold by the operator (never delivered until released)
//! spool/corrupt/<id>   envelopes that failed to parse, kept for a human
//! ```
//!
//! ## Receiving: the crash protocol
//!
//! | step | action                                          | a crash after it leaves            | recovery at start                       |
//! |------|-------------------------------------------------|------------------------------------|-----------------------------------------|
//! | 1    | create `msg/<id>` (O_EXCL, or a recycled file), lock it, write data | a locked-then-unlocked `msg/<id>`  | no envelope anywhere: orphan, removed   |
//! | 2    | fsync `msg/<id>`                                 | same                               | same                                    |
//! | 3    | write `tmp/<id>`, fsync it                       | orphan `msg/<id>`, a `tmp/<id>`    | both removed                            |
//! | 4    | fsync `msg/` (the entry of step 1 is durable)   | same                               | same                                    |
//! | 5    | rename `tmp/<id>` -> `queue/<id>`               | the rename may or may not persist  | queued, or orphan removed (no 250 sent) |
//! | 6    | fsync `queue/`                                  | a queued message                   | found by the scan                       |
//! | 7    | unlock; reply `250 Ok: queued as <id>`          | a queued message                   | found by the scan                       |
//!
//! A 250 is sent only after step 6, so an acknowledged message is on disk
//! with its envelope.
//!
//! ## Group commit
//!
//! Each session syncs its own two files (steps 2 and 3, with fdatasync:
//! the new size and blocks are what matter) in its own thread, so the
//! syncs of many sessions overlap and the kernel merges their flushes.
//! Steps 4 to 6 are shared by the sessions that reach them at the same
//! time: a session that finds no commit running becomes the leader, takes
//! every message waiting, fsyncs `msg/` once, renames every envelope into
//! `queue/`, fsyncs `queue/` once, and wakes the others with their own
//! results. Sessions arriving meanwhile wait for the next leader, which is
//! one of them. With one session nothing waits; with many, two directory
//! fsyncs serve a whole batch. No message hears 250 before its own files
//! and both directories have been synced.
//!
//! Nothing is half-visible: without an envelope in
//! `queue/` (or `active/`) a message file is not a message. The writer
//! holds an advisory lock on `msg/<id>` from step 1 to step 7, so another
//! process's recovery (an inetd-mode session or a queue runner sharing the
//! spool) never takes a live transaction for an orphan.
//!
//! ## Recycled files
//!
//! Creating and deleting inodes is most of what a busy spool costs the
//! kernel (a profile of 32 sessions showed ext4's inode allocator in half
//! of the CPU time, scanning past recently deleted inodes). So the daemon
//! does not delete the files of a delivered message: it renames them to
//! `msg/free.<pid>.<n>` and `tmp/free.<pid>.<n>` (at most `POOL_MAX`
//! each, and never more than `POOL_BYTES_MAX`, 32 MiB, of disk: beyond
//! that a file is removed), and the next message takes one instead of
//! creating a file. A
//! recycled file is locked first, then moved into place with
//! RENAME_NOREPLACE (so a name is never taken twice, by two threads or
//! two processes), then rewritten from the start and cut to its new
//! length before it is synced (its old blocks are reused: nothing to
//! allocate, nothing to free). That is step 1 below, with the same
//! guarantees as an exclusive create. A crash leaves `free.*` files without an
//! envelope, which recovery removes like any other orphan.
//!
//! Envelope updates during delivery go through `write_atomic` (write to
//! `tmp/`, fsync, rename over the old file, fsync the directory): a crash
//! leaves either the old or the new envelope, never a mix.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::envelope::Envelope;

/// Spool sub-directories, created at open.
const DIRS: [&str; 6] = ["tmp", "msg", "queue", "active", "hold", "corrupt"];

/// A queue ID: 16 upper-case hex digits, the microseconds since the epoch
/// at arrival (strictly increasing within a process), so IDs sort by
/// arrival and stay unique across restarts. A clash with another process
/// is caught by the exclusive create and retried with the next value.
pub type QueueId = String;

static LAST_ID: Mutex<u64> = Mutex::new(0);

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
/// directories it syncs (kept open so that a commit does not reopen
/// them), and the recycled files.
#[derive(Debug)]
struct Shared {
    msg_dir: File,
    queue_dir: File,
    commits: Mutex<Commits>,
    done: Condvar,
    pool: Mutex<Pool>,
    /// This process's ID, for the names of recycled files.
    pid: u32,
}

/// At most this many recycled files of each kind are kept.
const POOL_MAX: usize = 512;
/// Recycled files keep their blocks, so the pool holds at most this much
/// disk: a file that would take it over the budget is removed instead.
const POOL_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// Recycled files (see "Recycled files" above): message files in `msg/`,
/// envelope files in `tmp/`, each with its size. Only a process that
/// enables it keeps any.
#[derive(Debug, Default)]
struct Pool {
    enabled: bool,
    msg: Vec<(PathBuf, u64)>,
    env: Vec<(PathBuf, u64)>,
    bytes: u64,
    next: u64,
}

impl Pool {
    fn list(&mut self, kind: FileKind) -> &mut Vec<(PathBuf, u64)> {
        match kind {
            FileKind::Message => &mut self.msg,
            FileKind::Envelope => &mut self.env,
        }
    }

    fn push(&mut self, kind: FileKind, path: PathBuf, size: u64) {
        self.bytes += size;
        self.list(kind).push((path, size));
    }

    fn pop(&mut self, kind: FileKind) -> Option<(PathBuf, u64)> {
        let (path, size) = self.list(kind).pop()?;
        self.bytes -= size;
        Some((path, size))
    }
}

/// Which kind of spool file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Message,
    Envelope,
}

/// One message waiting for the group commit (steps 2 to 6).
#[derive(Debug)]
struct Job {
    ticket: u64,
    /// Held (with their locks) until the batch is done: step 7 unlocks.
    _msg: File,
    _env: File,
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

/// Where a listed envelope was found.
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

/// Writes `bytes` to `path` atomically and durably: a locked temporary file
/// in `tmp/`, fsync, rename over `path`, fsync of `path`'s directory.
/// The one place where the spool replaces a file.
pub fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    let tmp = tmp_dir.join(name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.lock()?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A copy of `e` for each message of a batch that one error fails.
fn copy_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Steps 2 to 6 for a batch; one result per job. The files are closed
/// (their locks released, step 7) when the batch is done.
fn commit_batch(sh: &Shared, batch: Vec<Job>) -> Vec<(u64, io::Result<()>)> {
    // The files were synced by their own sessions, in parallel.
    let mut results: Vec<(u64, io::Result<()>)> =
        batch.iter().map(|j| (j.ticket, Ok(()))).collect();
    let all = |results: &mut Vec<(u64, io::Result<()>)>, r: io::Result<()>| {
        if let Err(e) = r {
            for (_, res) in results.iter_mut().filter(|(_, r)| r.is_ok()) {
                *res = Err(copy_error(&e));
            }
        }
    };
    if results.iter().any(|(_, r)| r.is_ok()) {
        all(&mut results, sh.msg_dir.sync_all());
    }
    for (j, (_, r)) in batch.iter().zip(results.iter_mut()) {
        if r.is_ok() {
            *r = fs::rename(&j.tmp, &j.queued);
        }
    }
    let renamed: Vec<bool> = results.iter().map(|(_, r)| r.is_ok()).collect();
    if renamed.iter().any(|&ok| ok) {
        all(&mut results, sh.queue_dir.sync_all());
    }
    for ((j, (_, r)), was_renamed) in batch.iter().zip(&results).zip(renamed) {
        if r.is_err() {
            // No 250 will be sent: take the envelope back wherever it is.
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
        Ok(Spool {
            root: root.to_path_buf(),
            shared: Arc::new(Shared {
                msg_dir: File::open(root.join("msg"))?,
                queue_dir: File::open(root.join("queue"))?,
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

    /// Disposes of a spool file that is no longer needed: moved into the
    /// pool when recycling is on and there is room, removed otherwise.
    pub fn discard(&self, path: &Path, kind: FileKind) -> io::Result<()> {
        if !self.pool().enabled {
            return fs::remove_file(path);
        }
        let Ok(size) = fs::metadata(path).map(|m| m.len()) else {
            return fs::remove_file(path);
        };
        let to = {
            let mut pool = self.pool();
            let full = pool.list(kind).len() >= POOL_MAX || pool.bytes + size > POOL_BYTES_MAX;
            if full {
                None
            } else {
                pool.bytes += size; // reserved while the rename runs
                pool.next += 1;
                let dir = if kind == FileKind::Message {
                    "msg"
                } else {
                    "tmp"
                };
                Some(
                    self.dir(dir)
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
        self.pool().list(kind).push((to, size));
        Ok(())
    }

    /// Creates `dest` exclusively and locked: a recycled file moved there
    /// when the pool has one, else a new file. `AlreadyExists` when `dest`
    /// exists. A recycled file keeps its old bytes: the caller writes from
    /// the start and then sets the length (`set_len`) before syncing, so a
    /// rewrite of similar size allocates no blocks and frees none (freeing
    /// means a synchronous discard on file systems mounted with `discard`).
    fn create_locked(&self, dest: &Path, kind: FileKind) -> io::Result<File> {
        loop {
            let recycled = self.pool().pop(kind);
            let Some((from, size)) = recycled else {
                let f = OpenOptions::new().write(true).create_new(true).open(dest)?;
                if let Err(e) = f.lock() {
                    let _ = fs::remove_file(dest);
                    return Err(e);
                }
                return Ok(f);
            };
            // Lock first: the file is never in place unlocked.
            let Ok(f) = OpenOptions::new().write(true).open(&from) else {
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
                    self.pool().push(kind, from, size);
                    return Err(e);
                }
                Err(_) => continue,
            }
            return Ok(f);
        }
    }

    /// Steps 2 to 6 for `job`, shared with whoever commits at the same
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

    pub fn msg_path(&self, id: &str) -> PathBuf {
        self.root.join("msg").join(id)
    }

    /// Starts a new message: creates `msg/<id>` exclusively and locks it.
    pub fn create(&self) -> io::Result<Incoming> {
        for _ in 0..100 {
            let id = format!("{:016X}", next_id_value());
            let path = self.msg_path(&id);
            match self.create_locked(&path, FileKind::Message) {
                Ok(f) => {
                    return Ok(Incoming {
                        id,
                        path,
                        spool: self.clone(),
                        file: Some(BufWriter::with_capacity(64 * 1024, f)),
                        written: 0,
                        error: None,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("could not allocate a unique queue ID"))
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
    /// temporary files and orphaned message files, moves `active/` envelopes
    /// back to `queue/`, and counts what is queued. Entries locked by a live
    /// writer are left alone.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut r = Recovery::default();
        for name in list_names(&self.dir("tmp"))? {
            let p = self.dir("tmp").join(&name);
            if unlocked(&p) {
                fs::remove_file(&p)?;
                r.tmp_removed += 1;
            }
        }
        for id in list_names(&self.dir("active"))? {
            fs::rename(self.dir("active").join(&id), self.dir("queue").join(&id))?;
            r.requeued += 1;
        }
        if r.requeued > 0 {
            sync_dir(&self.dir("queue"))?;
        }
        // One listing of each envelope directory instead of a lookup per
        // message: start-up with a large queue stays quick.
        let mut enveloped = std::collections::HashSet::new();
        for d in ["queue", "active", "hold"] {
            enveloped.extend(list_names(&self.dir(d))?);
        }
        for id in list_names(&self.dir("msg"))? {
            if enveloped.contains(&id) {
                r.queued += 1;
                continue;
            }
            let p = self.msg_path(&id);
            // Locked = a transaction in progress in another process.
            if unlocked(&p) && !self.has_envelope(&id) {
                fs::remove_file(&p)?;
                r.orphans_removed += 1;
            }
        }
        Ok(r)
    }

    fn has_envelope(&self, id: &str) -> bool {
        ["queue", "active", "hold"]
            .iter()
            .any(|d| self.dir(d).join(id).exists())
    }

    /// Every envelope in `queue/`, `active/` and `hold/`, sorted by ID (arrival).
    /// Damaged envelopes are returned as errors naming the file.
    pub fn list(&self) -> io::Result<Vec<Result<(QueueState, Envelope), String>>> {
        Ok(self
            .list_ids()?
            .into_iter()
            .filter_map(|(id, state)| self.read_envelope(&id, state))
            .collect())
    }

    /// The IDs of every envelope in `queue/`, `active/` and `hold/`, sorted
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
        out.sort_unstable();
        Ok(out)
    }

    /// The envelope of `id` in the directory of `state`; `None` when it
    /// has moved on since it was listed (delivered or claimed meanwhile).
    pub fn read_envelope(
        &self,
        id: &str,
        state: QueueState,
    ) -> Option<Result<(QueueState, Envelope), String>> {
        let dir = match state {
            QueueState::Queued => "queue",
            QueueState::Active => "active",
            QueueState::Held => "hold",
        };
        let p = self.dir(dir).join(id);
        match open_noatime(&p).and_then(read_small) {
            Ok(text) => Some(
                Envelope::parse(&text)
                    .map(|e| (state, e))
                    .map_err(|e| format!("{}: {e}", p.display())),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(format!("{}: {e}", p.display()))),
        }
    }
}

/// Opens `p` for reading without updating its access time: a deferred
/// envelope's mtime is in the future (its next attempt), so with
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

/// Reads a small file (an envelope) to the end with plain reads: unlike
/// `read_to_string`, no fstat for a size hint first, one system call less
/// per envelope when a queue of 100,000 is listed.
pub fn read_small(mut f: File) -> io::Result<String> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match io::Read::read(&mut f, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
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

    /// Makes the message durable and queues it with `env` (steps 2 to 6 of
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
        let tmp = self.spool.dir("tmp").join(&self.id);
        let written = (|| {
            let mut t = self.spool.create_locked(&tmp, FileKind::Envelope)?;
            let text = env.to_text();
            t.write_all(text.as_bytes())?;
            // Cut what a recycled file held beyond the new content.
            file.set_len(self.written)?;
            t.set_len(text.len() as u64)?;
            // Steps 2 and 3, here in the session's own thread so that the
            // sessions' syncs overlap (the kernel and the device merge
            // concurrent flushes); fdatasync covers the new size and
            // blocks, the directory entries are the batch's.
            file.sync_data()?;
            t.sync_data()?;
            Ok(t)
        })();
        let env_file = match written {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e); // Drop removes the message file.
            }
        };
        let job = Job {
            ticket: 0,
            _msg: file,
            _env: env_file,
            tmp,
            queued: self.spool.dir("queue").join(&self.id),
        };
        // On error the batch has removed the envelope; Drop removes the
        // message file. On success the files are closed, unlocking them.
        self.spool.group_commit(job)?;
        self.committed = true;
        Ok(())
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
        assert_eq!(
            fs::read(s.msg_path(&id)).unwrap(),
            b"Subject: x\r\n\r\nbody\r\n"
        );
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
                    assert_eq!(
                        fs::read(s.msg_path(&id)).unwrap(),
                        format!("message {i}\r\n").into_bytes()
                    );
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
        assert!(ids.iter().all(|id| unlocked(&s.msg_path(id))));
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn delivered_files_are_recycled_cut_to_length_and_never_shared() {
        use std::os::unix::fs::MetadataExt;
        let d = tempdir("recycle");
        let s = Spool::open(&d).unwrap();
        // Off by default: discarding removes.
        let mut inc = s.create().unwrap();
        let first = inc.id.clone();
        inc.write(b"first message, rather long\r\n");
        inc.commit(&mut envelope()).unwrap();
        s.discard(&s.dir("queue").join(&first), FileKind::Envelope)
            .unwrap();
        s.discard(&s.msg_path(&first), FileKind::Message).unwrap();
        assert_eq!(fs::read_dir(s.dir("msg")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);

        s.enable_recycling();
        let mut inc = s.create().unwrap();
        let second = inc.id.clone();
        inc.write(b"second message, rather long\r\n");
        inc.commit(&mut envelope()).unwrap();
        let ino = fs::metadata(s.msg_path(&second)).unwrap().ino();
        s.discard(&s.dir("queue").join(&second), FileKind::Envelope)
            .unwrap();
        s.discard(&s.msg_path(&second), FileKind::Message).unwrap();
        assert!(!s.msg_path(&second).exists());

        // The next message takes the same inode, cut to its new length.
        let mut inc = s.create().unwrap();
        let third = inc.id.clone();
        inc.write(b"3rd\r\n");
        inc.commit(&mut envelope()).unwrap();
        assert_eq!(fs::metadata(s.msg_path(&third)).unwrap().ino(), ino);
        assert_eq!(fs::read(s.msg_path(&third)).unwrap(), b"3rd\r\n");
        let listed = s.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].as_ref().unwrap().1.id, third);
        // Both pools were used and are empty again.
        let names = |dir: &str| -> Vec<String> { list_names(&s.dir(dir)).unwrap() };
        assert_eq!(names("msg"), vec![third.clone()]);
        assert!(names("tmp").is_empty());

        // A message that would take the pool over its disk budget is
        // removed, not kept.
        let mut inc = s.create().unwrap();
        let big = inc.id.clone();
        inc.write(&vec![b'x'; POOL_BYTES_MAX as usize + 1]);
        inc.commit(&mut envelope()).unwrap();
        s.discard(&s.dir("queue").join(&big), FileKind::Envelope)
            .unwrap();
        s.discard(&s.msg_path(&big), FileKind::Message).unwrap();
        assert_eq!(names("msg"), vec![third.clone()], "the big file is gone");
        assert_eq!(names("tmp").len(), 1, "its small envelope is kept");

        // A recycled file never replaces an existing one.
        s.discard(&s.dir("queue").join(&third), FileKind::Envelope)
            .unwrap();
        let taken = s.msg_path(&third);
        let e = s.create_locked(&taken, FileKind::Envelope).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&taken).unwrap(), b"3rd\r\n");

        // Recovery removes what a crash leaves in the pools.
        let r = s.recover().unwrap();
        assert_eq!((r.tmp_removed, r.orphans_removed), (2, 1));
        assert!(names("msg").is_empty() && names("tmp").is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn dropped_message_leaves_nothing_behind() {
        let d = tempdir("drop");
        let s = Spool::open(&d).unwrap();
        let mut inc = s.create().unwrap();
        inc.write(b"partial");
        drop(inc);
        assert_eq!(fs::read_dir(s.dir("msg")).unwrap().count(), 0);
        assert!(s.list().unwrap().is_empty());
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn recovery_removes_orphans_but_not_live_transactions() {
        let d = tempdir("recover");
        let s = Spool::open(&d).unwrap();
        fs::write(s.dir("tmp").join("junk"), b"x").unwrap();
        fs::write(s.msg_path("0000000000000001"), b"orphan").unwrap();
        let live = s.create().unwrap(); // locked by this process
        let mut done = s.create().unwrap();
        done.write(b"kept");
        done.commit(&mut envelope()).unwrap();
        fs::write(
            s.dir("active").join("0000000000000002"),
            envelope().to_text(),
        )
        .unwrap();
        fs::write(s.msg_path("0000000000000002"), b"claimed").unwrap();
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
            s.msg_path(&live.id).exists(),
            "a locked file belongs to a live writer"
        );
        assert!(s.dir("queue").join("0000000000000002").exists());
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
        let id = inc.id.clone();
        assert!(inc.commit(&mut envelope()).is_err());
        assert!(!s.msg_path(&id).exists());
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let d = tempdir("atomic");
        let s = Spool::open(&d).unwrap();
        let target = s.dir("queue").join("X");
        write_atomic(&s.dir("tmp"), &target, b"one").unwrap();
        write_atomic(&s.dir("tmp"), &target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(fs::read_dir(s.dir("tmp")).unwrap().count(), 0);
        fs::remove_dir_all(d).unwrap();
    }
}
