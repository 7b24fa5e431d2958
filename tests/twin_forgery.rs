//! The twin link in hostile hands. The nats-servers run as shipped
//! (configs/nats-server.conf): nothing gets in without an nkey, and the
//! twin's nkey cannot publish or read this signer's events. Then an
//! attacker with this signer's own NATS credentials on A's nats-server
//! (where B reads A's stream) publishes forged, altered and replayed events
//! and a forged seal. B applies only what A's replication key sealed: its
//! CRL and request ids stay as A made them, the twins converge, and B's
//! health names what it refused.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use signer_client::{Calls, Client};
use signer_protocol::{calls, msg};
use signer_repository::{Change, Event, RevocationRecord};
use signer_testsupport::ca::{full_crl, make_csr, sign_request, SERVER_PROFILE};
use signer_testsupport::twins::{checks, Twins};

const SYNC: Duration = Duration::from_secs(90);

/// Anything a NATS connection runs over: TCP, then TLS.
trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Just enough of the NATS client protocol (with TLS) to publish and listen.
struct Nats {
    tcp: TcpStream,
    io: BufReader<Box<dyn Stream>>,
}

impl Nats {
    /// Connects over TLS trusting only the certificate in `pinned` (or in
    /// clear without it), with the nkey whose seed is in `seed_file` (or
    /// none); the server's refusal as `Err`.
    fn try_connect(
        port: u16,
        pinned: Option<&Path>,
        seed_file: Option<&Path>,
    ) -> Result<Nats, String> {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // INFO comes in clear, before any TLS (nats-server 2.9).
        let mut info = Vec::new();
        let mut byte = [0u8; 1];
        while !info.ends_with(b"\n") {
            tcp.read_exact(&mut byte).unwrap();
            info.push(byte[0]);
        }
        let info = String::from_utf8(info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let info: serde_json::Value =
            serde_json::from_str(info.trim_start_matches("INFO").trim()).unwrap();
        let stream: Box<dyn Stream> = match pinned {
            Some(cert) => {
                let config = signer_replication::tls::PinnedServer::read(cert)
                    .unwrap()
                    .client_config()
                    .unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                let mut conn =
                    rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
                let mut sock = tcp.try_clone().unwrap();
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock)
                        .map_err(|e| format!("TLS handshake: {e}"))?;
                }
                Box::new(rustls::StreamOwned::new(conn, sock))
            }
            None => Box::new(tcp.try_clone().unwrap()),
        };
        let mut n = Nats {
            io: BufReader::new(stream),
            tcp,
        };
        let auth = match seed_file {
            Some(file) => {
                let nonce = info["nonce"].as_str().unwrap();
                let pair = nkeys::KeyPair::from_seed(std::fs::read_to_string(file).unwrap().trim())
                    .unwrap();
                let sig = pair.sign(nonce.as_bytes()).unwrap();
                use base64::Engine as _;
                format!(
                    ",\"nkey\":\"{}\",\"sig\":\"{}\"",
                    pair.public_key(),
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
                )
            }
            None => String::new(),
        };
        n.send(
            format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true{auth}}}\r\nPING\r\n")
                .as_bytes(),
        );
        loop {
            let mut line = String::new();
            if n.io.read_line(&mut line).unwrap_or(0) == 0 {
                return Err("connection closed".into());
            }
            if line.starts_with("PONG") {
                return Ok(n);
            }
            if line.starts_with("-ERR") {
                return Err(line);
            }
        }
    }

    fn connect(port: u16, pinned: &Path, seed_file: &Path) -> Nats {
        Nats::try_connect(port, Some(pinned), Some(seed_file)).unwrap()
    }

    /// The next `-ERR` the server sends (after a refused operation).
    fn error(&mut self) -> String {
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).unwrap_or(0) == 0 {
                return "connection closed".into();
            }
            if line.starts_with("-ERR") {
                return line;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let io = self.io.get_mut();
        io.write_all(bytes).unwrap();
        io.flush().unwrap();
    }

    fn publish(&mut self, subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
        let mut hdr = String::from("NATS/1.0\r\n");
        for (k, v) in headers {
            hdr.push_str(&format!("{k}: {v}\r\n"));
        }
        hdr.push_str("\r\n");
        let mut frame = format!(
            "HPUB {subject} {} {}\r\n{hdr}",
            hdr.len(),
            hdr.len() + payload.len()
        )
        .into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\nPING\r\n");
        self.send(&frame);
    }

    fn subscribe(&mut self, subject: &str) {
        self.send(format!("SUB {subject} 1\r\n").as_bytes());
    }

    /// The next message: (headers text, payload); `None` after two quiet seconds.
    fn next(&mut self) -> Option<(String, Vec<u8>)> {
        self.tcp
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        loop {
            let mut line = String::new();
            if self.io.read_line(&mut line).is_err() {
                return None;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("PING") => self.send(b"PONG\r\n"),
                Some("HMSG") => {
                    let total: usize = words[words.len() - 1].parse().unwrap();
                    let hdr: usize = words[words.len() - 2].parse().unwrap();
                    let mut buf = vec![0; total + 2];
                    self.io.read_exact(&mut buf).unwrap();
                    let headers = String::from_utf8_lossy(&buf[..hdr]).to_string();
                    return Some((headers, buf[hdr..total].to_vec()));
                }
                Some("MSG") => {
                    let total: usize = words[words.len() - 1].parse().unwrap();
                    let mut buf = vec![0; total + 2];
                    self.io.read_exact(&mut buf).unwrap();
                    return Some((String::new(), buf[..total].to_vec()));
                }
                _ => {}
            }
        }
    }
}

fn sign(client: &Client, d: &Path, id: &str) -> msg::SignX509Reply {
    let csr = make_csr(d, id, &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    client
        .request::<calls::SignX509>(&sign_request(id, csr, &format!("{id}.example.org")))
        .unwrap_or_else(|e| panic!("sign {id}: {e}"))
}

fn crl_entries(client: &Client) -> u64 {
    client
        .request::<calls::FetchCrl>(&full_crl("sub"))
        .unwrap()
        .entries
}

fn refused(client: &Client) -> (msg::HealthStatus, String) {
    checks(client)
        .get("replication:authentication")
        .cloned()
        .unwrap_or((msg::HealthStatus::Ok, String::new()))
}

fn wait_refused(client: &Client, words: &str) -> String {
    let until = Instant::now() + SYNC;
    loop {
        let (status, detail) = refused(client);
        if status == msg::HealthStatus::Failing && detail.contains(words) {
            return detail;
        }
        assert!(Instant::now() < until, "never refused {words:?}: {detail}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn forged_altered_and_replayed_events_never_change_the_twin() {
    let t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let (a, b) = (t.a.client(), t.b.client());
    let subject = "signer.signer-a.events";
    let seed_a = d.join("replication-a.seed");
    let seed_b = t.dir_b().join("replication-b.seed");

    let (tls_a, tls_b) = (
        d.join("signer-a.nats.crt"),
        t.dir_b().join("signer-b.nats.crt"),
    );
    // Without credentials, neither server lets anyone in.
    for (port, tls) in [(t.nats_a.port, &tls_a), (t.nats_b.port, &tls_b)] {
        let refused = Nats::try_connect(port, Some(tls), None).err().unwrap();
        assert!(refused.contains("Authorization Violation"), "{refused}");
        // Nor in clear, even with credentials: the cable carries only TLS.
        let refused = Nats::try_connect(port, None, Some(&seed_a)).err().unwrap();
        assert!(
            refused.contains("TLS Required") || refused.contains("closed"),
            "{refused}"
        );
    }
    // A server that is not the one pinned is not trusted: B's server seen
    // by a client pinning A's certificate (as signer-b's peer connection
    // would see a stand-in for A's server on the cable).
    let stand_in = Nats::try_connect(t.nats_b.port, Some(&tls_a), Some(&seed_a))
        .err()
        .unwrap();
    assert!(stand_in.contains("TLS handshake"), "{stand_in}");
    // The twin's credentials cannot publish this signer's events.
    let mut twin = Nats::connect(t.nats_a.port, &tls_a, &seed_b);
    twin.publish(subject, &[], b"x");
    let err = twin.error();
    assert!(err.contains("Permissions Violation"), "{err}");
    // Nor subscribe to them.
    let mut twin = Nats::connect(t.nats_a.port, &tls_a, &seed_b);
    twin.subscribe(subject);
    let err = twin.error();
    assert!(err.contains("Permissions Violation"), "{err}");

    // An attacker holding this signer's own NATS credentials.
    let mut attacker = Nats::connect(t.nats_a.port, &tls_a, &seed_a);

    // A real certificate, seen by the attacker on the server (confidentiality is the
    // cable's TLS's business, integrity the seals').
    let victim = sign(&a, &d, "victim");
    t.wait_in_sync(&a, &b, 1, SYNC).unwrap();
    // A's epoch and last sequence number, as A tells its twin.
    let mut asker = Nats::connect(t.nats_a.port, &tls_a, &seed_b);
    asker.subscribe("_INBOX.forgery");
    asker.send(b"PUB signer.signer-a.state _INBOX.forgery 4\r\nabcd\r\n");
    let (_, answer) = asker.next().unwrap();
    // Signed with A's replication key over the asker's nonce.
    let a_key = signer_keys::PublicKey::from_pem(
        &std::fs::read_to_string(d.join("replication-a.pem")).unwrap(),
    )
    .unwrap();
    assert!(signer_replication::seal::SignedState::open(&answer, b"abce", &a_key).is_err());
    let state = signer_replication::seal::SignedState::open(&answer, b"abcd", &a_key).unwrap();
    let state: signer_replication::PeerState = rmp_serde::from_slice(&state).unwrap();
    let head = state.state.own_seq;
    // The victim's issuance, as an event (what a replay would carry).
    let real = Event {
        origin: "signer-a".into(),
        seq: 1,
        epoch: state.state.epoch,
        at_us: 1,
        change: Change::Issued(signer_repository::CertRecord {
            issuer: victim.issuer.clone(),
            serial: victim.serial.clone(),
            der: victim.certificate.clone(),
            profile: "server".into(),
            request_id: "victim".into(),
            request_digest: vec![0; 32],
            subject: "CN=victim.example.org".into(),
            not_before: victim.not_before,
            not_after: victim.not_after,
            issued_at_ms: victim.not_before * 1000,
            signer_id: "signer-a".into(),
        }),
    };
    assert_eq!(refused(&b).0, msg::HealthStatus::Ok);

    // 1. A forged revocation of the victim with A's epoch and A's next
    //    sequence number, ahead of the real event with that number.
    let forged_revocation = Event {
        origin: "signer-a".into(),
        seq: head + 1,
        epoch: real.epoch,
        at_us: real.at_us + 1,
        change: Change::Revoked(RevocationRecord {
            issuer: "sub".into(),
            serial: victim.serial.clone(),
            reason: 1,
            revoked_at: 1_800_000_000,
            invalidity_date: None,
            request_id: "forged".into(),
            legacy: false,
            signer_id: "signer-a".into(),
            cert_not_after: None,
            seq: 0,
            replaced: false,
        }),
    };
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-1")],
        &forged_revocation.encode().unwrap(),
    );
    // 2. A real event replayed under the next number but one.
    let mut replayed = real.clone();
    replayed.seq = head + 2;
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-2")],
        &replayed.encode().unwrap(),
    );
    // 3. A forged issuance under an invented epoch, poisoning a request id.
    let mut poison = real.clone();
    poison.epoch ^= 0x5a5a_5a5a;
    poison.seq = 1;
    if let Change::Issued(r) = &mut poison.change {
        r.request_id = "poisoned".into();
        r.serial = vec![0x21, 0x66, 0x66];
    }
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-3")],
        &poison.encode().unwrap(),
    );

    // The real events with those numbers, and their seals.
    sign(&a, &d, "second");
    sign(&a, &d, "third");
    let detail = wait_refused(&b, "differs from the event the twin sealed");
    t.wait_in_sync(&a, &b, 3, SYNC).unwrap();
    assert_eq!(
        crl_entries(&b),
        0,
        "the forged revocation never reached B's CRL: {detail}"
    );
    // The poisoned request id is free on B: a real request gets a new certificate.
    let fresh = sign(&b, &d, "poisoned");
    assert!(!fresh.replayed);
    assert_ne!(fresh.serial, vec![0x21, 0x66, 0x66]);

    // 4. A forged seal: signed with nothing A holds.
    let seal = signer_replication::Seal {
        body: signer_replication::seal::SealBody {
            origin: "signer-a".into(),
            epoch: real.epoch,
            first: head + 3,
            digests: vec![serde_bytes::ByteBuf::from(vec![0u8; 32])],
        },
        signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    };
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-seal"), ("Signer-Kind", "seal")],
        &seal.encode(),
    );
    wait_refused(&b, "seal of events");
    // A seal in someone else's name, and bytes that are no event at all.
    let mut elsewhere = seal.clone();
    elsewhere.body.origin = "signer-b".into();
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "foreign-seal"), ("Signer-Kind", "seal")],
        &elsewhere.encode(),
    );
    wait_refused(&b, "names origin \"signer-b\"");
    attacker.publish(subject, &[("Nats-Msg-Id", "garbage")], b"\xc1 not an event");
    wait_refused(&b, "undecodable event");
    // A batch (a round's events and its seal in one message, as a signer
    // publishes them) under the forged seal, and one that is no batch.
    let mut forged_batch_seal = seal.clone();
    forged_batch_seal.body.first = head + 3;
    let mut ahead_of_a = forged_revocation.clone();
    ahead_of_a.seq = head + 3;
    let forged_bytes = ahead_of_a.encode().unwrap();
    forged_batch_seal.body.digests = vec![serde_bytes::ByteBuf::from(
        signer_replication::seal::event_digest(&forged_bytes).to_vec(),
    )];
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-batch"), ("Signer-Kind", "batch")],
        &signer_replication::seal::Batch::encode(&forged_batch_seal, &[(head + 3, forged_bytes)]),
    );
    wait_refused(&b, &format!("seal of events {}..{}", head + 3, head + 3));
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "garbage-batch"), ("Signer-Kind", "batch")],
        b"\x92\x01",
    );
    wait_refused(&b, "unreadable batch");
    // The same compressed, as a signer publishes rounds to a twin that
    // reads them (`batch-lz4`): expanded, then judged as any batch; and a
    // bomb that claims more than a round can be, refused unexpanded.
    attacker.publish(
        subject,
        &[
            ("Nats-Msg-Id", "forged-batch-lz4"),
            ("Signer-Kind", "batch-lz4"),
        ],
        &signer_replication::seal::Batch::compress(&signer_replication::seal::Batch::encode(
            &forged_batch_seal,
            &[(head + 3, ahead_of_a.encode().unwrap())],
        )),
    );
    wait_refused(&b, &format!("seal of events {}..{}", head + 3, head + 3));
    let mut bomb = (1u32 << 30).to_le_bytes().to_vec();
    bomb.extend_from_slice(&[0x1f, 0, 1, 0, 0xff, 0xff, 0xff, 0xff]);
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "bomb-lz4"), ("Signer-Kind", "batch-lz4")],
        &bomb,
    );
    wait_refused(&b, "claiming 1073741824 bytes");
    // 5. The real revocation still applies, once, with A's reason.
    let revoked = a
        .request::<calls::RevokeX509>(&msg::RevokeX509 {
            request_id: "rev-victim".into(),
            issuer: "sub".into(),
            serial: victim.serial.clone(),
            reason: 4,
            invalidity_date: None,
        })
        .unwrap();
    assert_eq!(revoked.reason, 4);
    t.wait_in_sync(&a, &b, 4, SYNC).unwrap();
    // A's real rounds went compressed: B's signed state says it reads them.
    let publish = checks(&a)["replication:publish"].1.clone();
    assert!(publish.contains("rounds compressed (lz4)"), "{publish}");
    let on_b = b.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    assert_eq!(on_b.entries, 1);
    let on_a = a.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    assert_eq!(on_a.entries, 1);
    let (status, detail) = refused(&b);
    assert_eq!(status, msg::HealthStatus::Failing, "{detail}");

    // 6. A forged event for A's next number while A is idle: B holds it
    //    without a seal; past held_warning_secs (3 s in these twins) its
    //    apply check turns degraded, then failing, naming the event; A's
    //    real event with that number is applied and the forgery refused.
    // A's last number once A is quiet (its audit entries are written just
    // after the answers they record).
    let mut own_seq = |nonce: &[u8; 4]| {
        asker.send(
            &[
                b"PUB signer.signer-a.state _INBOX.forgery 4\r\n".as_slice(),
                nonce,
                b"\r\n",
            ]
            .concat(),
        );
        let (_, answer) = asker.next().unwrap();
        let state = signer_replication::seal::SignedState::open(&answer, nonce, &a_key).unwrap();
        rmp_serde::from_slice::<signer_replication::PeerState>(&state)
            .unwrap()
            .state
            .own_seq
    };
    let mut last = own_seq(b"q000");
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = own_seq(b"q001");
        if now == last {
            break;
        }
        last = now;
    }
    let next = last + 1;
    let mut ahead = forged_revocation.clone();
    ahead.seq = next;
    attacker.publish(
        subject,
        &[("Nats-Msg-Id", "forged-ahead")],
        &ahead.encode().unwrap(),
    );
    let until = Instant::now() + SYNC;
    loop {
        let apply = checks(&b)["replication:apply"].clone();
        if apply.0 == msg::HealthStatus::Failing {
            assert!(
                apply
                    .1
                    .contains(&format!("for the twin's seal of event {next} ")),
                "{apply:?}"
            );
            break;
        }
        assert!(Instant::now() < until, "never failing: {apply:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    sign(&a, &d, "after-idle");
    t.wait_in_sync(&a, &b, 5, SYNC).unwrap();
    assert_eq!(checks(&b)["replication:apply"].0, msg::HealthStatus::Ok);
    assert_eq!(
        b.request::<calls::FetchCrl>(&full_crl("sub"))
            .unwrap()
            .entries,
        1
    );
    let log = t.b.daemon.log();
    assert!(
        log.contains("refused a message on the twin's stream"),
        "{log}"
    );
}

/// Asks `nats` a JetStream API question; the JSON answer.
fn js_api(nats: &mut Nats, subject: &str, body: &str) -> serde_json::Value {
    nats.send(format!("PUB {subject} _INBOX.api {}\r\n{body}\r\n", body.len()).as_bytes());
    let (_, answer) = nats.next().expect("an answer from the JetStream API");
    serde_json::from_slice(&answer).unwrap()
}

#[test]
fn a_sealed_batch_of_the_twins_former_repository_is_never_applied_again() {
    // B's disk is lost twice, and B is seeded anew each time (a new epoch,
    // its sequence from 1 again). An attacker with B's NATS credentials kept
    // the first batch B sealed in its second repository; once B runs on its
    // third, they publish it again. It is authentic (B's replication key
    // sealed it) but not B's present: A never goes back to that epoch,
    // refuses the batch, says so, and keeps applying what B does now.
    let mut t = Twins::new("p256", SERVER_PROFILE);
    let d = t.ceremony.dir().to_path_buf();
    let a = t.a.client();
    let b = t.b.client();
    sign(&b, &d, "first-repository");
    t.wait_in_sync(&a, &b, 1, SYNC).unwrap();
    drop(b);
    let b_key = signer_keys::PublicKey::from_pem(
        &std::fs::read_to_string(t.dir_b().join("replication-b.pem")).unwrap(),
    )
    .unwrap();
    let tls_b = t.dir_b().join("signer-b.nats.crt");
    let seed_b = t.dir_b().join("replication-b.seed");

    // The second repository, its first batch held on B's server (the cable
    // is cut, so A cannot take it yet) and copied by the attacker.
    t.cut();
    let b = replace_b(&mut t);
    wait_published(&b);
    let mut attacker = Nats::connect(t.nats_b.port, &tls_b, &seed_b);
    attacker.subscribe("_INBOX.api");
    let info = js_api(&mut attacker, "$JS.API.STREAM.INFO.SIGNER_SIGNER_B", "");
    let first = info["state"]["first_seq"].as_u64().unwrap();
    let got = js_api(
        &mut attacker,
        "$JS.API.STREAM.MSG.GET.SIGNER_SIGNER_B",
        &format!("{{\"seq\":{first}}}"),
    );
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .unwrap()
    };
    let kept = b64(&got["message"]["data"]);
    // Plain or compressed, as B published it (compressed once it has heard
    // that A reads it).
    let kind = if String::from_utf8_lossy(&b64(&got["message"]["hdrs"])).contains("batch-lz4") {
        "batch-lz4"
    } else {
        "batch"
    };
    let plain = match kind {
        "batch-lz4" => signer_replication::seal::Batch::decompress(&kept).unwrap(),
        _ => kept.clone(),
    };
    let (seal, _) = signer_replication::seal::Batch::open(&plain, "signer-b", &b_key).unwrap();
    assert_eq!(seal.body.first, 1, "the second repository's first batch");
    let second_epoch = seal.body.epoch;
    t.restore();
    t.wait_in_sync(&a, &b, 1, SYNC).unwrap();
    drop(b);

    // The third repository.
    let b = replace_b(&mut t);
    sign(&b, &d, "third-repository");
    t.wait_in_sync(&a, &b, 2, SYNC).unwrap();
    assert_eq!(refused(&a).0, msg::HealthStatus::Ok);

    // The kept batch, published again on B's stream.
    attacker.publish(
        "signer.signer-b.events",
        &[("Nats-Msg-Id", "kept-batch"), ("Signer-Kind", kind)],
        &kept,
    );
    let detail = wait_refused(&a, "published again");
    assert!(detail.contains(&format!("{second_epoch:016x}")), "{detail}");
    // A stays with B's present: what B does now still reaches A.
    sign(&b, &d, "after-the-replay");
    t.wait_in_sync(&a, &b, 3, SYNC).unwrap();
    let log = t.a.daemon.log();
    assert!(log.contains("published again"), "{log}");

    // Again to an A just started, which remembers nothing of the epochs it
    // left: B's signed state (over A's fresh nonce) names B's present
    // epoch, and nothing else is taken for it.
    drop(a);
    t.a.daemon.restart();
    let a = t.a.client();
    attacker.publish(
        "signer.signer-b.events",
        &[("Nats-Msg-Id", "kept-batch-again"), ("Signer-Kind", kind)],
        &kept,
    );
    let detail = wait_refused(&a, "published again");
    assert!(detail.contains(&format!("{second_epoch:016x}")), "{detail}");
    sign(&b, &d, "after-the-restart");
    t.wait_in_sync(&a, &b, 4, SYNC).unwrap();
    // Every audit chain each twin holds still links, B's three
    // repositories' included.
    t.check_repositories();
}

/// B's disk is lost: its repository is seeded anew from A's backup and B
/// starts on it (a new epoch). B's new client.
fn replace_b(t: &mut Twins) -> Client {
    t.b.daemon.kill();
    std::fs::remove_file(t.dir_b().join("repository.redb")).unwrap();
    t.seed_b_from_a();
    t.b.daemon.restart();
    t.b.client()
}

/// Waits until B has published everything it has (its outbox is on its
/// nats-server).
fn wait_published(b: &Client) {
    let until = Instant::now() + SYNC;
    loop {
        let publish = checks(b).get("replication:publish").cloned();
        if publish
            .as_ref()
            .is_some_and(|(_, d)| d.contains("waiting 0") && !d.contains("published 0 "))
        {
            return;
        }
        assert!(Instant::now() < until, "never published: {publish:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
