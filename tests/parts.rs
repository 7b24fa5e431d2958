//! Multi-part responses over a noisy pty: the signer's engine and link
//! handler (in process, with a handler whose replies span many frames) and
//! the client library on the other end of `signer-linksim`. Lost parts are
//! fetched again with `fetch_parts`; every request executes once.

#![allow(clippy::unwrap_used)] // helpers in test files: a failed unwrap is a failed test

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signer_client::{Client, LinkOptions};
use signer_linksim::{LinkSim, Options};
use signer_protocol::{encode_body, Command};
use signer_protocol::{Audit, Call, Facts, Placement, Retry};
use signer_server::config::{FlowControl, LinkConfig, Parity};
use signer_server::{Engine, EngineConfig};
use signer_service::{CallContext, Failure, Router};

const BLOB: Command = Command(0x7f00);

#[derive(serde::Serialize, serde::Deserialize)]
struct BlobRequest {
    seed: u64,
    len: usize,
}

/// A test command with replies as large as asked for.
struct Blob;

impl Call for Blob {
    const COMMAND: Command = BLOB;
    const PLACEMENT: Placement = Placement::Pool;
    const AUDIT: Audit = Audit::Counted;
    const RETRY: Retry = Retry::AnySigner;
    type Request = BlobRequest;
    type Reply = BlobReply;
}

impl Facts for BlobRequest {}
impl Facts for BlobReply {}

fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BlobReply {
    #[serde(with = "serde_bytes_compat")]
    data: Vec<u8>,
}

/// msgpack `bin` for a Vec<u8> without pulling in serde_bytes.
mod serde_bytes_compat {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

fn run(ber: f64, drop_rate: f64, seed: u64, requests: usize) {
    let dir = tempfile::tempdir().unwrap();
    let sim = LinkSim::start(
        Options::new(dir.path().join("signer.tty"), dir.path().join("client.tty"))
            .ber(ber)
            .drop_rate(drop_rate)
            .seed(seed),
    )
    .unwrap();
    let executed = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&executed);
    let router = Router::new().on::<Blob>(
        move |_: &CallContext, r: BlobRequest| -> Result<BlobReply, Failure> {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(BlobReply {
                data: blob(r.seed, r.len),
            })
        },
    );
    let engine = Engine::start(EngineConfig::default(), router, Vec::new());
    let stop = engine.stop_flag();
    let link = LinkConfig {
        device: dir.path().join("signer.tty"),
        baud: 115_200,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
        flow_control: FlowControl::None,
        reopen_min_ms: 20,
        reopen_max_ms: 200,
    };
    let server = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            signer_server::link::serve(&engine, &link, &stop, Duration::from_secs(1))
        })
    };

    let mut options = LinkOptions::new(dir.path().join("client.tty"));
    options.baud = 4_000_000;
    options.max_frame = 1024; // small frames: every reply below spans 8-40 parts
    options.min_rto = Duration::from_millis(100);
    options.timeout = Duration::from_secs(60);
    let client = loop {
        match Client::open(&options) {
            Ok(c) => break c,
            Err(e) => eprintln!("waiting for the signer: {e}"),
        }
    };
    let pending: Vec<_> = (0..requests as u64)
        .map(|i| {
            let len = 8_000 + (i as usize * 811) % 30_000;
            (
                i,
                len,
                client.submit(BLOB, encode_body(&BlobRequest { seed: i, len })),
            )
        })
        .collect();
    for (i, len, p) in pending {
        let reply: BlobReply = p.wait().unwrap().decode().unwrap();
        assert_eq!(reply.data, blob(i, len), "reply {i} intact");
    }
    let stats = client.stats();
    eprintln!("client {stats:?}\nsim {:?}", sim.stats());
    assert_eq!(
        executed.load(Ordering::SeqCst),
        requests,
        "each request executed once"
    );
    if ber > 0.0 {
        assert!(stats.part_requests > 0, "lost parts were fetched again");
    }
    drop(client);
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn multi_part_replies_over_a_clean_pty() {
    run(0.0, 0.0, 1, 30);
}

#[test]
fn multi_part_replies_over_a_noisy_pty_fetch_lost_parts() {
    run(1e-5, 1e-5, 11, 60);
}
