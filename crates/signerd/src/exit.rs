//! Exit statuses and how failures map to them (the unit's
//! `RestartPreventExitStatus=` relies on these).

/// Exit status for a configuration error (usage errors exit with 2, from clap).
pub const EXIT_CONFIG: u8 = 1;
/// Exit status when the daemon failed at run time.
pub const EXIT_RUNTIME: u8 = 3;
/// Exit status when the token refused the PIN: restarting would only count
/// more failed logins against the token, so the unit does not restart on it.
pub const EXIT_PIN: u8 = 4;

/// A command's failure: its exit code and message.
pub struct Failed(pub u8, pub String);

impl From<String> for Failed {
    fn from(message: String) -> Failed {
        Failed(1, message)
    }
}

impl From<&str> for Failed {
    fn from(message: &str) -> Failed {
        Failed(1, message.to_string())
    }
}

/// Exit status when the repository is refused: missing, empty, foreign,
/// another signer's, of a newer schema, or in use.
pub const EXIT_REPO_REFUSED: u8 = 5;

/// Exit status when the repository is damaged.
pub const EXIT_REPO_DAMAGED: u8 = 6;

/// The exit status for a repository error.
pub fn repo_exit(e: &signer_repository::RepoError) -> u8 {
    match e {
        // Another process holds it for a moment (an inspection command):
        // a run failure the unit may retry, not a refusal.
        signer_repository::RepoError::Refused(signer_repository::Refusal::InUse(_)) => 3,
        signer_repository::RepoError::Refused(_) => EXIT_REPO_REFUSED,
        signer_repository::RepoError::Corrupt(_) => EXIT_REPO_DAMAGED,
        _ => 3,
    }
}

/// The exit status for a CA service error at start.
pub fn ca_exit(e: &signer_ca::CaError) -> u8 {
    match e {
        signer_ca::CaError::Repository(r) => repo_exit(r),
        signer_ca::CaError::Pin(_) => 4,
        _ => 1,
    }
}
