//! SPF evaluation against an in-memory zone, on the lines of RFC 7208
//! Appendix A (one domain, its MX hosts and PTR names) and the macro
//! examples of §7.4.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use super::*;
use crate::dns::Mx;

#[derive(Default)]
struct Zone {
    txt: Mutex<HashMap<String, Vec<String>>>,
    addrs: HashMap<String, Vec<IpAddr>>,
    mx: HashMap<String, Vec<Mx>>,
    ptr: HashMap<IpAddr, Vec<String>>,
    broken: Vec<String>,
    queries: AtomicU32,
}

impl Zone {
    fn exists(&self, name: &str) -> bool {
        self.txt.lock().unwrap().contains_key(name)
            || self.addrs.contains_key(name)
            || self.mx.contains_key(name)
    }

    fn answer<T: Clone>(&self, name: &str, found: Option<&Vec<T>>) -> Result<Vec<T>, DnsError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if self.broken.iter().any(|b| b == name) {
            return Err(DnsError::Temporary("SERVFAIL".into()));
        }
        match found {
            Some(v) => Ok(v.clone()),
            None if self.exists(name) => Ok(Vec::new()),
            None => Err(DnsError::NxDomain),
        }
    }

    fn set(&self, name: &str, record: &str) {
        self.txt
            .lock()
            .unwrap()
            .insert(name.into(), vec![record.into()]);
    }
}

impl Resolver for Zone {
    fn mx(&self, d: &str) -> Result<Vec<Mx>, DnsError> {
        self.answer(d, self.mx.get(d))
    }
    fn addresses(&self, h: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.answer(h, self.addrs.get(h))
    }
    fn txt(&self, n: &str) -> Result<Vec<String>, DnsError> {
        let found = self.txt.lock().unwrap().get(n).cloned();
        self.answer(n, found.as_ref())
    }
    fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        self.ptr.get(&ip).cloned().ok_or(DnsError::NxDomain)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// example.test of Appendix A: two addresses of its own, amy and bob,
/// MX hosts mail-a and mail-b, and PTR names for all but 10.0.0.4,
/// whose PTR name (bob) does not resolve back to it.
fn appendix_a() -> Zone {
    let mut z = Zone::default();
    for (name, addrs) in [
        ("example.test", vec!["192.0.2.10", "192.0.2.11"]),
        ("amy.example.test", vec!["192.0.2.65"]),
        ("bob.example.test", vec!["192.0.2.66"]),
        ("mail-a.example.test", vec!["192.0.2.129"]),
        ("mail-b.example.test", vec!["192.0.2.130"]),
        ("mail-c.example.org", vec!["192.0.2.140"]),
    ] {
        z.addrs
            .insert(name.into(), addrs.into_iter().map(ip).collect());
    }
    let mx = |e: &str| Mx {
        preference: 10,
        exchange: e.into(),
    };
    z.mx.insert(
        "example.test".into(),
        vec![mx("mail-a.example.test"), mx("mail-b.example.test")],
    );
    z.mx.insert("example.org".into(), vec![mx("mail-c.example.org")]);
    for (addr, name) in [
        ("192.0.2.10", "example.test"),
        ("192.0.2.11", "example.test"),
        ("192.0.2.65", "amy.example.test"),
        ("192.0.2.66", "bob.example.test"),
        ("192.0.2.129", "mail-a.example.test"),
        ("192.0.2.130", "mail-b.example.test"),
        ("192.0.2.140", "mail-c.example.org"),
        ("10.0.0.4", "bob.example.test"),
    ] {
        z.ptr.insert(ip(addr), vec![name.into()]);
    }
    z
}

const HOSTS: [&str; 8] = [
    "192.0.2.10",
    "192.0.2.11",
    "192.0.2.65",
    "192.0.2.66",
    "192.0.2.129",
    "192.0.2.130",
    "192.0.2.140",
    "10.0.0.4",
];

fn result(z: &Zone, client: &str, sender: &str) -> Verdict {
    let q = Query {
        ip: ip(client),
        sender,
        helo: "client.test",
        receiver: "mx.satchel.test",
    };
    let domain = sender.rsplit_once('@').map(|(_, d)| d).unwrap_or(sender);
    check_host(&q, domain, z)
}

/// The clients of HOSTS that `record` lets send for example.test.
fn passing(record: &str) -> Vec<&'static str> {
    let z = appendix_a();
    z.set("example.test", record);
    HOSTS
        .iter()
        .copied()
        .filter(|h| result(&z, h, "user@example.test").result == SpfResult::Pass)
        .collect()
}

#[test]
fn appendix_a_mechanisms() {
    assert_eq!(passing("v=spf1 +all").len(), HOSTS.len());
    assert_eq!(passing("v=spf1 a -all"), ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(passing("v=spf1 a:example.org -all"), Vec::<&str>::new());
    assert_eq!(passing("v=spf1 mx -all"), ["192.0.2.129", "192.0.2.130"]);
    assert_eq!(passing("v=spf1 mx:example.org -all"), ["192.0.2.140"]);
    assert_eq!(
        passing("v=spf1 mx mx:example.org -all"),
        ["192.0.2.129", "192.0.2.130", "192.0.2.140"]
    );
    assert_eq!(passing("v=spf1 mx/30 -all"), ["192.0.2.129", "192.0.2.130"]);
    assert_eq!(passing("v=spf1 a/26 -all"), ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(passing("v=spf1 a/24 -all"), &HOSTS[..7]);
    assert_eq!(
        passing("v=spf1 ptr -all"),
        [
            "192.0.2.10",
            "192.0.2.11",
            "192.0.2.65",
            "192.0.2.66",
            "192.0.2.129",
            "192.0.2.130"
        ]
    );
    assert_eq!(
        passing("v=spf1 ip4:192.0.2.128/28 -all"),
        ["192.0.2.129", "192.0.2.130", "192.0.2.140"]
    );
    assert_eq!(
        passing("v=spf1 exists:%{ir}.%{l1r+}._spf.%{d} -all"),
        Vec::<&str>::new()
    );
}

#[test]
fn qualifiers_and_defaults() {
    let z = appendix_a();
    for (record, want) in [
        ("v=spf1 -all", SpfResult::Fail),
        ("v=spf1 ~all", SpfResult::SoftFail),
        ("v=spf1 ?all", SpfResult::Neutral),
        ("v=spf1", SpfResult::Neutral),
        ("v=spf1 ip4:198.51.100.0/24", SpfResult::Neutral),
        ("v=spf10 -all", SpfResult::None),
        ("spf2.0/pra -all", SpfResult::None),
        ("v=spf1 -all moo=cow", SpfResult::Fail),
        ("V=SPF1 -ALL", SpfResult::Fail),
    ] {
        z.set("example.test", record);
        assert_eq!(
            result(&z, "10.0.0.4", "u@example.test").result,
            want,
            "{record}"
        );
    }
    assert_eq!(
        result(&z, "10.0.0.4", "u@nowhere.test").result,
        SpfResult::None
    );
}

#[test]
fn syntax_errors_are_permerrors() {
    let z = appendix_a();
    for record in [
        "v=spf1 a: -all",
        "v=spf1 ip4:192.0.2.1/33",
        "v=spf1 ip4:192.0.2.1/08",
        "v=spf1 ip6:192.0.2.1",
        "v=spf1 ip4",
        "v=spf1 foo -all",
        "v=spf1 include -all",
        "v=spf1 all:x",
        "v=spf1 redirect=a.test redirect=b.test",
        "v=spf1 exists:%{x}.test",
        "v=spf1 exists:%{d0}.test",
        "v=spf1 exists:%{d",
        "v=spf1 a:%",
    ] {
        z.set("example.test", record);
        assert_eq!(
            result(&z, "10.0.0.4", "u@example.test").result,
            SpfResult::PermError,
            "{record}"
        );
    }
    z.txt.lock().unwrap().insert(
        "example.test".into(),
        vec!["v=spf1 -all".into(), "v=spf1 +all".into()],
    );
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::PermError,
        "two records"
    );
}

#[test]
fn include_redirect_and_explanations() {
    let z = appendix_a();
    z.set("example.test", "v=spf1 include:partner.test -all");
    z.set("partner.test", "v=spf1 ip4:10.0.0.0/8 -all");
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::Pass
    );
    assert_eq!(
        result(&z, "192.0.2.10", "u@example.test").result,
        SpfResult::Fail,
        "the include's -all is no match"
    );
    z.set("example.test", "v=spf1 include:norecord.example.test -all");
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::PermError
    );
    z.set(
        "example.test",
        "v=spf1 a:amy.example.test redirect=partner.test",
    );
    assert_eq!(
        result(&z, "192.0.2.65", "u@example.test").result,
        SpfResult::Pass
    );
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::Pass,
        "through the redirect"
    );
    assert_eq!(
        result(&z, "192.0.2.10", "u@example.test").result,
        SpfResult::Fail
    );
    z.set("example.test", "v=spf1 redirect=partner.test ?all");
    assert_eq!(
        result(&z, "192.0.2.10", "u@example.test").result,
        SpfResult::Neutral,
        "all wins over redirect"
    );
    z.set("example.test", "v=spf1 -all exp=explain._spf.%{d}");
    z.set(
        "explain._spf.example.test",
        "%{i} may not send for %{d}; ask %{r}",
    );
    let v = result(&z, "10.0.0.4", "u@example.test");
    assert_eq!(v.result, SpfResult::Fail);
    assert_eq!(
        v.detail,
        "10.0.0.4 may not send for example.test; ask mx.satchel.test"
    );
}

#[test]
fn limits_end_loops_and_floods() {
    let z = appendix_a();
    z.set("example.test", "v=spf1 include:example.test -all");
    let v = result(&z, "10.0.0.4", "u@example.test");
    assert_eq!(v.result, SpfResult::PermError, "{v:?}");
    assert!(
        z.queries.load(Ordering::SeqCst) < 30,
        "the loop ended early"
    );
    let eleven = format!("v=spf1 {}-all", "a:amy.example.test ".repeat(11));
    z.set("example.test", &eleven);
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::PermError
    );
    let ten = format!("v=spf1 {}-all", "a:amy.example.test ".repeat(10));
    z.set("example.test", &ten);
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::Fail
    );
    // A hundred mechanisms that need no DNS are fine.
    let many: String = (0..100).map(|i| format!("ip4:198.51.100.{i} ")).collect();
    z.set("example.test", &format!("v=spf1 {many}-all"));
    assert_eq!(
        result(&z, "198.51.100.99", "u@example.test").result,
        SpfResult::Pass
    );
    // Three look-ups that find nothing.
    z.set(
        "example.test",
        "v=spf1 a:n1.example.test a:n2.example.test a:n3.example.test -all",
    );
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::PermError
    );
    z.set(
        "example.test",
        "v=spf1 a:n1.example.test a:n2.example.test -all",
    );
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::Fail
    );
}

#[test]
fn dns_failures_are_temperrors() {
    let mut z = appendix_a();
    z.broken.push("example.test".into());
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::TempError
    );
    let mut z = appendix_a();
    z.broken.push("partner.test".into());
    z.set("example.test", "v=spf1 include:partner.test -all");
    assert_eq!(
        result(&z, "10.0.0.4", "u@example.test").result,
        SpfResult::TempError
    );
}

#[test]
fn macro_examples_of_section_7_4() {
    let q = Query {
        ip: ip("192.0.2.3"),
        sender: "strong-bad@email.example.com",
        helo: "h.test",
        receiver: "r.test",
    };
    let m = Macros {
        q: &q,
        domain: "email.example.com",
    };
    for (spec, want) in [
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        (
            "%{ir}.%{v}._spf.%{d2}",
            "3.2.0.192.in-addr._spf.example.com",
        ),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        (
            "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
        ),
        (
            "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}",
            "3.2.0.192.in-addr.strong.lp._spf.example.com",
        ),
        (
            "%{d2}.trusted-domains.example.net",
            "example.com.trusted-domains.example.net",
        ),
        ("%%%_%-", "% %20"),
        ("%{S}", "strong-bad%40email.example.com"),
    ] {
        assert_eq!(expand(spec, &m, false).unwrap(), want, "{spec}");
    }
    let q6 = Query {
        ip: ip("2001:db8::cb01"),
        ..q
    };
    let m6 = Macros {
        q: &q6,
        domain: "email.example.com",
    };
    assert_eq!(
        expand("%{ir}.%{v}._spf.%{d2}", &m6, false).unwrap(),
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    );
    assert!(expand("%{c}", &m, false).is_err(), "c only in explanations");
    assert_eq!(expand("%{c}", &m, true).unwrap(), "192.0.2.3");
}

#[test]
fn the_header_names_the_result() {
    let q = Query {
        ip: ip("192.0.2.3"),
        sender: "a@example.test",
        helo: "h.test",
        receiver: "mx.test",
    };
    let v = Verdict {
        result: SpfResult::Pass,
        detail: String::new(),
    };
    let h = received_spf(&v, &q, "mailfrom");
    assert_eq!(
        h,
        "Received-SPF: pass (mx.test: domain of a@example.test designates 192.0.2.3 as permitted sender)\r\n\
         \tclient-ip=192.0.2.3; envelope-from=\"a@example.test\"; helo=h.test;\r\n\
         \tidentity=mailfrom; receiver=mx.test;\r\n"
    );
}
