//! GnuPG and Sequoia's `sq` as the tests' independent OpenPGP
//! implementations: a throw-away GnuPG home that makes users' keys and
//! checks certifications.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A GnuPG home directory of its own (removed on drop).
pub struct Gpg {
    dir: tempfile::TempDir,
}

impl Default for Gpg {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpg {
    /// An empty home.
    pub fn new() -> Gpg {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod GNUPGHOME");
        Gpg { dir }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// `gpg` in batch mode on this home, with an empty passphrase.
    fn command(&self) -> Command {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.dir.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        cmd
    }

    /// Runs `gpg` with `args` in batch mode: (success, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("gpg (Debian package gnupg) must be installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like [`Gpg::run`], failing the test if gpg fails; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "gpg {args:?} failed: {err}");
        out
    }

    /// Makes a key (`algo` as `gpg --quick-gen-key` takes it: `rsa2048`,
    /// `ed25519`, …) with `uid`, never expiring; returns its fingerprint.
    pub fn gen_key(&self, uid: &str, algo: &str) -> String {
        self.gen_key_with(uid, algo, "never", &[])
    }

    /// [`Gpg::gen_key`] with an expiry (`1d`, `never`, …) and extra
    /// leading options (e.g. `--faked-system-time`).
    pub fn gen_key_with(&self, uid: &str, algo: &str, expire: &str, before: &[&str]) -> String {
        let mut args: Vec<&str> = before.to_vec();
        args.extend_from_slice(&["--quick-gen-key", uid, algo, "cert,sign", expire]);
        self.ok(&args);
        self.fingerprint(uid)
    }

    /// The fingerprint of the key holding `uid`.
    pub fn fingerprint(&self, uid: &str) -> String {
        let out = self.ok(&["--with-colons", "--list-keys", &format!("={uid}")]);
        out.lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .expect("fingerprint in gpg output")
            .to_string()
    }

    /// The tests' usual user: "Alice <alice@example.org>", RSA-3072, with a
    /// second user ID "Alice Work <alice@work.example>" and a revoked third
    /// one, "Alice Old <alice@old.example>". Returns the fingerprint.
    pub fn alice(&self) -> String {
        let alice = self.gen_key("Alice <alice@example.org>", "rsa3072");
        self.add_uid(&alice, "Alice Work <alice@work.example>");
        self.add_uid(&alice, "Alice Old <alice@old.example>");
        self.revoke_uid(&alice, "Alice Old <alice@old.example>");
        alice
    }

    /// Adds a user ID to the key `fpr`.
    pub fn add_uid(&self, fpr: &str, uid: &str) {
        self.ok(&["--quick-add-uid", fpr, uid]);
    }

    /// Revokes a user ID of the key `fpr`.
    pub fn revoke_uid(&self, fpr: &str, uid: &str) {
        self.ok(&["--quick-revoke-uid", fpr, uid]);
    }

    /// The public key `fpr`, binary.
    pub fn export(&self, fpr: &str) -> Vec<u8> {
        self.export_with(&["--export", fpr])
    }

    /// gpg's output for an export command line.
    pub fn export_with(&self, args: &[&str]) -> Vec<u8> {
        let out = self.command().args(args).output().expect("gpg");
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "gpg {args:?}"
        );
        out.stdout
    }

    /// Writes `bytes` to a file in the home and imports it.
    pub fn import(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.file(name, bytes);
        let (ok, _, err) = self.run(&["--import", path.to_str().expect("utf-8 path")]);
        assert!(ok, "gpg --import {name}: {err}");
        err
    }

    /// Writes `bytes` to a file in the home directory.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write file");
        path
    }

    /// `gpg --check-sigs` in colon format: one `(verdict, issuer key id,
    /// signature class, user ID)` per signature over a user ID, where the
    /// verdict is `!` (good), `-` (bad), `?` (key missing) or `%` (error).
    pub fn check_sigs(&self, fpr: &str) -> Vec<(char, String, String, String)> {
        let (_, out, _) = self.run(&["--with-colons", "--check-sigs", fpr]);
        let mut sigs = Vec::new();
        let mut uid = String::new();
        for line in out.lines() {
            let f: Vec<&str> = line.split(':').collect();
            match f.first() {
                Some(&"uid") => uid = f.get(9).map(|s| s.to_string()).unwrap_or_default(),
                Some(&"sub") => uid.clear(),
                Some(&"sig") | Some(&"rev") if !uid.is_empty() => sigs.push((
                    f.get(1).and_then(|v| v.chars().next()).unwrap_or(' '),
                    f.get(4).map(|s| s.to_string()).unwrap_or_default(),
                    f.get(10).map(|s| s.to_string()).unwrap_or_default(),
                    uid.clone(),
                )),
                _ => {}
            }
        }
        sigs
    }
}

/// Runs one of Sequoia's tools (`sq`, `sq-wot`) with `args`: (success,
/// stdout, stderr).
pub fn sequoia(tool: &str, args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("temp dir");
    let out = Command::new(tool)
        .env("SEQUOIA_HOME", home.path())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (Debian packages sq, sq-wot) must be installed: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
