//! Command and error codes: numeric newtypes with named constants, so that an
//! unknown code survives a round trip and prints as hex.

macro_rules! wire_code {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$cmeta:meta])* $konst:ident = $value:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u16);

        impl $name {
            $( $(#[$cmeta])* pub const $konst: Self = Self($value); )*

            /// Every code this implementation knows, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$konst),*];

            /// The stable snake_case name, if the code is known.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{}({})", name, self.0),
                    None => write!(f, "{}(0x{:04x})", stringify!($name), self.0),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "0x{:04x}", self.0),
                }
            }
        }
    };
}

wire_code! {
    /// What a request asks for (envelope element 2).
    Command {
        /// Version and limit negotiation.
        HELLO = 1 => "hello",
        /// Signer health report.
        HEALTH = 2 => "health",
        /// Resend selected parts of an earlier multi-part response.
        FETCH_PARTS = 3 => "fetch_parts",
        /// Issue an X.509 certificate by profile.
        SIGN_X509 = 16 => "sign_x509",
        /// Revoke an X.509 certificate.
        REVOKE_X509 = 17 => "revoke_x509",
        /// Fetch a CRL (full or as a difference).
        FETCH_CRL = 18 => "fetch_crl",
        /// Fetch the CA certificates this signer issues under.
        CA_CERTS = 19 => "ca_certs",
        /// Certify user IDs of an OpenPGP key.
        CERTIFY_OPENPGP = 32 => "certify_openpgp",
        /// Fetch the CA's OpenPGP certificate.
        OPENPGP_CA = 33 => "openpgp_ca",
        /// The audit log's newest checkpoint.
        AUDIT_CHECKPOINT = 48 => "audit_checkpoint",
        /// A consistency proof between two sizes of the audit log.
        AUDIT_CONSISTENCY = 49 => "audit_consistency",
        /// Audit entries by index.
        AUDIT_ENTRIES = 50 => "audit_entries",
        /// An audit entry with its inclusion proof.
        AUDIT_INCLUSION = 51 => "audit_inclusion",
        /// A copy of the audit log acknowledges the size it holds.
        AUDIT_ACK = 52 => "audit_ack",
    }
}

wire_code! {
    /// Outcome of a request (response envelope element 2). Zero is success.
    Status {
        /// Success; the body is the command's reply.
        OK = 0 => "ok",
        /// A frame failed its CRC check.
        FRAME_CRC = 1 => "frame_crc",
        /// A frame was longer than the receiver's limit.
        FRAME_OVERSIZE = 2 => "frame_oversize",
        /// A frame was not valid COBS.
        FRAME_COBS = 3 => "frame_cobs",
        /// A frame was too short to carry content and CRC.
        FRAME_SHORT = 4 => "frame_short",
        /// The frame content is not a valid request envelope.
        MALFORMED_ENVELOPE = 10 => "malformed_envelope",
        /// The envelope's protocol version is not supported.
        UNSUPPORTED_VERSION = 11 => "unsupported_version",
        /// The command code is not known.
        UNKNOWN_COMMAND = 12 => "unknown_command",
        /// The body does not match the command's schema.
        MALFORMED_BODY = 13 => "malformed_body",
        /// Too many requests in flight; retry later with the same id.
        BUSY = 14 => "busy",
        /// The request id was already used for a different request.
        ID_CONFLICT = 15 => "id_conflict",
        /// `fetch_parts` named a response the signer no longer holds.
        UNKNOWN_RESPONSE = 16 => "unknown_response",
        /// The command is known but not enabled on this signer.
        NOT_ENABLED = 17 => "not_enabled",
        /// The signer failed internally; the request had no effect.
        INTERNAL = 50 => "internal",
        /// The signer is shutting down; retry with the same id (also on the twin).
        SHUTTING_DOWN = 51 => "shutting_down",
        /// The signer is starting (checking its repository, logging in to
        /// the HSM); the request had no effect: retry with the same id
        /// later (also on the twin).
        STARTING = 52 => "starting",
        /// No profile of that name.
        UNKNOWN_PROFILE = 100 => "unknown_profile",
        /// The CSR is not a PKCS#10 request.
        MALFORMED_CSR = 101 => "malformed_csr",
        /// The CSR's self-signature does not verify or uses a refused algorithm.
        BAD_CSR_SIGNATURE = 102 => "bad_csr_signature",
        /// The subject key is too small (or too large).
        WEAK_KEY = 103 => "weak_key",
        /// The subject key type or curve is not accepted by the profile.
        KEY_TYPE_NOT_ALLOWED = 104 => "key_type_not_allowed",
        /// The CSR carries a critical extension the signer does not know.
        UNKNOWN_CRITICAL_EXTENSION = 105 => "unknown_critical_extension",
        /// A subject attribute is not allowed, missing, or badly formed.
        SUBJECT_NOT_ALLOWED = 106 => "subject_not_allowed",
        /// A subject alternative name is not allowed or badly formed.
        SAN_NOT_ALLOWED = 107 => "san_not_allowed",
        /// The requested validity exceeds the profile's maximum.
        VALIDITY_TOO_LONG = 108 => "validity_too_long",
        /// The certificate would fail a lint rule; `detail` names the rule.
        LINT_FAILED = 109 => "lint_failed",
        /// The request id was used before for a different request.
        REQUEST_ID_CONFLICT = 110 => "request_id_conflict",
        /// The subject key algorithm is not supported at all.
        UNSUPPORTED_KEY = 111 => "unsupported_key",
        /// No CA of that name on this signer.
        UNKNOWN_ISSUER = 200 => "unknown_issuer",
        /// The issuer never issued that serial (and does not accept legacy serials).
        UNKNOWN_SERIAL = 201 => "unknown_serial",
        /// The serial is not a positive integer of 1–20 octets.
        MALFORMED_SERIAL = 202 => "malformed_serial",
        /// The reason code is not an accepted RFC 5280 reason (certificateHold is refused).
        INVALID_REASON = 203 => "invalid_reason",
        /// The certificate is already revoked with another reason.
        REVOCATION_CONFLICT = 204 => "revocation_conflict",
        /// The invalidity date lies in the future.
        INVALID_INVALIDITY_DATE = 205 => "invalid_invalidity_date",
        /// `fetch_crl` named a CRL this signer never issued.
        UNKNOWN_CRL = 206 => "unknown_crl",
        /// `fetch_crl` named a shard the issuer does not have (or it has no shards).
        UNKNOWN_SHARD = 207 => "unknown_shard",
        /// Not an OpenPGP public key (unreadable, several keys, wrong armor).
        MALFORMED_OPENPGP_KEY = 400 => "malformed_openpgp_key",
        /// A secret key was sent instead of a public one.
        OPENPGP_SECRET_KEY = 401 => "openpgp_secret_key",
        /// A self-signature of the key does not verify, or a user ID has none.
        BAD_SELF_SIGNATURE = 402 => "bad_self_signature",
        /// The key's version or algorithm, or its self-signatures' hash, is refused by the policy.
        OPENPGP_ALGORITHM_NOT_ALLOWED = 403 => "openpgp_algorithm_not_allowed",
        /// A requested user ID is not on the key.
        USER_ID_NOT_FOUND = 404 => "user_id_not_found",
        /// A requested user ID was revoked by the key's owner.
        USER_ID_REVOKED = 405 => "user_id_revoked",
        /// A requested user ID's self-signature has expired.
        USER_ID_EXPIRED = 406 => "user_id_expired",
        /// The key is revoked.
        OPENPGP_KEY_REVOKED = 407 => "openpgp_key_revoked",
        /// The key has expired.
        OPENPGP_KEY_EXPIRED = 408 => "openpgp_key_expired",
        /// The certification expiry is not in the future or beyond the configured maximum.
        INVALID_EXPIRY = 409 => "invalid_expiry",
        /// The key is larger than the configured limit.
        OPENPGP_KEY_TOO_LARGE = 410 => "openpgp_key_too_large",
        /// An audit index or size beyond the log, or a proof from a larger size to a smaller.
        AUDIT_RANGE = 500 => "audit_range",
        /// The acknowledged root is not the audit log's root at that size.
        AUDIT_ROOT_MISMATCH = 501 => "audit_root_mismatch",
        /// The issuer's key is not reachable now (token absent, device error); retry later.
        HSM_UNAVAILABLE = 300 => "hsm_unavailable",
        /// The HSM refused the operation (configuration or token problem).
        HSM_FAILURE = 301 => "hsm_failure",
        /// The repository could not record the result; nothing was issued.
        REPOSITORY_FAILURE = 302 => "repository_failure",
        /// The issuing CA is not usable (certificate missing, expired or mismatched).
        ISSUER_UNAVAILABLE = 303 => "issuer_unavailable",
        /// A stored record the answer needs failed its check (damaged storage);
        /// it is not served. Retrying will not help; the twin may answer.
        REPOSITORY_CORRUPT = 304 => "repository_corrupt",
        /// The signer's clock reads before what it has already recorded, or
        /// outside the issuing CA's validity: nothing is signed until an
        /// operator sets it right. The twin may answer.
        CLOCK_UNTRUSTED = 305 => "clock_untrusted",
    }
}

impl Status {
    /// True for the status of a successful request.
    pub fn is_ok(self) -> bool {
        self == Status::OK
    }

    /// True where retrying the same request (same id) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::FRAME_CRC
                | Status::FRAME_COBS
                | Status::FRAME_SHORT
                | Status::BUSY
                | Status::SHUTTING_DOWN
                | Status::STARTING
                | Status::UNKNOWN_RESPONSE
                | Status::INTERNAL
                | Status::HSM_UNAVAILABLE
                | Status::REPOSITORY_FAILURE
        )
    }
}
