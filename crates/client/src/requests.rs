//! The requests that change what a signer issued, as a web application or
//! a batch file gives them (JSON, PEM, ASCII armor), sent and checked:
//!
//! ```text
//! {"request_id", "kind", "body": {...}} ─► Request ─► execute ─► Done {serial, certificate, result}
//!                                                      │ checks every answer (verify)
//! ```
//!
//! The gateway's queue rows and `signer-client batch` lines are read here,
//! so both accept exactly the same bodies (docs/gateway.md lists them).

use serde::Deserialize;
use signer_protocol::{calls, msg};

use std::sync::Mutex;

use crate::{verify, Calls, ClientError};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `sign_x509`.
    SignX509,
    /// `revoke_x509`.
    RevokeX509,
    /// `certify_openpgp`.
    CertifyOpenpgp,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 3] = [Kind::SignX509, Kind::RevokeX509, Kind::CertifyOpenpgp];

    /// Its name (`sign_x509`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SignX509 => "sign_x509",
            Kind::RevokeX509 => "revoke_x509",
            Kind::CertifyOpenpgp => "certify_openpgp",
        }
    }

    /// Its command on the wire.
    pub fn command(self) -> signer_protocol::Command {
        use signer_protocol::calls::{CertifyOpenpgp, RevokeX509, SignX509};
        use signer_protocol::Call;
        match self {
            Kind::SignX509 => SignX509::COMMAND,
            Kind::RevokeX509 => RevokeX509::COMMAND,
            Kind::CertifyOpenpgp => CertifyOpenpgp::COMMAND,
        }
    }

    /// The kind of a name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One line of a batch file: `{"request_id", "kind", "body"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The idempotency key.
    pub request_id: String,
    /// `sign_x509`, `revoke_x509` or `certify_openpgp`.
    pub kind: String,
    /// The request (one of the bodies below).
    pub body: serde_json::Value,
}

/// Checks a request id as the signer will (1–128 printable ASCII, no spaces).
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A `sign_x509` request's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    /// Profile name.
    pub profile: String,
    /// The PKCS#10 request, PEM.
    pub csr: String,
    /// The subject as checked by the web application: `[attribute, value]` pairs.
    pub subject: Vec<(String, String)>,
    /// Subject alternative names.
    #[serde(default)]
    pub sans: Vec<msg::SanEntry>,
    /// Validity in days (default: the profile's).
    #[serde(default)]
    pub validity_days: Option<u32>,
}

/// A `revoke_x509` request's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The issuing CA's name.
    pub issuer: String,
    /// The serial, hex.
    pub serial: String,
    /// RFC 5280 reason code (default 0, unspecified).
    #[serde(default)]
    pub reason: u8,
    /// Invalidity date, Unix seconds.
    #[serde(default)]
    pub invalidity_date: Option<i64>,
}

/// A `certify_openpgp` request's body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyBody {
    /// The public key, ASCII-armored.
    pub key: String,
    /// User IDs to certify.
    pub user_ids: Vec<String>,
    /// When the certifications expire, Unix seconds (fixed in the request,
    /// so every attempt sends the same one).
    pub expires_at: i64,
}

/// A request, ready to send.
#[derive(Debug, Clone)]
pub enum Request {
    /// `sign_x509`.
    Sign(msg::SignX509),
    /// `revoke_x509`.
    Revoke(msg::RevokeX509),
    /// `certify_openpgp`.
    Certify(msg::CertifyOpenpgp),
}

impl Request {
    /// Reads a request: `Err` says why the body cannot be sent.
    pub fn from_row(request_id: &str, kind: &str, body: &str) -> Result<Request, String> {
        let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
        let request_id = request_id.to_string();
        Ok(match kind {
            Kind::SignX509 => {
                let b: SignBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                if !b
                    .csr
                    .trim_start()
                    .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
                    && !b
                        .csr
                        .trim_start()
                        .starts_with("-----BEGIN NEW CERTIFICATE REQUEST-----")
                {
                    return Err("csr: not a PEM certificate request".into());
                }
                Request::Sign(msg::SignX509 {
                    request_id,
                    profile: b.profile,
                    csr: b.csr.into_bytes(),
                    subject: b.subject,
                    sans: b.sans,
                    validity_days: b.validity_days,
                })
            }
            Kind::RevokeX509 => {
                let b: RevokeBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                let serial = hex::decode(b.serial.trim_start_matches("0x"))
                    .map_err(|e| format!("serial: not hex ({e})"))?;
                Request::Revoke(msg::RevokeX509 {
                    request_id,
                    issuer: b.issuer,
                    serial,
                    reason: b.reason,
                    invalidity_date: b.invalidity_date,
                })
            }
            Kind::CertifyOpenpgp => {
                let b: CertifyBody = serde_json::from_str(body).map_err(|e| e.to_string())?;
                Request::Certify(msg::CertifyOpenpgp {
                    request_id,
                    key: b.key.into_bytes(),
                    user_ids: b.user_ids,
                    expires_at: b.expires_at,
                })
            }
        })
    }
}

/// A checked answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The certificate's serial, hex (sign and revoke).
    pub serial: Option<String>,
    /// The certificate (PEM) or the certified OpenPGP key (ASCII armor).
    pub certificate: Option<String>,
    /// The rest of the answer.
    pub result: serde_json::Value,
}

/// CA certificates the answers are checked with, fetched once and again
/// when an answer names a CA not yet known.
#[derive(Default)]
pub struct Trust {
    cas: Mutex<Option<msg::CaCertsReply>>,
    openpgp: Mutex<Option<Vec<u8>>>,
}

impl Trust {
    /// The CA certificates (`refresh`: ask the signer again).
    pub fn cas(
        &self,
        signers: &impl Calls,
        refresh: bool,
    ) -> Result<msg::CaCertsReply, ClientError> {
        let mut cas = self.cas.lock().unwrap_or_else(|p| p.into_inner());
        if refresh || cas.is_none() {
            *cas = Some(signers.request::<calls::CaCerts>(&msg::Empty {})?);
        }
        Ok(cas.clone().unwrap_or(msg::CaCertsReply { cas: Vec::new() }))
    }

    /// The CA's OpenPGP certificate, asked for once.
    pub fn openpgp(&self, signers: &impl Calls) -> Result<Vec<u8>, ClientError> {
        let mut ca = self.openpgp.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ca) = ca.as_ref() {
            return Ok(ca.clone());
        }
        let fetched = signers
            .request::<calls::OpenpgpCa>(&msg::Empty {})?
            .certificate;
        *ca = Some(fetched.clone());
        Ok(fetched)
    }
}

/// Sends a request and checks the answer before it is used: a
/// certificate is for the CSR's key and verifies with the issuer it names;
/// OpenPGP certifications verify with the CA key.
pub fn execute(
    signers: &impl Calls,
    trust: &Trust,
    request: &Request,
) -> Result<Done, ClientError> {
    let ok =
        |serial: Option<String>, certificate: Option<String>, result: serde_json::Value| Done {
            serial,
            certificate,
            result,
        };
    match request {
        Request::Sign(r) => {
            let reply = signers.request::<calls::SignX509>(r)?;
            let mut cas = trust.cas(signers, false)?;
            if !cas.cas.iter().any(|c| c.name == reply.issuer) {
                cas = trust.cas(signers, true)?;
            }
            verify::check_issued(&reply, &r.csr, &cas)?;
            Ok(ok(
                Some(hex::encode(&reply.serial)),
                Some(signer_x509::cert_pem(&reply.certificate)),
                serde_json::json!({
                    "issuer": reply.issuer,
                    "not_before": reply.not_before,
                    "not_after": reply.not_after,
                    "replayed": reply.replayed,
                }),
            ))
        }
        Request::Revoke(r) => {
            let reply = signers.request::<calls::RevokeX509>(r)?;
            Ok(ok(
                Some(hex::encode(&r.serial)),
                None,
                serde_json::json!({
                    "issuer": r.issuer,
                    "revoked_at": reply.revoked_at,
                    "reason": reply.reason,
                    "invalidity_date": reply.invalidity_date,
                    "replayed": reply.replayed,
                    "legacy": reply.legacy,
                }),
            ))
        }
        Request::Certify(r) => {
            let ca = trust.openpgp(signers)?;
            let reply = verify::certify_checked(signers, r, Some(&ca))?;
            Ok(ok(
                None,
                Some(signer_openpgp::armor_public_key(&reply.key)),
                serde_json::json!({
                    "fingerprint": reply.fingerprint,
                    "ca_fingerprint": reply.ca_fingerprint,
                    "user_ids": reply.certifications.iter().map(|c| &c.user_id).collect::<Vec<_>>(),
                    "created_at": reply.created_at,
                    "expires_at": reply.expires_at,
                    "replayed": reply.replayed,
                }),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_bodies_say_what_is_wrong() {
        let e = Request::from_row("r", "sign_x509", "{\"profile\":1}").unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let e = Request::from_row("r", "mint_coins", "{}").unwrap_err();
        assert!(e.contains("unknown kind"), "{e}");
        let e = Request::from_row(
            "r",
            "sign_x509",
            r#"{"profile":"p","csr":"-----BEGIN PRIVATE KEY-----","subject":[]}"#,
        )
        .unwrap_err();
        assert!(e.contains("not a PEM certificate request"), "{e}");
        let e = Request::from_row("r", "revoke_x509", r#"{"issuer":"sub","serial":"xyz"}"#)
            .unwrap_err();
        assert!(e.contains("serial"), "{e}");
        assert!(matches!(
            Request::from_row(
                "r",
                "revoke_x509",
                r#"{"issuer":"sub","serial":"0a1b","reason":1}"#
            ),
            Ok(Request::Revoke(msg::RevokeX509 { reason: 1, .. }))
        ));
    }
}
