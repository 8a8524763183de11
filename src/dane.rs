//! DANE for SMTP (RFC 7672): which TLSA records (RFC 6698) SMTP can use,
//! how one matches a certificate, and the rustls verifier that accepts a
//! server's chain only when a record matches it.
//!
//! Only DANE-TA(2) and DANE-EE(3) count for SMTP (RFC 7672 §3.1.3: the
//! PKIX usages 0 and 1 are unusable), with the full certificate (0) or its
//! SubjectPublicKeyInfo (1), as they are (0), SHA-256 (1) or SHA-512 (2).
//! A DANE-EE(3) match is the whole check: no name, no dates (§3.1.1). A
//! DANE-TA(2) record names a certificate of the chain the server sends;
//! the chain must lead from the server's certificate to it, within its
//! dates, with the MX host's name in the server's certificate (§3.2).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub use crate::dns::Tlsa;

/// DANE-TA(2): a trust anchor of the chain.
const DANE_TA: u8 = 2;
/// DANE-EE(3): the server's own certificate or key.
const DANE_EE: u8 = 3;

/// RFC 7672 §3.1.3: a record SMTP can use, and well formed (a digest of
/// its length).
pub fn usable(r: &Tlsa) -> bool {
    let well_formed = match r.matching {
        0 => !r.data.is_empty(),
        1 => r.data.len() == 32,
        2 => r.data.len() == 64,
        _ => false,
    };
    matches!(r.usage, DANE_TA | DANE_EE) && r.selector <= 1 && well_formed
}

/// The record matches certificate `der` (its selector's part of it).
pub fn matches(r: &Tlsa, der: &[u8]) -> bool {
    let field = match r.selector {
        0 => der,
        1 => match spki(der) {
            Some(s) => s,
            None => return false,
        },
        _ => return false,
    };
    match r.matching {
        0 => field == r.data.as_slice(),
        1 => ring::digest::digest(&ring::digest::SHA256, field).as_ref() == r.data.as_slice(),
        2 => ring::digest::digest(&ring::digest::SHA512, field).as_ref() == r.data.as_slice(),
        _ => false,
    }
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280 §4.1:
/// the seventh field of tbsCertificate, after an optional version).
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let (body, _) = tlv(cert, 0x30)?;
    let (tbs, _) = tlv(body, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    // serialNumber, signature, issuer, validity, subject.
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        rest = tlv(rest, tag)?.1;
    }
    let (_, after) = tlv(rest, 0x30)?;
    Some(&rest[..rest.len() - after.len()])
}

/// One DER element of type `tag` at the start of `b`: its contents and
/// what follows it. Definite lengths only (DER), up to 4 length octets.
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, start) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &o in b.get(2..2 + n)? {
            len = len << 8 | usize::from(o);
        }
        (len, 2 + n)
    };
    let end = start.checked_add(len)?;
    Some((b.get(start..end)?, b.get(end..)?))
}

/// The check of a server's certificate chain against its usable TLSA
/// records (see the module's text); handshake signatures as rustls does.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
    /// Handshake signatures, as every verifier of ours checks them.
    signatures: crate::tls::AcceptAny,
}

impl DaneVerifier {
    /// `records`: the usable ones (at least one).
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        let signatures = crate::tls::AcceptAny(provider.clone());
        DaneVerifier {
            records,
            provider,
            signatures,
        }
    }

    /// DANE-TA(2): `anchor`, matched by a record, is where the chain to the
    /// server's certificate, within dates and for `name`, must lead.
    fn chains_to(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let mut roots = RootCertStore::empty();
        if roots.add(anchor.clone().into_owned()).is_err() {
            return false;
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build();
        verifier.is_ok_and(|v| {
            v.verify_server_cert(end_entity, intermediates, name, &[], now)
                .is_ok()
        })
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let of = |usage: u8, der: &[u8]| {
            self.records
                .iter()
                .any(|r| r.usage == usage && matches(r, der))
        };
        if of(DANE_EE, end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        for anchor in intermediates.iter().filter(|c| of(DANE_TA, c)) {
            if self.chains_to(anchor, end_entity, intermediates, server_name, now) {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::General(
            "no TLSA record matches the server's certificate chain".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

/// A client configuration that trusts the server only as `records` say.
pub fn client_config(records: Vec<Tlsa>) -> Result<Arc<rustls::ClientConfig>, String> {
    let p = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DaneVerifier::new(records, p)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn only_dane_ta_and_ee_with_known_selectors_and_digests_are_usable() {
        assert!(usable(&tlsa(3, 1, 1, vec![0; 32])));
        assert!(usable(&tlsa(2, 0, 2, vec![0; 64])));
        assert!(usable(&tlsa(3, 0, 0, vec![1, 2, 3])));
        for r in [
            tlsa(1, 1, 1, vec![0; 32]),
            tlsa(0, 0, 1, vec![0; 32]),
            tlsa(4, 1, 1, vec![0; 32]),
            tlsa(3, 2, 1, vec![0; 32]),
            tlsa(3, 1, 3, vec![0; 32]),
            tlsa(3, 1, 1, vec![0; 31]),
            tlsa(3, 1, 2, vec![0; 32]),
            tlsa(3, 1, 0, vec![]),
        ] {
            assert!(!usable(&r), "{r:?}");
        }
    }

    #[test]
    fn broken_der_has_no_spki() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x85\x00\x00\x00\x00\x01",
            b"\x30\x03\x30\x01",
            b"\x31\x00",
        ] {
            assert_eq!(spki(bad), None, "{bad:?}");
        }
        // A minimal tbsCertificate: its seventh element is the SPKI.
        let tbs = [
            &[0xa0, 0x03, 0x02, 0x01, 0x02][..],
            &[0x02, 0x01, 0x01],
            &[0x30, 0x00],
            &[0x30, 0x00],
            &[0x30, 0x00],
            &[0x30, 0x00],
            &[0x30, 0x02, 0x05, 0x00],
            &[0xa3, 0x00],
        ]
        .concat();
        let mut cert = vec![0x30, (tbs.len() + 2) as u8, 0x30, tbs.len() as u8];
        cert.extend_from_slice(&tbs);
        assert_eq!(spki(&cert), Some(&[0x30, 0x02, 0x05, 0x00][..]));
        let digest = ring::digest::digest(&ring::digest::SHA256, &[0x30, 0x02, 0x05, 0x00]);
        assert!(matches(&tlsa(3, 1, 1, digest.as_ref().to_vec()), &cert));
        assert!(matches(&tlsa(3, 0, 0, cert.clone()), &cert));
        assert!(!matches(&tlsa(3, 1, 1, vec![0; 32]), &cert));
    }
}
