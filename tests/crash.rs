//! Crash safety: `kill -9` of signerd at random moments during a stream of
//! signing and revocation requests, many times. After each restart every
//! certificate a client received is in the repository (its request id
//! returns the same certificate), every acknowledged revocation is there, no
//! serial is used twice, and at the end the audit chain and the repository
//! check out. `CRASH_RUNS` sets the number of kills (default 4);
//! `CRASH_SEED` the random moments.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use signer_client::Client;
use signer_protocol::msg;
use signer_testsupport::ca::{make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::{bin, output, Bench, LinkSpec};

fn request(csr: &[u8], id: &str) -> msg::SignX509 {
    sign_request(id, csr.to_vec(), &format!("{id}.example.org"))
}

fn revocation(serial: &[u8]) -> msg::RevokeX509 {
    msg::RevokeX509 {
        request_id: format!("rev-{}", hex::encode(serial)),
        issuer: "sub".into(),
        serial: serial.to_vec(),
        reason: 4,
        invalidity_date: None,
    }
}

#[derive(Default)]
struct Seen {
    /// Request id → certificate, for every answered `sign_x509`.
    issued: BTreeMap<String, Vec<u8>>,
    /// Request ids sent without an answer (the signer died meanwhile).
    unanswered: Vec<String>,
    /// Serials whose revocation was acknowledged.
    revoked: BTreeSet<Vec<u8>>,
}

/// Sends requests until `stop`: signs, and revokes every fourth certificate.
fn stream(client: &Client, csr: &[u8], run: usize, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut k = 0;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("crash-{run}-{k}");
        k += 1;
        match client.request::<calls::SignX509>(&request(csr, &id)) {
            Ok(reply) => {
                if k % 4 == 0 {
                    let rev = revocation(&reply.serial);
                    if client.request::<calls::RevokeX509>(&rev).is_ok() {
                        seen.revoked.insert(reply.serial.clone());
                    }
                }
                seen.issued.insert(id, reply.certificate);
            }
            Err(_) => seen.unanswered.push(id),
        }
    }
    seen
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let runs: usize = std::env::var("CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    eprintln!("crash: {runs} runs, seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let csr = Arc::new(make_csr(
        c.dir(),
        "crash",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ));
    let mut bench = Bench::start_with_env(LinkSpec::unthrottled(), &c.ca_yaml, c.env());
    let mut all = Seen::default();
    for run in 0..runs {
        let mut options = bench.link_options();
        options.timeout = Duration::from_secs(1);
        let client = bench.client_with(options);
        let stop = Arc::new(AtomicBool::new(false));
        let worker = {
            let (stop, csr) = (Arc::clone(&stop), Arc::clone(&csr));
            std::thread::spawn(move || stream(&client, &csr, run, &stop))
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
        bench.daemon.kill();
        stop.store(true, Ordering::SeqCst);
        let seen = worker.join().unwrap();
        eprintln!(
            "crash: run {run}: {} answered, {} unanswered, {} revoked",
            seen.issued.len(),
            seen.unanswered.len(),
            seen.revoked.len()
        );
        all.issued.extend(seen.issued);
        all.unanswered.extend(seen.unanswered);
        all.revoked.extend(seen.revoked);
        bench.daemon.restart();
    }
    assert!(
        !all.issued.is_empty(),
        "requests were answered before the kills"
    );

    let client = bench.client();
    let mut serials = BTreeSet::new();
    for (id, certificate) in &all.issued {
        let again: msg::SignX509Reply = client
            .request::<calls::SignX509>(&request(&csr, id))
            .unwrap();
        assert!(again.replayed, "{id} was recorded before its answer left");
        assert_eq!(&again.certificate, certificate, "{id}");
        assert!(serials.insert(again.serial), "serial used twice");
    }
    // A request that got no answer: committed or not, retrying it now gives
    // one certificate, and never a serial already used.
    for id in &all.unanswered {
        let reply: msg::SignX509Reply = client
            .request::<calls::SignX509>(&request(&csr, id))
            .unwrap();
        assert!(serials.insert(reply.serial), "serial used twice ({id})");
    }
    for serial in &all.revoked {
        let again: msg::RevokeX509Reply = client
            .request::<calls::RevokeX509>(&revocation(serial))
            .unwrap();
        assert!(again.replayed, "revocation of {} kept", hex::encode(serial));
    }
    drop(client);
    bench.daemon.signal("TERM");
    assert_eq!(bench.daemon.wait(Duration::from_secs(20)), Some(0));
    let config = bench.dir().join("signerd.yaml");
    for args in [["audit", "verify"], ["repo", "check"]] {
        let (code, stdout, stderr) = output(
            std::process::Command::new(bin("signerd"))
                .args(args)
                .arg("--config")
                .arg(&config),
        );
        let text = format!("{stdout}{stderr}");
        assert_eq!(code, Some(0), "signerd {args:?}: {text}");
        eprintln!("crash: signerd {args:?}: {}", text.trim());
    }
}
