//! Replication between twins: lag at a steady issuance rate and catch-up
//! after a partition, through two real nats-servers on loopback.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_ca::ReplicationConfig;
use signer_hsm::{
    KeyGenerator, KeyKind, KeySpec, PinSource, Pkcs11Backend, PublicKey, SigningBackend,
    TokenConfig, TokenSelector,
};
use signer_replication::Replicator;
use signer_repository::{CertRecord, Repository};
use signer_testsupport::twins::NatsServer;
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

use crate::scale::{median, spread};

/// A certificate record with about 1 KB of DER (an RSA-2048 leaf's size).
pub(crate) fn record(i: usize) -> CertRecord {
    let mut der = vec![0x30, 0x82, 0x04, 0x00];
    der.extend((0..1024).map(|k| (k * 31 + i * 7) as u8));
    CertRecord {
        issuer: "sub".into(),
        serial: {
            let mut s = vec![0x21];
            s.extend((i as u64).to_be_bytes());
            s
        },
        der,
        profile: "server".into(),
        request_id: format!("bench-{i}"),
        request_digest: vec![0; 32],
        subject: format!("CN=host{i}.example.org"),
        not_before: 1_790_000_000,
        not_after: 1_800_000_000,
        issued_at_ms: 1_790_000_000_000,
        signer_id: "signer-a".into(),
    }
}

/// A nats-server with TLS and the certificate a signer pins for it.
fn nats_tls(dir: &Path, name: &str) -> anyhow::Result<(NatsServer, PathBuf)> {
    let made =
        signer_replication::tls::new_server_certificate(name, &[], std::time::SystemTime::now())
            .map_err(|e| anyhow::anyhow!(e))?;
    let cert = dir.join(format!("{name}.nats.crt"));
    let key = dir.join(format!("{name}.nats.key"));
    std::fs::write(&cert, made.cert_pem)?;
    std::fs::write(&key, made.key_pem)?;
    Ok((NatsServer::start_tls(dir, name, &cert, &key), cert))
}

fn config(
    (local, local_cert): &(NatsServer, PathBuf),
    (peer, peer_cert): &(NatsServer, PathBuf),
    peer_id: &str,
    key: &str,
    peer_public: PublicKey,
) -> ReplicationConfig {
    ReplicationConfig {
        local: local.url(),
        peer: peer.url(),
        peer_id: peer_id.into(),
        key: key.into(),
        peer_key: "unused".into(),
        peer_public: Some(peer_public),
        nats_seed: None,
        tls_cert: Some(local_cert.clone()),
        peer_tls_cert: Some(peer_cert.clone()),
        held_warning_secs: 60,
        stream_max_bytes: 1 << 30,
        state_interval_secs: 1,
        lag_warning_secs: 300,
        clock_drift_warning_secs: 30,
    }
}

/// A SoftHSM2 token in this process with a P-256 replication key per twin
/// (seals are signed in the HSM, as in production).
fn replication_keys(dir: &std::path::Path) -> anyhow::Result<(SoftHsm, Arc<dyn SigningBackend>)> {
    let hsm = SoftHsm::new("bench-replication");
    // The benchmark's other sections use the HSM in child processes only.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let token = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        token: TokenSelector::Label(hsm.label.clone()),
        pin: PinSource::File(hsm.pin_file()),
    };
    let admin = Pkcs11Backend::open(token.clone(), Vec::new(), 1)?;
    let keys: Vec<KeySpec> = ["repl-a", "repl-b"]
        .iter()
        .map(|label| -> anyhow::Result<KeySpec> {
            admin.generate(KeyKind::EcP256, label)?;
            Ok(KeySpec {
                name: label.to_string(),
                label: Some(label.to_string()),
                id: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let _ = dir;
    Ok((hsm, Arc::new(Pkcs11Backend::open(token, keys, 2)?)))
}

fn applied(repo: &Repository, origin: &str) -> u64 {
    repo.replica_state()
        .map(|s| s.applied.get(origin).map_or(0, |a| a.0))
        .unwrap_or(0)
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            anyhow::bail!("not done within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(start.elapsed())
}

/// Records `n` certificates without waiting for each (group commits of up
/// to 256); returns when all are durable.
fn record_many(repo: &Repository, from: usize, n: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    for i in from..from + n {
        let tx = tx.clone();
        repo.record_issuance_then(
            record(i),
            Box::new(move |r| {
                let _ = tx.send(r.is_ok());
            }),
        );
    }
    drop(tx);
    let ok = rx.iter().filter(|&ok| ok).count();
    assert_eq!(ok, n, "every record committed");
}

pub fn section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats_a = nats_tls(dir.path(), "nats-a")?;
    let nats_b = nats_tls(dir.path(), "nats-b")?;
    // Each the other's twin (only then are changes written to the outbox).
    let pair = |me: &str, peer: &str| {
        let mut e = signer_repository::Expected::signer(me);
        e.peer_id = Some(peer.into());
        e
    };
    let repo_a = Arc::new(Repository::create(
        &dir.path().join("a.redb"),
        &pair("signer-a", "signer-b"),
        &Default::default(),
    )?);
    let repo_b = Arc::new(Repository::create(
        &dir.path().join("b.redb"),
        &pair("signer-b", "signer-a"),
        &Default::default(),
    )?);
    let (_hsm, backend) = replication_keys(dir.path())?;
    let (pub_a, pub_b) = (backend.public_key("repl-a")?, backend.public_key("repl-b")?);
    let config_a = config(&nats_a, &nats_b, "signer-b", "repl-a", pub_b);
    let config_b = config(&nats_b, &nats_a, "signer-a", "repl-b", pub_a);
    let rep_a = Replicator::start(&config_a, Arc::clone(&repo_a), Arc::clone(&backend))?;
    let mut rep_b = Replicator::start(&config_b, Arc::clone(&repo_b), Arc::clone(&backend))?;

    // Baseline: one durable commit of one record, alone.
    let scratch = Repository::create(
        &dir.path().join("scratch.redb"),
        &signer_repository::Expected::signer("scratch"),
        &Default::default(),
    )?;
    let mut commits: Vec<f64> = (0..200)
        .map(|i| {
            let t = Instant::now();
            let _ = scratch.record_issuance(record(i));
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    commits.sort_by(f64::total_cmp);
    let commit_p50 = commits[commits.len() / 2];

    // Rounds of: the lag at 100 issuances/s, then a catch-up after a
    // partition (B away while A records).
    let rounds = 5;
    let n = super::scaled(1000, scale);
    let m = super::scaled(100_000, scale);
    record_many(&repo_a, 0, 1);
    wait_until(Duration::from_secs(60), || {
        applied(&repo_b, "signer-a") >= 1
    })?;
    let mut lags = Vec::new();
    let mut partitions = Vec::new();
    let mut digests_equal = true;
    for round in 0..rounds {
        eprintln!("bench: replication round {round}: lag over {n} issuances at 100/s");
        rep_b.reset_lag();
        let start = Instant::now();
        for i in 0..n {
            let due = start + Duration::from_millis(10 * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            repo_a.record_issuance(record(1 + round * n + i))?;
        }
        let own = repo_a.replica_state()?.own_seq;
        wait_until(Duration::from_secs(60), || {
            applied(&repo_b, "signer-a") >= own
        })?;
        let lag = rep_b.lag();
        eprintln!(
            "bench: replication round {round}: lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            lag.p50_ms, lag.p99_ms, lag.max_ms
        );
        lags.push(lag);

        eprintln!("bench: replication round {round}: catch-up of {m} events");
        drop(rep_b);
        let before = repo_a.replica_state()?.own_seq;
        let t = Instant::now();
        record_many(&repo_a, 10_000_000 + round * m, m);
        let recording = t.elapsed().as_secs_f64();
        let own = repo_a.replica_state()?.own_seq;
        wait_until(Duration::from_secs(600), || rep_a.published() >= own)?;
        let published = t.elapsed().as_secs_f64();
        rep_b = Replicator::start(&config_b, Arc::clone(&repo_b), Arc::clone(&backend))?;
        let catch_up = wait_until(Duration::from_secs(600), || {
            applied(&repo_b, "signer-a") >= own
        })?
        .as_secs_f64();
        // The next round's lag must not count these: wait until the
        // replicator has counted them too (it does so just after the commit).
        wait_until(Duration::from_secs(60), || rep_b.applied() >= own - before)?;
        digests_equal &= wait_until(Duration::from_secs(30), || {
            let (a, b) = (repo_a.replica_state(), repo_b.replica_state());
            matches!((a, b), (Ok(a), Ok(b)) if a.digests == b.digests)
        })
        .is_ok();
        partitions.push((recording, published, catch_up));
    }
    drop(rep_b);
    drop(rep_a);

    writeln!(report, "## Replication between twins\n")?;
    writeln!(
        report,
        "Two repositories with their replicators and two `nats-server` processes (Debian's 2.9) on loopback, TLS only (each certificate pinned), \
         in one process; events carry a 1 KiB certificate, and every publish round is sealed with a \
         P-256 key on a SoftHSM2 token (one signature per round) and verified before it is applied. Lag is from the commit on A (the event's \
         timestamp, taken in A's transaction) to the commit that applies it on B. The baseline is one \
         fsync'd repository commit of one record on the same disk, measured in the same run. Five \
         rounds, each a lag measurement and then a partition and its catch-up.\n"
    )?;
    writeln!(report, "| | min / median / max | target |")?;
    writeln!(report, "|---|---|---|")?;
    let ms = |x: f64| format!("{x:.2} ms");
    let secs = |x: f64| format!("{x:.2} s");
    writeln!(
        report,
        "| baseline: one durable commit (median of 200) | {commit_p50:.2} ms | |"
    )?;
    writeln!(
        report,
        "| lag at 100 issuances/s, median of each round's {} events | {} | |",
        lags.first().map_or(0, |l| l.samples),
        spread(lags.iter().map(|l| l.p50_ms).collect(), ms)
    )?;
    writeln!(
        report,
        "| lag at 100 issuances/s, p99 of each round | {} (median {:.1} commits) | ≤ 50 ms |",
        spread(lags.iter().map(|l| l.p99_ms).collect(), ms),
        median(&lags.iter().map(|l| l.p99_ms).collect::<Vec<_>>()) / commit_p50
    )?;
    writeln!(
        report,
        "| lag, largest of each round | {} | |",
        spread(lags.iter().map(|l| l.max_ms).collect(), ms)
    )?;
    writeln!(
        report,
        "| {m} events recorded on A while B is away | {} | |",
        spread(partitions.iter().map(|p| p.0).collect(), secs)
    )?;
    writeln!(
        report,
        "| … and published to A's stream (from the first) | {} | |",
        spread(partitions.iter().map(|p| p.1).collect(), secs)
    )?;
    writeln!(
        report,
        "| catch-up: B applies all {m} after it returns | {} ({} events/s) | ≤ 30 s |",
        spread(partitions.iter().map(|p| p.2).collect(), secs),
        spread(
            partitions.iter().map(|p| m as f64 / p.2).collect(),
            |x| format!("{x:.0}")
        )
    )?;
    writeln!(
        report,
        "| catch-up ÷ the time A took to record them | {} | |",
        spread(partitions.iter().map(|p| p.2 / p.0).collect(), |x| format!(
            "{x:.2}×"
        ))
    )?;
    writeln!(
        report,
        "| digests equal after every round | {} | yes |\n",
        if digests_equal { "yes" } else { "NO" }
    )?;
    Ok(())
}

/// Pipelined `sign_x509` over `client`: certificates per second.
fn pipelined_rate(
    client: &signer_client::Client,
    csr: &[u8],
    n: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    Ok(n as f64 / super::pipelined_sign(client, csr, n, tag)?.as_secs_f64())
}

/// Pins every thread of process `pid` to CPU `cpu` (later threads
/// inherit it); false when the machine has fewer than two CPUs or taskset
/// is missing.
pub(crate) fn pin(pid: u32, cpu: usize) -> bool {
    if online_cpus() < 2 {
        return false;
    }
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The machine's CPUs. Not `available_parallelism`, which counts the CPUs
/// this process may run on: once the benchmark has pinned itself to one,
/// that is 1, and every later pin or unpin would quietly do nothing or pin
/// to the first CPU.
pub(crate) fn online_cpus() -> usize {
    // "0-1", "0,2-3", …
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .map(|list| {
            list.trim()
                .split(',')
                .map(|range| match range.split_once('-') {
                    Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                        (Ok(a), Ok(b)) if b >= a => b - a + 1,
                        _ => 0,
                    },
                    None => usize::from(range.parse::<usize>().is_ok()),
                })
                .sum::<usize>()
        })
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Pins one thread (by its id) to CPU `cpu`.
fn pin_thread(tid: u32, cpu: usize) {
    let _ = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Lets every thread of `pid` run on every CPU again.
pub(crate) fn unpin(pid: u32) {
    let all = format!("0-{}", online_cpus() - 1);
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &all, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Rounds of each kind with the twins pinned as two hosts (and, fewer,
/// unpinned).
/// Short rounds, many of them: the two rounds of a pair run close together,
/// so the machine's drift cancels in their ratio.
const ROUNDS: usize = 31;
const ROUNDS_ONE_HOST: usize = 5;

/// Issuance throughput of a signer with its twin replicating against the
/// same signer alone, alternating in the same run.
pub fn cost_section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
    use signer_testsupport::twins::Twins;
    use signer_testsupport::{Bench, LinkSpec};
    writeln!(
        report,
        "## Replication cost: issuance with and without a twin\n"
    )?;
    writeln!(
        report,
        "Pipelined `sign_x509` over an unthrottled pty, the same settings for both: a signer alone \
         (no `ca.replication`), and signer A of a twin pair whose events are published, sealed \
         (one HSM signature per publish round) and applied by B through two `nats-server`s with \
         nkey authentication and TLS, as shipped. Thirty-one rounds of 750 certificates each, alternating; median and range; the ratio is the median of each round with a twin over the round alone just before it. \
         The two hosts of a pair are played by this machine's two cores: the signer alone, signer A, \
         A's nats-server and the client are pinned to the first core, signer B and B's nats-server \
         to the second (`sched_setaffinity` through `taskset`), so B's verifying and applying does \
         not take A's CPU, as on two hosts; so are the relays that stand for the crossover cable \
         (threads of the benchmark, copying between sockets: no host's work on a real pair). \
         A publish round is one message (its events and their seal, LZ4-compressed: the twin says it \
         reads that), sealed after waiting 20 ms for the events committed right behind its first (and \
         again, up to 200 ms, while at least 8 more arrive in each 20 ms; at most 1024 events or 512 KiB). \
         The outbox names each certificate and audit entry written in the same \
         transaction instead of holding a second copy. The last column is the same with nothing pinned \
         (both twins share both cores, five rounds: an upper bound of the cost). On this shared \
         machine single rounds vary by ±15 %; the CPU table below (time the kernel charged to each \
         process) varies less.\n"
    )?;
    writeln!(
        report,
        "| issuer key | alone (cert/s) | with a twin (cert/s) | with / alone, each pair of rounds | target | with / alone, one host |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    let pinned = pin(std::process::id(), 0);
    let n = super::scaled(750, scale);
    let mut cpu_rows = Vec::new();
    for (key, csr_key) in [
        ("rsa2048", &["rsa:2048"][..]),
        ("p256", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
    ] {
        eprintln!("bench: replication cost with a {key} issuer");
        let alone_c = Ceremony::new(key, SERVER_PROFILE);
        let alone = Bench::start_with_env(LinkSpec::unthrottled(), &alone_c.ca_yaml, alone_c.env());
        let twins = Twins::new(key, SERVER_PROFILE);
        // B's host: the second core. The cable's relays (in this process)
        // are no host's work: they go with B's, off A's core.
        let b_pids = [twins.b.daemon.pid(), twins.nats_b.pid()];
        if pinned {
            for pid in b_pids {
                pin(pid, 1);
            }
            for tid in twins
                .cable_ab
                .threads()
                .into_iter()
                .chain(twins.cable_ba.threads())
            {
                pin_thread(tid, 1);
            }
        }
        let csr = make_csr(alone_c.dir(), "bench", csr_key);
        let (c_alone, c_twin) = (alone.client(), twins.a.client());
        pipelined_rate(&c_alone, &csr, 20, "warm")?;
        pipelined_rate(&c_twin, &csr, 20, "warm")?;
        let (mut off, mut on) = (Vec::new(), Vec::new());
        // Nanoseconds from schedstat: finer than the clock ticks of /proc/PID/stat.
        let cpu = |pid: u32| super::scale::cpu_seconds(pid).unwrap_or(0.0);
        let (mut cpu_off, mut cpu_a, mut cpu_nats_a, mut cpu_b) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut core_off, mut core_on) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            if pinned {
                // Again before every round: a thread B starts while it is
                // being pinned (or from one not yet pinned) would keep the
                // first core and take A's CPU.
                for pid in b_pids {
                    pin(pid, 1);
                }
            }
            let before = cpu(alone.daemon.pid());
            let core = first_core_busy();
            off.push(pipelined_rate(&c_alone, &csr, n, &format!("off-{round}"))?);
            core_off.push((first_core_busy() - core) * 1000.0 / n as f64);
            cpu_off.push((cpu(alone.daemon.pid()) - before) * 1000.0 / n as f64);
            let before = [
                cpu(twins.a.daemon.pid()),
                cpu(twins.nats_a.pid()),
                cpu(twins.b.daemon.pid()) + cpu(twins.nats_b.pid()),
            ];
            let core = first_core_busy();
            on.push(pipelined_rate(&c_twin, &csr, n, &format!("on-{round}"))?);
            core_on.push((first_core_busy() - core) * 1000.0 / n as f64);
            cpu_a.push((cpu(twins.a.daemon.pid()) - before[0]) * 1000.0 / n as f64);
            cpu_nats_a.push((cpu(twins.nats_a.pid()) - before[1]) * 1000.0 / n as f64);
            cpu_b.push(
                (cpu(twins.b.daemon.pid()) + cpu(twins.nats_b.pid()) - before[2]) * 1000.0
                    / n as f64,
            );
        }
        // A's host (signer A and its nats-server) against the signer alone,
        // round by round.
        let host: Vec<f64> = cpu_a
            .iter()
            .zip(&cpu_nats_a)
            .zip(&cpu_off)
            .map(|((a, n), off)| (a + n) / off)
            .collect();
        let host_range = {
            let (lo, hi) = host
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            format!("{lo:.2}–{hi:.2}")
        };
        cpu_rows.push(format!(
            "| {key} | {:.3} | {:.3} | {:.3} | {:.2} ({host_range}) | {:.3} | {:.3} / {:.3} |",
            median(&cpu_off),
            median(&cpu_a),
            median(&cpu_nats_a),
            median(&host),
            median(&cpu_b),
            median(&core_off),
            median(&core_on),
        ));
        let range = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            format!("{lo:.0}–{hi:.0}")
        };
        let (m_off, m_on) = (median(&off), median(&on));
        // Each round with a twin against the round alone just before it:
        // the machine's load changes less within a pair than across the run.
        let paired: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a / b).collect();
        let range2 = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
            format!("{lo:.2}–{hi:.2}")
        };
        // The same without pinning: both twins on both cores.
        let (mut off1, mut on1) = (Vec::new(), Vec::new());
        if pinned {
            let everyone = [
                std::process::id(),
                alone.daemon.pid(),
                twins.a.daemon.pid(),
                twins.nats_a.pid(),
            ];
            for pid in everyone.into_iter().chain(b_pids) {
                unpin(pid);
            }
            for round in 0..ROUNDS_ONE_HOST {
                off1.push(pipelined_rate(&c_alone, &csr, n, &format!("off1-{round}"))?);
                on1.push(pipelined_rate(&c_twin, &csr, n, &format!("on1-{round}"))?);
            }
            pin(std::process::id(), 0);
        }
        let one_host = if pinned {
            format!("{:.2}", median(&on1) / median(&off1))
        } else {
            "—".into()
        };
        writeln!(
            report,
            "| {key} | {m_off:.0} ({}) | {m_on:.0} ({}) | {:.2} ({}) | ≥ 0.95 | {one_host} |",
            range(&off),
            range(&on),
            median(&paired),
            range2(&paired)
        )?;
        twins
            .wait_in_sync(&c_twin, &twins.b.client(), None, Duration::from_secs(120))
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    writeln!(
        report,
        "\nCPU per certificate (ms, time on a CPU from schedstat, median of the pinned rounds above). The \
         last column is everything the first core (A's host, with the client and the link simulator) did per certificate, kernel work included \
         (loopback networking, writeback; /proc/stat, 10 ms ticks), in the rounds alone and with a twin:\n\n\
         | issuer key | signer alone | signer A | A's nats-server | A's host ÷ alone, each pair of rounds | B and its nats-server | first core, all its work: alone / with a twin |\n|---|---|---|---|---|---|---|"
    )?;
    for row in cpu_rows {
        writeln!(report, "{row}")?;
    }
    writeln!(report)?;
    Ok(())
}

/// Seconds the first CPU has been busy (user, system, interrupts: kernel
/// work included) since boot, from /proc/stat (10 ms ticks): what
/// the per-process figures leave out, such as loopback networking and
/// writeback on that core.
fn first_core_busy() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu0 ")) else {
        return 0.0;
    };
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user, nice, system, idle, iowait, irq, softirq, steal, …: the
    // hypervisor's steal is no work of this machine's.
    let at = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    (at(0) + at(1) + at(2) + at(5) + at(6)) / 100.0
}
