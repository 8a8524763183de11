//! The checks after DATA, before the 250: DKIM signatures verified as the
//! message streamed in (`Verifier`), DMARC from them and the transaction's
//! SPF result, and the one `Authentication-Results:` field (RFC 8601)
//! that says what was found. Without the `tls` feature (no `ring`) there
//! is no verifier: `Verifier` is then an empty stand-in and the stage has
//! nothing to say.

use super::dmarc::{self, DmarcResult, Policy};
use super::{DmarcPolicy, Guard, Quarantine};
use crate::smtp::reply::{Enhanced, Reply};

/// What the DATA stage decided: a refusal instead of the 250, the header
/// fields to put at the top of the message, and whether to hold it.
#[derive(Debug, Default)]
pub struct DataVerdict {
    pub refusal: Option<Reply>,
    pub header: String,
    pub hold: bool,
}

/// DKIM verification of one message, fed as it arrives.
#[cfg(feature = "tls")]
pub struct Verifier(crate::dkim::verify::Verifier);

#[cfg(not(feature = "tls"))]
pub struct Verifier;

/// What the From: field says for DMARC (RFC 7489 §6.6.1). Only the
/// verifier (with `ring`) reads it.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
enum Author {
    /// No From: address at all.
    Nobody,
    /// One domain (one address, or several of one domain).
    One(String),
    /// Addresses of different domains.
    Several,
    /// The header section was too large to read.
    TooLarge,
}

/// One signature's result, as Authentication-Results names it.
struct Signed {
    result: String,
    pass: bool,
    domain: String,
    selector: String,
    b: String,
    why: String,
}

impl Verifier {
    pub fn feed(&mut self, _data: &[u8]) {
        #[cfg(feature = "tls")]
        self.0.feed(_data);
    }

    /// The From: domain and the signatures' results; without `ring` no
    /// signature can be checked, and DMARC is not evaluated.
    #[cfg(feature = "tls")]
    fn results(self, dns: &dyn crate::dns::Resolver) -> Option<(Author, Vec<Signed>)> {
        let mut domains = self.0.from_domains();
        domains.dedup();
        let from = match domains.as_slice() {
            _ if self.0.gave_up() => Author::TooLarge,
            [] => Author::Nobody,
            [one] => Author::One(one.clone()),
            _ => Author::Several,
        };
        let signed = self.0.finish(dns).into_iter().map(|o| Signed {
            result: o.result.to_string(),
            pass: o.result == crate::dkim::verify::DkimResult::Pass,
            domain: o.domain,
            selector: o.selector,
            b: o.b,
            why: o.why,
        });
        Some((from, signed.collect()))
    }

    #[cfg(not(feature = "tls"))]
    fn results(self, _dns: &dyn crate::dns::Resolver) -> Option<(Author, Vec<Signed>)> {
        None
    }
}

impl Guard {
    /// A verifier for this message, when DKIM or DMARC results are wanted
    /// (untrusted clients only; the caller decides that).
    pub fn verifier(&self) -> Option<Verifier> {
        let wanted = (self.dkim_verify || self.dmarc != DmarcPolicy::None) && self.dns.is_some();
        #[cfg(feature = "tls")]
        return wanted.then(|| Verifier(Default::default()));
        #[cfg(not(feature = "tls"))]
        return wanted.then_some(Verifier);
    }

    /// The name of our Authentication-Results: fields.
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// Results and verdict for a message whose data `v` has seen; `helo`:
    /// the SPF result is for the HELO identity (a null sender).
    pub fn data_stage(
        &self,
        v: Verifier,
        spf: &Option<(super::spf::SpfResult, String)>,
        helo: bool,
    ) -> DataVerdict {
        let Some(dns) = self.dns.as_deref() else {
            return DataVerdict::default();
        };
        let Some((from, dkim)) = v.results(dns) else {
            return DataVerdict::default();
        };
        let mut verdict = DataVerdict::default();
        if let Author::TooLarge = from {
            // Neither verified nor cleaned of forged results: not taken.
            let text = "Message header section too large to check";
            verdict.refusal = Some(Reply::new(552, Enhanced(5, 3, 4), text));
            return verdict;
        }
        let mut parts = Vec::new();
        if let Some((result, domain)) = spf {
            let property = if helo { "smtp.helo" } else { "smtp.mailfrom" };
            parts.push(format!("spf={result} {property}={}", clean(domain)));
        }
        parts.extend(dkim.iter().map(dkim_part));
        if dkim.is_empty() {
            parts.push("dkim=none".into());
        }
        if self.dmarc != DmarcPolicy::None {
            parts.extend(self.dmarc_stage(&from, &dkim, spf, dns, &mut verdict));
        }
        verdict.header = format!(
            "Authentication-Results: {};\r\n\t{}\r\n{}",
            self.authserv_id,
            parts.join(";\r\n\t"),
            verdict.header
        );
        verdict
    }

    /// DMARC for the message's author: its Authentication-Results part.
    fn dmarc_stage(
        &self,
        from: &Author,
        dkim: &[Signed],
        spf: &Option<(super::spf::SpfResult, String)>,
        dns: &dyn crate::dns::Resolver,
        verdict: &mut DataVerdict,
    ) -> Option<String> {
        let from = match from {
            Author::One(d) => d,
            Author::Nobody | Author::TooLarge => return None,
            Author::Several => {
                if self.dmarc == DmarcPolicy::Honour {
                    let text = "From: names authors of several domains";
                    verdict.refusal = Some(Reply::new(550, Enhanced(5, 7, 1), text));
                }
                return Some("dmarc=permerror (From: names several domains)".into());
            }
        };
        let passed: Vec<String> = dkim
            .iter()
            .filter(|o| o.pass)
            .map(|o| o.domain.clone())
            .collect();
        let spf_pass = match spf {
            Some((super::spf::SpfResult::Pass, d)) => Some(d.as_str()),
            _ => None,
        };
        let evidence = dmarc::Evidence {
            from_domain: from,
            spf_pass,
            dkim_pass: &passed,
        };
        let d = dmarc::evaluate(&evidence, dns);
        self.apply_dmarc(&d, verdict);
        Some(format!(
            "dmarc={} (p={}) header.from={}",
            d.result,
            d.policy.name(),
            clean(from)
        ))
    }

    /// dmarc_policy = honour: p=reject refuses, p=quarantine holds or tags.
    fn apply_dmarc(&self, d: &dmarc::Verdict, verdict: &mut DataVerdict) {
        if d.result != DmarcResult::Fail || self.dmarc != DmarcPolicy::Honour {
            return;
        }
        log::info!(
            "dmarc: {} fails its p={} policy",
            d.from_domain,
            d.policy.name()
        );
        match (d.policy, &self.quarantine) {
            (Policy::Reject, _) => {
                let text = format!(
                    "Email rejected per DMARC policy for {}",
                    clean(&d.from_domain)
                );
                verdict.refusal = Some(Reply::new(550, Enhanced(5, 7, 1), text));
            }
            (Policy::Quarantine, Quarantine::Hold) => verdict.hold = true,
            (Policy::Quarantine, Quarantine::Header(h)) => verdict.header = format!("{h}\r\n"),
            (Policy::None, _) => {}
        }
    }
}

/// One signature's `dkim=` part.
fn dkim_part(o: &Signed) -> String {
    let why = match o.why.as_str() {
        "" => String::new(),
        w => format!(" ({})", clean(w)),
    };
    format!(
        "dkim={}{why} header.d={} header.s={} header.b={}",
        o.result,
        clean(&o.domain),
        clean(&o.selector),
        clean(&o.b)
    )
}

/// A value from the message or the DNS as it may appear in a header
/// field: printable, no characters that end a property or a comment.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' | '(' | ')' | '\\' | '"' => '?',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .take(200)
        .collect()
}

/// Is `field` (a whole header field) an Authentication-Results: field
/// that claims to be ours (RFC 8601 §5: such fields from outside are
/// forgeries and are removed)?
pub fn claims_to_be(field: &[u8], authserv_id: &str) -> bool {
    let text = String::from_utf8_lossy(field);
    let Some((name, value)) = text.split_once(':') else {
        return false;
    };
    if !name.trim().eq_ignore_ascii_case("authentication-results") {
        return false;
    }
    let id = authserv_id_of(value);
    id.eq_ignore_ascii_case(authserv_id)
}

/// The authserv-id an Authentication-Results value starts with: comments
/// and folding white space skipped, a quoted string unquoted (RFC 8601
/// §2.2: `authserv-id = value`).
fn authserv_id_of(value: &str) -> String {
    let mut rest = value.trim_start();
    while let Some(r) = rest.strip_prefix('(') {
        let mut depth = 1usize;
        let end = r.char_indices().find_map(|(i, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        });
        rest = match end {
            Some(i) => r[i + 1..].trim_start(),
            None => "",
        };
    }
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next().unwrap_or("").to_string();
    }
    rest.split(|c: char| c == ';' || c == '(' || c.is_ascii_whitespace())
        .next()
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_with_our_name_are_recognized() {
        assert!(claims_to_be(
            b"Authentication-Results: (forged) mx.test; dkim=pass\r\n",
            "mx.test"
        ));
        assert!(claims_to_be(
            b"Authentication-Results: \"mx.test\"; dkim=pass\r\n",
            "mx.test"
        ));
        assert!(claims_to_be(
            b"Authentication-Results:\r\n (a (nested)) mx.test;\r\n",
            "mx.test"
        ));
        assert!(claims_to_be(
            b"Authentication-Results: mx.test; dkim=pass\r\n",
            "MX.test"
        ));
        assert!(claims_to_be(
            b"authentication-results:mx.test;\r\n\tspf=pass\r\n",
            "mx.test"
        ));
        assert!(!claims_to_be(
            b"Authentication-Results: other.test; dkim=pass\r\n",
            "mx.test"
        ));
        assert!(!claims_to_be(b"Subject: mx.test\r\n", "mx.test"));
    }

    #[test]
    fn quarantine_actions_parse() {
        assert_eq!(Quarantine::parse("hold"), Ok(Quarantine::Hold));
        assert_eq!(
            Quarantine::parse("X-Spam-Flag: YES"),
            Ok(Quarantine::Header("X-Spam-Flag: YES".into()))
        );
        assert!(Quarantine::parse("nonsense").is_err());
        assert!(Quarantine::parse("Bad Name: x").is_err());
    }
}
