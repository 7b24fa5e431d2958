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

/// Starts a signer whose HSM does not answer its first calls (`hang`
/// until the control file says otherwise).
fn start_hung(c: &Ceremony, control: &Path) -> signer_testsupport::Bench {
    set(control, "hang");
    let yaml = c
        .ca_yaml
        .replace(SOFTHSM_MODULE, &fault_module().display().to_string());
    let mut env = c.env();
    env.push(("FAULTHSM_CONTROL".into(), control.to_path_buf()));
    signer_testsupport::Bench::start_with_env(LinkSpec::unthrottled(), &yaml, env)
}

/// A client of a signer that answers but may still be starting.
fn open_client(bench: &signer_testsupport::Bench) -> Client {
    let mut options = bench.link_options();
    options.timeout = Duration::from_secs(2);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::open(&options) {
            Ok(client) => return client,
            Err(e) => assert!(
                Instant::now() < until,
                "no answer: {e}\n{}",
                bench.daemon.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_starting_signer_answers_health_and_refuses_work_until_it_has_started() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let d = c.dir().to_path_buf();
    let control = d.join("fault");
    let csr = make_csr(
        &d,
        "starting",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let bench = start_hung(&c, &control);

    // The link is served while the start waits for the HSM: hello lists
    // only what a starting signer answers, health says what it waits for.
    let client = open_client(&bench);
    let hello = client.server().unwrap();
    assert!(!hello.commands.contains(&Cmd::SIGN_X509.0), "{hello:?}");
    assert!(hello.commands.contains(&Cmd::HEALTH.0), "{hello:?}");
    let h = client.health().unwrap();
    assert_eq!(h.status, msg::HealthStatus::Failing, "{h:?}");
    let check = h.checks.iter().find(|c| c.name == "starting").unwrap();
    assert!(
        check.detail.contains("checking the repository") && check.detail.contains("HSM"),
        "{check:?}"
    );
    assert!(signer_testsupport::still_starting(&client));

    // Work is refused without effect, each time afresh (not stored): the
    // same envelope and request id are executed once the signer is ready.
    let body =
        signer_protocol::encode_body(&sign_request("early", csr.clone(), "faults.example.org"));
    for _ in 0..2 {
        let reply = client.call(Cmd::SIGN_X509, body.clone()).unwrap();
        assert_eq!(reply.status, Status::STARTING);
        let err: msg::ErrorBody = signer_protocol::decode_body(&reply.body).unwrap();
        assert!(err.message.contains("starting"), "{}", err.message);
    }
    for (command, body) in [
        (
            Cmd::REVOKE_X509,
            signer_protocol::encode_body(&msg::Empty {}),
        ),
        (Cmd::FETCH_CRL, signer_protocol::encode_body(&msg::Empty {})),
        (Cmd(0x0999), signer_protocol::encode_body(&msg::Empty {})),
    ] {
        let reply = client.call(command, body).unwrap();
        assert_eq!(reply.status, Status::STARTING, "{command:?}");
    }

    // A caller that waits (the client library, the CLI) sends it again
    // until the signer has started (one client on the line at a time).
    drop(client);
    let waiting = {
        let mut options = bench.link_options();
        options.timeout = Duration::from_secs(2);
        let body = sign_request("early", csr.clone(), "faults.example.org");
        std::thread::spawn(move || {
            let signers = signer_client::Failover::new(vec![options], Duration::from_secs(30));
            signers.request::<calls::SignX509>(&body)
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    assert!(!waiting.is_finished(), "answered while the HSM hangs");
    set(&control, "");
    let waited = waiting.join().unwrap().unwrap();
    let client = open_client(&bench);
    let until = Instant::now() + Duration::from_secs(20);
    while signer_testsupport::still_starting(&client) {
        assert!(Instant::now() < until, "{}", bench.daemon.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The request refused twice, sent again, is the one the waiting
    // caller got signed (same request id): one certificate.
    let reply = client.call(Cmd::SIGN_X509, body).unwrap();
    assert_eq!(reply.status, Status::OK);
    let again: msg::SignX509Reply = reply.decode().unwrap();
    assert_eq!(again.certificate, waited.certificate);
    assert!(again.replayed);
    let h = client.health().unwrap();
    assert!(h.checks.iter().all(|c| c.name != "starting"), "{h:?}");
    let hello = client.server().unwrap();
    assert!(hello.commands.contains(&Cmd::SIGN_X509.0), "{hello:?}");
}

#[test]
fn a_signer_stopped_while_its_start_hangs_exits_with_an_error() {
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let control = c.dir().join("fault");
    let mut bench = start_hung(&c, &control);
    let client = open_client(&bench);
    assert!(signer_testsupport::still_starting(&client));
    drop(client);
    bench.daemon.signal("TERM");
    let code = bench.daemon.wait(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{}", bench.daemon.log());
    assert!(
        bench.daemon.log().contains("stopped while starting"),
        "{}",
        bench.daemon.log()
    );
    set(&control, "");
}

#[test]
fn a_client_of_both_signers_asks_the_twin_while_one_is_starting() {
    let hung = Ceremony::new("p256", SERVER_PROFILE);
    let serving = Ceremony::new("p256", SERVER_PROFILE);
    let control = hung.dir().join("fault");
    let starting = start_hung(&hung, &control);
    let other = signer_testsupport::Bench::start_with_env(
        LinkSpec::unthrottled(),
        &serving.ca_yaml,
        serving.env(),
    );
    drop(other.client());
    drop(open_client(&starting));
    let csr = make_csr(
        hung.dir(),
        "twin",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let request = sign_request("to-the-twin", csr, "faults.example.org");
    let mut first = starting.link_options();
    first.timeout = Duration::from_secs(2);
    let signers =
        signer_client::Failover::new(vec![first, other.link_options()], Duration::from_secs(5));
    let reply = signers.request::<calls::SignX509>(&request).unwrap();
    assert_eq!(signers.failovers(), 1);

    // A request in doubt on the starting signer (sent before it restarted,
    // no answer) stays with it: it may have signed it before, and it has
    // not looked yet. The twin is not asked.
    let doubt = sign_request(
        "in-doubt",
        make_csr(
            hung.dir(),
            "doubt",
            &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        "faults.example.org",
    );
    assert!(signers.set_in_doubt(Cmd::SIGN_X509, "in-doubt", &starting.client_device()));
    let before = signers.health_of(1).unwrap().link.executed;
    let answer = signers.request::<calls::SignX509>(&doubt);
    assert!(
        matches!(&answer, Err(e) if e.status() == Some(Status::STARTING)),
        "{answer:?}"
    );
    assert_eq!(signers.in_doubt(Cmd::SIGN_X509, "in-doubt"), Some(0));
    assert_eq!(signers.failovers(), 1);
    // Only this health request ran on the twin since.
    assert_eq!(signers.health_of(1).unwrap().link.executed, before + 1);
    drop(signers);

    // The batch tool's file of a request in doubt stays too.
    let dir = hung.dir();
    let out = dir.join("batch-out");
    std::fs::create_dir(&out).unwrap();
    let csr = String::from_utf8(make_csr(
        dir,
        "bd",
        &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    ))
    .unwrap();
    let line = serde_json::json!({"request_id": "batch-doubt", "kind": "sign_x509", "body": {
        "profile": "server", "csr": csr,
        "subject": [["CN", "bd.example.org"]],
        "sans": [{"type": "dns", "value": "bd.example.org"}]}});
    std::fs::write(dir.join("doubt.jsonl"), line.to_string()).unwrap();
    let doubt_file = out.join("batch-doubt.in-doubt");
    std::fs::write(
        &doubt_file,
        format!("{}\n", starting.client_device().display()),
    )
    .unwrap();
    let links = format!(
        "{},{}",
        starting.client_device().display(),
        other.client_device().display()
    );
    let (_, stdout, err) = signer_testsupport::output(
        std::process::Command::new(signer_testsupport::bin("signer-client"))
            .args(["--link", &links, "--failover-after", "2", "--json", "batch"])
            .arg(dir.join("doubt.jsonl"))
            .arg("--out-dir")
            .arg(&out),
    );
    assert!(stdout.contains("starting"), "{stdout}{err}");
    assert!(doubt_file.exists(), "{stdout}{err}");
    assert!(!out.join("batch-doubt.json").exists(), "{stdout}{err}");
    // Signed by the signer that had started, once: the same request there
    // is the same certificate.
    let again = other.client().request::<calls::SignX509>(&request).unwrap();
    assert_eq!(again.certificate, reply.certificate);
    assert!(again.replayed);
    let client = open_client(&starting);
    assert!(signer_testsupport::still_starting(&client));
    set(&control, "");
}
