//! Issuance on an empty repository against one holding 1,000,000
//! certificates and 1,000,000 revocations: rate and signerd's CPU per
//! certificate, alternating rounds, min / median / max.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use signer_repository::CertRecord;
use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
use signer_testsupport::{Bench, LinkSpec};

use crate::replication::{pin, unpin};

/// CPU seconds the live threads of a process have run (schedstat:
/// nanoseconds, finer than the clock ticks of /proc/PID/stat).
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        ns += schedstat_ns(&task.ok()?.path())?;
    }
    Some(ns as f64 / 1e9)
}

/// Nanoseconds the thread whose /proc directory is `task` has run.
fn schedstat_ns(task: &Path) -> Option<u64> {
    std::fs::read_to_string(task.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A certificate record as the signer makes them: a 16-octet serial
/// (prefix 0x21, the time in milliseconds, 72 random-looking bits; record
/// `i` issued `i` ms after the first, a month before now) and about 1 KB
/// of DER.
pub(crate) fn filler(i: u64) -> CertRecord {
    use sha2::Digest;
    let h = sha2::Sha256::digest(i.to_be_bytes());
    let mut random = [0u8; 9];
    random.copy_from_slice(&h[..9]);
    let serial = signer_x509::issue::serial_at(0x21, 1_793_500_000_000 + i, random);
    let mut der = vec![0x30, 0x82, 0x04, 0x00];
    der.extend((0..1024u64).map(|k| (k * 31 + i * 7) as u8));
    CertRecord {
        issuer: "sub".into(),
        serial,
        der,
        profile: "server".into(),
        request_id: format!("fill-{i}"),
        request_digest: h.to_vec(),
        subject: format!("CN=host{i}.example.org"),
        not_before: 1_790_000_000,
        not_after: 1_800_000_000 + (i % 86_400) as i64,
        issued_at_ms: 1_790_000_000_000,
        signer_id: "test-signer".into(),
    }
}

/// In the child: opens the ceremony's repository through the CA service
/// and records `n` certificates (the group commit, as the daemon records
/// them) and `n` revocations of them.
pub fn fill_child(dir: &Path, n: u64) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(dir.join("setup.yaml"))?;
    let config =
        signer_server::Config::<signer_ca::CaConfig>::parse(&yaml, &dir.join("setup.yaml"))?;
    let ca = config.ca.ok_or_else(|| anyhow::anyhow!("no ca section"))?;
    let service = signer_ca::CaService::start(&ca, "test-signer", 1)?;
    let started = Instant::now();
    crate::storage::fill(service.repository(), usize::try_from(n)?)?;
    eprintln!(
        "bench: filled with {n} + {n} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A signer on its own link, ready to issue.
struct Running {
    bench: Bench,
    client: signer_client::Client,
}

fn start(ceremony: &Ceremony) -> anyhow::Result<Running> {
    let bench = launch(ceremony);
    // Every page of a large repository is checked before the daemon serves.
    let client = bench.client_within(bench.link_options(), std::time::Duration::from_secs(900));
    Ok(Running { bench, client })
}

/// signerd with `ceremony`'s CA and [`crate::workers`] workers on an unthrottled link.
fn launch(ceremony: &Ceremony) -> Bench {
    // The scrub would verify the filler's certificates; it is not part of
    // issuing.
    let yaml = format!(
        "protocol:\n  workers: {}\n  max_in_flight: 32\n{}  storage:\n    scrub_interval_secs: 0\n",
        crate::workers(),
        ceremony.ca_yaml
    );
    Bench::start_with_env(LinkSpec::unthrottled(), &yaml, ceremony.env())
}

/// [`start`], and the seconds from starting the daemon to its first
/// answer on the link (`health`, saying `starting` while the repository is
/// checked) and to its being ready to sign.
fn timed_start(ceremony: &Ceremony) -> anyhow::Result<(Running, Startup)> {
    let started = Instant::now();
    let bench = launch(ceremony);
    let mut options = bench.link_options();
    options.timeout = std::time::Duration::from_secs(1);
    let limit = std::time::Duration::from_secs(900);
    let (probe, answer) = loop {
        if let Ok(probe) = signer_client::Client::open(&options) {
            break (probe, started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(started.elapsed() < limit, "signerd did not answer");
        // The device may not exist yet: no busy loop while it appears.
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    // Every page of a large repository is checked before the daemon signs.
    while signer_testsupport::still_starting(&probe) {
        anyhow::ensure!(started.elapsed() < limit, "signerd did not start");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let ready = started.elapsed().as_secs_f64();
    drop(probe);
    let client = bench.client_within(bench.link_options(), limit);
    Ok((Running { bench, client }, Startup { answer, ready }))
}

/// Seconds from starting signerd to its first answer and to its being ready.
#[derive(Clone, Copy)]
struct Startup {
    answer: f64,
    ready: f64,
}

/// Round trips of 20 `health` requests, one at a time, in ms.
fn health_ms(r: &Running) -> anyhow::Result<Vec<f64>> {
    use signer_protocol::{encode_body, msg, Command};
    (0..20)
        .map(|_| {
            let started = Instant::now();
            r.client
                .submit(Command::HEALTH, encode_body(&msg::Empty {}))
                .wait()?;
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

/// One round: `n` pipelined requests cycling through `csrs`; the rate and
/// signerd's CPU seconds per certificate.
fn round(r: &Running, csrs: &[Vec<u8>], n: usize, tag: &str) -> anyhow::Result<(f64, f64)> {
    Ok(round_keep(r, csrs, n, tag)?.0)
}

/// [`round`], also giving back the last certificate issued.
fn round_keep(
    r: &Running,
    csrs: &[Vec<u8>],
    n: usize,
    tag: &str,
) -> anyhow::Result<((f64, f64), Vec<u8>)> {
    use signer_protocol::{encode_body, msg, Command};
    let pid = r.bench.daemon.pid();
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let pending: Vec<_> = (0..n)
        .map(|i| {
            r.client.submit(
                Command::SIGN_X509,
                encode_body(&crate::sign_request(tag, &csrs[i % csrs.len()], i)),
            )
        })
        .collect();
    let mut last = Vec::new();
    for p in pending {
        let reply: msg::SignX509Reply = p.wait()?.decode()?;
        last = reply.certificate;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    Ok(((n as f64 / secs, cpu / n as f64), last))
}

/// The floor, CPU seconds per certificate: one raw HSM signature, one CSR
/// verification and one verification of an issued certificate against its
/// CA, with the code signerd runs, on `cores` cores at once: one HSM
/// session per core (a process of its own; the fastest of three runs) and
/// one verifying thread per core, each figure being all those cores' time
/// over the operations done. With 2 it is the floor as signerd meets it on
/// two cores: on a machine whose cores share execution units or caches,
/// each core does less per second while the other works.
fn floor(
    ceremony: &Ceremony,
    key: &str,
    csrs: &[Vec<u8>],
    cert: &[u8],
    cores: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    // The floor is the least the work can cost: the fastest of three runs.
    let mut sign = f64::MAX;
    for _ in 0..3 {
        sign = sign.min(cores as f64 / crate::raw_in_child(ceremony, key, cores, 1000)?);
    }
    let ca = signer_x509::cert_der(&std::fs::read(ceremony.dir().join("sub.pem"))?)
        .map_err(anyhow::Error::msg)?;
    let n = 2000;
    // `n` operations on each of `cores` threads: cores × elapsed over
    // cores × n operations.
    let per_op = |op: &(dyn Fn(usize) -> Result<(), String> + Sync)| -> anyhow::Result<f64> {
        let started = Instant::now();
        std::thread::scope(|s| {
            let runs: Vec<_> = (0..cores)
                .map(|t| s.spawn(move || (0..n).try_for_each(|i| op(i + t))))
                .collect();
            runs.into_iter().try_for_each(|r| {
                r.join()
                    .map_err(|_| anyhow::anyhow!("a floor thread panicked"))?
                    .map_err(anyhow::Error::msg)
            })
        })?;
        Ok(started.elapsed().as_secs_f64() / n as f64)
    };
    let csr = per_op(&|i| {
        signer_x509::csr::Csr::parse(&csrs[i % csrs.len()])
            .and_then(|u| u.verify())
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let verify = per_op(&|_| signer_x509::verify_issued(cert, &ca).map(|_| ()))?;
    Ok((sign, csr, verify))
}

/// The issuer keys these sections measure: name, the `openssl req
/// -newkey` arguments of the CSRs, the name in the tables.
const KEYS: [(&str, &[&str], &str); 2] = [
    (
        "p256",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ECDSA P-256",
    ),
    ("rsa2048", &["rsa:2048"], "RSA-2048"),
];

/// CSRs of 32 distinct keys of type `csr_key`, made in `dir`.
fn distinct_csrs(dir: &Path, tag: &str, csr_key: &[&str]) -> Vec<Vec<u8>> {
    (0..32)
        .map(|i| make_csr(dir, &format!("{tag}-{i}"), csr_key))
        .collect()
}

/// A signer ready to measure, with what it was made from.
struct Warm {
    /// Its issuer key type (`p256`, `rsa2048`).
    key: &'static str,
    /// Its CA, token and files (kept while it runs).
    ceremony: Ceremony,
    /// CSRs of 32 distinct keys.
    csrs: Vec<Vec<u8>>,
    r: Running,
    /// The warm-up round's last certificate.
    cert: Vec<u8>,
}

/// A signer of `key` ([`launch`]'s, empty repository) with CSRs of 32 keys of
/// type `csr_key`, after a warm-up round.
fn warm_signer(key: &'static str, csr_key: &[&str], tag: &str) -> anyhow::Result<Warm> {
    let ceremony = Ceremony::new(key, SERVER_PROFILE);
    let csrs = distinct_csrs(ceremony.dir(), tag, csr_key);
    let r = start(&ceremony)?;
    let (_, cert) = round_keep(&r, &csrs, 50, "warm")?;
    Ok(Warm {
        key,
        ceremony,
        csrs,
        r,
        cert,
    })
}

impl Warm {
    /// [`floor`] with this signer's key, CSRs and certificate, as one
    /// figure: CPU seconds per certificate.
    fn floor(&self, cores: usize) -> anyhow::Result<f64> {
        let (sign, csr, verify) = floor(&self.ceremony, self.key, &self.csrs, &self.cert, cores)?;
        Ok(sign + csr + verify)
    }
}

/// The median of `v` (the upper one of an even count).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Min / median / max of `v`, each shown by `f`.
pub(crate) fn spread(mut v: Vec<f64>, f: impl Fn(f64) -> String) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{} / {} / {}",
        f(v[0]),
        f(v[v.len() / 2]),
        f(v[v.len() - 1])
    )
}

/// The `## Issuance on a repository of 1,000,000 certificates` section.
pub fn section(report: &mut String, scale: f64, records: Option<u64>) -> anyhow::Result<()> {
    let filled = records.unwrap_or(((1_000_000f64 * scale.min(1.0)) as u64).max(1000));
    let n = crate::scaled(2000, scale);
    let rounds = 5;
    writeln!(
        report,
        "## Issuance on a repository of {filled} certificates and {filled} revocations\n"
    )?;
    writeln!(
        report,
        "Two signers, each with its own SoftHSM2 token and repository: one empty, one first filled with {filled} \
         certificate records (about 1 KB of DER, 16-octet serials made as the signer makes them, through the group commit as the \
         daemon records them) and as many revocations. Then {rounds} rounds, alternating between the two: {n} pipelined \
         `sign_x509` requests over an unthrottled pty, the CSRs taken in turn from 32 made with distinct keys. Rate is \
         certificates per second; CPU is signerd's (all threads, from schedstat) per certificate, set against the floor \
         the design requires, measured in the same run: one raw HSM signature with the issuer's key (one session, \
         a process of its own, the fastest of three runs), one CSR verification and one verification of an issued certificate against its \
         CA, with signerd's code. signerd works on both cores at once, and on this machine a core does less per second \
         while the other works (two HSM sessions sign well under twice as fast as one), so the same floor is measured \
         again with both cores busy (two HSM sessions at once, two threads verifying: both cores' time per operation); \
         the CPU columns give the ratio to each, alone / both cores busy. Figures are min / median / max over the rounds; \
         the rate ratio is full ÷ empty per round (targets: ≥ 95 % of the rate; ≤ 1.15× the floor).\n"
    )?;
    writeln!(
        report,
        "| issuer key | empty: cert/s | full: cert/s | full ÷ empty, rate | floor: HSM signature + CSR + certificate verification, ms | floor, both cores busy, ms | empty: CPU ms/cert (÷ floor alone / both busy) | full: CPU ms/cert (÷ floor alone / both busy) | fill time |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|")?;
    let mut startup = Vec::new();
    for (key, csr_key, label) in KEYS {
        eprintln!("bench: issuance on a full repository, {key}");
        let empty = Ceremony::new(key, SERVER_PROFILE);
        let full = Ceremony::new(key, SERVER_PROFILE);
        let csrs = distinct_csrs(empty.dir(), "scale", csr_key);
        let started = Instant::now();
        let out = std::process::Command::new(std::env::current_exe()?)
            .arg("--fill-child")
            .arg(format!("{},{filled}", full.dir().display()))
            .envs(full.env())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "fill failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fill_s = started.elapsed().as_secs_f64();
        let (a, a_start) = timed_start(&empty)?;
        let (b, b_start) = timed_start(&full)?;
        // Warm up both (sessions, CA check, the file's first pages).
        let (_, cert) = round_keep(&a, &csrs, 50, "warm")?;
        round(&b, &csrs, 50, "warm")?;
        let (sign, csr, verify) = floor(&empty, key, &csrs, &cert, 1)?;
        let floor_s = sign + csr + verify;
        let (sign2, csr2, verify2) = floor(&empty, key, &csrs, &cert, 2)?;
        let floor2_s = sign2 + csr2 + verify2;
        let (a_health, b_health) = (health_ms(&a)?, health_ms(&b)?);
        // A second start of each (the file now in the page cache).
        drop((a, b));
        let (a, a_again) = timed_start(&empty)?;
        let (b, b_again) = timed_start(&full)?;
        let cell = |first: Startup, again: Startup| {
            format!(
                "{:.2} s / {:.2} s (first answer {:.3} s / {:.3} s)",
                first.ready, again.ready, first.answer, again.answer
            )
        };
        startup.push(format!(
            "| {label} | {} | {} | {} | {} |",
            cell(a_start, a_again),
            cell(b_start, b_again),
            spread(a_health, |x| format!("{x:.2}")),
            spread(b_health, |x| format!("{x:.2}")),
        ));
        let mut rows = Vec::new();
        for k in 0..rounds {
            let e = round(&a, &csrs, n, &format!("r{k}"))?;
            let f = round(&b, &csrs, n, &format!("r{k}"))?;
            eprintln!("bench: round {k}: empty {:.0}/s, full {:.0}/s", e.0, f.0);
            rows.push((e, f));
        }
        let rate = |x: f64| format!("{x:.0}");
        let ms = |x: f64| {
            format!(
                "{:.3} ({:.2}× / {:.2}×)",
                x * 1000.0,
                x / floor_s,
                x / floor2_s
            )
        };
        let pct = |x: f64| format!("{:.0} %", x * 100.0);
        writeln!(
            report,
            "| {} | {} | {} | {} | {:.3} + {:.3} + {:.3} = {:.3} | {:.3} | {} | {} | {fill_s:.0} s |",
            label,
            spread(rows.iter().map(|r| r.0 .0).collect(), rate),
            spread(rows.iter().map(|r| r.1 .0).collect(), rate),
            spread(rows.iter().map(|r| r.1 .0 / r.0 .0).collect(), pct),
            sign * 1000.0,
            csr * 1000.0,
            verify * 1000.0,
            floor_s * 1000.0,
            floor2_s * 1000.0,
            spread(rows.iter().map(|r| r.0 .1).collect(), ms),
            spread(rows.iter().map(|r| r.1 .1).collect(), ms),
        )?;
    }
    writeln!(
        report,
        "\nStartup: from starting `signerd` to its being ready to sign (the repository opened with \
         every page's checksum verified, the token logged in, the CA certificates checked), the first time \
         after the fill and again (the file in the page cache); in brackets, to its first answer on the link \
         (`health`, which says `starting` until then; other requests are answered `starting`). `health`: \
         one request at a time, 20 of them, round trip in ms (min / median / max).\n\n\
         | issuer key | empty: ready to sign, first / again | full: ready to sign, first / again | empty: health ms | full: health ms |\n|---|---|---|---|---|"
    )?;
    for row in startup {
        writeln!(report, "{row}")?;
    }
    writeln!(report)?;
    Ok(())
}

/// The `## Issuance on one core and on two` section: signerd's CPU per
/// certificate with its workers spread over both cores against the same
/// signer on one core (the client and the link on the other).
pub fn cores_section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    let cpus = crate::replication::online_cpus();
    let n = crate::scaled(2000, scale);
    let rounds = 5;
    writeln!(report, "## Issuance on one core and on two\n")?;
    writeln!(
        report,
        "One signer ({} workers, empty repository), {rounds} rounds of each, alternating: {n} pipelined \
         `sign_x509` requests over an unthrottled pty, CSRs from 32 distinct keys. On one core: every thread of \
         signerd pinned to the first core (`taskset`), the client and the link simulator (this benchmark's \
         threads) to the second, so signerd has a core to itself. On two: nothing pinned (signerd, client \
         and link share both cores). CPU is signerd's (all threads, from schedstat) per certificate; the \
         ratio is two ÷ one per pair of rounds (target ≤ 1.1: spreading the work costs no more per \
         certificate). Min / median / max. The last column is the machine's share of that ratio, measured \
         in the same run: the floor (HSM signature, CSR and certificate verification, as in the issuance \
         sections) with both cores busy ÷ with one, which no change to signerd can remove.\n",
        crate::workers()
    )?;
    if cpus < 2 {
        writeln!(report, "This machine has one CPU: not measured.\n")?;
        return Ok(());
    }
    writeln!(
        report,
        "| issuer key | one core: cert/s | two: cert/s | one core: CPU ms/cert | two: CPU ms/cert | two ÷ one, CPU per certificate | the floor, both cores busy ÷ one |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let me = std::process::id();
    for (key, csr_key, label) in KEYS {
        eprintln!("bench: issuance on one core and on two, {key}");
        let w = warm_signer(key, csr_key, "cores")?;
        let (r, csrs) = (&w.r, &w.csrs);
        let pid = r.bench.daemon.pid();
        let machine = w.floor(2)? / w.floor(1)?;
        let mut rows = Vec::new();
        for k in 0..rounds {
            anyhow::ensure!(pin(pid, 0) && pin(me, 1), "taskset failed");
            let one = round(r, csrs, n, &format!("one{k}"));
            unpin(pid);
            unpin(me);
            let one = one?;
            let two = round(r, csrs, n, &format!("two{k}"))?;
            eprintln!(
                "bench: round {k}: one core {:.0}/s {:.3} ms, two {:.0}/s {:.3} ms",
                one.0,
                one.1 * 1e3,
                two.0,
                two.1 * 1e3
            );
            rows.push((one, two));
        }
        let rate = |x: f64| format!("{x:.0}");
        let ms = |x: f64| format!("{:.3}", x * 1000.0);
        let ratio = |x: f64| format!("{x:.2}");
        writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | {machine:.2} |",
            label,
            spread(rows.iter().map(|r| r.0 .0).collect(), rate),
            spread(rows.iter().map(|r| r.1 .0).collect(), rate),
            spread(rows.iter().map(|r| r.0 .1).collect(), ms),
            spread(rows.iter().map(|r| r.1 .1).collect(), ms),
            spread(rows.iter().map(|r| r.1 .1 / r.0 .1).collect(), ratio),
        )?;
    }
    writeln!(report)?;
    Ok(())
}

/// What `pid`'s threads have used so far.
#[derive(Default)]
struct ThreadUse {
    /// CPU nanoseconds, by what the threads do ([`thread_group`]).
    cpu_ns: std::collections::BTreeMap<&'static str, u64>,
    /// Context switches of all of them, voluntary and not.
    switches: u64,
}

fn thread_use(pid: u32) -> ThreadUse {
    let mut used = ThreadUse::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return used;
    };
    for task in tasks.flatten() {
        let task = task.path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        *used.cpu_ns.entry(thread_group(name.trim())).or_default() +=
            schedstat_ns(&task).unwrap_or(0);
        used.switches += std::fs::read_to_string(task.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    used
}

/// The part of signerd a thread belongs to, by its name.
fn thread_group(name: &str) -> &'static str {
    match name {
        n if n.starts_with("worker-") => "workers",
        "repo-committer" => "committer",
        "link-writer" => "link writer",
        "signerd" => "link reader",
        _ => "other",
    }
}

/// Commits and the records they held since start, from `health`.
fn commits(r: &Running) -> Option<(u64, u64)> {
    use signer_protocol::{encode_body, msg, Command};
    let reply: msg::HealthReply = r
        .client
        .submit(Command::HEALTH, encode_body(&msg::Empty {}))
        .wait()
        .ok()?
        .decode()
        .ok()?;
    let detail = &reply.checks.iter().find(|c| c.name == "repository")?.detail;
    let (_, rest) = detail.split_once("; ")?;
    let mut words = rest.split_whitespace();
    let commits = words.next()?.parse().ok()?;
    let records = words.nth(2)?.parse().ok()?;
    Some((commits, records))
}

/// The `## Where signerd's CPU goes` section: each thread group's CPU per
/// certificate in pipelined issuance, next to the floor.
pub fn threads_section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    let n = crate::scaled(2000, scale);
    let rounds = 5;
    let groups = [
        "workers",
        "committer",
        "link reader",
        "link writer",
        "other",
    ];
    writeln!(report, "## Where signerd's CPU goes\n")?;
    writeln!(
        report,
        "One signer ({} workers, empty repository), {rounds} rounds of {n} pipelined `sign_x509` requests over \
         an unthrottled pty, CSRs from 32 distinct keys; each thread's CPU (schedstat) per certificate, by \
         what the thread does: the workers (parse, CSR verification, profile, lint, HSM signature, re-verification), \
         the committer (group commit of the record and its audit entry, then the reply's encoding and \
         hand-off to the link writer), the link reader (the process's main thread: frames in) and the link \
         writer (frames out). The floor is measured in the same run as in the issuance sections (one core, \
         fastest of three HSM runs). Min / median / max; records per commit from `health`; context switches of all \
         signerd's threads (voluntary and not) per certificate.\n",
        crate::workers()
    )?;
    let mut head = String::from("| issuer key | floor ms |");
    for g in groups {
        write!(head, " {g}: ms/cert |")?;
    }
    head.push_str(" all: ms/cert (÷ floor) | records per commit | context switches per cert |");
    writeln!(report, "{head}\n|---|---|---|---|---|---|---|---|---|---|")?;
    for (key, csr_key, label) in KEYS {
        eprintln!("bench: where the CPU goes, {key}");
        let w = warm_signer(key, csr_key, "threads")?;
        let (r, csrs) = (&w.r, &w.csrs);
        let pid = r.bench.daemon.pid();
        let floor_s = w.floor(1)?;
        let mut per: Vec<std::collections::BTreeMap<&str, f64>> = Vec::new();
        let mut batch = Vec::new();
        let mut switches = Vec::new();
        for k in 0..rounds {
            let before = thread_use(pid);
            let c0 = commits(r);
            round(r, csrs, n, &format!("t{k}"))?;
            let after = thread_use(pid);
            let c1 = commits(r);
            let per_cert = |after: u64, before: u64| after.saturating_sub(before) as f64 / n as f64;
            let row: std::collections::BTreeMap<&str, f64> = after
                .cpu_ns
                .iter()
                .map(|(g, ns)| {
                    let was = before.cpu_ns.get(g).copied().unwrap_or(0);
                    (*g, per_cert(*ns, was) / 1e9)
                })
                .collect();
            switches.push(per_cert(after.switches, before.switches));
            eprintln!("bench: round {k}: {row:?}");
            per.push(row);
            if let (Some(a), Some(b)) = (c0, c1) {
                let commits = b.0.saturating_sub(a.0).max(1);
                batch.push(b.1.saturating_sub(a.1) as f64 / commits as f64);
            }
        }
        let ms = |x: f64| format!("{:.3}", x * 1000.0);
        let mut line = format!("| {label} | {:.3} |", floor_s * 1000.0);
        for g in groups {
            let v = per
                .iter()
                .map(|row| row.get(g).copied().unwrap_or(0.0))
                .collect();
            write!(line, " {} |", spread(v, ms))?;
        }
        let all = per.iter().map(|row| row.values().sum::<f64>()).collect();
        let all_ratio = |x: f64| format!("{:.3} ({:.2}×)", x * 1000.0, x / floor_s);
        write!(line, " {} |", spread(all, all_ratio))?;
        if batch.is_empty() {
            write!(line, " — |")?;
        } else {
            write!(line, " {} |", spread(batch, |x| format!("{x:.1}")))?;
        }
        write!(line, " {} |", spread(switches, |x| format!("{x:.2}")))?;
        writeln!(report, "{line}")?;
    }
    writeln!(report)?;
    commit_table(report)
}

/// The group commit's cost per commit and per record ([`commit_cpu`] for
/// several batch sizes, fitted to a line).
fn commit_table(report: &mut String) -> anyhow::Result<()> {
    let sizes = [1usize, 4, 16, 64];
    let runs = 3;
    let commits = 200;
    writeln!(
        report,
        "The group commit alone (in the benchmark's process, no link, no HSM): the committer thread's CPU \
         per commit holding k certificate records, each with an audit entry of the size signerd writes per \
         `sign_x509`, {commits} commits of each size, {runs} runs (min / median / max); the line through \
         all the points gives what a commit costs whatever it holds and what each record adds.\n"
    )?;
    writeln!(
        report,
        "| records per commit | committer CPU per commit, ms | per record, ms |\n|---|---|---|"
    )?;
    let mut points = Vec::new();
    for k in sizes {
        let mut per_commit = Vec::new();
        for _ in 0..runs {
            let (ms, held) = commit_cpu(k, commits)?;
            eprintln!("bench: commits of {k}: {ms:.3} ms each, {held:.1} records");
            per_commit.push(ms);
            points.push((held, ms));
        }
        writeln!(
            report,
            "| {k} | {} | {} |",
            spread(per_commit.clone(), |x| format!("{x:.3}")),
            spread(
                per_commit.iter().map(|x| x / k as f64).collect(),
                |x| format!("{x:.4}")
            ),
        )?;
    }
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    let per_record = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let fixed = my - per_record * mx;
    writeln!(
        report,
        "\nFitted: {fixed:.3} ms per commit + {per_record:.4} ms per record.\n"
    )?;
    Ok(())
}

/// The group commit alone, in this process: the committer thread's CPU
/// per commit of `k` certificate records, each with an audit entry of the
/// size signerd writes per `sign_x509` (as signerd hands them over, the
/// entries of one batch's commands going into a later commit), over
/// `commits` commits, on a repository already holding 2,000 records.
/// Milliseconds per commit, and the records each commit held.
fn commit_cpu(k: usize, commits: usize) -> anyhow::Result<(f64, f64)> {
    use signer_repository::{AuditEntry, Expected, OpenOptions, Repository};
    let dir = tempfile::tempdir()?;
    let repo = Repository::create(
        &dir.path().join("repo.redb"),
        &Expected::signer("bench"),
        &OpenOptions::default(),
    )?;
    crate::storage::fill(&repo, 2000)?;
    let committer = std::fs::read_dir("/proc/self/task")?
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "repo-committer")
        })
        .filter_map(|t| t.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .ok_or_else(|| anyhow::anyhow!("no committer thread"))?;
    let task = Path::new("/proc/self/task").join(committer.to_string());
    let cpu = || schedstat_ns(&task).ok_or_else(|| anyhow::anyhow!("no committer schedstat"));
    let (cpu0, commits0) = (cpu()?, repo.stats()?.commits);
    for c in 0..commits {
        let (tx, rx) = std::sync::mpsc::channel();
        for j in 0..k {
            let i = (10_000 + c * k + j) as u64;
            repo.audit(
                AuditEntry::new("command", "sign_x509", "ok")
                    .fact("req_id", (1u64 << 61 | i).to_string())
                    .fact("elapsed_ms", "3")
                    .fact("request_id", format!("bench-{i}"))
                    .fact("issuer", "sub")
                    .fact("serial", format!("2101a2373512{i:020x}"))
                    .fact("profile", "server")
                    .fact("csr_sha256", format!("{:064x}", i)),
            );
            let tx = tx.clone();
            repo.record_issuance_then(
                filler(i),
                Box::new(move |r| {
                    let _ = tx.send(r.is_ok());
                }),
            );
        }
        drop(tx);
        for ok in rx {
            anyhow::ensure!(ok, "a record was refused");
        }
    }
    let done = repo.stats()?.commits.saturating_sub(commits0).max(1);
    let ms = (cpu()?.saturating_sub(cpu0)) as f64 / 1e6 / done as f64;
    repo.close();
    Ok((ms, (k * commits) as f64 / done as f64))
}

/// The `## Issuance: end to end vs. the raw HSM signing rate` section:
/// signerd's rate over an unthrottled pty beside what the HSM alone, the
/// floor and `openssl ca` manage in the same rounds.
pub fn issuance_section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    let n = crate::scaled(2000, scale);
    let m = crate::scaled(200, scale);
    let rounds = 5;
    writeln!(
        report,
        "## Issuance: end to end vs. the raw HSM signing rate\n"
    )?;
    writeln!(
        report,
        "The issuing CA's key is on a SoftHSM2 token. `signerd` runs with {} workers, empty repository. \
         {rounds} rounds, each measuring in turn: the key's raw signing rate (host-side SHA-256, `C_Sign` on \
         the digest, a process of its own) with one session and with two (one per core, the fastest the token \
         goes here); end to end, {n} pipelined `sign_x509` requests from the client library over an unthrottled \
         pty, the CSRs taken in turn from 32 made with distinct keys, each one parsed, its CSR verified, checked \
         against the profile, linted, signed in the HSM, re-verified, and committed to the repository (fsync'd, \
         group commit) before the answer is sent; and `openssl ca` with a file key of the same type, one process \
         per certificate (as CA scripts around OpenSSL issue), one and two at a time (two CAs, one per core; \
         {m} certificates). The raw HSM rate leaves out the two verifications the design requires, so the \
         rate the floor allows is given too: two cores' worth of one HSM signature, one CSR verification and \
         one certificate verification, measured with both cores busy (as in the sections on the \
         1,000,000-record repository); end to end, the client and the link simulator share those two cores with signerd. Ratios are taken per round. Min / median / max. How signerd's CPU per \
         certificate compares with one core and with two is in \"Issuance on one core and on two\"; what \
         each thread costs in \"Where signerd's CPU goes\".\n",
        crate::workers()
    )?;
    writeln!(
        report,
        "| issuer key | raw HSM, 1 session (sig/s) | raw HSM, 2 sessions (sig/s) | the floor on two cores (cert/s) | end to end (cert/s) | end to end ÷ raw (2 sessions) | end to end ÷ the floor | records per commit | `openssl ca`, 1 at a time (cert/s) | `openssl ca`, 2 at a time (cert/s) | end to end ÷ `openssl ca` (2) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (key, csr_key, label) in KEYS {
        eprintln!("bench: issuance with a {key} issuer");
        let w = warm_signer(key, csr_key, "issuance")?;
        let (ceremony, r, csrs) = (&w.ceremony, &w.r, &w.csrs);
        // Two cores' worth of floors a second.
        let floor_rate = 2.0 / w.floor(2)?;
        let csr_pem = ceremony.dir().join("issuance-0.csr");
        anyhow::ensure!(csr_pem.exists(), "no CSR at {}", csr_pem.display());
        let mut rows = Vec::new();
        for k in 0..rounds {
            let raw1 = crate::raw_in_child(ceremony, key, 1, n / 2)?;
            let raw2 = crate::raw_in_child(ceremony, key, 2, n)?;
            let c0 = commits(r);
            let (e2e, _) = round(r, csrs, n, &format!("i{k}"))?;
            let batch = match (c0, commits(r)) {
                (Some((c0, r0)), Some((c1, r1))) if c1 > c0 => (r1 - r0) as f64 / (c1 - c0) as f64,
                _ => f64::NAN,
            };
            let ossl1 = crate::openssl_ca::rate(ceremony.dir(), key, &csr_pem, m / 2, 1)?;
            let ossl2 = crate::openssl_ca::rate(ceremony.dir(), key, &csr_pem, m, 2)?;
            eprintln!(
                "bench: round {k}: raw {raw1:.0} / {raw2:.0} sig/s, end to end {e2e:.0}/s, \
                 {batch:.1} per commit, openssl {ossl1:.0} / {ossl2:.0}/s"
            );
            rows.push([raw1, raw2, e2e, batch, ossl1, ossl2]);
        }
        let col = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
        let rate = |x: f64| format!("{x:.0}");
        let pct = |x: f64| format!("{:.0} %", 100.0 * x);
        writeln!(
            report,
            "| {label} | {} | {} | {floor_rate:.0} | {} | {} | {} | {} | {} | {} | {} |",
            spread(col(0), rate),
            spread(col(1), rate),
            spread(col(2), rate),
            spread(rows.iter().map(|r| r[2] / r[1]).collect(), pct),
            spread(rows.iter().map(|r| r[2] / floor_rate).collect(), pct),
            spread(col(3), |x| format!("{x:.1}")),
            spread(col(4), rate),
            spread(col(5), rate),
            spread(rows.iter().map(|r| r[2] / r[5]).collect(), |x| format!(
                "{x:.1}×"
            )),
        )?;
    }
    writeln!(report)?;
    Ok(())
}
