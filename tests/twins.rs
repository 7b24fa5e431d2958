//! Twin signers over NATS JetStream, as in production: two signerd
//! processes, each with its own SoftHSM2 token, repository, serial link and
//! nats-server, joined by a crossover "cable" that the test cuts. Checked
//! through the signers' own health reports (positions and digests of the
//! issued and revoked sets) and over the serial link.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::path::Path;
use std::time::Duration;

use signer_client::{Client, Failover};
use signer_protocol::msg::{self, HealthStatus};
use signer_testsupport::ca::{make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::gpg::Gpg;
use signer_testsupport::twins::{checks, Twins};

const SYNC: Duration = Duration::from_secs(90);

fn request(d: &Path, id: &str) -> msg::SignX509 {
    let csr = make_csr(d, id, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    sign_request(id, csr, &format!("{id}.example.org"))
}

fn sign(client: &Client, d: &Path, id: &str) -> msg::SignX509Reply {
    client
        .request::<calls::SignX509>(&request(d, id))
        .unwrap_or_else(|e| panic!("sign {id}: {e}"))
}

fn revoke(client: &Client, serial: &[u8], reason: u8) -> msg::RevokeX509Reply {
    client
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: format!("rev-{}", hex::encode(serial)),
            issuer: "sub".into(),
            serial: serial.to_vec(),
            reason,
            invalidity_date: None,
        })
        .unwrap()
}

fn crl_number(client: &Client) -> Vec<u8> {
    let reply: msg::FetchCrlReply = client
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("sub"))
        .unwrap();
    reply.number
}

fn wait_for(client: &Client, check: &str, what: impl Fn(&(HealthStatus, String)) -> bool) {
    let until = std::time::Instant::now() + SYNC;
    loop {
        let c = checks(client);
        if c.get(check).is_some_and(&what) {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "{check} never as expected: {c:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn twins_converge_through_partitions_and_restarts() {
    let mut ceremony = Ceremony::new_as("signer-a", "p256", SERVER_PROFILE);
    ceremony.add_openpgp();
    let mut t = Twins::with_ceremony(ceremony);
    let d = t.ceremony.dir().to_path_buf();
    let mut a = t.a.client();
    let mut b = t.b.client();

    // An OpenPGP certification made on A reaches B: the same request on B
    // replays A's certifications byte for byte.
    let users = Gpg::new();
    let carol = users.gen_key("Carol <carol@example.org>", "ed25519");
    let certify = msg::CertifyOpenpgp {
        request_id: "pgp-twin".into(),
        key: users.export(&carol),
        user_ids: vec!["Carol <carol@example.org>".into()],
        expires_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 30 * 86_400,
    };
    let on_a: msg::CertifyOpenpgpReply = a.request::<calls::CertifyOpenpgp>(&certify).unwrap();
    assert!(!on_a.replayed);
    wait_for(&b, "repository", |(_, d)| {
        d.contains("1 OpenPGP certifications")
    });
    let on_b: msg::CertifyOpenpgpReply = b.request::<calls::CertifyOpenpgp>(&certify).unwrap();
    assert!(on_b.replayed, "B replays A's certification");
    assert_eq!(on_b.key, on_a.key);
    assert_eq!(on_b.certifications, on_a.certifications);

    // Steady replication: both issue, each sees the other's certificates.
    let requests: Vec<msg::SignX509> = (0..5).map(|i| request(&d, &format!("a-{i}"))).collect();
    let from_a: Vec<msg::SignX509Reply> = requests
        .iter()
        .map(|r| a.request::<calls::SignX509>(r).unwrap())
        .collect();
    for i in 0..3 {
        sign(&b, &d, &format!("b-{i}"));
    }
    t.wait_in_sync(&a, &b, 8, SYNC).unwrap();
    assert!(from_a.iter().all(|r| r.serial[0] == 0x21));
    // A request A answered, retried on B (a client failing over), gets A's
    // certificate; B revokes a certificate A issued.
    let retried: msg::SignX509Reply = b.request::<calls::SignX509>(&requests[1]).unwrap();
    assert!(retried.replayed);
    assert_eq!(retried.certificate, from_a[1].certificate);
    revoke(&b, &from_a[0].serial, 1);
    let (detail, _) = t.wait_in_sync(&a, &b, 8, SYNC).unwrap();
    wait_for(&a, "replication:agreement", |(_, d)| {
        d.contains("1 revoked")
    });
    assert!(detail.starts_with("in sync"), "{detail}");
    // CRL numbers stay monotonic across the twins: A's next CRL is above
    // B's, whatever the clocks say.
    let n1 = crl_number(&b);
    wait_for(&a, "replication:apply", |(_, d)| d.contains("behind 0"));
    t.wait_in_sync(&a, &b, 8, SYNC).unwrap();
    revoke(&a, &from_a[2].serial, 3);
    let n2 = crl_number(&a);
    assert!(
        (n2.len(), &n2) > (n1.len(), &n1),
        "A's CRL number {n2:02x?} is above B's {n1:02x?}"
    );

    // The twins compare clocks at every state exchange (same host here).
    for client in [&a, &b] {
        wait_for(client, "replication:clock", |(s, d)| {
            *s == HealthStatus::Ok && d.contains("s from this signer's")
        });
    }

    // Partition: both keep serving, issue and revoke; one request id is
    // used on both sides.
    t.cut();
    wait_for(&a, "replication:peer", |(s, _)| {
        *s == HealthStatus::Degraded
    });
    wait_for(&b, "replication:peer", |(s, _)| {
        *s == HealthStatus::Degraded
    });
    for i in 0..4 {
        sign(&a, &d, &format!("pa-{i}"));
        sign(&b, &d, &format!("pb-{i}"));
    }
    let same = request(&d, "both");
    let on_a: msg::SignX509Reply = a.request::<calls::SignX509>(&same).unwrap();
    let on_b: msg::SignX509Reply = b.request::<calls::SignX509>(&same).unwrap();
    assert_ne!(on_a.serial, on_b.serial);
    // The same certificate revoked on both sides with different reasons:
    // the merge rule keeps one, on both.
    revoke(&a, &from_a[3].serial, 4);
    revoke(&b, &from_a[3].serial, 1);
    t.restore();
    // 8 + 8 + the request id issued on both sides.
    let (detail_a, detail_b) = t.wait_in_sync(&a, &b, 18, SYNC).unwrap();
    assert_eq!(detail_a, detail_b);
    assert!(detail_a.contains("3 revoked"), "{detail_a}");
    for client in [&a, &b] {
        wait_for(client, "replication:conflicts", |(s, d)| {
            *s == HealthStatus::Failing && d.contains("request id both")
        });
    }

    // A's nats-server killed: A signs on; its changes wait in the outbox
    // and follow once the server is back.
    t.nats_a.kill();
    for i in 0..3 {
        sign(&a, &d, &format!("na-{i}"));
    }
    wait_for(&a, "replication:publish", |(s, d)| {
        *s == HealthStatus::Degraded && !d.contains("waiting 0")
    });
    t.nats_a.restart();
    t.wait_in_sync(&a, &b, 21, SYNC).unwrap();

    // Published but not yet read by B when A's nats-server loses its store
    // (a wiped disk): the stream is gone with them, and A, with nothing
    // new to publish, finds that out and publishes them again from its
    // outbox (which keeps each until B has applied it).
    t.cut();
    for i in 0..3 {
        sign(&a, &d, &format!("ra-{i}"));
    }
    wait_for(&a, "replication:publish", |(_, d)| d.contains("waiting 0"));
    t.nats_a.restart_empty();
    t.restore();
    t.wait_in_sync(&a, &b, 24, SYNC).unwrap();

    // signerd killed (-9) on either side right after issuing.
    for i in 0..2 {
        sign(&a, &d, &format!("ka-{i}"));
    }
    t.b.daemon.restart();
    sign(&a, &d, "ka-2");
    drop(b);
    b = t.b.client();
    sign(&b, &d, "kb-0");
    t.a.daemon.restart();
    drop(a);
    a = t.a.client();
    t.wait_in_sync(&a, &b, 28, SYNC).unwrap();
    // Restarted twins still answer a retried request id with the original.
    let replay: msg::SignX509Reply = b.request::<calls::SignX509>(&requests[4]).unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.certificate, from_a[4].certificate);

    // B's repository lost and replaced (a rebuilt twin with the same id):
    // its sequence starts again in a new epoch, which A follows (B sealed
    // it); A's older events are gone from A's stream, which B reports and
    // never skips: seeding is the way back.
    t.b.daemon.kill();
    std::fs::remove_file(t.dir_b().join("repository.redb")).unwrap();
    // Without a repository B does not start (it would forget what it
    // issued); the rebuilt twin's operator makes a new one on purpose.
    t.b.daemon.restart();
    assert_eq!(
        t.b.daemon.wait(Duration::from_secs(20)),
        Some(5),
        "{}",
        t.b.daemon.log()
    );
    assert!(
        t.b.daemon.log().contains("there is no repository"),
        "{}",
        t.b.daemon.log()
    );
    t.init_b();
    t.b.daemon.restart();
    drop(b);
    let b = t.b.client();
    let on_new_b = request(&d, "new-b");
    let _: msg::SignX509Reply = b.request::<calls::SignX509>(&on_new_b).unwrap();
    let after = request(&d, "after-replace");
    let _: msg::SignX509Reply = a.request::<calls::SignX509>(&after).unwrap();
    wait_for(&b, "replication:apply", |(_, d)| {
        d.contains("waiting") && d.contains("for event 1 ") && d.contains("no longer keeps it")
    });
    // A has applied everything of the new B (a handful of events, where the
    // old B had dozens: not a stale state of the old one).
    wait_for(&a, "replication:apply", |(_, d)| {
        let mut words = d.split(' ');
        let applied = words.nth(1).and_then(|w| w.parse::<u64>().ok());
        let of = words.nth(1).and_then(|w| w.parse::<u64>().ok());
        applied.is_some() && applied == of && of < Some(10)
    });
    let on_a: msg::SignX509Reply = a.request::<calls::SignX509>(&on_new_b).unwrap();
    assert!(on_a.replayed, "A has B's certificate: {:#?}", checks(&a));
    // Nothing of A's was skipped into B.
    let agreement = &checks(&b)["replication:agreement"];
    assert!(!agreement.1.contains("in sync"), "{agreement:?}");
    // A keeps the copy of B's former audit chain apart, whole, and copies
    // the new one from its first entry: both verify.
    let (on_a, _) = t.check_repositories();
    assert!(on_a.contains("signer-b~"), "{on_a}");
}

fn issued_total(detail: &str) -> u64 {
    let start = detail.find('(').unwrap() + 1;
    detail[start..].split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_client_fails_over_mid_batch_and_the_twins_account_for_every_request() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let mut t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let requests: Arc<Vec<msg::SignX509>> =
        Arc::new((0..30).map(|i| request(&d, &format!("f-{i}"))).collect());
    drop(t.a.client());
    drop(t.b.client());
    let client = Arc::new(Failover::new(
        vec![t.a.link_options(), t.b.link_options()],
        Duration::from_secs(3),
    ));
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (client, requests, done) = (
                Arc::clone(&client),
                Arc::clone(&requests),
                Arc::clone(&done),
            );
            std::thread::spawn(move || {
                (w * 10..w * 10 + 10)
                    .map(|i| {
                        let reply = match client.request::<calls::SignX509>(&requests[i]) {
                            Ok(reply) => Some(reply),
                            // In flight on A when it died: never sent to B.
                            Err(signer_client::ClientError::InDoubt { .. }) => None,
                            Err(e) => panic!("request {i}: {e}"),
                        };
                        done.fetch_add(1, Ordering::SeqCst);
                        (i, reply)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    while done.load(Ordering::SeqCst) < 8 {
        std::thread::sleep(Duration::from_millis(5));
    }
    t.a.daemon.kill();
    let mut answered: Vec<(usize, Option<msg::SignX509Reply>)> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    answered.sort_by_key(|r| r.0);
    assert_eq!(answered.len(), 30);
    let in_doubt: Vec<usize> = answered
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(client.in_doubt_count(), in_doubt.len());
    for &i in &in_doubt {
        assert_eq!(
            client.in_doubt(signer_protocol::Command::SIGN_X509, &requests[i].request_id),
            Some(0),
            "request {i} stays with A"
        );
    }
    let mut replies: Vec<(usize, msg::SignX509Reply)> = answered
        .into_iter()
        .filter_map(|(i, r)| Some((i, r?)))
        .collect();
    assert!(client.failovers() >= 1);
    let failovers = client.failovers();
    assert!(replies.iter().all(|(_, r)| r.issuer == "sub"));
    assert!(
        replies.iter().any(|(_, r)| r.serial[0] == 0x22),
        "the twin answered after the failover"
    );
    drop(client);

    // The CLI fails over the same way (A's link does not open: nothing in doubt).
    let csr = d.join("cli.csr");
    std::fs::write(&csr, &request(&d, "cli").csr).unwrap();
    let links = format!(
        "{},{}",
        t.a.client_device().display(),
        t.b.client_device().display()
    );
    let out = std::process::Command::new(signer_testsupport::bin("signer-client"))
        .args(["--link", &links, "--failover-after", "2", "--json", "sign"])
        .args(["--profile", "server", "--request-id", "cli", "--csr"])
        .arg(&csr)
        .args([
            "--subject",
            "CN=cli.example.org",
            "--san",
            "dns:cli.example.org",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["signer"], "signer-b");
    assert_eq!(json["failovers"], 1);

    // A returns and answers the requests in doubt (from its record where it
    // had signed them); the twins converge with one certificate per request
    // id: none was signed by both.
    t.a.daemon.restart();
    let client = Failover::new(
        vec![t.a.link_options(), t.b.link_options()],
        Duration::from_secs(3),
    );
    for &i in &in_doubt {
        // What a caller that kept its doubts (the batch tool's files) tells a new client.
        assert!(client.set_in_doubt(
            signer_protocol::Command::SIGN_X509,
            &requests[i].request_id,
            &t.a.client_device()
        ));
    }
    for &i in &in_doubt {
        let reply: msg::SignX509Reply = client
            .request::<calls::SignX509>(&requests[i])
            .unwrap_or_else(|e| panic!("request {i} in doubt, sent again: {e}"));
        assert_eq!(reply.serial[0], 0x21, "request {i} answered by A");
        replies.push((i, reply));
    }
    assert_eq!(replies.len(), 30);
    assert_eq!(client.in_doubt_count(), 0);
    drop(client);
    let a = t.a.client();
    let b = t.b.client();
    let (detail, _) = t.wait_in_sync(&a, &b, None, SYNC).unwrap();
    let mut differing = 0;
    for (i, got) in &replies {
        let on_a: msg::SignX509Reply = a.request::<calls::SignX509>(&requests[*i]).unwrap();
        let on_b: msg::SignX509Reply = b.request::<calls::SignX509>(&requests[*i]).unwrap();
        assert!(on_a.replayed && on_b.replayed);
        assert!(
            got.serial == on_a.serial || got.serial == on_b.serial,
            "the certificate the client holds for request {i} is recorded"
        );
        if on_a.serial != on_b.serial {
            differing += 1;
        }
    }
    assert_eq!(differing, 0, "no request id signed by both twins");
    assert_eq!(
        issued_total(&detail),
        31 + signer_testsupport::twins::CEREMONY_CERTIFICATES,
        "{detail}"
    );
    let conflicts = checks(&a).get("replication:conflicts").cloned();
    assert!(conflicts.is_none(), "{conflicts:?}");
    eprintln!(
        "failover: {failovers} failovers, {} requests in doubt answered by A after its restart",
        in_doubt.len()
    );
}

#[test]
fn a_replacement_twin_seeded_from_the_survivor_holds_every_record() {
    let mut t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let a = t.a.client();
    let b = t.b.client();
    let mut sent = std::collections::BTreeMap::new();
    let mut call = |client: &Client, id: &str| -> msg::SignX509Reply {
        let req = request(&d, id);
        sent.insert(id.to_string(), req.clone());
        client.request::<calls::SignX509>(&req).unwrap()
    };
    let from_a: Vec<_> = (0..6).map(|i| call(&a, &format!("sa-{i}"))).collect();
    let from_b: Vec<_> = (0..4).map(|i| call(&b, &format!("sb-{i}"))).collect();
    revoke(&a, &from_a[0].serial, 1);
    revoke(&b, &from_b[0].serial, 4);
    t.wait_in_sync(&a, &b, 10, SYNC).unwrap();

    // B's disk is lost. A keeps serving; its online backup seeds the new B.
    t.b.daemon.kill();
    drop(b);
    std::fs::remove_file(t.dir_b().join("repository.redb")).unwrap();
    let during = call(&a, "while-b-is-away");
    let out = t.seed_b_from_a();
    // Eleven issued here and the ceremony's intermediate.
    assert!(out.contains("12 certificates, 2 revocations"), "{out}");
    let after = call(&a, "after-the-backup");
    t.b.daemon.restart();
    let b = t.b.client();
    // Everything A had, and what A made after its backup, reaches B; the
    // twins agree again without a DIVERGED state to repair by hand.
    t.wait_in_sync(&a, &b, 12, SYNC).unwrap();
    for (id, reply) in [
        ("sa-3", &from_a[3]),
        ("sb-2", &from_b[2]),
        ("while-b-is-away", &during),
        ("after-the-backup", &after),
    ] {
        let again: msg::SignX509Reply = b.request::<calls::SignX509>(&sent[id]).unwrap();
        assert!(again.replayed, "{id}");
        assert_eq!(again.certificate, reply.certificate, "{id}");
    }
    let crl: msg::FetchCrlReply = b
        .request::<calls::FetchCrl>(&signer_testsupport::ca::full_crl("sub"))
        .unwrap();
    assert_eq!(crl.entries, 2, "both revocations are on the new B's CRL");
    let apply = checks(&b)["replication:apply"].clone();
    assert!(!apply.1.contains("were gone"), "{apply:?}");
    // Every record and audit chain each twin holds passes its check, B's
    // chain from before and after its disk was lost included.
    t.check_repositories();

    // A's clock is set back a year: A refuses to sign (clock_untrusted), and
    // a client with both links gets the certificate from B instead.
    drop(a);
    drop(b);
    t.a.daemon
        .restart_with_env(signer_testsupport::faketime("-365d"));
    let a = t.a.client();
    let refused = a.request::<calls::SignX509>(&request(&d, "back-in-time"));
    assert!(
        matches!(&refused, Err(signer_client::ClientError::Signer { status, .. }) if *status == signer_protocol::Status::CLOCK_UNTRUSTED),
        "{refused:?}"
    );
    drop(a);
    let both = Failover::new(
        vec![t.a.link_options(), t.b.link_options()],
        Duration::from_secs(10),
    );
    let reply: msg::SignX509Reply = both
        .request::<calls::SignX509>(&request(&d, "back-in-time-2"))
        .unwrap();
    assert_eq!(reply.serial[0], 0x22, "issued by B");
    assert_eq!(
        both.server().map(|h| h.signer_id).as_deref(),
        Some("signer-b")
    );
}

/// Flips one byte inside the stored certificate of `request_id` (its
/// checksum no longer matches), or puts `restore` back; returns the
/// original value.
fn damage_certificate(path: &Path, request_id: &str, restore: Option<Vec<u8>>) -> Vec<u8> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const CERTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("certs_v1");
    let db = redb::Database::open(path).unwrap();
    let (key, original) = {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(CERTS).unwrap();
        let mut found = None;
        for item in table.iter().unwrap() {
            let (k, v) = item.unwrap();
            let value = v.value().to_vec();
            let wanted = request_id.as_bytes();
            if value.windows(wanted.len()).any(|w| w == wanted) {
                found = Some(((k.value().0.to_string(), k.value().1.to_vec()), value));
            }
        }
        found.expect("the record is stored")
    };
    let value = restore.unwrap_or_else(|| {
        let mut v = original.clone();
        let mid = v.len() / 2;
        v[mid] ^= 0x01;
        v
    });
    let txn = db.begin_write().unwrap();
    txn.open_table(CERTS)
        .unwrap()
        .insert((key.0.as_str(), key.1.as_slice()), value.as_slice())
        .unwrap();
    txn.commit().unwrap();
    original
}

#[test]
fn a_damaged_record_waiting_in_the_outbox_stops_publishing_and_says_so() {
    let mut t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let repo_a = d.join("repository.redb");
    let (mut a, b) = (t.a.client(), t.b.client());
    sign(&a, &d, "before");
    t.wait_in_sync(&a, &b, 1, SYNC).unwrap();
    // A's server down: the next certificate waits in A's outbox, which
    // names it; its stored record is then damaged while A is stopped.
    t.nats_a.kill();
    let held = request(&d, "held");
    let on_a: msg::SignX509Reply = a.request::<calls::SignX509>(&held).unwrap();
    wait_for(&a, "replication:publish", |(s, d)| {
        *s == HealthStatus::Degraded && !d.contains("waiting 0")
    });
    drop(a);
    t.a.daemon.stop_cleanly();
    let original = damage_certificate(&repo_a, "held", None);
    t.nats_a.restart();
    t.a.daemon.restart();
    a = t.a.client();
    // Nothing is published past it, and health says why.
    wait_for(&a, "replication:publish", |(s, d)| {
        *s == HealthStatus::Failing
            && d.contains("outbox unreadable")
            && d.contains("certs_v1: a record fails its checksum")
    });
    assert!(t.a.daemon.log().contains("the outbox cannot be read"));
    // Repaired (the record put back as it was), the event goes out.
    drop(a);
    t.a.daemon.stop_cleanly();
    damage_certificate(&repo_a, "held", Some(original));
    t.a.daemon.restart();
    a = t.a.client();
    t.wait_in_sync(&a, &b, 2, SYNC).unwrap();
    let replay: msg::SignX509Reply = b.request::<calls::SignX509>(&held).unwrap();
    assert!(replay.replayed, "B holds A's certificate");
    assert_eq!(replay.certificate, on_a.certificate);
}
