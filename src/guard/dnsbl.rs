//! DNS blocklists (RFC 5782): a client address is listed in a zone when
//! the reversed address under the zone has an A record (in 127.0.0.0/8, or
//! matching the zone's reply filter); its TXT record says why. Zones are
//! asked side by side, once per connection; a look-up that fails lists
//! nobody (fail open: a DNS outage must not turn mail away).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::dns::{DnsError, Resolver};

/// Longest blocklist text quoted back to the client.
const MAX_REASON: usize = 200;

/// One `dnsbl_zones` item: `zone` or `zone=FILTER`, the filter an IPv4
/// address whose octets may be `[a..b;c]` sets, as Postfix's
/// `reject_rbl_client zone=127.0.0.[2..11]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    filter: Option<[Vec<(u8, u8)>; 4]>,
    filter_text: String,
}

impl Zone {
    pub fn parse(text: &str) -> Result<Zone, String> {
        let (name, filter_text) = match text.split_once('=') {
            Some((n, f)) => (n, Some(f)),
            None => (text, None),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 200 || !name.contains('.') || !name.split('.').all(label_ok) {
            return Err(format!("'{name}' is not a DNS zone name"));
        }
        let filter = match filter_text {
            None => None,
            Some(f) => Some(parse_filter(f).ok_or_else(|| {
                format!("'{f}' is not a reply filter (an IPv4 address, octets may be [a..b;c])")
            })?),
        };
        Ok(Zone {
            name,
            filter,
            filter_text: filter_text.unwrap_or_default().to_string(),
        })
    }

    /// Does this answer of the zone list the client?
    fn matches(&self, a: Ipv4Addr) -> bool {
        match &self.filter {
            // RFC 5782 §2.1: listings are in 127.0.0.0/8; anything else
            // (a wildcard, a domain for sale) is not a listing.
            None => a.octets()[0] == 127,
            Some(f) => a
                .octets()
                .iter()
                .zip(f.iter())
                .all(|(o, set)| set.iter().any(|&(lo, hi)| (lo..=hi).contains(o))),
        }
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.filter {
            None => f.write_str(&self.name),
            Some(_) => write!(f, "{}={}", self.name, self.filter_text),
        }
    }
}

/// `127.0.0.[2..11;20]` -> per octet, the ranges it allows.
fn parse_filter(text: &str) -> Option<[Vec<(u8, u8)>; 4]> {
    // Split at the dots between octets, not those of `a..b` in a set.
    let mut octets = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '.' if depth == 0 => {
                octets.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    octets.push(&text[start..]);
    if octets.len() != 4 {
        return None;
    }
    let mut out: [Vec<(u8, u8)>; 4] = Default::default();
    for (slot, o) in out.iter_mut().zip(octets) {
        *slot = match o.strip_prefix('[').and_then(|o| o.strip_suffix(']')) {
            Some(set) => set
                .split(';')
                .map(parse_range)
                .collect::<Option<Vec<_>>>()?,
            None => vec![parse_range(o)?],
        };
    }
    Some(out)
}

fn parse_range(text: &str) -> Option<(u8, u8)> {
    match text.split_once("..") {
        Some((a, b)) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
        None => text.parse().ok().map(|n| (n, n)),
    }
}

/// The name to ask for `ip` under `zone` (RFC 5782 §2.1: reversed
/// octets; §2.4: reversed nibbles for IPv6).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::with_capacity(64 + zone.len());
            for byte in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str(zone);
            s
        }
    }
}

/// A listing: the zone and the reason its TXT record gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub zone: String,
    pub reason: Option<String>,
}

/// The first zone (in the configured order) that lists `ip`; zones are
/// asked in parallel. A failed look-up is logged and lists nobody.
pub fn check(zones: &[Zone], ip: IpAddr, dns: &dyn Resolver) -> Option<Listing> {
    let results: Vec<Option<Listing>> = std::thread::scope(|s| {
        let handles: Vec<_> = zones
            .iter()
            .map(|z| s.spawn(move || check_zone(z, ip, dns)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    results.into_iter().flatten().next()
}

fn check_zone(zone: &Zone, ip: IpAddr, dns: &dyn Resolver) -> Option<Listing> {
    let name = query_name(ip, &zone.name);
    let answers = match dns.ips(&name, false) {
        Ok(a) => a,
        Err(DnsError::NxDomain) => return None,
        Err(DnsError::Temporary(why)) => {
            log::warn!(
                "warning: dnsbl {}: look-up of [{ip}] failed ({why}); not rejecting",
                zone.name
            );
            return None;
        }
    };
    let listed = answers.iter().any(|a| match a {
        IpAddr::V4(v4) => zone.matches(*v4),
        IpAddr::V6(_) => false,
    });
    if !listed {
        return None;
    }
    let reason = dns
        .txt(&name)
        .ok()
        .and_then(|t| t.into_iter().next())
        .map(|t| printable(&t));
    Some(Listing {
        zone: zone.name.clone(),
        reason,
    })
}

/// A zone's text as it may go into a reply: printable ASCII, bounded.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_REASON)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_the_address() {
        let v4: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(query_name(v4, "bl.test"), "99.2.0.192.bl.test");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            query_name(v6, "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }

    #[test]
    fn filters_select_the_listing_codes() {
        let plain = Zone::parse("zen.test").unwrap();
        assert!(plain.matches(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(!plain.matches(Ipv4Addr::new(192, 0, 2, 1)));
        let exact = Zone::parse("bl.test=127.0.0.2").unwrap();
        assert!(exact.matches(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(!exact.matches(Ipv4Addr::new(127, 0, 0, 3)));
        let sets = Zone::parse("bl.test=127.0.0.[2..4;10]").unwrap();
        for (o, want) in [(1, false), (2, true), (4, true), (5, false), (10, true)] {
            assert_eq!(sets.matches(Ipv4Addr::new(127, 0, 0, o)), want, "{o}");
        }
        assert_eq!(sets.to_string(), "bl.test=127.0.0.[2..4;10]");
    }

    #[test]
    fn bad_zones_and_filters_are_refused() {
        for bad in [
            "",
            "nodot",
            "bl..test",
            "bl.test=127.0.0",
            "bl.test=127.0.0.[4..2]",
            "bl.test=1.2.3.999",
            "b l.test",
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons_are_printable_and_bounded() {
        let r = printable(&format!("bad\r\nhost{}", "x".repeat(500)));
        assert!(r.starts_with("bad??host"));
        assert_eq!(r.len(), MAX_REASON);
    }
}
