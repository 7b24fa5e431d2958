//! CRL build + sign at scale, against `openssl ca -gencrl` on the same entries.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use signer_hsm::{KeySpec, PinSource, Pkcs11Backend, TokenConfig, TokenSelector};
use signer_testsupport::ca::Ceremony;

use crate::scale::{median, spread};
use signer_x509::crl::{CrlBuilder, CrlEntry};
use signer_x509::CaSigner;

/// Serial of entry `i`: 16 octets like the signer's, numerically increasing.
fn serial(i: u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0] = 0x21;
    s[8..].copy_from_slice(&i.to_be_bytes());
    s
}

/// In the child (SoftHSM2 reads its configuration once per process): build
/// and sign a CRL of `n` entries with the ceremony's `sub` key; prints
/// `seconds bytes peak_kib`.
pub fn child(dir: &Path, n: u64) -> anyhow::Result<()> {
    let token = TokenConfig {
        module: signer_testsupport::SOFTHSM_MODULE.into(),
        token: TokenSelector::Label("signer-a".into()),
        pin: PinSource::File(dir.join("user.pin")),
    };
    let key = KeySpec {
        name: "sub".into(),
        label: Some("sub-key".into()),
        id: None,
    };
    let backend = Pkcs11Backend::open(token, vec![key], 1)?;
    let cert =
        signer_x509::cert_der(&std::fs::read(dir.join("sub.pem"))?).map_err(anyhow::Error::msg)?;
    let ca = CaSigner::new("sub", "sub", cert, &backend)?;
    let scheme = signer_x509::issue::default_scheme(ca.kind);
    // Warm up the session outside the timed part.
    signer_hsm::SigningBackend::sign_digest(
        &backend,
        "sub",
        scheme,
        &scheme.hash().digest(b"warm-up"),
    )?;
    let base = 1_763_000_000i64;
    let started = Instant::now();
    let mut builder = CrlBuilder::new(
        &ca,
        scheme,
        base,
        base + 7 * 86_400,
        &[0x01],
        n as usize * 40,
        None,
    )?;
    for i in 0..n {
        let s = serial(i);
        builder.push(&CrlEntry {
            serial: &s,
            revoked_at: base - 86_400 + (i % 86_400) as i64,
            reason: u8::from(i.is_multiple_of(3)),
            invalidity_date: None,
        })?;
    }
    let der = builder.sign(&backend, &ca, scheme)?;
    let seconds = started.elapsed().as_secs_f64();
    let status = std::fs::read_to_string("/proc/self/status")?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    std::fs::write(dir.join(format!("ours-{n}.crl")), &der)?;
    println!("{seconds} {} {peak}", der.len());
    Ok(())
}

fn gnu_time(cmd: &mut Command) -> anyhow::Result<(f64, u64)> {
    let out = cmd.output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        anyhow::bail!("{err}");
    }
    let field = |name: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .map(str::to_string)
    };
    let peak = field("Maximum resident set size (kbytes):")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):").unwrap_or_default();
    let secs = wall
        .split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
    Ok((secs, peak))
}

/// `openssl ca -gencrl` over an index of `n` revoked entries, with a file key
/// of the same size: (seconds, peak KiB, CRL bytes).
fn openssl_gencrl(dir: &Path, n: u64) -> anyhow::Result<(f64, u64, u64)> {
    let work = dir.join(format!("openssl-{n}"));
    std::fs::create_dir_all(&work)?;
    if !work.join("ca.key").exists() {
        crate::openssl_ca::self_signed(&work, &["-newkey", "rsa:2048"])?;
    }
    let mut index = String::with_capacity(n as usize * 80);
    for i in 0..n {
        let s: String = serial(i).iter().map(|b| format!("{b:02X}")).collect();
        let reason = if i % 3 == 0 { ",keyCompromise" } else { "" };
        let _ = writeln!(
            index,
            "R\t301231000000Z\t251112000000Z{reason}\t{s}\tunknown\t/CN=host{i}"
        );
    }
    std::fs::write(work.join("index.txt"), index)?;
    std::fs::write(work.join("crlnumber"), "01\n")?;
    std::fs::write(
        work.join("openssl.cnf"),
        "[ca]\ndefault_ca = CA_default\n[CA_default]\ndir = .\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         certificate = ca.pem\nprivate_key = ca.key\ndefault_md = sha256\ndefault_crl_days = 7\ncrl_extensions = crl_ext\n\
         [crl_ext]\nauthorityKeyIdentifier = keyid:always\n",
    )?;
    let (secs, peak) = gnu_time(
        Command::new("/usr/bin/time")
            .arg("-v")
            .args([
                "openssl",
                "ca",
                "-config",
                "openssl.cnf",
                "-gencrl",
                "-out",
                "out.crl",
            ])
            .current_dir(&work),
    )?;
    let bytes = std::fs::metadata(work.join("out.crl"))?.len();
    Ok((secs, peak, bytes))
}

/// Runs this benchmark binary as a child with the ceremony's token and one
/// internal flag; returns the numbers it printed.
fn child_numbers(ceremony: &Ceremony, flag: &str, value: &str) -> anyhow::Result<Vec<f64>> {
    let out = Command::new(std::env::current_exe()?)
        .arg(flag)
        .arg(value)
        .envs(ceremony.env())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    anyhow::ensure!(
        out.status.success(),
        "{flag} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(fields)
}

/// The report section.
pub fn section(
    report: &mut String,
    scale: f64,
    plots: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    writeln!(report, "## CRL build and sign\n")?;
    writeln!(
        report,
        "Entries of 16-octet serials, a third with reason keyCompromise. Ours: `CrlBuilder` \
         (one buffer, entries appended in serial order, header written in front afterwards, \
         SHA-256 on the host, RSA-2048 signature on SoftHSM2, the result parsed back and its \
         signature verified), in a process of its own; peak is that process's VmHWM, including \
         the PKCS#11 module. Baseline: `openssl ca -gencrl` on an index of the same entries with \
         an RSA-2048 file key, peak from GNU time. Same machine, same run: five rounds at each size, \
         ours and openssl's alternating; min / median / max, ratios per round (the plot: medians).\n"
    )?;
    let rounds = 5;
    writeln!(report, "| entries | ours (s) | ours peak (MiB) | CRL size (MiB) | openssl ca -gencrl (s) | openssl peak (MiB) | time ratio | memory ratio |")?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    let ceremony = Ceremony::new("rsa2048", "");
    let _ = ceremony.hsm.pin_file();
    for n in [10_000u64, 100_000, 1_000_000] {
        let n = ((n as f64) * scale.min(1.0)).max(1000.0) as u64;
        eprintln!("bench: CRL with {n} entries, {rounds} rounds");
        // (seconds, peak KiB) of ours and of openssl's, alternating.
        let mut rows = Vec::new();
        let mut size = 0.0;
        for _ in 0..rounds {
            let fields = child_numbers(
                &ceremony,
                "--crl-child",
                &format!("{},{n}", ceremony.dir().display()),
            )?;
            let [secs, bytes, peak] = fields[..] else {
                anyhow::bail!("CRL child printed {fields:?}");
            };
            size = bytes;
            let (o_secs, o_peak, _o_bytes) = openssl_gencrl(ceremony.dir(), n)?;
            rows.push([secs.max(1e-6), peak.max(1.0), o_secs, o_peak as f64]);
        }
        let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
        ours.push((n as f64, median(&col(0)).max(0.001)));
        theirs.push((n as f64, median(&col(2)).max(0.001)));
        let secs = |x: f64| format!("{x:.3}");
        let mib = |x: f64| format!("{:.1}", x / 1024.0);
        let ratio = |i: usize, j: usize| {
            spread(rows.iter().map(|r| r[i] / r[j]).collect(), |x| {
                format!("{x:.1}")
            })
        };
        writeln!(
            report,
            "| {n} | {} | {} | {:.1} | {} | {} | {}× faster | {}× less |",
            spread(col(0), secs),
            spread(col(1), mib),
            size / 1048576.0,
            spread(col(2), secs),
            spread(col(3), mib),
            ratio(2, 0),
            ratio(3, 1),
        )?;
    }
    writeln!(report)?;
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir)?;
        let svg = crate::plot::line_chart(
            "CRL build and sign: time vs. entries",
            "entries",
            "seconds",
            &[
                crate::plot::Series {
                    name: "signerd CrlBuilder (SoftHSM2 RSA-2048)".into(),
                    points: ours,
                },
                crate::plot::Series {
                    name: "openssl ca -gencrl (file key)".into(),
                    points: theirs,
                },
            ],
            true,
            true,
        );
        std::fs::write(dir.join("crl-time.svg"), svg)?;
        writeln!(report, "![CRL time vs. entries](plots/crl-time.svg)\n")?;
    }
    Ok(())
}

/// The CA service of the ceremony in `dir` (SoftHSM2 reads its
/// configuration once per process: one per child).
fn service_of(dir: &Path) -> anyhow::Result<std::sync::Arc<signer_ca::CaService>> {
    let yaml = std::fs::read_to_string(dir.join("setup.yaml"))?;
    let config =
        signer_server::Config::<signer_ca::CaConfig>::parse(&yaml, &dir.join("setup.yaml"))?;
    let ca = config.ca.ok_or_else(|| anyhow::anyhow!("no ca section"))?;
    Ok(signer_ca::CaService::start(&ca, "test-signer", 1)?)
}

/// Revocation `i` of the bulk: a third keyCompromise, dates spread over a day.
fn revocation(i: u64) -> signer_repository::RevocationRecord {
    signer_repository::RevocationRecord {
        issuer: "sub".into(),
        serial: serial(i).to_vec(),
        reason: u8::from(i.is_multiple_of(3)),
        revoked_at: 1_763_000_000 + (i % 86_400) as i64,
        invalidity_date: None,
        request_id: format!("bulk-{i}"),
        legacy: false,
        signer_id: "bench".into(),
        cert_not_after: None,
        seq: 0,
        replaced: false,
    }
}

/// Records revocations `range` in transactions of 100,000.
fn record_bulk(
    repo: &signer_repository::Repository,
    range: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    let mut start = range.start;
    while start < range.end {
        let end = (start + 100_000).min(range.end);
        repo.record_revocations((start..end).map(revocation).collect())?;
        start = end;
    }
    Ok(())
}

/// Wire bytes of a reply body: response parts of 16 KiB, framed.
fn wire_bytes(body: &[u8]) -> usize {
    signer_protocol::encode_response(1, signer_protocol::Status::OK, body, 16_384)
        .iter()
        .map(|part| signer_frame::encode(part).len())
        .sum()
}

/// In the child: `n` revocations in the repository, a full `fetch_crl`, then
/// `added` more and a fetch stating the client's copy. Prints
/// `generate_seconds full_wire_bytes diff_wire_bytes rebuilt_ok`.
pub fn diff_child(dir: &Path, n: u64, added: u64) -> anyhow::Result<()> {
    use signer_protocol::{encode_body, msg, Command};

    let service = service_of(dir)?;
    record_bulk(service.repository(), 0..n)?;
    let ctx = signer_service::CallContext {
        envelope_id: 1,
        command: Command::FETCH_CRL,
    };
    let fetch = |have: Option<(&[u8], &[u8])>| {
        service.fetch_crl(
            &ctx,
            msg::FetchCrl {
                issuer: "sub".into(),
                have_number: have.map(|h| h.0.to_vec()),
                have_sha256: have.map(|h| h.1.to_vec()),
                shard: None,
            },
        )
    };
    let started = Instant::now();
    let full = fetch(None).map_err(|f| anyhow::anyhow!("{f}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let full_bytes = wire_bytes(&encode_body(&full));
    let old = full.crl.clone().ok_or_else(|| anyhow::anyhow!("no CRL"))?;
    service
        .repository()
        .record_revocations((n..n + added).map(revocation).collect())?;
    // A new CRL is due: revocations changed since the client's copy.
    let diff = fetch(Some((&full.number, &full.sha256))).map_err(|f| anyhow::anyhow!("{f}"))?;
    let diff_bytes = wire_bytes(&encode_body(&diff));
    anyhow::ensure!(diff.diff.is_some(), "the signer sent no difference");
    let ok = signer_client::rebuild_crl(&old, &diff).is_some();
    println!("{seconds} {full_bytes} {diff_bytes} {}", u8::from(ok));
    Ok(())
}

/// The report section for the difference transfer.
pub fn diff_section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    let n = ((100_000f64 * scale.min(1.0)) as u64).max(1000);
    let added = 100;
    eprintln!("bench: CRL difference, {n} entries + {added}");
    let ceremony = Ceremony::new("rsa2048", "");
    let fields = child_numbers(
        &ceremony,
        "--crl-diff-child",
        &format!("{},{n},{added}", ceremony.dir().display()),
    )?;
    let [secs, full, diff, ok] = fields[..] else {
        anyhow::bail!("CRL difference child printed {fields:?}");
    };
    writeln!(report, "## CRL transfer: difference vs. full\n")?;
    writeln!(
        report,
        "{n} revocations in the repository, a full `fetch_crl`, then {added} more revocations and a \
         `fetch_crl` stating the client's copy. Bytes are what travels on the link for the reply \
         (16 KiB parts, framed). The baseline is the full CRL's transfer.\n"
    )?;
    writeln!(report, "| | value |")?;
    writeln!(report, "|---|---|")?;
    writeln!(
        report,
        "| signing the {n}-entry CRL from the repository | {secs:.2} s |"
    )?;
    writeln!(
        report,
        "| full CRL on the link | {full:.0} bytes ({:.0} s at 115,200 baud) |",
        full * 10.0 / 115_200.0
    )?;
    writeln!(
        report,
        "| difference on the link | {diff:.0} bytes ({:.2} s at 115,200 baud) |",
        diff * 10.0 / 115_200.0
    )?;
    writeln!(
        report,
        "| difference / full | {:.2} % |",
        100.0 * diff / full
    )?;
    writeln!(
        report,
        "| client rebuild equals the signer's CRL | {} |\n",
        if ok == 1.0 { "yes" } else { "NO" }
    )?;
    Ok(())
}

/// Resets this process's peak RSS (VmHWM) to its current RSS.
fn reset_peak() -> anyhow::Result<()> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// In the child: with `fill`, records `n` revocations in the repository
/// first; then `rounds` times: one more revocation (so the CRL is due
/// again) and a full `fetch_crl`, which builds and signs the CRL from the
/// repository. Prints per round `seconds added_peak_kib crl_bytes`.
pub fn scale_child(dir: &Path, n: u64, fill: bool, rounds: u64) -> anyhow::Result<()> {
    use signer_protocol::{msg, Command};

    let service = service_of(dir)?;
    let repo = service.repository();
    if fill {
        record_bulk(repo, 0..n)?;
    }
    let ctx = signer_service::CallContext {
        envelope_id: 1,
        command: Command::FETCH_CRL,
    };
    // Serials 0.. are taken in order: the counter says how many.
    let first = repo.revocation_seq("sub")?;
    for next in first..first + rounds {
        repo.record_revocations(vec![revocation(next)])?;
        let rss = status_kib("VmRSS:");
        reset_peak()?;
        let started = Instant::now();
        let reply = service
            .fetch_crl(
                &ctx,
                msg::FetchCrl {
                    issuer: "sub".into(),
                    have_number: None,
                    have_sha256: None,
                    shard: None,
                },
            )
            .map_err(|f| anyhow::anyhow!("{f}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let peak = status_kib("VmHWM:") - rss;
        let bytes = reply.crl.map_or(0, |c| c.len());
        anyhow::ensure!(reply.entries >= n, "{} entries", reply.entries);
        println!("{seconds} {peak} {bytes}");
    }
    Ok(())
}

/// The `fetch_crl` at scale report section: a CRL built from a repository
/// of `n` revocations, in the process that recorded them (warm) and in a
/// new one (cold).
pub fn scale_section(report: &mut String, scale: f64, records: Option<u64>) -> anyhow::Result<()> {
    let n = records.unwrap_or(((1_000_000f64 * scale.min(1.0)) as u64).max(1000));
    let rounds = 5;
    eprintln!("bench: fetch_crl from a repository of {n} revocations");
    let ceremony = Ceremony::new("rsa2048", "");
    let warm = child_numbers(
        &ceremony,
        "--crl-scale-child",
        &format!("{},{n},fill,{rounds}", ceremony.dir().display()),
    )?;
    let mut cold = Vec::new();
    for _ in 0..rounds {
        cold.extend(child_numbers(
            &ceremony,
            "--crl-scale-child",
            &format!("{},{n},open,1", ceremony.dir().display()),
        )?);
    }
    let column = |v: &[f64], k: usize| -> Vec<f64> { v.chunks(3).map(|c| c[k]).collect() };
    let secs = |x: f64| format!("{x:.2} s");
    let mib = |x: f64| format!("{:.1}", x / 1024.0);
    let crl_mib = column(&warm, 2).into_iter().fold(0.0, f64::max) / 1048576.0;
    writeln!(report, "## CRL from a repository of {n} revocations\n")?;
    writeln!(
        report,
        "A full `fetch_crl` through the CA service (RSA-2048 issuer on SoftHSM2) after one more revocation each \
         time, so that every fetch reads all {n} revocations from the repository, builds the CRL, signs it, verifies it \
         and stores it. Warm: in the process that recorded them ({rounds} fetches in a row); cold: a new process \
         each time (the repository opened, its pages checked, then one revocation and the fetch; {rounds} processes). \
         Memory is what the fetch adds to the process's resident set at its peak (VmHWM reset before it). \
         Figures are min / median / max; the baseline is the CRL's own size. Targets: ≤ 1 s, ≤ 2× the CRL.\n"
    )?;
    writeln!(
        report,
        "| | time (min / median / max) | memory added, MiB (min / median / max) | CRL size MiB | memory ÷ CRL size (max) |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    for (name, v) in [("warm", &warm), ("cold", &cold)] {
        let peak_max = column(v, 1).into_iter().fold(0.0, f64::max) / 1024.0;
        writeln!(
            report,
            "| {name} | {} | {} | {crl_mib:.1} | {:.2}× |",
            crate::scale::spread(column(v, 0), secs),
            crate::scale::spread(column(v, 1), mib),
            peak_max / crl_mib.max(1e-9)
        )?;
    }
    writeln!(report)?;
    Ok(())
}
