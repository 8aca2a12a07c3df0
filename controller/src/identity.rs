//! Reporter identity: the caller's SPIFFE ID, from its client certificate (mTLS on the gRPC
//! port) or from the `x-forwarded-client-cert` header set by the controller's own sidecar, and
//! the check of a report's claimed namespace against it.
//!
//! Modes ([`AuthMode`], chosen with flags, see README *Security*):
//! - `ClientCert` (`--tls-cert/--tls-key/--client-ca`): tonic serves TLS and requires a client
//!   certificate signed by the CA; the identity is the certificate's `spiffe://` URI SAN.
//! - `Xfcc` (`--trust-xfcc`): the gRPC port is plaintext and must be reachable only through the
//!   controller's sidecar (STRICT PeerAuthentication); the identity is the `URI` of the LAST
//!   element of `x-forwarded-client-cert`, the one the sidecar itself adds for the peer it
//!   authenticated (with `SANITIZE_SET` the only element; with `APPEND_FORWARD` anything a
//!   client sent comes before it).
//! - `None` (`--insecure-no-auth`): no identity; the reporter's namespace is self-asserted.
//!   XFCC headers are ignored. For the local testbed and demo only.
//!
//! A SPIFFE ID names a Kubernetes identity as `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (Istio's
//! format); a report whose `reporter.namespace` differs from `NS` is refused with
//! PERMISSION_DENIED, a call without a usable identity with UNAUTHENTICATED.

use std::fmt;

/// The XFCC header name (lower case, as HTTP/2 carries it).
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// How the gRPC port authenticates reporters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No identity: reports are trusted as claimed (`--insecure-no-auth`; local use only).
    #[default]
    None,
    /// mTLS on the gRPC port; identity from the client certificate's SPIFFE URI SAN.
    ClientCert,
    /// Identity from the `x-forwarded-client-cert` header of the controller's own sidecar.
    Xfcc,
}

impl AuthMode {
    /// Name for logs and `/api/model`-style output.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::ClientCert => "client-cert",
            AuthMode::Xfcc => "xfcc",
        }
    }
}

/// A Kubernetes workload identity: `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// Why no identity could be taken from a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Nothing to take an identity from (no client certificate, no XFCC header).
    #[error("no reporter identity: {0}")]
    Missing(&'static str),
    /// Something was there but is not a usable Kubernetes SPIFFE ID.
    #[error("bad reporter identity: {0}")]
    Bad(String),
}

impl IdentityError {
    /// Label of `meshtune_reports_unauthorized_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Missing(_) => "no_identity",
            IdentityError::Bad(_) => "bad_identity",
        }
    }
}

/// Parses `spiffe://TD/ns/NS/sa/SA` (nothing else: no extra segments, no empty parts).
pub fn parse_spiffe(uri: &str) -> Result<SpiffeId, IdentityError> {
    let bad = |why: &str| IdentityError::Bad(format!("{uri:?}: {why}"));
    let rest = uri
        .strip_prefix("spiffe://")
        .ok_or_else(|| bad("not a spiffe:// URI"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
            Ok(SpiffeId {
                trust_domain: td.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            })
        }
        _ => Err(bad(
            "expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT",
        )),
    }
}

/// The SPIFFE ID in a DER client certificate's URI SANs (exactly one `spiffe://` URI).
pub fn from_certificate(der: &[u8]) -> Result<SpiffeId, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Bad(format!("client certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Bad(format!("client certificate SAN: {e}")))?;
    let mut uris = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(u), None) => parse_spiffe(u),
        (None, _) => Err(IdentityError::Bad(
            "client certificate has no spiffe:// URI SAN".into(),
        )),
        (Some(_), Some(_)) => Err(IdentityError::Bad(
            "client certificate has more than one spiffe:// URI SAN".into(),
        )),
    }
}

/// Splits `s` at `sep` outside double quotes (`\"` escapes a quote inside).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// The SPIFFE ID of the peer the controller's sidecar authenticated: the `URI` of the last
/// element of an `x-forwarded-client-cert` value (see the module docs).
pub fn from_xfcc(value: &str) -> Result<SpiffeId, IdentityError> {
    let last = split_unquoted(value, ',')
        .into_iter()
        .map(str::trim)
        .rfind(|e| !e.is_empty())
        .ok_or(IdentityError::Missing("empty x-forwarded-client-cert"))?;
    let uri = split_unquoted(last, ';')
        .into_iter()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("URI"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .ok_or_else(|| {
            IdentityError::Bad("x-forwarded-client-cert: last element has no URI".into())
        })?;
    parse_spiffe(uri)
}

/// The identity of a call in `mode`: `None` in mode `None` (nothing is checked); otherwise
/// the client certificate (`peer_leaf`, DER) or the XFCC header.
pub fn identify(
    mode: AuthMode,
    peer_leaf: Option<&[u8]>,
    xfcc: Option<&str>,
) -> Result<Option<SpiffeId>, IdentityError> {
    match mode {
        AuthMode::None => Ok(None),
        AuthMode::ClientCert => {
            let leaf = peer_leaf.ok_or(IdentityError::Missing("no client certificate"))?;
            from_certificate(leaf).map(Some)
        }
        AuthMode::Xfcc => {
            let v = xfcc.ok_or(IdentityError::Missing("no x-forwarded-client-cert header"))?;
            from_xfcc(v).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_strictly() {
        let id = parse_spiffe("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert_eq!(
            (
                id.trust_domain.as_str(),
                id.namespace.as_str(),
                id.service_account.as_str()
            ),
            ("cluster.local", "shop", "web")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        for bad in [
            "https://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns//sa/web",
            "spiffe://cluster.local/ns/shop/sa/web/extra",
            "spiffe:///ns/shop/sa/web",
        ] {
            assert!(
                matches!(parse_spiffe(bad), Err(IdentityError::Bad(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn xfcc_takes_the_uri_of_the_last_element() {
        let one = r#"By=spiffe://cluster.local/ns/meshtune-system/sa/meshtune;Hash=abc;Subject="";URI=spiffe://cluster.local/ns/shop/sa/web"#;
        assert_eq!(from_xfcc(one).unwrap().namespace, "shop");
        // A client-sent element (APPEND_FORWARD) comes first; the sidecar's is last.
        let forged = format!(
            r#"By=x;URI=spiffe://cluster.local/ns/payments/sa/x;Subject="CN=a,O=b;c",{one}"#
        );
        assert_eq!(from_xfcc(&forged).unwrap().namespace, "shop");
        assert!(matches!(from_xfcc(""), Err(IdentityError::Missing(_))));
        assert!(matches!(from_xfcc("Hash=abc"), Err(IdentityError::Bad(_))));
        assert!(matches!(
            from_xfcc("URI=spiffe://cluster.local/ns/shop/sa/web,Hash=x"),
            Err(IdentityError::Bad(_))
        ));
    }

    #[test]
    fn identify_follows_the_mode() {
        let x = "URI=spiffe://td/ns/a/sa/b";
        assert_eq!(identify(AuthMode::None, None, Some(x)).unwrap(), None);
        assert_eq!(
            identify(AuthMode::Xfcc, None, Some(x))
                .unwrap()
                .unwrap()
                .namespace,
            "a"
        );
        assert_eq!(
            identify(AuthMode::Xfcc, None, None).unwrap_err().reason(),
            "no_identity"
        );
        assert_eq!(
            identify(AuthMode::ClientCert, None, Some(x))
                .unwrap_err()
                .reason(),
            "no_identity"
        );
        assert_eq!(
            identify(AuthMode::ClientCert, Some(b"junk"), None)
                .unwrap_err()
                .reason(),
            "bad_identity"
        );
    }
}
