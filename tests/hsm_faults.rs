//! HSM faults: signerd uses the fault-injection PKCS#11 module
//! (`crates/faulthsm`), which forwards to a real SoftHSM2 token and fails,
//! slows or hangs the signing path on command while the signer runs. The
//! signer must report the key unavailable, answer requests with a clear
//! error, and recover by itself when the fault stops, without a restart.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_client::Calls;
use signer_protocol::calls;
use std::path::Path;
use std::time::{Duration, Instant};

use signer_client::Client;
use signer_protocol::{msg, Command as Cmd, Status};
use signer_testsupport::ca::{make_csr, sign_request, Ceremony, SERVER_PROFILE};
use signer_testsupport::{fault_module, Bench, LinkSpec, SOFTHSM_MODULE};

fn sign(client: &Client, csr: &[u8], id: &str) -> Result<msg::SignX509Reply, Option<Status>> {
    client
        .request::<calls::SignX509>(&sign_request(id, csr.to_vec(), "faults.example.org"))
        .map_err(|e| e.status())
}

fn key_check(client: &Client) -> (msg::HealthStatus, String) {
    let h = client.health().unwrap();
    let c = h.checks.iter().find(|c| c.name == "hsm:sub").unwrap();
    (c.status, c.detail.clone())
}

fn set(control: &Path, fault: &str) {
    std::fs::write(control, fault).unwrap();
}

/// Signs until it works again (the signer recovers on its own); returns
/// how many attempts it took.
fn until_recovered(client: &Client, csr: &[u8], tag: &str) -> usize {
    let until = Instant::now() + Duration::from_secs(30);
    for attempt in 1.. {
        match sign(client, csr, &format!("{tag}-{attempt}")) {
            Ok(_) => return attempt,
            Err(status) => assert!(
                Instant::now() < until,
                "{tag}: still failing ({status:?}) after 30 s"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

#[test]
fn the_signer_reports_hsm_faults_and_recovers_without_a_restart() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let control = d.join("fault");
    set(&control, "");
    let yaml = c
        .ca_yaml
        .replace(SOFTHSM_MODULE, &fault_module().display().to_string());
    let mut env = c.env();
    env.push(("FAULTHSM_CONTROL".into(), control.clone()));
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, env);
    let mut options = bench.link_options();
    options.timeout = Duration::from_secs(5);
    let client = bench.client_with(options);
    let csr = make_csr(&d, "faults", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    sign(&client, &csr, "before").unwrap();

    // Each is answered hsm_unavailable: the client may send the request
    // again (same request id) once the token answers.
    for fault in ["device_error", "token_not_present", "session_invalid"] {
        set(&control, fault);
        let status = sign(&client, &csr, &format!("{fault}-during")).unwrap_err();
        assert_eq!(status, Some(Status::HSM_UNAVAILABLE), "{fault}");
        let (health, detail) = key_check(&client);
        assert_eq!(health, msg::HealthStatus::Failing, "{fault}: {detail}");
        set(&control, "");
        let attempts = until_recovered(&client, &csr, fault);
        let (health, detail) = key_check(&client);
        assert_eq!(health, msg::HealthStatus::Ok, "{fault}: {detail}");
        eprintln!(
            "faults: {fault}: answered {status:?}; signing again after {attempts} attempt(s)"
        );
    }

    // The module loses its initialization (an HSM client restarted): the
    // signer calls C_Initialize again and goes on, while the fault stays set.
    set(&control, "finalize");
    let first = sign(&client, &csr, "finalized-during");
    let attempts = until_recovered(&client, &csr, "finalized");
    let (health, detail) = key_check(&client);
    assert_eq!(health, msg::HealthStatus::Ok, "finalize: {detail}");
    assert!(
        bench.daemon.log().contains("initialized it again"),
        "{}",
        bench.daemon.log()
    );
    eprintln!(
        "faults: finalize: first answer {first:?}; signing again after {attempts} attempt(s)"
    );
    set(&control, "");

    // Slow calls: answered, only later.
    set(&control, "slow 300");
    let started = Instant::now();
    sign(&client, &csr, "slow").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    set(&control, "");

    // A hanging call holds one worker; the signer still answers health,
    // and the hung request completes once the HSM answers again.
    set(&control, "hang");
    let pending = client.submit(
        Cmd::SIGN_X509,
        signer_protocol::encode_body(&sign_request("hung", csr.clone(), "faults.example.org")),
    );
    std::thread::sleep(Duration::from_millis(500));
    let h = client.health().unwrap();
    assert!(h.link.executed > 0, "health answers while the HSM hangs");
    set(&control, "");
    let reply: msg::SignX509Reply = pending.wait().unwrap().decode().unwrap();
    assert!(!reply.replayed);
    sign(&client, &csr, "after").unwrap();
}
