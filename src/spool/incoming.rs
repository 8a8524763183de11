//! Receiving: a new message file under `tmp/`, written by its session,
//! and the group commit that renames a batch into `queue/` with one
//! directory sync (steps 1 to 5 of the crash protocol above).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::queuefile::{queue_head, Content};
use super::{next_id_value, QueueId, Shared, Spool, HEAD_ROOM, KNOWN_MAX};
use crate::envelope::Envelope;

/// One message waiting for the group commit (steps 3 and 4).
#[derive(Debug)]
pub(super) struct Job {
    ticket: u64,
    /// Held (with its lock) until the batch is done: step 5 unlocks.
    _file: File,
    tmp: PathBuf,
    queued: PathBuf,
}

#[derive(Debug, Default)]
pub(super) struct Commits {
    waiting: Vec<Job>,
    next_ticket: u64,
    leader: bool,
    results: HashMap<u64, io::Result<()>>,
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
    pub(super) fn id_in_use(&self, id: &str) -> bool {
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

    /// Replaces the content written so far with `f` of it (a filter's
    /// changes): read back whole, written again in place. A failure is
    /// kept for `commit`, as a write error is.
    pub fn edit(&mut self, f: impl FnOnce(&[u8]) -> Vec<u8>) {
        if self.error.is_some() {
            return;
        }
        if let Err(e) = self.try_edit(f) {
            self.error = Some(e);
        }
    }

    fn try_edit(&mut self, f: impl FnOnce(&[u8]) -> Vec<u8>) -> io::Result<()> {
        use std::io::Read;
        let w = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("already closed"))?;
        w.flush()?;
        let file = w.get_mut();
        let mut old = Vec::with_capacity(self.written as usize);
        file.seek(SeekFrom::Start(HEAD_ROOM))?;
        Read::by_ref(file)
            .take(self.written)
            .read_to_end(&mut old)?;
        let new = f(&old);
        file.seek(SeekFrom::Start(HEAD_ROOM))?;
        file.write_all(&new)?;
        file.set_len(HEAD_ROOM + new.len() as u64)?;
        self.written = new.len() as u64;
        Ok(())
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Makes the message durable and queues it with `env` (steps 2 to 4 of
    /// the crash protocol). Only after `Ok` may the client hear 250.
    pub fn commit(self, env: &mut Envelope) -> io::Result<()> {
        self.commit_with(env, &[])
    }

    /// `commit`, with `prefix` (header fields known only at the end of
    /// the data, such as Authentication-Results) made the start of the
    /// content: written into the room before it, next to the envelope,
    /// so the content is not copied.
    pub fn commit_with(mut self, env: &mut Envelope, prefix: &[u8]) -> io::Result<()> {
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
        env.size = self.written + prefix.len() as u64;
        let start = HEAD_ROOM.saturating_sub(prefix.len() as u64);
        let head = queue_head(env, start);
        let file = if head.len() as u64 == start && start > 0 {
            // Step 2: the envelope into its room; the length cuts what a
            // recycled file held beyond the new content. In the session's
            // own thread, so that the sessions' syncs overlap (the kernel
            // and the device merge concurrent flushes); fdatasync covers
            // the new size and blocks, the directory entry is the batch's.
            file.write_all_at(&head, 0)?;
            file.write_all_at(prefix, start)?;
            file.set_len(HEAD_ROOM + self.written)?;
            file.sync_data()?;
            file
        } else {
            // Too many recipients (or too long a prefix) for the room: a
            // new file, the envelope first and the content copied after it.
            let big = self.spool.dir("tmp").join(format!("{}.big", self.id));
            let content = Content {
                path: self.path.clone(),
                offset: HEAD_ROOM,
                len: self.written,
            };
            let head = queue_head(env, 0);
            let mut whole = io::Read::chain(prefix, content.open()?);
            let f = self.spool.write_file(&big, &head, &mut whole, env.size)?;
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
