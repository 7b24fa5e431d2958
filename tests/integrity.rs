//! State the signer reads — its repository, its clock, its backups — when
//! absent, empty, foreign, damaged, full, or wrong: every case is refused
//! loudly (exit code, status, health) and nothing issued or revoked is lost
//! or served damaged. Real `signerd`, SoftHSM2 tokens, real files.
#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use signer_client::Client;
use signer_protocol::msg::{self, HealthStatus};
use signer_protocol::Status;
use signer_testsupport::ca::{full_crl, make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, faketime, output, Bench, LinkSpec};

/// Exit codes of `signerd` (README).
const REFUSED: i32 = 5;
const DAMAGED: i32 = 6;

fn signerd(c: &Ceremony, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("signerd"));
    cmd.args(args).current_dir(c.dir());
    for (k, v) in c.env() {
        cmd.env(k, v);
    }
    let (code, out, err) = output(&mut cmd);
    (code, format!("{out}{err}"))
}

fn repo(c: &Ceremony) -> PathBuf {
    c.dir().join("repository.redb")
}

/// Signs a new key's CSR under request id `id` (the same request again when
/// `id` was used before in `d`).
fn sign(client: &Client, d: &Path, id: &str) -> Result<msg::SignX509Reply, (Status, String)> {
    let saved = d.join(format!("{id}.request"));
    let request = match std::fs::read(&saved) {
        Ok(csr) => sign_request(id, csr, "www.example.org"),
        Err(_) => {
            let csr = make_csr(d, id, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
            std::fs::write(&saved, &csr).unwrap();
            sign_request(id, csr, "www.example.org")
        }
    };
    client
        .request::<calls::SignX509>(&request)
        .map_err(|e| match e {
            signer_client::ClientError::Signer {
                status, message, ..
            } => (status, message),
            other => (Status::INTERNAL, other.to_string()),
        })
}

fn check<'a>(h: &'a msg::HealthReply, name: &str) -> Option<&'a msg::Check> {
    h.checks.iter().find(|c| c.name == name)
}

/// Every command that reads the repository refuses, with exit code `code`
/// and `words` in its message, and creates nothing.
fn all_refuse(c: &Ceremony, code: i32, words: &str) {
    for args in [
        &["run", "--config", "setup.yaml"][..],
        &["check-config", "--config", "setup.yaml"],
        &["repo", "check", "--config", "setup.yaml"],
        &["audit", "verify", "--config", "setup.yaml"],
        &[
            "setup",
            "csr",
            "--config",
            "setup.yaml",
            "--key",
            "sub",
            "--subject",
            "CN=x",
            "--out",
            "x.csr",
        ],
    ] {
        let (got, text) = signerd(c, args);
        assert_eq!(got, Some(code), "signerd {args:?}: {text}");
        assert!(text.contains(words), "signerd {args:?}: {text}");
    }
}

#[test]
fn missing_empty_foreign_and_other_signers_repositories_are_refused() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let path = repo(&c);
    let kept = c.dir().join("kept.redb");
    std::fs::rename(&path, &kept).unwrap();

    all_refuse(&c, REFUSED, "there is no repository");
    assert!(
        !path.exists(),
        "nothing creates a repository as a side effect"
    );

    std::fs::write(&path, b"").unwrap();
    all_refuse(&c, REFUSED, "is empty");

    std::fs::write(&path, vec![0x55; 8192]).unwrap();
    all_refuse(&c, REFUSED, "is not a signer repository");

    // Another CA's repository (other keys, same names) is foreign.
    let other = Ceremony::new("p256", SERVER_PROFILE);
    std::fs::copy(repo(&other), &path).unwrap();
    all_refuse(&c, REFUSED, "the configured certificate for root has key");

    // This CA's repository under another signer id (the twin's, say).
    std::fs::copy(&kept, &path).unwrap();
    let yaml = std::fs::read_to_string(c.dir().join("setup.yaml")).unwrap();
    std::fs::write(
        c.dir().join("setup.yaml"),
        yaml.replace("signer_id: test-signer", "signer_id: signer-b"),
    )
    .unwrap();
    all_refuse(&c, REFUSED, "it belongs to signer \"test-signer\"");
    std::fs::write(c.dir().join("setup.yaml"), yaml).unwrap();

    // `repo init` never replaces a repository.
    let (code, text) = signerd(&c, &["repo", "init", "--config", "setup.yaml"]);
    assert_eq!(code, Some(REFUSED), "{text}");
    assert!(text.contains("already exists"), "{text}");
    let (code, text) = signerd(&c, &["repo", "check", "--config", "setup.yaml"]);
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn damage_is_found_and_never_served() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let first = sign(&client, &d, "web-1").unwrap();
    sign(&client, &d, "web-2").unwrap();
    drop(client);
    bench.daemon.stop_cleanly();
    let pristine = std::fs::read(repo(&c)).unwrap();

    // A byte flipped inside the stored certificate: redb's page checksum
    // fails at open, and every command refuses with the damaged exit code
    // instead of panicking or serving it.
    let at =
        find(&pristine, &first.certificate[40..80]).expect("the certificate is in the file") + 10;
    let mut bad = pristine.clone();
    bad[at] ^= 0x01;
    std::fs::write(repo(&c), &bad).unwrap();
    for args in [
        &["repo", "check", "--config", "setup.yaml"][..],
        &["run", "--config", "setup.yaml"],
        &["audit", "verify", "--config", "setup.yaml"],
    ] {
        let (code, text) = signerd(&c, args);
        assert_eq!(code, Some(DAMAGED), "signerd {args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
    }

    // Bytes flipped anywhere in the file (pages, headers, free space): a
    // clear refusal or a clean check, never a panic (exit 101).
    for offset in (0..pristine.len())
        .step_by(4096)
        .chain([0x1000, 0x1010, 0x2000 + 7])
    {
        let mut bad = pristine.clone();
        bad[offset] ^= 0x40;
        std::fs::write(repo(&c), &bad).unwrap();
        let (code, text) = signerd(&c, &["repo", "check", "--config", "setup.yaml"]);
        assert!(
            matches!(code, Some(0 | REFUSED | DAMAGED)),
            "offset {offset:#x}: {code:?} {text}"
        );
        assert!(!text.contains("panicked"), "offset {offset:#x}: {text}");
    }
    std::fs::write(repo(&c), &pristine).unwrap();
    let (code, text) = signerd(&c, &["repo", "check", "--config", "setup.yaml"]);
    assert_eq!(code, Some(0), "{text}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn faketime_env(c: &Ceremony, offset: &str) -> Vec<(String, PathBuf)> {
    let mut env = c.env();
    env.extend(faketime(offset));
    env
}

#[test]
fn a_clock_set_back_or_far_ahead_signs_nothing() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    {
        let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
        let client = bench.client();
        sign(&client, &d, "before").unwrap();
        let _: msg::FetchCrlReply = client.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
        drop(client);
        bench.daemon.stop_cleanly();
    }
    for (offset, words) in [("-365d", "already recorded"), ("+10950d", "outside CA")] {
        let bench = Bench::start_with_env(
            LinkSpec::unthrottled(),
            &c.ca_yaml,
            faketime_env(&c, offset),
        );
        let client = bench.client();
        let (status, message) = sign(&client, &d, &format!("after{offset}")).unwrap_err();
        assert_eq!(status, Status::CLOCK_UNTRUSTED, "{offset}: {message}");
        assert!(message.contains(words), "{offset}: {message}");
        let crl = client.request::<calls::FetchCrl>(&full_crl("sub"));
        assert!(
            matches!(&crl, Err(signer_client::ClientError::Signer { status, .. }) if *status == Status::CLOCK_UNTRUSTED),
            "{offset}: {crl:?}"
        );
        let health = client.health().unwrap();
        assert_eq!(health.status, HealthStatus::Failing, "{offset}");
        let clock = check(&health, "clock").unwrap();
        assert_eq!(clock.status, HealthStatus::Failing, "{clock:?}");
        // A retried request id is still answered with its certificate.
        let again = sign(&client, &d, "before").unwrap();
        assert!(again.replayed);
        // Monitoring sees it from the CLI's exit status: 2, failing (before
        // the clock-skew status 5), and a numeric level in the JSON.
        drop(client);
        let device = bench.client_device();
        let (code, out, err) = output(Command::new(bin("signer-client")).args([
            "--link",
            device.to_str().unwrap(),
            "--json",
            "health",
        ]));
        assert_eq!(code, Some(2), "{offset}: {out}{err}");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["level"], 2, "{out}");
        assert!(
            json["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "clock" && c["level"] == 2),
            "{out}"
        );
    }
    // Back on the right clock: signing resumes (a refused clock left no mark).
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    sign(&client, &d, "later").unwrap();
    assert_eq!(
        check(&client.health().unwrap(), "clock").unwrap().status,
        HealthStatus::Ok
    );
}

#[test]
fn an_online_backup_restores_every_record_and_revocation() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let mut serials = Vec::new();
    for i in 0..12 {
        serials.push(sign(&client, &d, &format!("b-{i}")).unwrap().serial);
    }
    for (i, serial) in serials.iter().take(5).enumerate() {
        let _: msg::RevokeX509Reply = client
            .request::<calls::RevokeX509>(&msg::RevokeX509 {
                issuer: "sub".into(),
                serial: serial.clone(),
                reason: 1,
                invalidity_date: None,
                request_id: format!("r-{i}"),
            })
            .unwrap();
    }
    // The backup runs beside the serving daemon while it keeps signing.
    let client = std::sync::Arc::new(client);
    let stream = {
        let client = std::sync::Arc::clone(&client);
        let d = d.clone();
        std::thread::spawn(move || {
            for i in 0..8 {
                sign(&client, &d, &format!("during-{i}")).unwrap();
            }
        })
    };
    let (code, text) = signerd(
        &c,
        &[
            "repo",
            "backup",
            "--config",
            "setup.yaml",
            "--out",
            "full.backup",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("5 revocations"), "{text}");
    stream.join().unwrap();
    let (code, text) = signerd(&c, &["audit", "verify", "--config", "setup.yaml"]);
    assert_eq!(
        code,
        Some(0),
        "audit verify beside the running daemon: {text}"
    );
    let (code, text) = signerd(&c, &["repo", "check", "--config", "setup.yaml"]);
    assert_eq!(
        code,
        Some(0),
        "repo check beside the running daemon: {text}"
    );
    assert!(text.contains("beside the running signerd"), "{text}");
    drop(client);
    bench.daemon.stop_cleanly();

    let (code, verified) = signerd(
        &c,
        &[
            "repo",
            "verify-backup",
            "--in",
            "full.backup",
            "--config",
            "setup.yaml",
        ],
    );
    assert_eq!(code, Some(0), "{verified}");
    // A truncated backup is refused.
    let bytes = std::fs::read(d.join("full.backup")).unwrap();
    std::fs::write(d.join("cut.backup"), &bytes[..bytes.len() - 100]).unwrap();
    let (code, text) = signerd(&c, &["repo", "verify-backup", "--in", "cut.backup"]);
    assert_eq!(code, Some(DAMAGED), "{text}");

    // The disk is lost: restore, and the next CRL has every revocation.
    std::fs::rename(repo(&c), d.join("lost.redb")).unwrap();
    let (code, restored) = signerd(
        &c,
        &[
            "repo",
            "restore",
            "--config",
            "setup.yaml",
            "--in",
            "full.backup",
        ],
    );
    assert_eq!(code, Some(0), "{restored}");
    let digests = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("content sha256") || l.starts_with("set digest"))
            .map(String::from)
            .collect()
    };
    assert_eq!(digests(&restored), digests(&verified));
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    let crl: msg::FetchCrlReply = client.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    assert_eq!(crl.entries, 5);
    // Every certificate is there: a retried request id is replayed.
    assert!(sign(&client, &d, "b-11").unwrap().replayed);
    // A key_compromise serial cannot be revoked again as superseded.
    let again = client.request::<calls::RevokeX509>(&msg::RevokeX509 {
        issuer: "sub".into(),
        serial: serials[0].clone(),
        reason: 4,
        invalidity_date: None,
        request_id: "r-again".into(),
    });
    assert!(
        matches!(&again, Err(signer_client::ClientError::Signer { status, .. }) if *status == Status::REVOCATION_CONFLICT),
        "{again:?}"
    );
}

#[test]
fn read_only_commands_do_not_grow_the_repository() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    for _ in 0..50 {
        let _: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
    }
    let head = |client: &Client| -> u64 {
        let h = client.health().unwrap();
        let detail = &check(&h, "audit").unwrap().detail;
        detail.split(' ').next().unwrap().parse().unwrap()
    };
    let before = head(&client);
    let size_before = std::fs::metadata(repo(&c)).unwrap().len();
    for _ in 0..1500 {
        let _: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {}).unwrap();
        client.health().unwrap();
    }
    assert_eq!(
        head(&client),
        before,
        "no audit entry per read-only request"
    );
    let size_after = std::fs::metadata(repo(&c)).unwrap().len();
    assert!(
        size_after <= size_before + 64 * 1024,
        "{size_before} → {size_after} bytes for 3,000 read-only requests"
    );
}

/// Rewrites the stored record of `request_id` through redb itself (pages
/// stay valid: only the record-level checks can find it). `reseal`: fix
/// the record's checksum afterwards, as an insider with the format would.
fn tamper_record(path: &Path, request_id: &str, reseal: bool) {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const CERTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("certs_v1");
    let db = redb::Database::open(path).unwrap();
    let found = {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(CERTS).unwrap();
        let mut found = None;
        for item in table.iter().unwrap() {
            let (k, v) = item.unwrap();
            let value = v.value().to_vec();
            let record: signer_repository::CertRecord =
                rmp_serde::from_slice(&value[..value.len() - 4]).unwrap();
            if record.request_id == request_id {
                found = Some((
                    (k.value().0.to_string(), k.value().1.to_vec()),
                    record,
                    value,
                ));
            }
        }
        found.expect("the record is stored")
    };
    let ((issuer, serial), mut record, mut value) = found;
    if reseal {
        let at = record.der.len() - 20;
        record.der[at] ^= 0x01;
        let payload = rmp_serde::to_vec_named(&record).unwrap();
        let mut h = crc32fast::Hasher::new();
        h.update(b"certs_v1\0");
        h.update(&payload);
        value = payload;
        value.extend_from_slice(&h.finalize().to_be_bytes());
    } else {
        let mid = value.len() / 2;
        value[mid] ^= 0x01;
    }
    let txn = db.begin_write().unwrap();
    txn.open_table(CERTS)
        .unwrap()
        .insert((issuer.as_str(), serial.as_slice()), value.as_slice())
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_damaged_certificate_record_is_refused_on_replay_and_named_by_repo_check() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    {
        let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
        let client = bench.client();
        sign(&client, &d, "web-1").unwrap();
        sign(&client, &d, "web-2").unwrap();
        drop(client);
        bench.daemon.stop_cleanly();
    }
    let pristine = std::fs::read(repo(&c)).unwrap();
    for (reseal, words) in [(false, "fails its checksum"), (true, "does not verify")] {
        std::fs::write(repo(&c), &pristine).unwrap();
        tamper_record(&repo(&c), "web-1", reseal);
        let (code, text) = signerd(&c, &["repo", "check", "--config", "setup.yaml"]);
        assert_eq!(code, Some(DAMAGED), "{text}");
        assert!(
            text.contains(words) && text.contains("certificate sub/"),
            "{text}"
        );

        let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
        let client = bench.client();
        let (status, message) = sign(&client, &d, "web-1").unwrap_err();
        assert_eq!(status, Status::REPOSITORY_CORRUPT, "{message}");
        // The undamaged record is still served, and new requests are signed.
        assert!(sign(&client, &d, "web-2").unwrap().replayed);
        sign(&client, &d, &format!("web-new-{reseal}")).unwrap();
        let health = client.health().unwrap();
        assert_eq!(health.status, HealthStatus::Failing);
        let scrub = check(&health, "repository:scrub").unwrap();
        assert_eq!(scrub.status, HealthStatus::Failing, "{scrub:?}");
    }
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount a tmpfs (this test runs as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at)
    }

    /// Fills the disk; returns the filler file.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_health_and_signing_resumes_when_space_returns() {
    // SAFETY of intent: only root can mount; elsewhere this test says so and stops.
    if !Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
    {
        eprintln!("a_full_disk…: needs root to mount a tmpfs (CI runs as root); not run");
        return;
    }
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let disk = SmallDisk::mount(d.join("small"), "6m");
    let on_disk = disk.0.join("repository.redb");
    std::fs::copy(repo(&c), &on_disk).unwrap();
    std::fs::remove_file(repo(&c)).unwrap();
    let yaml = c.ca_yaml.replace(
        &format!("{}/repository.redb", d.display()),
        &on_disk.display().to_string(),
    );
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let client = bench.client();
    let mut answered = vec![sign(&client, &d, "full-0").unwrap()];

    let filler = disk.fill();
    let mut refused = None;
    for i in 1..400 {
        match sign(&client, &d, &format!("full-{i}")) {
            Ok(reply) => answered.push(reply),
            Err((status, message)) => {
                refused = Some((i, status, message));
                break;
            }
        }
    }
    let (failed_at, status, message) = refused.expect("a full disk refuses to record");
    assert_eq!(status, Status::REPOSITORY_FAILURE, "{message}");
    assert!(
        status.is_retryable(),
        "retrying after space returns can help"
    );
    assert!(message.contains("nothing was issued"), "{message}");
    let health = client.health().unwrap();
    assert_eq!(health.status, HealthStatus::Failing);
    let writes = check(&health, "repository:writes").expect("a failing write check");
    assert_eq!(writes.status, HealthStatus::Failing, "{writes:?}");

    // Space returns: the next request is recorded without a restart.
    std::fs::remove_file(filler).unwrap();
    let mut resumed = None;
    for _ in 0..50 {
        match sign(&client, &d, &format!("full-{failed_at}")) {
            Ok(reply) => {
                resumed = Some(reply);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    answered.push(resumed.expect("signing resumes once the disk has space"));
    assert!(check(&client.health().unwrap(), "repository:writes").is_none());
    // Every certificate answered before, during and after is still there.
    for (i, reply) in answered.iter().enumerate() {
        let id = if i < answered.len() - 1 {
            format!("full-{i}")
        } else {
            format!("full-{failed_at}")
        };
        let again = sign(&client, &d, &id).unwrap();
        assert!(again.replayed, "{id}");
        assert_eq!(again.certificate, reply.certificate, "{id}");
    }
    drop(client);
    drop(bench);
}

#[test]
fn a_clock_that_ran_ahead_and_was_set_right_is_accepted_only_by_the_operator() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    {
        // Thirty days ahead, within the CAs' validity: it signs, and its
        // latest recorded time moves thirty days ahead.
        let mut bench = Bench::start_with_env(
            LinkSpec::unthrottled(),
            &c.ca_yaml,
            faketime_env(&c, "+30d"),
        );
        let client = bench.client();
        sign(&client, &d, "ahead").unwrap();
        drop(client);
        bench.daemon.stop_cleanly();
    }
    {
        let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
        let client = bench.client();
        let (status, message) = sign(&client, &d, "set-right").unwrap_err();
        assert_eq!(status, Status::CLOCK_UNTRUSTED, "{message}");
        drop(client);
        bench.daemon.stop_cleanly();
    }
    let (code, text) = signerd(
        &c,
        &[
            "repo",
            "accept-clock",
            "--config",
            "setup.yaml",
            "--reason",
            "RTC ran ahead; set by hand",
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    let (_, shown) = signerd(&c, &["audit", "show", "--config", "setup.yaml", "--json"]);
    assert!(
        shown.contains("accept-clock") && shown.contains("RTC ran ahead"),
        "{shown}"
    );
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let client = bench.client();
    sign(&client, &d, "set-right").unwrap();
}
