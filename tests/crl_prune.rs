//! Entries of certificates that expired longer ago than the grace period
//! leave the CRL, and a difference removes them. Runs the CA service in
//! process (SoftHSM2 reads SOFTHSM2_CONF once per process: one test here).

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use signer_protocol::{msg, Command};
use signer_repository::RevocationRecord;
use signer_testsupport::ca::Ceremony;

fn revocation(serial: u8, cert_not_after: Option<i64>) -> RevocationRecord {
    RevocationRecord {
        issuer: "sub".into(),
        serial: vec![0x30, serial],
        reason: 1,
        revoked_at: 1_700_000_000,
        invalidity_date: None,
        request_id: format!("r{serial}"),
        legacy: false,
        signer_id: "t".into(),
        cert_not_after,
        seq: 0,
        replaced: false,
    }
}

#[test]
fn expired_entries_leave_the_crl_after_the_grace_period() {
    let c = Ceremony::new(
        "p256",
        "  crl: {next_update_hours: 48, refresh_hours: 1, expired_grace_days: 30}\n",
    );
    std::env::set_var("SOFTHSM2_CONF", &c.hsm.conf);
    let yaml = std::fs::read_to_string(c.dir().join("setup.yaml")).unwrap();
    let config =
        signer_server::Config::<signer_ca::CaConfig>::parse(&yaml, &c.dir().join("setup.yaml"))
            .unwrap();
    let service =
        signer_ca::CaService::start(config.ca.as_ref().unwrap(), "test-signer", 1).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let day = 86_400;
    service
        .repository()
        .record_revocations(vec![
            revocation(1, Some(now - 40 * day)), // expired beyond the grace period: not listed
            revocation(2, Some(now - 10 * day)), // expired within the grace period: listed
            revocation(3, Some(now + 10 * day)), // valid: listed
            revocation(4, None),                 // legacy, expiry unknown: listed
        ])
        .unwrap();
    let ctx = signer_service::CallContext {
        envelope_id: 1,
        command: Command::FETCH_CRL,
    };
    let fetch = |have: Option<&msg::FetchCrlReply>| {
        service
            .fetch_crl(
                &ctx,
                msg::FetchCrl {
                    issuer: "sub".into(),
                    have_number: have.map(|h| h.number.clone()),
                    have_sha256: have.map(|h| h.sha256.clone()),
                    shard: None,
                },
            )
            .unwrap()
    };
    let first = fetch(None);
    assert_eq!(first.entries, 3);
    let (_, entries) = signer_x509::crl::parse(first.crl.as_ref().unwrap()).unwrap();
    let serials: Vec<u8> = entries.iter().map(|e| e.serial[1]).collect();
    assert_eq!(serials, [2, 3, 4]);
    let again = fetch(Some(&first));
    assert!(again.unchanged);
}
