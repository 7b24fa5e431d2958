//! The repository at scale: bytes per record, `repo check` (the scrub's
//! record pass), backup, verification and restore, and what an audited
//! read-only request costs on disk.

use std::fmt::Write as _;
use std::sync::mpsc;
use std::time::Instant;

use crate::replication::record;
use crate::scale::filler;
use signer_repository::{
    verify_backup, AuditEntry, Expected, OpenOptions, Repository, RevocationRecord,
};

fn rss_peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Bytes a file takes on disk.
fn on_disk(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

/// Fills a repository with `n` certificates (serials as the signer makes
/// them) (group commit, as the daemon
/// records them) and `n` revocations (batches, as a legacy import does).
pub(crate) fn fill(repo: &Repository, n: usize) -> anyhow::Result<(f64, f64)> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let window = 4096;
    let mut pending = 0usize;
    for i in 0..n {
        let tx = tx.clone();
        repo.record_issuance_then(
            filler(i as u64),
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        );
        pending += 1;
        if pending == window {
            for _ in 0..window / 2 {
                anyhow::ensure!(rx.recv()?, "a record was not stored");
                pending -= 1;
            }
        }
    }
    for _ in 0..pending {
        anyhow::ensure!(rx.recv()?, "a record was not stored");
    }
    let issue_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for chunk in (0..n as u64).collect::<Vec<_>>().chunks(20_000) {
        let records = chunk
            .iter()
            .map(|&i| {
                let cert = filler(i);
                RevocationRecord {
                    issuer: "sub".into(),
                    serial: cert.serial,
                    reason: 1,
                    revoked_at: 1_795_000_000,
                    invalidity_date: None,
                    request_id: format!("rev-{i}"),
                    legacy: false,
                    signer_id: cert.signer_id,
                    cert_not_after: Some(cert.not_after),
                    seq: 0,
                    replaced: false,
                }
            })
            .collect();
        repo.record_revocations(records)?;
    }
    Ok((issue_s, started.elapsed().as_secs_f64()))
}

/// What one fill-and-maintain run of `n` certificates and `n`
/// revocations measured.
struct ScaleRun {
    issue_s: f64,
    revoke_s: f64,
    space: signer_repository::Space,
    size: u64,
    open_s: f64,
    check_s: f64,
    backup_s: f64,
    backup_size: u64,
    verify_s: f64,
    restore_s: f64,
    restored_size: u64,
}

fn scale_run(n: usize) -> anyhow::Result<ScaleRun> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("repo.redb");
    let expected = Expected::signer("bench");
    let options = OpenOptions::default();
    let repo = Repository::create(&path, &expected, &options)?;
    let (issue_s, revoke_s) = fill(&repo, n)?;
    eprintln!("storage {n}: recorded in {issue_s:.1} s + {revoke_s:.1} s");
    repo.close();
    drop(repo);
    let size = std::fs::metadata(&path)?.len();
    let space = {
        let repo = Repository::open(&path, &expected, &options)?;
        repo.space()?
    };
    eprintln!("storage {n}: as written {space:?}");

    let started = Instant::now();
    let repo = Repository::open(&path, &expected, &options)?;
    let open_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report_check = repo.check()?;
    let check_s = started.elapsed().as_secs_f64();

    eprintln!("storage {n}: open {open_s:.1} s, check {check_s:.1} s");
    anyhow::ensure!(
        report_check.problems.is_empty(),
        "{:?}",
        report_check.problems
    );

    let backup = dir.path().join("repo.backup");
    let started = Instant::now();
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&backup)?);
        repo.backup(&mut w)?;
    }
    let backup_s = started.elapsed().as_secs_f64();
    eprintln!("storage {n}: backup {backup_s:.1} s");
    let backup_size = std::fs::metadata(&backup)?.len();
    let started = Instant::now();
    verify_backup(&mut std::io::BufReader::new(std::fs::File::open(&backup)?))?;
    let verify_s = started.elapsed().as_secs_f64();
    eprintln!("storage {n}: verify {verify_s:.1} s");
    let restored = dir.path().join("restored.redb");
    let started = Instant::now();
    Repository::restore(
        &restored,
        &mut std::io::BufReader::new(std::fs::File::open(&backup)?),
        &expected,
        &options,
    )?;
    let restore_s = started.elapsed().as_secs_f64();
    Ok(ScaleRun {
        issue_s,
        revoke_s,
        space,
        size,
        open_s,
        check_s,
        backup_s,
        backup_size,
        verify_s,
        restore_s,
        restored_size: on_disk(&restored)?,
    })
}

/// One row of the scale table: `rounds` runs of `n`; times as min /
/// median / max, sizes from the last run (they do not vary).
fn scale_row(report: &mut String, n: usize, rounds: usize) -> anyhow::Result<()> {
    let runs = (0..rounds)
        .map(|_| scale_run(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let last = &runs[runs.len() - 1];
    let (space, size) = (&last.space, last.size);
    let der_bytes = (n * 1028) as u64;
    let per = |b: u64| b as f64 / n as f64;
    let t = |f: fn(&ScaleRun) -> f64| {
        if runs.len() == 1 {
            format!("{:.2} s", f(last))
        } else {
            crate::scale::spread(runs.iter().map(f).collect(), |x| format!("{x:.2}")) + " s"
        }
    };
    writeln!(
        report,
        "| {n} + {n} | {} + {} | {:.0} ({:.0} stored, {:.0} tree pages, {:.0} unused; file length {:.0}) | {:.2} | {:.0} ({:.2}) | {} | {} | {} ({:.0} MiB) | {} | {} | {:.0} |",
        t(|r| r.issue_s),
        t(|r| r.revoke_s),
        per(space.on_disk),
        per(space.stored),
        per(space.metadata),
        per(space.fragmented.saturating_sub(space.file - space.on_disk.min(space.file))),
        per(size),
        space.on_disk as f64 / der_bytes as f64,
        per(last.restored_size),
        last.restored_size as f64 / der_bytes as f64,
        t(|r| r.open_s),
        t(|r| r.check_s),
        t(|r| r.backup_s),
        mib(last.backup_size),
        t(|r| r.verify_s),
        t(|r| r.restore_s),
        rss_peak_mib()
    )?;
    Ok(())
}

/// Bytes a repository grows by per audit entry written the old way (one
/// entry, and one outbox event, per read-only request), against the
/// summary now written instead.
fn read_only_cost(report: &mut String) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("repo.redb");
    let repo = Repository::create(&path, &Expected::signer("bench"), &OpenOptions::default())?;
    // Settle the file's first allocation.
    for i in 0..2000 {
        repo.record_issuance(record(i))?;
    }
    let before = std::fs::metadata(&path)?.len();
    let n = 20_000;
    for i in 0..n {
        repo.audit(
            AuditEntry::new("command", "ca_certs", "ok")
                .fact("req_id", i.to_string())
                .fact("elapsed_ms", "0"),
        );
    }
    repo.record_issuance(record(n))?; // the committer has written every entry before this
    let after = std::fs::metadata(&path)?.len();
    writeln!(
        report,
        "A read-only request audited one entry at a time (the former behaviour): \
         {:.0} bytes of repository file each ({n} requests grew it by {:.1} MiB). \
         Now such requests are counted and written as one summary entry per 10 minutes: \
         0 bytes per request (`tests/integrity.rs` checks 3,000 requests grow the file by less than 64 KiB).\n",
        (after - before) as f64 / n as f64,
        mib(after - before)
    )?;
    Ok(())
}

/// Stored certificates verified per second (the scrub's second pass): a
/// self-signed certificate made by openssl, checked as the scrub checks
/// every stored certificate against its CA.
fn verify_rate(kind: &[&str]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut args = vec!["req", "-x509", "-newkey"];
    args.extend_from_slice(kind);
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        "k.pem",
        "-out",
        "c.der",
        "-outform",
        "DER",
        "-subj",
        "/CN=bench",
        "-days",
        "30",
    ]);
    let ok = std::process::Command::new("openssl")
        .args(&args)
        .current_dir(dir.path())
        .output()?
        .status
        .success();
    anyhow::ensure!(ok, "openssl req failed");
    let der = std::fs::read(dir.path().join("c.der"))?;
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        signer_x509::verify_issued(&der, &der).map_err(anyhow::Error::msg)?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The `## Repository at scale` section.
pub fn section(report: &mut String, scale: f64, more: &[usize]) -> anyhow::Result<()> {
    writeln!(report, "## Repository at scale\n")?;
    writeln!(
        report,
        "Certificates recorded through the group commit (as the daemon records them, about 1 KB of DER each) \
         and as many revocations; then the file reopened (every page's checksum checked), `repo check`'s record pass \
         (every table and value, indexes, set digests, the audit chain), an online backup, its verification, and a \
         restore into a new file (which recomputes the content digest). Peak RSS is the process's high-water mark so far. \
         Five runs of each size, each on a new file (times: min / median / max; sizes from the last run); a size asked \
         for on top with `--storage-also` once (its times are that run's).\n"
    )?;
    writeln!(
        report,
        "| certificates + revocations | recording | bytes on disk per certificate | on disk ÷ DER bytes | restored file: bytes per certificate (÷ DER) | open | check | backup | verify backup | restore | peak RSS MiB |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    // Five runs of each size; sizes asked for on top (10,000,000 takes a
    // quarter of an hour) once.
    for n in [10_000, (1_000_000.0 * scale) as usize] {
        scale_row(report, n.max(1000), 5)?;
    }
    for &n in more {
        scale_row(report, n.max(1000), 1)?;
    }
    writeln!(report)?;
    let p256 = verify_rate(&["ec", "-pkeyopt", "ec_paramgen_curve:P-256"])?;
    let rsa = verify_rate(&["rsa:2048"])?;
    writeln!(
        report,
        "The scrub's second pass verifies every stored certificate against its CA: {p256:.0} P-256 and {rsa:.0} \
         RSA-2048 certificates per second on one core here, so 1,000,000 certificates add {:.0} s (P-256 CA) or \
         {:.0} s (RSA-2048 CA) to the record pass above. The scrub runs on its own thread once a day by default.\n",
        1e6 / p256,
        1e6 / rsa
    )?;
    read_only_cost(report)?;
    Ok(())
}
