//! The key ceremony as a library (`signer_ca::ceremony`), without the
//! binary, against a real SoftHSM2 token: every step is recorded in the
//! audit log, failures included, and nothing touches the token when the
//! audit log cannot be opened.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use signer_ca::ceremony::{self, CeremonyError, Step};
use signer_ca::{expected_identity, repository_options, CaConfig};
use signer_hsm::KeyKind;
use signer_repository::Repository;
use signer_service::config::Section;
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

const SIGNER: &str = "ceremony-signer";
const NOW: i64 = 1_780_000_000;

fn config(hsm: &SoftHsm, dir: &std::path::Path) -> CaConfig {
    let yaml = format!(
        "hsm: {{module: {SOFTHSM_MODULE}, token: {{label: {}}}, pin: {{file: {}}}}}\n\
         keys: [{{name: root, label: root-key}}]\n\
         repository: {}\n\
         serial_prefix: 0x21\n",
        hsm.label,
        hsm.pin_file().display(),
        dir.join("repository.redb").display()
    );
    let mut ca: CaConfig = serde_yaml::from_str(&yaml).unwrap();
    ca.validate(&dir.join("signerd.yaml"), dir).unwrap();
    ca
}

fn steps(ca: &CaConfig) -> Vec<(String, String)> {
    let repo = Repository::open_read_only(
        &ca.repository,
        &expected_identity(ca, SIGNER).unwrap(),
        &repository_options(ca),
    )
    .unwrap();
    repo.audit_entries(|e| e.kind == "setup")
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.outcome))
        .collect()
}

#[test]
fn each_step_is_recorded_and_nothing_happens_without_the_audit_log() {
    let hsm = SoftHsm::new("ceremony");
    // This test binary has this single test: nothing else reads the environment.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let dir = tempfile::tempdir().unwrap();
    let ca = config(&hsm, dir.path());
    let mut said = Vec::new();
    let mut say = |line: &str| said.push(line.to_string());

    // No repository yet: refused before the token is touched.
    let step = Step::GenerateKey {
        label: "root-key".into(),
        kind: KeyKind::EcP256,
        dry_run: false,
    };
    let err = ceremony::run(step.clone(), &ca, SIGNER, NOW, &mut say).unwrap_err();
    assert!(matches!(err, CeremonyError::AuditLog(_)), "{err}");
    let token = signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None).unwrap();
    token.check_label_free("root-key").unwrap();

    Repository::create(
        &ca.repository,
        &expected_identity(&ca, SIGNER).unwrap(),
        &repository_options(&ca),
    )
    .unwrap()
    .close();

    let dry = Step::GenerateKey {
        label: "root-key".into(),
        kind: KeyKind::EcP256,
        dry_run: true,
    };
    ceremony::run(dry, &ca, SIGNER, NOW, &mut say).unwrap();
    token.check_label_free("root-key").unwrap();
    ceremony::run(step.clone(), &ca, SIGNER, NOW, &mut say).unwrap();
    assert!(token.check_label_free("root-key").is_err());
    // The same label again fails, and the failure is recorded.
    assert!(matches!(
        ceremony::run(step, &ca, SIGNER, NOW, &mut say),
        Err(CeremonyError::Failed(_))
    ));

    let out = dir.path().join("root.pem");
    let root = Step::SelfSign {
        key: "root".into(),
        subject: "O=Ceremony,CN=Ceremony Root".into(),
        days: 3650,
        path_len: None,
        out: out.clone(),
    };
    ceremony::run(root, &ca, SIGNER, NOW, &mut say).unwrap();
    let der = signer_x509::cert_der(&std::fs::read(&out).unwrap()).unwrap();
    signer_x509::verify_issued(&der, &der).unwrap();
    let backend = signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None).unwrap();
    let signer = signer_x509::CaSigner::new("root", "root", der, &*backend).unwrap();
    assert_eq!(signer.not_before, NOW);

    let unknown = Step::SelfSign {
        key: "no-such-key".into(),
        subject: "CN=x".into(),
        days: 1,
        path_len: None,
        out: dir.path().join("x.pem"),
    };
    assert!(ceremony::run(unknown, &ca, SIGNER, NOW, &mut say).is_err());
    assert!(!dir.path().join("x.pem").exists());

    let outcome = |a: &str, o: &str| (a.to_string(), o.to_string());
    assert_eq!(
        steps(&ca),
        vec![
            outcome("generate-key (dry run)", "ok"),
            outcome("generate-key", "ok"),
            outcome("generate-key", "failed"),
            outcome("self-sign", "ok"),
            outcome("self-sign", "failed"),
        ]
    );
    assert!(
        said.iter()
            .any(|l| l.starts_with("generated ECDSA P-256 key")),
        "{said:?}"
    );
}
