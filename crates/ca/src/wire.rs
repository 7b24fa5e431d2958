//! The wire status of every domain error, decided here and nowhere else:
//! issuance (profiles, CSRs, lint, the key backend), OpenPGP certification,
//! the repository. Handlers turn errors into [`Failure`]s only through
//! these functions, so a status means the same whichever command sends it.

use signer_openpgp::PgpError;
use signer_protocol::Status;
use signer_repository::RepoError;
use signer_service::Failure;
use signer_x509::{CsrError, IssueError};

/// The wire status of an issuance failure.
pub fn issue_failure(e: &IssueError) -> Failure {
    let status = match e {
        IssueError::UnknownProfile(_) => Status::UNKNOWN_PROFILE,
        IssueError::Csr(CsrError::Malformed(_)) => Status::MALFORMED_CSR,
        IssueError::Csr(CsrError::BadSignature(_)) => Status::BAD_CSR_SIGNATURE,
        IssueError::Csr(CsrError::UnsupportedKey(_)) => Status::UNSUPPORTED_KEY,
        IssueError::Csr(CsrError::UnknownCriticalExtension(_)) => {
            Status::UNKNOWN_CRITICAL_EXTENSION
        }
        IssueError::WeakKey(_) => Status::WEAK_KEY,
        IssueError::KeyNotAllowed(_) => Status::KEY_TYPE_NOT_ALLOWED,
        IssueError::SubjectNotAllowed(_) => Status::SUBJECT_NOT_ALLOWED,
        IssueError::SanNotAllowed(_) => Status::SAN_NOT_ALLOWED,
        IssueError::ValidityTooLong { .. } => Status::VALIDITY_TOO_LONG,
        IssueError::Lint { .. } => Status::LINT_FAILED,
        IssueError::Hsm(h) if h.is_transient() => Status::HSM_UNAVAILABLE,
        IssueError::Hsm(_) => Status::HSM_FAILURE,
        IssueError::Issuer(_) => Status::ISSUER_UNAVAILABLE,
        IssueError::Encoding(_) => Status::INTERNAL,
    };
    let failure = Failure::new(status, e.to_string());
    match e {
        IssueError::Lint { rule, .. } => failure.with_detail(*rule),
        _ => failure,
    }
}

/// The wire status of a certification failure.
pub fn pgp_failure(e: &PgpError) -> Failure {
    let status = match e {
        PgpError::Malformed(_) => Status::MALFORMED_OPENPGP_KEY,
        PgpError::SecretKey => Status::OPENPGP_SECRET_KEY,
        PgpError::BadSelfSignature(_) => Status::BAD_SELF_SIGNATURE,
        PgpError::AlgorithmNotAllowed(_) => Status::OPENPGP_ALGORITHM_NOT_ALLOWED,
        PgpError::WeakKey(_) => Status::WEAK_KEY,
        PgpError::UserIdNotFound(_) => Status::USER_ID_NOT_FOUND,
        PgpError::UserIdRevoked(_) => Status::USER_ID_REVOKED,
        PgpError::UserIdExpired(_) => Status::USER_ID_EXPIRED,
        PgpError::KeyRevoked(_) => Status::OPENPGP_KEY_REVOKED,
        PgpError::KeyExpired(_) => Status::OPENPGP_KEY_EXPIRED,
        PgpError::Expiry(_) => Status::INVALID_EXPIRY,
        PgpError::TooLarge { .. } => Status::OPENPGP_KEY_TOO_LARGE,
        PgpError::Hsm(h) if h.is_transient() => Status::HSM_UNAVAILABLE,
        PgpError::Hsm(_) => Status::HSM_FAILURE,
        PgpError::CaKey(_) => Status::ISSUER_UNAVAILABLE,
    };
    Failure::new(status, e.to_string())
}

/// The wire failure for a repository error. `undone` says what did not
/// happen (e.g. "nothing was issued"), where that is certain.
pub(crate) fn repo_failure(e: &RepoError, undone: &str) -> Failure {
    match e {
        RepoError::Corrupt(_) | RepoError::Refused(_) => Failure::new(
            Status::REPOSITORY_CORRUPT,
            format!(
                "{e}; {undone}. The record is not served; the operator must run `signerd repo check`"
            ),
        ),
        _ => Failure::new(
            Status::REPOSITORY_FAILURE,
            format!("{e}; {undone}. Retry later: the signer writes again as soon as its disk does"),
        ),
    }
}
