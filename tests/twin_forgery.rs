//! The twin link in hostile hands: a plain NATS client on A's nats-server
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

/// Just enough of the NATS client protocol to publish and listen.
struct Nats {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Nats {
    fn connect(port: u16) -> Nats {
        let out = TcpStream::connect(("127.0.0.1", port)).unwrap();
        out.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut n = Nats {
            input: BufReader::new(out.try_clone().unwrap()),
            out,
        };
        let mut info = String::new();
        n.input.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        n.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nPING\r\n");
        loop {
            let mut line = String::new();
            n.input.read_line(&mut line).unwrap();
            if line.starts_with("PONG") {
                return n;
            }
            assert!(!line.starts_with("-ERR"), "{line}");
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).unwrap();
        self.out.flush().unwrap();
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
        self.out
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        loop {
            let mut line = String::new();
            if self.input.read_line(&mut line).is_err() {
                return None;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("PING") => self.send(b"PONG\r\n"),
                Some("HMSG") => {
                    let total: usize = words[words.len() - 1].parse().unwrap();
                    let hdr: usize = words[words.len() - 2].parse().unwrap();
                    let mut buf = vec![0; total + 2];
                    self.input.read_exact(&mut buf).unwrap();
                    let headers = String::from_utf8_lossy(&buf[..hdr]).to_string();
                    return Some((headers, buf[hdr..total].to_vec()));
                }
                Some("MSG") => {
                    let total: usize = words[words.len() - 1].parse().unwrap();
                    let mut buf = vec![0; total + 2];
                    self.input.read_exact(&mut buf).unwrap();
                    return Some((String::new(), buf[..total].to_vec()));
                }
                _ => {}
            }
        }
    }

    /// Every event (not seals) published until the subject is quiet.
    fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some((headers, payload)) = self.next() {
            if !headers.contains("seal") {
                events.push(Event::decode(&payload).unwrap());
            }
        }
        events
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
    let mut spy = Nats::connect(t.nats_a.port);
    spy.subscribe(subject);
    let mut attacker = Nats::connect(t.nats_a.port);

    // A real certificate, seen on the wire (in clear: confidentiality is the
    // cable's TLS's business, integrity the seals').
    let victim = sign(&a, &d, "victim");
    t.wait_in_sync(&a, &b, 1, SYNC).unwrap();
    let seen = spy.drain();
    let head = seen.iter().map(|e| e.seq).max().unwrap();
    let real = seen
        .iter()
        .find(|e| matches!(e.change, Change::Issued(_)))
        .unwrap()
        .clone();
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
    let on_b = b.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    assert_eq!(on_b.entries, 1);
    let on_a = a.request::<calls::FetchCrl>(&full_crl("sub")).unwrap();
    assert_eq!(on_a.entries, 1);
    let (status, detail) = refused(&b);
    assert_eq!(status, msg::HealthStatus::Failing, "{detail}");
    let log = t.b.daemon.log();
    assert!(
        log.contains("refused a message on the twin's stream"),
        "{log}"
    );
    drop(spy);
}
