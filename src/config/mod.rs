//! Reads `satchel.conf`: `key = value` lines in the style of Postfix's
//! main.cf, `#` comments, lists separated by commas (or white space).
//! Every setting has a default that runs unprivileged from a checkout; an
//! unknown key or a bad value is an error naming `FILE:LINE`.
//!
//! Also owns the two small tables the policy needs at the edge: the local
//! user list (optionally the accounts of /etc/passwd) and the alias names
//! of the aliases file. Never talks to the network.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is looked for when neither `-c` nor
/// `$SATCHEL_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/satchel/satchel.conf";

#[derive(Debug)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub what: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file, self.line, self.what)
        } else {
            write!(f, "{}: {}", self.file, self.what)
        }
    }
}

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let a = a.trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on an IPv6 socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for messages (`None` = built-in defaults).
    pub source: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    /// True when `listen` was not set: a missing IPv6 loopback is then no error.
    pub listen_is_default: bool,
    pub hostname: String,
    pub spool_dir: PathBuf,
    pub local_domains: Vec<String>,
    /// Names of local users; `@passwd` stands for the accounts of /etc/passwd.
    pub local_users: Vec<String>,
    pub aliases_file: PathBuf,
    pub relay_networks: Vec<Cidr>,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub max_hops: usize,
    pub max_errors: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub greet_pause: Duration,
    pub shutdown_timeout: Duration,
    pub vrfy: bool,
    pub log_level: log::LevelFilter,
    /// The syslog socket of the commands that log there (inetd, sendmail,
    /// the queue verbs).
    pub syslog_socket: PathBuf,
    pub mail_dir: PathBuf,
    pub mailbox_format: crate::local::MailboxFormat,
    pub delivery_threads: usize,
    pub queue_run_interval: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_queue_lifetime: Duration,
    /// Zero = no delay warnings.
    pub delay_warning_time: Duration,
    pub destination_concurrency_limit: usize,
    /// Empty = the nameservers of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    pub relay_port: u16,
    pub relayhost: Option<crate::relay::Relayhost>,
    pub connect_timeout: Duration,
    pub relay_timeout: Duration,
    /// Per-query DNS time-out (two tries per server).
    pub dns_timeout: Duration,
    /// Keep mail queued and do not deliver (like Postfix's defer_transports).
    pub defer_delivery: bool,
    /// Started as root: the account to become after binding the listeners.
    pub user: Option<String>,
    /// Its group (default: the user's primary group).
    pub group: Option<String>,
    /// PEM certificate chain and key for STARTTLS (RFC 3207); both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// TLS towards the relayhost: none, opportunistic, required or verify.
    pub relayhost_tls: RelayTls,
    /// CA certificates for `relayhost_tls = verify` (PEM bundle).
    pub tls_ca_file: PathBuf,
    /// SMTP AUTH credentials: `user:$6$salt$hash` lines (SHA-512 crypt, as
    /// `openssl passwd -6` makes them). Unset = no AUTH.
    pub auth_users_file: Option<PathBuf>,
    /// Offer AUTH without TLS (not recommended).
    pub auth_over_plaintext: bool,
    /// Submission listeners (port 587 style): AUTH before MAIL.
    pub submission_listen: Vec<SocketAddr>,
    /// `user:password` for AUTH towards the relayhost (readable only by
    /// the service user).
    pub relayhost_auth_file: Option<PathBuf>,
}

/// How the SMTP client uses STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayTls {
    /// Never.
    None,
    /// When offered (RFC 7435); plaintext only when it is not offered.
    Opportunistic,
    /// Always; no certificate check. Defer when not offered.
    Required,
    /// Always, with the certificate checked against the system CA bundle.
    Verify,
}

impl RelayTls {
    pub fn name(self) -> &'static str {
        match self {
            RelayTls::None => "none",
            RelayTls::Opportunistic => "opportunistic",
            RelayTls::Required => "required",
            RelayTls::Verify => "verify",
        }
    }
}

/// The system's host name, as the kernel knows it.
pub fn system_hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Default for Config {
    fn default() -> Config {
        let hostname = system_hostname();
        Config {
            source: None,
            listen: vec![
                "127.0.0.1:2525".parse().expect("literal"),
                "[::1]:2525".parse().expect("literal"),
            ],
            listen_is_default: true,
            local_domains: vec!["localhost".into(), hostname.clone()],
            hostname,
            spool_dir: PathBuf::from("./var/spool"),
            local_users: vec!["@passwd".into()],
            aliases_file: PathBuf::from("./etc/aliases"),
            relay_networks: vec![
                Cidr::parse("127.0.0.0/8").expect("literal"),
                Cidr::parse("::1/128").expect("literal"),
            ],
            max_connections: 100,
            max_connections_per_ip: 10,
            // RFC 1870 SIZE; Postfix's message_size_limit is 10240000.
            message_size_limit: 10 * 1024 * 1024,
            // RFC 5321 §4.5.3.1.8: at least 100 recipients must be buffered.
            max_recipients: 100,
            max_hops: 50,
            max_errors: 20,
            // RFC 5321 §4.5.3.2.7 (server timeout: 5 minutes) and §4.5.3.2.5
            // (DATA block: 3 minutes).
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            greet_pause: Duration::ZERO,
            shutdown_timeout: Duration::from_secs(30),
            vrfy: false,
            log_level: log::LevelFilter::Info,
            syslog_socket: PathBuf::from("/dev/log"),
            mail_dir: PathBuf::from("./var/mail"),
            mailbox_format: crate::local::MailboxFormat::Maildir,
            delivery_threads: 4,
            queue_run_interval: Duration::from_secs(60),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            // RFC 5321 §4.5.4.1: give up after 4-5 days.
            max_queue_lifetime: Duration::from_secs(5 * 86_400),
            delay_warning_time: Duration::ZERO,
            destination_concurrency_limit: 10,
            dns_servers: Vec::new(),
            relay_port: 25,
            relayhost: None,
            // RFC 5321 §4.5.3.2: 5 minutes per command; connect as Postfix (30 s).
            connect_timeout: Duration::from_secs(30),
            relay_timeout: Duration::from_secs(300),
            dns_timeout: Duration::from_secs(5),
            defer_delivery: false,
            user: None,
            group: None,
            tls_cert: None,
            tls_key: None,
            relayhost_tls: RelayTls::Opportunistic,
            tls_ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            auth_users_file: None,
            auth_over_plaintext: false,
            submission_listen: Vec::new(),
            relayhost_auth_file: None,
        }
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `10`, `10s`, `5m`, `1h`, `2d`; a bare number is seconds (as in Postfix).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, "s"),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(n * mult).ok()
}

/// `10485760`, `10k`, `10M`, `1G` (binary multiples).
pub fn parse_size(v: &str) -> Option<u64> {
    let (num, mult) = match v.chars().last()? {
        'k' | 'K' => (&v[..v.len() - 1], 1u64 << 10),
        'm' | 'M' => (&v[..v.len() - 1], 1 << 20),
        'g' | 'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A local user name must be usable as a directory name under `mail_dir`
/// and nothing else: no `/`, no leading `.`, no control characters.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+=".contains(c))
}

impl Config {
    /// Finds and loads the configuration: `-c FILE`, else `$SATCHEL_CONFIG`,
    /// else the system file if it exists, else the built-in defaults.
    pub fn locate(explicit: Option<&str>) -> Result<Config, ConfigError> {
        if let Some(f) = explicit {
            return Config::load(Path::new(f));
        }
        if let Ok(f) = std::env::var("SATCHEL_CONFIG") {
            if !f.is_empty() {
                return Config::load(Path::new(&f));
            }
        }
        if Path::new(SYSTEM_CONFIG).exists() {
            return Config::load(Path::new(SYSTEM_CONFIG));
        }
        Ok(Config::default())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            what: format!("cannot read: {e}"),
        })?;
        let mut c = Config::parse(&text, &path.display().to_string())?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parses configuration text; `file` names it in error messages.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut domains_set = false;
        let mut seen = HashSet::new();
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |what: String| ConfigError {
                file: file.to_string(),
                line,
                what,
            };
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let (key, value) = content
                .split_once('=')
                .ok_or_else(|| err(format!("expected 'key = value', found '{content}'")))?;
            let key = key.trim();
            let value = value.trim();
            if !seen.insert(key.to_string()) {
                return Err(err(format!("'{key}' is set twice")));
            }
            let bad = |what: &str| err(format!("bad value for {key}: '{value}' ({what})"));
            let count = |min: usize| {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n >= min)
                    .ok_or_else(|| bad(&format!("expected a whole number >= {min}")))
            };
            // Times that must not be zero: a zero network time-out fails
            // every connection, a zero interval spins.
            let duration = || {
                let d = parse_duration(value)
                    .ok_or_else(|| bad("expected a time such as 300s, 5m or 1h"))?;
                let may_be_zero = matches!(
                    key,
                    "greet_pause" | "shutdown_timeout" | "delay_warning_time" | "max_backoff"
                );
                if d.is_zero() && !may_be_zero {
                    return Err(bad("must not be 0"));
                }
                Ok(d)
            };
            match key {
                "listen" => {
                    let mut addrs = Vec::new();
                    for a in list(value) {
                        addrs.push(a.parse::<SocketAddr>().map_err(|_| {
                            bad(&format!("'{a}' is not ADDRESS:PORT or [IPv6]:PORT"))
                        })?);
                    }
                    if addrs.is_empty() {
                        return Err(bad("at least one address is needed"));
                    }
                    c.listen = addrs;
                    c.listen_is_default = false;
                }
                "hostname" => {
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ".-".contains(ch))
                    {
                        return Err(bad("expected a host name"));
                    }
                    c.hostname = value.to_string();
                }
                "spool_dir" => {
                    c.spool_dir = non_empty_path(value).ok_or_else(|| bad("expected a path"))?
                }
                "aliases_file" => {
                    c.aliases_file = non_empty_path(value).ok_or_else(|| bad("expected a path"))?
                }
                "local_domains" => {
                    c.local_domains = list(value)
                        .into_iter()
                        .map(|d| d.to_ascii_lowercase())
                        .collect();
                    domains_set = true;
                }
                "local_users" => {
                    let users = list(value);
                    if let Some(u) = users
                        .iter()
                        .find(|u| *u != "@passwd" && !valid_user_name(u))
                    {
                        return Err(bad(&format!("'{u}' is not a usable user name")));
                    }
                    c.local_users = users.into_iter().map(|u| u.to_ascii_lowercase()).collect();
                }
                "relay_networks" => {
                    let mut nets = Vec::new();
                    for a in list(value) {
                        nets.push(
                            Cidr::parse(&a).ok_or_else(|| {
                                bad(&format!("'{a}' is not an address or network"))
                            })?,
                        );
                    }
                    c.relay_networks = nets;
                }
                "max_connections" => c.max_connections = count(1)?,
                "max_connections_per_ip" => c.max_connections_per_ip = count(1)?,
                "message_size_limit" => {
                    c.message_size_limit =
                        parse_size(value).filter(|&n| n >= 1024).ok_or_else(|| {
                            bad("expected a size of at least 1024, such as 10485760 or 10M")
                        })?
                }
                "max_recipients" => c.max_recipients = count(1)?,
                "max_hops" => c.max_hops = count(1)?,
                "max_errors" => c.max_errors = count(1)?,
                "command_timeout" => c.command_timeout = duration()?,
                "data_timeout" => c.data_timeout = duration()?,
                "greet_pause" => c.greet_pause = duration()?,
                "shutdown_timeout" => c.shutdown_timeout = duration()?,
                "vrfy" => c.vrfy = parse_bool(value).ok_or_else(|| bad("expected yes or no"))?,
                "log_level" => {
                    c.log_level = value
                        .parse()
                        .map_err(|_| bad("expected off, error, warn, info, debug or trace"))?
                }
                "syslog_socket" => {
                    c.syslog_socket = non_empty_path(value).ok_or_else(|| bad("expected a path"))?
                }
                "mail_dir" => {
                    c.mail_dir = non_empty_path(value).ok_or_else(|| bad("expected a path"))?
                }
                "mailbox_format" => {
                    c.mailbox_format = match value {
                        "maildir" => crate::local::MailboxFormat::Maildir,
                        "mbox" => crate::local::MailboxFormat::Mbox,
                        _ => return Err(bad("expected maildir or mbox")),
                    }
                }
                "delivery_threads" => c.delivery_threads = count(1)?,
                "queue_run_interval" => c.queue_run_interval = duration()?,
                "min_backoff" => c.min_backoff = duration()?,
                "max_backoff" => c.max_backoff = duration()?,
                "max_queue_lifetime" => c.max_queue_lifetime = duration()?,
                "delay_warning_time" => c.delay_warning_time = duration()?,
                "destination_concurrency_limit" => c.destination_concurrency_limit = count(1)?,
                "dns_servers" => {
                    let mut v = Vec::new();
                    for a in list(value) {
                        let addr = a
                            .parse::<SocketAddr>()
                            .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                            .map_err(|_| {
                                bad(&format!("'{a}' is not an address or ADDRESS:PORT"))
                            })?;
                        v.push(addr);
                    }
                    c.dns_servers = v;
                }
                "relay_port" => {
                    c.relay_port = value
                        .parse()
                        .ok()
                        .filter(|&p: &u16| p > 0)
                        .ok_or_else(|| bad("expected a port number"))?
                }
                "relayhost" => {
                    c.relayhost = if value.is_empty() {
                        None
                    } else {
                        Some(
                            crate::relay::Relayhost::parse(value, 25)
                                .ok_or_else(|| bad("expected [host]:port, host:port or host"))?,
                        )
                    }
                }
                "connect_timeout" => c.connect_timeout = duration()?,
                "relay_timeout" => c.relay_timeout = duration()?,
                "dns_timeout" => c.dns_timeout = duration()?,
                "auth_users_file" => {
                    c.auth_users_file = (!value.is_empty()).then(|| PathBuf::from(value))
                }
                "relayhost_auth_file" => {
                    c.relayhost_auth_file = (!value.is_empty()).then(|| PathBuf::from(value))
                }
                "auth_over_plaintext" => {
                    c.auth_over_plaintext =
                        parse_bool(value).ok_or_else(|| bad("expected yes or no"))?
                }
                "submission_listen" => {
                    let mut addrs = Vec::new();
                    for a in list(value) {
                        addrs.push(a.parse::<SocketAddr>().map_err(|_| {
                            bad(&format!("'{a}' is not ADDRESS:PORT or [IPv6]:PORT"))
                        })?);
                    }
                    c.submission_listen = addrs;
                }
                "tls_ca_file" => {
                    c.tls_ca_file = non_empty_path(value).ok_or_else(|| bad("expected a path"))?
                }
                "tls_cert" => c.tls_cert = (!value.is_empty()).then(|| PathBuf::from(value)),
                "tls_key" => c.tls_key = (!value.is_empty()).then(|| PathBuf::from(value)),
                "relayhost_tls" => {
                    c.relayhost_tls = match value {
                        "none" => RelayTls::None,
                        "opportunistic" => RelayTls::Opportunistic,
                        "required" => RelayTls::Required,
                        "verify" => RelayTls::Verify,
                        _ => return Err(bad("expected none, opportunistic, required or verify")),
                    }
                }
                "user" | "group" => {
                    let v = (!value.is_empty()).then(|| value.to_string());
                    if v.as_deref().is_some_and(|n| !valid_user_name(n)) {
                        return Err(bad("expected an account name"));
                    }
                    if key == "user" {
                        c.user = v;
                    } else {
                        c.group = v;
                    }
                }
                "defer_delivery" => {
                    c.defer_delivery = parse_bool(value).ok_or_else(|| bad("expected yes or no"))?
                }
                _ => {
                    let hint = did_you_mean(key, known_settings().iter().map(String::as_str));
                    return Err(err(format!("unknown setting '{key}'{hint}")));
                }
            }
        }
        if !domains_set {
            c.local_domains = vec!["localhost".into(), c.hostname.to_ascii_lowercase()];
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                what: "tls_cert and tls_key go together: set both or neither".into(),
            });
        }
        if c.min_backoff > c.max_backoff {
            return Err(ConfigError {
                file: file.to_string(),
                line: 0,
                what: format!(
                    "min_backoff ({}s) is larger than max_backoff ({}s)",
                    c.min_backoff.as_secs(),
                    c.max_backoff.as_secs()
                ),
            });
        }
        Ok(c)
    }

    /// The effective settings, in the file's own syntax.
    pub fn render(&self) -> String {
        let join = |v: &[String]| v.join(", ");
        let secs = |d: Duration| {
            if d.subsec_millis() == 0 {
                format!("{}s", d.as_secs())
            } else {
                format!("{}ms", d.as_millis())
            }
        };
        let mut s = String::new();
        let mut kv = |k: &str, v: String| s.push_str(&format!("{k} = {v}\n"));
        kv(
            "listen",
            self.listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        kv("hostname", self.hostname.clone());
        kv("spool_dir", self.spool_dir.display().to_string());
        kv("local_domains", join(&self.local_domains));
        kv("local_users", join(&self.local_users));
        kv("aliases_file", self.aliases_file.display().to_string());
        kv(
            "relay_networks",
            self.relay_networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        kv("max_connections", self.max_connections.to_string());
        kv(
            "max_connections_per_ip",
            self.max_connections_per_ip.to_string(),
        );
        kv("message_size_limit", self.message_size_limit.to_string());
        kv("max_recipients", self.max_recipients.to_string());
        kv("max_hops", self.max_hops.to_string());
        kv("max_errors", self.max_errors.to_string());
        kv("command_timeout", secs(self.command_timeout));
        kv("data_timeout", secs(self.data_timeout));
        kv("greet_pause", secs(self.greet_pause));
        kv("shutdown_timeout", secs(self.shutdown_timeout));
        kv("vrfy", if self.vrfy { "yes" } else { "no" }.into());
        kv("log_level", self.log_level.to_string().to_ascii_lowercase());
        kv("syslog_socket", self.syslog_socket.display().to_string());
        kv("mail_dir", self.mail_dir.display().to_string());
        kv(
            "mailbox_format",
            match self.mailbox_format {
                crate::local::MailboxFormat::Maildir => "maildir".into(),
                crate::local::MailboxFormat::Mbox => "mbox".into(),
            },
        );
        kv("delivery_threads", self.delivery_threads.to_string());
        kv("queue_run_interval", secs(self.queue_run_interval));
        kv("min_backoff", secs(self.min_backoff));
        kv("max_backoff", secs(self.max_backoff));
        kv("max_queue_lifetime", secs(self.max_queue_lifetime));
        kv("delay_warning_time", secs(self.delay_warning_time));
        kv(
            "destination_concurrency_limit",
            self.destination_concurrency_limit.to_string(),
        );
        kv(
            "dns_servers",
            self.dns_servers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        kv("relay_port", self.relay_port.to_string());
        kv(
            "relayhost",
            self.relayhost
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        kv("connect_timeout", secs(self.connect_timeout));
        kv("relay_timeout", secs(self.relay_timeout));
        kv("dns_timeout", secs(self.dns_timeout));
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        kv("tls_cert", path(&self.tls_cert));
        kv("tls_key", path(&self.tls_key));
        kv("relayhost_tls", self.relayhost_tls.name().into());
        kv("tls_ca_file", self.tls_ca_file.display().to_string());
        kv("auth_users_file", path(&self.auth_users_file));
        kv(
            "auth_over_plaintext",
            if self.auth_over_plaintext {
                "yes"
            } else {
                "no"
            }
            .into(),
        );
        kv(
            "submission_listen",
            self.submission_listen
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        kv("relayhost_auth_file", path(&self.relayhost_auth_file));
        kv("user", self.user.clone().unwrap_or_default());
        kv("group", self.group.clone().unwrap_or_default());
        kv(
            "defer_delivery",
            if self.defer_delivery { "yes" } else { "no" }.into(),
        );
        s
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    pub fn may_relay(&self, ip: IpAddr) -> bool {
        self.relay_networks.iter().any(|n| n.contains(ip))
    }
}

/// The names of every setting (those `render` writes).
fn known_settings() -> Vec<String> {
    Config::default()
        .render()
        .lines()
        .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
        .collect()
}

/// ` (did you mean 'hostname'?)` when one of `known` is a likely typo of
/// `word` (two edits, or a third of its letters for long words), else
/// nothing.
pub fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> String {
    let limit = (word.chars().count() / 3).clamp(2, 3);
    known
        .map(|k| (edit_distance(word, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, with a swap of two neighbours counted as one
/// edit (`hostnmae` is one slip from `hostname`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![(0..=b.len()).collect::<Vec<usize>>(); a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

fn non_empty_path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

/// The accounts of /etc/passwd that can receive mail (valid names only).
pub fn passwd_users(passwd: &str) -> impl Iterator<Item = String> + '_ {
    passwd
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|u| valid_user_name(u))
        .map(|u| u.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_from_a_checkout() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen[0], "127.0.0.1:2525".parse().unwrap());
        assert_eq!(c.spool_dir, PathBuf::from("./var/spool"));
        assert!(c.is_local_domain("localhost"));
        assert!(c.is_local_domain(&c.hostname.clone()));
        assert_eq!(c.message_size_limit, 10 * 1024 * 1024);
        assert_eq!(c.max_recipients, 100);
        assert_eq!(c.max_connections, 100);
        assert_eq!(c.command_timeout, Duration::from_secs(300));
    }

    #[test]
    fn settings_parse_with_comments_and_lists() {
        let c = Config::parse(
            "# comment\nlisten = 127.0.0.1:25, [::1]:25\nhostname = mx.example\n\
             local_users = alice bob\nrelay_networks = 10.0.0.0/8, ::1\nmessage_size_limit = 1M\n\
             command_timeout = 5m\nvrfy = yes\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.local_domains, vec!["localhost", "mx.example"]);
        assert_eq!(c.local_users, vec!["alice", "bob"]);
        assert!(c.may_relay("10.1.2.3".parse().unwrap()));
        assert!(c.may_relay("::1".parse().unwrap()));
        assert!(!c.may_relay("11.0.0.1".parse().unwrap()));
        assert_eq!(c.message_size_limit, 1 << 20);
        assert_eq!(c.command_timeout, Duration::from_secs(300));
        assert!(c.vrfy);
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = Config::parse("hostname = a\n\nfrobnicate = 1\n", "etc/x.conf").unwrap_err();
        assert_eq!(e.to_string(), "etc/x.conf:3: unknown setting 'frobnicate'");
    }

    #[test]
    fn an_unknown_setting_suggests_the_closest_known_one() {
        let e = Config::parse("hostnmae = a\n", "x.conf").unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.conf:1: unknown setting 'hostnmae' (did you mean 'hostname'?)"
        );
        let e = Config::parse("relayhots = [a]:25\n", "x.conf").unwrap_err();
        assert!(
            e.to_string().ends_with("(did you mean 'relayhost'?)"),
            "{e}"
        );
        let e = Config::parse("mesage_size_limit = 1\n", "x.conf").unwrap_err();
        assert!(e.to_string().contains("'message_size_limit'"), "{e}");
        assert_eq!(
            did_you_mean("sever", ["serve", "inetd"].into_iter()),
            " (did you mean 'serve'?)"
        );
        assert_eq!(did_you_mean("zz", ["serve"].into_iter()), "");
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "listen = nowhere",
            "max_connections = 0",
            "max_connections = many",
            "message_size_limit = 12Q",
            "relay_networks = 10.0.0.0/33",
            "command_timeout = soon",
            "vrfy = maybe",
            "local_users = ../etc",
            "log_level = loud",
            "command_timeout = 0",
            "connect_timeout = 0s",
            "queue_run_interval = 0",
            "relay_timeout = 99999999999999999999999d",
            "min_backoff = 2h",
            "hostname",
        ] {
            assert!(Config::parse(bad, "x").is_err(), "{bad}");
        }
        assert!(
            Config::parse("vrfy = yes\nvrfy = no\n", "x").is_err(),
            "duplicates"
        );
    }

    #[test]
    fn render_parses_back_to_the_same_settings() {
        let c = Config::parse("hostname = mx.example\ngreet_pause = 500ms\n", "x").unwrap();
        let again = Config::parse(&c.render(), "x").unwrap();
        assert_eq!(again.render(), c.render());
    }

    #[test]
    fn cidr_matching_includes_v4_mapped_v6() {
        let n = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.9.9.9".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn user_names_cannot_escape_the_mail_directory() {
        for bad in ["../x", "a/b", ".hidden", "", "a\0b", "a b"] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
        assert!(valid_user_name("alice.smith-2"));
    }
}
