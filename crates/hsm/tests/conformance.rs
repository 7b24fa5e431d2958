//! The key-backend conformance suite (`signer_keys::conformance`) against
//! the PKCS#11 backend on a real SoftHSM2 token, opened the way the daemon
//! opens it: through the factory, from the YAML a configuration holds.
//! A new backend gets a file like this one.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use signer_hsm::{BackendConfig, KeySpec, SigningBackend};
use signer_keys::conformance;
use signer_testsupport::{SoftHsm, SOFTHSM_MODULE};

fn config(hsm: &SoftHsm, explicit_tag: bool) -> BackendConfig {
    let yaml = format!(
        "{}module: {SOFTHSM_MODULE}\ntoken: {{label: {}}}\npin: {{file: {}}}\n",
        if explicit_tag {
            "backend: pkcs11\n"
        } else {
            ""
        },
        hsm.label,
        hsm.pin_file().display()
    );
    #[derive(serde::Deserialize)]
    struct Section {
        #[serde(deserialize_with = "BackendConfig::deserialize_defaulted")]
        hsm: BackendConfig,
    }
    let text = format!(
        "hsm:\n{}",
        yaml.lines().map(|l| format!("  {l}\n")).collect::<String>()
    );
    serde_yaml::from_str::<Section>(&text).unwrap().hsm
}

#[test]
fn pkcs11_on_softhsm_passes_the_backend_conformance_suite() {
    let hsm = SoftHsm::new("conformance");
    // This test binary has this single test: nothing else reads the environment.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);

    // The factory: `backend:` may be left out (pkcs11 is the default) or given.
    let admin = signer_hsm::open(&config(&hsm, false), Vec::new(), 1, None).unwrap();
    let made = conformance::generates(admin.as_ref(), "conf").unwrap();

    let keys: Vec<KeySpec> = made
        .iter()
        .map(|(label, _)| KeySpec {
            name: label.clone(),
            label: Some(label.clone()),
            id: None,
        })
        .collect();
    let backend = signer_hsm::open(&config(&hsm, true), keys, 3, None).unwrap();
    for (name, generated) in &made {
        let public = conformance::signs_and_verifies(backend.as_ref(), name).unwrap();
        assert_eq!(
            &public, generated,
            "{name}: the public key read back is the one generated"
        );
        conformance::refuses_what_it_cannot_do(backend.as_ref(), name).unwrap();
    }
    let shared: Arc<dyn SigningBackend> = backend;
    conformance::signs_concurrently(Arc::clone(&shared), &made[1].0, 6, 20).unwrap();

    // An unknown backend name is a configuration error naming the choices.
    #[derive(serde::Deserialize, Debug)]
    struct Section {
        #[serde(deserialize_with = "BackendConfig::deserialize_defaulted")]
        #[allow(dead_code)]
        hsm: BackendConfig,
    }
    let err = serde_yaml::from_str::<Section>(
        "hsm: {backend: softkeys, module: /x, token: {slot: 0}, pin: {env: X}}",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("softkeys") && err.contains("pkcs11"), "{err}");
}
