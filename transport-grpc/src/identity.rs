//! The identity a verified client certificate proves, as served calls report it in
//! `CallContext::authenticated_peer` under mutual TLS.
//!
//! The core compares a caller's claimed endpoint (a `JoinRequest`'s or an `AveragingData`'s
//! `endpoint`) with this string, so a peer's certificate names its own endpoint: a URI subject
//! alternative name `grpc://host:port`, spelled exactly as the peer advertises it. A certificate
//! that names no such URI, or more than one, still proves *a* key, so it gets a fingerprint
//! instead (`sha256:` and the lowercase hex of the SHA-256 of the leaf's DER): it authenticates
//! the caller, but it never equals an endpoint, so any endpoint it claims is refused.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// The prefix of a fingerprint identity.
pub(crate) const FINGERPRINT_PREFIX: &str = "sha256:";

/// The identity `leaf` (a certificate rustls has already verified) proves.
pub(crate) fn of_certificate(leaf: &CertificateDer<'_>) -> String {
    match endpoint_names(leaf).as_deref() {
        Some([only]) => only.clone(),
        _ => fingerprint(leaf),
    }
}

/// The `grpc://` URIs among the leaf's subject alternative names; `None` when it does not parse
/// (rustls parsed it already, so only a quirk of one parser or the other gets here).
fn endpoint_names(leaf: &CertificateDer<'_>) -> Option<Vec<String>> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    let uris = names.value.general_names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with("grpc://") => Some((*uri).to_string()),
        _ => None,
    });
    Some(uris.collect())
}

fn fingerprint(leaf: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(leaf.as_ref());
    let mut text = String::with_capacity(FINGERPRINT_PREFIX.len() + 2 * digest.len());
    text.push_str(FINGERPRINT_PREFIX);
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}
