use std::sync::Arc;

use super::*;
use redb::ReadableTable;

/// Opens the repository at `path` for signer `id` of the pair "a" and "b",
/// creating it the first time.
fn open(path: &Path, id: &str) -> Repository {
    let mut expected = Expected::signer(id);
    expected.peer_id = Some(if id == "a" { "b" } else { "a" }.into());
    if path.exists() {
        Repository::open(path, &expected, &OpenOptions::default()).unwrap()
    } else {
        Repository::create(path, &expected, &OpenOptions::default()).unwrap()
    }
}

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
        let repo = open(&path, "a");
        assert_eq!(
            repo.record_issuance(record("root", 1, "req-1")).unwrap(),
            Recorded::Inserted
        );
        assert_eq!(
            repo.record_issuance(record("root", 2, "req-2")).unwrap(),
            Recorded::Inserted
        );
    }
    let repo = open(&path, "a");
    assert_eq!(
        repo.find_by_request("req-1").unwrap(),
        Some(record("root", 1, "req-1"))
    );
    assert!(repo.serial_exists("root", &[0x40, 2]).unwrap());
    assert!(!repo.serial_exists("other", &[0x40, 2]).unwrap());
    assert_eq!(repo.find_by_request("nope").unwrap(), None);
    assert_eq!(repo.stats().unwrap().certificates, 2);
    assert!(repo.check().unwrap().problems.is_empty());
}

#[test]
fn a_known_request_id_returns_the_original_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(&dir.path().join("repo.redb"), "a");
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
fn a_snapshot_answers_as_the_repository_was_when_taken() {
    let dir = tempfile::tempdir().unwrap();
    let repo = open(&dir.path().join("repo.redb"), "a");
    repo.record_issuance(record("root", 1, "req-1")).unwrap();
    let before = repo.snapshot().unwrap();
    repo.record_issuance(record("root", 2, "req-2")).unwrap();
    // Both lookups of one issuance see the same state, whatever is
    // committed meanwhile; a new snapshot sees the commit.
    assert_eq!(
        before.find_by_request("req-1").unwrap(),
        Some(record("root", 1, "req-1"))
    );
    assert_eq!(before.find_by_request("req-2").unwrap(), None);
    assert!(!before.serial_exists("root", &[0x40, 2]).unwrap());
    let after = repo.snapshot().unwrap();
    assert!(after.serial_exists("root", &[0x40, 2]).unwrap());
    assert!(after.find_by_request("req-2").unwrap().is_some());
    drop((before, after));
    // Snapshots ended: the repository closes and commits as before.
    repo.record_issuance(record("root", 3, "req-3")).unwrap();
    assert_eq!(repo.stats().unwrap().certificates, 3);
}

#[test]
fn concurrent_records_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(open(&dir.path().join("repo.redb"), "a"));
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
fn backup_and_restore_reproduce_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    for i in 0..5 {
        a.record_issuance(record("root", i, &format!("req-{i}")))
            .unwrap();
    }
    assert_eq!(
        a.record_revocation(revocation("root", &[0x40, 1], 1), false)
            .unwrap(),
        Revoked::Inserted
    );
    a.audit(AuditEntry::new("command", "sign_x509", "ok"));
    a.close();
    let mut file = Vec::new();
    let taken = a.backup(&mut file).unwrap();
    assert_eq!(taken.count("certs_v1"), 5);
    assert_eq!(taken.count("revocations_v1"), 1);
    let (id, verified) = verify_backup(&mut file.as_slice()).unwrap();
    assert_eq!((id.signer_id.as_str(), &verified), ("a", &taken));

    let to = dir.path().join("restored.redb");
    let restored = Repository::restore(
        &to,
        &mut file.as_slice(),
        &Expected::signer("a"),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(restored, taken);
    let b = Repository::open(&to, &Expected::signer("a"), &OpenOptions::default()).unwrap();
    assert!(b.check().unwrap().problems.is_empty());
    assert_eq!(b.revocations("root").unwrap().len(), 1);
    assert_eq!(
        b.replica_state().unwrap().digests,
        a.replica_state().unwrap().digests
    );
    assert_ne!(
        b.replica_state().unwrap().epoch,
        a.replica_state().unwrap().epoch
    );
    // Never over an existing file, never for another signer, never from a damaged file.
    assert!(matches!(
        Repository::restore(
            &to,
            &mut file.as_slice(),
            &Expected::signer("a"),
            &OpenOptions::default()
        ),
        Err(RepoError::Refused(Refusal::Exists(_)))
    ));
    let other = dir.path().join("other.redb");
    assert!(matches!(
        Repository::restore(
            &other,
            &mut file.as_slice(),
            &Expected::signer("b"),
            &OpenOptions::default()
        ),
        Err(RepoError::Refused(Refusal::Foreign { .. }))
    ));
    assert!(!other.exists());
    // Empty, cut short anywhere, or with bytes added: refused.
    for cut in [0, 10, file.len() / 2, file.len() - 1] {
        assert!(verify_backup(&mut &file[..cut]).is_err(), "{cut}");
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(verify_backup(&mut longer.as_slice()).is_err());
    let mut flipped = file.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(verify_backup(&mut flipped.as_slice()).is_err());
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
        replaced: false,
    }
}

#[test]
fn revocations_are_idempotent_and_refuse_unknown_serials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.redb");
    {
        let repo = open(&path, "a");
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
    let repo = open(&path, "a");
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

/// Every outbox event of `from` applied to `to`, as the replicator does.
fn replicate(from: &Repository, to: &Repository, after: u64) -> ApplyReport {
    let events: Vec<(Event, u64)> = from
        .events_after(after, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(seq, bytes)| (Event::decode(&bytes).unwrap(), seq))
        .collect();
    to.apply_events(&events).unwrap()
}

#[test]
fn twins_converge_on_the_union_and_repeats_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    let b = open(&dir.path().join("b.redb"), "b");
    for i in 0..3 {
        a.record_issuance(record("root", i, &format!("a-{i}")))
            .unwrap();
    }
    let mut from_b = record("root", 0x30, "b-1");
    from_b.signer_id = "b".into();
    b.record_issuance(from_b).unwrap();
    a.record_revocation(revocation("root", &[0x40, 1], 1), false)
        .unwrap();
    // Both revoke serial 2 during a partition, with different reasons and times.
    let mut on_a = revocation("root", &[0x40, 2], 4);
    on_a.revoked_at = 1_750_000_100;
    a.record_revocation(on_a, false).unwrap();

    let to_b = replicate(&a, &b, 0);
    // The repository's creation is the first audit entry: one event more.
    assert_eq!((to_b.applied, to_b.duplicates, to_b.missing), (6, 0, 0));
    let mut on_b = revocation("root", &[0x40, 2], 5);
    on_b.signer_id = "b".into();
    on_b.revoked_at = 1_750_000_000;
    assert!(matches!(
        b.record_revocation(on_b.clone(), false).unwrap(),
        Revoked::Conflict(_)
    ));
    // Simulate the partition: b recorded its own revocation before seeing a's.
    let c = open(&dir.path().join("c.redb"), "b");
    c.record_issuance(record("root", 2, "a-2")).unwrap();
    c.record_revocation(on_b, false).unwrap();
    let to_a = replicate(&c, &a, 0);
    assert_eq!(to_a.applied, 3);
    // The earlier revocation wins on a; c applies a's and keeps its own.
    let to_c = replicate(&a, &c, 0);
    assert_eq!(to_c.conflicts, 0);
    let winner = a.revocation("root", &[0x40, 2]).unwrap().unwrap();
    assert_eq!((winner.reason, winner.replaced), (5, true));
    assert_eq!(c.revocation("root", &[0x40, 2]).unwrap().unwrap().reason, 5);
    assert_eq!(
        a.replica_state().unwrap().digests,
        c.replica_state().unwrap().digests
    );

    // Delivered again (a server restart repeats messages): nothing changes.
    let before = b.replica_state().unwrap();
    let again = replicate(&a, &b, 0);
    assert_eq!((again.applied, again.duplicates), (0, 6));
    assert_eq!(b.replica_state().unwrap(), before);
    assert_eq!(before.applied.get("a").map(|x| x.0), Some(6));
    assert!(b.check().unwrap().problems.is_empty());
    assert!(b.find_by_request("a-1").unwrap().is_some());
}

#[test]
fn a_request_id_issued_twice_is_a_reported_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    let b = open(&dir.path().join("b.redb"), "b");
    a.record_issuance(record("root", 1, "same")).unwrap();
    b.record_issuance(record("root", 0x21, "same")).unwrap();
    assert_eq!(replicate(&a, &b, 0).conflicts, 1);
    assert_eq!(replicate(&b, &a, 0).conflicts, 1);
    let found = b.conflicts().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].local.1, "4021");
    assert_eq!(found[0].remote.1, "4001");
    // Both certificates are known on both twins: the digests agree.
    assert_eq!(
        a.replica_state().unwrap().digests,
        b.replica_state().unwrap().digests
    );
    assert_eq!(a.replica_state().unwrap().conflicts, 1);
    // Two certificates under one request id, one indexed: consistent.
    for repo in [&a, &b] {
        let report = repo.check().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// Changes the closed repository at `path` outside the signer.
fn tamper(path: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

#[test]
fn check_names_every_index_entry_that_is_missing_stray_or_misdirected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let fresh = |path: &Path| {
        let _ = std::fs::remove_file(path);
        let a = open(path, "a");
        for i in 0..50 {
            a.record_issuance(record("root", i, &format!("req-{i}")))
                .unwrap();
        }
        assert!(a.check().unwrap().problems.is_empty());
        a.close();
    };
    let problems = |path: &Path| open(path, "a").check().unwrap().problems;
    let serial7 = vec![0x40u8, 7];

    fresh(&path);
    tamper(&path, |txn| {
        txn.open_table(REQUESTS).unwrap().remove("req-7").unwrap();
    });
    let found = problems(&path);
    assert!(
        found
            .iter()
            .any(|p| p.contains("request id req-7 not indexed")),
        "{found:?}"
    );

    fresh(&path);
    let not_after = record("root", 7, "req-7").not_after;
    tamper(&path, |txn| {
        let mut expiry = txn.open_table(EXPIRY).unwrap();
        expiry
            .remove((not_after, "root", serial7.as_slice()))
            .unwrap();
        expiry
            .insert((not_after, "root", [0x40u8, 99].as_slice()), ())
            .unwrap();
    });
    let found = problems(&path);
    assert!(
        found
            .iter()
            .any(|p| p.contains("root/4007: not in the expiry index")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|p| p.contains("expiry index: root/4063 has no certificate")),
        "{found:?}"
    );

    // An entry moved to another certificate: each certificate still has
    // its entries looked up, and the sums tell the difference.
    fresh(&path);
    tamper(&path, |txn| {
        let mut requests = txn.open_table(REQUESTS).unwrap();
        let entry = requests.get("req-8").unwrap().unwrap().value().to_vec();
        requests.insert("req-7", entry.as_slice()).unwrap();
    });
    let found = problems(&path);
    assert!(
        found
            .iter()
            .any(|p| p.contains("indexes: the request id and expiry indexes")),
        "{found:?}"
    );

    // A certificate gone, its entries left.
    fresh(&path);
    tamper(&path, |txn| {
        txn.open_table(CERTS)
            .unwrap()
            .remove(("root", serial7.as_slice()))
            .unwrap();
    });
    let found = problems(&path);
    assert!(
        found
            .iter()
            .any(|p| p.contains("request req-7: its certificate is missing")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|p| p.contains("set digest of root")),
        "{found:?}"
    );
}

#[test]
fn outbox_is_trimmed_and_crl_numbers_raise_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    let b = open(&dir.path().join("b.redb"), "b");
    for i in 0..4 {
        a.record_issuance(record("root", i, &format!("r-{i}")))
            .unwrap();
    }
    a.store_crl(&CrlRecord {
        issuer: "root".into(),
        number: vec![0x05, 0x00],
        this_update: 1,
        next_update: 2,
        revocation_seq: 0,
        entries: 0,
        sha256: vec![0; 32],
        der: vec![0x30, 0x00],
    })
    .unwrap();
    replicate(&a, &b, 0);
    assert_eq!(b.crl_floor("root").unwrap(), Some(vec![0x05, 0x00]));
    assert_eq!(a.trim_events(3).unwrap(), 3);
    let state = a.replica_state().unwrap();
    assert_eq!((state.own_seq, state.outbox_first), (6, Some(4)));
    assert_eq!(a.events_after(0, 10).unwrap().len(), 3);
    // Sequence numbers continue after a reopen.
    drop(a);
    let a = open(&dir.path().join("a.redb"), "a");
    a.record_issuance(record("root", 9, "r-9")).unwrap();
    assert_eq!(a.events_after(6, 10).unwrap()[0].0, 7);
}

#[test]
fn the_audit_chain_verifies_replicates_and_reports_the_first_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    let b = open(&dir.path().join("b.redb"), "b");
    a.audit(AuditEntry::new("startup", "signerd", "ok"));
    for i in 0..5 {
        a.audit(AuditEntry::new("command", "sign_x509", "ok").fact("request_id", format!("r-{i}")));
    }
    a.record_issuance(record("root", 1, "req-1")).unwrap();
    a.close();
    let head = a.audit_head().unwrap().unwrap();
    // Entry 1 records the repository's creation.
    assert_eq!(head.0, 7);
    let reports = a.audit_verify().unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].entries, reports[0].broken.clone()), (7, None));
    assert_eq!(reports[0].head.as_ref(), Some(&head));
    // Written after close: its own transaction, still chained.
    a.audit(AuditEntry::new("shutdown", "signerd", "ok"));
    assert_eq!(a.audit_head().unwrap().unwrap().0, 8);

    replicate(&a, &b, 0);
    let on_b = b.audit_verify().unwrap();
    assert_eq!(on_b.len(), 2);
    assert_eq!((on_b[1].signer_id.as_str(), on_b[1].entries), ("a", 8));
    assert!(on_b[1].broken.is_none());
    // An entry of the copy is never replaced by a different one (a chain of
    // a's started again at 1, say): refused, nothing of it applied, the
    // copy as it was.
    let state = a.replica_state().unwrap();
    let mut other = a.audit_entries(|e| e.seq == 3).unwrap().remove(0);
    other.outcome = "refused".into();
    other.hash = other.compute_hash();
    let event = Event {
        origin: "a".into(),
        seq: state.own_seq + 1,
        epoch: state.epoch,
        at_us: 1,
        change: Change::Audit(other),
    };
    let refused = b.apply_events(&[(event, 1)]).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("differs from the one already held"),
        "{refused}"
    );
    let on_b = b.audit_verify().unwrap();
    assert_eq!((on_b[1].entries, on_b[1].broken.clone()), (8, None));
    assert_eq!(b.replica_state().unwrap().applied["a"].0, state.own_seq);
    // A chain of a's started again (a's repository made anew, a new epoch):
    // the copy of the former chain is kept apart, whole, and the new one
    // copied from 1.
    let mut restart = AuditEntry::new("repository", "create", "ok");
    restart.seq = 1;
    restart.signer_id = "a".into();
    restart.prev = vec![0; 32];
    restart.hash = restart.compute_hash();
    let event = Event {
        origin: "a".into(),
        seq: 1,
        epoch: state.epoch ^ 1,
        at_us: 1,
        change: Change::Audit(restart),
    };
    b.apply_events(&[(event, 1)]).unwrap();
    let chains = b.audit_verify().unwrap();
    let shape: Vec<(String, u64, bool)> = chains
        .iter()
        .map(|c| (c.signer_id.clone(), c.entries, c.broken.is_none()))
        .collect();
    assert_eq!(shape.len(), 3, "{shape:?}");
    assert_eq!(shape[1], ("a".to_string(), 1, true), "{shape:?}");
    assert!(
        shape[2].0.starts_with("a~") && shape[2].1 == 8 && shape[2].2,
        "{shape:?}"
    );
    let found = b
        .audit_entries(|e| e.facts.get("request_id").is_some_and(|r| r == "r-3"))
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].signer_id, "a");

    // Alter entry 4's content: the chain breaks exactly there.
    {
        a.write(|txn| {
            let mut table = txn.open_table(audit::AUDIT).unwrap();
            let mut e = AuditEntry::decode(table.get(4).unwrap().unwrap().value()).unwrap();
            e.outcome = "refused".into();
            let bytes = rmp_serde::to_vec_named(&e).unwrap();
            table.insert(4, bytes.as_slice()).unwrap();
            Ok(((), true))
        })
        .unwrap();
    }
    let broken = a.audit_verify().unwrap()[0].broken.clone().unwrap();
    assert_eq!(broken.0, 4, "{broken:?}");
    assert!(broken.1.contains("altered"), "{broken:?}");
    // Remove entry 2: the link from 3 is reported missing.
    {
        a.write(|txn| {
            txn.open_table(audit::AUDIT).unwrap().remove(2).unwrap();
            Ok(((), true))
        })
        .unwrap();
    }
    let broken = a.audit_verify().unwrap()[0].broken.clone().unwrap();
    assert_eq!(broken, (3, "entries 2 to 2 are missing".to_string()));
}

fn certification(request: &str, signature: u8) -> CertificationRecord {
    CertificationRecord {
        request_id: request.into(),
        request_digest: vec![1; 32],
        fingerprint: "AB".repeat(20),
        ca_fingerprint: "CD".repeat(20),
        certifications: vec![(
            "A <a@example.org>".into(),
            serde_bytes::ByteBuf::from(vec![0xc2, signature]),
        )],
        key: vec![0x99, 0, 1],
        created_at: 1_790_000_000,
        expires_at: 1_800_000_000,
        signer_id: "a".into(),
    }
}

#[test]
fn certifications_are_kept_once_replicate_and_conflict_when_made_twice() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    let b = open(&dir.path().join("b.redb"), "b");
    assert_eq!(
        a.record_certification(certification("pgp-1", 1)).unwrap(),
        Certified::Inserted
    );
    // A second record under the same request id returns the first, unchanged.
    match a.record_certification(certification("pgp-1", 2)).unwrap() {
        Certified::Existing(original) => assert_eq!(*original, certification("pgp-1", 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.certification_count().unwrap(), 1);
    // The twin gets it; a repeat changes nothing.
    let report = replicate(&a, &b, 0);
    // The creation's audit event and the certification.
    assert_eq!((report.applied, report.conflicts), (2, 0));
    assert_eq!(
        b.find_certification("pgp-1").unwrap(),
        Some(certification("pgp-1", 1))
    );
    assert_eq!(replicate(&a, &b, 0).duplicates, 2);
    // The same request id certified on both sides during a partition: kept
    // as each side made it, reported as a conflict.
    a.record_certification(certification("pgp-2", 3)).unwrap();
    let mut on_b = certification("pgp-2", 4);
    on_b.signer_id = "b".into();
    b.record_certification(on_b).unwrap();
    assert_eq!(replicate(&a, &b, 0).conflicts, 1);
    assert_eq!(b.conflicts().unwrap()[0].request_id, "pgp-2");
    assert_eq!(
        b.find_certification("pgp-2").unwrap().unwrap().signer_id,
        "b"
    );
    drop(a);
    let a = open(&dir.path().join("a.redb"), "a");
    assert_eq!(a.certification_count().unwrap(), 2);
}

/// Seeds twin "b" (whose twin is "a") at `path` from the backup `file`.
fn seed_b(path: &Path, file: &[u8]) -> Result<BackupSummary, RepoError> {
    let mut expected = Expected::signer("b");
    expected.peer_id = Some("a".into());
    Repository::seed(path, &mut &file[..], &expected, &OpenOptions::default())
}

#[test]
fn a_replacement_twin_seeded_from_the_survivors_backup_goes_on_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    a.audit(AuditEntry::new("command", "sign_x509", "ok"));
    for i in 0..4 {
        a.record_issuance(record("root", i, &format!("req-{i}")))
            .unwrap();
    }
    a.record_revocation(revocation("root", &[0x40, 1], 1), false)
        .unwrap();
    let mut file = Vec::new();
    a.backup(&mut file).unwrap();

    let mut expected = Expected::signer("b");
    expected.peer_id = Some("a".into());
    let path = dir.path().join("b.redb");
    // Only the configured twin's backup seeds, and never over a file.
    let mut wrong = Expected::signer("b");
    wrong.peer_id = Some("c".into());
    assert!(matches!(
        Repository::seed(&path, &mut file.as_slice(), &wrong, &OpenOptions::default()),
        Err(RepoError::Refused(Refusal::Foreign { .. }))
    ));
    assert!(!path.exists());
    seed_b(&path, &file).unwrap();
    assert!(matches!(
        seed_b(&path, &file),
        Err(RepoError::Refused(Refusal::Exists(_)))
    ));
    let b = Repository::open(&path, &expected, &OpenOptions::default()).unwrap();
    assert_eq!(b.identity().signer_id, "b");
    assert_eq!(b.stats().unwrap().certificates, 4);
    assert_eq!(b.revocations("root").unwrap().len(), 1);
    assert_eq!(
        b.replica_state().unwrap().digests,
        a.replica_state().unwrap().digests
    );
    assert!(b.check().unwrap().problems.is_empty(), "{:?}", b.check());
    let chains = b.audit_verify().unwrap();
    assert_eq!(chains.len(), 2, "its own chain and a's copy");
    assert!(chains.iter().all(|c| c.broken.is_none()), "{chains:?}");
    // What a recorded before the backup is a repeat; what comes after applies.
    let seen = a.replica_state().unwrap().own_seq;
    assert_eq!(b.replica_state().unwrap().applied["a"].0, seen);
    a.record_issuance(record("root", 9, "req-9")).unwrap();
    let report = replicate(&a, &b, 0);
    assert_eq!(report.duplicates, seen);
    assert_eq!(report.applied, 1);
    assert!(b.find_by_request("req-9").unwrap().is_some());
}

#[test]
fn a_seed_takes_up_the_twins_own_former_chain_only_whole() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.redb"), "a");
    // a's copy of b's chain: entries 1 and 2, linked; then, in another
    // repository, 1 and 3 (a gap).
    let chain = |seqs: &[u64]| -> Vec<(Event, u64)> {
        let mut prev = vec![0; 32];
        let mut out = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            let mut e = AuditEntry::new("command", "sign_x509", "ok");
            e.seq = seq;
            e.signer_id = "b".into();
            e.prev = prev.clone();
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            let event = Event {
                origin: "b".into(),
                seq: i as u64 + 1,
                epoch: 7,
                at_us: 1,
                change: Change::Audit(e),
            };
            out.push((event, 1));
        }
        out
    };
    a.apply_events(&chain(&[1, 2])).unwrap();
    let mut file = Vec::new();
    a.backup(&mut file).unwrap();
    let mut expected = Expected::signer("b");
    expected.peer_id = Some("a".into());
    let path = dir.path().join("b.redb");
    seed_b(&path, &file).unwrap();
    let b = Repository::open(&path, &expected, &OpenOptions::default()).unwrap();
    // Its own chain goes on from entry 2: 1, 2, then the seed's two entries.
    let chains = b.audit_verify().unwrap();
    assert_eq!(
        (chains[0].entries, chains[0].broken.clone()),
        (4, None),
        "{chains:?}"
    );
    b.close();

    let gap = tempfile::tempdir().unwrap();
    let a = open(&gap.path().join("a.redb"), "a");
    a.apply_events(&chain(&[1, 3])).unwrap();
    let mut file = Vec::new();
    a.backup(&mut file).unwrap();
    let path = gap.path().join("b.redb");
    let refused = seed_b(&path, &file).unwrap_err();
    assert!(refused.to_string().contains("is not whole"), "{refused}");
    assert!(!path.exists(), "a refused seed leaves no file");
}

#[test]
fn the_audit_tree_covers_every_entry_and_proves_what_it_holds() {
    use signer_tlog::merkle;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let a = open(&path, "a");
    for i in 0..40 {
        a.audit(AuditEntry::new("command", "sign_x509", "ok").fact("request_id", format!("r-{i}")));
    }
    a.close();
    let (size, root) = a.audit_tree_head().unwrap();
    assert_eq!(size, 41, "the creation entry and 40 more");
    let leaves = a.audit_leaves(0, 1000).unwrap();
    assert_eq!(leaves.len(), 41);
    let tree = merkle::LeafHashes(leaves.iter().map(|l| merkle::leaf_hash(l)).collect());
    assert_eq!(merkle::root(&tree, size).unwrap(), root);
    for old in [0, 1, 7, 16, 33, 41] {
        let proof = a.audit_consistency(old, size).unwrap();
        let old_root = a.audit_root(old).unwrap();
        merkle::verify_consistency(old, size, &old_root, &root, &proof).unwrap();
    }
    let (entry, proof) = a.audit_inclusion(17, size).unwrap();
    assert_eq!(entry, leaves[17]);
    merkle::verify_inclusion(&merkle::leaf_hash(&entry), 17, size, &proof, &root).unwrap();
    assert!(matches!(
        a.audit_inclusion(41, 41),
        Err(RepoError::OutOfRange(_))
    ));
    assert!(matches!(
        a.audit_consistency(5, 42),
        Err(RepoError::OutOfRange(_))
    ));
    assert_eq!(a.audit_leaves(40, 10).unwrap().len(), 1);
    drop(a);

    // A repository whose tree is gone (written before the tree existed)
    // gets it back, whole, with the next entry.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tree::AUDIT_TREE)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        txn.commit().unwrap();
    }
    let a = open(&path, "a");
    a.audit(AuditEntry::new("startup", "signerd", "ok"));
    a.close();
    let (size2, root2) = a.audit_tree_head().unwrap();
    assert_eq!(size2, 42);
    assert_eq!(a.audit_root(41).unwrap(), root);
    assert_ne!(root2, root);
    drop(a);

    // Entries removed under the tree: refused, nothing appended.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(audit::AUDIT).unwrap().remove(42).unwrap();
        txn.commit().unwrap();
    }
    let a = open(&path, "a");
    assert!(matches!(a.audit_tree_head(), Err(RepoError::Corrupt(_))));
}

#[test]
fn a_single_signer_keeps_no_outbox_until_it_has_a_twin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("single.redb");
    let single =
        Repository::create(&path, &Expected::signer("a"), &OpenOptions::default()).unwrap();
    single.audit(AuditEntry::new("command", "sign_x509", "ok"));
    for i in 0..3 {
        single
            .record_issuance(record("root", i, &format!("req-{i}")))
            .unwrap();
    }
    single
        .record_revocation(revocation("root", &[0x40, 1], 1), false)
        .unwrap();
    assert_eq!(single.replica_state().unwrap().own_seq, 0);
    assert!(single.events_after(0, 100).unwrap().is_empty());
    assert!(single.check().unwrap().problems.is_empty());
    // Its backup cannot seed a twin: what it recorded went to no outbox.
    let mut file = Vec::new();
    single.backup(&mut file).unwrap();
    single.close();
    drop(single);
    let mut b = Expected::signer("b");
    b.peer_id = Some("a".into());
    let refused = Repository::seed(
        &dir.path().join("b.redb"),
        &mut file.as_slice(),
        &b,
        &OpenOptions::default(),
    );
    assert!(
        matches!(&refused, Err(RepoError::Refused(Refusal::Foreign { why, .. })) if why.contains("before it was configured")),
        "{refused:?}"
    );
    // Configured with a twin, everything it recorded alone goes to the
    // outbox first, then the binding's audit entry, then what follows.
    let mut paired = Expected::signer("a");
    paired.peer_id = Some("b".into());
    let a = Repository::open(&path, &paired, &OpenOptions::default()).unwrap();
    let alone = 2 + 3 + 1; // audit entries (create, sign_x509), certificates, revocation
    assert_eq!(a.replica_state().unwrap().own_seq, alone + 1);
    a.record_issuance(record("root", 7, "req-7")).unwrap();
    let events = a.events_after(0, 100).unwrap();
    assert_eq!(events.len() as u64, alone + 2);
    assert_eq!(events[0].0, 1);
    // Reopened, nothing is sent twice.
    a.close();
    drop(a);
    let a = Repository::open(&path, &paired, &OpenOptions::default()).unwrap();
    assert_eq!(a.replica_state().unwrap().own_seq, alone + 2);
    // A twin that applies them holds the same sets and all of a's chain.
    let twin = open(&dir.path().join("twin.redb"), "b");
    let report = replicate(&a, &twin, 0);
    assert_eq!(report.applied, alone + 2, "{report:?}");
    assert_eq!(
        twin.replica_state().unwrap().digests,
        a.replica_state().unwrap().digests
    );
    let chains = twin.audit_verify().unwrap();
    assert!(
        chains
            .iter()
            .any(|c| c.signer_id == "a" && c.entries == 3 && c.broken.is_none()),
        "{chains:?}"
    );
    assert!(twin.check().unwrap().problems.is_empty());
    let mut file = Vec::new();
    a.backup(&mut file).unwrap();
    Repository::seed(
        &dir.path().join("b.redb"),
        &mut file.as_slice(),
        &b,
        &OpenOptions::default(),
    )
    .unwrap();
}

fn crl_of(size: usize, number: u8) -> CrlRecord {
    use sha2::Digest;
    let der: Vec<u8> = (0..size)
        .map(|i| (i * 7 + usize::from(number)) as u8)
        .collect();
    CrlRecord {
        issuer: "root".into(),
        number: vec![number],
        this_update: 1,
        next_update: 2,
        revocation_seq: 0,
        entries: 0,
        sha256: sha2::Sha256::digest(&der).to_vec(),
        der,
    }
}

#[test]
fn a_large_crl_is_stored_in_parts_read_whole_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let a = open(&path, "a");
    a.store_crl(&crl_of(300_000, 1)).unwrap();
    // A smaller one replaces every part of the larger.
    let small = crl_of(70_000, 2);
    a.store_crl(&small).unwrap();
    assert_eq!(a.last_crl("root").unwrap(), Some(small.clone()));
    assert!(a.check().unwrap().problems.is_empty());
    let big = crl_of(300_000, 3);
    a.store_crl(&big).unwrap();
    assert_eq!(a.last_crl("root").unwrap(), Some(big));
    a.close();
    drop(a);

    // A byte flipped in a part, a part lost: refused and named.
    for damage in 0..2 {
        let copy = dir.path().join(format!("damaged-{damage}.redb"));
        std::fs::copy(&path, &copy).unwrap();
        tamper(&copy, |txn| {
            let mut parts = txn.open_table(crls::CRL_DER).unwrap();
            if damage == 0 {
                let mut v = parts.get(("root", 2)).unwrap().unwrap().value().to_vec();
                v[100] ^= 1;
                parts.insert(("root", 2), v.as_slice()).unwrap();
            } else {
                parts.remove(("root", 1)).unwrap();
            }
        });
        let a = open(&copy, "a");
        assert!(
            matches!(a.last_crl("root"), Err(RepoError::Corrupt(_))),
            "{damage}"
        );
        let found = a.check().unwrap().problems;
        assert!(
            found.iter().any(|p| p.contains("latest CRL of root")),
            "{found:?}"
        );
    }

    // A record written whole, before parts, is still read.
    tamper(&path, |txn| {
        let old = crl_of(1000, 9);
        txn.open_table(schema::CRLS)
            .unwrap()
            .insert("root", sealed::seal("crls_v1", &old).unwrap().as_slice())
            .unwrap();
        txn.open_table(crls::CRL_DER)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
    });
    let a = open(&path, "a");
    assert_eq!(a.last_crl("root").unwrap(), Some(crl_of(1000, 9)));
}

#[test]
fn the_outbox_names_records_and_sends_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let a = open(&path, "a");
    let mut cert = record("root", 1, "req-1");
    cert.der = (0..1500u32).map(|i| i as u8).collect();
    a.record_issuance(cert.clone()).unwrap();
    a.audit(AuditEntry::new("command", "sign_x509", "ok").fact("serial", "01"));
    a.close();
    // Each event reads as the whole change, its bytes as `Event::encode`
    // of it would decode.
    let events = a.events_after(0, 100).unwrap();
    let decoded: Vec<Event> = events
        .iter()
        .map(|(_, b)| Event::decode(b).unwrap())
        .collect();
    assert!(decoded.iter().all(|e| e.origin == "a" && e.epoch != 0));
    assert!(decoded.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(decoded
        .iter()
        .any(|e| matches!(&e.change, Change::Issued(r) if *r == cert)));
    let audited = decoded
        .iter()
        .find_map(|e| match &e.change {
            Change::Audit(entry) if entry.kind == "command" => Some(entry.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(audited.facts.get("serial").map(String::as_str), Some("01"));
    for (e, (_, bytes)) in decoded.iter().zip(&events) {
        assert_eq!(
            Event::decode(&e.encode().unwrap()).unwrap(),
            Event::decode(bytes).unwrap()
        );
    }
    // The outbox holds no second copy of the certificate.
    {
        let stored: usize = a
            .read(|txn| {
                let t = txn.open_table(outbox::EVENTS).map_err(storage)?;
                let mut n = 0;
                for item in t.iter().map_err(storage)? {
                    n += item.map_err(storage)?.1.value().len();
                }
                Ok(n)
            })
            .unwrap();
        assert!(stored < 1000, "{stored} bytes in the outbox");
    }
    drop(a);
    // A named record that is gone: refused when sent, named by the check.
    tamper(&path, |txn| {
        txn.open_table(schema::CERTS)
            .unwrap()
            .remove(("root", [0x40u8, 1].as_slice()))
            .unwrap();
    });
    let a = open(&path, "a");
    let refused = a.events_after(0, 100);
    assert!(
        matches!(&refused, Err(RepoError::Corrupt(why)) if why.contains("names certificate root/4001")),
        "{refused:?}"
    );
    let problems = a.check().unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("names certificate root/4001")),
        "{problems:?}"
    );
}

#[test]
fn group_commits_number_the_outbox_without_gaps_or_repeats() {
    // Many certificates and audit entries committed together (the outbox
    // opened once per group commit), revocations between them (each in a
    // transaction of its own): every change once, numbered 1, 2, … in
    // commit order, across a reopening.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let a = std::sync::Arc::new(open(&path, "a"));
    let before = a.events_after(0, 100_000).unwrap().len();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let a = std::sync::Arc::clone(&a);
            std::thread::spawn(move || {
                for i in 0..50u8 {
                    let serial = t * 50 + i + 1;
                    let mut cert = record("root", 0, &format!("req-{t}-{i}"));
                    cert.serial = vec![0x40, serial];
                    a.record_issuance(cert).unwrap();
                    a.audit(AuditEntry::new("command", "sign_x509", "ok"));
                    if i % 10 == 0 {
                        a.record_revocation(revocation("root", &[0x40, serial], 1), false)
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Audit entries are queued, not waited for: one more certificate
    // (committed after them) makes sure they are written.
    a.record_issuance(record("other", 1, "req-last")).unwrap();
    let check = |repo: &Repository| {
        let events: Vec<Event> = repo
            .events_after(0, 100_000)
            .unwrap()
            .iter()
            .map(|(seq, b)| {
                let e = Event::decode(b).unwrap();
                assert_eq!(e.seq, *seq);
                e
            })
            .collect();
        assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let count = |f: fn(&Change) -> bool| events.iter().filter(|e| f(&e.change)).count();
        assert_eq!(
            count(|c| matches!(c, Change::Issued(r) if r.issuer == "root")),
            200
        );
        assert_eq!(count(|c| matches!(c, Change::Revoked(_))), 20);
        assert_eq!(
            count(|c| matches!(c, Change::Audit(e) if e.kind == "command")),
            200
        );
        let mut serials: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|e| match &e.change {
                Change::Issued(r) if r.issuer == "root" => Some(r.serial.clone()),
                _ => None,
            })
            .collect();
        serials.sort();
        serials.dedup();
        assert_eq!(serials.len(), 200);
        events.len()
    };
    let n = check(&a);
    assert_eq!(n, before + 421);
    std::sync::Arc::into_inner(a).unwrap().close();
    let a = open(&path, "a");
    assert_eq!(check(&a), n);
    // The next change continues the sequence.
    a.record_issuance(record("other", 2, "req-next")).unwrap();
    let last = a.events_after(0, 100_000).unwrap().last().unwrap().0;
    assert_eq!(last, n as u64 + 1);
}
