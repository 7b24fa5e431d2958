//! A CA on a private SoftHSM2 token, made the way an operator would: with
//! `signerd setup`. Used by the integration tests and the benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use signer_protocol::msg;

use crate::{bin, SoftHsm, SOFTHSM_MODULE};

/// A server-certificate profile issued by `sub`: CN and DNS names only.
pub const SERVER_PROFILE: &str = "  profiles:
    server:
      issuer: sub
      default_days: 90
      max_days: 397
      key_usage: [digital_signature]
      extended_key_usage: [server_auth]
      subject_attributes: [CN]
      san_types: [dns]
      require_san: true
";

/// A `sign_x509` request under the `server` profile for `cn`, valid 30 days.
pub fn sign_request(request_id: &str, csr: Vec<u8>, cn: &str) -> msg::SignX509 {
    msg::SignX509 {
        request_id: request_id.into(),
        profile: "server".into(),
        csr,
        subject: vec![("CN".into(), cn.into())],
        sans: vec![msg::SanEntry {
            kind: "dns".into(),
            value: cn.into(),
        }],
        validity_days: Some(30),
    }
}

/// A `fetch_crl` request for the whole CRL of `issuer` (no difference).
pub fn full_crl(issuer: &str) -> msg::FetchCrl {
    msg::FetchCrl {
        issuer: issuer.into(),
        have_number: None,
        have_sha256: None,
        shard: None,
    }
}

/// Runs `signer-client --link DEVICE ARGS…` in `dir`: (exit code, stdout, stderr).
pub fn signer_client(device: &Path, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(bin("signer-client"))
        .arg("--link")
        .arg(device)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run signer-client");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A private SoftHSM2 token with a root (RSA-2048) and an intermediate key
/// and certificates made by `signerd setup`, and the `ca:` section that uses them.
pub struct Ceremony {
    /// The token store.
    pub hsm: SoftHsm,
    /// The `ca:` section for the daemon's configuration.
    pub ca_yaml: String,
    /// The signer the ceremony made the repository for.
    pub signer_id: String,
}

/// Runs `openssl` in `dir`: (success, stdout and stderr).
pub fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl) must be installed");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Makes a key and CSR with openssl (`key`: the `-newkey` arguments); returns the CSR (PEM).
pub fn make_csr(dir: &Path, name: &str, key: &[&str]) -> Vec<u8> {
    let (key_file, csr_file) = (format!("{name}.key"), format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-newkey"];
    args.extend_from_slice(key);
    args.extend_from_slice(&[
        "-nodes", "-keyout", &key_file, "-out", &csr_file, "-subj", "/CN=x",
    ]);
    let (ok, text) = openssl(dir, &args);
    assert!(ok, "{text}");
    std::fs::read(dir.join(csr_file)).expect("read CSR")
}

impl Ceremony {
    /// Keys, a root and an intermediate made with `signerd setup`. `sub_key`
    /// is the intermediate's key type (`rsa2048`, `p256`, …); `profiles` is
    /// YAML for `ca.profiles` (indented two spaces, starting with
    /// `  profiles:`), whose issuer is `sub`.
    pub fn new(sub_key: &str, profiles: &str) -> Ceremony {
        Ceremony::new_as("test-signer", sub_key, profiles)
    }

    /// Like [`Ceremony::new`] for the signer `signer_id`: the ceremony runs
    /// with that signer's configuration, as the runbook does, starting with
    /// `signerd repo init`.
    pub fn new_as(signer_id: &str, sub_key: &str, profiles: &str) -> Ceremony {
        let hsm = SoftHsm::new("signer-a");
        let d = hsm.dir().to_path_buf();
        let pin = hsm.pin_file();
        let ca_yaml = format!(
            "ca:
  hsm:
    module: {SOFTHSM_MODULE}
    token: {{label: signer-a}}
    pin: {{file: {pin}}}
  keys:
    - {{name: root, label: root-key}}
    - {{name: sub, label: sub-key}}
  cas:
    - {{name: root, key: root, certificate: {d}/root.pem}}
    - {{name: sub, key: sub, certificate: {d}/sub.pem}}
  repository: {d}/repository.redb
  serial_prefix: 0x21
{profiles}",
            pin = pin.display(),
            d = d.display()
        );
        let c = Ceremony {
            hsm,
            ca_yaml,
            signer_id: signer_id.to_string(),
        };
        // Setup needs a complete configuration file; the link is not opened.
        let setup_config = format!(
            "signer_id: {signer_id}\nlink: {{device: /dev/null}}\n{}",
            c.ca_yaml
        );
        std::fs::write(d.join("setup.yaml"), setup_config).expect("write setup.yaml");
        let (ok, text) = c.signerd(&[
            "setup",
            "generate-key",
            "--config",
            "setup.yaml",
            "--label",
            "x",
            "--type",
            "p256",
            "--dry-run",
        ]);
        assert!(
            !ok && text.contains("signerd repo init"),
            "no set-up step before the repository exists: {text}"
        );
        let out = c.setup(&["repo", "init", "--config", "setup.yaml"]);
        assert!(out.contains("created repository"), "{out}");
        let generate = |label: &str, kind: &str| {
            c.setup(&[
                "setup",
                "generate-key",
                "--config",
                "setup.yaml",
                "--label",
                label,
                "--type",
                kind,
            ])
        };
        let dry = c.setup(&[
            "setup",
            "generate-key",
            "--config",
            "setup.yaml",
            "--label",
            "root-key",
            "--type",
            "rsa2048",
            "--dry-run",
        ]);
        assert!(dry.contains("nothing generated"), "{dry}");
        let out = generate("root-key", "rsa2048");
        assert!(out.contains("RSA-2048"), "{out}");
        generate("sub-key", sub_key);
        let (ok, text) = c.signerd(&[
            "setup",
            "generate-key",
            "--config",
            "setup.yaml",
            "--label",
            "sub-key",
            "--type",
            sub_key,
        ]);
        assert!(
            !ok && text.contains("already"),
            "a second key with the same label is refused: {text}"
        );
        c.setup(&[
            "setup",
            "self-sign",
            "--config",
            "setup.yaml",
            "--key",
            "root",
            "--subject",
            "CN=Test Root,O=Test",
            "--days",
            "3650",
            "--path-len",
            "1",
            "--out",
            "root.pem",
        ]);
        c.setup(&[
            "setup",
            "intermediate",
            "--config",
            "setup.yaml",
            "--issuer",
            "root",
            "--key",
            "sub",
            "--subject",
            "CN=Test Sub,O=Test",
            "--days",
            "1825",
            "--crl-url",
            "http://crl.example.org/root.crl",
            "--out",
            "sub.pem",
        ]);
        let out = c.setup(&[
            "setup",
            "import",
            "--config",
            "setup.yaml",
            "--key",
            "sub",
            "--cert",
            "sub.pem",
        ]);
        assert!(out.contains("matches key sub"), "{out}");
        let (ok, text) = c.signerd(&[
            "setup",
            "import",
            "--config",
            "setup.yaml",
            "--key",
            "root",
            "--cert",
            "sub.pem",
        ]);
        assert!(!ok && text.contains("does not match"), "{text}");
        c.setup(&[
            "setup",
            "csr",
            "--config",
            "setup.yaml",
            "--key",
            "sub",
            "--subject",
            "CN=Cross",
            "--out",
            "cross.csr",
        ]);
        let (ok, text) = openssl(&d, &["req", "-in", "cross.csr", "-verify", "-noout"]);
        assert!(ok, "{text}");
        let (ok, text) = openssl(
            &d,
            &["verify", "-x509_strict", "-CAfile", "root.pem", "sub.pem"],
        );
        assert!(ok, "{text}");
        c
    }

    /// Gives the intermediate `sub` partitioned CRLs: `count` shards at
    /// `url` (with `{shard}` in it) in `ca_yaml` (`ca.cas[1].crl_shards`).
    pub fn with_crl_shards(&mut self, count: u16, url: &str) {
        let sub = format!("certificate: {}/sub.pem}}", self.dir().display());
        assert!(self.ca_yaml.contains(&sub), "{}", self.ca_yaml);
        self.ca_yaml = self.ca_yaml.replace(
            &sub,
            &format!(
                "certificate: {}/sub.pem, crl_shards: {{count: {count}, url: \"{url}\"}}}}",
                self.dir().display()
            ),
        );
    }

    /// Adds an OpenPGP CA key (RSA-2048, key name `openpgp`) made with
    /// `signerd setup generate-key` and its certificate made with `signerd
    /// setup openpgp`; `ca_yaml` gains the key and `ca.openpgp` (casual
    /// certifications, 0x12). Returns `setup openpgp`'s output.
    pub fn add_openpgp(&mut self) -> String {
        let d = self.dir().to_path_buf();
        self.setup(&[
            "setup",
            "generate-key",
            "--config",
            "setup.yaml",
            "--label",
            "openpgp-key",
            "--type",
            "rsa2048",
        ]);
        self.ca_yaml = format!(
            "{}  openpgp:
    key: openpgp
    certificate: {d}/openpgp-ca.asc
    user_id: Test Signing Authority <sign@example.org>
    created: 2026-01-01T00:00:00Z
    policy: {{certification_level: 0x12, max_days: 400}}
",
            self.ca_yaml.replace(
                "    - {name: sub, label: sub-key}\n",
                "    - {name: sub, label: sub-key}\n    - {name: openpgp, label: openpgp-key}\n",
            ),
            d = d.display()
        );
        std::fs::write(
            d.join("setup.yaml"),
            format!(
                "signer_id: {}\nlink: {{device: /dev/null}}\n{}",
                self.signer_id, self.ca_yaml
            ),
        )
        .expect("write setup.yaml");
        self.setup(&["setup", "openpgp", "--config", "setup.yaml"])
    }

    /// Makes the Ed25519 audit key (`audit-key`) and returns `ca_yaml` with
    /// it in `ca.keys` and a `ca.audit` section (origin
    /// `signer-a.example/audit`, a checkpoint every 4 entries or second,
    /// degraded past 3 unacknowledged entries); also written with the
    /// signer's id and a link as `audited.yaml` for `signerd` commands.
    pub fn with_audit_log(&self) -> String {
        let out = self.setup(&[
            "setup",
            "generate-key",
            "--config",
            "setup.yaml",
            "--label",
            "audit-key",
            "--type",
            "ed25519",
        ]);
        assert!(out.contains("Ed25519"), "{out}");
        let yaml = self.ca_yaml.replacen(
            "    - {name: sub, label: sub-key}\n",
            "    - {name: sub, label: sub-key}\n    - {name: audit, label: audit-key}\n",
            1,
        ) + "  audit:\n    key: audit\n    origin: signer-a.example/audit\n    every_entries: 4\n    every_secs: 1\n    unacknowledged_warning: 3\n";
        std::fs::write(
            self.dir().join("audited.yaml"),
            format!(
                "signer_id: {}\nlink: {{device: /dev/null}}\n{yaml}",
                self.signer_id
            ),
        )
        .expect("write audited.yaml");
        yaml
    }

    /// The token store's directory, which also holds the certificates.
    pub fn dir(&self) -> &Path {
        self.hsm.dir()
    }

    /// Environment for processes that use the token.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        vec![("SOFTHSM2_CONF".into(), self.hsm.conf.clone())]
    }

    /// Runs `signerd` with the token's environment in the token directory.
    pub fn signerd(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bin("signerd"))
            .args(args)
            .env("SOFTHSM2_CONF", &self.hsm.conf)
            .current_dir(self.dir())
            .output()
            .expect("run signerd");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Like [`Ceremony::signerd`], asserting success.
    pub fn setup(&self, args: &[&str]) -> String {
        let (ok, text) = self.signerd(args);
        assert!(ok, "signerd {args:?}: {text}");
        text
    }
}

/// A pkilint command: from the virtual environment scripts/setup-debian.sh
/// makes (`PKILINT_VENV`, by default ~/.cache/serial-link-signer/pkilint),
/// else from PATH.
pub fn linter(tool: &str) -> Command {
    let venv = std::env::var_os("PKILINT_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/serial-link-signer/pkilint"))
        });
    match venv.map(|v| v.join("bin").join(tool)) {
        Some(path) if path.exists() => Command::new(path),
        _ => Command::new(tool),
    }
}

/// pkilint's findings at WARNING and above, as (code, severity). A file
/// the linter refuses to judge (unreadable, or of a kind it cannot detect:
/// an e-mail certificate without an S/MIME policy, say) fails the test.
pub fn pkilint(tool: &str, args: &[&str], file: &Path) -> Vec<(String, String)> {
    let (code, out, err) = crate::output(linter(tool).args(args).arg(file));
    assert!(
        code.is_some(),
        "{tool} (pip install pkilint; scripts/setup-debian.sh installs it): {err}"
    );
    assert!(
        !err.contains("Could not determine") && !err.contains("Failed to load"),
        "{tool} cannot judge {}: {err}",
        file.display()
    );
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (code, severity) = l.rsplit_once(" (")?;
            let severity = severity.strip_suffix(')')?;
            matches!(severity, "FATAL" | "ERROR" | "WARNING")
                .then(|| (code.to_string(), severity.to_string()))
        })
        .collect()
}

/// check-config refuses the configuration at `config_path` with each edit
/// (`from` replaced by `to`), naming `field`.
pub fn check_config_refuses(config_path: &Path, edits: &[(&str, &str, &str)]) {
    let config = std::fs::read_to_string(config_path).expect("check-config case");
    for &(from, to, field) in edits {
        assert!(config.contains(from), "{from}");
        let bad = config_path.with_file_name("bad.yaml");
        std::fs::write(&bad, config.replacen(from, to, 1)).expect("check-config case");
        let (code, out, err) = crate::output(
            Command::new(bin("signerd"))
                .args(["check-config", "--offline", "--config"])
                .arg(&bad),
        );
        assert_eq!(code, Some(1), "{field}: {out}{err}");
        assert!(format!("{out}{err}").contains(field), "{field}: {out}{err}");
    }
}
