//! Milter client: hands each message received over SMTP to the filters
//! `milters` names (OpenDKIM, rspamd, ClamAV, ...) over the Sendmail milter
//! protocol (`proto`), as Postfix's smtpd does, before the 250, so that a
//! filter's refusal reaches the client. One connection per filter and
//! message: negotiation, then the client and envelope stages (connect,
//! HELO, MAIL, RCPT, DATA) when DATA opens, the header fields and body as
//! they stream in, and end of message, where the filter may add, insert,
//! change or delete header fields, replace the body (`edit`) or
//! quarantine the message. A filter that cannot be reached, answers out
//! of turn or runs out of time gets `milter_default_action`. Recipient and
//! sender changes are not offered; a filter that sends them anyway is
//! broken.

pub mod edit;
pub mod proto;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use crate::smtp::reply::{Enhanced, Reply};
use proto::Reply as R;

/// Where a filter listens: `inet:host:port` or `unix:/path` (Postfix's
/// syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Inet(String, u16),
    Unix(PathBuf),
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.starts_with('/') {
                return Ok(Target::Unix(PathBuf::from(path)));
            }
        } else if let Some(rest) = text.strip_prefix("inet:") {
            if let Some((host, port)) = rest.rsplit_once(':') {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if let (false, Ok(port)) = (host.is_empty(), port.parse::<u16>()) {
                    return Ok(Target::Inet(host.to_string(), port));
                }
            }
        }
        Err(format!("'{text}' is not inet:host:port or unix:/path"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Inet(h, p) if h.contains(':') => write!(f, "inet:[{h}]:{p}"),
            Target::Inet(h, p) => write!(f, "inet:{h}:{p}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// `milter_default_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    Tempfail,
    Accept,
    Reject,
}

/// The filters and how long each may take.
#[derive(Debug, Clone)]
pub struct Config {
    pub targets: Vec<Target>,
    pub default_action: DefaultAction,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub content_timeout: Duration,
    pub hostname: String,
}

/// What the filters are told of a transaction at MAIL.
pub struct Mail<'a> {
    /// The HELO name (sent once, when the filters are opened).
    pub helo: &'a str,
    pub from: &'a str,
    pub auth: Option<&'a str>,
}

/// What the filters decided at the end of the message.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Their header changes, in order.
    pub edits: Vec<edit::Edit>,
    /// A new body, when one replaced it.
    pub body: Option<Vec<u8>>,
    pub quarantine: Option<String>,
    pub discard: bool,
}

impl Outcome {
    /// The content must be rewritten (a field changed or deleted, the body
    /// replaced); otherwise the new fields go at the top (`prefix`).
    pub fn rewrites(&self) -> bool {
        self.body.is_some()
            || self
                .edits
                .iter()
                .any(|e| matches!(e, edit::Edit::Change(..)))
    }

    /// The added fields, to go at the top of the message.
    pub fn prefix(&self) -> String {
        let fields = self.edits.iter().filter_map(|e| match e {
            edit::Edit::Add(n, v) | edit::Edit::Insert(_, n, v) => Some(edit::field(n, v)),
            edit::Edit::Change(..) => None,
        });
        fields
            .map(|f| String::from_utf8_lossy(&f).into_owned())
            .collect()
    }
}

/// A replacement body longer than this makes the filter broken.
const MAX_NEW_BODY: usize = 32 * 1024 * 1024;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(t))
                .and(s.set_write_timeout(Some(t))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One filter, for one message.
struct Filter {
    name: String,
    conn: Stream,
    /// The steps it does without (SMFIP_*).
    steps: u32,
    /// It accepted the message: nothing more is sent to it.
    done: bool,
    /// It asked for no more of the body (SMFIS_SKIP).
    skip_body: bool,
    /// It broke (the default action was taken): nothing more is sent to
    /// it in this session.
    dead: bool,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        for f in self.filters.iter_mut().filter(|f| !f.dead) {
            let _ = proto::write_packet(&mut f.conn, proto::QUIT, &[]);
        }
    }
}

/// Why a filter stopped the message: its reply, or a broken filter.
enum Stop {
    Refused(Reply),
    Discard,
    Broken(String),
}

/// One message's conversation with every filter.
pub struct Run<'c> {
    cfg: &'c Config,
    client: Option<IpAddr>,
    filters: Vec<Filter>,
    /// The filters were opened (at the session's first MAIL).
    opened: bool,
    /// A transaction is under way with them (ABORT ends it early).
    in_message: bool,
    /// The first refusal (or discard) of this message; later stages are
    /// not sent.
    stopped: Option<Outcome2>,
    queue_id: String,
    replaced_body: usize,
    outcome: Outcome,
}

/// How a run ended early: a reply for the client, or a silent discard.
enum Outcome2 {
    Reply(Reply),
    Discard,
}

impl<'c> Run<'c> {
    /// The filters of one SMTP session with `client`; nothing is sent
    /// until the first MAIL.
    pub fn new(cfg: &'c Config, client: Option<IpAddr>) -> Run<'c> {
        Run {
            cfg,
            client,
            filters: Vec::new(),
            opened: false,
            in_message: false,
            stopped: None,
            queue_id: "NOQUEUE".into(),
            replaced_body: 0,
            outcome: Outcome::default(),
        }
    }

    /// MAIL accepted by the session: the filters (opened, and told of the
    /// client and HELO, the first time) hear it; Err is the reply to give
    /// instead of 250.
    pub fn mail(&mut self, m: &Mail) -> Result<(), Reply> {
        self.abort();
        self.stopped = None;
        self.outcome = Outcome::default();
        self.replaced_body = 0;
        self.queue_id = "NOQUEUE".into();
        if !self.opened {
            self.opened = true;
            self.open_all(m.helo)?;
        }
        self.in_message = true;
        for f in &mut self.filters {
            f.done = false;
            f.skip_body = false;
        }
        let from = format!("<{}>", m.from);
        let mut macros = vec![("{mail_addr}", m.from)];
        if let Some(a) = m.auth {
            macros.push(("{auth_authen}", a));
        }
        let data = proto::strings(&[&from]);
        for i in 0..self.filters.len() {
            if self.filters[i].live() {
                let r = self.filters[i].stage(
                    proto::MAIL,
                    &data,
                    (proto::NO_MAIL, proto::NR_MAIL),
                    &macros,
                );
                self.settle(i, r)?;
            }
        }
        Ok(())
    }

    /// Opens every filter, negotiates, and sends CONNECT and HELO.
    fn open_all(&mut self, helo: &str) -> Result<(), Reply> {
        for t in &self.cfg.targets {
            match open(t, self.cfg) {
                Ok(f) => self.filters.push(f),
                Err(e) => self.broken(&t.to_string(), &e)?,
            }
        }
        for i in 0..self.filters.len() {
            let r = self.filters[i].connect(self.client, helo, self.cfg);
            self.settle(i, r)?;
        }
        Ok(())
    }

    /// RCPT accepted by the session: Err refuses this recipient alone.
    pub fn rcpt(&mut self, to: &str) -> Result<(), Reply> {
        if self.stopped.is_some() {
            return Ok(());
        }
        let rcpt = format!("<{to}>");
        let data = proto::strings(&[&rcpt]);
        for i in 0..self.filters.len() {
            if !self.filters[i].live() {
                continue;
            }
            let steps = (proto::NO_RCPT, proto::NR_RCPT);
            match self.filters[i].stage(proto::RCPT, &data, steps, &[("{rcpt_addr}", to)]) {
                Ok(()) => {}
                Err(Stop::Refused(reply)) => return Err(reply),
                other => self.settle(i, other)?,
            }
        }
        Ok(())
    }

    /// DATA, with the message's queue ID; Err is the answer to DATA.
    pub fn data(&mut self, queue_id: &str) -> Result<(), Reply> {
        self.queue_id = queue_id.to_string();
        if let Some(Outcome2::Reply(r)) = &self.stopped {
            return Err(r.clone());
        }
        for i in 0..self.filters.len() {
            if self.stopped.is_some() {
                break;
            }
            if self.filters[i].live() {
                let steps = (proto::NO_DATA, proto::NR_DATA);
                let r = self.filters[i].stage(proto::DATA, &[], steps, &[("i", queue_id)]);
                self.settle(i, r)?;
            }
        }
        Ok(())
    }

    /// A transaction that ends before its end of message (RSET, a new
    /// MAIL or HELO, a refusal): the filters forget it (SMFIC_ABORT).
    pub fn abort(&mut self) {
        if !std::mem::take(&mut self.in_message) {
            return;
        }
        for f in self.filters.iter_mut().filter(|f| !f.dead) {
            if proto::write_packet(&mut f.conn, proto::ABORT, &[]).is_err() {
                f.dead = true;
            }
        }
    }

    /// A broken filter: the default action (Err is the reply to give).
    fn broken(&mut self, name: &str, why: &str) -> Result<(), Reply> {
        log::warn!("warning: {}: milter {name}: {why}", self.queue_id);
        match self.cfg.default_action {
            DefaultAction::Accept => Ok(()),
            DefaultAction::Tempfail => Err(Reply::new(
                451,
                Enhanced(4, 7, 1),
                "Service unavailable - try again later",
            )),
            DefaultAction::Reject => Err(Reply::new(
                550,
                Enhanced(5, 7, 1),
                "Service unavailable - rejected by policy",
            )),
        }
    }

    /// The result of filter `i`'s stage: a stop ends the run.
    fn settle(&mut self, i: usize, r: Result<(), Stop>) -> Result<(), Reply> {
        let name = self.filters[i].name.clone();
        let stop = match r {
            Ok(()) => return Ok(()),
            Err(Stop::Broken(why)) => {
                self.filters[i].dead = true;
                match self.broken(&name, &why) {
                    Ok(()) => return Ok(()),
                    Err(reply) => Outcome2::Reply(reply),
                }
            }
            Err(Stop::Refused(reply)) => {
                log::info!("{}: milter {name}: {}", self.queue_id, reply.one_line());
                Outcome2::Reply(reply)
            }
            Err(Stop::Discard) => {
                log::info!("{}: milter {name}: discard", self.queue_id);
                Outcome2::Discard
            }
        };
        let reply = match &stop {
            Outcome2::Reply(r) => Some(r.clone()),
            Outcome2::Discard => None,
        };
        self.stopped = Some(stop);
        match reply {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    fn each(&mut self, f: impl Fn(&mut Filter, &Config) -> Result<(), Stop>) {
        if self.stopped.is_some() {
            return;
        }
        for i in 0..self.filters.len() {
            if !self.filters[i].live() {
                continue;
            }
            let r = f(&mut self.filters[i], self.cfg);
            if self.settle(i, r).is_err() || self.stopped.is_some() {
                return;
            }
        }
    }

    /// One header field as received (`Name: value`, folded, CRLF-ended).
    pub fn header(&mut self, field: &[u8]) {
        let text = String::from_utf8_lossy(field);
        let Some((name, value)) = text.split_once(':') else {
            return;
        };
        let value = value.trim_end_matches(['\r', '\n']).replace("\r\n", "\n");
        self.each(|f, _| f.header(name, &value));
    }

    pub fn end_of_headers(&mut self) {
        let id = self.queue_id.clone();
        self.each(|f, _| {
            f.stage(
                proto::EOH,
                &[],
                (proto::NO_EOH, proto::NR_EOH),
                &[("i", &id)],
            )
        });
    }

    pub fn body(&mut self, data: &[u8]) {
        for chunk in data.chunks(proto::CHUNK) {
            self.each(|f, cfg| {
                if f.skip_body {
                    return Ok(());
                }
                f.conn.set_timeout(cfg.content_timeout).map_err(io_stop)?;
                f.stage(proto::BODY, chunk, (proto::NO_BODY, proto::NR_BODY), &[])
            });
        }
    }

    /// End of message: the filters' changes, or the refusal to give.
    pub fn end(&mut self) -> Result<Outcome, Reply> {
        for i in 0..self.filters.len() {
            if self.stopped.is_some() {
                break;
            }
            if !self.filters[i].live() {
                continue;
            }
            let r = self.end_of_message(i);
            if let Err(reply) = self.settle(i, r) {
                self.abort();
                return Err(reply);
            }
        }
        match self.stopped.take() {
            // Refused before the end: the filters still wait for it.
            Some(Outcome2::Reply(r)) => {
                self.abort();
                Err(r)
            }
            Some(Outcome2::Discard) => {
                self.abort();
                Ok(Outcome {
                    discard: true,
                    ..Outcome::default()
                })
            }
            None => {
                self.in_message = false;
                Ok(std::mem::take(&mut self.outcome))
            }
        }
    }

    /// EOM to filter `i` and its changes, up to its final reply.
    fn end_of_message(&mut self, i: usize) -> Result<(), Stop> {
        let id = self.queue_id.clone();
        let f = &mut self.filters[i];
        f.conn
            .set_timeout(self.cfg.content_timeout)
            .map_err(io_stop)?;
        send_macros(&mut f.conn, proto::EOM, &[("i", &id)]).map_err(io_stop)?;
        proto::write_packet(&mut f.conn, proto::EOM, &[]).map_err(io_stop)?;
        // This filter's changes count only once its final reply came: a
        // filter that breaks off half-way leaves nothing half-applied.
        let mut mine = Outcome::default();
        let mut progress = 0;
        loop {
            let (cmd, data) = proto::read_packet(&mut f.conn).map_err(io_stop)?;
            match proto::parse_reply(cmd, &data).map_err(Stop::Broken)? {
                R::AddHeader(n, v) => {
                    edit_once(&mut mine, edit::Edit::Add(n, v), &mut self.replaced_body)?
                }
                R::InsertHeader(i, n, v) => edit_once(
                    &mut mine,
                    edit::Edit::Insert(i, n, v),
                    &mut self.replaced_body,
                )?,
                R::ChangeHeader(i, n, v) => edit_once(
                    &mut mine,
                    edit::Edit::Change(i, n, v),
                    &mut self.replaced_body,
                )?,
                R::ReplaceBody(chunk) => replace_body(&mut mine, &chunk, &mut self.replaced_body)?,
                R::Quarantine(why) => mine.quarantine = Some(why),
                R::Progress => progress_once(&mut progress)?,
                R::Unsupported(c) => {
                    return Err(Stop::Broken(format!(
                        "asked for action '{c}', which was not offered"
                    )))
                }
                other => {
                    verdict(other)?;
                    self.merge(mine);
                    return Ok(());
                }
            }
        }
    }

    fn merge(&mut self, mine: Outcome) {
        self.outcome.edits.extend(mine.edits);
        if let Some(b) = mine.body {
            self.outcome.body = Some(b);
        }
        if mine.quarantine.is_some() {
            self.outcome.quarantine = mine.quarantine;
        }
    }
}

/// SMFIR_PROGRESS replies a filter may send for one stage before it is
/// taken for one that will never answer.
const MAX_PROGRESS: u32 = 100;

fn progress_once(n: &mut u32) -> Result<(), Stop> {
    *n += 1;
    match *n > MAX_PROGRESS {
        true => Err(Stop::Broken("progress without end".into())),
        false => Ok(()),
    }
}

fn edit_once(o: &mut Outcome, e: edit::Edit, total: &mut usize) -> Result<(), Stop> {
    let (edit::Edit::Add(name, value)
    | edit::Edit::Insert(_, name, value)
    | edit::Edit::Change(_, name, value)) = &e;
    let ok_name = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    *total += name.len() + value.len();
    if !ok_name || o.edits.len() >= 1000 || *total > MAX_NEW_BODY {
        return Err(Stop::Broken(format!(
            "a bad header change, or too many: {name:.40}"
        )));
    }
    o.edits.push(e);
    Ok(())
}

fn replace_body(o: &mut Outcome, chunk: &[u8], total: &mut usize) -> Result<(), Stop> {
    *total += chunk.len();
    if *total > MAX_NEW_BODY {
        return Err(Stop::Broken("an endless new body".into()));
    }
    o.body.get_or_insert_with(Vec::new).extend_from_slice(chunk);
    Ok(())
}

fn io_stop(e: io::Error) -> Stop {
    Stop::Broken(e.to_string())
}

/// A terminal reply of a stage.
fn verdict(r: R) -> Result<(), Stop> {
    match r {
        R::Continue | R::Accept | R::Skip => Ok(()),
        R::Reject => Err(Stop::Refused(Reply::new(
            550,
            Enhanced(5, 7, 1),
            "Command rejected",
        ))),
        R::Tempfail => Err(Stop::Refused(Reply::new(
            451,
            Enhanced(4, 7, 1),
            "Service unavailable - try again later",
        ))),
        R::Discard => Err(Stop::Discard),
        R::Code(code, text) => Err(Stop::Refused(reply_of(code, &text))),
        other => Err(Stop::Broken(format!("{other:?} out of turn"))),
    }
}

/// A filter's own reply text (`554 5.7.1 why`), printable, one line.
fn reply_of(code: u16, text: &str) -> Reply {
    let rest: String = text[3..]
        .trim_start_matches(['-', ' '])
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(400)
        .collect();
    let mut words = rest.splitn(2, ' ');
    let first = words.next().unwrap_or("");
    let parts: Vec<u16> = first.split('.').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [c, s, d] if *c == code / 100 => {
            Reply::new(code, Enhanced(*c as u8, *s, *d), words.next().unwrap_or(""))
        }
        _ => Reply::plain(code, rest),
    }
}

fn send_macros(w: &mut impl Write, stage: u8, pairs: &[(&str, &str)]) -> io::Result<()> {
    let mut data = vec![stage];
    for (n, v) in pairs {
        data.extend(proto::strings(&[*n, *v]));
    }
    proto::write_packet(w, proto::MACRO, &data)
}

/// Connects and negotiates (OPTNEG).
fn open(t: &Target, cfg: &Config) -> Result<Filter, String> {
    let conn = match t {
        Target::Inet(host, port) => {
            let addr = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?;
            Stream::Tcp(
                TcpStream::connect_timeout(&addr, cfg.connect_timeout)
                    .map_err(|e| e.to_string())?,
            )
        }
        Target::Unix(p) => {
            Stream::Unix(UnixStream::connect(p).map_err(|e| format!("{}: {e}", p.display()))?)
        }
    };
    let mut f = Filter {
        name: t.to_string(),
        conn,
        steps: 0,
        done: false,
        skip_body: false,
        dead: false,
    };
    f.conn
        .set_timeout(cfg.command_timeout)
        .map_err(|e| e.to_string())?;
    let actions =
        proto::ADD_HEADERS | proto::CHANGE_HEADERS | proto::CHANGE_BODY | proto::QUARANTINE;
    let offer = [proto::VERSION, actions, proto::STEPS_WE_KNOW];
    let data: Vec<u8> = offer.iter().flat_map(|w| w.to_be_bytes()).collect();
    proto::write_packet(&mut f.conn, proto::OPTNEG, &data).map_err(|e| e.to_string())?;
    let (cmd, data) = proto::read_packet(&mut f.conn).map_err(|e| e.to_string())?;
    if cmd != proto::OPTNEG {
        return Err(format!(
            "answered option negotiation with '{}'",
            cmd.escape_ascii()
        ));
    }
    let (version, _actions, steps) = proto::parse_negotiation(&data)?;
    if version < 2 {
        return Err(format!("protocol version {version}"));
    }
    f.steps = steps & proto::STEPS_WE_KNOW;
    Ok(f)
}

impl Filter {
    /// One stage: macros, the command, and (unless the filter said it
    /// would not) its reply.
    /// One stage: its macros (one packet: a later one for the same stage
    /// would replace it), the command, and (unless the filter said it would
    /// not) its reply.
    fn stage(
        &mut self,
        cmd: u8,
        data: &[u8],
        (no, no_reply): (u32, u32),
        macros: &[(&str, &str)],
    ) -> Result<(), Stop> {
        if self.steps & no != 0 {
            return Ok(());
        }
        if !macros.is_empty() {
            send_macros(&mut self.conn, cmd, macros).map_err(io_stop)?;
        }
        proto::write_packet(&mut self.conn, cmd, data).map_err(io_stop)?;
        if self.steps & no_reply != 0 {
            return Ok(());
        }
        let mut progress = 0;
        loop {
            let (c, d) = proto::read_packet(&mut self.conn).map_err(io_stop)?;
            match proto::parse_reply(c, &d).map_err(Stop::Broken)? {
                R::Progress => progress_once(&mut progress)?,
                R::Accept => {
                    self.done = true;
                    return Ok(());
                }
                // SMFIS_SKIP: no more body for this filter.
                R::Skip if cmd == proto::BODY => {
                    self.skip_body = true;
                    return Ok(());
                }
                r => return verdict(r),
            }
        }
    }

    fn header(&mut self, name: &str, value: &str) -> Result<(), Stop> {
        let value = match self.steps & proto::HEADER_LEADING_SPACE {
            0 => value.strip_prefix(' ').unwrap_or(value),
            _ => value,
        };
        let data = proto::strings(&[name, value]);
        self.stage(
            proto::HEADER,
            &data,
            (proto::NO_HEADERS, proto::NR_HEADER),
            &[],
        )
    }

    /// Still in this message's conversation.
    fn live(&self) -> bool {
        !self.done && !self.dead
    }

    /// CONNECT and HELO, with Postfix's connect macros.
    fn connect(&mut self, ip: Option<IpAddr>, helo: &str, cfg: &Config) -> Result<(), Stop> {
        let client = ip
            .map(|ip| format!("[{ip}]"))
            .unwrap_or_else(|| "localhost".into());
        let addr = ip.map(|ip| ip.to_string()).unwrap_or_default();
        let mut macros = vec![
            ("j", cfg.hostname.as_str()),
            ("{daemon_name}", "satchel"),
            ("v", "satchel"),
            ("_", client.as_str()),
            ("{client_addr}", addr.as_str()),
            ("{client_name}", client.as_str()),
        ];
        if ip.is_none() {
            macros.truncate(3);
        }
        let mut data = proto::strings(&[&client]);
        match ip {
            Some(ip) => {
                data.push(if ip.is_ipv6() { b'6' } else { b'4' });
                data.extend_from_slice(&0u16.to_be_bytes());
                data.extend(proto::strings(&[&addr]));
            }
            None => data.push(b'U'),
        }
        self.stage(
            proto::CONNECT,
            &data,
            (proto::NO_CONNECT, proto::NR_CONNECT),
            &macros,
        )?;
        if self.done {
            return Ok(());
        }
        self.stage(
            proto::HELO,
            &proto::strings(&[helo]),
            (proto::NO_HELO, proto::NR_HELO),
            &[],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_postfix_writes_them() {
        assert_eq!(
            Target::parse("inet:127.0.0.1:11332"),
            Ok(Target::Inet("127.0.0.1".into(), 11332))
        );
        assert_eq!(
            Target::parse("inet:[::1]:8891"),
            Ok(Target::Inet("::1".into(), 8891))
        );
        assert_eq!(
            Target::parse("unix:/run/opendkim/opendkim.sock"),
            Ok(Target::Unix("/run/opendkim/opendkim.sock".into()))
        );
        for bad in [
            "inet:host",
            "inet::25",
            "unix:relative",
            "tcp:1.2.3.4:5",
            "inet:h:99999",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Target::parse("inet:[::1]:8891").unwrap().to_string(),
            "inet:[::1]:8891"
        );
    }

    #[test]
    fn filter_replies_become_smtp_replies() {
        let r = reply_of(554, "554 5.7.1 Gtube pattern");
        assert_eq!(r.one_line(), "554 5.7.1 Gtube pattern");
        let r = reply_of(451, "451 try later\r\nX");
        assert_eq!(r.code, 451);
        assert!(!r.one_line().contains('\r'));
    }
}
