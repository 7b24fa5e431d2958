//! The web host's throughput: rows through signer-gateway (SQLite queue)
//! against the client library alone on the same signer and link, and
//! `signer-client batch` against a shell loop of `signer-client sign`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
use signer_testsupport::gateway::Gateway;
use signer_testsupport::{bin, Bench, LinkSpec};

use crate::scale::median;

fn range(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
    format!("{lo:.1}–{hi:.1}")
}

/// CPU seconds (user + system) a process has used so far; `None` if it
/// cannot be read.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Clock ticks per second (asked once: `cpu_seconds` runs around timed rows).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `sign_x509` line for the queue or a batch file.
fn line(id: &str, csr: &str) -> String {
    serde_json::json!({"request_id": id, "kind": "sign_x509", "body": {
        "profile": "server", "csr": csr,
        "subject": [["CN", "bench.example.org"]],
        "sans": [{"type": "dns", "value": "bench.example.org"}], "validity_days": 30}})
    .to_string()
}

/// Rows through a running gateway: inserted in one transaction (as a web
/// application's batch insert would), timed until the last is final.
fn gateway_rate(queue: &Path, csr: &str, n: usize, tag: &str) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(queue)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    // The gateway makes it too; whoever comes first.
    conn.execute_batch(signer_gateway::queue::sqlite::SCHEMA)?;
    let tx = conn.transaction()?;
    for i in 0..n {
        let v: serde_json::Value = serde_json::from_str(&line(&format!("{tag}-{i}"), csr))?;
        tx.execute(
            "INSERT INTO signer_requests (request_id, kind, body) VALUES (?1, 'sign_x509', ?2)",
            rusqlite::params![format!("{tag}-{i}"), v["body"].to_string()],
        )?;
    }
    let started = Instant::now();
    tx.commit()?;
    loop {
        let open: i64 = conn.query_row(
            "SELECT count(*) FROM signer_requests WHERE state IN ('pending', 'claimed')",
            [],
            |r| r.get(0),
        )?;
        if open == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "gateway stalled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let failed: i64 = conn.query_row(
        "SELECT count(*) FROM signer_requests WHERE state <> 'done'",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(failed == 0, "{failed} rows not done");
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Pins every thread of `pid` to `cpus` (a `taskset` list).
fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "taskset {cpus} {pid} failed");
    Ok(())
}

/// One link speed: the library's pipelined rate and the gateway's,
/// alternating. With `split`, the signer host and the web host get a core
/// each, as two machines would: signerd on CPU 0; this process (the
/// library, the link simulator, the queue's inserts) and the gateway on
/// CPU 1.
fn compare(
    report: &mut String,
    link: LinkSpec,
    label: &str,
    n: usize,
    split: bool,
) -> anyhow::Result<()> {
    eprintln!("bench: gateway against the library at {label}");
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let bench = Bench::start_with_env(link, &c.ca_yaml, c.env());
    if split {
        pin(bench.daemon.pid(), "0")?;
        pin(std::process::id(), "1")?;
    }
    // The line's pace is steady; unthrottled runs vary with the host's
    // scheduling, so they get more rounds.
    let count = if link.baud == 0 { 5 } else { 3 };
    let result = rounds(report, &bench, &c, link, label, n, split, count);
    if split {
        // The rest of the benchmark has both cores again.
        pin(std::process::id(), "0-1")?;
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn rounds(
    report: &mut String,
    bench: &Bench,
    c: &Ceremony,
    link: LinkSpec,
    label: &str,
    n: usize,
    split: bool,
    count: usize,
) -> anyhow::Result<()> {
    let csr = make_csr(
        c.dir(),
        "gw",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let csr_text = String::from_utf8(csr.clone())?;
    let dir = c.dir();
    let baud = if link.baud == 0 { 4_000_000 } else { link.baud };
    let yaml = format!(
        "name: bench\nsigners:\n  - {{device: {}, baud: {baud}}}\nqueue:\n  sqlite: {}\n  poll_ms: 20\n",
        bench.client_device().display(),
        dir.join("queue.sqlite").display()
    );
    let (mut lib, mut gw, mut share) = (Vec::new(), Vec::new(), Vec::new());
    // CPU milliseconds per row: the client side (this process for the
    // library, the gateway's process) and signerd, library then gateway.
    let (mut lib_cpu, mut gw_cpu, mut sd_lib, mut sd_gw) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let signerd = bench.daemon.pid();
    let per_row = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => 1000.0 * (b - a) / n as f64,
        _ => f64::NAN,
    };
    for round in 0..count {
        // The library alone holds the link…
        let client = bench.client();
        super::pipelined_sign(&client, &csr, 10, &format!("warm-{round}"))?;
        let before = client.stats();
        let cpu = (cpu_seconds(std::process::id()), cpu_seconds(signerd));
        let elapsed = super::pipelined_sign(&client, &csr, n, &format!("lib-{round}"))?;
        lib_cpu.push(per_row(cpu.0, cpu_seconds(std::process::id())));
        sd_lib.push(per_row(cpu.1, cpu_seconds(signerd)));
        let received = client.stats().bytes_received - before.bytes_received;
        lib.push(n as f64 / elapsed.as_secs_f64());
        // Of the line's capacity towards the client (8N1: 10 bits a byte).
        share.push(received as f64 / elapsed.as_secs_f64() / (f64::from(baud) / 10.0));
        drop(client);
        std::thread::sleep(Duration::from_millis(300));
        // …then the gateway does.
        let mut gateway = Gateway::start(dir, &format!("gw-{round}"), &yaml);
        if split {
            pin(gateway.pid(), "1")?;
        }
        let warm = gateway_rate(
            &dir.join("queue.sqlite"),
            &csr_text,
            10,
            &format!("gwarm-{round}"),
        )?;
        anyhow::ensure!(warm > 0.0);
        let cpu = (cpu_seconds(gateway.pid()), cpu_seconds(signerd));
        gw.push(gateway_rate(
            &dir.join("queue.sqlite"),
            &csr_text,
            n,
            &format!("gw-{round}"),
        )?);
        gw_cpu.push(per_row(cpu.0, cpu_seconds(gateway.pid())));
        sd_gw.push(per_row(cpu.1, cpu_seconds(signerd)));
        anyhow::ensure!(gateway.stop() == Some(0), "gateway did not stop cleanly");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (l, g) = (median(&lib), median(&gw));
    let line_share = if link.baud == 0 {
        "–".to_string()
    } else {
        format!(
            "{:.0} % / {:.0} %",
            100.0 * median(&share),
            100.0 * median(&share) * g / l
        )
    };
    writeln!(
        report,
        "| {label} | {n} | {l:.1} ({}) | {g:.1} ({}) | {:.2} | {line_share} | {:.2} / {:.2} | {:.2} / {:.2} |",
        range(&lib),
        range(&gw),
        g / l,
        median(&lib_cpu),
        median(&gw_cpu),
        median(&sd_lib),
        median(&sd_gw),
    )?;
    Ok(())
}

/// `signer-client batch` against a loop of `signer-client sign`, one process each.
fn batch_against_loop(report: &mut String, n: usize) -> anyhow::Result<()> {
    eprintln!("bench: batch against a shell loop");
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let bench = Bench::start_with_env(LinkSpec::baud(115_200), &c.ca_yaml, c.env());
    drop(bench.client());
    let dir = c.dir();
    let csr = make_csr(dir, "loop", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let csr_text = String::from_utf8(csr)?;
    let device = bench.client_device();
    let (mut looped, mut batched) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let started = Instant::now();
        for i in 0..n {
            let status = Command::new(bin("signer-client"))
                .current_dir(dir)
                .args([
                    "--link",
                    device.to_str().unwrap_or_default(),
                    "sign",
                    "--profile",
                    "server",
                ])
                .args([
                    "--csr",
                    "loop.csr",
                    "--request-id",
                    &format!("loop-{round}-{i}"),
                ])
                .args([
                    "--subject",
                    "CN=bench.example.org",
                    "--san",
                    "dns:bench.example.org",
                ])
                .args(["--days", "30", "--out", "loop.pem"])
                .status()?;
            anyhow::ensure!(status.success(), "signer-client sign failed");
        }
        looped.push(n as f64 / started.elapsed().as_secs_f64());
        let file = dir.join(format!("batch-{round}.jsonl"));
        let lines: Vec<String> = (0..n)
            .map(|i| line(&format!("batch-{round}-{i}"), &csr_text))
            .collect();
        std::fs::write(&file, lines.join("\n"))?;
        let started = Instant::now();
        let out = Command::new(bin("signer-client"))
            .current_dir(dir)
            .args(["--link", device.to_str().unwrap_or_default(), "batch"])
            .arg(&file)
            .args(["--out-dir", &format!("out-{round}")])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        batched.push(n as f64 / started.elapsed().as_secs_f64());
    }
    writeln!(
        report,
        "| 115,200 baud | {n} | {:.1} ({}) | {:.1} ({}) | {:.1}× |",
        median(&looped),
        range(&looped),
        median(&batched),
        range(&batched),
        median(&batched) / median(&looped)
    )?;
    Ok(())
}

pub fn section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    writeln!(report, "## Web host: the gateway's queue and batch mode\n")?;
    writeln!(
        report,
        "ECDSA P-256 certificates from one signer. *Library*: requests pipelined by the client \
         library over the link; *gateway*: rows inserted into the gateway's SQLite queue in one \
         transaction, timed until every row is final (claimed, sent, answer checked against the CA \
         certificate, written back), on the same signer and link, rounds alternating. Line share: \
         bytes towards the client per second over the line's capacity (8N1), for the library, and \
         the gateway's by its rate. CPU per row: user and system time of the client side (this \
         process for the library, which also runs the link simulator; the gateway's process) and \
         of signerd over the timed rows. The split rows give the signer host and the web host a \
         core each, as two machines would (signerd on CPU 0; everything else on CPU 1). Three \
         rounds at 115,200 baud, five unthrottled (3,000 rows each: shorter runs measured the \
         gateway's start and the last rows' stragglers more than its rate); median and range.\n"
    )?;
    writeln!(
        report,
        "| link | requests | library (cert/s) | gateway (rows/s) | gateway / library | line share (library / gateway) | client-side CPU ms per row (library / gateway) | signerd CPU ms per row (library / gateway) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    compare(
        report,
        LinkSpec::baud(115_200),
        "115,200 baud",
        super::scaled(200, scale),
        false,
    )?;
    compare(
        report,
        LinkSpec::unthrottled(),
        "unthrottled pty, both hosts on 2 shared cores",
        super::scaled(3000, scale),
        false,
    )?;
    compare(
        report,
        LinkSpec::unthrottled(),
        "unthrottled pty, signer host on CPU 0, web host on CPU 1",
        super::scaled(3000, scale),
        true,
    )?;
    writeln!(
        report,
        "\nTargets: at 115,200 baud the gateway's line share ≥ 95 %; unthrottled ≥ 0.90 of the library, \
         judged on the split row, where each side has its host as deployed. On shared cores the \
         gateway's work (a durable database, each answer verified against the CA certificate) \
         takes CPU from signerd, which the library's bare pipelining does not; that row shows \
         the cost, not the target.\n"
    )?;
    writeln!(
        report,
        "`signer-client batch` (one process, pipelined) against a shell loop running \
         `signer-client sign` once per request, same signer and link:\n"
    )?;
    writeln!(
        report,
        "| link | requests | shell loop (cert/s) | batch (cert/s) | batch / loop |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    batch_against_loop(report, super::scaled(60, scale))?;
    writeln!(report)?;
    Ok(())
}
