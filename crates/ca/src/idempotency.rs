//! The idempotency key (`request_id`) of the commands that change state
//! (`sign_x509`, `revoke_x509`, `certify_openpgp`): what makes a retry —
//! after a lost answer, a restart, or a failover to the twin — return the
//! original result instead of acting twice. Not the envelope id, which only
//! deduplicates retransmissions of one frame within the response store.

use serde::Serialize;
use signer_protocol::Status;
use signer_service::Failure;
use tracing::warn;

/// Refuses a key that is not 1-128 printable ASCII characters.
pub(crate) fn check_key(request_id: &str) -> Result<(), Failure> {
    let ok = (1..=128).contains(&request_id.len())
        && request_id.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Failure::new(
            Status::MALFORMED_BODY,
            "request_id must be 1-128 printable ASCII characters",
        ))
    }
}

/// SHA-256 of the request's canonical encoding: a retried request matches,
/// a different request under the same key does not.
pub(crate) fn request_digest<T: Serialize>(request: &T) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(signer_protocol::encode_body(request)).to_vec()
}

/// Whether a request found under `request_id` is the one recorded (its
/// digest matches): then the recorded result is the answer; otherwise
/// `request_id_conflict`, naming what the key was used for (`used_for`).
pub(crate) fn same_request(
    request_id: &str,
    recorded: &[u8],
    digest: &[u8],
    used_for: &str,
) -> Result<(), Failure> {
    if recorded == digest {
        return Ok(());
    }
    warn!(
        request_id,
        used_for, "request id reused for a different request"
    );
    Err(Failure::new(
        Status::REQUEST_ID_CONFLICT,
        format!("request id {request_id} was used for a different request ({used_for})"),
    ))
}
