//! Why SoftHSM2 may not show a token to this process: its token directory
//! (from `SOFTHSM2_CONF` or `/etc/softhsm/softhsm2.conf`) or the files in
//! it cannot be read and written by the user signerd runs as — typically
//! the service user not in group `softhsm`, or token files made by root
//! during the ceremony (mode 0600). SoftHSM2 itself says only "Some
//! horrible, unrecoverable error" or shows no token.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Whether `module` is SoftHSM2's.
fn is_softhsm(module: &Path) -> bool {
    module
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("softhsm"))
}

/// The token directory SoftHSM2 uses in this process.
fn token_dir() -> Option<PathBuf> {
    let conf = std::env::var_os("SOFTHSM2_CONF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/softhsm/softhsm2.conf"));
    let text = std::fs::read_to_string(conf).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "directories.tokendir").then(|| PathBuf::from(v.trim()))
    })
}

/// The name of the user this process runs as.
fn user() -> String {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let name = uid.and_then(|uid| {
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
    });
    match (name, uid) {
        (Some(n), _) => n,
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "this user".into(),
    }
}

fn describe(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "{} (uid {}, gid {}, mode {:o})",
            path.display(),
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(_) => path.display().to_string(),
    }
}

/// The first path under the token directory this process cannot use, and
/// what to do about it; `None` when the module is not SoftHSM2 or every
/// file can be read and written.
pub fn diagnose(module: &Path) -> Option<String> {
    if !is_softhsm(module) {
        return None;
    }
    let dir = token_dir()?;
    let user = user();
    let advice = format!(
        "signerd runs as {user}: add it to SoftHSM2's group (adduser {user} softhsm) and give the group the token files \
         (chgrp -R softhsm {d}; chmod -R g+rwX {d}), or run the ceremony as {user} (sudo -u {user} signerd setup …)",
        d = dir.display()
    );
    let refused = |what: &str, path: &Path, e: std::io::Error| {
        Some(format!(
            "SoftHSM2's {what} {} cannot be {} by {user} ({e}); {advice}",
            describe(path),
            if what == "token file" {
                "read and written"
            } else {
                "read"
            }
        ))
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => return refused("token directory", &dir, e),
    };
    for token in entries.flatten() {
        let path = token.path();
        if !path.is_dir() {
            continue;
        }
        let files = match std::fs::read_dir(&path) {
            Ok(f) => f,
            Err(e) => return refused("token", &path, e),
        };
        for file in files.flatten() {
            let file = file.path();
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file)
            {
                return refused("token file", &file, e);
            }
        }
    }
    None
}
