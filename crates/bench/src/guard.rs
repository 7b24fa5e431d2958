//! The regression guard: instructions per certificate, counted by
//! callgrind on a fixed small workload (repeatable on a shared machine,
//! unlike time), set against the baseline committed beside this file. It
//! reports; it never fails a build on a difference.
//!
//! The workload runs in a child under `valgrind --tool=callgrind`: the CA
//! service (SoftHSM2 token, repository, group commit) signs `n` requests,
//! one at a time, with CSRs that differ per request. The same child with no
//! requests measures the start-up, which is taken off: what is left, over
//! `n`, is the cost of one certificate, every thread included.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};

/// Requests per measured run.
const N: usize = 64;
/// Distinct CSRs (taken in turn).
const CSRS: usize = 16;
/// A difference beyond this share is reported as one.
const NOTICE: f64 = 0.03;

/// Where the baseline is kept.
fn baseline_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guard-baseline.txt")
}

/// `key instructions` lines.
fn read_baseline() -> Vec<(String, f64)> {
    std::fs::read_to_string(baseline_file())
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// In the child: `n` sign requests through the CA service, one at a time,
/// after one to warm up (sessions, caches) that the start-up run makes too.
pub fn child(dir: &Path, n: usize) -> anyhow::Result<()> {
    use signer_protocol::Command as Cmd;
    let yaml = std::fs::read_to_string(dir.join("setup.yaml"))?;
    let config =
        signer_server::Config::<signer_ca::CaConfig>::parse(&yaml, &dir.join("setup.yaml"))?;
    let ca = config.ca.ok_or_else(|| anyhow::anyhow!("no ca section"))?;
    let service = signer_ca::CaService::start(&ca, "test-signer", 1)?;
    let csrs: Vec<Vec<u8>> = (0..CSRS)
        .map(|i| std::fs::read(dir.join(format!("guard-{i}.csr"))))
        .collect::<Result<_, _>>()?;
    let ctx = signer_service::CallContext {
        envelope_id: 1,
        command: Cmd::SIGN_X509,
    };
    for i in 0..=n {
        let request = crate::sign_request("guard", &csrs[i % CSRS], i);
        service
            .sign(&ctx, request)
            .map_err(|f| anyhow::anyhow!("{f}"))?;
    }
    Ok(())
}

/// Total instructions of a run of the child under callgrind.
fn instructions(ceremony: &Ceremony, n: usize) -> anyhow::Result<f64> {
    let out = ceremony.dir().join(format!("callgrind.{n}.out"));
    let run = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(std::env::current_exe()?)
        .arg("--guard-child")
        .arg(format!("{},{n}", ceremony.dir().display()))
        .envs(ceremony.env())
        .output()?;
    anyhow::ensure!(
        run.status.success(),
        "callgrind run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out)?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or(l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no totals in {}", out.display()))
}

/// The `## Regression guard` section; `update` rewrites the baseline.
pub fn section(report: &mut String, update: bool) -> anyhow::Result<()> {
    let baseline = read_baseline();
    let mut measured = Vec::new();
    writeln!(
        report,
        "## Regression guard: instructions per certificate\n"
    )?;
    writeln!(
        report,
        "Counted by callgrind (`scripts/test.sh` runs this too, and reports without failing): the CA service signs \
         {N} requests one at a time (CSRs from {CSRS} distinct P-256 keys, SoftHSM2 token, repository with group \
         commit), minus the same process with none; every thread counts. The baseline is \
         `crates/bench/guard-baseline.txt` (rewritten by `signer-bench --only guard --update-guard`); a difference \
         beyond {:.0} % is named.\n",
        NOTICE * 100.0
    )?;
    writeln!(
        report,
        "| issuer key | instructions per certificate | baseline | difference | |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    for key in ["p256", "rsa2048"] {
        let ceremony = Ceremony::new(key, SERVER_PROFILE);
        for i in 0..CSRS {
            make_csr(
                ceremony.dir(),
                &format!("guard-{i}"),
                &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            );
        }
        let idle = instructions(&ceremony, 0)?;
        let busy = instructions(&ceremony, N)?;
        let per = (busy - idle) / N as f64;
        let base = baseline.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let (diff, verdict) = match base {
            Some(b) => {
                let d = per / b - 1.0;
                let verdict = if d > NOTICE {
                    "COSTLIER"
                } else if d < -NOTICE {
                    "cheaper"
                } else {
                    "same"
                };
                (format!("{:+.1} %", d * 100.0), verdict)
            }
            None => ("—".into(), "no baseline"),
        };
        eprintln!("guard: {key}: {per:.0} instructions per certificate ({diff}, {verdict})");
        writeln!(
            report,
            "| {key} | {:.3} M | {} | {diff} | {verdict} |",
            per / 1e6,
            base.map_or("—".into(), |b| format!("{:.3} M", b / 1e6))
        )?;
        measured.push((key, per));
    }
    writeln!(report)?;
    if update {
        let mut text = String::from(
            "# Instructions per certificate (callgrind), as `signer-bench --only guard` measures them.\n",
        );
        for (key, per) in measured {
            writeln!(text, "{key} {per:.0}")?;
        }
        std::fs::write(baseline_file(), text)?;
    }
    Ok(())
}
