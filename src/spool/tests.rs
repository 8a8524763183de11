use super::recycle::POOL_BYTES_MAX;
use super::*;
use crate::address::{ForwardPath, ReversePath};
use crate::envelope::Data;
use crate::envelope::{RcptState, Recipient};
use std::io::Read;

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
        dkim: String::new(),
        ret: None,
        envid: None,
        requiretls: false,
        rcpts: vec![Recipient {
            addr: ForwardPath::parse("<c@d.test>").unwrap(),
            state: RcptState::Pending,
            expanded: false,
            via: None,
            dsn: Default::default(),
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
            via: None,
            dsn: Default::default(),
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
    q.env.rcpts[0].state = RcptState::Deferred(crate::status::Status::parse(
        "451 4.3.0 try again\r\nlater",
        4,
    ));
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

#[test]
fn a_prefix_known_at_the_end_goes_before_the_content_without_a_copy() {
    let d = tempdir("prefix");
    let s = Spool::open(&d).unwrap();
    let mut inc = s.create().unwrap();
    let id = inc.id.clone();
    inc.write(b"Subject: x\r\n\r\nbody\r\n");
    let mut env = envelope();
    let ar = b"Authentication-Results: mx.test; dkim=pass\r\n";
    inc.commit_with(&mut env, ar).unwrap();
    assert_eq!(
        content(&s, &id),
        [&ar[..], b"Subject: x\r\n\r\nbody\r\n"].concat()
    );
    assert_eq!(env.size, (ar.len() + 20) as u64);
    // The same file, the prefix written into the room.
    let file = fs::read(s.dir("queue").join(&id)).unwrap();
    assert_eq!(file.len() as u64, HEAD_ROOM + 20);
    // A prefix too long for the room: a new file, the content copied.
    let mut inc = s.create().unwrap();
    let id = inc.id.clone();
    inc.write(b"Subject: y\r\n\r\nbody\r\n");
    let long = format!("X-Long: {}\r\n", "a".repeat(3000));
    inc.commit_with(&mut envelope(), long.as_bytes()).unwrap();
    assert_eq!(
        content(&s, &id),
        [long.as_bytes(), b"Subject: y\r\n\r\nbody\r\n"].concat()
    );
    let _ = fs::remove_dir_all(&d);
}
