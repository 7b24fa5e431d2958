//! docs/protocol.md is enough to write a client: a Python client written from
//! it alone (standard library only, tests/python/spec_client.py) talks to a
//! real `signerd` over a pty.

use std::process::Command;

use signer_testsupport::{Bench, LinkSpec};

/// Runs tests/python/spec_client.py against `bench`'s signer with `args`
/// after the device; its output, which must end in success.
fn run_spec_client(bench: &Bench, args: &[&str]) -> String {
    drop(bench.client());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/spec_client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(bench.client_device())
        .args(args)
        .output()
        .expect("python3 must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{text}\n--- signerd ---\n{}",
        bench.daemon.log()
    );
    text
}

#[test]
fn a_client_written_from_the_spec_interoperates() {
    let bench = Bench::start(LinkSpec::baud(115_200));
    let text = run_spec_client(&bench, &[]);
    for line in [
        "ok vectors",
        "ok hello",
        "ok pipelined",
        "ok retry replayed",
        "ok bad frame",
        "ok malformed envelopes answered by id",
        "ok unknown_command",
        "ok ca_certs",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn the_spec_client_verifies_the_audit_log_on_its_own() {
    use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let yaml = c.with_audit_log();
    let (ok, vkey) = c.signerd(&["audit", "vkey", "--config", "audited.yaml"]);
    assert!(ok, "{vkey}");
    let bench = Bench::start_with_env(LinkSpec::baud(115_200), &yaml, c.env());
    let text = run_spec_client(&bench, &["audit", vkey.trim()]);
    for line in [
        "ok audit_checkpoint",
        "ok audit_entries",
        "ok audit_consistency",
        "ok audit_inclusion",
        "ok audit_ack",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn the_spec_client_fetches_crls_as_the_spec_says() {
    use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
    let c = Ceremony::new("p256", SERVER_PROFILE);
    let bench = Bench::start_with_env(LinkSpec::baud(115_200), &c.ca_yaml, c.env());
    let text = run_spec_client(&bench, &["crls", "sub"]);
    for line in [
        "ok fetch_crl: full CRL",
        "ok fetch_crl: unchanged",
        "ok a CSR beyond max_frame",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}
