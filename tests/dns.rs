//! satchel's resolver against a real (loopback) DNS server over real UDP and
//! TCP sockets: what delivery will see for MX and address look-ups, and how
//! failures come out as permanent or temporary.

mod common;

use common::dns::TestDns;
use satchel::dns::{DnsError, DnsResolver, Mx, Resolver};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

fn resolver(dns: &TestDns) -> DnsResolver {
    DnsResolver::new(vec![dns.addr], Duration::from_millis(200), 2)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn by_preference(mut mx: Vec<Mx>) -> Vec<Mx> {
    mx.sort_by_key(|m| m.preference);
    mx
}

#[test]
fn mx_lookup_returns_both_records() {
    let dns = TestDns::start();
    dns.mx("example.org", 10, "mx1.example.org");
    dns.mx("example.org", 20, "MX2.example.org");
    dns.a("mx1.example.org", Ipv4Addr::new(192, 0, 2, 1));
    dns.aaaa("mx1.example.org", Ipv6Addr::LOCALHOST);
    dns.a("mx2.example.org", Ipv4Addr::new(192, 0, 2, 2));
    let mx = resolver(&dns).mx("Example.ORG").expect("mx");
    assert_eq!(
        by_preference(mx),
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
fn a_name_without_mx_records_is_nodata() {
    let dns = TestDns::start();
    dns.a("example.net", Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(resolver(&dns).mx("example.net"), Ok(vec![]));
}

#[test]
fn an_unknown_name_is_nxdomain() {
    let dns = TestDns::start();
    let r = resolver(&dns);
    assert_eq!(r.mx("nowhere.example"), Err(DnsError::NxDomain));
    assert_eq!(r.addresses("nowhere.example"), Err(DnsError::NxDomain));
}

#[test]
fn servfail_is_temporary() {
    let dns = TestDns::start();
    dns.mx("broken.example", 10, "mx.broken.example");
    dns.servfail("broken.example", true);
    let err = resolver(&dns).mx("broken.example").expect_err("servfail");
    assert!(matches!(err, DnsError::Temporary(_)), "{err:?}");
    assert!(err.to_string().contains("SERVFAIL"), "{err}");
    dns.servfail("broken.example", false);
    assert_eq!(resolver(&dns).mx("broken.example").expect("mx").len(), 1);
}

#[test]
fn a_silent_server_is_a_temporary_failure_after_the_time_out() {
    let dns = TestDns::start();
    dns.mx("quiet.example", 10, "mx.quiet.example");
    dns.silent("quiet.example", true);
    let started = Instant::now();
    let err = resolver(&dns).mx("quiet.example").expect_err("silent");
    assert!(matches!(err, DnsError::Temporary(_)), "{err:?}");
    // 2 attempts of 200 ms; the bound only says "it gave up".
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(dns.queries(), 2, "one query per attempt");
}

#[test]
fn a_truncated_udp_answer_is_asked_again_over_tcp() {
    let dns = TestDns::start();
    dns.mx("big.example", 5, "mx.big.example");
    dns.a("mx.big.example", Ipv4Addr::new(192, 0, 2, 5));
    dns.truncate_udp(true);
    let mx = resolver(&dns).mx("big.example").expect("mx over tcp");
    assert_eq!(
        mx,
        vec![Mx {
            preference: 5,
            exchange: "mx.big.example".into(),
        }]
    );
    assert_eq!(dns.queries(), 2, "one UDP query, one TCP query");
}

#[test]
fn a_server_without_edns_is_asked_again_without_it() {
    let dns = TestDns::start();
    dns.no_edns(true);
    dns.a("old.example", Ipv4Addr::new(192, 0, 2, 7));
    assert_eq!(
        resolver(&dns).addresses("old.example"),
        Ok(vec![v4(192, 0, 2, 7)])
    );
}

#[test]
fn addresses_gives_ipv4_then_ipv6() {
    let dns = TestDns::start();
    dns.aaaa(
        "host.example",
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
    );
    dns.a("host.example", Ipv4Addr::new(192, 0, 2, 10));
    dns.a("host.example", Ipv4Addr::new(192, 0, 2, 11));
    let r = resolver(&dns);
    assert_eq!(
        r.addresses("HOST.example."),
        Ok(vec![
            v4(192, 0, 2, 10),
            v4(192, 0, 2, 11),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ])
    );
    dns.mx("mailonly.example", 10, "mx.example");
    assert_eq!(r.addresses("mailonly.example"), Ok(vec![]));
}

#[test]
fn null_mx_comes_back_with_an_empty_exchange() {
    let dns = TestDns::start();
    dns.mx("nomail.example", 0, ".");
    assert_eq!(
        resolver(&dns).mx("nomail.example"),
        Ok(vec![Mx {
            preference: 0,
            exchange: String::new(),
        }])
    );
}

#[test]
fn a_dead_first_server_is_skipped_for_the_next() {
    let dead = TestDns::start();
    dead.silent("example.org", true);
    let live = TestDns::start();
    live.mx("example.org", 10, "mx.example.org");
    let r = DnsResolver::new(vec![dead.addr, live.addr], Duration::from_millis(200), 1);
    assert_eq!(r.mx("example.org").expect("mx").len(), 1);
}

#[test]
fn txt_and_ptr_answers_and_a_cache_that_asks_once() {
    let dns = TestDns::start();
    dns.txt("example.test", "v=spf1 -all");
    dns.ptr(v4(192, 0, 2, 7), "host.example.test");
    let plain = resolver(&dns);
    assert_eq!(plain.txt("example.test").unwrap(), ["v=spf1 -all"]);
    assert_eq!(plain.ptr(v4(192, 0, 2, 7)).unwrap(), ["host.example.test"]);
    let before = dns.queries();
    plain.txt("example.test").unwrap();
    assert_eq!(
        dns.queries(),
        before + 1,
        "the plain resolver asks each time"
    );
    let cached = resolver(&dns).cached();
    let before = dns.queries();
    for _ in 0..3 {
        assert_eq!(cached.txt("Example.TEST").unwrap(), ["v=spf1 -all"]);
        assert_eq!(cached.txt("nowhere.test"), Err(DnsError::NxDomain));
    }
    assert_eq!(dns.queries(), before + 2, "one question per name and type");
    // Temporary failures are not kept.
    dns.servfail("broken.test", true);
    let before = dns.queries();
    for _ in 0..2 {
        assert!(matches!(
            cached.txt("broken.test"),
            Err(DnsError::Temporary(_))
        ));
    }
    assert!(dns.queries() >= before + 2);
}
