//! The settings table: every setting of satchel.conf, defined once, with
//! its name, type, default, limits, whether SIGHUP applies it, and its
//! documentation. The `settings!` macro turns the table into the `Config`
//! struct (one field per row, documented with the row's text), its
//! `Default`, and the rows of [`SETTINGS`] that parsing, `render`, the
//! SIGHUP restart warnings and the sample etc/satchel.conf are driven by.
//!
//! Owns the definitions only: never reads a file, never checks one
//! setting against another (that is `Config::parse`, in `mod.rs`).
//!
//! A row reads: doc comment, `name: field type = "default"`, the value
//! kind (its limits included, see `values.rs`), and `Live` (a SIGHUP
//! applies it) or `Restart`. The default is written in the file's syntax
//! and parsed by the row's own kind; a default that depends on the machine
//! is written `"placeholder" => expression`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::values::*;
use super::{system_hostname, Cidr, RelayTls};
use crate::transport::local::MailboxFormat;

/// When a changed value takes effect in a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// At the next SIGHUP.
    Live,
    /// Only after a restart; a SIGHUP warns that it changed.
    Restart,
}

/// One row of the table.
pub struct Setting {
    /// Name, section, default and documentation, each ended by a NUL:
    /// one string, so a row costs the binary one relocation for its text
    /// (see the accessors).
    text: &'static str,
    pub reload: Reload,
    /// Parses a value into the field; the error is what is wrong with it.
    pub(super) set: fn(&mut Config, &str) -> Result<(), String>,
    /// The field's value in the file's syntax.
    pub(super) get: fn(&Config) -> String,
}

impl Setting {
    fn part(&self, i: usize) -> &'static str {
        self.text.split('\0').nth(i).unwrap_or("")
    }

    pub fn name(&self) -> &'static str {
        self.part(0)
    }

    /// The heading it is listed under in etc/satchel.conf.
    pub fn section(&self) -> &'static str {
        self.part(1)
    }

    /// The default as etc/satchel.conf shows it.
    pub fn default(&self) -> &'static str {
        self.part(2)
    }

    /// Its documentation: lines without the comment's `///`, each ending
    /// in `\n` (empty outside test builds, see `doc_text`).
    pub fn doc(&self) -> &'static str {
        self.part(3)
    }
}

/// A row's documentation as one string. Only test builds carry it: the
/// sample etc/satchel.conf is written and checked by a test, and every
/// installed binary need not hold 8 KB of text it never prints.
#[cfg(test)]
macro_rules! doc_text {
    ($($doc:literal),*) => {
        concat!($($doc, "\n",)*)
    };
}

#[cfg(not(test))]
macro_rules! doc_text {
    ($($doc:literal),*) => {
        ""
    };
}

/// A default: the literal parsed by the row's kind, or the expression
/// given for a default that depends on the machine.
macro_rules! default_value {
    ($name:ident, $kind:expr, $text:literal) => {
        Kind::parse(&$kind, $text).expect(concat!("the default of ", stringify!($name)))
    };
    ($name:ident, $kind:expr, $text:literal, $computed:expr) => {
        $computed
    };
}

macro_rules! settings {
    ($(section $section:literal {$(
        $(#[doc = $doc:literal])*
        $name:ident: $ty:ty = $default:literal $(=> $computed:expr)?, $kind:expr, $reload:ident;
    )*})*) => {
        /// The settings in force: the built-in defaults, overridden by
        /// satchel.conf. One field per row of [`SETTINGS`].
        #[derive(Debug, Clone)]
        pub struct Config {
            /// The file this came from, for messages (`None` = built-in defaults).
            pub source: Option<PathBuf>,
            /// True when `listen` was not set: a missing IPv6 loopback is then no error.
            pub listen_is_default: bool,
            $($($(#[doc = $doc])* pub $name: $ty,)*)*
        }

        impl Default for Config {
            fn default() -> Config {
                Config {
                    source: None,
                    listen_is_default: true,
                    $($($name: default_value!($name, $kind, $default $(, $computed)?),)*)*
                }
            }
        }

        /// Every setting, in the order of etc/satchel.conf and `render`.
        pub static SETTINGS: &[Setting] = &[$($(Setting {
            text: concat!(
                stringify!($name), "\0", $section, "\0", $default, "\0", doc_text!($($doc),*), "\0"
            ),
            reload: Reload::$reload,
            set: |c, v| {
                c.$name = Kind::parse(&$kind, v)?;
                Ok(())
            },
            get: |c| Kind::render(&$kind, &c.$name),
        },)*)*];
    };
}

const LOG_LEVELS: Choice<log::LevelFilter> = Choice {
    names: &[
        ("off", log::LevelFilter::Off),
        ("error", log::LevelFilter::Error),
        ("warn", log::LevelFilter::Warn),
        ("info", log::LevelFilter::Info),
        ("debug", log::LevelFilter::Debug),
        ("trace", log::LevelFilter::Trace),
    ],
    any_case: true,
};

const MAILBOX_FORMATS: Choice<MailboxFormat> = Choice {
    names: &[
        ("maildir", MailboxFormat::Maildir),
        ("mbox", MailboxFormat::Mbox),
    ],
    any_case: false,
};

const RELAY_TLS: Choice<RelayTls> = Choice {
    names: &[
        ("none", RelayTls::None),
        ("opportunistic", RelayTls::Opportunistic),
        ("required", RelayTls::Required),
        ("verify", RelayTls::Verify),
    ],
    any_case: false,
};

const SPF_POLICIES: Choice<crate::guard::SpfPolicy> = Choice {
    names: &[
        ("none", crate::guard::SpfPolicy::None),
        ("tag", crate::guard::SpfPolicy::Tag),
        ("reject_fail", crate::guard::SpfPolicy::RejectFail),
    ],
    any_case: false,
};

const DMARC_POLICIES: Choice<crate::guard::DmarcPolicy> = Choice {
    names: &[
        ("none", crate::guard::DmarcPolicy::None),
        ("tag", crate::guard::DmarcPolicy::Tag),
        ("honour", crate::guard::DmarcPolicy::Honour),
    ],
    any_case: false,
};

const MILTER_ACTIONS: Choice<crate::guard::milter::DefaultAction> = Choice {
    names: &[
        ("tempfail", crate::guard::milter::DefaultAction::Tempfail),
        ("accept", crate::guard::milter::DefaultAction::Accept),
        ("reject", crate::guard::milter::DefaultAction::Reject),
    ],
    any_case: false,
};

const TLS_LEVELS: Choice<crate::config::transport::TlsLevel> = Choice {
    names: &[
        ("none", crate::config::transport::TlsLevel::None),
        ("may", crate::config::transport::TlsLevel::May),
        ("encrypt", crate::config::transport::TlsLevel::Encrypt),
        ("verify", crate::config::transport::TlsLevel::Verify),
        ("dane", crate::config::transport::TlsLevel::Dane),
        ("dane-only", crate::config::transport::TlsLevel::DaneOnly),
    ],
    any_case: false,
};

const DNS_SUPPORT: Choice<crate::config::transport::DnsSupport> = Choice {
    names: &[
        ("enabled", crate::config::transport::DnsSupport::Enabled),
        ("dnssec", crate::config::transport::DnsSupport::Dnssec),
    ],
    any_case: false,
};

const MAY_BE_ZERO: Time = Time { may_be_zero: true };
const NOT_ZERO: Time = Time { may_be_zero: false };
const AT_LEAST_ONE: Count = Count { min: 1 };

settings! {
section "Receiving" {
    /// Addresses to listen on, ADDRESS:PORT or [IPv6]:PORT. With the default, a
    /// host without IPv6 simply gets no [::1] listener; an address you configure
    /// that cannot be bound is an error. Ports below 1024 need root, and as root
    /// satchel refuses them unless `user` is set (see below).
    listen: Vec<SocketAddr> = "127.0.0.1:2525, [::1]:2525",
        List::of(SocketAddress).not_empty("at least one address is needed"), Restart;

    /// Our own name: the 220 greeting, the EHLO reply, Received: lines, bounces.
    /// Letters, digits, `.` and `-`. The default is the system host name
    /// (/proc/sys/kernel/hostname, else /etc/hostname, else `localhost`).
    hostname: String = "<system host name>" => system_hostname(), HostName, Live;

    /// Domains whose mail is delivered here, into local mailboxes (RFC 5321
    /// §2.3.5). Mail for any other domain is relayed, and only for
    /// relay_networks.
    local_domains: Vec<String> = "localhost, <hostname>"
        => vec!["localhost".into(), system_hostname()], List::of(Domain), Live;

    /// Who may receive mail in the local domains. The special entry `@passwd`
    /// stands for the accounts of /etc/passwd (those whose names are usable as
    /// mailbox names). Alias names of aliases_file and postmaster (RFC 5321
    /// §4.5.1) are always recipients, whatever this says. Anyone else gets
    /// 550 5.1.1 at RCPT. Names: letters, digits and `._-+=`, not starting
    /// with `.`; compared without regard to case.
    local_users: Vec<String> = "@passwd", List::of(LocalUser), Live;

    /// The aliases file: `name: target, target`, `#` comments, continuation lines
    /// start with white space (see etc/aliases). A missing file is an empty table.
    aliases_file: PathBuf = "./etc/aliases", FilePath, Live;

    /// Addresses that are not accounts, per domain (Postfix's virtual(5)):
    /// `info@example.test alice, bob@elsewhere.test`, `@example.test catchall`
    /// for every other address of a domain, `example.test anything` to name a
    /// domain whose addresses must all be listed. A bare target is a local user
    /// or alias. An address of a domain named here that the table does not list
    /// gets 550 5.1.1 at RCPT (unless the domain is also local). Expanded at
    /// delivery, recursively, with loops refused and duplicates dropped.
    virtual_alias_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// Final delivery of local recipients by a command instead of writing
    /// mail_dir (Postfix's mailbox_command), e.g.
    /// `/usr/lib/dovecot/dovecot-lda -f "$SENDER" -a "$RECIPIENT"` or procmail: run
    /// through /bin/sh as the recipient's account (as default_privs when that is
    /// root or unknown; as the service user when satchel is not root), the message
    /// on its standard input. Exit 0 delivers, 75 defers, anything else bounces.
    mailbox_command: Option<String> = "", Optional(Text), Live;

    /// Where `|command` targets may appear: `alias` (the aliases file and its
    /// :include: files), `forward` (~/.forward); Postfix's allow_mail_to_commands.
    /// A command elsewhere bounces (5.7.1). Commands never run as root.
    allow_mail_to_commands: Vec<String> = "alias, forward", List::of(Domain), Live;

    /// The same for `/path/file` targets (Postfix's allow_mail_to_files).
    allow_mail_to_files: Vec<String> = "alias, forward", List::of(Domain), Live;

    /// The account that runs commands and writes files of aliases owned by root
    /// (Postfix's default_privs); never root.
    default_privs: String = "nobody", Account, Live;

    /// How long a command may run before its process group is killed and the
    /// delivery deferred (Postfix's command_time_limit).
    command_time_limit: Duration = "1000s", NOT_ZERO, Live;

    /// Final delivery of local recipients (after aliases and rewriting) by LMTP
    /// (RFC 2033) instead of writing mail_dir: `lmtp:unix:/run/dovecot/lmtp` or
    /// `lmtp:[127.0.0.1]:24`, as Postfix's mailbox_transport. The delivery agent
    /// (Dovecot) answers for each recipient after the message; a refusal bounces
    /// that recipient alone, a failure to connect or a 4xx defers. Empty = the
    /// mailboxes under mail_dir.
    mailbox_transport: Option<crate::transport::lmtp::LmtpTarget> = "", Optional(LmtpNextHop), Live;

    /// Characters that start an address extension, e.g. `+`: alice+lists@ is
    /// delivered to alice (Delivered-To keeps the whole address); virtual aliases
    /// and aliases are looked up with the extension first, then without. Empty =
    /// no extensions.
    recipient_delimiter: String = "", Delimiters, Live;

    /// Clients (addresses or CIDR networks) allowed to relay mail to other
    /// domains. Everyone else may send only to the local domains and gets
    /// 554 5.7.1 Relay access denied otherwise: satchel is never an open relay
    /// unless you list the world here. These clients are also exempt from
    /// max_connections_per_ip, as with Postfix's default
    /// smtpd_client_event_limit_exceptions = $mynetworks. A session on
    /// stdin/stdout without a network peer (`sendmail -bs`, inetd on a pipe) is
    /// local and may relay.
    relay_networks: Vec<Cidr> = "127.0.0.0/8, ::1/128", List::of(Network), Live;

    /// Domains this host accepts mail for from anyone and forwards (an MX hub,
    /// a gateway, a backup MX), as Postfix's relay_domains: only these; every
    /// other domain still needs relay_networks or AUTH. Their mail goes to the
    /// domain's MX hosts with a better preference than this host's (RFC 5321
    /// §5.1); when none answers, or this host is the best, it waits in the
    /// queue and is tried again, never bounced as a loop.
    relay_domains: Vec<String> = "", List::of(Domain), Live;

    /// The recipients of relay_domains that exist: one address or `@domain` a
    /// line (`#` comments; anything after the first word is ignored, so a
    /// Postfix relay_recipients file works). With it, an unknown one gets
    /// 550 5.1.1 at RCPT instead of a bounce later. Empty = every address of
    /// relay_domains.
    relay_recipients_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// A transport table, as Postfix's transport(5): `key next-hop` lines.
    /// Keys, most specific first: `user@domain`, `domain`, `.domain` (its
    /// subdomains), `*`. Next hops: `local` (this host's mailboxes),
    /// `smtp:[host]:port` (no MX look-up), `smtp:host[:port]` (host's MX
    /// records), a comma-separated list of those (the next one is tried when
    /// one cannot take the mail), `error:5.1.1 text` (bounce at once) and
    /// `defer:text` (keep queued). It routes, it grants nothing: a domain is
    /// accepted from outside only when it is local or in relay_domains. A bad
    /// line stops the start with FILE:LINE; on SIGHUP the old table stays.
    transport_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// A relayhost per envelope sender: `user@domain` or `@domain`, then
    /// `[host]:port` (or `smtps:[host]:465`, or a comma-separated list), for
    /// hosts that send as several identities. It overrides relayhost for that
    /// sender's remote mail (not for what transport_file routes); credentials
    /// come from the host's line in relayhost_auth_file.
    sender_relay_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// Concurrent SMTP sessions (one thread each) in the daemon. A connection
    /// beyond it hears 421 4.3.2 and is closed.
    max_connections: usize = "100", AT_LEAST_ONE, Restart;

    /// Concurrent sessions from one client address (not counting clients in
    /// relay_networks). Beyond it: 421 4.7.0 and close.
    max_connections_per_ip: usize = "10", AT_LEAST_ONE, Live;

    /// Largest message accepted, in octets (at least 1024; the default is 10M),
    /// announced as the EHLO SIZE keyword (RFC 1870). A larger `MAIL ... SIZE=`
    /// or a larger message gets 552 5.3.4.
    message_size_limit: u64 = "10485760", Size { min: 1024 }, Live;

    /// Recipients per message (RFC 5321 §4.5.3.1.8: at least 100 must be
    /// accepted). Beyond it: 452 4.5.3.
    max_recipients: usize = "100", AT_LEAST_ONE, Live;

    /// Hop limit (RFC 5321 §6.3): a message that already carries this many
    /// Received: header lines or more is taken for a mail loop: 554 5.4.6.
    max_hops: usize = "50", AT_LEAST_ONE, Live;

    /// Errors (4xx/5xx replies) in one session before it is closed with
    /// 421 4.7.0.
    max_errors: usize = "20", AT_LEAST_ONE, Live;

    /// Time allowed for each command (RFC 5321 §4.5.3.2.7, server time-out:
    /// at least 5 minutes). An idle client then hears 421 4.4.2. Must not be 0.
    command_timeout: Duration = "300s", NOT_ZERO, Live;

    /// Time allowed for each block of message data after DATA (RFC 5321
    /// §4.5.3.2.5: 3 minutes). Must not be 0.
    data_timeout: Duration = "180s", NOT_ZERO, Live;

    /// Wait this long before the greeting; a client that talks first (RFC 5321
    /// §4.3.1: it must wait for the greeting) gets 554 5.5.1 and is closed.
    /// 0 = no wait, only a check that nothing arrived before the greeting.
    greet_pause: Duration = "0s", MAY_BE_ZERO, Live;

    /// On SIGTERM/SIGINT the daemon stops accepting and closes idle sessions
    /// with 421 4.3.2; a transaction in DATA gets this long to finish.
    shutdown_timeout: Duration = "30s", MAY_BE_ZERO, Live;

    /// VRFY (RFC 5321 §3.5.3): `no` answers 252 (cannot verify, will attempt
    /// delivery) to everything; `yes` answers 250 or 550 for local addresses,
    /// revealing who exists. EXPN is always 502.
    vrfy: bool = "no", YesNo, Live;

    /// off, error, warn, info, debug or trace. The RUST_LOG environment variable
    /// overrides it.
    log_level: log::LevelFilter = "info", LOG_LEVELS, Restart;

    /// Where the commands that run without a terminal of their own log (inetd
    /// sessions, sendmail, the queue verbs hold, release, delete and flush): a
    /// syslog datagram socket. `serve` and `queue run` log to stderr.
    syslog_socket: PathBuf = "/dev/log", FilePath, Live;
}

section "Spool" {
    /// The queue: tmp/, msg/, queue/, active/, hold/, corrupt/ (created when
    /// missing; see the table at the top of src/spool/mod.rs), maildrop/ for local
    /// submissions of unprivileged users, the runner.lock file and the daemon's
    /// control socket. One daemon per spool. A relative path is relative to the
    /// working directory.
    spool_dir: PathBuf = "./var/spool", FilePath, Restart;

    /// New mail is refused (452 4.3.1 at MAIL; sendmail exits 75) while the
    /// spool's file system has less than this free, or less than
    /// queue_min_free_percent of its size; mail already queued is never dropped.
    /// 0 = no check.
    queue_min_free: u64 = "100M", Size { min: 0 }, Live;

    /// The same, as a share of the file system's size (percent). 0 = no check.
    queue_min_free_percent: usize = "5", Count { min: 0 }, Live;

    /// A file the daemon rewrites (atomically) with its counters in the Prometheus
    /// text format, for node_exporter's textfile collector: messages received,
    /// recipients delivered, deferred and bounced, SMTP refusals by status,
    /// connection failures per transport, queue length, oldest message's age.
    /// Empty = none.
    metrics_file: Option<PathBuf> = "", Optional(FilePath), Restart;

    /// How often metrics_file is rewritten.
    metrics_interval: Duration = "30s", NOT_ZERO, Restart;

    /// New mail is refused while the messages in the spool take more than this
    /// many bytes (a small flash disk shared with other things). 0 = no limit.
    queue_max_bytes: u64 = "0", Size { min: 0 }, Live;
}

section "Privileges" {
    /// Started as root (to bind port 25): once the listeners are bound, and
    /// before a byte is read from any client, satchel hands spool_dir and
    /// mail_dir to this account and becomes it (setgroups, setgid, setuid). Also
    /// used by `satchel inetd`. Started as root without it, satchel refuses
    /// ports below 1024 (exit status 2) and warns. Ignored when not root. Empty =
    /// do not change user.
    user: Option<String> = "", Optional(Account), Restart;

    /// The group to become with `user`. Empty = the user's primary group from
    /// /etc/passwd.
    group: Option<String> = "", Optional(Account), Restart;
}

section "Delivering" {
    /// Local mailboxes: `<mail_dir>/<user>/{tmp,new,cur}` (Maildir) or the file
    /// `<mail_dir>/<user>` (mbox). A relative path is relative to the working
    /// directory.
    mail_dir: PathBuf = "./var/mail", FilePath, Live;

    /// maildir or mbox (mboxrd quoting, locked while appending).
    mailbox_format: MailboxFormat = "maildir", MAILBOX_FORMATS, Live;

    /// Keep mail queued and do not deliver it (maintenance; like Postfix's
    /// defer_transports). `satchel queue run` still delivers on demand.
    defer_delivery: bool = "no", YesNo, Live;

    /// Delivery threads in the daemon.
    delivery_threads: usize = "4", AT_LEAST_ONE, Restart;

    /// How often the daemon rescans queue/ for retries that are due and for mail
    /// queued by other processes (sendmail, inetd sessions).
    queue_run_interval: Duration = "60s", NOT_ZERO, Live;

    /// Retry backoff after a temporary failure: min_backoff, doubling with each
    /// attempt, at most max_backoff. (RFC 5321 §4.5.4.1 asks for retry intervals
    /// of at least 30 minutes; like Postfix, the first retry comes sooner.)
    min_backoff: Duration = "5m", NOT_ZERO, Live;

    /// The longest wait between two delivery attempts (see min_backoff, which
    /// must not be larger).
    max_backoff: Duration = "1h", MAY_BE_ZERO, Live;

    /// Give up on recipients still not delivered after this long in the queue
    /// and bounce them (RFC 5321 §4.5.4.1: 4-5 days).
    max_queue_lifetime: Duration = "5d", NOT_ZERO, Live;

    /// Send the sender a "still trying" notice (RFC 3464, action delayed) once a
    /// message has waited this long; 0 = never.
    delay_warning_time: Duration = "0s", MAY_BE_ZERO, Live;

    /// The largest message a non-delivery notice returns whole, when its sender
    /// asked for that (RFC 3461 RET=FULL); a larger one gets its header
    /// section back only, as for everyone else (Postfix's bounce_size_limit).
    bounce_size_limit: u64 = "50000", Size { min: 0 }, Live;

    /// Simultaneous deliveries to one destination domain.
    destination_concurrency_limit: usize = "10", AT_LEAST_ONE, Live;

    /// Nameservers for MX/A/AAAA look-ups, ADDRESS or ADDRESS:PORT (port 53 when
    /// left out), e.g. 127.0.0.1:5353. Empty = the nameservers of
    /// /etc/resolv.conf.
    dns_servers: Vec<SocketAddr> = "", List::of(Nameserver), Live;

    /// Time-out of each DNS query to the dns_servers above (two rounds over the
    /// list). Used only with dns_servers: the nameservers of /etc/resolv.conf
    /// come with its own `options timeout:` and `attempts:` (5s and 2 when absent).
    dns_timeout: Duration = "5s", NOT_ZERO, Live;

    /// TCP port of remote MX hosts.
    relay_port: u16 = "25", Port, Live;

    /// Send all remote mail through this host instead of the recipient domains'
    /// MX hosts: `[host]:port` connects to that host (an IP address or a name)
    /// with no MX look-up; `host:port` uses host's MX records; the port defaults
    /// to 25; `smtps:[host]:465` speaks TLS from the first byte (RFC 8314). A
    /// list is tried in order: the next host when one cannot be reached or
    /// answers 4xx. Empty = MX look-up of each recipient domain (RFC 5321 §5.1).
    relayhost: Vec<crate::transport::smtp::Relayhost> = "", List::of(HostPort), Live;

    /// The local address outgoing SMTP connections over IPv4 come from, on a host
    /// with several (Postfix's smtp_bind_address); it must be one of this host's
    /// addresses. Empty = the one the kernel picks.
    smtp_bind_address: Option<IpAddr> = "", Optional(IpAddress { v6: false }), Live;

    /// The same for connections over IPv6 (Postfix's smtp_bind_address6).
    smtp_bind_address6: Option<IpAddr> = "", Optional(IpAddress { v6: true }), Live;

    /// The smarthost circuit breaker: after this many answers in a row from a
    /// relay host (relayhost, a sender's relay, a transport table's hosts) that
    /// refuse our credentials or our mail by policy (535, 5.7.x), nothing more is
    /// sent to it: every message stays queued (such answers never bounce mail),
    /// one warning is logged and one notice goes to postmaster. `satchel queue
    /// flush` or a reload closes the breaker. 0 = no breaker (the answers then
    /// count as they are).
    relayhost_failure_limit: u32 = "3", Count32, Live;

    /// Time-out of an outbound TCP connect.
    connect_timeout: Duration = "30s", NOT_ZERO, Live;

    /// Time-out of each reply from a remote server (RFC 5321 §4.5.3.2: 5
    /// minutes; the reply to the final dot of DATA gets twice this, the RFC's
    /// 10 minutes).
    relay_timeout: Duration = "300s", NOT_ZERO, Live;
}

section "TLS and authentication" {
    /// STARTTLS (RFC 3207): a PEM certificate chain, its private key in tls_key;
    /// set both or neither. When set, EHLO offers STARTTLS; after the handshake
    /// the session starts over (commands pipelined before it are discarded,
    /// CVE-2011-0411) and Received: lines say "with ESMTPS" (RFC 3848). Needs the
    /// `tls` build feature (on by default).
    tls_cert: Option<PathBuf> = "", Optional(FilePath), Live;

    /// The private key of tls_cert (PEM); set both or neither.
    tls_key: Option<PathBuf> = "", Optional(FilePath), Live;

    /// STARTTLS as a client towards the relayhost: none, opportunistic (when
    /// offered; plaintext only when it is not), required (defer rather than send
    /// in plaintext; any certificate), verify (required, and the certificate must
    /// check out against tls_ca_file for the relayhost's name). Towards MX hosts
    /// satchel is always opportunistic (RFC 7435).
    relayhost_tls: RelayTls = "opportunistic", RELAY_TLS, Live;

    /// STARTTLS towards MX hosts (Postfix's smtp_tls_security_level): none, may
    /// (when offered, any certificate; plaintext otherwise, RFC 7435), encrypt
    /// (TLS or the mail waits; any certificate), verify (TLS with a certificate
    /// that verifies for the MX host name against tls_ca_file, or the mail
    /// waits), dane (RFC 7672: where DNSSEC-signed TLSA records of an MX host
    /// exist, TLS that they verify, or the mail waits; may elsewhere), dane-only
    /// (DANE or the mail waits). DANE needs a validating resolver in
    /// dns_servers (or resolv.conf): its AD bit is trusted, as Postfix does. Per
    /// destination: tls_policy_file. The relayhost and the transport table's
    /// hosts follow relayhost_tls.
    smtp_tls_security_level: crate::config::transport::TlsLevel = "may", TLS_LEVELS, Live;

    /// DNS for delivery (Postfix's smtp_dns_support_level): enabled, or dnssec
    /// (every look-up asks for DNSSEC records, and MX hosts at level may get
    /// dane: opportunistic DANE).
    smtp_dns_support_level: crate::config::transport::DnsSupport = "enabled", DNS_SUPPORT, Live;

    /// MTA-STS (RFC 8461): for a destination domain with an `_mta-sts` TXT record,
    /// its policy is fetched over HTTPS (certificate checked against tls_ca_file),
    /// kept in the spool for its max_age, and followed: mode enforce sends only to
    /// the MX hosts it lists, over TLS verified for their names, or the mail waits;
    /// testing logs what enforce would refuse. DANE wins where an MX host has
    /// usable TLSA records; tls_policy_file levels other than may win too.
    mta_sts: bool = "yes", YesNo, Live;

    /// The HTTPS port of MTA-STS policy hosts: 443 (another only for tests).
    mta_sts_port: u16 = "443", Port, Live;

    /// Per-destination TLS levels, as Postfix's smtp_tls_policy_maps: `domain
    /// level` lines (`.domain` for its subdomains), levels as
    /// smtp_tls_security_level (dane and dane-only included). A bad line stops the
    /// start with FILE:LINE; on SIGHUP the old table stays.
    tls_policy_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// The CA certificates that `relayhost_tls = verify` trusts (a PEM bundle).
    tls_ca_file: PathBuf = "/etc/ssl/certs/ca-certificates.crt", FilePath, Live;

    /// SMTP AUTH (RFC 4954, PLAIN and LOGIN): a file of `user:hash` lines with
    /// SHA-512 crypt hashes, as `openssl passwd -6` prints them. An authenticated
    /// client may relay. Empty = no AUTH. Failed attempts cost the client one more
    /// second each (up to five).
    auth_users_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// The envelope senders each AUTH login may use (Postfix's
    /// smtpd_sender_login_maps, written login first): `LOGIN address, @domain, ...`
    /// a line. An authenticated client whose MAIL FROM is not among its login's
    /// gets 553 5.7.1, so one leaked password cannot send as anyone; `<>` stays
    /// allowed (bounces). Logins not listed send as before, unless
    /// reject_sender_login_mismatch = yes.
    sender_login_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// With sender_login_file: logins it does not list may send as nobody.
    reject_sender_login_mismatch: bool = "no", YesNo, Live;

    /// Offer AUTH outside TLS too (the password then crosses the network in the
    /// clear). Not recommended.
    auth_over_plaintext: bool = "no", YesNo, Live;

    /// Submission listeners (port 587 style): the same server, but MAIL needs
    /// AUTH first (530 5.7.0 otherwise), and relay_networks does not apply.
    submission_listen: Vec<SocketAddr> = "", List::of(SocketAddress), Restart;

    /// Submission listeners with TLS from the first byte (RFC 8314 §3.3, port
    /// 465 style): as submission_listen, inside TLS (tls_cert and tls_key are
    /// needed).
    smtps_listen: Vec<SocketAddr> = "", List::of(SocketAddress), Restart;

    /// `user:password` (one line) for AUTH towards the relayhost, or one
    /// `[host]:port user:password` line per relay host (the host as written in
    /// relayhost or transport_file; a bare name matches any port). Sent only
    /// inside TLS. Keep it readable by the service user alone (chmod 600):
    /// satchel warns otherwise.
    relayhost_auth_file: Option<PathBuf> = "", Optional(FilePath), Live;
}

section "Guarding" {
    /// DNS blocklists (RFC 5782), asked once per connection for clients outside
    /// relay_networks that have not authenticated: `zone`, or `zone=FILTER` to
    /// count only some answers (`bl.example=127.0.0.2`, octets may be sets:
    /// `127.0.0.[2..11;20]`). A listed client hears 554 5.7.1 with the zone's
    /// TXT text at RCPT, so postmaster is still reachable (RFC 5321 §4.5.1). A
    /// zone that fails to answer lists nobody (logged). Empty = none.
    dnsbl_zones: Vec<crate::guard::dnsbl::Zone> = "", List::of(DnsblZone), Live;

    /// Refuse untrusted clients whose address has no PTR name that resolves back
    /// to it (forward-confirmed reverse DNS): 450 4.7.25 at RCPT, as Postfix's
    /// reject_unknown_client_hostname.
    reject_unknown_client_hostname: bool = "no", YesNo, Live;

    /// Refuse a malformed HELO/EHLO name from an untrusted client: 501 5.5.2 at
    /// RCPT (Postfix's reject_invalid_helo_hostname).
    reject_invalid_helo_hostname: bool = "no", YesNo, Live;

    /// Refuse a HELO/EHLO name from an untrusted client that is neither
    /// fully-qualified nor an address literal: 504 5.5.2 at RCPT
    /// (reject_non_fqdn_helo_hostname).
    reject_non_fqdn_helo_hostname: bool = "no", YesNo, Live;

    /// Refuse an untrusted client's sender whose domain is not fully-qualified:
    /// 504 5.5.2 at RCPT (reject_non_fqdn_sender).
    reject_non_fqdn_sender: bool = "no", YesNo, Live;

    /// Refuse a recipient whose domain is not fully-qualified from an untrusted
    /// client: 504 5.5.2 (reject_non_fqdn_recipient).
    reject_non_fqdn_recipient: bool = "no", YesNo, Live;

    /// Refuse an untrusted client's sender whose domain cannot take a bounce: 550
    /// 5.1.8 when it does not exist or has no MX, A or AAAA record, 550 5.7.27
    /// for a null MX (RFC 7505), 450 4.1.8 when DNS fails
    /// (reject_unknown_sender_domain).
    reject_unknown_sender_domain: bool = "no", YesNo, Live;

    /// SPF (RFC 7208) of untrusted clients' MAIL FROM (of HELO for the null
    /// sender): none (not checked), tag (the result in a Received-SPF: header
    /// field), reject_fail (tag, and a fail, `-all`, is refused with 550 5.7.23
    /// at RCPT).
    spf_policy: crate::guard::SpfPolicy = "none", SPF_POLICIES, Live;

    /// Verify the DKIM signatures (RFC 6376; up to 5 a message, RSA-SHA256 and
    /// Ed25519-SHA256) of untrusted clients' mail after DATA, and write the
    /// results (with SPF's) in one Authentication-Results: field (RFC 8601)
    /// named by authserv_id; fields with that name that the message already
    /// had are removed. Needs the `tls` feature (ring).
    dkim_verify: bool = "no", YesNo, Live;

    /// DMARC (RFC 7489) of untrusted clients' mail, from the From: domain's
    /// `_dmarc` record and the SPF and DKIM results (checked for it whatever
    /// spf_policy and dkim_verify say): none (not checked), tag (the result in
    /// Authentication-Results:), honour (tag; p=reject is refused with 550
    /// 5.7.1 after DATA, p=quarantine as dmarc_quarantine says).
    dmarc_policy: crate::guard::DmarcPolicy = "none", DMARC_POLICIES, Live;

    /// What dmarc_policy = honour does with a message that fails a p=quarantine
    /// policy: `hold` (queued on hold; `satchel queue release ID`), or a header
    /// field to add, e.g. `X-Spam-Flag: YES`.
    dmarc_quarantine: crate::guard::Quarantine = "hold", QuarantineAction, Live;

    /// The name of this host's Authentication-Results: fields (RFC 8601 §2.5).
    /// Empty = hostname.
    authserv_id: Option<String> = "", Optional(HostName), Live;

    /// Mail filters (the Sendmail milter protocol, version 6) every message
    /// received over SMTP goes through before the 250, as Postfix's
    /// smtpd_milters: `inet:host:port` or `unix:/path`, in order. They see the
    /// client, HELO, envelope, header and body, and may refuse, tempfail,
    /// discard or quarantine (hold) the message, or add header fields. Empty =
    /// none.
    milters: Vec<crate::guard::milter::Target> = "", List::of(MilterTarget), Live;

    /// What happens to a message when a milter cannot be reached, breaks the
    /// protocol or runs out of time: tempfail (451 4.7.1), accept (go on
    /// without it) or reject (550 5.7.1).
    milter_default_action: crate::guard::milter::DefaultAction = "tempfail", MILTER_ACTIONS, Live;

    /// Time to connect to a milter.
    milter_connect_timeout: Duration = "30s", NOT_ZERO, Live;

    /// Time a milter has to answer each stage but the body.
    milter_command_timeout: Duration = "30s", NOT_ZERO, Live;

    /// Time a milter has to answer each body chunk and the end of the message.
    milter_content_timeout: Duration = "300s", NOT_ZERO, Live;

    /// Connections one client address may open per anvil_rate_time_unit (not
    /// counting relay_networks); beyond it: 421 4.7.0 and close. 0 = no limit.
    smtpd_client_connection_rate_limit: u32 = "0", Count32, Live;

    /// MAIL commands one client address may send per anvil_rate_time_unit (not
    /// counting relay_networks); beyond it: 452 4.7.1. 0 = no limit.
    smtpd_client_message_rate_limit: u32 = "0", Count32, Live;

    /// RCPT commands one client address may send per anvil_rate_time_unit (not
    /// counting relay_networks); beyond it: 452 4.7.1. 0 = no limit.
    smtpd_client_recipient_rate_limit: u32 = "0", Count32, Live;

    /// The time unit of the rate limits: each client's counters start again
    /// this long after its first event (Postfix's anvil).
    anvil_rate_time_unit: Duration = "60s", NOT_ZERO, Live;
}

section "Rewriting" {
    /// The domain that bare names get (`root` -> root@myorigin): in the envelope
    /// and in From:, Sender:, To: and Cc: of mail this host vouches for (local
    /// submissions, relay_networks, authenticated clients), as Postfix's
    /// append_at_myorigin. Empty = hostname, or the first of local_domains when
    /// hostname is not one of them.
    myorigin: Option<String> = "", Optional(HostName), Live;

    /// Domains whose subdomains are hidden in sender addresses:
    /// `user@host.example.test` becomes `user@example.test` in the envelope
    /// sender and in the sender fields (From, Sender, Reply-To) of mail this host
    /// vouches for (Postfix's masquerade_domains).
    masquerade_domains: Vec<String> = "", List::of(Domain), Live;

    /// Local parts never masqueraded, e.g. `root` (Postfix's masquerade_exceptions).
    masquerade_exceptions: Vec<String> = "", List::of(LocalUser), Live;

    /// Sender addresses to rewrite (canonical(5)): `root admin@example.test`,
    /// `@vm @example.test` (the domain only), `user@domain address`. Applied to
    /// the envelope sender of all mail, and to From, Sender and Reply-To of mail
    /// this host vouches for; before masquerading.
    sender_canonical_file: Option<PathBuf> = "", Optional(FilePath), Live;

    /// The same for recipients: the envelope recipients of all mail (before the
    /// RCPT check), and To and Cc of mail this host vouches for.
    recipient_canonical_file: Option<PathBuf> = "", Optional(FilePath), Live;
}

section "Signing" {
    /// DKIM signing (RFC 6376): `DOMAIN SELECTOR /path/key.pem` a line, the key
    /// in PKCS#8 PEM, Ed25519 (RFC 8463; `satchel dkim-keygen`) or RSA of 2048
    /// bits or more. Several lines for one domain sign with each (Ed25519 and RSA
    /// side by side). Mail from this host, from relay_networks and from
    /// authenticated clients is signed, before its first remote delivery, with
    /// the keys of its From: domain or of the nearest parent domain that has
    /// keys; relayed mail from others never is. Needs the `tls` build feature.
    dkim_keys_file: Option<PathBuf> = "", Optional(FilePath), Live;
}
}
