//! `signer-bench`: measures the signer and writes `docs/benchmarks.md`.
//!
//! Every figure is a ratio against a baseline measured in the same run on the
//! same machine: machines are noisy, absolute numbers alone mean little.
#![forbid(unsafe_code)]

mod audit;
mod crl;
mod gateway;
mod guard;
mod openpgp;
mod openssl_ca;
mod plot;
mod replication;
mod scale;
mod storage;

use signer_client::Calls;
use signer_protocol::calls;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use signer_client::Client;
use signer_hsm::{
    Hash, KeySpec, PinSource, Pkcs11Backend, Scheme, SigningBackend, TokenConfig, TokenSelector,
};
use signer_protocol::{encode_body, encode_request, msg, Command, Status};
use signer_server::{Engine, EngineConfig};
use signer_service::Router;
use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
use signer_testsupport::{Bench, LinkSpec};
use std::sync::Arc;

/// Benchmarks of the serial-link signer.
#[derive(Parser)]
#[command(name = "signer-bench", about)]
struct Cli {
    /// Write the report here (Markdown); without it, print to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Scale the request counts (1.0 = the documented run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Internal: build a CRL in this process, as `DIR,ENTRIES`.
    #[arg(long, hide = true)]
    crl_child: Option<String>,
    /// Internal: a CRL difference through the CA service, as `DIR,ENTRIES,ADDED`.
    #[arg(long, hide = true)]
    crl_diff_child: Option<String>,
    /// Internal: `fetch_crl` from a large repository, as `DIR,ENTRIES,fill|open,ROUNDS`.
    #[arg(long, hide = true)]
    crl_scale_child: Option<String>,
    /// Also measure the repository at these sizes (on demand: 10,000,000
    /// takes about 15 minutes and 50 GB of disk), e.g. `--storage-also 3000000`.
    #[arg(long, value_delimiter = ',')]
    storage_also: Vec<usize>,
    /// Records in the repository of the `issuance-scale` and `crl-scale`
    /// sections instead of 1,000,000 (on demand: 10,000,000 takes about
    /// 10 minutes to fill for each); the section gets its own heading.
    #[arg(long)]
    records: Option<u64>,
    /// Internal: the regression guard's workload, as `DIR,REQUESTS`.
    #[arg(long, hide = true)]
    guard_child: Option<String>,
    /// With `--only guard`: write the measured figures as the new baseline.
    #[arg(long)]
    update_guard: bool,
    /// Internal: fill a ceremony's repository, as `DIR,CERTIFICATES`.
    #[arg(long, hide = true)]
    fill_child: Option<String>,
    /// Run only one section (`link`, `guard`, `issuance`, `issuance-scale`, `cores`, `threads`, `lines`, `crl`, `crl-scale`, `openpgp`, `replication`, `replication-cost`, `storage`, `audit`, `gateway`); its part of
    /// an existing report is replaced, the rest kept.
    #[arg(long)]
    only: Option<String>,
    /// Internal: measure the raw HSM rate in this process (SoftHSM2 reads its
    /// configuration once per process), as `PIN_FILE,SCHEME,THREADS,COUNT`.
    #[arg(long, hide = true)]
    raw_hsm: Option<String>,
}

/// signerd's workers in the issuance benchmarks: 4, or `$BENCH_WORKERS`.
pub(crate) fn workers() -> String {
    std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "4".into())
}

pub(crate) fn scaled(n: usize, scale: f64) -> usize {
    ((n as f64 * scale) as usize).max(10)
}

fn health_body() -> Vec<u8> {
    encode_body(&msg::Empty {})
}

/// Requests per second through the engine alone: no link, no framing I/O.
fn engine_baseline(n: usize) -> f64 {
    let engine = Engine::start(EngineConfig::default(), Router::new(), Vec::new());
    let (tx, rx) = signer_server::outbox();
    let body = health_body();
    let started = Instant::now();
    for i in 0..n as u64 {
        let frame = signer_frame::encode(&encode_request(i + 1, Command::HEALTH, &body));
        let mut decoder = signer_frame::Decoder::new(65536);
        let mut input = &frame[..];
        while let Some(f) = decoder.decode(&mut input) {
            engine.on_frame(f, &tx);
        }
        let _ = rx.recv();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

struct Pipelined {
    requests: usize,
    elapsed: Duration,
    bytes_sent: u64,
    bytes_received: u64,
    /// The msgpack bodies alone, both ways: the rest of the bytes is the
    /// framing (envelope, CRC, COBS and delimiter).
    payload_sent: u64,
    payload_received: u64,
    retransmits: u64,
}

/// `requests` submitted at once over `client`, then every answer awaited
/// (each must be `ok`); what crossed the link meanwhile.
fn pipelined(client: &Client, requests: Vec<(Command, Vec<u8>)>) -> anyhow::Result<Pipelined> {
    let n = requests.len();
    let payload_sent = requests.iter().map(|(_, b)| b.len() as u64).sum();
    let before = client.stats();
    let started = Instant::now();
    let pending: Vec<_> = requests
        .into_iter()
        .map(|(command, body)| client.submit(command, body))
        .collect();
    let mut payload_received = 0;
    for p in pending {
        let reply = p.wait()?;
        anyhow::ensure!(reply.status == Status::OK, "answered {:?}", reply.status);
        payload_received += reply.body.len() as u64;
    }
    let elapsed = started.elapsed();
    let after = client.stats();
    Ok(Pipelined {
        requests: n,
        elapsed,
        bytes_sent: after.bytes_sent - before.bytes_sent,
        bytes_received: after.bytes_received - before.bytes_received,
        payload_sent,
        payload_received,
        retransmits: after.retransmits - before.retransmits,
    })
}

fn pipelined_health(client: &Client, n: usize) -> anyhow::Result<Pipelined> {
    pipelined(
        client,
        (0..n).map(|_| (Command::HEALTH, health_body())).collect(),
    )
}

/// Signatures per second straight from the token: `threads` threads, each
/// with its own session, hashing and signing as the daemon's workers do.
fn raw_hsm_rate(
    pin_file: &std::path::Path,
    scheme: Scheme,
    threads: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let token = TokenConfig {
        module: signer_testsupport::SOFTHSM_MODULE.into(),
        token: TokenSelector::Label("signer-a".into()),
        pin: PinSource::File(pin_file.to_path_buf()),
    };
    let key = KeySpec {
        name: "sub".into(),
        label: Some("sub-key".into()),
        id: None,
    };
    let backend = Arc::new(Pkcs11Backend::open(token, vec![key], threads)?);
    // Warm up every session (login, key handle) outside the timed part.
    let warm: Vec<_> = (0..threads)
        .map(|_| {
            let backend = Arc::clone(&backend);
            std::thread::spawn(move || {
                backend.sign_digest("sub", scheme, &scheme.hash().digest(b"warm-up"))
            })
        })
        .collect();
    for h in warm {
        h.join()
            .map_err(|_| anyhow::anyhow!("warm-up thread panicked"))??;
    }
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let backend = Arc::clone(&backend);
            std::thread::spawn(move || -> Result<(), signer_hsm::HsmError> {
                for i in 0..n / threads {
                    let digest = scheme.hash().digest(format!("tbs {w} {i}").as_bytes());
                    backend.sign_digest("sub", scheme, &digest)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("signing thread panicked"))??;
    }
    Ok((n / threads * threads) as f64 / started.elapsed().as_secs_f64())
}

/// The `sign_x509` request the benchmarks send: request id `<tag>-<i>`.
pub(crate) fn sign_request(tag: &str, csr: &[u8], i: usize) -> msg::SignX509 {
    msg::SignX509 {
        request_id: format!("{tag}-{i}"),
        profile: "server".into(),
        csr: csr.to_vec(),
        subject: vec![("CN".into(), "bench.example.org".into())],
        sans: vec![msg::SanEntry {
            kind: "dns".into(),
            value: "bench.example.org".into(),
        }],
        validity_days: Some(30),
    }
}

/// `n` pipelined `sign_x509` requests over `client`; the time until the
/// last answer.
pub(crate) fn pipelined_sign(
    client: &signer_client::Client,
    csr: &[u8],
    n: usize,
    tag: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let pending: Vec<_> = (0..n)
        .map(|i| client.submit(Command::SIGN_X509, encode_body(&sign_request(tag, csr, i))))
        .collect();
    for p in pending {
        let _: msg::SignX509Reply = p.wait()?.decode()?;
    }
    Ok(started.elapsed())
}

/// Pipelined `sign_x509` requests through signerd over `link`, with
/// distinct request ids (starting with `tag`), each durably recorded.
fn issuance_run(
    ceremony: &Ceremony,
    csr: &[u8],
    n: usize,
    link: LinkSpec,
    tag: &str,
) -> anyhow::Result<Pipelined> {
    let yaml = format!(
        "protocol:\n  workers: {}\n  max_in_flight: 32\n{}",
        workers(),
        ceremony.ca_yaml
    );
    let mut env = ceremony.env();
    env.push(("RUST_LOG".into(), "info".into()));
    let bench = Bench::start_with_env(link, &yaml, env);
    let client = bench.client();
    // Warm up (CA check, sessions, repository file).
    let _: msg::SignX509Reply =
        client.request::<calls::SignX509>(&sign_request(tag, csr, usize::MAX))?;
    pipelined(
        &client,
        (0..n)
            .map(|i| (Command::SIGN_X509, encode_body(&sign_request(tag, csr, i))))
            .collect(),
    )
}

/// Issuance through `signer-linksim` at line speeds from 9,600 baud up, as a
/// share of what the line allows for the bytes that crossed it; and a plot.
fn line_speed_section(
    report: &mut String,
    scale: f64,
    plots: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let ceremony = Ceremony::new("p256", SERVER_PROFILE);
    let csr = make_csr(
        ceremony.dir(),
        "line",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    writeln!(
        report,
        "## Issuance over serial lines of each speed
"
    )?;
    let rounds = 5;
    writeln!(
        report,
        "Pipelined `sign_x509` requests (P-256 CSR, ECDSA P-256 issuer on SoftHSM2) from the client \
         library through `signer-linksim` at each line speed (8N1: 10 bits a byte) to `signerd`, \
         {rounds} runs at each speed (a new signer and link each time). The baseline is the time the \
         line itself needs for the bytes that crossed it in the busier direction (the certificates), \
         measured in the same run; the target at 115,200 baud is 95 %. Bytes per certificate are \
         what crossed the line, split into the msgpack bodies (request: CSR, names, profile; \
         reply: the certificate) and the framing around them (envelope with request id and \
         command or status, CRC-32, COBS and the delimiter). Rate and share: min / median / max; \
         times: median.\n"
    )?;
    writeln!(report, "| line | requests | cert/s | bytes per certificate to signer: body + framing | back: body + framing | line time of the busier direction | measured | share of the line rate |")?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    let mut points = Vec::new();
    for baud in [
        9_600u32, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 921_600, 0,
    ] {
        let n = if baud == 0 {
            scaled(400, scale)
        } else {
            scaled((baud / 1_500).clamp(8, 300) as usize, scale)
        };
        let link = || {
            if baud == 0 {
                LinkSpec::unthrottled()
            } else {
                LinkSpec::baud(baud)
            }
        };
        eprintln!("bench: issuance at {baud} baud, {n} requests, {rounds} runs");
        let mut runs = Vec::new();
        for k in 0..rounds {
            runs.push(issuance_run(
                &ceremony,
                &csr,
                n,
                link(),
                &format!("line{baud}-{k}"),
            )?);
        }
        // Line time of the busier direction, seconds.
        let line_time = |r: &Pipelined| {
            (baud != 0).then(|| r.bytes_sent.max(r.bytes_received) as f64 * 10.0 / f64::from(baud))
        };
        let rate = |r: &Pipelined| r.requests as f64 / r.elapsed.as_secs_f64();
        let per = |x: u64| x / n as u64;
        let split = |wire: u64, body: u64| {
            format!("{} ({} + {})", per(wire), per(body), per(wire) - per(body))
        };
        let last = &runs[runs.len() - 1];
        writeln!(
            report,
            "| {} | {n} | {} | {} | {} | {} | {:.2} s | {} |",
            if baud == 0 {
                "unthrottled pty".to_string()
            } else {
                format!("{baud} baud")
            },
            scale::spread(runs.iter().map(rate).collect(), |x| format!("{x:.1}")),
            split(last.bytes_sent, last.payload_sent),
            split(last.bytes_received, last.payload_received),
            if baud == 0 {
                "—".into()
            } else {
                format!(
                    "{:.2} s",
                    scale::median(&runs.iter().filter_map(line_time).collect::<Vec<_>>())
                )
            },
            scale::median(
                &runs
                    .iter()
                    .map(|r| r.elapsed.as_secs_f64())
                    .collect::<Vec<_>>()
            ),
            if baud == 0 {
                "—".into()
            } else {
                scale::spread(
                    runs.iter()
                        .filter_map(|r| Some(line_time(r)? / r.elapsed.as_secs_f64()))
                        .collect(),
                    |x| format!("{:.1} %", 100.0 * x),
                )
            },
        )?;
        points.push((
            if baud == 0 {
                4_000_000.0
            } else {
                f64::from(baud)
            },
            scale::median(&runs.iter().map(rate).collect::<Vec<_>>()),
        ));
    }
    writeln!(report)?;
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir)?;
        let svg = plot::line_chart(
            "Issuance throughput vs. line speed",
            "line speed (baud; the last point: unthrottled pty)",
            "certificates per second",
            &[plot::Series {
                name: "signerd, P-256 issuer".into(),
                points,
            }],
            true,
            true,
        );
        std::fs::write(dir.join("throughput-vs-baud.svg"), svg)?;
        writeln!(
            report,
            "![issuance throughput vs. line speed](plots/throughput-vs-baud.svg)\n"
        )?;
    }
    Ok(())
}

/// Runs [`raw_hsm_rate`] in a child process pointed at the ceremony's token.
pub(crate) fn raw_in_child(
    ceremony: &Ceremony,
    key: &str,
    threads: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("--raw-hsm")
        .arg(format!(
            "{},{key},{threads},{n}",
            ceremony.hsm.pin_file().display()
        ))
        .envs(ceremony.env())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "raw HSM measurement failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn scheme_for(key: &str) -> Scheme {
    if key == "p256" {
        Scheme::Ecdsa(Hash::Sha256)
    } else {
        Scheme::RsaPkcs1(Hash::Sha256)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every daemon measured logs as shipped (`level: info`): the tests'
    // debug lines would be part of what is measured.
    if std::env::var_os(signer_testsupport::DAEMON_LOG).is_none() {
        std::env::set_var(signer_testsupport::DAEMON_LOG, "info");
    }
    if let Some(spec) = &cli.crl_diff_child {
        let parts: Vec<&str> = spec.rsplitn(3, ',').collect();
        let [added, n, dir] = parts.as_slice() else {
            anyhow::bail!("--crl-diff-child DIR,ENTRIES,ADDED");
        };
        return crl::diff_child(std::path::Path::new(dir), n.parse()?, added.parse()?);
    }
    if let Some(spec) = &cli.guard_child {
        let (dir, n) = spec
            .rsplit_once(',')
            .ok_or_else(|| anyhow::anyhow!("--guard-child DIR,REQUESTS"))?;
        return guard::child(std::path::Path::new(dir), n.parse()?);
    }
    if let Some(spec) = &cli.fill_child {
        let (dir, n) = spec
            .rsplit_once(',')
            .ok_or_else(|| anyhow::anyhow!("--fill-child DIR,CERTIFICATES"))?;
        return scale::fill_child(std::path::Path::new(dir), n.parse()?);
    }
    if let Some(spec) = &cli.crl_scale_child {
        let parts: Vec<&str> = spec.rsplitn(4, ',').collect();
        let [rounds, mode, n, dir] = parts.as_slice() else {
            anyhow::bail!("--crl-scale-child DIR,ENTRIES,fill|open,ROUNDS");
        };
        return crl::scale_child(
            std::path::Path::new(dir),
            n.parse()?,
            *mode == "fill",
            rounds.parse()?,
        );
    }
    if let Some(spec) = &cli.crl_child {
        let (dir, n) = spec
            .rsplit_once(',')
            .ok_or_else(|| anyhow::anyhow!("--crl-child DIR,ENTRIES"))?;
        return crl::child(std::path::Path::new(dir), n.parse()?);
    }
    if let Some(spec) = &cli.raw_hsm {
        let parts: Vec<&str> = spec.split(',').collect();
        let [pin, key, threads, n] = parts.as_slice() else {
            anyhow::bail!("--raw-hsm PIN_FILE,KEY,THREADS,COUNT");
        };
        let rate = raw_hsm_rate(
            std::path::Path::new(pin),
            scheme_for(key),
            threads.parse()?,
            n.parse()?,
        )?;
        println!("{rate}");
        return Ok(());
    }
    let mut report = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "Generated by `scripts/bench.sh` (`signer-bench`) at Unix time {now} on a machine with {} CPU(s). \
         Every figure is set against a baseline measured in the same run.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    )?;

    let only = cli.only.as_deref();
    let plots = cli
        .out
        .as_deref()
        .and_then(|p| p.parent())
        .map(|d| d.join("plots"));
    if only.is_none() || only == Some("link") {
        link_sections(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("issuance") {
        scale::issuance_section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("guard") {
        guard::section(&mut report, cli.update_guard)?;
    }
    if only.is_none() || only == Some("issuance-scale") {
        scale::section(&mut report, cli.scale, cli.records)?;
    }
    if only.is_none() || only == Some("cores") {
        scale::cores_section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("threads") {
        scale::threads_section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("lines") {
        line_speed_section(&mut report, cli.scale, plots.as_deref())?;
    }
    if only.is_none() || only == Some("crl") {
        crl::section(&mut report, cli.scale, plots.as_deref())?;
        crl::diff_section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("crl") || only == Some("crl-scale") {
        crl::scale_section(&mut report, cli.scale, cli.records)?;
    }
    if only.is_none() || only == Some("openpgp") {
        openpgp::section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("replication") {
        replication::section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("replication") || only == Some("replication-cost") {
        replication::cost_section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("storage") {
        storage::section(&mut report, cli.scale, &cli.storage_also)?;
    }
    if only.is_none() || only == Some("audit") {
        audit::section(&mut report, cli.scale)?;
    }
    if only.is_none() || only == Some("gateway") {
        gateway::section(&mut report, cli.scale)?;
    }
    if let Some(old) = cli
        .out
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        report = if only.is_some() {
            splice(&old, &report)
        } else {
            // A full run keeps what only runs on demand (`--records`,
            // `--storage-also`) after its own sections.
            splice(&report, &extra_sections(&old, &report))
        };
    }
    write_report(cli.out.as_deref(), &report)
}

/// The `## ` sections of `old` whose headings `new` does not have.
fn extra_sections(old: &str, new: &str) -> String {
    let (_, old) = sections(old);
    let (_, new) = sections(new);
    old.into_iter()
        .filter(|(h, _)| !new.iter().any(|(n, _)| n == h))
        .map(|(_, body)| body)
        .collect()
}

/// A report's preamble and its `## ` sections (heading, text).
fn sections(text: &str) -> (String, Vec<(String, String)>) {
    let mut pre = String::new();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with("## ") {
            out.push((line.trim_end().to_string(), String::new()));
        }
        match out.last_mut() {
            Some((_, body)) => body.push_str(line),
            None => pre.push_str(line),
        }
    }
    (pre, out)
}

/// `old` with each `## ` section of `new` in place of the one of the same
/// heading (appended if it had none); `new`'s preamble is dropped.
fn splice(old: &str, new: &str) -> String {
    let (pre, mut kept) = sections(old);
    for (heading, body) in sections(new).1 {
        match kept.iter_mut().find(|(h, _)| *h == heading) {
            Some(slot) => slot.1 = body,
            None => {
                // A section new to the report starts after a blank line.
                if let Some((_, last)) = kept.last_mut() {
                    if !last.ends_with("\n\n") {
                        last.push('\n');
                    }
                }
                kept.push((heading, body));
            }
        }
    }
    let mut text = pre;
    for (_, body) in kept {
        text.push_str(&body);
    }
    text
}

fn write_report(out: Option<&std::path::Path>, report: &str) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            std::fs::write(path, report)?;
            eprintln!("bench: wrote {}", path.display());
        }
        None => print!("{report}"),
    }
    Ok(())
}

fn link_sections(report: &mut String, scale: f64) -> anyhow::Result<()> {
    // 1. Bytes on the wire for one health exchange.
    eprintln!("bench: health exchange size");
    let bench = Bench::start(LinkSpec::unthrottled());
    let client = bench.client();
    let one = pipelined_health(&client, 1)?;
    let id_example = encode_request(0x1234_5678_9abc_def0, Command::HEALTH, &health_body());
    writeln!(report, "## Link: one health exchange\n")?;
    writeln!(report, "| | bytes on the wire |")?;
    writeln!(report, "|---|---|")?;
    writeln!(
        report,
        "| health request (8-byte id, frame with CRC, COBS and delimiter) | {} |",
        signer_frame::encode(&id_example).len()
    )?;
    writeln!(
        report,
        "| health request as measured | {} |",
        one.bytes_sent
    )?;
    writeln!(
        report,
        "| health response as measured | {} |",
        one.bytes_received
    )?;
    writeln!(
        report,
        "| of which the msgpack bodies, request / response (the rest is framing) | {} / {} |",
        one.payload_sent, one.payload_received
    )?;
    writeln!(
        report,
        "| time on a 115,200-baud line, both directions at once | {:.1} ms |\n",
        (one.bytes_sent.max(one.bytes_received) * 10) as f64 / 115.2
    )?;

    // 2. Unthrottled pty vs the engine alone, alternating.
    eprintln!("bench: unthrottled pty vs engine");
    let n = scaled(20_000, scale);
    let rounds = 5;
    let mut rows = Vec::new();
    for _ in 0..rounds {
        let baseline = engine_baseline(n);
        let run = pipelined_health(&client, n)?;
        rows.push((baseline, run.requests as f64 / run.elapsed.as_secs_f64()));
    }
    drop(client);
    drop(bench);
    writeln!(report, "## Link: unthrottled pty\n")?;
    writeln!(
        report,
        "{n} pipelined `health` requests from `signer-client`'s library through `signer-linksim` \
         (unthrottled) to `signerd`, against the same requests fed to the protocol engine in \
         process (framing, envelope, dedupe store, handler; no link); {rounds} rounds, alternating, \
         min / median / max (frames: both directions).\n"
    )?;
    writeln!(report, "| | requests/s | frames/s |")?;
    writeln!(report, "|---|---|---|")?;
    let rate = |x: f64| format!("{x:.0}");
    let frames = |x: f64| format!("{:.0}", 2.0 * x);
    let column = |f: fn(&(f64, f64)) -> f64| rows.iter().map(f).collect::<Vec<_>>();
    writeln!(
        report,
        "| baseline: engine in process | {} | {} |",
        scale::spread(column(|r| r.0), rate),
        scale::spread(column(|r| r.0), frames)
    )?;
    writeln!(
        report,
        "| end to end over the pty | {} | {} |",
        scale::spread(column(|r| r.1), rate),
        scale::spread(column(|r| r.1), frames)
    )?;
    writeln!(
        report,
        "| ratio | {} | |\n",
        scale::spread(column(|r| r.1 / r.0), |x| format!("{:.1} %", 100.0 * x))
    )?;

    // 3. Goodput at 115,200 baud vs the line rate.
    eprintln!("bench: 115200 baud goodput");
    let baud = 115_200u32;
    let bench = Bench::start(LinkSpec::baud(baud));
    let client = bench.client();
    let n = scaled(200, scale);
    let runs = (0..rounds)
        .map(|_| pipelined_health(&client, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let line_time =
        |r: &Pipelined| (r.bytes_sent.max(r.bytes_received) * 10) as f64 / f64::from(baud);
    let run = &runs[runs.len() - 1];
    writeln!(report, "## Link: simulated 115,200-baud line\n")?;
    writeln!(
        report,
        "{n} pipelined `health` requests through `signer-linksim --baud 115200` (8N1, 10 bits a byte), \
         {rounds} runs. The baseline is the time the line needs for the bytes of the busier direction \
         (responses), at 11,520 bytes/s. Bytes: the last run; times and share: min / median / max.\n"
    )?;
    writeln!(report, "| | value |")?;
    writeln!(report, "|---|---|")?;
    writeln!(
        report,
        "| bytes client → signer (msgpack bodies + framing) | {} ({} + {}) |",
        run.bytes_sent,
        run.payload_sent,
        run.bytes_sent - run.payload_sent
    )?;
    writeln!(
        report,
        "| bytes signer → client (msgpack bodies + framing) | {} ({} + {}) |",
        run.bytes_received,
        run.payload_received,
        run.bytes_received - run.payload_received
    )?;
    let secs = |x: f64| format!("{x:.2} s");
    writeln!(
        report,
        "| baseline: line time for the busier direction | {} |",
        scale::spread(runs.iter().map(line_time).collect(), secs)
    )?;
    writeln!(
        report,
        "| measured | {} |",
        scale::spread(runs.iter().map(|r| r.elapsed.as_secs_f64()).collect(), secs)
    )?;
    writeln!(
        report,
        "| goodput, share of the line rate | {} |",
        scale::spread(
            runs.iter()
                .map(|r| line_time(r) / r.elapsed.as_secs_f64())
                .collect(),
            |x| format!("{:.1} %", 100.0 * x)
        )
    )?;
    writeln!(
        report,
        "| retransmissions, all runs | {} |\n",
        runs.iter().map(|r| r.retransmits).sum::<u64>()
    )?;
    drop(client);
    drop(bench);

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{extra_sections, splice};

    const OLD: &str = "# B\nold time\n## A\nold a\n## On demand\nbig\n## Gone\nold g\n";

    #[test]
    fn an_only_run_replaces_its_section_and_keeps_the_rest() {
        assert_eq!(
            splice(OLD, "# B\nnew time\n## A\nnew a\n"),
            "# B\nold time\n## A\nnew a\n## On demand\nbig\n## Gone\nold g\n"
        );
    }

    #[test]
    fn a_full_run_keeps_the_old_sections_it_did_not_make_after_its_own() {
        let new = "# B\nnew time\n## A\nnew a\n## Gone\nnew g\n";
        assert_eq!(
            splice(new, &extra_sections(OLD, new)),
            "# B\nnew time\n## A\nnew a\n## Gone\nnew g\n\n## On demand\nbig\n"
        );
    }

    #[test]
    fn a_section_new_to_the_report_is_appended_after_a_blank_line() {
        assert_eq!(
            splice("# B\n## A\na\n", "# B\n## New\nn\n"),
            "# B\n## A\na\n\n## New\nn\n"
        );
        assert_eq!(
            splice("# B\n## A\na\n\n", "# B\n## New\nn\n"),
            "# B\n## A\na\n\n## New\nn\n"
        );
    }
}
