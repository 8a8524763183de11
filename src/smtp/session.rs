//! The server side of the SMTP dialogue (RFC 5321) as a state machine:
//! a command line in -> an `Event` out (a reply to send, a reply and close,
//! or "open a spool entry and start DATA"). It decides every reply code and
//! the relay policy, but never touches a socket or a file: the connection
//! loop in `receive` feeds it lines and carries out its events, and the spool
//! is the connection loop's business.

use std::net::IpAddr;

use super::command::{self, Chunk, Command, MailParams};
use super::data::Defect;
use super::reply::{Enhanced, Reply};
use crate::address::{ForwardPath, Mailbox, ReversePath};
use crate::dsn::RcptDsn;

/// What the session needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub max_errors: usize,
    pub max_hops: usize,
    /// The domain of bare names from trusted clients (`myorigin`).
    pub myorigin: String,
    pub vrfy: bool,
    /// STARTTLS can be offered (a certificate is configured and the
    /// transport is a socket).
    pub tls_available: bool,
    /// SMTP AUTH (RFC 4954) can be offered: a credentials file is set.
    pub auth_available: bool,
    /// Offer AUTH without TLS too (the operator's explicit choice).
    pub auth_over_plaintext: bool,
    /// The checks of names that need no network, for untrusted clients.
    pub name_checks: NameChecks,
}

/// Postfix's reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname,
/// reject_non_fqdn_sender and reject_non_fqdn_recipient, each a setting.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameChecks {
    pub invalid_helo: bool,
    pub non_fqdn_helo: bool,
    pub non_fqdn_sender: bool,
    pub non_fqdn_recipient: bool,
}

/// What the milters are owed after a command the session accepted: the
/// connection loop takes it (`take_milter_stage`), asks them, and on a
/// refusal takes the command back (`undo_mail`, `undo_rcpt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterStage {
    Mail {
        helo: String,
        from: String,
    },
    Rcpt(String),
    /// The transaction ended before its data (RSET, HELO, STARTTLS).
    Abort,
}

/// The checks of a transaction that need the network (`guard`): after an
/// untrusted client's MAIL is accepted, the connection loop takes these
/// (`take_due_checks`), runs them and gives the verdict back
/// (`checks_done`) before the next command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailChecks {
    pub ip: IpAddr,
    pub helo: String,
    pub from: ReversePath,
}

/// How the policy classifies a recipient mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RcptClass {
    /// In a local domain, and the user (or alias) exists.
    LocalKnown,
    /// In a local domain, but nobody of that name.
    LocalUnknown,
    /// Any other domain: relaying.
    Remote,
    /// In a domain this host relays for anyone (`relay_domains`), and not
    /// refused by its recipient table.
    Relayed,
    /// In a relayed domain, but not in its recipient table.
    RelayedUnknown,
    /// In a virtual alias domain, but not in the virtual alias table.
    VirtualUnknown,
}

/// Answers the questions of the relay and recipient policy (backed by the
/// configuration and the aliases file at the edge; by a table in tests).
pub trait Policy {
    fn classify(&self, rcpt: &Mailbox) -> RcptClass;

    /// SMTP AUTH: are these credentials right?
    fn authenticate(&self, _user: &str, _password: &str) -> bool {
        false
    }

    /// May the authenticated `login` use `from` as its envelope sender?
    fn may_send_as(&self, _login: &str, _from: &Mailbox) -> bool {
        true
    }
}

/// The connected client, as the edge found it.
#[derive(Debug, Clone)]
pub struct Client {
    /// `None` for a local session (inetd on a pipe, sendmail -bs).
    pub ip: Option<IpAddr>,
    /// In `relay_networks` (or authenticated).
    pub may_relay: bool,
    /// A submission listener: AUTH before MAIL (RFC 6409 §4.3 style).
    pub auth_required: bool,
}

/// A transaction ready for DATA: everything the envelope needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub helo: String,
    pub protocol: &'static str,
    pub from: ReversePath,
    pub params: MailParams,
    /// The accepted recipients, each with its DSN request (RFC 3461).
    pub rcpts: Vec<(ForwardPath, RcptDsn)>,
    /// SPF's result for the transaction and the domain it was for, when
    /// the checks evaluated it (for Authentication-Results and DMARC).
    pub spf: Option<(crate::guard::spf::SpfResult, String)>,
    /// Sent with BDAT (RFC 3030): its first chunk; `None` for DATA.
    pub chunk: Option<Chunk>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Send the reply and read on.
    Reply(Reply),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Open a spool entry for this transaction, then call `data_opened`
    /// (or `data_unavailable` when the spool refuses).
    Data(Transaction),
    /// RFC 3207: send the 220, then start the TLS handshake; the session
    /// starts over (a new `Session` with `after_tls`).
    StartTls(Reply),
    /// A refused BDAT (RFC 3030 §2): read and drop the chunk of this many
    /// octets that follows it, then send the reply.
    Discard(Reply, u64),
}

#[derive(Debug, Clone)]
struct Helo {
    name: String,
    extended: bool,
}

/// The transaction state: each variant carries exactly its data.
#[derive(Debug)]
enum State {
    /// Greeted, no HELO/EHLO yet.
    Fresh,
    /// After HELO/EHLO, between transactions.
    Ready(Helo),
    /// After MAIL.
    Mail(Helo, ReversePath, MailParams),
    /// After at least one accepted RCPT.
    Rcpt(Helo, ReversePath, MailParams, Vec<(ForwardPath, RcptDsn)>),
    /// DATA accepted by us; the connection loop owns the data phase.
    Data(Helo, Transaction),
}

/// NOOP, RSET, VRFY and HELP commands a session may send before each
/// further one counts as an error (Postfix's smtpd_junk_command_limit): a
/// client cannot hold a connection slot for ever with a NOOP now and then.
const JUNK_LIMIT: usize = 100;

/// Recipients over `max_recipients` per transaction that are refused
/// with 452 without counting as errors (Postfix's default).
const RCPT_OVERSHOOT: usize = 1000;

pub struct Session<'p> {
    cfg: SessionConfig,
    policy: &'p dyn Policy,
    client: Client,
    state: State,
    errors: usize,
    /// Recipients refused for `max_recipients` in this transaction.
    over_limit: usize,
    /// NOOP, RSET, VRFY and HELP so far (see `JUNK_LIMIT`).
    junk: usize,
    /// The last reply is not an error to count (see `RCPT_OVERSHOOT`).
    uncounted: bool,
    commands: usize,
    /// The session runs inside TLS (after STARTTLS).
    tls_active: bool,
    /// The authenticated user (RFC 4954), once AUTH succeeded.
    authenticated: Option<String>,
    auth_failures: usize,
    /// An AUTH exchange waiting for the client's next line.
    auth_step: Option<AuthStep>,
    /// How the last AUTH exchange ended, until the loop logs it.
    auth_outcome: Option<AuthOutcome>,
    /// Checks the connection loop owes this transaction.
    due: Option<MailChecks>,
    /// The answer to this transaction's recipients (but postmaster) when a
    /// check refused the client, its HELO name or its sender.
    refusal: Option<Reply>,
    /// Trace header fields the checks added (Received-SPF), CRLF-ended,
    /// to go above our Received: line (RFC 7208 §9.1).
    trace: String,
    /// SPF's result, for the transaction.
    spf: Option<(crate::guard::spf::SpfResult, String)>,
    /// The milters' stage, once.
    milter_due: Option<MilterStage>,
}

/// An AUTH exchange that ended with a verdict, for the log (never the
/// password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthOutcome {
    pub mechanism: &'static str,
    pub user: String,
    pub success: bool,
}

/// Where a SASL exchange stands (RFC 4954 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
enum AuthStep {
    /// PLAIN after an empty challenge.
    PlainResponse,
    /// LOGIN: the user name is next.
    LoginUser,
    /// LOGIN: the password is next.
    LoginPassword(String),
}

/// What the DATA decoder found once the end of data was read.
#[derive(Debug, Clone, Copy)]
pub struct DataEnd {
    pub defect: Option<Defect>,
    pub received_headers: usize,
}

/// The line is a BDAT command (whatever its arguments).
fn is_bdat(line: &[u8]) -> bool {
    line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"BDAT")
        && matches!(line.get(4), None | Some(b' '))
}

/// A domain in fully-qualified form (a dot inside) or an address literal.
fn fqdn_domain(d: &crate::address::Domain) -> bool {
    match d {
        crate::address::Domain::Name(n) => crate::address::fqdn_or_literal(n),
        _ => true,
    }
}

fn ok(code: u16, e: Enhanced, text: &str) -> Event {
    Event::Reply(Reply::new(code, e, text))
}

impl<'p> Session<'p> {
    pub fn new(cfg: SessionConfig, policy: &'p dyn Policy, client: Client) -> Session<'p> {
        Session {
            cfg,
            policy,
            client,
            state: State::Fresh,
            errors: 0,
            over_limit: 0,
            junk: 0,
            uncounted: false,
            commands: 0,
            tls_active: false,
            authenticated: None,
            auth_failures: 0,
            auth_step: None,
            auth_outcome: None,
            due: None,
            refusal: None,
            trace: String::new(),
            spf: None,
            milter_due: None,
        }
    }

    /// The milters' stage after the last command, once.
    pub fn take_milter_stage(&mut self) -> Option<MilterStage> {
        self.milter_due.take()
    }

    /// A milter refused the MAIL just accepted: no transaction after all.
    pub fn undo_mail(&mut self, r: Reply) -> Event {
        if let Some(h) = self.helo() {
            self.state = State::Ready(h);
        }
        self.answer(Event::Reply(r))
    }

    /// A milter refused the recipient `to` just accepted: it is dropped.
    pub fn undo_rcpt(&mut self, to: &str, r: Reply) -> Event {
        if let State::Rcpt(h, f, p, mut rcpts) = std::mem::replace(&mut self.state, State::Fresh) {
            rcpts.retain(|(x, _)| x.bare() != to);
            self.state = match rcpts.is_empty() {
                true => State::Mail(h, f, p),
                false => State::Rcpt(h, f, p, rcpts),
            };
        }
        self.answer(Event::Reply(r))
    }

    /// The network checks this transaction waits for, once.
    pub fn take_due_checks(&mut self) -> Option<MailChecks> {
        self.due.take()
    }

    /// Their verdict: a refusal stands for every recipient but postmaster;
    /// `trace` goes above the Received: line of the message; `spf` is kept
    /// with the transaction.
    pub fn checks_done(
        &mut self,
        refusal: Option<Reply>,
        trace: String,
        spf: Option<(crate::guard::spf::SpfResult, String)>,
    ) {
        if refusal.is_some() {
            self.refusal = refusal;
        }
        self.trace = trace;
        self.spf = spf;
    }

    /// RFC 3207 §4.2: after the handshake the session starts over, with no
    /// knowledge from before it, and STARTTLS is no longer offered.
    pub fn after_tls(mut self) -> Self {
        self.tls_active = true;
        self
    }

    /// RFC 5321 §4.2: the 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP satchel", self.cfg.hostname))
    }

    /// §4.5.3.2: what an idle client hears before we close.
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 4, 2),
            format!("{} Error: timeout exceeded", self.cfg.hostname),
        )
    }

    /// For a line over the 512-octet limit (§4.5.3.1.4).
    pub fn line_too_long(&mut self) -> Event {
        // An AUTH exchange ends with it (RFC 4954 §4: a response over the
        // limit is an error), so the next line is a command again.
        self.auth_step = None;
        self.error(Reply::new(500, Enhanced(5, 5, 2), "Error: line too long"))
    }

    /// A bare LF in a command: the peer's line ends are not SMTP's, so we
    /// cannot tell where its commands end (the smuggling family); close.
    pub fn bare_lf(&self) -> Reply {
        Reply::new(
            521,
            Enhanced(5, 5, 2),
            format!("{} Error: bare <LF> received", self.cfg.hostname),
        )
    }

    /// RFC 5321 §3.1: a client must wait for the greeting.
    pub fn early_talker(&self) -> Reply {
        Reply::new(
            554,
            Enhanced(5, 5, 1),
            format!("{} Error: SMTP protocol synchronization", self.cfg.hostname),
        )
    }

    /// The client this session serves.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Number of commands seen (for the `disconnect` log line).
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// True while a transaction has been started (MAIL .. end of DATA).
    pub fn in_transaction(&self) -> bool {
        matches!(
            self.state,
            State::Mail(..) | State::Rcpt(..) | State::Data(..)
        )
    }

    fn error(&mut self, r: Reply) -> Event {
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            return Event::Close(self.too_many_errors());
        }
        Event::Reply(r)
    }

    fn too_many_errors(&self) -> Reply {
        Reply::new(
            421,
            Enhanced(4, 7, 0),
            format!("{} Error: too many errors", self.cfg.hostname),
        )
    }

    /// Counts a reply: 4xx/5xx replies count towards `max_errors`.
    fn answer(&mut self, ev: Event) -> Event {
        match ev {
            Event::Reply(r) if r.code >= 400 && !std::mem::take(&mut self.uncounted) => {
                self.error(r)
            }
            Event::Discard(r, n) => match self.error(r) {
                Event::Reply(r) => Event::Discard(r, n),
                closing => closing,
            },
            other => other,
        }
    }

    fn helo(&self) -> Option<Helo> {
        match &self.state {
            State::Fresh => None,
            State::Ready(h) | State::Mail(h, ..) | State::Rcpt(h, ..) | State::Data(h, _) => {
                Some(h.clone())
            }
        }
    }

    /// Failed AUTH attempts so far (the connection loop slows down by them).
    /// True while an AUTH exchange waits for the client's next line (a
    /// credential, never to be logged).
    pub fn in_auth_exchange(&self) -> bool {
        self.auth_step.is_some()
    }

    pub fn auth_failures(&self) -> usize {
        self.auth_failures
    }

    /// One command line, CRLF removed.
    pub fn command(&mut self, line: &[u8]) -> Event {
        self.commands += 1;
        if let Some(step) = self.auth_step.take() {
            let ev = self.auth_continue(step, line);
            return self.answer(ev);
        }
        // Bare names from trusted clients get @myorigin.
        let origin = self.client.may_relay.then_some(self.cfg.myorigin.as_str());
        let ev = match command::parse_qualifying(line, origin) {
            Ok(cmd) => self.dispatch(cmd),
            // A BDAT whose size cannot be read: where its chunk ends is
            // unknown, so nothing after it can be read as a command.
            Err(r) if is_bdat(line) => Event::Close(r),
            Err(r) => Event::Reply(r),
        };
        self.answer(ev)
    }

    fn dispatch(&mut self, cmd: Command) -> Event {
        if matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy(_) | Command::Help(_)
        ) {
            self.junk += 1;
            if self.junk > JUNK_LIMIT {
                self.errors += 1;
                if self.errors >= self.cfg.max_errors {
                    return Event::Close(self.too_many_errors());
                }
            }
        }
        match cmd {
            Command::Helo(name) => self.hello(name, false),
            Command::Ehlo(name) => self.hello(name, true),
            Command::Mail(from, params) => self.mail(from, params),
            Command::Rcpt(to, dsn) => self.rcpt(to, dsn),
            Command::Data => self.data(None),
            Command::Bdat(c) => self.bdat(c),
            Command::Rset => {
                self.milter_due = Some(MilterStage::Abort);
                // §4.1.1.5: RSET aborts the transaction, keeps the HELO.
                if let Some(h) = self.helo() {
                    self.state = State::Ready(h);
                }
                ok(250, Enhanced(2, 0, 0), "Ok")
            }
            Command::Noop => ok(250, Enhanced(2, 0, 0), "Ok"),
            Command::Quit => Event::Close(Reply::new(221, Enhanced(2, 0, 0), "Bye")),
            Command::Vrfy(arg) => self.vrfy(&arg),
            // §3.5.2/§7.3: EXPN may be disabled for privacy.
            Command::Expn(_) => ok(502, Enhanced(5, 5, 1), "Error: EXPN not supported"),
            Command::Help(_) => Event::Reply(Reply {
                code: 214,
                enhanced: Some(Enhanced(2, 0, 0)),
                lines: vec![
                    "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP".into(),
                    "See RFC 5321; send mail with MAIL FROM:<you> RCPT TO:<them> DATA".into(),
                ],
            }),
            Command::StartTls if self.cfg.tls_available && !self.tls_active => {
                // §4.2: a new session starts after the handshake.
                self.state = State::Fresh;
                Event::StartTls(Reply::new(220, Enhanced(2, 0, 0), "Ready to start TLS"))
            }
            Command::StartTls if self.tls_active => {
                ok(503, Enhanced(5, 5, 1), "Error: TLS already active")
            }
            Command::Auth(arg) => self.auth(&arg),
            Command::StartTls => ok(502, Enhanced(5, 5, 1), "Error: command not implemented"),
        }
    }

    fn hello(&mut self, name: String, extended: bool) -> Event {
        self.milter_due = Some(MilterStage::Abort);
        // §4.1.4: EHLO/HELO in the middle of a transaction resets it.
        self.state = State::Ready(Helo { name, extended });
        if !extended {
            return Event::Reply(Reply::plain(250, self.cfg.hostname.clone()));
        }
        let lines = vec![
            self.cfg.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.message_size_limit),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        let mut lines = lines;
        if self.cfg.tls_available && !self.tls_active {
            lines.push("STARTTLS".into());
        }
        if self.tls_active {
            lines.push("REQUIRETLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        lines.push("HELP".into());
        Event::Reply(Reply {
            code: 250,
            enhanced: None,
            lines,
        })
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Event {
        let helo = match &self.state {
            State::Fresh => return ok(503, Enhanced(5, 5, 1), "Error: send HELO/EHLO first"),
            State::Ready(h) => h.clone(),
            _ => return ok(503, Enhanced(5, 5, 1), "Error: nested MAIL command"),
        };
        if self.starttls_first() {
            return ok(
                530,
                Enhanced(5, 7, 0),
                "Must issue a STARTTLS command first",
            );
        }
        // RFC 4954 §6: 530 when the policy needs authentication first.
        if self.client.auth_required && self.authenticated.is_none() {
            return ok(530, Enhanced(5, 7, 0), "Error: authentication required");
        }
        // One login, its own senders only (sender_login_file).
        if let (Some(login), ReversePath::Mailbox(m)) = (&self.authenticated, &from) {
            if !self.policy.may_send_as(login, m) {
                return Event::Reply(Reply::new(
                    553,
                    Enhanced(5, 7, 1),
                    format!("<{m}>: Sender address rejected: not owned by user {login}"),
                ));
            }
        }
        // RFC 1870 §6.2: a declared size above the limit is refused at once.
        if params.size.is_some_and(|s| s > self.cfg.message_size_limit) {
            return ok(
                552,
                Enhanced(5, 3, 4),
                "Message size exceeds fixed maximum message size",
            );
        }
        // RFC 8689 §4.1: REQUIRETLS is offered, and taken, inside TLS only.
        if params.requiretls && !self.tls_active {
            return ok(530, Enhanced(5, 7, 10), "REQUIRETLS needs a TLS session");
        }
        // RFC 6531 §3.4: non-ASCII addresses need the SMTPUTF8 parameter.
        if !params.smtputf8 && !from.is_ascii() {
            return ok(
                553,
                Enhanced(5, 6, 7),
                "Non-ASCII sender address needs SMTPUTF8",
            );
        }
        self.refusal = None;
        self.trace.clear();
        self.spf = None;
        if !self.client.may_relay {
            self.refusal = self.name_refusal(&helo.name, &from);
            self.due = self.client.ip.map(|ip| MailChecks {
                ip,
                helo: helo.name.clone(),
                from: from.clone(),
            });
        }
        let sender = match &from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        };
        self.milter_due = Some(MilterStage::Mail {
            helo: helo.name.clone(),
            from: sender,
        });
        self.state = State::Mail(helo, from, params);
        self.over_limit = 0;
        ok(250, Enhanced(2, 1, 0), "Ok")
    }

    /// The refusal, if any, of an untrusted client's HELO name or sender
    /// address by the checks that need no network (RFC 5321 §4.1.1.1,
    /// §2.3.5: a fully-qualified domain name or an address literal).
    fn name_refusal(&self, helo: &str, from: &ReversePath) -> Option<Reply> {
        let c = self.cfg.name_checks;
        let refuse = |code, e, text: String| Some(Reply::new(code, e, text));
        if c.invalid_helo && !crate::address::valid_helo(helo) {
            return refuse(
                501,
                Enhanced(5, 5, 2),
                format!("<{helo}>: Helo command rejected: Invalid name"),
            );
        }
        if c.non_fqdn_helo && !crate::address::fqdn_or_literal(helo) {
            let text = format!("<{helo}>: Helo command rejected: need fully-qualified hostname");
            return refuse(504, Enhanced(5, 5, 2), text);
        }
        match from {
            ReversePath::Mailbox(m) if c.non_fqdn_sender && !fqdn_domain(&m.domain) => {
                let text = format!("<{m}>: Sender address rejected: need fully-qualified address");
                refuse(504, Enhanced(5, 5, 2), text)
            }
            _ => None,
        }
    }

    fn rcpt(&mut self, to: ForwardPath, dsn: RcptDsn) -> Event {
        let (helo, from, params, mut rcpts) = match std::mem::replace(&mut self.state, State::Fresh)
        {
            State::Mail(h, f, p) => (h, f, p, Vec::new()),
            State::Rcpt(h, f, p, r) => (h, f, p, r),
            other => {
                self.state = other;
                return ok(503, Enhanced(5, 5, 1), "Error: need MAIL command");
            }
        };
        let verdict = self.check_rcpt(&to, &params, rcpts.len());
        if rcpts.len() >= self.cfg.max_recipients && verdict.code == 452 {
            // §4.5.3.1.10: the client sends the rest in a later transaction.
            // A list's worth of them is no error (Postfix's
            // smtpd_recipient_overshoot_limit); only a flood counts.
            self.over_limit += 1;
            self.uncounted = self.over_limit <= RCPT_OVERSHOOT;
        }
        if verdict.is_positive() && !rcpts.iter().any(|(r, _)| *r == to) {
            self.milter_due = Some(MilterStage::Rcpt(to.bare()));
            rcpts.push((to, dsn));
        }
        self.state = if rcpts.is_empty() {
            State::Mail(helo, from, params)
        } else {
            State::Rcpt(helo, from, params, rcpts)
        };
        Event::Reply(verdict)
    }

    fn check_rcpt(&self, to: &ForwardPath, params: &MailParams, count: usize) -> Reply {
        // §4.5.3.1.10: too many recipients is a temporary failure.
        if count >= self.cfg.max_recipients {
            return Reply::new(452, Enhanced(4, 5, 3), "Error: too many recipients");
        }
        if !params.smtputf8 && !to.is_ascii() {
            return Reply::new(
                553,
                Enhanced(5, 6, 7),
                "Non-ASCII recipient address needs SMTPUTF8",
            );
        }
        let mailbox = match to {
            // §4.5.1: <postmaster> must always be accepted.
            ForwardPath::Postmaster => return Reply::new(250, Enhanced(2, 1, 5), "Ok"),
            ForwardPath::Mailbox(m) => m,
        };
        let class = self.policy.classify(mailbox);
        let postmaster = matches!(class, RcptClass::LocalKnown | RcptClass::LocalUnknown)
            && mailbox.local_unquoted().eq_ignore_ascii_case("postmaster");
        match &self.refusal {
            Some(r) if !postmaster => return r.clone(),
            _ => {}
        }
        let c = self.cfg.name_checks;
        if c.non_fqdn_recipient && !self.client.may_relay && !fqdn_domain(&mailbox.domain) {
            let text =
                format!("<{mailbox}>: Recipient address rejected: need fully-qualified address");
            return Reply::new(504, Enhanced(5, 5, 2), text);
        }
        match class {
            RcptClass::LocalKnown => Reply::new(250, Enhanced(2, 1, 5), "Ok"),
            RcptClass::LocalUnknown => Reply::new(
                550,
                Enhanced(5, 1, 1),
                format!("<{mailbox}>: Recipient address rejected: User unknown in local recipient table"),
            ),
            RcptClass::Relayed => Reply::new(250, Enhanced(2, 1, 5), "Ok"),
            RcptClass::RelayedUnknown => Reply::new(
                550,
                Enhanced(5, 1, 1),
                format!("<{mailbox}>: Recipient address rejected: User unknown in relay recipient table"),
            ),
            RcptClass::VirtualUnknown => Reply::new(
                550,
                Enhanced(5, 1, 1),
                format!("<{mailbox}>: Recipient address rejected: User unknown in virtual alias table"),
            ),
            RcptClass::Remote if self.client.may_relay => Reply::new(250, Enhanced(2, 1, 5), "Ok"),
            RcptClass::Remote => {
                Reply::new(554, Enhanced(5, 7, 1), format!("<{mailbox}>: Relay access denied"))
            }
        }
    }

    /// RFC 3030: BDAT opens the data phase like DATA (the connection loop
    /// reads the chunks); anywhere else its chunk is read and dropped. A
    /// chunk over the size limit ends the session: 552, and nothing of
    /// it is read.
    fn bdat(&mut self, c: Chunk) -> Event {
        if c.size > self.cfg.message_size_limit {
            self.state = match self.helo() {
                Some(h) => State::Ready(h),
                None => State::Fresh,
            };
            let text = "Error: message file too big; closing";
            return Event::Close(Reply::new(552, Enhanced(5, 3, 4), text));
        }
        match self.data(Some(c)) {
            Event::Reply(r) => Event::Discard(r, c.size),
            ev => ev,
        }
    }

    fn data(&mut self, chunk: Option<Chunk>) -> Event {
        match std::mem::replace(&mut self.state, State::Fresh) {
            State::Rcpt(helo, from, params, rcpts) => {
                // RFC 3848 and RFC 6531 §3.7.3 "with" keywords.
                let auth = self.authenticated.is_some();
                let protocol = match (params.smtputf8, helo.extended, self.tls_active, auth) {
                    (true, _, false, false) => "UTF8SMTP",
                    (true, _, false, true) => "UTF8SMTPA",
                    (true, _, true, false) => "UTF8SMTPS",
                    (true, _, true, true) => "UTF8SMTPSA",
                    (false, _, false, true) => "ESMTPA",
                    (false, _, true, true) => "ESMTPSA",
                    (false, true, false, false) => "ESMTP",
                    (false, true, true, false) => "ESMTPS",
                    (false, false, false, false) => "SMTP",
                    (false, false, true, false) => "SMTPS",
                };
                let txn = Transaction {
                    helo: helo.name.clone(),
                    protocol,
                    from,
                    params,
                    rcpts,
                    spf: self.spf.clone(),
                    chunk,
                };
                self.state = State::Data(helo, txn.clone());
                Event::Data(txn)
            }
            other => {
                let text = match other {
                    State::Mail(..) => "Error: need RCPT command",
                    _ => "Error: need MAIL command",
                };
                self.state = other;
                ok(503, Enhanced(5, 5, 1), text)
            }
        }
    }

    fn auth_offered(&self) -> bool {
        self.cfg.auth_available && (self.tls_active || self.cfg.auth_over_plaintext)
    }

    /// A submission listener whose AUTH is offered only inside TLS, before
    /// STARTTLS: the client is told what to do first (as Postfix does).
    fn starttls_first(&self) -> bool {
        self.client.auth_required
            && self.cfg.auth_available
            && self.cfg.tls_available
            && !self.auth_offered()
    }

    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    fn auth(&mut self, arg: &str) -> Event {
        if self.starttls_first() {
            return ok(
                530,
                Enhanced(5, 7, 0),
                "Must issue a STARTTLS command first",
            );
        }
        if !self.auth_offered() {
            return ok(503, Enhanced(5, 5, 1), "Error: authentication not enabled");
        }
        match &self.state {
            State::Fresh => return ok(503, Enhanced(5, 5, 1), "Error: send EHLO first"),
            State::Ready(_) => {}
            _ => {
                return ok(
                    503,
                    Enhanced(5, 5, 1),
                    "Error: MAIL transaction in progress",
                )
            }
        }
        if self.authenticated.is_some() {
            return ok(503, Enhanced(5, 5, 1), "Error: already authenticated");
        }
        let mut words = arg.split(' ');
        let mech = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        match (mech.as_str(), initial) {
            ("PLAIN", None) => {
                self.auth_step = Some(AuthStep::PlainResponse);
                Event::Reply(Reply::plain(334, ""))
            }
            ("PLAIN", Some(resp)) => self.auth_continue(AuthStep::PlainResponse, resp.as_bytes()),
            ("LOGIN", None) => {
                self.auth_step = Some(AuthStep::LoginUser);
                Event::Reply(Reply::plain(334, "VXNlcm5hbWU6")) // "Username:"
            }
            ("LOGIN", Some(user)) => self.auth_continue(AuthStep::LoginUser, user.as_bytes()),
            _ => ok(
                504,
                Enhanced(5, 5, 4),
                "Error: unsupported authentication mechanism",
            ),
        }
    }

    fn auth_continue(&mut self, step: AuthStep, line: &[u8]) -> Event {
        // §4: "*" cancels the exchange.
        if line == b"*" {
            return ok(501, Enhanced(5, 0, 0), "Authentication aborted");
        }
        let text = std::str::from_utf8(line).unwrap_or("");
        let decoded = if text == "=" {
            Some(Vec::new())
        } else {
            super::base64::decode(text)
        };
        let Some(decoded) = decoded else {
            return ok(501, Enhanced(5, 5, 2), "Error: cannot decode the response");
        };
        let mechanism = match step {
            AuthStep::PlainResponse => "PLAIN",
            AuthStep::LoginUser | AuthStep::LoginPassword(_) => "LOGIN",
        };
        let (user, password) = match step {
            AuthStep::LoginUser => {
                let Ok(user) = String::from_utf8(decoded) else {
                    return ok(501, Enhanced(5, 5, 2), "Error: user name is not UTF-8");
                };
                self.auth_step = Some(AuthStep::LoginPassword(user));
                return Event::Reply(Reply::plain(334, "UGFzc3dvcmQ6")); // "Password:"
            }
            AuthStep::LoginPassword(user) => (user, String::from_utf8(decoded).unwrap_or_default()),
            AuthStep::PlainResponse => {
                // RFC 4616: [authzid] NUL authcid NUL passwd
                let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                if parts.len() != 3 {
                    return ok(501, Enhanced(5, 5, 2), "Error: malformed PLAIN response");
                }
                let user = String::from_utf8_lossy(parts[1]).into_owned();
                let authz = String::from_utf8_lossy(parts[0]);
                if !authz.is_empty() && authz != user {
                    self.auth_failures += 1;
                    self.auth_outcome = Some(AuthOutcome {
                        mechanism,
                        user,
                        success: false,
                    });
                    return ok(535, Enhanced(5, 7, 8), "Error: authentication failed");
                }
                (user, String::from_utf8_lossy(parts[2]).into_owned())
            }
        };
        let success = !user.is_empty() && self.policy.authenticate(&user, &password);
        self.auth_outcome = Some(AuthOutcome {
            mechanism,
            user: user.clone(),
            success,
        });
        if success {
            self.authenticated = Some(user);
            self.client.may_relay = true;
            ok(235, Enhanced(2, 7, 0), "Authentication successful")
        } else {
            self.auth_failures += 1;
            ok(535, Enhanced(5, 7, 8), "Error: authentication failed")
        }
    }

    /// How the AUTH exchange that just ended went (once), for the log.
    pub fn take_auth_outcome(&mut self) -> Option<AuthOutcome> {
        self.auth_outcome.take()
    }

    /// The authenticated user, for logs.
    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    fn vrfy(&self, arg: &str) -> Event {
        if !self.cfg.vrfy {
            // §3.5.3: 252 when we will not verify but will accept.
            return ok(
                252,
                Enhanced(2, 5, 2),
                "Cannot VRFY user, but will accept message and attempt delivery",
            );
        }
        let arg = arg.trim_start_matches('<').trim_end_matches('>');
        let candidate = if arg.contains('@') {
            arg.to_string()
        } else {
            format!("{arg}@localhost")
        };
        match Mailbox::parse(&candidate) {
            Ok(m) => match self.policy.classify(&m) {
                RcptClass::LocalKnown => ok(250, Enhanced(2, 1, 5), &format!("<{m}>")),
                RcptClass::LocalUnknown | RcptClass::VirtualUnknown => {
                    ok(550, Enhanced(5, 1, 1), &format!("<{m}>: User unknown"))
                }
                RcptClass::Remote | RcptClass::Relayed | RcptClass::RelayedUnknown => ok(
                    252,
                    Enhanced(2, 5, 2),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ),
            },
            Err(e) => ok(501, Enhanced(5, 1, 3), &format!("Bad address syntax: {e}")),
        }
    }

    /// The spool entry is open: 354, and the `Received:` header to write
    /// first (RFC 5321 §4.4). `date` is an RFC 5322 date-time.
    pub fn data_opened(&self, queue_id: &str, date: &str) -> (Reply, String) {
        let reply = Reply::plain(354, "End data with <CR><LF>.<CR><LF>");
        let header = match &self.state {
            State::Data(_, txn) => self.trace.clone() + &self.received_header(txn, queue_id, date),
            _ => String::new(),
        };
        (reply, header)
    }

    /// The spool could not open an entry (disk full, permissions).
    pub fn data_unavailable(&mut self) -> Event {
        self.finish_transaction();
        self.answer(ok(
            452,
            Enhanced(4, 3, 1),
            "Error: insufficient system storage",
        ))
    }

    /// End of data was read: may the message be committed? `None` means the
    /// connection loop should commit it and then call `queued` or
    /// `queue_failed`; `Some` is the refusal to send instead.
    pub fn data_ended(&mut self, end: DataEnd) -> Option<Event> {
        let refusal = match end.defect {
            Some(Defect::TooBig) => Some(Reply::new(
                552,
                Enhanced(5, 3, 4),
                "Error: message file too big",
            )),
            // RFC 5321 §2.3.8: lines end with CRLF only; a message that
            // does otherwise is refused whole (smuggling defence).
            Some(Defect::BareNewline) => Some(Reply::new(
                550,
                Enhanced(5, 6, 0),
                "Error: message contains bare <CR> or <LF>; lines must end with <CR><LF>",
            )),
            Some(Defect::LineTooLong) => Some(Reply::new(
                550,
                Enhanced(5, 6, 0),
                "Error: message line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
            )),
            None if end.received_headers >= self.cfg.max_hops => {
                Some(Reply::new(554, Enhanced(5, 4, 6), "Error: too many hops"))
            }
            None => None,
        };
        match refusal {
            Some(r) => {
                self.finish_transaction();
                Some(self.answer(Event::Reply(r)))
            }
            None => None,
        }
    }

    /// The message is on disk: 250 (RFC 5321 §4.1.1.4, and our promise).
    pub fn queued(&mut self, queue_id: &str) -> Event {
        self.finish_transaction();
        // As Postfix: the junk count starts again after each message (a
        // client that reuses its session sends RSET before every one).
        self.junk = 0;
        ok(250, Enhanced(2, 0, 0), &format!("Ok: queued as {queue_id}"))
    }

    /// Committing failed: the client must try again later.
    /// A check after the data refused the message (DMARC p=reject): the
    /// transaction is over, the client hears why.
    pub fn data_refused(&mut self, r: Reply) -> Event {
        self.finish_transaction();
        self.answer(Event::Reply(r))
    }

    pub fn queue_failed(&mut self) -> Event {
        self.finish_transaction();
        self.answer(ok(
            452,
            Enhanced(4, 3, 1),
            "Error: insufficient system storage",
        ))
    }

    fn finish_transaction(&mut self) {
        if let Some(h) = self.helo() {
            self.state = State::Ready(h);
        }
    }

    fn received_header(&self, txn: &Transaction, queue_id: &str, date: &str) -> String {
        // RFC 5321 §4.4 time-stamp line; RFC 3848 "with" keywords. The HELO
        // name is the client's text: only printable ASCII reaches the header.
        let helo: String = txn
            .helo
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '(' && c != ')' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let client = match self.client.ip {
            Some(IpAddr::V4(a)) => format!("[{a}]"),
            Some(IpAddr::V6(a)) => format!("[IPv6:{a}]"),
            None => "localhost".to_string(),
        };
        let mut h = format!(
            "Received: from {helo} ({client})\r\n\tby {} (satchel) with {} id {queue_id}",
            self.cfg.hostname, txn.protocol
        );
        // Like Postfix, name the recipient only when there is exactly one.
        if let [(ForwardPath::Mailbox(m), _)] = txn.rcpts.as_slice() {
            h.push_str(&format!("\r\n\tfor <{m}>"));
        }
        h.push_str(&format!("; {date}\r\n"));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Table;
    impl Policy for Table {
        fn classify(&self, m: &Mailbox) -> RcptClass {
            if m.domain.is_name("local.test") {
                if m.local == "alice"
                    || m.local == "bob"
                    || m.local.eq_ignore_ascii_case("postmaster")
                {
                    RcptClass::LocalKnown
                } else {
                    RcptClass::LocalUnknown
                }
            } else {
                RcptClass::Remote
            }
        }

        fn authenticate(&self, user: &str, password: &str) -> bool {
            user == "alice" && password == "secret"
        }
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            hostname: "mx.local.test".into(),
            message_size_limit: 1000,
            max_recipients: 3,
            max_errors: 20,
            max_hops: 50,
            myorigin: String::new(),
            vrfy: false,
            tls_available: false,
            auth_available: false,
            auth_over_plaintext: false,
            name_checks: NameChecks::default(),
        }
    }

    fn session(may_relay: bool) -> Session<'static> {
        Session::new(
            cfg(),
            &Table,
            Client {
                ip: Some("192.0.2.9".parse().unwrap()),
                may_relay,
                auth_required: false,
            },
        )
    }

    fn code(ev: &Event) -> u16 {
        match ev {
            Event::Reply(r) | Event::Close(r) | Event::StartTls(r) | Event::Discard(r, _) => r.code,
            Event::Data(_) => 0,
        }
    }

    fn run(s: &mut Session, line: &str) -> u16 {
        code(&s.command(line.as_bytes()))
    }

    fn checking(may_relay: bool) -> Session<'static> {
        let mut c = cfg();
        c.name_checks = NameChecks {
            invalid_helo: true,
            non_fqdn_helo: true,
            non_fqdn_sender: true,
            non_fqdn_recipient: true,
        };
        let client = Client {
            ip: Some("192.0.2.9".parse().unwrap()),
            may_relay,
            auth_required: false,
        };
        Session::new(c, &Table, client)
    }

    #[test]
    fn name_checks_refuse_at_rcpt_but_not_postmaster_nor_trusted_clients() {
        for (helo, from, want) in [
            ("bad_name!", "a@b.test", 501),
            ("localhost", "a@b.test", 504),
            ("client.test", "a@nodot", 504),
        ] {
            let mut s = checking(false);
            assert_eq!(run(&mut s, &format!("EHLO {helo}")), 250);
            assert_eq!(
                run(&mut s, &format!("MAIL FROM:<{from}>")),
                250,
                "{helo} {from}"
            );
            assert_eq!(
                run(&mut s, "RCPT TO:<alice@local.test>"),
                want,
                "{helo} {from}"
            );
            assert_eq!(run(&mut s, "RCPT TO:<Postmaster@local.test>"), 250);
            assert_eq!(run(&mut s, "RCPT TO:<postmaster>"), 250);
            let mut trusted = checking(true);
            assert_eq!(run(&mut trusted, &format!("EHLO {helo}")), 250);
            assert_eq!(run(&mut trusted, &format!("MAIL FROM:<{from}>")), 250);
            assert_eq!(run(&mut trusted, "RCPT TO:<alice@local.test>"), 250);
        }
        let mut s = checking(false);
        for ok_helo in ["[192.0.2.9]", "[IPv6:2001:db8::9]", "mail.client.test"] {
            assert_eq!(run(&mut s, &format!("HELO {ok_helo}")), 250);
            assert_eq!(run(&mut s, "MAIL FROM:<>"), 250);
            assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 250, "{ok_helo}");
            assert_eq!(run(&mut s, "RSET"), 250);
        }
        let mut s = checking(false);
        run(&mut s, "EHLO client.test");
        run(&mut s, "MAIL FROM:<a@b.test>");
        let r = s.command(b"RCPT TO:<x@nodot>");
        assert_eq!(code(&r), 504);
        assert!(
            format!("{r:?}").contains("Recipient address rejected"),
            "{r:?}"
        );
    }

    #[test]
    fn the_network_checks_are_due_once_per_untrusted_transaction() {
        let mut s = checking(false);
        run(&mut s, "EHLO client.test");
        assert_eq!(s.take_due_checks(), None);
        run(&mut s, "MAIL FROM:<a@b.test>");
        let due = s.take_due_checks().expect("checks after MAIL");
        assert_eq!(due.helo, "client.test");
        assert_eq!(due.ip, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(s.take_due_checks(), None);
        s.checks_done(
            Some(Reply::new(554, Enhanced(5, 7, 1), "listed")),
            String::new(),
            None,
        );
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 554);
        assert_eq!(run(&mut s, "RCPT TO:<postmaster@local.test>"), 250);
        // A new transaction starts clean, until its own verdict.
        run(&mut s, "RSET");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert!(s.take_due_checks().is_some());
        s.checks_done(None, String::new(), None);
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 250);
        // Trusted clients owe nothing.
        let mut t = checking(true);
        run(&mut t, "EHLO client.test");
        run(&mut t, "MAIL FROM:<a@b.test>");
        assert_eq!(t.take_due_checks(), None);
    }

    #[test]
    fn mail_before_helo_is_rejected_with_503() {
        let mut s = session(false);
        assert_eq!(run(&mut s, "MAIL FROM:<a@b.test>"), 503);
    }

    #[test]
    fn rcpt_before_mail_is_rejected_with_503() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 503);
    }

    #[test]
    fn data_before_mail_or_rcpt_is_rejected_with_503() {
        let mut s = session(false);
        assert_eq!(run(&mut s, "DATA"), 503);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "DATA"), 503);
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "DATA"), 503);
        assert_eq!(run(&mut s, "RCPT TO:<nobody@local.test>"), 550);
        assert_eq!(run(&mut s, "DATA"), 503, "no valid recipients");
    }

    #[test]
    fn nested_mail_is_rejected_with_503() {
        let mut s = session(false);
        run(&mut s, "HELO c");
        assert_eq!(run(&mut s, "MAIL FROM:<a@b.test>"), 250);
        assert_eq!(run(&mut s, "MAIL FROM:<a@b.test>"), 503);
    }

    #[test]
    fn rset_and_ehlo_abort_the_transaction() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "RSET"), 250);
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 503);
        run(&mut s, "MAIL FROM:<a@b.test>");
        run(&mut s, "EHLO again");
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 503);
    }

    #[test]
    fn full_transaction_reaches_data_and_resets_after_queueing() {
        let mut s = session(false);
        assert_eq!(s.greeting().code, 220);
        run(&mut s, "EHLO client.test");
        run(&mut s, "MAIL FROM:<a@b.test> BODY=8BITMIME");
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 250);
        match s.command(b"DATA") {
            Event::Data(t) => {
                assert_eq!(t.rcpts.len(), 1);
                assert_eq!(t.protocol, "ESMTP");
            }
            e => panic!("{e:?}"),
        }
        let (r, hdr) = s.data_opened("ABC123", "Sun, 29 Nov 2026 01:02:03 +0000");
        assert_eq!(r.code, 354);
        assert_eq!(
            hdr,
            "Received: from client.test ([192.0.2.9])\r\n\tby mx.local.test (satchel) with ESMTP id ABC123\r\n\tfor <alice@local.test>; Sun, 29 Nov 2026 01:02:03 +0000\r\n"
        );
        assert!(s
            .data_ended(DataEnd {
                defect: None,
                received_headers: 0
            })
            .is_none());
        let ev = s.queued("ABC123");
        assert_eq!(
            ev,
            Event::Reply(Reply::new(250, Enhanced(2, 0, 0), "Ok: queued as ABC123"))
        );
        assert_eq!(
            run(&mut s, "MAIL FROM:<>"),
            250,
            "a new transaction may start"
        );
    }

    #[test]
    fn ehlo_advertises_the_extensions() {
        let mut s = session(false);
        let Event::Reply(r) = s.command(b"EHLO c") else {
            panic!()
        };
        for ext in [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "HELP",
        ] {
            assert!(r.lines.iter().any(|l| l == ext), "{ext} missing");
        }
    }

    #[test]
    fn declared_size_above_limit_is_552() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "MAIL FROM:<a@b.test> SIZE=1001"), 552);
        assert_eq!(run(&mut s, "MAIL FROM:<a@b.test> SIZE=1000"), 250);
    }

    #[test]
    fn relay_is_denied_to_outsiders_and_allowed_to_relay_networks() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "RCPT TO:<x@foreign.test>"), 554);
        assert_eq!(run(&mut s, "RCPT TO:<alice@local.test>"), 250);
        let mut s = session(true);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "RCPT TO:<x@foreign.test>"), 250);
    }

    #[test]
    fn relay_tricks_are_not_local_users() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "RCPT TO:<x%foreign.test@local.test>"), 550);
        assert_eq!(run(&mut s, "RCPT TO:<\"x@foreign.test\"@local.test>"), 550);
        assert_eq!(run(&mut s, "RCPT TO:<@local.test:x@foreign.test>"), 554);
        assert_eq!(run(&mut s, "RCPT TO:<x@foreign.test@local.test>"), 501);
        assert_eq!(run(&mut s, "RCPT TO:<x@[192.0.2.1]>"), 554);
    }

    #[test]
    fn postmaster_is_always_accepted() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(run(&mut s, "RCPT TO:<postmaster>"), 250);
    }

    #[test]
    fn recipients_beyond_the_limit_get_452() {
        let mut s = session(true);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        for i in 0..3 {
            assert_eq!(run(&mut s, &format!("RCPT TO:<u{i}@r.test>")), 250);
        }
        assert_eq!(run(&mut s, "RCPT TO:<u9@r.test>"), 452);
    }

    #[test]
    fn non_ascii_address_needs_smtputf8() {
        let mut s = session(true);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "MAIL FROM:<jörg@b.test>"), 553);
        assert_eq!(run(&mut s, "MAIL FROM:<jörg@b.test> SMTPUTF8"), 250);
        assert_eq!(run(&mut s, "RCPT TO:<ü@r.test>"), 250);
        assert!(matches!(s.command(b"DATA"), Event::Data(t) if t.protocol == "UTF8SMTP"));
    }

    #[test]
    fn data_defects_map_to_refusals() {
        for (defect, want) in [
            (Some(Defect::TooBig), 552),
            (Some(Defect::BareNewline), 550),
            (Some(Defect::LineTooLong), 550),
        ] {
            let mut s = session(false);
            run(&mut s, "EHLO c");
            run(&mut s, "MAIL FROM:<a@b.test>");
            run(&mut s, "RCPT TO:<alice@local.test>");
            s.command(b"DATA");
            let r = s.data_ended(DataEnd {
                defect,
                received_headers: 0,
            });
            assert_eq!(r.map(|e| code(&e)), Some(want));
            assert_eq!(run(&mut s, "MAIL FROM:<a@b.test>"), 250);
        }
    }

    #[test]
    fn too_many_hops_is_554() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        run(&mut s, "MAIL FROM:<a@b.test>");
        run(&mut s, "RCPT TO:<alice@local.test>");
        s.command(b"DATA");
        let r = s.data_ended(DataEnd {
            defect: None,
            received_headers: 50,
        });
        assert_eq!(r.map(|e| code(&e)), Some(554));
    }

    #[test]
    fn vrfy_defaults_to_252_and_expn_to_502() {
        let mut s = session(false);
        assert_eq!(run(&mut s, "VRFY alice"), 252);
        assert_eq!(run(&mut s, "EXPN staff"), 502);
        let mut c = cfg();
        c.vrfy = true;
        let mut s = Session::new(
            c,
            &Table,
            Client {
                ip: None,
                may_relay: false,
                auth_required: false,
            },
        );
        assert_eq!(run(&mut s, "VRFY <alice@local.test>"), 250);
        assert_eq!(run(&mut s, "VRFY <carol@local.test>"), 550);
    }

    #[test]
    fn recipients_over_the_limit_get_452_and_are_no_errors() {
        // A list of 30 to a server that takes 3 per transaction (and closes
        // after 20 errors): the transaction keeps its three and goes on.
        let mut s = session(true);
        assert_eq!(run(&mut s, "EHLO c.test"), 250);
        assert_eq!(run(&mut s, "MAIL FROM:<a@local.test>"), 250);
        for i in 0..30 {
            let want = if i < 3 { 250 } else { 452 };
            assert_eq!(run(&mut s, &format!("RCPT TO:<x{i}@remote.test>")), want);
        }
        assert!(matches!(s.command(b"DATA"), Event::Data(t) if t.rcpts.len() == 3));
    }

    #[test]
    fn noop_now_and_then_cannot_hold_a_session_for_ever() {
        let mut s = session(false);
        assert_eq!(run(&mut s, "EHLO c.test"), 250);
        for _ in 0..JUNK_LIMIT {
            assert_eq!(run(&mut s, "NOOP"), 250);
        }
        // Beyond the limit each one counts as an error: 20 end the session.
        for _ in 0..19 {
            assert_eq!(run(&mut s, "RSET"), 250);
        }
        assert!(matches!(s.command(b"NOOP"), Event::Close(r) if r.code == 421));
        // A message in between starts the count again.
        let mut s = session(true);
        assert_eq!(run(&mut s, "EHLO c.test"), 250);
        for _ in 0..JUNK_LIMIT {
            assert_eq!(run(&mut s, "RSET"), 250);
        }
        assert_eq!(run(&mut s, "MAIL FROM:<a@local.test>"), 250);
        assert_eq!(run(&mut s, "RCPT TO:<x@remote.test>"), 250);
        assert!(matches!(s.command(b"DATA"), Event::Data(_)));
        let _ = s.queued("0000000000000001");
        for _ in 0..JUNK_LIMIT + 10 {
            assert_eq!(run(&mut s, "RSET"), 250);
        }
    }

    #[test]
    fn twenty_errors_close_the_session_with_421() {
        let mut s = session(false);
        for _ in 0..19 {
            assert_eq!(run(&mut s, "BOGUS"), 500);
        }
        assert!(matches!(s.command(b"BOGUS"), Event::Close(r) if r.code == 421));
    }

    #[test]
    fn quit_closes_with_221() {
        let mut s = session(false);
        assert!(matches!(s.command(b"QUIT"), Event::Close(r) if r.code == 221));
    }

    #[test]
    fn starttls_is_offered_once_and_resets_the_session() {
        let mut c = cfg();
        c.tls_available = true;
        let mut s = Session::new(
            c.clone(),
            &Table,
            Client {
                ip: None,
                may_relay: false,
                auth_required: false,
            },
        );
        let Event::Reply(r) = s.command(b"EHLO c") else {
            panic!()
        };
        assert!(r.lines.iter().any(|l| l == "STARTTLS"));
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert!(matches!(s.command(b"STARTTLS"), Event::StartTls(r) if r.code == 220));
        let mut s = Session::new(
            c,
            &Table,
            Client {
                ip: None,
                may_relay: false,
                auth_required: false,
            },
        )
        .after_tls();
        let Event::Reply(r) = s.command(b"EHLO c") else {
            panic!()
        };
        assert!(
            !r.lines.iter().any(|l| l == "STARTTLS"),
            "not offered inside TLS"
        );
        assert_eq!(run(&mut s, "STARTTLS"), 503);
        run(&mut s, "MAIL FROM:<a@b.test>");
        run(&mut s, "RCPT TO:<alice@local.test>");
        assert!(matches!(s.command(b"DATA"), Event::Data(t) if t.protocol == "ESMTPS"));
    }

    #[test]
    fn starttls_and_auth_are_refused_when_not_configured() {
        let mut s = session(false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "STARTTLS"), 502);
        assert_eq!(run(&mut s, "AUTH PLAIN"), 503);
    }

    fn auth_session(tls: bool, plaintext_ok: bool, auth_required: bool) -> Session<'static> {
        let mut c = cfg();
        c.auth_available = true;
        c.auth_over_plaintext = plaintext_ok;
        let client = Client {
            ip: None,
            may_relay: false,
            auth_required,
        };
        let s = Session::new(c, &Table, client);
        if tls {
            s.after_tls()
        } else {
            s
        }
    }

    #[test]
    fn auth_is_offered_only_inside_tls_unless_allowed() {
        let mut s = auth_session(false, false, false);
        let Event::Reply(r) = s.command(b"EHLO c") else {
            panic!()
        };
        assert!(!r.lines.iter().any(|l| l.starts_with("AUTH")));
        assert_eq!(run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), 503);
        let mut s = auth_session(true, false, false);
        let Event::Reply(r) = s.command(b"EHLO c") else {
            panic!()
        };
        assert!(r.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"));
    }

    #[test]
    fn auth_plain_and_login_succeed_and_allow_relaying() {
        // PLAIN with an initial response: \0alice\0secret
        let mut s = auth_session(true, false, false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), 235);
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(
            run(&mut s, "RCPT TO:<x@foreign.test>"),
            250,
            "authenticated clients may relay"
        );
        assert!(matches!(s.command(b"DATA"), Event::Data(t) if t.protocol == "ESMTPSA"));
        // LOGIN, step by step.
        let mut s = auth_session(false, true, false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "AUTH LOGIN"), 334);
        assert_eq!(run(&mut s, "YWxpY2U="), 334);
        assert_eq!(run(&mut s, "c2VjcmV0"), 235);
        assert_eq!(run(&mut s, "AUTH LOGIN"), 503, "only once");
        // A response over the line limit ends the exchange: what follows is
        // a command again.
        let mut s = auth_session(false, true, false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "AUTH LOGIN"), 334);
        assert_eq!(code(&s.line_too_long()), 500);
        assert_eq!(run(&mut s, "NOOP"), 250);
    }

    #[test]
    fn bad_credentials_get_535_and_are_counted() {
        let mut s = auth_session(true, false, false);
        run(&mut s, "EHLO c");
        // \0alice\0wrong
        assert_eq!(run(&mut s, "AUTH PLAIN AGFsaWNlAHdyb25n"), 535);
        assert_eq!(s.auth_failures(), 1);
        assert_eq!(run(&mut s, "AUTH PLAIN"), 334);
        assert_eq!(run(&mut s, "*"), 501, "the client may cancel");
        assert_eq!(run(&mut s, "AUTH PLAIN not-base64!"), 501);
        assert_eq!(run(&mut s, "AUTH CRAM-MD5"), 504);
        run(&mut s, "MAIL FROM:<a@b.test>");
        assert_eq!(
            run(&mut s, "RCPT TO:<x@foreign.test>"),
            554,
            "still no relaying"
        );
    }

    #[test]
    fn the_submission_port_asks_for_starttls_before_auth_when_auth_needs_tls() {
        let mut c = cfg();
        c.auth_available = true;
        c.tls_available = true;
        let client = Client {
            ip: None,
            may_relay: false,
            auth_required: true,
        };
        let mut s = Session::new(c.clone(), &Table, client.clone());
        run(&mut s, "EHLO c");
        let Event::Reply(r) = s.command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==") else {
            panic!()
        };
        assert_eq!(
            r.one_line(),
            "530 5.7.0 Must issue a STARTTLS command first"
        );
        assert_eq!(run(&mut s, "MAIL FROM:<alice@local.test>"), 530);
        let mut s = Session::new(c, &Table, client).after_tls();
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), 235);
        let o = s.take_auth_outcome().unwrap();
        assert_eq!(
            (o.mechanism, o.user.as_str(), o.success),
            ("PLAIN", "alice", true)
        );
        assert!(s.take_auth_outcome().is_none(), "taken once");
    }

    #[test]
    fn a_failed_auth_is_reported_with_the_mechanism_and_user_tried() {
        let mut s = auth_session(true, false, false);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "AUTH LOGIN"), 334);
        assert!(s.take_auth_outcome().is_none(), "not over yet");
        assert_eq!(run(&mut s, "bWFsbG9yeQ=="), 334); // mallory
        assert_eq!(run(&mut s, "d3Jvbmc="), 535);
        let o = s.take_auth_outcome().unwrap();
        assert_eq!(
            (o.mechanism, o.user.as_str(), o.success),
            ("LOGIN", "mallory", false)
        );
    }

    #[test]
    fn the_submission_port_wants_auth_before_mail() {
        let mut s = auth_session(true, false, true);
        run(&mut s, "EHLO c");
        assert_eq!(run(&mut s, "MAIL FROM:<alice@local.test>"), 530);
        assert_eq!(run(&mut s, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="), 235);
        assert_eq!(run(&mut s, "MAIL FROM:<alice@local.test>"), 250);
    }
}
