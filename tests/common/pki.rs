//! A test CA and certificates signed by it, made with openssl.

use std::path::Path;
use std::process::Command;

pub fn openssl_in(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir` (ca.pem, ca.key).
pub fn make_ca(dir: &Path) -> String {
    openssl_in(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Satchel Test CA",
        ],
    );
    dir.join("ca.pem").display().to_string()
}

/// A certificate for `name` in `dir`, signed by the CA in `ca_dir`.
pub fn signed_cert(dir: &Path, ca_dir: &Path, name: &str) -> (String, String) {
    signed_for(dir, ca_dir, &[name])
}

/// A certificate for all of `names` (the first its CN) in `dir` (srv.pem,
/// srv.key), signed by the CA in `ca_dir`.
pub fn signed_for(dir: &Path, ca_dir: &Path, names: &[&str]) -> (String, String) {
    let name = names[0];
    openssl_in(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let alt: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName={}\n", alt.join(",")),
    )
    .unwrap();
    let (ca, key) = (ca_dir.join("ca.pem"), ca_dir.join("ca.key"));
    openssl_in(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            ca.to_str().unwrap(),
            "-CAkey",
            key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    );
    (
        dir.join("srv.pem").display().to_string(),
        dir.join("srv.key").display().to_string(),
    )
}

/// SHA-256 of the DER SubjectPublicKeyInfo of the PEM certificate `cert`
/// (a DANE-EE(3) SPKI(1) SHA-256(1) record's data), or of the whole DER
/// certificate (`spki` false: selector 0).
pub fn tlsa_digest(cert: &str, spki: bool) -> Vec<u8> {
    let script = match spki {
        true => "openssl x509 -in \"$0\" -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary",
        false => "openssl x509 -in \"$0\" -outform DER | openssl dgst -sha256 -binary",
    };
    let out = Command::new("sh")
        .args(["-c", script, cert])
        .output()
        .expect("sh");
    assert!(out.status.success() && out.stdout.len() == 32, "{out:?}");
    out.stdout
}
