//! Any text as the SPF record of every name asked about (so includes and
//! redirects come back to it), and as a DNS blocklist zone: a verdict or
//! a refusal, never a panic, and no more DNS questions than RFC 7208's
//! limits allow.
#![no_main]
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use libfuzzer_sys::fuzz_target;
use satchel::dns::{DnsError, Mx, Resolver};
use satchel::guard::{dnsbl, spf};

struct Echo<'a> {
    record: &'a str,
    asked: AtomicU32,
}

impl Echo<'_> {
    fn ask(&self) {
        self.asked.fetch_add(1, Ordering::Relaxed);
    }
}

impl Resolver for Echo<'_> {
    fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
        self.ask();
        Ok(vec![Mx { preference: 1, exchange: "mx.example.test".into() }])
    }
    fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.ask();
        Ok(vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()])
    }
    fn txt(&self, _: &str) -> Result<Vec<String>, DnsError> {
        self.ask();
        Ok(vec![self.record.to_string()])
    }
    fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
        self.ask();
        Ok(vec!["host.example.test".into()])
    }
}

fuzz_target!(|s: &str| {
    let dns = Echo { record: s, asked: AtomicU32::new(0) };
    for ip in ["192.0.2.1", "2001:db8::2"] {
        let q = spf::Query {
            ip: ip.parse().unwrap(),
            sender: "user@example.test",
            helo: "helo.example.test",
            receiver: "mx.test",
        };
        let v = spf::check_host(&q, "example.test", &dns);
        let _ = spf::received_spf(&v, &q, "mailfrom");
    }
    // Ten terms, each an mx with ten names (two families), the records,
    // a PTR and its names, an explanation: a generous bound.
    assert!(dns.asked.load(Ordering::Relaxed) < 600, "{}", dns.asked.load(Ordering::Relaxed));
    if let Ok(z) = dnsbl::Zone::parse(s) {
        assert_eq!(dnsbl::Zone::parse(&z.to_string()).map(|p| p.to_string()), Ok(z.to_string()));
    }
});
