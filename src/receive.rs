//! Receiving: what happens to a message from the first byte to the 250.
//!
//! A connection (a TCP socket from `server`, or stdin/stdout from `stdio`
//! under inetd and `sendmail -bs`) is joined to `smtp::session` by a thin
//! loop (`run`): it reads CRLF lines with the RFC 5321 size limits, feeds
//! them to the session, and writes replies, flushing only when no
//! pipelined input is waiting (RFC 2920 §3.1). At DATA (`receive_data`):
//! a new spool file (`open_sink`), 354, the content streamed through the
//! DATA decoder into it (`stream_data`), the envelope built from the
//! session's transaction (`envelope_of`, a pure function), the group
//! commit (`spool::Incoming::commit`: fdatasync, rename, directory sync),
//! and only then 250. STARTTLS hands the socket to rustls and starts a new
//! session inside TLS (`serve_tcp`). Protocol decisions are the session's;
//! this module only moves bytes and keeps time.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::envelope::{escape, Envelope, RcptState, Recipient};
use crate::guard::milter::Run;
use crate::guard::{anvil, ClientFacts, Guard};
use crate::policy::LocalPolicy;
use crate::smtp::command::{self, Chunk, Command};
use crate::smtp::data::DataDecoder;
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::session::{
    AuthOutcome, Client, DataEnd, Event, MilterStage, NameChecks, Session, SessionConfig,
    Transaction,
};
use crate::spool::Spool;
use crate::time;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// What to do when a session has queued a message (given its queue ID).
pub type OnQueued = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// Everything a session needs that outlives it.
pub struct Context {
    pub cfg: Config,
    pub session: SessionConfig,
    /// Shared with the delivery threads (tables are loaded once).
    pub policy: std::sync::Arc<LocalPolicy>,
    pub spool: Spool,
    /// Set when the server is stopping: sessions say 421 at the next command.
    /// Shared by the contexts that SIGHUP reloads put in place.
    pub shutdown: std::sync::Arc<AtomicBool>,
    /// Told the ID of each queued message (the delivery scheduler's wake-up).
    pub on_queued: Option<OnQueued>,
    /// The STARTTLS configuration, when `tls_cert` and `tls_key` are set.
    #[cfg(feature = "tls")]
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// `sendmail -bs` by a user who may not write the spool: messages go
    /// into `maildrop/`, as that user's `sendmail` does.
    pub maildrop_fallback: bool,
    /// The checks that need DNS (blocklists, reverse DNS, sender domains).
    pub guard: std::sync::Arc<Guard>,
    /// The rate limits' counters; kept across reloads like `shutdown`.
    pub anvil: std::sync::Arc<anvil::Anvil>,
}

impl Context {
    pub fn new(cfg: Config, policy: std::sync::Arc<LocalPolicy>, spool: Spool) -> Context {
        let session = SessionConfig {
            hostname: cfg.hostname.clone(),
            message_size_limit: cfg.message_size_limit,
            max_recipients: cfg.max_recipients,
            max_errors: cfg.max_errors,
            max_hops: cfg.max_hops,
            myorigin: cfg.myorigin(),
            vrfy: cfg.vrfy,
            tls_available: false,
            auth_available: cfg.auth_users_file.is_some(),
            auth_over_plaintext: cfg.auth_over_plaintext,
            name_checks: NameChecks {
                invalid_helo: cfg.reject_invalid_helo_hostname,
                non_fqdn_helo: cfg.reject_non_fqdn_helo_hostname,
                non_fqdn_sender: cfg.reject_non_fqdn_sender,
                non_fqdn_recipient: cfg.reject_non_fqdn_recipient,
            },
        };
        let guard = std::sync::Arc::new(Guard::new(&cfg, guard_dns(&cfg)));
        Context {
            cfg,
            session,
            policy,
            spool,
            shutdown: std::sync::Arc::new(AtomicBool::new(false)),
            on_queued: None,
            #[cfg(feature = "tls")]
            tls: None,
            maildrop_fallback: false,
            guard,
            anvil: Default::default(),
        }
    }

    /// Offers STARTTLS with this configuration.
    #[cfg(feature = "tls")]
    pub fn with_tls(mut self, tls: std::sync::Arc<rustls::ServerConfig>) -> Context {
        self.tls = Some(tls);
        self.session.tls_available = true;
        self
    }
}

/// The resolver of the checks, when one needs it. Without one (no
/// nameserver could be found) the checks let everyone through, as a
/// blocklist that does not answer does; it is said once, here.
fn guard_dns(cfg: &Config) -> Option<std::sync::Arc<dyn crate::dns::Resolver>> {
    if !Guard::needs_dns(cfg) {
        return None;
    }
    match crate::dns::cached_from_config(cfg) {
        Ok(r) => Some(std::sync::Arc::from(r)),
        Err(e) => {
            log::error!("error: DNS for the client and sender checks: {e}; they are off");
            None
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Closed,
    /// The client asked for STARTTLS and heard 220: the caller does the
    /// handshake and runs a new session inside TLS (`Start::AfterTls`).
    StartTls,
}

/// Where a session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new connection: early-talker check, then the greeting.
    Greet,
    /// Inside TLS after STARTTLS: no greeting; the client sends EHLO.
    AfterTls,
    /// Inside TLS from the first byte (RFC 8314): the greeting.
    ImplicitTls,
}

/// What the connection loop needs of its transport beyond reading.
pub trait Control {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()>;
    /// True if the client sent something within `pause` (before our greeting).
    fn talks_early(&self, pause: Duration) -> bool;
    /// True when `set_read_timeout` sets a deadline from now (so it is
    /// called before every read), not a setting the socket keeps.
    fn deadline_from_now(&self) -> bool {
        false
    }
}

impl Control for std::net::TcpStream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, Some(d))
    }

    fn talks_early(&self, pause: Duration) -> bool {
        let mut b = [0u8; 1];
        if pause.is_zero() {
            if self.set_nonblocking(true).is_err() {
                return false;
            }
            let r = self.peek(&mut b);
            let _ = self.set_nonblocking(false);
            return matches!(r, Ok(n) if n > 0);
        }
        if std::net::TcpStream::set_read_timeout(self, Some(pause)).is_err() {
            return false;
        }
        matches!(self.peek(&mut b), Ok(n) if n > 0)
    }
}

/// Sets the read time-out only when it changes: the deadline is rounded
/// down to whole seconds (never later than asked), so the lines of a
/// busy session reuse one setting instead of a system call per read.
struct Timer<'a> {
    ctl: &'a dyn Control,
    set: std::cell::Cell<Option<Duration>>,
}

/// The read time-out for a read that must end within `left`: rounded down
/// to whole seconds above 2 s (never later than asked; a busy session
/// reuses one setting), `TimedOut` when nothing is left.
fn read_timeout_for(left: Duration) -> io::Result<Duration> {
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(if left >= Duration::from_secs(2) {
        Duration::from_secs(left.as_secs())
    } else {
        left
    })
}

impl<'a> Timer<'a> {
    fn new(ctl: &'a dyn Control) -> Timer<'a> {
        Timer {
            ctl,
            set: std::cell::Cell::new(None),
        }
    }

    /// Arms the time-out for a read that must end within `left`.
    fn arm(&self, left: Duration) -> io::Result<()> {
        let d = read_timeout_for(left)?;
        if self.ctl.deadline_from_now() || self.set.get() != Some(d) {
            self.ctl.set_read_timeout(d)?;
            self.set.set(Some(d));
        }
        Ok(())
    }
}

/// One line as the reader found it.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line without its CRLF.
    Ok(Vec<u8>),
    /// Longer than the limit; the rest up to LF was discarded.
    TooLong,
    /// Ended in LF without CR.
    BareLf,
    Eof,
}

/// Reads one line, never holding more than `max` octets of it.
/// The whole line must arrive within `limit` (a deadline per line, as
/// Postfix's smtpd_per_record_deadline): a client dripping one byte at a
/// time cannot hold a session open forever.
fn read_line<R: Read>(
    r: &mut BufReader<R>,
    max: usize,
    timer: &Timer,
    limit: Duration,
) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    let deadline = Instant::now() + limit;
    loop {
        if r.buffer().is_empty() {
            // Only a read from the peer can block.
            timer.arm(deadline.saturating_duration_since(Instant::now()))?;
        }
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, found) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let n = chunk.len();
        r.consume(n);
        if found {
            if too_long {
                return Ok(Line::TooLong);
            }
            line.pop(); // LF
            if line.pop() != Some(b'\r') {
                return Ok(Line::BareLf);
            }
            return Ok(Line::Ok(line));
        }
    }
}

/// True when the client's first bytes are a TLS handshake record (type
/// 22, version 3.x): waits for them within `CLIENT_HELLO_WAIT`.
fn sends_tls_handshake<R: Read>(r: &mut BufReader<R>, timer: &Timer) -> bool {
    if r.buffer().is_empty() && timer.arm(CLIENT_HELLO_WAIT).is_err() {
        return false;
    }
    matches!(r.fill_buf(), Ok([0x16, 0x03, ..]))
}

/// How long the first look at a client's bytes waits; a client that has
/// sent nothing by then is read as usual, under the command time-out.
const CLIENT_HELLO_WAIT: Duration = Duration::from_secs(5);

fn log_implicit_tls(peer: &str) {
    log::warn!(
        "warning: {peer}: the client sent a TLS handshake instead of SMTP: it expects \
         implicit TLS (RFC 8314, port 465), but this port speaks plaintext SMTP and STARTTLS"
    );
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Runs one SMTP session to its end. `in_data` is raised while a DATA
/// transfer is in progress (a stopping server waits for those).
/// `tls_possible`: the transport is a socket the caller can hand to TLS.
#[allow(clippy::too_many_arguments)]
pub fn run<R: Read, W: Write>(
    input: R,
    mut output: W,
    ctl: &dyn Control,
    client: Client,
    ctx: &Context,
    in_data: &AtomicBool,
    start: Start,
    tls_possible: bool,
) -> Ending {
    let peer = peer_name(&client);
    let mut session = new_session(ctx, &client, start, tls_possible);
    let mut reader = BufReader::with_capacity(16 * 1024, input);
    let mut out = Vec::with_capacity(1024);
    match start {
        Start::AfterTls => {}
        Start::ImplicitTls => session.greeting().write_to(&mut out),
        Start::Greet if !greet(&mut reader, &mut output, &mut out, ctl, &mut session, ctx) => {
            return Ending::Closed;
        }
        Start::Greet => {}
    }
    let timer = Timer::new(ctl);
    let mut facts = ClientFacts::default();
    let mut milter = session_milters(ctx, &client);
    let mut first_line = start == Start::Greet;
    loop {
        if reader.buffer().is_empty() {
            if output.write_all(&out).and_then(|_| output.flush()).is_err() {
                break;
            }
            out.clear();
            if ctx.shutdown.load(Ordering::SeqCst) {
                shutting_down(ctx).write_to(&mut out);
                break;
            }
        }
        // A client that expected TLS from the first byte never sends a
        // line: told apart from a slow one, and logged for the operator.
        if std::mem::take(&mut first_line) && sends_tls_handshake(&mut reader, &timer) {
            log_implicit_tls(&peer);
            out.clear();
            break;
        }
        let Some(event) = next_event(&mut reader, &timer, &mut session, ctx, &mut out) else {
            break;
        };
        let event = milter_stage(&mut session, milter.as_mut(), event, &peer);
        mail_checks(&mut session, ctx, &mut facts);
        match event {
            Event::Reply(r) => r.write_to(&mut out),
            Event::Close(r) => {
                r.write_to(&mut out);
                break;
            }
            Event::StartTls(r) => {
                r.write_to(&mut out);
                return to_tls(&reader, &mut output, &out, &peer);
            }
            Event::Discard(r, n) if skip_chunk(&mut reader, &timer, ctx, n) => r.write_to(&mut out),
            Event::Discard(..) => break,
            Event::Data(txn) => {
                in_data.store(true, Ordering::SeqCst);
                let job = DataJob {
                    txn: &txn,
                    milter: milter.as_mut(),
                };
                let (r, w) = (&mut reader, &mut output);
                let keep_going = receive_data(r, w, &mut out, &timer, &mut session, ctx, job);
                in_data.store(false, Ordering::SeqCst);
                if !keep_going {
                    break;
                }
            }
        }
    }
    let _ = output.write_all(&out).and_then(|_| output.flush());
    log::info!("disconnect from {peer} commands={}", session.commands());
    Ending::Closed
}

/// The milters of one SMTP session; local submissions have none
/// (Postfix's non_smtpd_milters).
fn session_milters<'c>(ctx: &'c Context, client: &Client) -> Option<Run<'c>> {
    let cfg = ctx.guard.milters.as_ref()?;
    client.ip.map(|ip| Run::new(cfg, Some(ip)))
}

/// The milters' part of the command just answered: MAIL and RCPT may be
/// taken back by their refusal (the reply then is theirs).
fn milter_stage(
    session: &mut Session,
    milter: Option<&mut Run>,
    event: Event,
    peer: &str,
) -> Event {
    let stage = session.take_milter_stage();
    let (Some(m), Some(stage)) = (milter, stage) else {
        return event;
    };
    let (verb, ev) = match stage {
        MilterStage::Mail { helo, from } => {
            let mail = crate::guard::milter::Mail {
                helo: &helo,
                from: &from,
                auth: session.authenticated(),
            };
            match m.mail(&mail) {
                Ok(()) => return event,
                Err(r) => ("MAIL", session.undo_mail(r)),
            }
        }
        MilterStage::Rcpt(to) => match m.rcpt(&to) {
            Ok(()) => return event,
            Err(r) => ("RCPT", session.undo_rcpt(&to, r)),
        },
        MilterStage::Abort => {
            m.abort();
            return event;
        }
    };
    log_reject(peer, verb, &ev);
    ev
}

/// The checks that need the network, when the session names them due.
fn mail_checks(session: &mut Session, ctx: &Context, facts: &mut ClientFacts) {
    if let Some(req) = session.take_due_checks() {
        let v = ctx.guard.mail_stage(&req, facts);
        session.checks_done(v.refusal, v.trace, v.spf);
    }
}

/// After `220 Ready to start TLS`: the reply sent, the plaintext reader
/// left behind. CVE-2011-0411: whatever the client pipelined after
/// STARTTLS was sent in plaintext; it is thrown away with this reader,
/// never read as a command inside TLS.
fn to_tls<R: Read, W: Write>(
    reader: &BufReader<R>,
    output: &mut W,
    out: &[u8],
    peer: &str,
) -> Ending {
    if output.write_all(out).and_then(|_| output.flush()).is_err() {
        return Ending::Closed;
    }
    if !reader.buffer().is_empty() {
        log::warn!(
            "warning: {peer}: {} octets pipelined after STARTTLS discarded",
            reader.buffer().len()
        );
    }
    Ending::StartTls
}

/// The session state machine for a connection that starts at `start`
/// (inside TLS for all but `Greet`).
fn new_session<'c>(
    ctx: &'c Context,
    client: &Client,
    start: Start,
    tls_possible: bool,
) -> Session<'c> {
    let mut scfg = ctx.session.clone();
    scfg.tls_available &= tls_possible;
    let session = Session::new(scfg, &*ctx.policy, client.clone());
    match start {
        Start::Greet => session,
        Start::AfterTls | Start::ImplicitTls => session.after_tls(),
    }
}

/// The greeting, unless the client talked first (RFC 5321 §3.1, §4.3.1:
/// nothing may arrive before it): an early talker gets 554 and is closed
/// (false), an implicit-TLS client is logged as such.
fn greet<R: Read, W: Write>(
    reader: &mut BufReader<R>,
    output: &mut W,
    out: &mut Vec<u8>,
    ctl: &dyn Control,
    session: &mut Session,
    ctx: &Context,
) -> bool {
    if !ctl.talks_early(ctx.cfg.greet_pause) {
        session.greeting().write_to(out);
        return true;
    }
    let peer = peer_name(session.client());
    if sends_tls_handshake(reader, &Timer::new(ctl)) {
        log_implicit_tls(&peer);
        return false;
    }
    let r = session.early_talker();
    log::info!("reject: early talker from {peer}: {}", r.one_line());
    let _ = output.write_all(&r.to_wire());
    false
}

/// Reads the next command line and gives it to the session; `None` when
/// the session is over (time-out, end of input, a read error), with any
/// last reply in `out`.
fn next_event<R: Read>(
    reader: &mut BufReader<R>,
    timer: &Timer,
    session: &mut Session,
    ctx: &Context,
    out: &mut Vec<u8>,
) -> Option<Event> {
    let peer = peer_name(session.client());
    let line = match read_line(reader, MAX_COMMAND_LINE, timer, ctx.cfg.command_timeout) {
        Ok(l) => l,
        Err(e) if is_timeout(&e) => {
            log::info!("timeout after {} commands from {peer}", session.commands());
            session.timeout_reply().write_to(out);
            return None;
        }
        Err(_) => return None,
    };
    Some(match line {
        Line::Eof => {
            if ctx.shutdown.load(Ordering::SeqCst) {
                shutting_down(ctx).write_to(out);
            }
            return None;
        }
        Line::TooLong => session.line_too_long(),
        Line::BareLf => Event::Close(session.bare_lf()),
        Line::Ok(l) => {
            // A line inside an AUTH exchange is a credential: logged as
            // "AUTH", never by its words.
            let verb = match session.in_auth_exchange() {
                true => "AUTH".to_string(),
                false => verb_of(&l),
            };
            let refusal =
                storage_refusal(&verb, ctx).or_else(|| rate_refusal(&verb, session.client(), ctx));
            let ev = match refusal {
                Some(ev) => ev,
                None => session.command(&l),
            };
            log_reject(&peer, &verb, &ev);
            if let Some(o) = session.take_auth_outcome() {
                log_auth(&peer, &o, session.auth_failures());
            }
            ev
        }
    })
}

/// MAIL and RCPT over the client's rate limit (Postfix's anvil; clients in
/// relay_networks are exempt): 452 4.7.1, the transaction goes on.
fn rate_refusal(verb: &str, client: &Client, ctx: &Context) -> Option<Event> {
    let cfg = &ctx.cfg;
    let ip = client.ip.filter(|ip| !cfg.may_relay(*ip))?;
    let (event, limit, what) = match verb {
        "MAIL" => (
            anvil::Event::Message,
            cfg.smtpd_client_message_rate_limit,
            "too much mail",
        ),
        "RCPT" => (
            anvil::Event::Recipient,
            cfg.smtpd_client_recipient_rate_limit,
            "too many recipients",
        ),
        _ => return None,
    };
    let unit = cfg.anvil_rate_time_unit;
    if ctx.anvil.allow(ip, event, limit, unit, Instant::now()) {
        return None;
    }
    log::warn!(
        "warning: {what} from [{ip}]: over {limit} per {}s",
        unit.as_secs()
    );
    let text = format!("Error: {what} from [{ip}]");
    Some(Event::Reply(Reply::new(452, Enhanced(4, 7, 1), text)))
}

/// MAIL while the spool has no room for new mail (`storage`): 452 4.3.1,
/// as Postfix's "Insufficient system storage".
fn storage_refusal(verb: &str, ctx: &Context) -> Option<Event> {
    if verb != "MAIL" {
        return None;
    }
    let why = crate::storage::refusal(&ctx.cfg, Some(&ctx.spool))?;
    log::warn!("warning: no room for new mail: {why}");
    Some(Event::Reply(Reply::new(
        452,
        Enhanced(4, 3, 1),
        "Insufficient system storage",
    )))
}

/// A TLS server stream shared by the reading and writing halves of one
/// session thread (they never run at the same time).
#[cfg(feature = "tls")]
pub struct TlsStream(
    pub std::cell::RefCell<rustls::StreamOwned<rustls::ServerConnection, Deadline>>,
);

#[cfg(feature = "tls")]
impl Control for &TlsStream {
    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        self.0.borrow_mut().sock.until = Some(Instant::now() + d);
        Ok(())
    }

    fn talks_early(&self, _pause: Duration) -> bool {
        false
    }

    fn deadline_from_now(&self) -> bool {
        true
    }
}

/// The socket under TLS, with the deadline of what is being read (the
/// handshake, a command line, a data line). The TLS layer reads as often
/// as it needs to complete a record; each of those reads waits only for
/// what is left of the deadline, so a peer dripping a byte at a time
/// cannot stretch it, as it could with a time-out per read.
#[cfg(feature = "tls")]
pub struct Deadline {
    sock: std::net::TcpStream,
    until: Option<Instant>,
    /// The read time-out last set on `sock` (whole seconds above 2 s).
    set: Option<Duration>,
}

#[cfg(feature = "tls")]
impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(until) = self.until {
            let d = read_timeout_for(until.saturating_duration_since(Instant::now()))?;
            if self.set != Some(d) {
                self.sock.set_read_timeout(Some(d))?;
                self.set = Some(d);
            }
        }
        self.sock.read(buf)
    }
}

#[cfg(feature = "tls")]
impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

#[cfg(feature = "tls")]
impl Read for &TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

#[cfg(feature = "tls")]
impl Write for &TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// Serves a TCP connection: plaintext first, then, after STARTTLS, the
/// handshake and a new session inside TLS.
/// Serves a TCP connection: plaintext first, then, after STARTTLS, the
/// handshake and a new session inside TLS; with `implicit_tls` (an
/// `smtps_listen` port, RFC 8314 §3.3), TLS from the first byte.
pub fn serve_tcp(
    sock: &std::net::TcpStream,
    client: Client,
    ctx: &Context,
    in_data: &AtomicBool,
    implicit_tls: bool,
) {
    if implicit_tls {
        // TLS from the first byte; refused at start without the feature.
        #[cfg(feature = "tls")]
        in_tls(sock, client, ctx, in_data, Start::ImplicitTls);
        return;
    }
    #[cfg(feature = "tls")]
    let tls_possible = ctx.tls.is_some();
    #[cfg(not(feature = "tls"))]
    let tls_possible = false;
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    let ending = run(
        sock,
        sock,
        sock,
        client.clone(),
        ctx,
        in_data,
        Start::Greet,
        tls_possible,
    );
    #[cfg(feature = "tls")]
    if ending == Ending::StartTls {
        in_tls(sock, client, ctx, in_data, Start::AfterTls);
    }
}

/// The handshake, then a session inside TLS from `start`.
#[cfg(feature = "tls")]
fn in_tls(
    sock: &std::net::TcpStream,
    client: Client,
    ctx: &Context,
    in_data: &AtomicBool,
    start: Start,
) {
    if let Some(stream) = server_tls(sock, &client, ctx) {
        run(
            &stream, &stream, &&stream, client, ctx, in_data, start, false,
        );
    }
}

/// The server side of a TLS handshake on `sock`, within one command
/// time-out; `None` (logged) when it fails or TLS is not configured.
#[cfg(feature = "tls")]
fn server_tls(sock: &std::net::TcpStream, client: &Client, ctx: &Context) -> Option<TlsStream> {
    let peer = peer_name(client);
    let cfg = ctx.tls.as_ref()?;
    let plain = sock.try_clone().ok()?;
    let conn = match rustls::ServerConnection::new(cfg.clone()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("warning: {peer}: TLS setup: {e}");
            return None;
        }
    };
    let plain = Deadline {
        sock: plain,
        until: Some(Instant::now() + ctx.cfg.command_timeout),
        set: None,
    };
    let mut tls = rustls::StreamOwned::new(conn, plain);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            log::info!("{peer}: TLS handshake failed: {e}");
            return None;
        }
    }
    let version = tls
        .conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let suite = tls
        .conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    log::info!("{peer}: TLS established: {version} {suite}");
    Some(TlsStream(std::cell::RefCell::new(tls)))
}

/// `[192.0.2.1]` for logs, or `localhost` for a local session.
fn peer_name(client: &Client) -> String {
    match client.ip {
        Some(ip) => format!("[{ip}]"),
        None => "localhost".to_string(),
    }
}

fn shutting_down(ctx: &Context) -> Reply {
    Reply::new(
        421,
        Enhanced(4, 3, 2),
        format!("{} Service shutting down", ctx.cfg.hostname),
    )
}

fn verb_of(line: &[u8]) -> String {
    let end = line
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(line.len())
        .min(16);
    String::from_utf8_lossy(&line[..end]).to_ascii_uppercase()
}

/// One line per AUTH verdict, as Postfix's smtpd logs it; a failure also
/// slows the client down (RFC 4954 §4: against password guessing, a
/// second more for every failure, at most five).
fn log_auth(peer: &str, o: &AuthOutcome, failures: usize) {
    let (method, user) = (o.mechanism, escape(&o.user));
    if o.success {
        log::info!("{peer}: sasl_method={method}, sasl_username={user}");
        return;
    }
    log::warn!(
        "warning: {peer}: AUTH failed ({failures} so far): sasl_method={method}, sasl_username={user}"
    );
    if failures > 0 {
        std::thread::sleep(Duration::from_secs(failures.min(5) as u64));
    }
}

fn log_reject(peer: &str, verb: &str, ev: &Event) {
    if let Event::Reply(r) | Event::Close(r) | Event::Discard(r, _) = ev {
        if r.code >= 400 {
            crate::metrics::rejected(r);
            log::info!(
                "reject: {} from {peer}: {}",
                escape(verb),
                escape(&r.one_line())
            );
        }
    }
}

/// The DATA phase: 354, stream into the spool, commit, reply. Returns false
/// when the connection must end (time-out, EOF, write error).
fn receive_data<R: Read, W: Write>(
    reader: &mut BufReader<R>,
    output: &mut W,
    out: &mut Vec<u8>,
    timer: &Timer,
    session: &mut Session,
    ctx: &Context,
    job: DataJob,
) -> bool {
    let DataJob { txn, mut milter } = job;
    let Some(mut incoming) = open_sink(ctx) else {
        if let Event::Reply(r) | Event::Close(r) = session.data_unavailable() {
            r.write_to(out);
        }
        return true;
    };
    let peer = &peer_name(session.client());
    // The milters hear of the client and the envelope first: a refusal
    // then is the answer to DATA.
    if let Some(m) = milter.as_deref_mut() {
        if let Err(r) = m.data(incoming.id()) {
            return refuse_data(session, r, peer, out);
        }
    }
    let arrival = time::unix_now();
    let (go_ahead, received) = session.data_opened(incoming.id(), &time::rfc5322(arrival));
    if !send_go_ahead(output, out, go_ahead, txn.chunk.is_some()) {
        return false;
    }
    incoming.write(received.as_bytes());
    let mut held = held_for(session, ctx, milter);
    let mut job = Stream {
        reader,
        output,
        out,
        timer,
        session,
        ctx,
    };
    let end = match stream_message(&mut job, txn.chunk, &mut incoming, &mut held) {
        Chunked::End(end) => end,
        Chunked::Command(verb) => return chunks_abandoned(job, verb, held),
        Chunked::Gone => return false, // incoming is dropped: nothing is queued
    };
    if let Some(ev) = session.data_ended(end) {
        log_reject(peer, "DATA", &ev);
        return write_event(ev, out);
    }
    let verdict = match end_checks(ctx, held, txn) {
        Ok(v) => v,
        Err(r) => return refuse_data(session, r, peer, out),
    };
    if let Some(f) = &verdict.filtered {
        // The filters changed fields or the body: the content is rewritten
        // (read back whole; only when a filter asks for it).
        incoming.edit(|c| {
            crate::guard::milter::edit::apply(c, received.len(), &f.edits, f.body.as_deref())
        });
    }
    if verdict.discard {
        log::info!("{}: discarded by a milter", incoming.id());
        let ev = session.queued(incoming.id());
        return write_event(ev, out);
    }
    let ev = commit(ctx, session, txn, incoming, (arrival, peer), &verdict);
    write_event(ev, out)
}

/// The message into the spool (or the maildrop), with what the checks
/// add on top: the reply to its end of data.
fn commit(
    ctx: &Context,
    session: &mut Session,
    txn: &Transaction,
    incoming: Sink,
    (arrival, peer): (u64, &str),
    verdict: &EndVerdict,
) -> Event {
    let client = peer.trim_start_matches('[').trim_end_matches(']');
    let mut env = envelope_of(txn, incoming.id(), arrival, client);
    ctx.policy.rewriter.envelope(&mut env);
    match incoming.commit(ctx, &mut env, verdict.header.as_bytes()) {
        Ok(()) => {
            crate::metrics::received();
            log_queued(&env, peer, &txn.helo);
            queued(ctx, &env.id, verdict.hold);
            session.queued(&env.id)
        }
        Err(e) => {
            log::warn!("warning: {}: cannot queue message: {e}", env.id);
            let ev = session.queue_failed();
            log_reject(peer, "DATA", &ev);
            ev
        }
    }
}

/// A message refused after DATA: nothing is queued, the client hears why.
fn refuse_data(session: &mut Session, r: Reply, peer: &str, out: &mut Vec<u8>) -> bool {
    let ev = session.data_refused(r);
    log_reject(peer, "DATA", &ev);
    write_event(ev, out)
}

/// A transaction's data to receive: the transaction, and the session's
/// milters (already told of its envelope).
struct DataJob<'t, 'm, 'c> {
    txn: &'t Transaction,
    milter: Option<&'m mut Run<'c>>,
}

/// What the checks after the data decided.
struct EndVerdict {
    header: String,
    hold: bool,
    discard: bool,
    /// The filters' changes, when the content must be rewritten for them.
    filtered: Option<crate::guard::milter::Outcome>,
}

/// The milters' end of message, then DKIM and DMARC: the header fields to
/// add and where the message goes, or the refusal.
fn end_checks(ctx: &Context, held: Option<Held>, txn: &Transaction) -> Result<EndVerdict, Reply> {
    let (milter, verifier) = match held {
        Some(h) => (h.milter, h.verify),
        None => (None, None),
    };
    let filtered = milter.map(|m| m.end()).transpose()?.unwrap_or_default();
    let checked = verifier
        .map(|v| ctx.guard.data_stage(v, &txn.spf, txn.from.is_null()))
        .unwrap_or_default();
    if let Some(r) = checked.refusal {
        return Err(r);
    }
    let rewrites = filtered.rewrites();
    Ok(EndVerdict {
        header: if rewrites {
            String::new()
        } else {
            filtered.prefix()
        } + &checked.header,
        hold: checked.hold || filtered.quarantine.is_some(),
        discard: filtered.discard,
        filtered: rewrites.then_some(filtered),
    })
}

/// What holds the header section back while it arrives: mail this host
/// vouches for has its addresses rewritten; an untrusted client's, when
/// DKIM or DMARC results are wanted, is verified and loses forged
/// Authentication-Results: fields that carry our name; the milters are
/// given the fields one by one, then the body.
fn held_for<'m, 'c>(
    session: &Session,
    ctx: &Context,
    milter: Option<&'m mut Run<'c>>,
) -> Option<Held<'m, 'c>> {
    let client = session.client();
    let vouched = client.may_relay || client.ip.is_none() || session.authenticated().is_some();
    let verify = if vouched { None } else { ctx.guard.verifier() };
    if !vouched && verify.is_none() && milter.is_none() {
        return None;
    }
    Some(Held {
        rewrite: vouched,
        strip: verify
            .is_some()
            .then(|| ctx.guard.authserv_id().to_string()),
        verify,
        milter,
        ..Held::default()
    })
}

/// A message just queued: to the delivery scheduler, or on hold (DMARC
/// quarantine).
fn queued(ctx: &Context, id: &str, hold: bool) {
    if hold {
        match ctx.spool.hold(id) {
            Ok(_) => log::info!("{id}: held (DMARC quarantine)"),
            Err(e) => log::warn!("warning: {id}: cannot hold: {e}"),
        }
        return;
    }
    if let Some(queued) = &ctx.on_queued {
        queued(id.to_string());
    }
}

/// A new message file in the spool, or (for `sendmail -bs` by a user who
/// may not write the spool) a maildrop entry; `None` when neither can be
/// had (the client hears 452).
fn open_sink(ctx: &Context) -> Option<Sink> {
    match ctx.spool.create() {
        Ok(i) => Some(Sink::Spool(i)),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied && ctx.maildrop_fallback => {
            Some(Sink::Maildrop {
                id: crate::spool::maildrop::new_name(),
                bytes: Vec::new(),
            })
        }
        Err(e) => {
            log::warn!(
                "warning: cannot create message file: {}",
                crate::preflight::explain(&e, "spool_dir", ctx.spool.root())
            );
            None
        }
    }
}

/// Reads the message through the DATA decoder into `sink` up to the end
/// of data; `None` when the client timed out (the reply is in `out`) or
/// went away.
fn stream_data<R: Read>(
    reader: &mut BufReader<R>,
    out: &mut Vec<u8>,
    timer: &Timer,
    session: &mut Session,
    ctx: &Context,
    sink: &mut Sink,
    held: &mut Option<Held>,
) -> Option<DataEnd> {
    let peer = &peer_name(session.client());
    let mut decoder = DataDecoder::new(ctx.cfg.message_size_limit);
    // What one read of the 16 KiB reader decodes to.
    let mut content = Vec::with_capacity(16 * 1024 + 64);
    // §4.5.3.2.5: each data block (here: each line) within data_timeout.
    let mut lines_seen = 0;
    let mut deadline = Instant::now() + ctx.cfg.data_timeout;
    loop {
        if decoder.lines() != lines_seen {
            lines_seen = decoder.lines();
            deadline = Instant::now() + ctx.cfg.data_timeout;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let armed = if reader.buffer().is_empty() {
            timer.arm(left)
        } else {
            Ok(())
        };
        let buf = match armed.and_then(|()| reader.fill_buf()) {
            Ok(b) => b,
            Err(e) => {
                if is_timeout(&e) {
                    log::info!("{}: timeout during DATA from {peer}", sink.id());
                    session.timeout_reply().write_to(out);
                }
                return None;
            }
        };
        if buf.is_empty() {
            log::info!("{}: lost connection during DATA from {peer}", sink.id());
            return None;
        }
        let (used, done) = decoder.feed(buf, &mut content);
        reader.consume(used);
        if !content.is_empty() {
            match held {
                Some(h) => h.write(&content, sink, &ctx.policy.rewriter),
                None => sink.write(&content),
            }
            content.clear();
        }
        if done {
            if let Some(h) = held {
                h.end(sink, &ctx.policy.rewriter);
            }
            return Some(DataEnd {
                defect: decoder.defect(),
                received_headers: decoder.received_headers(),
            });
        }
    }
}

/// DATA's 354, sent at once (none for BDAT, whose chunk follows its
/// command: RFC 3030 §2); false when the client is gone.
fn send_go_ahead<W: Write>(output: &mut W, out: &mut Vec<u8>, r: Reply, chunked: bool) -> bool {
    if !chunked {
        r.write_to(out);
    }
    let sent = output.write_all(out).and_then(|_| output.flush()).is_ok();
    out.clear();
    sent
}

/// The content, after DATA or in BDAT chunks from `chunk`.
fn stream_message<R: Read, W: Write>(
    job: &mut Stream<'_, '_, '_, R, W>,
    chunk: Option<Chunk>,
    sink: &mut Sink,
    held: &mut Option<Held>,
) -> Chunked {
    let Some(first) = chunk else {
        let (r, o, t) = (&mut *job.reader, &mut *job.out, job.timer);
        return match stream_data(r, o, t, job.session, job.ctx, sink, held) {
            Some(end) => Chunked::End(end),
            None => Chunked::Gone,
        };
    };
    stream_chunks(job, first, sink, held)
}

/// What the data phase reads and writes with.
struct Stream<'a, 't, 'p, R: Read, W: Write> {
    reader: &'a mut BufReader<R>,
    output: &'a mut W,
    out: &'a mut Vec<u8>,
    timer: &'a Timer<'t>,
    session: &'a mut Session<'p>,
    ctx: &'a Context,
}

/// How the data phase ended (BDAT's chunks, or DATA's lines).
enum Chunked {
    /// With the LAST chunk (or the end-of-data line).
    End(DataEnd),
    /// With RSET or QUIT (the verb) between chunks: nothing is queued.
    Command(&'static str),
    /// Time-out (the reply is in `out`) or the client went away.
    Gone,
}

/// Reads the chunks of a BDAT transaction, from `first`, through the
/// decoder into `sink` (RFC 3030 §2: `250` for each chunk but the last,
/// whose reply is the message's). Between chunks only BDAT, NOOP, RSET and
/// QUIT are taken; anything else gets 503 and the transaction goes on.
fn stream_chunks<R: Read, W: Write>(
    job: &mut Stream<'_, '_, '_, R, W>,
    first: Chunk,
    sink: &mut Sink,
    held: &mut Option<Held>,
) -> Chunked {
    let mut decoder = DataDecoder::chunked(job.ctx.cfg.message_size_limit);
    let mut chunk = first;
    loop {
        if !read_chunk(job, chunk.size, &mut decoder, sink, held) {
            return Chunked::Gone;
        }
        if chunk.last {
            let mut content = Vec::new();
            decoder.finish(&mut content);
            write_held(held, &content, sink, job.ctx);
            if let Some(h) = held {
                h.end(sink, &job.ctx.policy.rewriter);
            }
            return Chunked::End(DataEnd {
                defect: decoder.defect(),
                received_headers: decoder.received_headers(),
            });
        }
        let text = format!("Ok: {} octets", chunk.size);
        Reply::new(250, Enhanced(2, 0, 0), text).write_to(job.out);
        chunk = match next_chunk(job) {
            Ok(c) => c,
            Err(ending) => return ending,
        };
    }
}

/// The command after a chunk: the next BDAT, or how the transaction ends.
fn next_chunk<R: Read, W: Write>(job: &mut Stream<'_, '_, '_, R, W>) -> Result<Chunk, Chunked> {
    // Lines that are not BDAT, RSET or QUIT, each an error: at most
    // max_errors, as in the rest of the session.
    let mut strays = 0;
    loop {
        if strays > job.ctx.cfg.max_errors {
            Reply::new(421, Enhanced(4, 7, 0), "Error: too many errors").write_to(job.out);
            return Err(Chunked::Gone);
        }
        if job.reader.buffer().is_empty() {
            let sent = job
                .output
                .write_all(job.out)
                .and_then(|_| job.output.flush());
            job.out.clear();
            sent.map_err(|_| Chunked::Gone)?;
        }
        let line = read_line(
            job.reader,
            MAX_COMMAND_LINE,
            job.timer,
            job.ctx.cfg.command_timeout,
        );
        let line = match line {
            Ok(Line::Ok(l)) => l,
            Ok(Line::TooLong) => {
                strays += 1;
                Reply::new(500, Enhanced(5, 5, 2), "Error: line too long").write_to(job.out);
                continue;
            }
            Ok(Line::BareLf) => {
                job.session.bare_lf().write_to(job.out);
                return Err(Chunked::Gone);
            }
            Ok(Line::Eof) => return Err(Chunked::Gone),
            Err(e) => {
                if is_timeout(&e) {
                    job.session.timeout_reply().write_to(job.out);
                }
                return Err(Chunked::Gone);
            }
        };
        match command::parse(&line) {
            Ok(Command::Bdat(c)) if c.size <= job.ctx.cfg.message_size_limit => return Ok(c),
            Ok(Command::Bdat(_)) => {
                let text = "Error: message file too big; closing";
                Reply::new(552, Enhanced(5, 3, 4), text).write_to(job.out);
                return Err(Chunked::Gone);
            }
            Ok(Command::Rset) => return Err(Chunked::Command("RSET")),
            Ok(Command::Quit) => return Err(Chunked::Command("QUIT")),
            Ok(Command::Noop) => {
                strays += 1;
                Reply::new(250, Enhanced(2, 0, 0), "Ok").write_to(job.out)
            }
            // A BDAT whose size cannot be read: the stream is lost.
            Err(r) if verb_of(&line) == "BDAT" => {
                r.write_to(job.out);
                return Err(Chunked::Gone);
            }
            _ => {
                strays += 1;
                let text = "Error: BDAT transaction in progress: send BDAT, RSET or QUIT";
                Reply::new(503, Enhanced(5, 5, 1), text).write_to(job.out)
            }
        }
    }
}

/// One chunk of `size` octets through the decoder; false when the client
/// timed out (the reply is in `out`) or went away. Each read within
/// data_timeout (§4.5.3.2.5).
fn read_chunk<R: Read, W: Write>(
    job: &mut Stream<'_, '_, '_, R, W>,
    size: u64,
    decoder: &mut DataDecoder,
    sink: &mut Sink,
    held: &mut Option<Held>,
) -> bool {
    let mut left = size;
    let mut content = Vec::with_capacity(16 * 1024 + 64);
    while left > 0 {
        let buf = match fill(job.reader, job.timer, job.ctx.cfg.data_timeout) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => {
                log::info!("{}: lost connection during BDAT", sink.id());
                return false;
            }
            Err(e) => {
                if is_timeout(&e) {
                    log::info!("{}: timeout during BDAT", sink.id());
                    job.session.timeout_reply().write_to(job.out);
                }
                return false;
            }
        };
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        decoder.feed(&buf[..n], &mut content);
        job.reader.consume(n);
        left -= n as u64;
        write_held(held, &content, sink, job.ctx);
        content.clear();
    }
    true
}

/// The next bytes from the client, waiting at most `limit` for them.
fn fill<'r, R: Read>(
    reader: &'r mut BufReader<R>,
    timer: &Timer,
    limit: Duration,
) -> io::Result<&'r [u8]> {
    if reader.buffer().is_empty() {
        timer.arm(limit)?;
    }
    reader.fill_buf()
}

/// Content to the sink, through what holds the header back if anything does.
fn write_held(held: &mut Option<Held>, content: &[u8], sink: &mut Sink, ctx: &Context) {
    if content.is_empty() {
        return;
    }
    match held {
        Some(h) => h.write(content, sink, &ctx.policy.rewriter),
        None => sink.write(content),
    }
}

/// RSET or QUIT between chunks: nothing is queued (the sink is dropped),
/// the milters hear ABORT, the session answers the command.
fn chunks_abandoned<R: Read, W: Write>(
    job: Stream<'_, '_, '_, R, W>,
    verb: &str,
    held: Option<Held>,
) -> bool {
    if let Some(m) = held.and_then(|h| h.milter) {
        m.abort();
    }
    let ev = job.session.command(verb.as_bytes());
    let _ = job.session.take_milter_stage();
    write_event(ev, job.out)
}

/// A refused BDAT's chunk, read and dropped (RFC 3030 §2); false when the
/// client timed out or went away.
fn skip_chunk<R: Read>(reader: &mut BufReader<R>, timer: &Timer, ctx: &Context, size: u64) -> bool {
    let mut left = size;
    while left > 0 {
        let n = match fill(reader, timer, ctx.cfg.data_timeout) {
            Ok(b) if !b.is_empty() => b.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            _ => return false,
        };
        reader.consume(n);
        left -= n as u64;
    }
    true
}

/// The envelope of a message received in transaction `txn`: a pure
/// function of what the session agreed to (RFC 5321 §4.1.4: the
/// reverse-path and forward-paths of one transaction).
pub fn envelope_of(txn: &Transaction, id: &str, arrival: u64, client: &str) -> Envelope {
    Envelope {
        id: id.to_string(),
        created: arrival,
        client: client.to_string(),
        helo: txn.helo.clone(),
        protocol: txn.protocol.to_string(),
        body: match txn.params.body {
            crate::smtp::command::BodyType::SevenBit => "7BIT".into(),
            crate::smtp::command::BodyType::EightBitMime => "8BITMIME".into(),
        },
        smtputf8: txn.params.smtputf8,
        size: 0,
        from: txn.from.clone(),
        attempts: 0,
        next_attempt: 0,
        warned: false,
        dkim: String::new(),
        ret: txn.params.ret,
        envid: txn.params.envid.clone(),
        requiretls: txn.params.requiretls,
        rcpts: txn
            .rcpts
            .iter()
            .map(|(addr, dsn)| Recipient {
                addr: addr.clone(),
                state: RcptState::Pending,
                expanded: false,
                via: None,
                dsn: dsn.clone(),
            })
            .collect(),
    }
}

/// The two lines of a queued message (Postfix's smtpd and cleanup lines).
fn log_queued(env: &Envelope, peer: &str, helo: &str) {
    log::info!("{}: client={peer}, helo=<{}>", env.id, escape(helo));
    log::info!(
        "{}: from={}, size={}, nrcpt={} (queue active)",
        env.id,
        env.from,
        env.size,
        env.rcpts.len()
    );
}

/// The header section of mail this host vouches for, held until its end
/// and written with its addresses rewritten (`rewrite`: myorigin,
/// canonical tables, masquerading); the body passes through as it comes.
/// A header section over 64 KiB passes as it is.
#[derive(Default)]
struct Held<'m, 'c> {
    bytes: Vec<u8>,
    passed: bool,
    /// Rewrite the addresses (mail this host vouches for).
    rewrite: bool,
    /// Drop Authentication-Results: fields with this authserv-id (an
    /// untrusted client's mail).
    strip: Option<String>,
    /// Sees the data as it came, before anything is dropped.
    verify: Option<crate::guard::Verifier>,
    /// The milters, fed the header fields as they came, then the body.
    milter: Option<&'m mut Run<'c>>,
}

const MAX_HELD: usize = 64 * 1024;
/// As `dkim::MAX_HEADER`: the verifier gives up at the same size.
const MAX_STRIPPED: usize = 256 * 1024;

impl Held<'_, '_> {
    fn write(&mut self, data: &[u8], sink: &mut Sink, rw: &crate::rewrite::Rewriter) {
        if let Some(v) = &mut self.verify {
            v.feed(data);
        }
        if self.passed {
            if let Some(m) = &mut self.milter {
                m.body(data);
            }
            return sink.write(data);
        }
        let from = self.bytes.len().saturating_sub(3);
        self.bytes.extend_from_slice(data);
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.starts_with(b"\r\n") {
            // No header section at all.
            self.give_milters(b"", &bytes[2..]);
            sink.write(&bytes);
            self.passed = true;
        } else if let Some(i) = bytes[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let (head, rest) = bytes.split_at(from + i + 2);
            // The milters see the header section as it is kept.
            let head = self.filtered(head, rw);
            self.give_milters(&head, &rest[2..]);
            sink.write(&head);
            sink.write(rest);
            self.passed = true;
        } else if bytes.len() > self.limit() {
            self.give_milters(b"", &bytes);
            sink.write(&bytes);
            self.passed = true;
        } else {
            self.bytes = bytes;
        }
        if self.passed {
            self.bytes = Vec::new();
        }
    }

    /// How much header is held: an untrusted client's, to be cleaned of
    /// forged results, as much as the DKIM verifier keeps (a larger one is
    /// refused after DATA); otherwise `MAX_HELD`.
    fn limit(&self) -> usize {
        match self.strip {
            Some(_) => MAX_STRIPPED,
            None => MAX_HELD,
        }
    }

    /// The header fields as they came, the end of the header, and what
    /// came of the body with them, to the milters.
    fn give_milters(&mut self, head: &[u8], body: &[u8]) {
        let Some(m) = &mut self.milter else {
            return;
        };
        for field in crate::rewrite::fields(head) {
            m.header(field);
        }
        m.end_of_headers();
        if !body.is_empty() {
            m.body(body);
        }
    }

    /// The header section as it goes into the spool.
    fn filtered(&self, head: &[u8], rw: &crate::rewrite::Rewriter) -> Vec<u8> {
        if self.rewrite {
            return rw.header_section(head);
        }
        let Some(id) = &self.strip else {
            return head.to_vec();
        };
        let fields = crate::rewrite::fields(head);
        let kept = fields.iter().filter(|f| !crate::guard::claims_to_be(f, id));
        kept.flat_map(|f| f.iter().copied()).collect()
    }

    /// The end of data: a message that is all headers is written now.
    fn end(&mut self, sink: &mut Sink, rw: &crate::rewrite::Rewriter) {
        if !self.passed && !self.bytes.is_empty() {
            let head = std::mem::take(&mut self.bytes);
            let head = self.filtered(&head, rw);
            self.give_milters(&head, b"");
            sink.write(&head);
        }
        self.passed = true;
        self.bytes = Vec::new();
    }
}

/// Where a message being received goes: the spool, or (`sendmail -bs`
/// by an ordinary user) the maildrop, whole, at the end of DATA.
enum Sink {
    Spool(crate::spool::Incoming),
    Maildrop { id: String, bytes: Vec<u8> },
}

impl Sink {
    fn id(&self) -> &str {
        match self {
            Sink::Spool(i) => &i.id,
            Sink::Maildrop { id, .. } => id,
        }
    }

    fn write(&mut self, b: &[u8]) {
        match self {
            Sink::Spool(i) => i.write(b),
            Sink::Maildrop { bytes, .. } => bytes.extend_from_slice(b),
        }
    }

    /// Rewrites the content written so far with `f` (the filters' changes).
    fn edit(&mut self, f: impl FnOnce(&[u8]) -> Vec<u8>) {
        match self {
            Sink::Spool(i) => i.edit(f),
            Sink::Maildrop { bytes, .. } => *bytes = f(bytes),
        }
    }

    /// Queued (or in the maildrop, synced) when `Ok`, with `prefix` at the
    /// top of the content.
    fn commit(self, ctx: &Context, env: &mut Envelope, prefix: &[u8]) -> io::Result<()> {
        match self {
            Sink::Spool(i) => i.commit_with(env, prefix),
            Sink::Maildrop { id, mut bytes } => {
                bytes.splice(0..0, prefix.iter().copied());
                if env.rcpts.len() > crate::spool::maildrop::MAX_RCPTS {
                    return Err(io::Error::other("too many recipients for the maildrop"));
                }
                env.size = bytes.len() as u64;
                crate::spool::maildrop::submit_as(ctx.spool.root(), &id, env, &bytes)
            }
        }
    }
}

fn write_event(ev: Event, out: &mut Vec<u8>) -> bool {
    match ev {
        Event::Reply(r) => {
            r.write_to(out);
            true
        }
        Event::Close(r) => {
            r.write_to(out);
            false
        }
        Event::Data(_) | Event::StartTls(_) | Event::Discard(..) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn the_envelope_is_the_transaction_as_agreed() {
        use crate::address::{ForwardPath, ReversePath};
        let txn = Transaction {
            helo: "client.test".into(),
            protocol: "ESMTPS",
            from: ReversePath::parse("<a@b.test>").unwrap(),
            params: Default::default(),
            rcpts: vec![
                (
                    ForwardPath::parse("<c@d.test>").unwrap(),
                    Default::default(),
                ),
                (ForwardPath::Postmaster, Default::default()),
            ],
            spf: None,
            chunk: None,
        };
        let e = envelope_of(&txn, "00000000000000AB", 1_795_917_257, "192.0.2.1");
        assert_eq!(
            (e.id.as_str(), e.created, e.client.as_str(), e.helo.as_str()),
            (
                "00000000000000AB",
                1_795_917_257,
                "192.0.2.1",
                "client.test"
            )
        );
        assert_eq!((e.protocol.as_str(), e.body.as_str()), ("ESMTPS", "7BIT"));
        assert_eq!(e.rcpts.len(), 2);
        assert!(e
            .rcpts
            .iter()
            .all(|r| r.state == RcptState::Pending && !r.expanded));
        assert_eq!((e.attempts, e.next_attempt, e.size), (0, 0, 0));
    }

    struct NoTimeouts;
    impl Control for NoTimeouts {
        fn set_read_timeout(&self, _d: Duration) -> io::Result<()> {
            Ok(())
        }
        fn talks_early(&self, _p: Duration) -> bool {
            false
        }
    }

    /// Records every time-out it is given.
    struct Recorder(std::cell::RefCell<Vec<Duration>>);
    impl Control for Recorder {
        fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
            self.0.borrow_mut().push(d);
            Ok(())
        }
        fn talks_early(&self, _p: Duration) -> bool {
            false
        }
    }

    #[test]
    fn the_timer_sets_a_time_out_only_when_it_changes_and_never_late() {
        let rec = Recorder(Default::default());
        let t = Timer::new(&rec);
        for left in [300.9, 300.5, 300.0, 299.99, 1.5, 1.5, 0.25] {
            t.arm(Duration::from_secs_f64(left)).unwrap();
        }
        let set: Vec<f64> = rec.0.borrow().iter().map(|d| d.as_secs_f64()).collect();
        assert_eq!(set, vec![300.0, 299.0, 1.5, 0.25]);
        assert_eq!(
            t.arm(Duration::ZERO).unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = BufReader::with_capacity(7, Cursor::new(input.to_vec()));
        let mut v = Vec::new();
        loop {
            let l = read_line(
                &mut r,
                max,
                &Timer::new(&NoTimeouts),
                Duration::from_secs(60),
            )
            .unwrap();
            let eof = l == Line::Eof;
            v.push(l);
            if eof {
                return v;
            }
        }
    }

    #[test]
    fn lines_end_only_at_crlf() {
        assert_eq!(
            lines(b"HELO a\r\nNOOP\nQUIT\r\n", 512),
            vec![
                Line::Ok(b"HELO a".to_vec()),
                Line::BareLf,
                Line::Ok(b"QUIT".to_vec()),
                Line::Eof
            ]
        );
    }

    #[test]
    fn overlong_lines_are_discarded_up_to_their_end() {
        let mut input = vec![b'x'; 600];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            lines(&input, 512),
            vec![Line::TooLong, Line::Ok(b"NOOP".to_vec()), Line::Eof]
        );
        let mut exact = vec![b'x'; 510];
        exact.extend_from_slice(b"\r\n");
        assert_eq!(
            lines(&exact, 512),
            vec![Line::Ok(vec![b'x'; 510]), Line::Eof]
        );
    }
}
