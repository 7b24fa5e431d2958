//! Where a token PIN comes from. The PIN is held in a zeroizing secret and
//! never logged; its source is described without the value.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::HsmError;

/// A PIN source, as configured. In YAML: `{file: path}`, `{env: VAR}` or
/// `{credential: name}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PinRepr")]
pub enum PinSource {
    /// A file holding the PIN (trailing newline ignored); must not be readable by others.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A systemd credential (`LoadCredential=`), read from `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
    /// Asked on the controlling terminal without echo (commands run by
    /// hand when the configured source exists only inside the unit); the
    /// text names the token. Never from a configuration file.
    Terminal(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRepr {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    env: Option<String>,
    #[serde(default)]
    credential: Option<String>,
}

impl TryFrom<PinRepr> for PinSource {
    type Error = &'static str;

    fn try_from(r: PinRepr) -> Result<Self, Self::Error> {
        match (r.file, r.env, r.credential) {
            (Some(f), None, None) => Ok(PinSource::File(f)),
            (None, Some(e), None) => Ok(PinSource::Env(e)),
            (None, None, Some(c)) => Ok(PinSource::Credential(c)),
            _ => Err("expected exactly one of file, env or credential"),
        }
    }
}

/// A PIN, zeroized when dropped.
pub struct SecretPin(SecretString);

impl std::fmt::Debug for SecretPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPin(..)")
    }
}

impl SecretPin {
    /// Wraps a PIN given directly (for set-up tools and tests).
    pub fn new(pin: String) -> Self {
        SecretPin(SecretString::from(pin))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

fn from_text(mut text: String) -> Result<SecretPin, HsmError> {
    let trimmed = text.trim_end_matches(['\n', '\r']).to_string();
    text.zeroize();
    if trimmed.is_empty() {
        return Err(HsmError::PinSource("the PIN is empty".into()));
    }
    Ok(SecretPin::new(trimmed))
}

#[cfg(unix)]
fn check_not_world_readable(path: &std::path::Path) -> Result<(), HsmError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| HsmError::PinSource(format!("{}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(HsmError::PinSource(format!(
            "{} is accessible to other users (mode {:o}); use chmod 600 or 640",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

/// Asks on the controlling terminal with echo off, restoring it after.
fn ask(prompt: &str) -> Result<String, HsmError> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::{BufRead, Write};
    let no_tty = |e: &dyn std::fmt::Display| {
        HsmError::PinSource(format!("no terminal to ask for the PIN on: {e}"))
    };
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| no_tty(&e))?;
    let saved = tcgetattr(&tty).map_err(|e| no_tty(&e))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    // Echo off before the prompt shows: whatever is typed once it is seen
    // is never echoed.
    tcsetattr(&tty, OptionalActions::Drain, &quiet).map_err(|e| no_tty(&e))?;
    if let Err(e) = (&tty)
        .write_all(prompt.as_bytes())
        .and_then(|()| (&tty).flush())
    {
        let _ = tcsetattr(&tty, OptionalActions::Flush, &saved);
        return Err(no_tty(&e));
    }
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let restored = tcsetattr(&tty, OptionalActions::Flush, &saved);
    read.map_err(|e| no_tty(&e))?;
    restored.map_err(|e| no_tty(&e))?;
    Ok(line)
}

impl PinSource {
    /// Reads the PIN.
    pub fn read(&self) -> Result<SecretPin, HsmError> {
        match self {
            PinSource::File(path) => {
                check_not_world_readable(path)?;
                let text = std::fs::read_to_string(path)
                    .map_err(|e| HsmError::PinSource(format!("{}: {e}", path.display())))?;
                from_text(text)
            }
            PinSource::Env(var) => {
                let text = std::env::var(var).map_err(|_| {
                    HsmError::PinSource(format!("environment variable {var} is not set"))
                })?;
                from_text(text)
            }
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    HsmError::PinSource(format!(
                        "systemd credential {name} exists only inside the unit (LoadCredential={name}:… in signerd.service); \
                         for a command run by hand give --pin-file FILE (mode 0600), or run it on a terminal to be asked"
                    ))
                })?;
                let path = PathBuf::from(dir).join(name);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    HsmError::PinSource(format!("credential {}: {e}", path.display()))
                })?;
                from_text(text)
            }
            PinSource::Terminal(token) => from_text(ask(&format!("PIN for {token}: "))?),
        }
    }

    /// A description that never includes the PIN.
    pub fn describe(&self) -> String {
        match self {
            PinSource::File(p) => format!("file {}", p.display()),
            PinSource::Env(v) => format!("environment variable {v}"),
            PinSource::Credential(n) => format!("systemd credential {n}"),
            PinSource::Terminal(_) => "asked on the terminal".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_pin_is_trimmed_and_permissions_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            PinSource::File(path.clone()).read().unwrap().expose(),
            "1234"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = PinSource::File(path).read().unwrap_err().to_string();
        assert!(err.contains("accessible to other users"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_pin() {
        assert_eq!(
            format!("{:?}", SecretPin::new("secret".into())),
            "SecretPin(..)"
        );
    }
}
