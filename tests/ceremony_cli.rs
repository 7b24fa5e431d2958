//! The key ceremony's commands as a person runs them by hand: where the
//! token PIN comes from, subjects written by RFC 4514, output files.
//!
//! Where the token PIN comes from when a person runs a command by hand.
//! The shipped configuration takes it from the systemd credential
//! `token-pin`, which exists only inside `signerd.service`: a set-up or
//! check command run by hand is told how to give it (`--pin-file`), asks on
//! a terminal, and a PIN that cannot be read is a configuration problem
//! (exit 1, nothing sent to the token), never "the token refused the PIN"
//! (exit 4), and never after "configuration OK" was printed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, output};

fn signerd(c: &Ceremony, args: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(bin("signerd"));
    cmd.args(args).env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in c.env() {
        cmd.env(k, v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    output(&mut cmd)
}

#[test]
fn the_pin_of_a_credential_config_for_commands_run_by_hand() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir();
    let pin_file = c.hsm.pin_file();
    let pin = std::fs::read_to_string(&pin_file).unwrap();
    // The shipped way: a systemd credential.
    let yaml = format!(
        "signer_id: test-signer\nlink: {{device: /dev/null}}\n{}",
        c.ca_yaml
    )
    .replace(
        &format!("pin: {{file: {}}}", pin_file.display()),
        "pin: {credential: token-pin}",
    );
    assert!(yaml.contains("credential: token-pin"), "{yaml}");
    let config = d.join("credential.yaml");
    std::fs::write(&config, &yaml).unwrap();
    let config_s = config.to_str().unwrap();

    // Run by hand, not on a terminal: told what to do, exit 1, not "OK".
    let (code, out, err) = signerd(&c, &["check-config", "--config", config_s], &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(!out.contains("configuration OK"), "{out}");
    assert!(
        err.contains("token-pin") && err.contains("--pin-file"),
        "{err}"
    );
    // A set-up step the same way, before anything reaches the token.
    let (code, out, err) = signerd(
        &c,
        &[
            "setup",
            "generate-key",
            "--config",
            config_s,
            "--label",
            "k2",
            "--type",
            "p256",
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("--pin-file"), "{err}");

    // --pin-file, for any command.
    let (code, out, err) = signerd(
        &c,
        &[
            "check-config",
            "--config",
            config_s,
            "--pin-file",
            pin_file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("configuration OK") && out.contains("token OK"),
        "{out}"
    );
    let (code, out, err) = signerd(
        &c,
        &[
            "--pin-file",
            pin_file.to_str().unwrap(),
            "setup",
            "generate-key",
            "--config",
            config_s,
            "--label",
            "k2",
            "--type",
            "p256",
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // Inside the unit: the credential directory systemd makes.
    let creds = d.join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("token-pin"), &pin).unwrap();
    let (code, out, err) = signerd(
        &c,
        &["check-config", "--config", config_s],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    );
    assert_eq!(code, Some(0), "{out}{err}");

    // A PIN file others can read: refused unread, exit 1.
    let loose = d.join("loose.pin");
    std::fs::write(&loose, &pin).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = signerd(
        &c,
        &[
            "check-config",
            "--config",
            config_s,
            "--pin-file",
            loose.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("accessible to other users") && !out.contains("OK"),
        "{err}"
    );
    // A missing one: exit 1, named.
    let (code, _, err) = signerd(
        &c,
        &[
            "check-config",
            "--config",
            config_s,
            "--pin-file",
            "/nonexistent/token.pin",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/token.pin"), "{err}");
    // A wrong PIN is the token's refusal: exit 4 (the unit never restarts on it).
    let wrong = d.join("wrong.pin");
    std::fs::write(&wrong, "000000\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = signerd(
        &c,
        &[
            "check-config",
            "--config",
            config_s,
            "--pin-file",
            wrong.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(4), "{out}{err}");
    assert!(!out.contains("configuration OK"), "{out}");

    // On a terminal (script(1) gives the command one): asked, without echo.
    let command = format!(
        "{} check-config --config {config_s}",
        bin("signerd").display()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in c.env() {
        script.env(k, v);
    }
    let mut child = script.spawn().unwrap();
    // The PIN is typed once the prompt is shown (typed earlier, the
    // terminal would still echo it).
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let mut told = false;
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
            if !told && String::from_utf8_lossy(&seen).contains("PIN for ") {
                let _ = tx.send(());
                told = true;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("signerd asks for the PIN on the terminal");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(pin.trim().as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("PIN for PKCS#11 module"), "{out}");
    assert!(out.contains("token OK"), "{out}");
    assert!(!out.contains(pin.trim()), "the PIN is not echoed: {out}");
}

/// Subjects are RFC 4514 strings: escapes work, and the certificate's
/// subject printed by RFC 2253/4514 rules is the string given.
#[test]
fn subjects_by_rfc_4514_and_output_files_checked_before_the_hsm_signs() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir();
    // The repository `repo init` made is its owner's alone, whatever the umask.
    let mode = std::fs::metadata(d.join("repository.redb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "repository mode {mode:o}");
    let subject = r"CN=Example\, Inc. Root,O=Example\, Inc.,C=DE";
    let (ok, text) = c.signerd(&[
        "setup",
        "self-sign",
        "--config",
        "setup.yaml",
        "--key",
        "root",
        "--subject",
        subject,
        "--days",
        "30",
        "--out",
        "escaped.pem",
    ]);
    assert!(ok, "{text}");
    let (ok, printed) = signer_testsupport::ca::openssl(
        d,
        &[
            "x509",
            "-in",
            "escaped.pem",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
        ],
    );
    assert!(ok, "{printed}");
    assert_eq!(printed.trim(), format!("subject={subject}"));
    // What is not a name by those rules is refused before the token is used.
    for bad in ["CN=a+O=b", "O=Example, Inc.", "CN"] {
        let (ok, text) = c.signerd(&[
            "setup",
            "self-sign",
            "--config",
            "setup.yaml",
            "--key",
            "root",
            "--subject",
            bad,
            "--days",
            "30",
            "--out",
            "bad.pem",
        ]);
        assert!(!ok && text.contains("--subject"), "{bad}: {text}");
    }
    // An output file that cannot be written is found before the HSM signs:
    // nothing signed, nothing recorded as issued.
    let (ok, text) = c.signerd(&[
        "setup",
        "self-sign",
        "--config",
        "setup.yaml",
        "--key",
        "root",
        "--subject",
        "CN=Nowhere",
        "--days",
        "30",
        "--out",
        "/nonexistent/ca/root.pem",
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("/nonexistent/ca") && text.contains("nothing was signed"),
        "{text}"
    );
}

/// The service user cannot use token files the ceremony made as root: the
/// error says which file, as whom, and what to do; done, it works.
#[test]
fn a_token_the_service_user_cannot_read_is_named_with_the_fix() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // What a root ceremony leaves: the token directory reachable (as with
    // group softhsm), the token's files root's alone (0600).
    chmod(d, 0o755);
    for entry in std::fs::read_dir(d.join("tokens")).unwrap() {
        chmod(&entry.unwrap().path(), 0o755);
    }
    chmod(&d.join("tokens"), 0o755);
    let pin = d.join("nobody.pin");
    std::fs::copy(c.hsm.pin_file(), &pin).unwrap();
    let config = d.join("service.yaml");
    std::fs::write(
        &config,
        format!(
            "signer_id: test-signer\nlink: {{device: /dev/null}}\n{}",
            c.ca_yaml
        )
        .replace(
            &c.hsm.pin_file().display().to_string(),
            &pin.display().to_string(),
        ),
    )
    .unwrap();
    chmod(&config, 0o644);
    let nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin("signerd"))
            .args(args)
            .current_dir("/");
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        output(&mut cmd)
    };
    let chown_nobody = |path: &Path| {
        let ok = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    chown_nobody(&pin);
    let config_s = config.to_str().unwrap();
    let (code, out, err) = nobody(&["check-config", "--config", config_s]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("token file") && err.contains("cannot be read and written by nobody"),
        "{err}"
    );
    assert!(
        err.contains("adduser nobody softhsm") && err.contains("chmod -R g+rwX"),
        "{err}"
    );
    // Done as told (here: the files given to the user): it works.
    chown_nobody(&d.join("tokens"));
    chown_nobody(&d.join("repository.redb"));
    let (code, out, err) = nobody(&["check-config", "--config", config_s]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("token OK"), "{out}");
}

/// An intermediate this signer's root issued before this repository existed
/// (or elsewhere, with a copy of the key) is registered by `setup import`,
/// so the root can revoke it and list it on its CRL.
#[test]
fn an_imported_intermediate_of_this_root_is_registered_and_revocable() {
    use signer_client::Calls;
    use signer_protocol::{calls, msg};
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir();
    // A new, empty repository: the intermediate sub.pem is not in it.
    std::fs::remove_file(d.join("repository.redb")).unwrap();
    c.setup(&["repo", "init", "--config", "setup.yaml"]);
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
    assert!(
        out.contains("recorded as root's certificate, serial"),
        "{out}"
    );
    let serial = out
        .split("serial ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_string();
    // Again: the same record, not a second one.
    let again = c.setup(&[
        "setup",
        "import",
        "--config",
        "setup.yaml",
        "--key",
        "sub",
        "--cert",
        "sub.pem",
    ]);
    assert!(again.contains(&format!("serial {serial}")), "{again}");
    // The root itself is nobody's intermediate here.
    let root = c.setup(&[
        "setup",
        "import",
        "--config",
        "setup.yaml",
        "--key",
        "root",
        "--cert",
        "root.pem",
    ]);
    assert!(root.contains("not recorded here"), "{root}");

    let bench = signer_testsupport::Bench::start_with_env(
        signer_testsupport::LinkSpec::unthrottled(),
        &c.ca_yaml,
        c.env(),
    );
    let client = bench.client();
    let reply: msg::RevokeX509Reply = client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "revoke-sub".into(),
            issuer: "root".into(),
            serial: hex::decode(&serial).unwrap(),
            reason: 2, // cACompromise
            invalidity_date: None,
        })
        .unwrap();
    assert!(
        !reply.legacy,
        "a certificate the root is known to have issued"
    );
    let crl: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&msg::FetchCrl {
            issuer: "root".into(),
            have_number: None,
            have_sha256: None,
            shard: None,
        })
        .unwrap();
    let der = crl.crl.unwrap();
    let (_, entries) = signer_x509::crl::parse(&der).unwrap();
    assert_eq!(entries.len(), 1, "the intermediate on the root's CRL");
}

/// A real HSM through OpenSC (Debian's opensc-pkcs11.so, as the reference
/// configuration names it) with no card or reader: check-config says what
/// the module shows and what to look at, not only that the token is absent.
#[test]
fn opensc_without_its_token_says_what_to_check() {
    let module = Path::new("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so");
    assert!(
        module.exists(),
        "OpenSC's PKCS#11 module (Debian package opensc) must be installed"
    );
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let reference = include_str!("../configs/signerd-single.yaml");
    let config = dir.path().join("signerd.yaml");
    std::fs::write(
        &config,
        reference
            .replace(
                "/usr/lib/softhsm/libsofthsm2.so",
                &module.display().to_string(),
            )
            .replace(
                "pin: {credential: token-pin}",
                &format!("pin: {{file: {}}}", pin.display()),
            ),
    )
    .unwrap();
    let (code, out, err) = output(
        Command::new(bin("signerd"))
            .args(["check-config", "--config"])
            .arg(&config),
    );
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("token labelled signer-a is not present")
            && (err.contains("pcscd") || err.contains("the module shows")),
        "{err}"
    );
}
