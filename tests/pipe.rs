//! Delivery to commands: `|command` aliases and `mailbox_command`, with
//! local(8)'s environment, sysexits(3) results, a time limit, bounded
//! output, and never as root.

mod common;

use common::{Client, Server, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A directory anyone may write (commands may run as `nobody`).
fn shared_dir(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// A delivering host whose aliases file is `aliases`.
fn host(aliases: &str, extra: &str) -> Server {
    let mut s = Server::prepare_at(
        [127, 0, 0, 1],
        common::free_port(),
        &format!("defer_delivery = no\n{extra}"),
    );
    std::fs::write(s.dir.0.join("aliases"), aliases).unwrap();
    s.spawn();
    s
}

fn send(s: &Server, to: &str, body: &[u8]) -> String {
    let mut c = Client::connect(s.addr());
    c.hello();
    let (code, text) = c.mail("alice@satchel.test", &[to], body);
    assert_eq!(code, 250, "{text}");
    common::queue_id(&text)
}

fn wait_file(s: &Server, p: &Path) -> String {
    s.wait_for(&format!("{}", p.display()), || p.exists());
    s.wait_for("the command's end", || {
        s.log().contains("relay=pipe") || s.log().contains("relay=file")
    });
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn an_alias_command_gets_the_message_and_the_environment_and_never_runs_as_root() {
    let out = shared_dir("pipeout");
    let o = out.0.display();
    let s = host(
        &format!("prog: \"|cat > {o}/msg; env > {o}/env; id -u > {o}/uid\"\n"),
        "",
    );
    let id = send(
        &s,
        "prog@satchel.test",
        b"Subject: to a program\r\n\r\nline one\r\n",
    );
    let uid = wait_file(&s, &out.0.join("uid"));
    let msg = std::fs::read_to_string(out.0.join("msg")).unwrap();
    let env = std::fs::read_to_string(out.0.join("env")).unwrap();
    assert_ne!(uid.trim(), "0", "a command ran as root");
    assert!(
        msg.starts_with(
            "Return-Path: <alice@satchel.test>\nDelivered-To: prog@satchel.test\nReceived: "
        ),
        "{msg}"
    );
    assert!(
        msg.ends_with("Subject: to a program\n\nline one\n") && !msg.contains('\r'),
        "{msg}"
    );
    for var in [
        "SENDER=alice@satchel.test",
        "RECIPIENT=prog@satchel.test",
        "USER=prog",
        "LOCAL=prog",
        "DOMAIN=satchel.test",
        "PATH=/usr/bin:/bin",
    ] {
        assert!(env.lines().any(|l| l == var), "{var} not in\n{env}");
    }
    s.wait_for("the delivery", || {
        s.log()
            .contains(&format!("{id}: to=<prog@satchel.test>, relay=pipe"))
            && s.log()
                .contains("status=sent (250 2.0.0 delivered via command)")
    });
}

#[test]
fn exit_75_defers_and_a_later_attempt_delivers_once_and_exit_67_bounces() {
    let out = shared_dir("pipe75");
    let o = out.0.display();
    let s = host(
        &format!(
            "later: \"|test -f {o}/ready || exit 75; cat >> {o}/got\"\n\
             nolist: \"|echo 'no such list here' >&2; exit 67\"\n"
        ),
        "",
    );
    let id = send(
        &s,
        "later@satchel.test",
        b"Subject: wait for it\r\n\r\nx\r\n",
    );
    s.wait_for("the deferral", || {
        s.log()
            .contains("status=deferred (451 4.3.0 command deferred (exit 75))")
    });
    s.wait_for("the message back in the queue", || {
        s.queued() == [id.clone()]
    });
    std::fs::write(out.0.join("ready"), "").unwrap();
    assert!(s.run(&["queue", "flush"]).status.success());
    s.wait_for("the delivery", || {
        s.log()
            .contains(&format!("{id}: to=<later@satchel.test>, relay=pipe"))
            && s.log()
                .contains("status=sent (250 2.0.0 delivered via command)")
    });
    let got = std::fs::read_to_string(out.0.join("got")).unwrap();
    assert_eq!(got.matches("Subject: wait for it").count(), 1, "{got}");
    // exit 67 (EX_NOUSER): bounced, with what the command said.
    send(
        &s,
        "nolist@satchel.test",
        b"Subject: to no list\r\n\r\nx\r\n",
    );
    s.wait_for("the bounce to alice", || s.maildir("alice").len() == 1);
    let bounce = std::fs::read_to_string(&s.maildir("alice")[0]).unwrap();
    assert!(
        bounce.contains("command failed (exit 67): no such list here"),
        "{bounce}"
    );
}

#[test]
fn a_hanging_command_is_killed_at_the_limit_and_output_does_not_grow_memory() {
    let out = shared_dir("pipehang");
    let o = out.0.display();
    let mut s = host(
        &format!(
            "hang: \"|echo $$ > {o}/pid; sleep 60\"\n\
             chatty: \"|head -c 30000000 /dev/zero; echo done > {o}/chatty\"\n"
        ),
        "command_time_limit = 1s\n",
    );
    send(&s, "hang@satchel.test", b"Subject: hang\r\n\r\nx\r\n");
    s.wait_for("the kill", || {
        s.log()
            .contains("status=deferred (451 4.3.0 command time limit of 1s exceeded; killed)")
    });
    let pid = std::fs::read_to_string(out.0.join("pid")).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the command's process group outlived the kill"
    );
    let me = s.child.as_ref().map(|c| c.id()).unwrap();
    let hwm = || {
        let status = std::fs::read_to_string(format!("/proc/{me}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = hwm();
    send(&s, "chatty@satchel.test", b"Subject: chatty\r\n\r\nx\r\n");
    wait_file(&s, &out.0.join("chatty"));
    s.wait_for("the delivery", || {
        s.log()
            .matches("status=sent (250 2.0.0 delivered via command)")
            .count()
            == 1
    });
    // 30 MB written to satchel's pipe; its peak memory stays where it was.
    assert!(
        hwm() < before + 8 * 1024,
        "VmHWM {before} kB -> {} kB",
        hwm()
    );
    s.kill9();
}

#[test]
fn mailbox_command_delivers_local_users_and_bad_alias_lines_are_refused() {
    let out = shared_dir("mboxcmd");
    let o = out.0.display();
    let s = host(
        "",
        &format!("mailbox_command = cat > {o}/$USER.$EXTENSION.mbox\nrecipient_delimiter = +\n"),
    );
    send(
        &s,
        "bob+news@satchel.test",
        b"Subject: by command\r\n\r\nx\r\n",
    );
    let got = wait_file(&s, &out.0.join("bob.news.mbox"));
    assert!(
        got.starts_with("Return-Path: <alice@satchel.test>\nDelivered-To: bob+news@satchel.test\n"),
        "{got}"
    );
    assert!(s.maildir("bob").is_empty());
    for (text, what) in [
        ("x: \"|echo unterminated\n", "aliases:1: unterminated quote"),
        ("x: |\n", "aliases:1: bad target '|': empty command"),
        (
            "x: :include:/nonexistent/list\n",
            ":include:/nonexistent/list: cannot read",
        ),
    ] {
        std::fs::write(s.dir.0.join("aliases"), text).unwrap();
        let out = s.run(&["check-config"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{text}: {err}");
    }
}

#[test]
fn file_targets_and_included_lists_are_delivered_and_the_files_setting_is_obeyed() {
    use std::os::unix::fs::MetadataExt;
    let out = shared_dir("pipefile");
    let o = out.0.display();
    let list = out.0.join("members");
    std::fs::write(
        &list,
        "# the members\nbob\n\"|cat > {o}/piped\"\n".replace("{o}", &o.to_string()),
    )
    .unwrap();
    let s = host(
        &format!(
            "archive: {o}/archive.mbox, alice\nmembers: :include:{}\n",
            list.display()
        ),
        "",
    );
    send(
        &s,
        "archive@satchel.test",
        b"Subject: keep\r\n\r\nFrom here on\r\nx\r\n",
    );
    let mbox = wait_file(&s, &out.0.join("archive.mbox"));
    assert!(mbox.starts_with("From alice@satchel.test "), "{mbox}");
    assert!(
        mbox.contains("\nReturn-Path: <alice@satchel.test>\nDelivered-To: archive@satchel.test\n"),
        "{mbox}"
    );
    assert!(
        mbox.contains("\n>From here on\nx\n\n") && !mbox.contains('\r'),
        "{mbox}"
    );
    s.wait_for("alice's copy", || s.maildir("alice").len() == 1);
    let owner = std::fs::metadata(out.0.join("archive.mbox")).unwrap().uid();
    if satchel::os::euid() == 0 {
        assert_ne!(owner, 0, "a file target written as root");
    }
    // :include: of a list: a member and a command.
    send(
        &s,
        "members@satchel.test",
        b"Subject: to the list\r\n\r\nx\r\n",
    );
    wait_file(&s, &out.0.join("piped"));
    s.wait_for("bob's copy", || s.maildir("bob").len() == 1);
    // Files not allowed in aliases: bounced with the setting named.
    let text = std::fs::read_to_string(&s.conf).unwrap();
    std::fs::write(&s.conf, format!("{text}allow_mail_to_files = forward\n")).unwrap();
    s.signal("HUP");
    s.wait_for("the reload", || {
        s.log().matches("reloaded the configuration").count() == 1
    });
    send(
        &s,
        "archive@satchel.test",
        b"Subject: not again\r\n\r\nx\r\n",
    );
    s.wait_for("the bounce", || {
        s.log().contains("status=bounced (550 5.7.1 mail to a file is not allowed in aliases (allow_mail_to_files))")
    });
}
