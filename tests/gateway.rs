//! The web host's gateway end to end, as a web application uses it: rows
//! go into a real database (SQLite, PostgreSQL), real signerd twins answer
//! over simulated serial links at 115,200 baud, and the gateway, a twin and
//! the links fail underneath. Afterwards every row is final exactly once,
//! with the certificate the signers recorded, and no request id has two
//! certificates.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use der::Decode;
use signer_gateway::queue::{postgres::PostgresQueue, sqlite::SqliteQueue, Kind, Queue, State};
use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
use signer_testsupport::gateway::{Gateway, Postgres};
use signer_testsupport::gpg::Gpg;
use signer_testsupport::twins::{free_port, Twins};
use signer_testsupport::{bin, output, Bench, LinkSpec};

const SIGN: usize = 600;
const REVOKE: usize = 300;
const CERTIFY: usize = 100;

/// Twins at 115,200 baud with an OpenPGP CA key, and what the requests need.
struct Pair {
    t: Twins,
    d: PathBuf,
    /// Alice's public key, ASCII armor.
    key: String,
    csrs: Vec<String>,
    /// Certification expiry, fixed for every row.
    expires: i64,
}

fn pair() -> Pair {
    pair_with(|_| {})
}

/// [`pair`] with the ceremony's configuration changed by `edit` first.
fn pair_with(edit: impl FnOnce(&mut Ceremony)) -> Pair {
    let mut ceremony = Ceremony::new_as("signer-a", "p256", SERVER_PROFILE);
    ceremony.add_openpgp();
    edit(&mut ceremony);
    let t = Twins::with_ceremony_on(ceremony, LinkSpec::baud(115_200));
    let d = t.ceremony.dir().to_path_buf();
    drop(t.a.client());
    drop(t.b.client());
    let gpg = Gpg::new();
    let alice = gpg.alice();
    let key = String::from_utf8(gpg.export_with(&["--armor", "--export", &alice])).unwrap();
    let csrs = csrs(&d);
    Pair {
        t,
        d,
        key,
        csrs,
        expires: signer_gateway::now_s() + 200 * 86_400,
    }
}

/// Waits for sign row `id` to be done, then queues the revocation of its
/// certificate as row `rid`; returns the serial.
fn revoke_when_issued(
    queue: &dyn Queue,
    id: &str,
    rid: &str,
    reason: u8,
    log: impl Fn() -> String,
) -> String {
    wait_until(
        "the certificate to revoke",
        Duration::from_secs(300),
        || queue.row(id).unwrap().is_some_and(|r| r.0 == State::Done),
        log,
    );
    let serial = queue.row(id).unwrap().unwrap().1.serial.unwrap();
    let body = serde_json::json!({"issuer": "sub", "serial": serial, "reason": reason});
    assert!(queue
        .enqueue(rid, Kind::RevokeX509, &body.to_string())
        .unwrap());
    serial
}

/// Waits for every row to be final, then checks each is done and that the
/// sign rows hold `SIGN` distinct certificates.
fn every_row_done(queue: &dyn Queue, ids: &[&[String]], log: impl Fn() -> String) {
    let all: Vec<String> = ids.iter().flat_map(|i| i.iter().cloned()).collect();
    wait_until(
        "every row final",
        Duration::from_secs(600),
        || finished(queue) >= all.len() as u64,
        log,
    );
    let serials = all_done(queue, &all);
    let distinct: BTreeSet<&String> = serials.values().collect();
    assert_eq!(distinct.len(), SIGN, "one certificate per sign row");
}

/// Ten CSRs, PEM, used in turn (each row still gets its own certificate).
fn csrs(dir: &Path) -> Vec<String> {
    (0..10)
        .map(|i| {
            let der = make_csr(
                dir,
                &format!("k{i}"),
                &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            );
            String::from_utf8(der).unwrap_or_else(|_| panic!("make_csr gives PEM"))
        })
        .collect()
}

fn sign_line(id: &str, csr: &str) -> String {
    serde_json::json!({
        "request_id": id, "kind": "sign_x509",
        "body": {"profile": "server", "csr": csr,
                 "subject": [["CN", format!("{id}.example.org")]],
                 "sans": [{"type": "dns", "value": format!("{id}.example.org")}],
                 "validity_days": 30}
    })
    .to_string()
}

fn certify_line(id: &str, key: &str, expires_at: i64) -> String {
    serde_json::json!({
        "request_id": id, "kind": "certify_openpgp",
        "body": {"key": key, "user_ids": ["Alice <alice@example.org>"], "expires_at": expires_at}
    })
    .to_string()
}

/// Queues lines through the documented command; returns its output.
fn enqueue(gateway: &Gateway, dir: &Path, name: &str, lines: &[String]) -> String {
    let file = dir.join(name);
    std::fs::write(&file, lines.join("\n")).unwrap();
    let (code, out, err) = gateway.cli(&["enqueue", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "enqueue: {out}{err}");
    out
}

fn counts(queue: &dyn Queue) -> BTreeMap<State, u64> {
    let mut by_state = BTreeMap::new();
    for (state, _, n) in queue.stats().unwrap().rows {
        *by_state.entry(state).or_insert(0) += n;
    }
    by_state
}

fn finished(queue: &dyn Queue) -> u64 {
    let c = counts(queue);
    [State::Done, State::Refused, State::Parked]
        .iter()
        .map(|s| c.get(s).copied().unwrap_or(0))
        .sum()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool, log: impl Fn() -> String) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < until,
            "{what}: not within {limit:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every row is done; returns serial (hex) by request id of the sign rows,
/// each certificate checked to parse and to carry that serial.
fn all_done(queue: &dyn Queue, ids: &[String]) -> BTreeMap<String, String> {
    let mut serials = BTreeMap::new();
    for id in ids {
        let (state, answer, _) = queue.row(id).unwrap().unwrap();
        assert_eq!(state, State::Done, "{id}: {answer:?}");
        assert_eq!(answer.status_name, "ok");
        if id.starts_with('s') {
            let pem = answer.certificate.clone().unwrap();
            let der = der::pem::decode_vec(pem.as_bytes()).unwrap().1;
            let cert = x509_cert::Certificate::from_der(&der).unwrap();
            let serial = hex::encode(cert.tbs_certificate().serial_number().as_bytes());
            assert_eq!(
                serial.trim_start_matches("00"),
                answer.serial.clone().unwrap().trim_start_matches("00"),
                "{id}"
            );
            serials.insert(id.clone(), answer.serial.unwrap());
        }
        if id.starts_with('p') {
            assert!(answer
                .certificate
                .clone()
                .unwrap()
                .contains("BEGIN PGP PUBLIC KEY BLOCK"));
        }
    }
    serials
}

fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new(); // not listening yet
    };
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn gateway_yaml(name: &str, devices: &[&Path], queue: &str, extra: &str) -> String {
    let signers: String = devices
        .iter()
        .map(|d| format!("  - {{device: {}, baud: 115200}}\n", d.display()))
        .collect();
    format!(
        "name: {name}\nsigners:\n{signers}failover_after_s: 4\nqueue:\n{queue}  workers: 24\n  poll_ms: 50\n  lease_s: 20\n  max_attempts: 100\n  retry_min_ms: 200\n  retry_max_ms: 2000\nhealth:\n  interval_s: 2\n{extra}"
    )
}

/// The intermediate's CRL shards in the gateway test: published by the
/// gateway under their URLs' paths.
const SHARD_URL: &str = "http://crl.example.org/sub/{shard}.crl";

#[test]
fn sqlite_queue_through_twins_with_the_gateway_killed_and_a_twin_lost() {
    // The intermediate has partitioned CRLs: the gateway publishes them
    // beside its full CRL, from either twin.
    let Pair {
        mut t,
        d,
        key,
        csrs,
        expires,
    } = pair_with(|c| c.with_crl_shards(2, SHARD_URL));

    let crl_dir = d.join("crl");
    std::fs::create_dir(&crl_dir).unwrap();
    // A damaged file where the CRL goes is not taken for the published CRL:
    // it is replaced by a checked one.
    std::fs::write(crl_dir.join("sub-ca.crl"), b"not a CRL").unwrap();
    // So is a damaged shard file (checked below).
    std::fs::create_dir(crl_dir.join("sub")).unwrap();
    std::fs::write(crl_dir.join("sub/0.crl"), b"not a CRL either").unwrap();
    let metrics_port = free_port();
    let socket = d.join("gateway.sock");
    let yaml = gateway_yaml(
        "gw-1",
        &[&t.a.client_device(), &t.b.client_device()],
        &format!("  sqlite: {}\n", d.join("queue.sqlite").display()),
        &format!(
            "socket:\n  path: {}\ncrl:\n  directory: {}\n  pem: true\n  files: {{sub: sub-ca.crl}}\n  check_s: 2\nmetrics:\n  listen: 127.0.0.1:{metrics_port}\n",
            socket.display(),
            crl_dir.display()
        ),
    );
    let mut gw = Gateway::start(&d, "gw-1", &yaml);
    let (code, out, err) = gw.cli(&["check-config"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("queue       sqlite"), "{out}");

    let sign_ids: Vec<String> = (0..SIGN).map(|i| format!("s-{i}")).collect();
    let certify_ids: Vec<String> = (0..CERTIFY).map(|i| format!("p-{i}")).collect();
    let lines: Vec<String> = sign_ids
        .iter()
        .enumerate()
        .map(|(i, id)| sign_line(id, &csrs[i % csrs.len()]))
        .chain(certify_ids.iter().map(|id| certify_line(id, &key, expires)))
        .collect();
    let out = enqueue(&gw, &d, "batch-1.jsonl", &lines);
    assert!(
        out.contains(&format!("{} requests queued", SIGN + CERTIFY)),
        "{out}"
    );
    // Queued again (a web application retrying its insert): nothing new.
    let out = enqueue(&gw, &d, "batch-1.jsonl", &lines);
    assert!(out.contains("0 requests queued"), "{out}");

    let queue = SqliteQueue::open(&d.join("queue.sqlite"), Duration::from_millis(50)).unwrap();

    // The local socket: a monitoring probe shares the links with the queue.
    let link = format!("unix:{}", socket.display());
    wait_until(
        "the local socket",
        Duration::from_secs(60),
        || socket.exists(),
        || gw.log(),
    );
    let (code, out, err) =
        output(Command::new(bin("signer-client")).args(["--link", &link, "--json", "health"]));
    assert!(
        matches!(code, Some(0) | Some(1)),
        "health through the gateway: {code:?} {out}{err}"
    );
    let health: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        health["health"]["signer_id"]
            .as_str()
            .unwrap()
            .starts_with("signer-"),
        "{out}"
    );
    assert!(
        health["level"].is_u64(),
        "numeric level next to the text: {out}"
    );

    // kill -9 of the gateway, twice, while rows are in flight.
    for kill_at in [80, 200] {
        wait_until(
            "rows finishing",
            Duration::from_secs(300),
            || finished(&queue) >= kill_at,
            || gw.log(),
        );
        gw.kill();
        gw.restart();
    }
    // Revocations of issued certificates join the queue while it runs.
    let mut revoke_ids = Vec::new();
    let mut revoked_serials = BTreeSet::new();
    for (i, id) in sign_ids.iter().enumerate().take(REVOKE) {
        let rid = format!("r-{i}");
        revoked_serials.insert(revoke_when_issued(&queue, id, &rid, 4, || gw.log()));
        revoke_ids.push(rid);
        if i == 60 {
            // One twin is lost mid-run: new rows go to the other; rows that
            // may have reached it wait for it (never sent to its twin).
            t.a.daemon.kill();
            let before = finished(&queue);
            wait_until(
                "rows finishing on the twin",
                Duration::from_secs(300),
                || finished(&queue) >= before + 40,
                || gw.log(),
            );
            t.a.daemon.restart();
        }
        if i == 150 {
            gw.kill();
            gw.restart();
        }
    }
    every_row_done(&queue, &[&sign_ids, &certify_ids, &revoke_ids], || gw.log());

    // The metrics say the same.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "signer_gateway_queue_rows{{state=\"done\",kind=\"sign_x509\"}} {SIGN}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("signer_gateway_failovers_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signer_gateway_signer_up{device="),
        "{metrics}"
    );
    assert!(http_get(metrics_port, "/other").starts_with("HTTP/1.1 404"));

    // The CRL the gateway published lists exactly the revoked serials and
    // verifies with the intermediate.
    let crl_file = crl_dir.join("sub-ca.crl");
    wait_until(
        "the published CRL to list every revocation",
        Duration::from_secs(120),
        || {
            std::fs::read(&crl_file)
                .ok()
                .and_then(|der| signer_x509::crl::parse(&der).ok())
                .is_some_and(|(_, entries)| entries.len() == REVOKE)
        },
        || gw.log(),
    );
    let (ok, text) = signer_testsupport::ca::openssl(
        &d,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            crl_file.to_str().unwrap(),
            "-CAfile",
            "sub.pem",
            "-noout",
            "-text",
        ],
    );
    assert!(ok && text.contains("verify OK"), "{text}");
    for serial in &revoked_serials {
        assert!(
            text.to_uppercase()
                .contains(&serial.trim_start_matches("00").to_uppercase()),
            "{serial} on the CRL"
        );
    }
    assert!(crl_dir.join("sub-ca.pem").exists());
    assert!(crl_dir.join("root.crl").exists());
    // Each shard's CRL, at its URL's path, lists exactly the revoked
    // certificates of that shard (their serials carry it) and names its URL.
    let mut on_shards = 0;
    for shard in 0..2u8 {
        let file = crl_dir.join(format!("sub/{shard}.crl"));
        let url = SHARD_URL.replace("{shard}", &shard.to_string());
        wait_until(
            "a shard's CRL to list its revocations",
            Duration::from_secs(60),
            || {
                std::fs::read(&file)
                    .ok()
                    .and_then(|der| signer_x509::crl::parse(&der).ok())
                    .is_some_and(|(h, entries)| {
                        h.shard_url.as_deref() == Some(url.as_str())
                            && entries.len()
                                == revoked_serials
                                    .iter()
                                    .filter(|s| {
                                        signer_x509::shard_of(&hex::decode(s).unwrap())
                                            == Some(shard)
                                    })
                                    .count()
                    })
            },
            || gw.log(),
        );
        let (_, entries) = signer_x509::crl::parse(&std::fs::read(&file).unwrap()).unwrap();
        assert!(entries
            .iter()
            .all(|e| signer_x509::shard_of(&e.serial) == Some(shard)));
        on_shards += entries.len();
        assert!(crl_dir.join(format!("sub/{shard}.pem")).exists());
    }
    assert_eq!(on_shards, REVOKE);

    // Stopping is clean; the twin comes back and both agree: every sign row
    // is one certificate on both signers, no request id has two.
    assert_eq!(gw.stop(), Some(0), "{}", gw.log());
    let (a, b) = (t.a.client(), t.b.client());
    t.wait_in_sync(&a, &b, SIGN as u64, Duration::from_secs(180))
        .unwrap();
}

#[test]
fn postgres_queue_shared_by_two_gateways_each_killed_mid_run() {
    let pg = Postgres::start();
    let Pair {
        t,
        d,
        key,
        csrs,
        expires,
    } = pair();

    // The web application's side: the documented schema, then rows by SQL.
    let queue = PostgresQueue::connect(&pg.params(), Duration::from_millis(50)).unwrap();
    let (code, schema, err) =
        output(Command::new(bin("signer-gateway")).args(["schema", "postgres"]));
    assert_eq!(code, Some(0), "{err}");
    pg.psql(&schema);
    let queue_yaml = format!("  postgres: \"{}\"\n", pg.params());
    // Two gateways on one queue, each with the link to one twin (two web hosts).
    let mut gw1 = Gateway::start(
        &d,
        "gw-1",
        &gateway_yaml("gw-1", &[&t.a.client_device()], &queue_yaml, ""),
    );
    let mut gw2 = Gateway::start(
        &d,
        "gw-2",
        &gateway_yaml("gw-2", &[&t.b.client_device()], &queue_yaml, ""),
    );

    let sign_ids: Vec<String> = (0..SIGN).map(|i| format!("s-{i}")).collect();
    let certify_ids: Vec<String> = (0..CERTIFY).map(|i| format!("p-{i}")).collect();
    for (i, id) in sign_ids.iter().enumerate() {
        let line: serde_json::Value =
            serde_json::from_str(&sign_line(id, &csrs[i % csrs.len()])).unwrap();
        let body = line["body"].to_string().replace('\'', "''");
        pg.psql(&format!(
            "INSERT INTO signer_requests (request_id, kind, body) VALUES ('{id}', 'sign_x509', '{body}')"
        ));
        if i == 100 {
            gw1.kill();
            gw1.restart();
        }
    }
    enqueue(
        &gw2,
        &d,
        "certify.jsonl",
        &certify_ids
            .iter()
            .map(|id| certify_line(id, &key, expires))
            .collect::<Vec<_>>(),
    );
    wait_until(
        "rows finishing",
        Duration::from_secs(300),
        || finished(&queue) >= 300,
        || gw1.log(),
    );
    gw2.kill();
    gw2.restart();
    let mut revoke_ids = Vec::new();
    for (i, id) in sign_ids.iter().enumerate().take(REVOKE) {
        let rid = format!("r-{i}");
        // Either gateway may take it: a twin that has not yet received the
        // certificate answers unknown_serial, and the row is tried again.
        revoke_when_issued(&queue, id, &rid, 1, || gw1.log());
        revoke_ids.push(rid);
        if i == 120 {
            gw1.kill();
            gw1.restart();
        }
    }
    every_row_done(&queue, &[&sign_ids, &certify_ids, &revoke_ids], || {
        format!("{}\n{}", gw1.log(), gw2.log())
    });
    // Both gateways did part of the work.
    let by_signer =
        pg.psql("SELECT signer, count(*) FROM signer_requests GROUP BY signer ORDER BY signer");
    assert!(
        by_signer.contains("signer-a|") && by_signer.contains("signer-b|"),
        "{by_signer}"
    );
    assert_eq!(gw1.stop(), Some(0), "{}", gw1.log());
    assert_eq!(gw2.stop(), Some(0), "{}", gw2.log());
    let (a, b) = (t.a.client(), t.b.client());
    t.wait_in_sync(&a, &b, SIGN as u64, Duration::from_secs(180))
        .unwrap();
}

/// The gateway keeps the web host's copy of a signer's audit log: synced on
/// a schedule, acknowledged (the signer's `audit:witness` is ok), verifiable
/// with `signer-client audit verify`; when the signer comes back with an
/// older repository, the copy catches it and the gateway stops
/// acknowledging.
#[test]
fn audit_log_copied_by_the_gateway_catches_a_rolled_back_signer() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let yaml = c.with_audit_log();
    let d = c.dir().to_path_buf();
    let signer_config = d.join("audited.yaml");
    let signerd = |args: &[&str]| {
        let mut cmd = Command::new(bin("signerd"));
        cmd.args(args).arg("--config").arg(&signer_config);
        for (k, v) in c.env() {
            cmd.env(k, v);
        }
        output(&mut cmd)
    };
    let (code, vkey, err) = signerd(&["audit", "vkey"]);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(d.join("signer-a.vkey"), &vkey).unwrap();
    let csrs = csrs(&d);
    let copy = d.join("audit-copy");
    let metrics_port = free_port();
    let gateway_on = |device: &Path| {
        gateway_yaml(
            "gw-audit",
            &[device],
            &format!("  sqlite: {}\n", d.join("queue.sqlite").display()),
            &format!("metrics:\n  listen: 127.0.0.1:{metrics_port}\naudit_sync_s: 1\n",),
        )
        .replace(
            "baud: 115200}",
            &format!(
                "baud: 115200, audit: {{copy: {}, vkey: {}}}}}",
                copy.display(),
                d.join("signer-a.vkey").display()
            ),
        )
    };
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let mut gw = Gateway::start(&d, "gw-audit", &gateway_on(&bench.client_device()));
    let (code, out, err) = gw.cli(&["check-config"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("audit log copied to"), "{out}");
    let queue = SqliteQueue::open(&d.join("queue.sqlite"), Duration::from_millis(50)).unwrap();
    let metric = |name: &str| -> Option<u64> {
        http_get(metrics_port, "/metrics").lines().find_map(|l| {
            l.strip_prefix(name)
                .filter(|rest| rest.starts_with('{'))
                .and_then(|rest| rest.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
        })
    };
    let mut queued = 0;
    let mut run_rows = |gw: &Gateway, n: usize| {
        let lines: Vec<String> = (queued..queued + n)
            .map(|i| sign_line(&format!("a-{i}"), &csrs[i % csrs.len()]))
            .collect();
        queued += n;
        enqueue(gw, &d, &format!("rows-{queued}.jsonl"), &lines);
        wait_until(
            "rows done",
            Duration::from_secs(120),
            || finished(&queue) >= queued as u64,
            || gw.log(),
        );
        queued
    };
    run_rows(&gw, 10);
    // Synced and acknowledged: the signer's witness check is ok.
    let synced = |at_least: u64| {
        wait_until(
            "the audit copy to catch up",
            Duration::from_secs(60),
            || {
                metric("signer_gateway_audit_entries").is_some_and(|n| n >= at_least)
                    && metric("signer_gateway_audit_sync_failing") == Some(0)
            },
            || gw.log(),
        )
    };
    synced(10);
    wait_until(
        "audit:witness ok",
        Duration::from_secs(60),
        || http_get(metrics_port, "/metrics").contains("check=\"audit:witness\"} 0"),
        || gw.log(),
    );
    let backup = d.join("older.backup");
    let (code, out, err) = signerd(&["repo", "backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let before = metric("signer_gateway_audit_entries").unwrap();
    run_rows(&gw, 10);
    synced(before + 10);
    assert_eq!(metric("signer_gateway_audit_contradiction"), Some(0));
    assert_eq!(gw.stop(), Some(0), "{}", gw.log());
    let (code, out, err) = output(Command::new(bin("signer-client")).args([
        "--link",
        "/dev/null",
        "audit",
        "verify",
        "--dir",
        copy.to_str().unwrap(),
    ]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("checkpoints verified"), "{out}");

    // The signer comes back with the older repository: the gateway's next
    // sync finds the log shorter than the checkpoint held and acknowledges
    // nothing more.
    drop(bench);
    std::fs::remove_file(d.join("repository.redb")).unwrap();
    let (code, out, err) = signerd(&["repo", "restore", "--in", backup.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}{err}");
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, c.env());
    let gw = Gateway::start(&d, "gw-audit", &gateway_on(&bench.client_device()));
    wait_until(
        "the contradiction seen",
        Duration::from_secs(60),
        || metric("signer_gateway_audit_contradiction") == Some(1),
        || gw.log(),
    );
    assert!(gw.log().contains("contradicts the copy"), "{}", gw.log());
    assert!(std::fs::read_dir(copy.join("evidence")).unwrap().count() >= 1);

    // A verifier key file of another log is refused before anything is sent.
    std::fs::write(
        d.join("signer-a.vkey"),
        "other.example/audit+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let (code, out, err) = gw.cli(&["check-config"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("another log"), "{err}");
}

/// `signer-client ARGS` with `--json`: (exit code, the JSON line on stdout).
fn client_json(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let (code, out, err) = output(Command::new(bin("signer-client")).arg("--json").args(args));
    let json = serde_json::from_str(out.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, json)
}

#[test]
fn a_request_in_doubt_goes_only_to_the_signer_that_may_hold_it() {
    use signer_client::{Calls, ClientError, Failover};
    use signer_protocol::{calls, msg, Command as Code};
    use signer_testsupport::ca::sign_request;
    use signer_testsupport::twins::checks;

    let t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let (dev_a, dev_b) = (t.a.client_device(), t.b.client_device());
    let p256 = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let request =
        |id: &str| sign_request(id, make_csr(&d, id, &p256), &format!("{id}.example.org"));

    // The library: both links open, then A stops answering.
    let both = Failover::new(
        vec![t.a.link_options(), t.b.link_options()],
        Duration::from_secs(3),
    );
    let warm: msg::SignX509Reply = both
        .request::<calls::SignX509>(&request("lib-warm"))
        .unwrap();
    assert_eq!(warm.serial[0], 0x21, "A answers first");
    t.a.daemon.signal("STOP");
    let doubt = request("lib-doubt");
    let in_doubt_on_a = |r: &Result<msg::SignX509Reply, ClientError>| matches!(r, Err(ClientError::InDoubt { device, .. }) if *device == dev_a.display().to_string());
    let first = both.request::<calls::SignX509>(&doubt);
    assert!(in_doubt_on_a(&first), "{first:?}");
    assert_eq!(both.in_doubt(Code::SIGN_X509, "lib-doubt"), Some(0));
    // A new request goes to the twin; the one in doubt does not.
    let fresh: msg::SignX509Reply = both
        .request::<calls::SignX509>(&request("lib-fresh"))
        .unwrap();
    assert_eq!(fresh.serial[0], 0x22, "B answers new requests");
    let again = both.request::<calls::SignX509>(&doubt);
    assert!(in_doubt_on_a(&again), "sent to A only: {again:?}");
    // A revocation may go to either twin: B revokes.
    let _: msg::RevokeX509Reply = both
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "lib-rev".into(),
            issuer: "sub".into(),
            serial: fresh.serial.clone(),
            reason: 1,
            invalidity_date: None,
        })
        .unwrap();
    t.a.daemon.signal("CONT");
    let done: msg::SignX509Reply = both.request::<calls::SignX509>(&doubt).unwrap();
    assert_eq!(done.serial[0], 0x21, "signed by A");
    assert_eq!(both.in_doubt_count(), 0);
    drop(both);

    // The gateway's socket: health every 10 minutes, so the links it opened
    // stay open when A stops.
    let socket = d.join("gateway.sock");
    let yaml = gateway_yaml(
        "gw-doubt",
        &[&dev_a, &dev_b],
        &format!("  sqlite: {}\n", d.join("queue.sqlite").display()),
        &format!("socket:\n  path: {}\n", socket.display()),
    )
    .replace("interval_s: 2", "interval_s: 600");
    let mut gw = Gateway::start(&d, "gw-doubt", &yaml);
    let link = format!("unix:{}", socket.display());
    wait_until(
        "the local socket",
        Duration::from_secs(60),
        || socket.exists(),
        || gw.log(),
    );
    let csr = d.join("via-gw.csr");
    std::fs::write(&csr, make_csr(&d, "via-gw", &p256)).unwrap();
    let sign_via_gateway = |id: &str| {
        client_json(&[
            "--link",
            &link,
            "sign",
            "--profile",
            "server",
            "--request-id",
            id,
            "--csr",
            csr.to_str().unwrap(),
            "--subject",
            "CN=gw.example.org",
            "--san",
            "dns:gw.example.org",
        ])
    };
    let serial_of = |json: &serde_json::Value| json["serial"].as_str().unwrap_or("").to_string();
    let (code, json) = sign_via_gateway("gw-warm");
    assert_eq!(code, Some(0), "{json}");
    assert!(serial_of(&json).starts_with("21"), "A: {json}");
    t.a.daemon.signal("STOP");
    for _ in 0..2 {
        let (code, json) = sign_via_gateway("gw-doubt");
        assert_eq!(code, Some(7), "{json}");
        assert_eq!(json["kind"], "in_doubt", "{json}");
        assert!(
            json["error"].as_str().unwrap().contains("gateway_in_doubt")
                || json["error"]
                    .as_str()
                    .unwrap()
                    .contains(&dev_a.display().to_string()),
            "{json}"
        );
    }
    let (code, json) = sign_via_gateway("gw-fresh");
    assert_eq!(code, Some(0), "{json}");
    assert!(serial_of(&json).starts_with("22"), "B: {json}");
    t.a.daemon.signal("CONT");
    let (code, json) = sign_via_gateway("gw-doubt");
    assert_eq!(code, Some(0), "{json}");
    assert!(serial_of(&json).starts_with("21"), "A: {json}");
    gw.stop();

    // The batch tool remembers across runs: a request left in doubt by an
    // earlier run goes only to the signer its file names.
    let out = d.join("batch-out");
    std::fs::create_dir(&out).unwrap();
    let bd = String::from_utf8(make_csr(&d, "bd", &p256)).unwrap();
    std::fs::write(d.join("doubt.jsonl"), sign_line("batch-doubt", &bd)).unwrap();
    std::fs::write(
        out.join("batch-doubt.in-doubt"),
        format!("{}\n", dev_a.display()),
    )
    .unwrap();
    let links = format!("{},{}", dev_a.display(), dev_b.display());
    let batch = |links: &str| {
        output(
            Command::new(bin("signer-client"))
                .args(["--link", links, "--failover-after", "3", "--json", "batch"])
                .arg(d.join("doubt.jsonl"))
                .arg("--out-dir")
                .arg(&out),
        )
    };
    t.a.daemon.signal("STOP");
    let (_, stdout, err) = batch(&links);
    assert!(stdout.contains(r#""status":"in_doubt""#), "{stdout}{err}");
    assert!(out.join("batch-doubt.in-doubt").exists());
    assert!(!out.join("batch-doubt.json").exists());
    // The device it names is not among the links: refused here, nothing sent.
    let (_, stdout, err) = batch(&dev_b.display().to_string());
    assert!(stdout.contains("not among --link"), "{stdout}{err}");
    t.a.daemon.signal("CONT");
    let (code, stdout, err) = batch(&links);
    assert_eq!(code, Some(0), "{stdout}{err}");
    let result = std::fs::read_to_string(out.join("batch-doubt.json")).unwrap();
    assert!(result.contains(r#""serial":"21"#), "{result}");
    assert!(!out.join("batch-doubt.in-doubt").exists());

    // The twins agree: one certificate per request id, no conflicts.
    let (a, b) = (t.a.client(), t.b.client());
    t.wait_in_sync(&a, &b, None, Duration::from_secs(60))
        .unwrap();
    let on_b: msg::SignX509Reply = b.request::<calls::SignX509>(&doubt).unwrap();
    assert!(
        on_b.replayed && on_b.serial == done.serial,
        "B holds A's certificate"
    );
    for signer in [&a, &b] {
        let conflicts = checks(signer).get("replication:conflicts").cloned();
        assert!(conflicts.is_none(), "{conflicts:?}");
    }
}
