//! Shared helpers for the whole-program tests: a satchel process on an
//! ephemeral loopback port with its own spool, and a minimal SMTP client
//! that can bind to any 127.0.0.0/8 address to play an outside host.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub mod dns;
pub mod fake;
pub mod pki;

pub const BIN: &str = env!("CARGO_BIN_EXE_satchel");

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "satchel-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port free on every one of `ips` (so several hosts can share it).
pub fn shared_port(ips: &[[u8; 4]]) -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if ips
            .iter()
            .all(|ip| TcpListener::bind(SocketAddr::from((*ip, port))).is_ok())
        {
            return port;
        }
    }
    panic!("no shared free port");
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub struct Server {
    pub dir: TempDir,
    pub ip: [u8; 4],
    pub port: u16,
    pub conf: PathBuf,
    pub child: Option<Child>,
}

impl Server {
    /// Writes a config (the defaults for a test host plus `extra` lines)
    /// and starts `satchel serve`, waiting until it accepts connections.
    pub fn start(extra: &str) -> Server {
        Server::start_at([127, 0, 0, 1], free_port(), extra)
    }

    /// A server on `ip:port`; `extra` lines override the test defaults
    /// (hostname mx.satchel.test, local domain satchel.test, users alice
    /// and bob, relaying for 127.0.0.1 only, delivery deferred, no DNS).
    pub fn start_at(ip: [u8; 4], port: u16, extra: &str) -> Server {
        let mut s = Server::prepare_at(ip, port, extra);
        s.spawn();
        s
    }

    /// Writes the configuration without starting (to add files first).
    pub fn prepare_at(ip: [u8; 4], port: u16, extra: &str) -> Server {
        let dir = TempDir::new("srv");
        let conf = dir.0.join("satchel.conf");
        let spool = dir.0.join("spool");
        let has = |k: &str| extra.lines().any(|l| l.trim_start().starts_with(k));
        let mut text = format!(
            "listen = {}:{port}\nspool_dir = {}\nmail_dir = {}\naliases_file = {}\nlog_level = info\n",
            std::net::Ipv4Addr::from(ip),
            spool.display(),
            dir.0.join("mail").display(),
            dir.0.join("aliases").display()
        );
        for (key, default) in [
            ("hostname", "mx.satchel.test"),
            ("local_domains", "satchel.test"),
            ("local_users", "alice, bob"),
            ("relay_networks", "127.0.0.1/32"),
            ("defer_delivery", "yes"),
            // Port 9 on loopback: nobody answers; no query leaves the machine.
            ("dns_servers", "127.0.0.1:9"),
        ] {
            if !has(key) {
                text.push_str(&format!("{key} = {default}\n"));
            }
        }
        text.push_str(extra);
        fs::write(&conf, text).expect("write config");
        Server {
            dir,
            ip,
            port,
            conf,
            child: None,
        }
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts `satchel serve -c CONF EXTRA...` and waits until it listens.
    pub fn spawn_with(&mut self, extra_args: &[&str]) {
        let want = format!("listening on {}", self.addr());
        let before = self.log().matches(&want).count();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("log"))
            .expect("log file");
        let child = Command::new(BIN)
            .args(["serve", "-c"])
            .arg(&self.conf)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start satchel");
        self.child = Some(child);
        // Wait for this start's "listening on" line (without connecting,
        // so no probe session takes a slot of the pool).
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(&want).count() == before {
            assert!(
                Instant::now() < deadline,
                "satchel did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }

    pub fn mail_dir(&self) -> PathBuf {
        self.dir.0.join("mail")
    }

    /// Waits (bounded) until `cond` holds; panics with the log otherwise.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Files in a user's Maildir new/.
    pub fn maildir(&self, user: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.mail_dir().join(user).join("new"))
            .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.0.join("spool")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// The log lines about recipient `rcpt` (`to=<rcpt>`), joined.
    pub fn log_for(&self, rcpt: &str) -> String {
        let to = format!("to=<{rcpt}>");
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&to)).collect();
        lines.join("\n")
    }

    /// Adds `lines` to the configuration (before `spawn`).
    pub fn add_conf(&self, lines: &str) {
        let text = fs::read_to_string(&self.conf).expect("read config");
        fs::write(&self.conf, format!("{text}{lines}")).expect("write config");
    }

    /// One message from `from` to each of `rcpts` in turn, with its own
    /// subject (`to RCPT`), over one session; every one must get 250.
    pub fn send_each(&self, from: &str, rcpts: &[String]) {
        let mut c = Client::connect(self.addr());
        c.hello();
        for r in rcpts {
            let body = format!("Subject: to {r}\r\n\r\nx\r\n");
            let (code, text) = c.mail(from, &[r.as_str()], body.as_bytes());
            assert_eq!(code, 250, "{r}: {text}");
        }
        c.cmd("QUIT");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let st = Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .expect("kill");
            assert!(st.success());
        }
    }

    /// Waits (bounded) for the process to exit; returns its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Queue IDs with an envelope in queue/.
    pub fn queued(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.spool().join("queue"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The content of the message `id` (waiting, claimed or held), read
    /// from its queue file by the spool's own reader.
    pub fn message(&self, id: &str) -> Vec<u8> {
        use std::io::Read;
        let Ok(spool) = satchel::spool::Spool::open(&self.spool()) else {
            return Vec::new();
        };
        use satchel::spool::QueueState;
        // A message being delivered moves between queue/ and active/ (and
        // its content to msg/<id>): looked for again, a bounded number of
        // times, when a move came between the looks.
        for _ in 0..50 {
            for state in [QueueState::Queued, QueueState::Active, QueueState::Held] {
                if let Ok(q) = spool.read_in(state, id) {
                    let mut v = Vec::new();
                    if q.content
                        .open()
                        .and_then(|mut f| f.read_to_end(&mut v))
                        .is_ok()
                    {
                        return v;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Vec::new()
    }

    /// The envelope text at the head of the waiting message `id`.
    pub fn envelope(&self, id: &str) -> String {
        let file = fs::read(self.spool().join("queue").join(id)).unwrap_or_default();
        let end = file
            .windows(5)
            .position(|w| w == b"\nend\n")
            .map_or(0, |p| p + 5);
        String::from_utf8_lossy(&file[..end]).into_owned()
    }

    /// Files of messages being written (or left half-written) in `tmp/`;
    /// the daemon's recycled files (`free.*`) are not messages.
    pub fn partial(&self) -> usize {
        fs::read_dir(self.spool().join("tmp"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| !n.starts_with("free."))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Runs `sendmail ARGS` (through a symlink named sendmail, with this
    /// server's configuration) with `input` on its standard input.
    #[allow(dead_code)]
    pub fn sendmail(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let link = self.dir.0.join("sendmail");
        if !link.exists() {
            std::os::unix::fs::symlink(BIN, &link).expect("symlink");
        }
        let mut child = Command::new(&link)
            .args(args)
            .env("SATCHEL_CONFIG", &self.conf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sendmail");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        child.wait_with_output().expect("wait")
    }

    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(&self.conf)
            .output()
            .expect("run satchel")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A line-oriented SMTP client for tests.
pub struct Client {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        Client::from_stream(s)
    }

    /// Connects from a chosen loopback source address (an "outside" host).
    pub fn connect_from(addr: SocketAddr, from: [u8; 4]) -> Client {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.bind(&SocketAddr::from((from, 0)).into())
            .expect("bind source");
        sock.connect(&addr.into()).expect("connect");
        Client::from_stream(sock.into())
    }

    pub fn from_stream(s: TcpStream) -> Client {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        Client {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    pub fn line(&mut self, l: &str) {
        self.send(format!("{l}\r\n").as_bytes());
    }

    /// Reads one (possibly multi-line) reply: (code, all text lines joined by \n).
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            assert!(l.ends_with("\r\n"), "reply line without CRLF: {l:?}");
            let code: u16 = l[..3].parse().expect("reply code");
            text.push(l[4..].trim_end().to_string());
            if l.as_bytes().get(3) != Some(&b'-') {
                return (code, text.join("\n"));
            }
        }
    }

    pub fn cmd(&mut self, l: &str) -> (u16, String) {
        self.line(l);
        self.reply()
    }

    /// Reads until the server closes; returns what came.
    pub fn rest(&mut self) -> String {
        let mut s = String::new();
        let _ = self.r.read_to_string(&mut s);
        s
    }

    /// Greeting + EHLO.
    pub fn hello(&mut self) {
        assert_eq!(self.reply().0, 220);
        assert_eq!(self.cmd("EHLO client.test").0, 250);
    }

    /// A whole transaction; returns the final reply of DATA.
    pub fn mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> (u16, String) {
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert_eq!(r.0, 250, "RCPT {t}: {r:?}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        self.send(body);
        self.send(b".\r\n");
        self.reply()
    }
}

/// The queue ID out of `250 2.0.0 Ok: queued as <ID>`.
pub fn queue_id(text: &str) -> String {
    text.rsplit(' ').next().expect("id").to_string()
}

pub fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}
