//! The audit log as a transparency log, end to end: a signer on a real pty
//! with its Ed25519 audit key on a SoftHSM2 token signs checkpoints; the web
//! host's copy (`signer-client audit sync`) verifies each against the last
//! one it holds and acknowledges it. Then an insider with the repository
//! file rewrites history (and recomputes every hash), or restores an older
//! repository: the copy's next sync detects it, and the signer refuses to
//! sign a checkpoint that contradicts its own last one.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;

use signer_client::Calls;
use signer_protocol::{calls, msg, Status};
use signer_testsupport::ca::{make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, output, Bench, LinkSpec};

fn signerd(
    args: &[&str],
    config: &Path,
    env: &[(String, std::path::PathBuf)],
) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("signerd"));
    cmd.args(args).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (code, stdout, stderr) = output(&mut cmd);
    (code, format!("{stdout}{stderr}"))
}

fn client_cmd(link: &str, args: &[&str]) -> (Option<i32>, String) {
    let (code, stdout, stderr) = output(
        Command::new(bin("signer-client"))
            .args(["--link", link])
            .args(args),
    );
    (code, format!("{stdout}{stderr}"))
}

/// The ceremony with an Ed25519 audit key and `ca.audit`.
fn audited() -> (Ceremony, String) {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let yaml = c.with_audit_log();
    (c, yaml)
}

fn issue(client: &signer_client::Client, d: &Path, id: &str) -> msg::SignX509Reply {
    let csr = make_csr(d, id, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    client
        .request::<calls::SignX509>(&sign_request(id, csr, &format!("{id}.example.org")))
        .unwrap()
}

#[test]
fn a_copy_outside_the_box_catches_a_rewritten_or_rolled_back_log() {
    let (c, yaml) = audited();
    let d = c.dir().to_path_buf();
    let config = d.join("audited.yaml");
    let (code, vkey) = signerd(&["audit", "vkey"], &config, &c.env());
    assert_eq!(code, Some(0), "{vkey}");
    let vkey = vkey.trim().to_string();
    assert!(vkey.starts_with("signer-a.example/audit+"), "{vkey}");

    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let link = bench.client_device().display().to_string();
    let copy = d.join("web-copy");
    let copy_arg = copy.display().to_string();
    // One user of the line at a time: the test's client or the CLI.
    let issue_some = |prefix: &str| {
        let client = bench.client();
        (0..3)
            .map(|i| issue(&client, &d, &format!("{prefix}-{i}")))
            .collect::<Vec<_>>()
    };
    issue_some("first");
    // The first sync takes the key and everything so far.
    let (code, out) = client_cmd(
        &link,
        &["audit", "sync", "--dir", &copy_arg, "--vkey", &vkey],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("synced 0 →"), "{out}");
    {
        let client = bench.client();
        let health = client.health().unwrap();
        let witness = health
            .checks
            .iter()
            .find(|c| c.name == "audit:witness")
            .unwrap();
        assert_eq!(witness.status, msg::HealthStatus::Ok, "{witness:?}");
    }
    let second = issue_some("second");
    let (code, out) = client_cmd(&link, &["audit", "sync", "--dir", &copy_arg]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = client_cmd(&link, &["audit", "verify", "--dir", &copy_arg]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("checkpoints verified"), "{out}");
    // A certificate's issuance proven in the log, by request id and by the
    // certificate itself.
    let (code, out) = client_cmd(
        &link,
        &[
            "audit",
            "prove",
            "--dir",
            &copy_arg,
            "--request-id",
            "second-1",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("(sign_x509 ok) is in checkpoint") && out.contains("inclusion proof verified"),
        "{out}"
    );
    std::fs::write(d.join("second-2.der"), &second[2].certificate).unwrap();
    let (code, out) = client_cmd(
        &link,
        &[
            "audit",
            "prove",
            "--dir",
            &copy_arg,
            "--certificate",
            &d.join("second-2.der").display().to_string(),
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = client_cmd(
        &link,
        &[
            "audit",
            "prove",
            "--dir",
            &copy_arg,
            "--request-id",
            "never-issued",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no entry held names it"), "{out}");
    // Twins are two logs: a copy is kept of one signer, never through failover.
    let (code, out) = client_cmd(
        &format!("{link},{link}"),
        &["audit", "sync", "--dir", &copy_arg],
    );
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("one device"), "{out}");
    // A copy made for another log's key is refused before anything is sent.
    let (code, out) = client_cmd(
        &link,
        &[
            "audit",
            "sync",
            "--dir",
            &copy_arg,
            "--vkey",
            "other.example/audit+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("another log"), "{out}");

    {
        // Proofs on the wire verify against the checkpoint.
        let client = bench.client();
        let note: msg::AuditCheckpointReply = client
            .request::<calls::AuditCheckpoint>(&msg::Empty {})
            .unwrap();
        let signed = signer_tlog::SignedCheckpoint::parse(&note.checkpoint).unwrap();
        signed
            .verify_log(&signer_tlog::Verifier::from_vkey(&vkey).unwrap())
            .unwrap();
        let size = signed.checkpoint.size;
        let incl: msg::AuditInclusionReply = client
            .request::<calls::AuditInclusion>(&msg::AuditInclusion { index: 2, size })
            .unwrap();
        let proof: Vec<[u8; 32]> = incl
            .proof
            .iter()
            .map(|h| h.as_slice().try_into().unwrap())
            .collect();
        signer_tlog::merkle::verify_inclusion(
            &signer_tlog::merkle::leaf_hash(&incl.entry),
            2,
            size,
            &proof,
            &signed.checkpoint.root,
        )
        .unwrap();
        let err = client
            .request::<calls::AuditInclusion>(&msg::AuditInclusion { index: size, size })
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::AUDIT_RANGE));
        let err = client
            .request::<calls::AuditConsistency>(&msg::AuditConsistency {
                old: size,
                new: size + 1000,
            })
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::AUDIT_RANGE));
        let err = client
            .request::<calls::AuditAck>(&msg::AuditAck {
                size,
                root: serde_bytes::ByteBuf::from(vec![0u8; 32]),
            })
            .unwrap_err();
        assert_eq!(err.status(), Some(Status::AUDIT_ROOT_MISMATCH));
    }

    // A backup now, then more history that the web host takes.
    let backup = d.join("older.backup");
    let (code, out) = signerd(
        &["repo", "backup", "--out", &backup.display().to_string()],
        &config,
        &c.env(),
    );
    assert_eq!(code, Some(0), "{out}");
    issue_some("third");
    let (code, out) = client_cmd(&link, &["audit", "sync", "--dir", &copy_arg]);
    assert_eq!(code, Some(0), "{out}");
    drop(bench);

    // 1. The insider rewrites an entry, recomputes the chain and the tree,
    //    and removes the checkpoints so the signer signs the new history.
    let repo = d.join("repository.redb");
    let pristine = d.join("pristine.redb");
    std::fs::copy(&repo, &pristine).unwrap();
    rewrite_history(&repo, "second-1", true);
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let link = bench.client_device().display().to_string();
    issue(&bench.client(), &d, "after-rewrite");
    let (code, out) = client_cmd(&link, &["audit", "sync", "--dir", &copy_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("the log was rewritten"), "{out}");
    assert!(
        std::fs::read_dir(copy.join("evidence")).unwrap().count() >= 1,
        "the contradicting checkpoint is kept"
    );
    // The copy itself still verifies, and kept its last good checkpoint.
    let (code, out) = client_cmd(&link, &["audit", "verify", "--dir", &copy_arg]);
    assert_eq!(code, Some(0), "{out}");
    drop(bench);
    // So does every other way of changing history: an entry deleted, one
    // made up and inserted, two swapped.
    for how in [Tamper::Delete, Tamper::Insert, Tamper::Swap] {
        std::fs::copy(&pristine, &repo).unwrap();
        tamper_log(&repo, "second-1", how, true);
        let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
        let link = bench.client_device().display().to_string();
        let (code, out) = client_cmd(&link, &["audit", "sync", "--dir", &copy_arg]);
        assert_eq!(code, Some(1), "{how:?}: {out}");
        assert!(
            out.contains("the log was rewritten") || out.contains("entries were removed"),
            "{how:?}: {out}"
        );
        drop(bench);
    }

    // 2. The same rewrite, checkpoints kept: the signer refuses to sign a
    //    checkpoint contradicting its own, health fails, audit verify says so.
    std::fs::copy(&pristine, &repo).unwrap();
    rewrite_history(&repo, "second-1", false);
    let (code, out) = signerd(&["audit", "verify"], &config, &c.env());
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("checkpoint"), "{out}");
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let client = bench.client();
    let err = client
        .request::<calls::AuditCheckpoint>(&msg::Empty {})
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::REPOSITORY_CORRUPT), "{err}");
    let health = client.health().unwrap();
    let cp = health
        .checks
        .iter()
        .find(|c| c.name == "audit:checkpoint")
        .unwrap();
    assert_eq!(cp.status, msg::HealthStatus::Failing, "{cp:?}");
    assert!(cp.detail.contains("rewritten"), "{cp:?}");
    drop(client);
    drop(bench);

    // 3. An older repository restored: the web host holds a newer checkpoint.
    std::fs::remove_file(&repo).unwrap();
    let (code, out) = signerd(
        &["repo", "restore", "--in", &backup.display().to_string()],
        &config,
        &c.env(),
    );
    assert_eq!(code, Some(0), "{out}");
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let link = bench.client_device().display().to_string();
    let (code, out) = client_cmd(&link, &["audit", "sync", "--dir", &copy_arg]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("an older repository restored") || out.contains("the log was rewritten"),
        "{out}"
    );
}

/// How an insider changes the log.
#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// A fact of the entry changed.
    Edit,
    /// The entry removed, later ones renumbered.
    Delete,
    /// A made-up entry put after it.
    Insert,
    /// The entry and the next swapped.
    Swap,
}

/// What an insider with the repository file does: changes the log at the
/// issuance entry of `request_id` (`how`), recomputes every chain hash and
/// the whole Merkle tree, and (with `drop_checkpoints`) deletes the stored
/// checkpoints.
fn tamper_log(path: &Path, request_id: &str, how: Tamper, drop_checkpoints: bool) {
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
    const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit_v1");
    const TREE: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("audit_tree_v1");
    const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("audit_checkpoint_v1");
    let db = redb::Database::open(path).unwrap();
    let mut entries: Vec<signer_repository::AuditEntry> = {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(AUDIT).unwrap();
        t.iter()
            .unwrap()
            .map(|i| rmp_serde::from_slice(i.unwrap().1.value()).unwrap())
            .collect()
    };
    let at = entries
        .iter()
        .position(|e| e.facts.get("request_id").map(String::as_str) == Some(request_id))
        .expect("the entry to tamper with");
    match how {
        Tamper::Edit => {
            entries[at]
                .facts
                .insert("subject".into(), "CN=someone-else.example.org".into());
        }
        Tamper::Delete => {
            entries.remove(at);
        }
        Tamper::Insert => {
            let mut forged = entries[at].clone();
            forged
                .facts
                .insert("request_id".into(), "never-happened".into());
            entries.insert(at + 1, forged);
        }
        Tamper::Swap => entries.swap(at, at + 1),
    }
    for i in 0..entries.len() {
        entries[i].seq = i as u64 + 1;
        entries[i].prev = if i == 0 {
            vec![0; 32]
        } else {
            entries[i - 1].hash.clone()
        };
        entries[i].hash = entries[i].compute_hash();
    }
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(AUDIT).unwrap();
        t.retain(|_, _| false).unwrap();
        let mut tree = txn.open_table(TREE).unwrap();
        assert!(tree.len().unwrap() > 0, "the tree exists");
        tree.retain(|_, _| false).unwrap();
        let mut nodes = std::collections::HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let bytes = rmp_serde::to_vec_named(e).unwrap();
            t.insert(e.seq, bytes.as_slice()).unwrap();
            let made = signer_tlog::merkle::completed_by::<String>(
                i as u64,
                signer_tlog::merkle::leaf_hash(&bytes),
                |l, x| nodes.get(&(l, x)).copied().ok_or_else(|| "missing".into()),
            )
            .unwrap();
            for (l, x, h) in made {
                tree.insert((l, x), h.as_slice()).unwrap();
                nodes.insert((l, x), h);
            }
        }
        if drop_checkpoints {
            txn.open_table(CHECKPOINTS)
                .unwrap()
                .retain(|_, _| false)
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

fn rewrite_history(path: &Path, request_id: &str, drop_checkpoints: bool) {
    tamper_log(path, request_id, Tamper::Edit, drop_checkpoints);
}

/// The lines of the runbook block `name` in docs/operations.md.
fn runbook_block(name: &str) -> Vec<String> {
    signer_testsupport::runbook_block(include_str!("../docs/operations.md"), name)
}

#[test]
fn the_audit_copy_runbook_runs_as_written() {
    let (c, yaml) = audited();
    let d = c.dir().to_path_buf();
    std::fs::write(
        d.join("signerd.yaml"),
        format!("signer_id: test-signer\nlink: {{device: /dev/null}}\n{yaml}"),
    )
    .unwrap();
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let issued = issue(&bench.client(), &d, "runbook-1");
    // The issuance's entry names the certificate's SHA-256: whoever holds
    // the certificate finds its entry.
    let (code, shown) = signerd(
        &["audit", "show", "--request-id", "runbook-1", "--json"],
        &d.join("signerd.yaml"),
        &c.env(),
    );
    assert_eq!(code, Some(0), "{shown}");
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(&issued.certificate));
    assert!(
        shown.contains(&format!("\"certificate_sha256\":\"{digest}\"")),
        "{shown}"
    );
    let device = bench.client_device().display().to_string();
    let copies = d.join("copies");
    let path = format!(
        "{}:{}",
        bin("signerd").parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lines = runbook_block("audit-copy");
    assert_eq!(lines.len(), 4, "{lines:?}");
    let mut outs = Vec::new();
    for line in lines {
        // The web host's paths, here.
        let line = line
            .replace("/dev/ttyUSB0", &device)
            .replace("/var/lib/signer-audit/", &format!("{}/", copies.display()));
        let mut cmd = Command::new("bash");
        cmd.args(["-c", &line]).current_dir(&d).env("PATH", &path);
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        let (code, out, err) = output(&mut cmd);
        assert_eq!(code, Some(0), "{line}\n{out}{err}");
        outs.push(format!("{out}{err}"));
    }
    assert!(
        std::fs::read_to_string(d.join("signer-a.vkey"))
            .unwrap()
            .starts_with("signer-a.example/audit+"),
        "the verifier key file"
    );
    assert!(outs[1].contains("synced 0 →"), "{outs:?}");
    assert!(outs[3].contains("checkpoints verified"), "{outs:?}");
    // The signer records the copy.
    let health = bench.client().health().unwrap();
    let witness = health
        .checks
        .iter()
        .find(|c| c.name == "audit:witness")
        .unwrap();
    assert!(witness.detail.contains("web host"), "{witness:?}");

    // The copy's own files damaged, truncated or replaced: `audit verify`
    // says so (exit 1) and `audit sync` takes nothing on top of them.
    let copy = copies.join("signer-a");
    let entries = copy.join("entries");
    let good = std::fs::read(&entries).unwrap();
    let verify = || {
        client_cmd(
            &device,
            &["audit", "verify", "--dir", &copy.display().to_string()],
        )
    };
    let mut flipped = good.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x01;
    let mut torn = good.clone();
    torn.truncate(good.len() - 3);
    for (what, bytes, words) in [
        ("a flipped byte", flipped, "do not give the root"),
        ("a torn last record", torn, "torn record"),
        ("nothing", Vec::new(), "only 0 entries held"),
    ] {
        std::fs::write(&entries, &bytes).unwrap();
        let (code, out) = verify();
        assert_eq!(code, Some(1), "{what}: {out}");
        assert!(out.contains(words), "{what}: {out}");
        let (code, out) = client_cmd(
            &device,
            &["audit", "sync", "--dir", &copy.display().to_string()],
        );
        assert_eq!(code, Some(1), "{what}: {out}");
    }
    std::fs::write(&entries, &good).unwrap();
    let note = std::fs::read_dir(copy.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "note"))
        .unwrap();
    let original = std::fs::read_to_string(&note).unwrap();
    let mut lines: Vec<&str> = original.lines().collect();
    let forged_size = format!("{}", lines[1].parse::<u64>().unwrap() + 1);
    lines[1] = &forged_size;
    std::fs::write(&note, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("does not verify"), "{out}");
    std::fs::write(&note, &original).unwrap();
    let (code, out) = verify();
    assert_eq!(code, Some(0), "{out}");
}

/// Until `f` gives `Some`, for at most `secs` seconds.
fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    None
}

#[test]
fn twins_witness_each_others_checkpoints_and_refuse_a_rewritten_log() {
    use signer_testsupport::twins::Twins;
    let mut t = Twins::audited("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let env_b = vec![("SOFTHSM2_CONF".to_string(), t.dir_b().join("softhsm2.conf"))];
    let (code, vkey_b) = signerd(
        &["audit", "vkey"],
        &t.dir_b().join("init-signer-b.yaml"),
        &env_b,
    );
    assert_eq!(code, Some(0), "{vkey_b}");
    let log_b = signer_tlog::Verifier::from_vkey(vkey_b.trim()).unwrap();
    let witness_b = signer_tlog::Verifier::new(
        &format!("{}/witness", log_b.name),
        signer_tlog::note::TYPE_COSIGNATURE,
        log_b.key,
    )
    .unwrap();
    {
        let a = t.a.client();
        for i in 0..3 {
            issue(&a, &d, &format!("witnessed-{i}"));
        }
    }
    // A's checkpoint comes back cosigned by B.
    let cosigned = wait_for(90, || {
        let note =
            t.a.client()
                .request::<calls::AuditCheckpoint>(&msg::Empty {})
                .ok()?;
        let signed = signer_tlog::SignedCheckpoint::parse(&note.checkpoint).ok()?;
        signed.verify_cosignature(&witness_b).ok().map(|_| signed)
    })
    .expect("A's checkpoint cosigned by B");
    assert!(cosigned.checkpoint.size > 3);
    let health = t.b.client().health().unwrap();
    let twin = health
        .checks
        .iter()
        .find(|c| c.name == "audit:twin")
        .unwrap();
    assert_eq!(twin.status, msg::HealthStatus::Ok, "{twin:?}");
    assert!(
        twin.detail.contains("signer-a's log cosigned up to"),
        "{twin:?}"
    );
    // A's audit verify checks B's cosignatures.
    let config_a = t.a.daemon.config_path().to_path_buf();
    let (code, out) = signerd(&["audit", "verify"], &config_a, &t.ceremony.env());
    assert_eq!(code, Some(0), "{out}");
    let cosigned_count: u64 = out
        .split(", ")
        .find_map(|part| part.trim().strip_suffix(" cosigned by the twin"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cosigned count in {out}"));
    assert!(cosigned_count >= 1, "{out}");
    // B's audit verify checks A's checkpoints against B's copy of A's log.
    let (code, out) = signerd(&["audit", "verify"], t.b.daemon.config_path(), &env_b);
    assert_eq!(code, Some(0), "{out}");
    let matching: u64 = out
        .split("audit tree: ")
        .find_map(|p| p.split_once(" of signer-a's checkpoints match"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no witnessed count in {out}"));
    assert!(matching >= 1, "{out}");

    // An insider on A rewrites A's history (chain, tree and checkpoints):
    // A signs the new history, B's copy of A's log says otherwise, and B
    // refuses to cosign.
    t.a.daemon.stop_cleanly();
    rewrite_history(&d.join("repository.redb"), "witnessed-1", true);
    t.a.daemon.restart();
    let refused = wait_for(90, || {
        let health = t.b.client().health().ok()?;
        let twin = health.checks.into_iter().find(|c| c.name == "audit:twin")?;
        (twin.status == msg::HealthStatus::Failing).then_some(twin.detail)
    })
    .expect("B refuses to cosign A's rewritten log");
    assert!(
        refused.contains("does not match its log as replicated here"),
        "{refused}"
    );
}
