//! DNS for delivery: MX, A and AAAA look-ups sent to the configured
//! recursive nameservers (from /etc/resolv.conf or the configuration) over
//! blocking UDP with a time-out and a number of rounds over the server list,
//! repeated over TCP when the UDP answer comes back truncated (RFC 1035
//! §4.2.1, RFC 7766). Messages are built and parsed with `hickory-proto`; the
//! parsing is pure (`parse_mx_response`, `parse_addr_response`) so it can be
//! unit-tested and fuzzed with bytes. Only the resolver of the receiving
//! checks caches (`cached`: definitive answers for their TTL); it never
//! recurses on its own (it asks for recursion, RD, and trusts the server to do it) and holds
//! no MX policy: sorting by preference, shuffling equal preferences, the
//! implicit MX and the null MX (RFC 7505) are decided by the caller
//! (`transport::smtp`). Everything outside this file sees only the `Resolver` trait,
//! so tests can aim delivery at a DNS server on loopback or at a fake.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

/// The standard DNS port (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;

/// UDP payload size we advertise with EDNS(0) (RFC 6891): the value the
/// DNS Flag Day 2020 chose so that answers are not fragmented.
const EDNS_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP datagram we accept; a smaller buffer would cut an oversized
/// answer silently and make it unparseable.
const MAX_UDP_DATAGRAM: usize = 65535;

/// Longest CNAME chain followed inside one response; a loop or an absurd
/// chain is a broken answer, not an endless walk.
const MAX_CNAME_CHAIN: usize = 8;

/// One MX record. Addresses that a server adds in the additional section
/// are not used: a cache may hold only some of them (only the AAAA, say),
/// so the exchange's addresses are always looked up, as Postfix does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// The host name without the trailing dot, lower-cased; the null MX
    /// (RFC 7505) target "." is the empty string.
    pub exchange: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): permanent.
    NxDomain,
    /// SERVFAIL, REFUSED, time-out, network or parse error: try again later.
    /// Text for logs.
    Temporary(String),
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NxDomain => f.write_str("name does not exist (NXDOMAIN)"),
            DnsError::Temporary(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DnsError {}

fn temporary(why: impl Into<String>) -> DnsError {
    DnsError::Temporary(why.into())
}

/// What delivery needs of DNS; tests and the relay code depend on this trait only.
/// A TLSA record (RFC 6698 §2.1): certificate usage, selector, matching
/// type and the certificate association data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// An answer, and whether the validating resolver vouched for it: the AD
/// bit (RFC 4035 §3.2.3; RFC 6840 §5.8: only from a resolver trusted to
/// validate, which is how `dns_servers` are taken).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured<T> {
    pub value: T,
    pub secure: bool,
}

pub trait Resolver: Send + Sync {
    /// MX records of `domain`. Ok(empty vec) when the name exists but has no
    /// MX records (NODATA). Err(NxDomain) when it does not exist.
    fn mx(&self, domain: &str) -> Result<Vec<Mx>, DnsError>;
    /// A and AAAA addresses of `host` (both queried; IPv4 first in the
    /// result). Ok(empty) for NODATA on both; NxDomain if NXDOMAIN. If one of
    /// A/AAAA fails temporarily and the other gives addresses, return the
    /// addresses.
    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;

    /// The A (`v6` false) or AAAA records of `name` alone: DNS blocklist
    /// answers, SPF's `a` and `mx` mechanisms, forward-confirming a PTR name.
    fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let all = self.addresses(name)?;
        Ok(all.into_iter().filter(|ip| ip.is_ipv6() == v6).collect())
    }

    /// The TXT records of `name`, each one string: its character-strings
    /// joined without separators (RFC 7208 §3.3, RFC 6376 §3.6.2.2), bytes
    /// that are not UTF-8 replaced.
    fn txt(&self, _name: &str) -> Result<Vec<String>, DnsError> {
        Err(temporary("this resolver does not look up TXT records"))
    }

    /// The names the PTR records of `ip`'s reverse name give, lower-case and
    /// without the trailing dot.
    fn ptr(&self, _ip: IpAddr) -> Result<Vec<String>, DnsError> {
        Err(temporary("this resolver does not look up PTR records"))
    }

    /// `mx`, and whether DNSSEC vouches for the answer (for DANE).
    fn mx_secured(&self, domain: &str) -> Result<Secured<Vec<Mx>>, DnsError> {
        let value = self.mx(domain)?;
        Ok(Secured {
            value,
            secure: false,
        })
    }

    /// `addresses`, secure when every answer that gave them was.
    fn addresses_secured(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let value = self.addresses(host)?;
        Ok(Secured {
            value,
            secure: false,
        })
    }

    /// The TLSA records of `name` (`_25._tcp.<host>`); none for NXDOMAIN
    /// and NODATA, secure when DNSSEC vouches for that too.
    fn tlsa(&self, _name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        Err(temporary("this resolver does not look up TLSA records"))
    }
}

/// A stub resolver over blocking sockets: asks `servers` in turn, for
/// `attempts` rounds, waiting at most `timeout` for each answer.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
    /// Definitive answers kept for their TTL (the checks of received mail
    /// ask the same names again and again); none for delivery.
    cache: Option<std::sync::Arc<std::sync::Mutex<Cache>>>,
    /// Every query asks for DNSSEC records (the DO bit; TLSA queries
    /// always do): `smtp_dns_support_level = dnssec`.
    dnssec: bool,
}

/// Answers by (name, type), each with the instant it expires.
#[derive(Debug, Default)]
struct Cache {
    answers: std::collections::HashMap<(String, RecordType), (Instant, Message)>,
}

/// Entries a cache holds at most; when full, the expired go, and if that
/// is not enough, all of them.
const CACHE_ENTRIES: usize = 10_000;
/// The longest an answer is kept, whatever its TTL; negative answers
/// without an SOA in them are kept this long at most too.
const CACHE_TTL_MAX: u32 = 3600;
const CACHE_NEGATIVE_TTL: u32 = 60;

/// About how many octets an answer's records hold.
fn answer_bytes(msg: &Message) -> usize {
    msg.answers
        .iter()
        .chain(msg.authorities.iter())
        .map(|r| match &r.data {
            RData::TXT(t) => t.txt_data.iter().map(|s| s.len()).sum::<usize>(),
            _ => 64,
        })
        .sum()
}

impl Cache {
    fn get(&mut self, key: &(String, RecordType), now: Instant) -> Option<Message> {
        match self.answers.get(key) {
            Some((until, msg)) if *until > now => Some(msg.clone()),
            Some(_) => {
                self.answers.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, key: (String, RecordType), msg: &Message, now: Instant) {
        let ttl = msg
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .or_else(|| msg.authorities.iter().map(|r| r.ttl).min())
            .unwrap_or(CACHE_NEGATIVE_TTL)
            .min(CACHE_TTL_MAX);
        // Memory is bounded by the entry count only if entries are small:
        // a large answer (a wildcard of big TXT records) is not kept.
        if ttl == 0 || msg.answers.len() + msg.authorities.len() > 16 || answer_bytes(msg) > 2048 {
            return;
        }
        if self.answers.len() >= CACHE_ENTRIES {
            self.answers.retain(|_, (until, _)| *until > now);
            if self.answers.len() >= CACHE_ENTRIES {
                self.answers.clear();
            }
        }
        let until = now + Duration::from_secs(u64::from(ttl));
        self.answers.insert(key, (until, msg.clone()));
    }
}

impl DnsResolver {
    /// `attempts` below 1 counts as 1. With no servers every look-up is a
    /// temporary failure.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration, attempts: u32) -> DnsResolver {
        DnsResolver {
            servers,
            timeout,
            attempts,
            cache: None,
            dnssec: false,
        }
    }

    /// The same resolver, asking with the DO bit set (RFC 3225) on every
    /// query. Every query has the AD bit set (RFC 6840 §5.7), so that a
    /// validating resolver says which answers DNSSEC vouches for
    /// (`Resolver::mx_secured` and the others) either way.
    pub fn with_dnssec(mut self) -> DnsResolver {
        self.dnssec = true;
        self
    }

    /// The same resolver, keeping definitive answers for their TTL (at
    /// most an hour; negative ones a minute unless their SOA says less).
    pub fn cached(mut self) -> DnsResolver {
        self.cache = Some(Default::default());
        self
    }

    /// Nameservers from /etc/resolv.conf (port 53), with its `timeout:` and
    /// `attempts:` options (glibc defaults 5 s and 2). Err with a readable
    /// reason when the file cannot be read or names no nameserver. Lines the
    /// parser does not understand are skipped, as the C library does.
    pub fn from_resolv_conf(path: &Path) -> Result<DnsResolver, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (conf, errors) = resolv_conf::Config::parse_with_errors(&bytes);
        let servers: Vec<SocketAddr> = conf
            .nameservers
            .iter()
            .map(|ip| match ip {
                resolv_conf::ScopedIp::V4(v4) => SocketAddr::from((*v4, DNS_PORT)),
                resolv_conf::ScopedIp::V6(v6, scope) => {
                    // A link-local server needs its interface: `%2` or, as
                    // NetworkManager writes it, `%eth0`.
                    let scope_id = scope.as_deref().map_or(0, interface_index);
                    SocketAddr::V6(SocketAddrV6::new(*v6, DNS_PORT, 0, scope_id))
                }
            })
            .collect();
        if servers.is_empty() {
            let hint = match errors.first() {
                Some(e) => format!(" ({e})"),
                None => String::new(),
            };
            return Err(format!("{}: no nameserver line{hint}", path.display()));
        }
        // glibc's bounds: at most 30 s and 5 attempts.
        let timeout = Duration::from_secs(u64::from(conf.timeout.clamp(1, 30)));
        Ok(DnsResolver::new(
            servers,
            timeout,
            conf.attempts.clamp(1, 5),
        ))
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Asks the servers for (name, rtype) and returns the first definitive
    /// answer: NOERROR or NXDOMAIN. SERVFAIL, REFUSED and the like move on
    /// to the next server, and a server that gave one is not asked again in
    /// later rounds; time-outs and network errors are retried each round.
    fn lookup(&self, name: &str, rtype: RecordType) -> Result<Message, DnsError> {
        let Some(cache) = &self.cache else {
            return self.ask(name, rtype);
        };
        let key = (name.to_ascii_lowercase(), rtype);
        let hit = cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key, Instant::now());
        if let Some(msg) = hit {
            return Ok(msg);
        }
        let msg = self.ask(name, rtype)?;
        cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, &msg, Instant::now());
        Ok(msg)
    }

    fn ask(&self, name: &str, rtype: RecordType) -> Result<Message, DnsError> {
        let qname = query_name(name)?;
        if self.servers.is_empty() {
            return Err(temporary("no nameservers configured"));
        }
        let mut answered = vec![false; self.servers.len()];
        let mut last = temporary("no nameserver answered");
        for _ in 0..self.attempts.max(1) {
            for (i, server) in self.servers.iter().enumerate() {
                if answered[i] {
                    continue;
                }
                match self.exchange(*server, &qname, rtype) {
                    Ok(msg) => match msg.metadata.response_code {
                        ResponseCode::NoError | ResponseCode::NXDomain => return Ok(msg),
                        code => {
                            answered[i] = true;
                            last = temporary(format!(
                                "{server} answered {} for {qname} {rtype}",
                                rcode_name(code)
                            ));
                        }
                    },
                    Err(why) => last = temporary(format!("{server}: {why} for {qname} {rtype}")),
                }
            }
        }
        Err(last)
    }

    /// One question to one server: UDP, then TCP when the answer is truncated.
    fn exchange(
        &self,
        server: SocketAddr,
        qname: &Name,
        rtype: RecordType,
    ) -> Result<Message, String> {
        let mut edns = true;
        loop {
            let id = random_id();
            // RFC 7672 §2.2: TLSA records are asked for with DO.
            let dnssec = self.dnssec || rtype == RecordType::TLSA;
            let query = encode_query(id, qname, rtype, edns, dnssec)?;
            let mut msg = udp_exchange(server, &query, id, qname, rtype, self.timeout)?;
            if msg.metadata.truncation {
                let id = random_id();
                let query = encode_query(id, qname, rtype, edns, dnssec)?;
                msg = tcp_exchange(server, &query, id, qname, rtype, self.timeout)?;
            }
            // RFC 6891 §7: a server that does not know EDNS answers FORMERR
            // (or NOTIMP) without an OPT record; ask it again without one.
            let no_edns = matches!(
                msg.metadata.response_code,
                ResponseCode::FormErr | ResponseCode::NotImp
            ) && msg.edns.is_none();
            if edns && no_edns {
                edns = false;
                continue;
            }
            return Ok(msg);
        }
    }
}

impl Resolver for DnsResolver {
    fn mx(&self, domain: &str) -> Result<Vec<Mx>, DnsError> {
        let msg = self.lookup(domain, RecordType::MX)?;
        mx_from_message(&msg)
    }

    fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let v4 = self
            .lookup(host, RecordType::A)
            .and_then(|m| addrs_from_message(&m));
        // RFC 8020: NXDOMAIN means nothing exists at or below the name, so
        // asking for AAAA would only cost another round trip.
        if v4 == Err(DnsError::NxDomain) {
            return Err(DnsError::NxDomain);
        }
        let v6 = self
            .lookup(host, RecordType::AAAA)
            .and_then(|m| addrs_from_message(&m));
        combine_addresses(v4, v6)
    }

    fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
        addrs_from_message(&self.lookup(name, rtype)?)
    }

    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        txt_from_message(&self.lookup(name, RecordType::TXT)?)
    }

    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let name = Name::from(ip).to_ascii();
        ptr_from_message(&self.lookup(&name, RecordType::PTR)?)
    }

    fn mx_secured(&self, domain: &str) -> Result<Secured<Vec<Mx>>, DnsError> {
        let msg = self.lookup(domain, RecordType::MX)?;
        Ok(Secured {
            value: mx_from_message(&msg)?,
            secure: msg.metadata.authentic_data,
        })
    }

    fn addresses_secured(&self, host: &str) -> Result<Secured<Vec<IpAddr>>, DnsError> {
        let mut secure = true;
        let mut get = |rtype| {
            let m = self.lookup(host, rtype)?;
            secure &= m.metadata.authentic_data;
            addrs_from_message(&m)
        };
        let v4 = get(RecordType::A);
        let v6 = get(RecordType::AAAA);
        let value = combine_addresses(v4, v6)?;
        Ok(Secured { value, secure })
    }

    fn tlsa(&self, name: &str) -> Result<Secured<Vec<Tlsa>>, DnsError> {
        let msg = self.lookup(name, RecordType::TLSA)?;
        let secure = msg.metadata.authentic_data;
        let value = match tlsa_from_message(&msg) {
            Err(DnsError::NxDomain) => Vec::new(),
            other => other?,
        };
        Ok(Secured { value, secure })
    }
}

fn tlsa_from_message(msg: &Message) -> Result<Vec<Tlsa>, DnsError> {
    let owner = answer_owner(msg, RecordType::TLSA)?;
    let records = msg
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .collect();
    Ok(records)
}

/// A then AAAA: any address wins; then a temporary failure (we cannot say
/// the host has none); then NXDOMAIN; else NODATA on both.
fn combine_addresses(
    v4: Result<Vec<IpAddr>, DnsError>,
    v6: Result<Vec<IpAddr>, DnsError>,
) -> Result<Vec<IpAddr>, DnsError> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in [v4, v6] {
        match r {
            Ok(a) => found.extend(a),
            Err(e) => errors.push(e),
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    if let Some(t) = errors.iter().find(|e| matches!(e, DnsError::Temporary(_))) {
        return Err(t.clone());
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(found),
    }
}

/// A name as a fully qualified query name. A name that cannot be written in
/// DNS (an empty label, a label over 63 octets, ...) cannot exist in it
/// either, so that is NXDOMAIN, a permanent answer.
fn query_name(name: &str) -> Result<Name, DnsError> {
    let fq = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    // An ASCII name goes as it is: DNS allows any octet (RFC 2181 §11),
    // and host names with '_' are found in the wild, which IDNA's STD3
    // rules would refuse. Only a non-ASCII name is converted (RFC 5891).
    let name = if fq.is_ascii() {
        Name::from_ascii(&fq)
    } else {
        Name::from_utf8(&fq)
    };
    name.map_err(|_| DnsError::NxDomain)
}

/// A query ID no off-path attacker can guess cheaply (RFC 5452 §4.3).
/// `RandomState` is seeded from the OS once per process; hashing the clock
/// and a counter with a fresh one gives a new value per query without a
/// random-number crate.
fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let h = RandomState::new().hash_one((n, nanos));
    (h ^ (h >> 16) ^ (h >> 32) ^ (h >> 48)) as u16
}

fn encode_query(
    id: u16,
    qname: &Name,
    rtype: RecordType,
    with_edns: bool,
    dnssec: bool,
) -> Result<Vec<u8>, String> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.authentic_data = true;
    msg.add_query(Query::query(qname.clone(), rtype));
    if with_edns {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_PAYLOAD);
        edns.set_dnssec_ok(dnssec);
        msg.set_edns(edns);
    }
    msg.to_vec()
        .map_err(|e| format!("cannot encode query: {e}"))
}

/// The index of an interface given by number or by name (from sysfs);
/// 0, no scope, when there is no such interface.
fn interface_index(scope: &str) -> u32 {
    if let Ok(n) = scope.parse() {
        return n;
    }
    if scope.is_empty() || scope.contains(['/', '.']) {
        return 0;
    }
    std::fs::read_to_string(format!("/sys/class/net/{scope}/ifindex"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Is this the answer to our question? Same ID, a response, and the same
/// question (names compare case-insensitively, RFC 4343). An error response
/// without a question section is accepted on the ID alone: it can only make
/// us try again later.
fn answers_question(msg: &Message, id: u16, qname: &Name, rtype: RecordType) -> bool {
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return false;
    }
    match msg.queries.as_slice() {
        [q] => q.name() == qname && q.query_type() == rtype && q.query_class() == DNSClass::IN,
        [] => !matches!(
            msg.metadata.response_code,
            ResponseCode::NoError | ResponseCode::NXDomain
        ),
        _ => false,
    }
}

fn is_timeout(e: &io::Error) -> bool {
    // Linux reports a socket read time-out as WouldBlock, others as TimedOut.
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Time left before `deadline`, or None when it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

/// Sends the query in one datagram from a fresh socket (fresh source port,
/// RFC 5452 §9.2) and waits for a matching answer until the time-out.
/// Datagrams that do not parse or answer another question are dropped: they
/// may be spoofed or late answers, and the real one may still come.
fn udp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("udp bind: {e}"))?;
    socket
        .connect(server)
        .map_err(|e| format!("udp connect: {e}"))?;
    socket.send(query).map_err(|e| format!("udp send: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_UDP_DATAGRAM];
    loop {
        let left = remaining(deadline).ok_or("timed out (udp)")?;
        socket
            .set_read_timeout(Some(left))
            .map_err(|e| format!("udp: {e}"))?;
        match socket.recv(&mut buf) {
            Ok(n) => {
                let Some(bytes) = buf.get(..n) else { continue };
                if let Ok(msg) = Message::from_vec(bytes) {
                    if answers_question(&msg, id, qname, rtype) {
                        return Ok(msg);
                    }
                }
            }
            Err(e) if is_timeout(&e) => return Err("timed out (udp)".into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("udp receive: {e}")),
        }
    }
}

/// The same question over TCP, each message behind a two-octet length
/// (RFC 1035 §4.2.2), all within one time-out.
fn tcp_exchange(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    qname: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, String> {
    let deadline = Instant::now() + timeout;
    let len = u16::try_from(query.len()).map_err(|_| "query too long for tcp".to_string())?;
    let mut stream =
        TcpStream::connect_timeout(&server, timeout).map_err(|e| format!("tcp connect: {e}"))?;
    let left = remaining(deadline).ok_or("timed out (tcp)")?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| format!("tcp: {e}"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).map_err(|e| match e {
        e if is_timeout(&e) => "timed out (tcp)".to_string(),
        e => format!("tcp send: {e}"),
    })?;
    let mut len_buf = [0u8; 2];
    read_full(&mut stream, &mut len_buf, deadline)?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len_buf))];
    read_full(&mut stream, &mut body, deadline)?;
    let msg = Message::from_vec(&body).map_err(|e| format!("unparseable tcp answer: {e}"))?;
    if !answers_question(&msg, id, qname, rtype) {
        return Err("tcp answer does not match the question".into());
    }
    Ok(msg)
}

/// `read_exact` with one deadline over all the reads it takes.
fn read_full(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> Result<(), String> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = remaining(deadline).ok_or("timed out (tcp)")?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| format!("tcp: {e}"))?;
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        match stream.read(rest) {
            Ok(0) => return Err("tcp connection closed mid-answer".into()),
            Ok(n) => filled += n,
            Err(e) if is_timeout(&e) => return Err("timed out (tcp)".into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("tcp receive: {e}")),
        }
    }
    Ok(())
}

/// Pure: parse a response to an MX query. Checks the ID, that it is a
/// response to exactly one MX question, and the response code. Never panics
/// on arbitrary bytes.
pub fn parse_mx_response(bytes: &[u8], expected_id: u16) -> Result<Vec<Mx>, DnsError> {
    mx_from_message(&decode_response(bytes, expected_id)?)
}

/// Pure: parse a response to an A or an AAAA query; the addresses of the
/// type asked for, in the order given. Never panics on arbitrary bytes.
pub fn parse_addr_response(bytes: &[u8], expected_id: u16) -> Result<Vec<IpAddr>, DnsError> {
    addrs_from_message(&decode_response(bytes, expected_id)?)
}

fn decode_response(bytes: &[u8], expected_id: u16) -> Result<Message, DnsError> {
    let msg =
        Message::from_vec(bytes).map_err(|e| temporary(format!("unparseable answer: {e}")))?;
    if msg.metadata.id != expected_id {
        return Err(temporary(format!(
            "answer has ID {} instead of {expected_id}",
            msg.metadata.id
        )));
    }
    if msg.metadata.message_type != MessageType::Response {
        return Err(temporary("a query instead of an answer"));
    }
    Ok(msg)
}

/// The response code and question of an answer; on NOERROR, the name whose
/// records answer the question: the question name or, through CNAME records
/// in the answer section, their final target (RFC 1034 §3.6.2).
fn answer_owner(msg: &Message, rtype: RecordType) -> Result<Name, DnsError> {
    let code = msg.metadata.response_code;
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Err(temporary(format!("server answered {}", rcode_name(code))));
    }
    let question = match msg.queries.as_slice() {
        [q] if q.query_type() == rtype && q.query_class() == DNSClass::IN => q,
        _ => {
            return Err(temporary(format!(
                "answer is not for one IN {rtype} question"
            )))
        }
    };
    if code == ResponseCode::NXDomain {
        return Err(DnsError::NxDomain);
    }
    if msg.metadata.truncation {
        return Err(temporary("answer truncated"));
    }
    let mut owner = question.name().clone();
    for _ in 0..MAX_CNAME_CHAIN {
        let next = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == owner => Some(target.0.clone()),
            _ => None,
        });
        match next {
            Some(target) => owner = target,
            None => return Ok(owner),
        }
    }
    Err(temporary(format!(
        "CNAME chain from {} too long",
        question.name()
    )))
}

fn mx_from_message(msg: &Message) -> Result<Vec<Mx>, DnsError> {
    let owner = answer_owner(msg, RecordType::MX)?;
    let mx = msg
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some(Mx {
                preference: mx.preference,
                exchange: host_text(&mx.exchange),
            }),
            _ => None,
        })
        .collect();
    Ok(mx)
}

fn addrs_from_message(msg: &Message) -> Result<Vec<IpAddr>, DnsError> {
    let rtype = match msg.queries.first().map(|q| q.query_type()) {
        Some(RecordType::AAAA) => RecordType::AAAA,
        _ => RecordType::A,
    };
    let owner = answer_owner(msg, rtype)?;
    let addrs = msg
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::A(a) if rtype == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Ok(addrs)
}

/// Pure: parse a response to a TXT query (see `Resolver::txt`). Never
/// panics on arbitrary bytes.
pub fn parse_txt_response(bytes: &[u8], expected_id: u16) -> Result<Vec<String>, DnsError> {
    txt_from_message(&decode_response(bytes, expected_id)?)
}

fn txt_from_message(msg: &Message) -> Result<Vec<String>, DnsError> {
    let owner = answer_owner(msg, RecordType::TXT)?;
    let txt = msg
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(String::from_utf8_lossy(&t.txt_data.concat()).into_owned()),
            _ => None,
        })
        .collect();
    Ok(txt)
}

fn ptr_from_message(msg: &Message) -> Result<Vec<String>, DnsError> {
    let owner = answer_owner(msg, RecordType::PTR)?;
    let names = msg
        .answers
        .iter()
        .filter(|r| r.name == owner)
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(host_text(&p.0)),
            _ => None,
        })
        .collect();
    Ok(names)
}

/// The RFC 1035 §4.1.1 mnemonic operators know from dig and logs.
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

/// A host name as text: lower-case, no trailing dot; the root is "". Odd
/// octets come out escaped (`\.`, `\032`), so they never pass for a dot.
fn host_text(name: &Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// DNS for the checks of received mail: `from_config`'s servers, with a
/// cache.
pub fn cached_from_config(cfg: &crate::config::Config) -> Result<Box<dyn Resolver>, String> {
    let timeout = cfg.dns_timeout;
    if !cfg.dns_servers.is_empty() {
        return Ok(Box::new(
            DnsResolver::new(cfg.dns_servers.clone(), timeout, 2).cached(),
        ));
    }
    let r = DnsResolver::from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))?;
    Ok(Box::new(r.cached()))
}

/// DNS: the configured servers, else those of /etc/resolv.conf.
/// With `smtp_dns_support_level = dnssec`, every query asks for DNSSEC.
pub fn from_config(cfg: &crate::config::Config) -> Result<Box<dyn Resolver>, String> {
    let dnssec = cfg.smtp_dns_support_level == crate::config::transport::DnsSupport::Dnssec;
    let with = |r: DnsResolver| -> Box<dyn Resolver> {
        Box::new(if dnssec { r.with_dnssec() } else { r })
    };
    let timeout = cfg.dns_timeout;
    if !cfg.dns_servers.is_empty() {
        return Ok(with(DnsResolver::new(cfg.dns_servers.clone(), timeout, 2)));
    }
    match DnsResolver::from_resolv_conf(std::path::Path::new("/etc/resolv.conf")) {
        Ok(r) => Ok(with(r)),
        // With a smarthost by IP address no DNS is needed at all.
        Err(e)
            if !cfg.relayhost.is_empty()
                && cfg
                    .relayhost
                    .iter()
                    .all(|r| r.host.parse::<std::net::IpAddr>().is_ok()) =>
        {
            log::info!("no DNS ({e}); all mail goes to the relayhost");
            Ok(Box::new(DnsResolver::new(Vec::new(), timeout, 1)))
        }
        Err(e) => Err(format!("DNS: {e} (set dns_servers)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX};
    use hickory_proto::rr::Record;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn response(id: u16, qname: &str, rtype: RecordType, code: ResponseCode) -> Message {
        let mut m = Message::response(id, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), rtype));
        m
    }

    fn mx_rr(owner: &str, pref: u16, exchange: &str) -> Record {
        Record::from_rdata(name(owner), 300, RData::MX(MX::new(pref, name(exchange))))
    }

    fn a_rr(owner: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), 300, RData::A(A(Ipv4Addr::from(ip))))
    }

    fn aaaa_rr(owner: &str, ip: Ipv6Addr) -> Record {
        Record::from_rdata(name(owner), 300, RData::AAAA(AAAA(ip)))
    }

    fn bytes(m: &Message) -> Vec<u8> {
        m.to_vec().expect("encode")
    }

    #[test]
    fn mx_records_come_without_the_additional_sections_addresses() {
        let mut m = response(7, "example.org.", RecordType::MX, ResponseCode::NoError);
        m.add_answer(mx_rr("example.org.", 10, "MX1.Example.org."));
        m.add_answer(mx_rr("example.org.", 20, "mx2.example.org."));
        m.add_additional(aaaa_rr("mx1.example.org.", Ipv6Addr::LOCALHOST));
        m.add_additional(a_rr("mx1.example.org.", [192, 0, 2, 1]));
        m.add_additional(a_rr("other.example.", [192, 0, 2, 9]));
        let mx = parse_mx_response(&bytes(&m), 7).expect("parse");
        assert_eq!(
            mx,
            vec![
                Mx {
                    preference: 10,
                    exchange: "mx1.example.org".into(),
                },
                Mx {
                    preference: 20,
                    exchange: "mx2.example.org".into(),
                },
            ]
        );
    }

    #[test]
    fn query_names_take_underscores_and_international_names() {
        assert_eq!(
            query_name("mx_1.Example.com").map(|n| n.to_ascii()),
            Ok("mx_1.Example.com.".to_string())
        );
        assert_eq!(
            query_name("b\u{fc}cher.example").map(|n| n.to_ascii()),
            Ok("xn--bcher-kva.example.".to_string())
        );
        assert_eq!(query_name("a..b"), Err(DnsError::NxDomain));
        assert_eq!(query_name(&"x".repeat(64)), Err(DnsError::NxDomain));
    }

    #[test]
    fn a_link_local_name_server_gets_its_interface_by_name_or_number() {
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex")
            .map(|t| t.trim().parse::<u32>().unwrap())
            .unwrap_or(1);
        assert_eq!(interface_index("lo"), lo);
        assert_eq!(interface_index("7"), 7);
        assert_eq!(interface_index("no-such-if0"), 0);
        assert_eq!(interface_index("../../etc"), 0);
    }

    #[test]
    fn null_mx_has_an_empty_exchange() {
        let mut m = response(1, "nomail.example.", RecordType::MX, ResponseCode::NoError);
        m.add_answer(mx_rr("nomail.example.", 0, "."));
        let mx = parse_mx_response(&bytes(&m), 1).expect("parse");
        assert_eq!(
            mx,
            vec![Mx {
                preference: 0,
                exchange: String::new(),
            }]
        );
    }

    #[test]
    fn noerror_without_records_is_nodata() {
        let m = response(2, "example.org.", RecordType::MX, ResponseCode::NoError);
        assert_eq!(parse_mx_response(&bytes(&m), 2), Ok(vec![]));
        let m = response(2, "example.org.", RecordType::AAAA, ResponseCode::NoError);
        assert_eq!(parse_addr_response(&bytes(&m), 2), Ok(vec![]));
    }

    #[test]
    fn nxdomain_is_permanent() {
        let m = response(
            3,
            "nowhere.example.",
            RecordType::MX,
            ResponseCode::NXDomain,
        );
        assert_eq!(parse_mx_response(&bytes(&m), 3), Err(DnsError::NxDomain));
        let m = response(3, "nowhere.example.", RecordType::A, ResponseCode::NXDomain);
        assert_eq!(parse_addr_response(&bytes(&m), 3), Err(DnsError::NxDomain));
    }

    #[test]
    fn servfail_and_refused_are_temporary() {
        for code in [
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::FormErr,
        ] {
            let m = response(4, "example.org.", RecordType::MX, code);
            assert!(matches!(
                parse_mx_response(&bytes(&m), 4),
                Err(DnsError::Temporary(_))
            ));
        }
    }

    #[test]
    fn wrong_id_is_rejected() {
        let mut m = response(5, "example.org.", RecordType::MX, ResponseCode::NoError);
        m.add_answer(mx_rr("example.org.", 10, "mx.example.org."));
        assert!(matches!(
            parse_mx_response(&bytes(&m), 6),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn answer_to_another_question_type_is_rejected() {
        let m = response(5, "example.org.", RecordType::A, ResponseCode::NoError);
        assert!(matches!(
            parse_mx_response(&bytes(&m), 5),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn a_query_is_not_an_answer() {
        let mut m = response(5, "example.org.", RecordType::MX, ResponseCode::NoError);
        m.metadata.message_type = MessageType::Query;
        assert!(matches!(
            parse_mx_response(&bytes(&m), 5),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn truncated_answer_is_temporary() {
        let mut m = response(8, "example.org.", RecordType::MX, ResponseCode::NoError);
        m.metadata.truncation = true;
        assert!(matches!(
            parse_mx_response(&bytes(&m), 8),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn cname_is_followed_within_the_answer() {
        let mut m = response(9, "www.example.org.", RecordType::A, ResponseCode::NoError);
        m.add_answer(Record::from_rdata(
            name("www.example.org."),
            300,
            RData::CNAME(CNAME(name("Host.Example.net."))),
        ));
        m.add_answer(a_rr("host.example.net.", [192, 0, 2, 7]));
        m.add_answer(a_rr("unrelated.example.", [192, 0, 2, 8]));
        assert_eq!(
            parse_addr_response(&bytes(&m), 9),
            Ok(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))])
        );
    }

    #[test]
    fn cname_loop_is_temporary_not_endless() {
        let mut m = response(9, "a.example.", RecordType::MX, ResponseCode::NoError);
        for (from, to) in [("a.example.", "b.example."), ("b.example.", "a.example.")] {
            m.add_answer(Record::from_rdata(
                name(from),
                300,
                RData::CNAME(CNAME(name(to))),
            ));
        }
        assert!(matches!(
            parse_mx_response(&bytes(&m), 9),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn addresses_of_the_type_asked_only() {
        let mut m = response(10, "h.example.", RecordType::AAAA, ResponseCode::NoError);
        m.add_answer(a_rr("h.example.", [192, 0, 2, 1]));
        m.add_answer(aaaa_rr("h.example.", Ipv6Addr::LOCALHOST));
        assert_eq!(
            parse_addr_response(&bytes(&m), 10),
            Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
        );
    }

    #[test]
    fn garbage_and_cut_bytes_are_temporary_never_a_panic() {
        let mut m = response(11, "example.org.", RecordType::MX, ResponseCode::NoError);
        m.add_answer(mx_rr("example.org.", 10, "mx1.example.org."));
        m.add_additional(a_rr("mx1.example.org.", [192, 0, 2, 1]));
        let good = bytes(&m);
        for n in 0..good.len() {
            let r = parse_mx_response(&good[..n], 11);
            assert!(
                matches!(r, Err(DnsError::Temporary(_))),
                "cut at {n}: {r:?}"
            );
        }
        // Every single-byte corruption parses to something or fails cleanly.
        for i in 0..good.len() {
            for v in [0x00, 0x3f, 0xc0, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_mx_response(&b, 11);
                let _ = parse_addr_response(&b, 11);
            }
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let noise: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_mx_response(&noise, 11);
        }
        assert!(matches!(
            parse_mx_response(b"", 0),
            Err(DnsError::Temporary(_))
        ));
    }

    #[test]
    fn query_names_are_made_fully_qualified() {
        assert_eq!(
            query_name("Example.org").expect("name"),
            name("example.org.")
        );
        assert_eq!(
            query_name("example.org.").expect("name"),
            name("example.org.")
        );
        assert_eq!(query_name("a..b"), Err(DnsError::NxDomain));
    }

    #[test]
    fn query_asks_for_recursion_once() {
        let q =
            encode_query(42, &name("example.org."), RecordType::MX, true, false).expect("encode");
        let m = Message::from_vec(&q).expect("decode");
        assert_eq!(m.metadata.id, 42);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].query_type(), RecordType::MX);
    }

    #[test]
    fn an_address_of_one_family_beats_a_failure_of_the_other() {
        let v4 = Ok(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        let fail = Err(temporary("x"));
        assert_eq!(combine_addresses(v4.clone(), fail.clone()), v4);
        assert_eq!(combine_addresses(Ok(vec![]), fail.clone()), fail);
        assert_eq!(combine_addresses(Ok(vec![]), Ok(vec![])), Ok(vec![]));
        assert_eq!(
            combine_addresses(Err(DnsError::NxDomain), Ok(vec![])),
            Err(DnsError::NxDomain)
        );
    }

    #[test]
    fn resolv_conf_gives_nameservers_on_port_53() {
        let dir = std::env::temp_dir().join(format!("satchel-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("resolv.conf");
        std::fs::write(
            &path,
            "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\noptions timeout:3 attempts:4 weird-option\n",
        )
        .expect("write");
        let r = DnsResolver::from_resolv_conf(&path).expect("parse");
        assert_eq!(
            r.servers(),
            &[
                "192.0.2.53:53".parse::<SocketAddr>().expect("addr"),
                "[2001:db8::53]:53".parse::<SocketAddr>().expect("addr"),
            ]
        );
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.attempts, 4);
        std::fs::write(&path, "search example.org\n").expect("write");
        assert!(DnsResolver::from_resolv_conf(&path).is_err());
        assert!(DnsResolver::from_resolv_conf(&dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
