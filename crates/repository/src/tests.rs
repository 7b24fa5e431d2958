use std::sync::Arc;

use super::*;

fn record(issuer: &str, serial: u8, request: &str) -> CertRecord {
    CertRecord {
        issuer: issuer.into(),
        serial: vec![0x40, serial],
        der: vec![0x30, 0x03, 0x02, 0x01, serial],
        profile: "server".into(),
        request_id: request.into(),
        request_digest: vec![serial; 32],
        subject: format!("CN=host{serial}"),
        not_before: 1_700_000_000,
        not_after: 1_800_000_000 + i64::from(serial),
        issued_at_ms: 1_700_000_000_000,
        signer_id: "a".into(),
    }
}

#[test]
fn records_survive_reopening_and_are_found_by_request_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.redb");
    {
        let repo = Repository::open(&path).unwrap();
        assert_eq!(
            repo.record_issuance(record("root", 1, "req-1")).unwrap(),
            Recorded::Inserted
        );
        assert_eq!(
            repo.record_issuance(record("root", 2, "req-2")).unwrap(),
            Recorded::Inserted
        );
    }
    let repo = Repository::open(&path).unwrap();
    assert_eq!(
        repo.find_by_request("req-1").unwrap(),
        Some(record("root", 1, "req-1"))
    );
    assert!(repo.serial_exists("root", &[0x40, 2]).unwrap());
    assert!(!repo.serial_exists("other", &[0x40, 2]).unwrap());
    assert_eq!(repo.find_by_request("nope").unwrap(), None);
    assert_eq!(repo.stats().unwrap().certificates, 2);
    assert!(repo.check().unwrap().is_empty());
}

#[test]
fn a_known_request_id_returns_the_original_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(&dir.path().join("repo.redb")).unwrap();
    repo.record_issuance(record("root", 1, "req-1")).unwrap();
    let again = repo.record_issuance(record("root", 9, "req-1")).unwrap();
    assert_eq!(
        again,
        Recorded::Existing(Box::new(record("root", 1, "req-1")))
    );
    assert!(!repo.serial_exists("root", &[0x40, 9]).unwrap());
    let clash = repo.record_issuance(record("root", 1, "req-other"));
    assert!(matches!(clash, Err(RepoError::SerialTaken { .. })));
    assert!(repo.find_by_request("req-other").unwrap().is_none());
}

#[test]
fn concurrent_records_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repository::open(&dir.path().join("repo.redb")).unwrap());
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let repo = Arc::clone(&repo);
            std::thread::spawn(move || {
                for i in 0..25u8 {
                    let n = t * 25 + i;
                    let mut r = record("root", n, &format!("req-{n}"));
                    r.serial = vec![0x40, t, i];
                    assert_eq!(repo.record_issuance(r).unwrap(), Recorded::Inserted);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = repo.stats().unwrap();
    assert_eq!((stats.certificates, stats.committed_records), (200, 200));
    assert!(
        stats.commits < 200,
        "group commit batched {} commits for 200 records",
        stats.commits
    );
}

#[test]
fn export_and_import_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = Repository::open(&dir.path().join("a.redb")).unwrap();
    for i in 0..5 {
        a.record_issuance(record("root", i, &format!("req-{i}")))
            .unwrap();
    }
    let mut dump = Vec::new();
    assert_eq!(a.export(&mut dump).unwrap(), 5);
    let b = Repository::open(&dir.path().join("b.redb")).unwrap();
    b.record_issuance(record("root", 0, "req-0")).unwrap();
    assert_eq!(b.import(&mut dump.as_slice()).unwrap(), (4, 1));
    let mut again = Vec::new();
    b.export(&mut again).unwrap();
    assert_eq!(again, dump);
    let bad = b"{\"issuer\": 1}\n";
    assert!(matches!(
        b.import(&mut &bad[..]),
        Err(RepoError::Import { line: 1, .. })
    ));
}

fn revocation(issuer: &str, serial: &[u8], reason: u8) -> RevocationRecord {
    RevocationRecord {
        issuer: issuer.into(),
        serial: serial.to_vec(),
        reason,
        revoked_at: 1_750_000_000,
        invalidity_date: None,
        request_id: "rev-1".into(),
        legacy: false,
        signer_id: "a".into(),
        cert_not_after: None,
        seq: 0,
    }
}

#[test]
fn revocations_are_idempotent_and_refuse_unknown_serials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.redb");
    {
        let repo = Repository::open(&path).unwrap();
        repo.record_issuance(record("root", 1, "req-1")).unwrap();
        let serial = [0x40, 1];
        assert_eq!(
            repo.record_revocation(revocation("root", &serial, 1), false)
                .unwrap(),
            Revoked::Inserted
        );
        let again = repo
            .record_revocation(revocation("root", &serial, 1), false)
            .unwrap();
        let expected = RevocationRecord {
            cert_not_after: Some(1_800_000_001),
            seq: 1,
            ..revocation("root", &serial, 1)
        };
        assert_eq!(again, Revoked::Existing(Box::new(expected)));
        assert!(matches!(
            repo.record_revocation(revocation("root", &serial, 4), false)
                .unwrap(),
            Revoked::Conflict(_)
        ));
        assert_eq!(
            repo.record_revocation(revocation("root", &[0x41], 1), false)
                .unwrap(),
            Revoked::UnknownSerial
        );
        assert_eq!(
            repo.record_revocation(revocation("root", &[0x41], 1), true)
                .unwrap(),
            Revoked::Inserted
        );
    }
    let repo = Repository::open(&path).unwrap();
    let all = repo.revocations("root").unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|r| r.serial == [0x41] && r.legacy));
    assert!(repo.revocations("other").unwrap().is_empty());
    // Numeric order: the 1-octet serial 0x41 sorts before the 2-octet 0x4001.
    assert_eq!(all[0].serial, [0x41]);
    assert_eq!(repo.revocation_seq("root").unwrap(), 2);
    assert_eq!(
        repo.revocation("root", &[0x40, 1]).unwrap().unwrap().reason,
        1
    );
}
