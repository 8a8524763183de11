//! A tiny authoritative DNS server for the hermetic tests: answers MX, A,
//! AAAA, TXT and PTR questions from an in-memory zone over UDP and TCP on one loopback
//! port, and can be told to fail (SERVFAIL), to stay silent, or to truncate
//! every UDP answer so that clients must come back over TCP. Records can be
//! changed while it runs. Built with hickory-proto, the same wire format
//! code satchel uses, but sharing nothing else with `satchel::dns`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, TLSA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

#[derive(Default)]
struct Zone {
    /// Lower-case name without the trailing dot -> its records.
    records: HashMap<String, Vec<RData>>,
    servfail: HashSet<String>,
    silent: HashSet<String>,
    truncate_udp: bool,
    /// Answers any query with an OPT record FORMERR, as a server from
    /// before EDNS would.
    no_edns: bool,
    /// Sets AD, as a validating resolver does for signed data, on answers
    /// to queries that ask for it (AD or DO), but for the `insecure` names.
    validating: bool,
    insecure: HashSet<String>,
}

struct Shared {
    zone: Mutex<Zone>,
    queries: AtomicUsize,
    stop: AtomicBool,
}

pub struct TestDns {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let fq = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    Name::from_ascii(&fq).expect("test DNS name")
}

impl TestDns {
    pub fn start() -> TestDns {
        let (udp, tcp) = bind_pair();
        let addr = udp.local_addr().expect("udp addr");
        let shared = Arc::new(Shared {
            zone: Mutex::new(Zone::default()),
            queries: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let udp_thread = std::thread::spawn(move || serve_udp(udp, s));
        let s = shared.clone();
        let tcp_thread = std::thread::spawn(move || serve_tcp(tcp, s));
        TestDns {
            addr,
            shared,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.shared.zone.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, name: &str, data: RData) {
        self.zone().records.entry(key(name)).or_default().push(data);
    }

    /// An MX record; `exchange` "." is the null MX (RFC 7505).
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) {
        self.add(domain, RData::MX(MX::new(preference, fqdn(exchange))));
    }

    pub fn a(&self, host: &str, ip: Ipv4Addr) {
        self.add(host, RData::A(A(ip)));
    }

    pub fn aaaa(&self, host: &str, ip: Ipv6Addr) {
        self.add(host, RData::AAAA(AAAA(ip)));
    }

    /// A TXT record of one character-string (split in 255-octet pieces).
    #[allow(dead_code)]
    pub fn txt(&self, name: &str, text: &str) {
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
        self.add(name, RData::TXT(TXT::from_bytes(pieces)));
    }

    /// The PTR record of `ip`'s reverse name.
    #[allow(dead_code)]
    pub fn ptr(&self, ip: std::net::IpAddr, host: &str) {
        let rev = Name::from(ip).to_ascii();
        self.add(&rev, RData::PTR(PTR(fqdn(host))));
    }

    /// A TLSA record (RFC 6698): usage, selector, matching type, data.
    #[allow(dead_code)]
    pub fn tlsa(&self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) {
        let t = TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data.to_vec(),
        );
        self.add(name, RData::TLSA(t));
    }

    /// Answer as a validating resolver: AD on everything but `insecure`
    /// names (when the query asks with AD or DO).
    #[allow(dead_code)]
    pub fn validating(&self, on: bool) {
        self.zone().validating = on;
    }

    #[allow(dead_code)]
    pub fn insecure(&self, name: &str) {
        self.zone().insecure.insert(key(name));
    }

    /// Answer SERVFAIL for this name.
    pub fn servfail(&self, domain: &str, on: bool) {
        let mut z = self.zone();
        if on {
            z.servfail.insert(key(domain));
        } else {
            z.servfail.remove(&key(domain));
        }
    }

    /// Never answer queries for this name (the client times out).
    pub fn silent(&self, domain: &str, on: bool) {
        let mut z = self.zone();
        if on {
            z.silent.insert(key(domain));
        } else {
            z.silent.remove(&key(domain));
        }
    }

    /// Answer UDP with the TC bit and no records, forcing TCP.
    pub fn truncate_udp(&self, on: bool) {
        self.zone().truncate_udp = on;
    }

    pub fn no_edns(&self, on: bool) {
        self.zone().no_edns = on;
    }

    /// Number of queries seen (UDP and TCP).
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both blocking loops so they see the flag.
        if let Ok(s) = UdpSocket::bind("127.0.0.1:0") {
            let _ = s.send_to(b"", self.addr);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// UDP on an ephemeral port, then TCP on the same port; another process may
/// hold that TCP port, so try again with a new one.
fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let addr = udp.local_addr().expect("udp addr");
        if let Ok(tcp) = TcpListener::bind(addr) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = vec![0u8; 65535];
    while !shared.stop.load(Ordering::SeqCst) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(_) => continue,
        };
        if let Some(reply) = answer(&shared, &buf[..n], true) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        // Several length-prefixed queries may come on one connection.
        loop {
            let mut len = [0u8; 2];
            if conn.read_exact(&mut len).is_err() {
                break;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if conn.read_exact(&mut query).is_err() {
                break;
            }
            let Some(reply) = answer(&shared, &query, false) else {
                break; // silent: hang up without a word
            };
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if conn.write_all(&framed).is_err() {
                break;
            }
        }
    }
}

/// The wire answer to one query, or None to stay silent.
fn answer(shared: &Shared, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(bytes).ok()?;
    let question = req.queries.first()?.clone();
    shared.queries.fetch_add(1, Ordering::SeqCst);
    let zone = shared.zone.lock().unwrap_or_else(|e| e.into_inner());
    let name = key(&question.name().to_ascii());
    if zone.silent.contains(&name) {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    let asks =
        req.metadata.authentic_data || req.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
    resp.metadata.authentic_data = zone.validating && asks && !zone.insecure.contains(&name);
    resp.add_query(question.clone());
    if zone.no_edns && req.edns.is_some() {
        resp.metadata.response_code = ResponseCode::FormErr;
    } else if zone.servfail.contains(&name) {
        resp.metadata.response_code = ResponseCode::ServFail;
        resp.metadata.authoritative = false;
    } else if udp && zone.truncate_udp {
        resp.metadata.truncation = true;
    } else {
        match zone.records.get(&name) {
            None => resp.metadata.response_code = ResponseCode::NXDomain,
            Some(records) => {
                let owner = question.name().clone();
                for data in records
                    .iter()
                    .filter(|d| d.record_type() == question.query_type())
                {
                    resp.add_answer(Record::from_rdata(owner.clone(), 300, data.clone()));
                    if let RData::MX(mx) = data {
                        add_glue(&zone, &mut resp, &mx.exchange);
                    }
                }
            }
        }
    }
    resp.to_vec().ok()
}

/// A and AAAA records of an MX exchange, when the zone has them.
fn add_glue(zone: &Zone, resp: &mut Message, exchange: &Name) {
    let Some(records) = zone.records.get(&key(&exchange.to_ascii())) else {
        return;
    };
    for data in records {
        if matches!(data.record_type(), RecordType::A | RecordType::AAAA) {
            resp.add_additional(Record::from_rdata(exchange.clone(), 300, data.clone()));
        }
    }
}
