//! Bodies of the commands. Requests reject unknown fields (a client must not
//! believe the signer honours a field it ignores); replies tolerate them (a
//! newer signer may add fields).

use serde::{Deserialize, Serialize};

/// The body of a request that carries no arguments: an empty map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// `hello` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Largest frame content (CRC excluded) the client accepts.
    pub max_frame: u32,
    /// Free-form client name and version, for the signer's log.
    #[serde(default)]
    pub client: String,
}

/// `hello` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// Protocol version in use (always the envelope version).
    pub version: u64,
    /// Every protocol version the signer speaks.
    pub versions: Vec<u64>,
    /// Largest frame content the signer accepts, and the largest it will send
    /// (never above the client's `max_frame`).
    pub max_frame: u32,
    /// How many requests may await their response at once.
    pub max_in_flight: u32,
    /// Signer software name and version.
    pub server: String,
    /// This signer's name (distinguishes twins).
    pub signer_id: String,
    /// Commands this signer has enabled.
    pub commands: Vec<u16>,
}

/// `fetch_parts` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchParts {
    /// The id of the earlier request whose response is wanted.
    pub id: u64,
    /// Part indices to resend; empty means all.
    pub parts: Vec<u32>,
}

/// `fetch_parts` reply, sent after the resent parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchPartsReply {
    /// How many parts were resent.
    pub resent: u32,
}

/// Body of every response whose status is not `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub message: String,
    /// Machine-readable detail where a status has some (for example the
    /// profile rule that failed); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Overall health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Everything works.
    Ok,
    /// Serving, but something needs attention (see `checks`).
    Degraded,
    /// Cannot serve its main purpose (for example no signing key usable).
    Failing,
}

/// Counters of the serial link as the signer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Frames received that passed every check.
    pub frames_ok: u64,
    /// Frames rejected for their CRC.
    pub frames_bad_crc: u64,
    /// Frames rejected as invalid COBS.
    pub frames_bad_cobs: u64,
    /// Frames rejected as too long.
    pub frames_oversize: u64,
    /// Frames rejected as too short.
    pub frames_short: u64,
    /// Frames whose envelope or body could not be read.
    pub malformed: u64,
    /// Frames sent.
    pub frames_sent: u64,
    /// Responses sent again for a retried request id.
    pub replayed: u64,
    /// Retries that arrived while the original was still being executed.
    pub duplicates_in_flight: u64,
    /// Requests refused with `busy`.
    pub busy: u64,
    /// Times the serial device was (re)opened.
    pub opens: u64,
    /// Requests executed (each id at most once while its answer is stored).
    pub executed: u64,
}

/// One named check in a health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What was checked, e.g. `link` or `hsm:root-2026`.
    pub name: String,
    /// Its verdict.
    pub status: HealthStatus,
    /// Details for a person.
    #[serde(default)]
    pub detail: String,
}

/// `health` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReply {
    /// The worst status among the checks.
    pub status: HealthStatus,
    /// Signer software version.
    pub version: String,
    /// This signer's name.
    pub signer_id: String,
    /// The signer's clock: milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Serial link counters.
    pub link: LinkStats,
    /// Individual checks.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// A subject alternative name in `sign_x509`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanEntry {
    /// `dns`, `email`, `ip` or `uri`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The name (an IP address in text form for `ip`).
    pub value: String,
}

/// `sign_x509` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignX509 {
    /// Durable idempotency key (1–128 printable ASCII characters): a retry
    /// with the same key, now or after a restart or failover, returns the
    /// original certificate.
    pub request_id: String,
    /// Profile name.
    pub profile: String,
    /// PKCS#10 request, DER or PEM.
    #[serde(with = "serde_bytes")]
    pub csr: Vec<u8>,
    /// Subject as checked by the web application: `[attribute, value]` pairs in order.
    pub subject: Vec<(String, String)>,
    /// Subject alternative names.
    #[serde(default)]
    pub sans: Vec<SanEntry>,
    /// Validity in days; absent: the profile's default.
    #[serde(default)]
    pub validity_days: Option<u32>,
}

/// `sign_x509` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignX509Reply {
    /// The certificate, DER.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// Its serial number, unsigned big-endian.
    #[serde(with = "serde_bytes")]
    pub serial: Vec<u8>,
    /// Name of the issuing CA.
    pub issuer: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// True when this is the certificate issued earlier for the same request id.
    pub replayed: bool,
}

/// One CA in the `ca_certs` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCert {
    /// Configured CA name.
    pub name: String,
    /// The CA certificate, DER.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
    /// An issuer with partitioned CRLs: its shards' CRL URLs, shard 0
    /// first (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_shards: Option<Vec<String>>,
}

/// `ca_certs` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaCertsReply {
    /// Every CA this signer issues under.
    pub cas: Vec<CaCert>,
}

/// `revoke_x509` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeX509 {
    /// The client's request id (recorded with the revocation).
    pub request_id: String,
    /// Name of the issuing CA.
    pub issuer: String,
    /// Serial number, unsigned big-endian.
    #[serde(with = "serde_bytes")]
    pub serial: Vec<u8>,
    /// RFC 5280 CRLReason: 0 unspecified, 1 keyCompromise, 2 cACompromise,
    /// 3 affiliationChanged, 4 superseded, 5 cessationOfOperation,
    /// 9 privilegeWithdrawn, 10 aACompromise.
    pub reason: u8,
    /// Invalidity date, Unix seconds; not in the future.
    #[serde(default)]
    pub invalidity_date: Option<i64>,
}

/// `revoke_x509` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeX509Reply {
    /// When the signer recorded the revocation, Unix seconds.
    pub revoked_at: i64,
    /// The reason recorded.
    pub reason: u8,
    /// The invalidity date recorded.
    pub invalidity_date: Option<i64>,
    /// True when the certificate was already revoked (this is that record).
    pub replayed: bool,
    /// True for a serial this signer did not issue (legacy migration).
    pub legacy: bool,
}

/// `fetch_crl` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchCrl {
    /// Name of the issuing CA.
    pub issuer: String,
    /// The CRL number of the copy the client holds, if any.
    #[serde(default, with = "serde_bytes")]
    pub have_number: Option<Vec<u8>>,
    /// SHA-256 of the DER of the copy the client holds, if any.
    #[serde(default, with = "serde_bytes")]
    pub have_sha256: Option<Vec<u8>>,
    /// A shard's CRL (an issuer with partitioned CRLs); absent: the full CRL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u8>,
}

/// `fetch_crl` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchCrlReply {
    /// True when the client's copy is the current CRL (`crl` is then absent).
    pub unchanged: bool,
    /// CRL number, unsigned big-endian.
    #[serde(with = "serde_bytes")]
    pub number: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
    /// Entries in the CRL.
    pub entries: u64,
    /// SHA-256 of the CRL's DER.
    #[serde(with = "serde_bytes")]
    pub sha256: Vec<u8>,
    /// The CRL, DER, when neither unchanged nor sent as a difference.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub crl: Option<Vec<u8>>,
    /// The CRL as a difference from the client's copy (then `crl` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<CrlDiff>,
}

/// One entry added to a CRL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlDiffEntry {
    /// Serial, unsigned big-endian, no leading zero octets.
    #[serde(with = "serde_bytes")]
    pub serial: Vec<u8>,
    /// revocationDate, Unix seconds.
    pub revoked_at: i64,
    /// CRLReason code (0: unspecified, no extension).
    pub reason: u8,
    /// invalidityDate, Unix seconds.
    #[serde(default)]
    pub invalidity_date: Option<i64>,
}

/// How the current CRL differs from the client's copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlDiff {
    /// CRL number of the client's copy this difference applies to.
    #[serde(with = "serde_bytes")]
    pub base_number: Vec<u8>,
    /// Entries to add.
    pub added: Vec<CrlDiffEntry>,
    /// Serials to remove.
    pub removed: Vec<serde_bytes::ByteBuf>,
    /// The signature value of the current CRL.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// `certify_openpgp` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyOpenpgp {
    /// Durable idempotency key, as for `sign_x509`.
    pub request_id: String,
    /// The user's transferable public key, binary or ASCII-armored.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// User IDs to certify, each exactly as on the key (UTF-8).
    pub user_ids: Vec<String>,
    /// When the certifications expire, Unix seconds.
    pub expires_at: i64,
}

/// One certification made by `certify_openpgp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certification {
    /// The certified user ID.
    pub user_id: String,
    /// The signature packet, with its OpenPGP packet header.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// `certify_openpgp` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifyOpenpgpReply {
    /// The key with the new certifications, binary.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The key's fingerprint, upper-case hex.
    pub fingerprint: String,
    /// The CA key's fingerprint, upper-case hex.
    pub ca_fingerprint: String,
    /// The certifications, in request order.
    pub certifications: Vec<Certification>,
    /// When they were made, Unix seconds.
    pub created_at: i64,
    /// When they expire, Unix seconds.
    pub expires_at: i64,
    /// True when these are the certifications made earlier for the same request id.
    pub replayed: bool,
}

/// `openpgp_ca` reply: the CA's OpenPGP certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenpgpCaReply {
    /// Its fingerprint, upper-case hex.
    pub fingerprint: String,
    /// The certificate, binary.
    #[serde(with = "serde_bytes")]
    pub certificate: Vec<u8>,
}

/// `audit_checkpoint` reply: the newest checkpoint (§7.9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpointReply {
    /// The signed note (C2SP checkpoint).
    pub checkpoint: String,
}

/// `audit_consistency` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConsistency {
    /// The older tree size.
    pub old: u64,
    /// The newer tree size.
    pub new: u64,
}

/// `audit_consistency` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConsistencyReply {
    /// The proof's hashes (32 bytes each).
    pub proof: Vec<serde_bytes::ByteBuf>,
}

/// `audit_entries` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntries {
    /// Index of the first entry (0-based).
    pub start: u64,
    /// How many (the signer sends at most 256).
    pub count: u64,
}

/// `audit_entries` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntriesReply {
    /// The entries as stored (the tree's leaves).
    pub entries: Vec<serde_bytes::ByteBuf>,
}

/// `audit_inclusion` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditInclusion {
    /// The entry's index (0-based).
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
}

/// `audit_inclusion` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditInclusionReply {
    /// The entry as stored.
    pub entry: serde_bytes::ByteBuf,
    /// The proof's hashes.
    pub proof: Vec<serde_bytes::ByteBuf>,
}

/// `audit_ack` request: the client holds this much of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAck {
    /// Entries held.
    pub size: u64,
    /// The root they give (32 bytes).
    pub root: serde_bytes::ByteBuf,
}
