//! The audit log's cost: issuance with checkpoints on and off, and the
//! sizes a copy of the log fetches for a log of a million entries.

use std::fmt::Write as _;
use std::time::Duration;

use signer_client::Calls;
use signer_protocol::{calls, encode_body, msg};
use signer_testsupport::ca::{make_csr, Ceremony, SERVER_PROFILE};
use signer_testsupport::{Bench, LinkSpec};
use signer_tlog::merkle::{self, LeafHashes};
use signer_tlog::note::{Checkpoint, SignatureLine, SignedCheckpoint};

use crate::scale::median;

fn range(v: &[f64]) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
    format!("{lo:.0}–{hi:.0}")
}

pub fn section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    writeln!(report, "## Audit log: checkpoints and proofs\n")?;
    writeln!(
        report,
        "Pipelined `sign_x509` over an unthrottled pty: a signer without `ca.audit` and one whose \
         audit log signs a checkpoint (Ed25519 in SoftHSM2) every 1000 entries or 60 s, as \
         configs/signerd.yaml ships it; the tree's hashes are written with every entry either way \
         (they are part of the repository). Five rounds each, alternating; median and range.\n"
    )?;
    writeln!(
        report,
        "| issuer key | checkpoints off (cert/s) | on (cert/s) | on / off | target |"
    )?;
    writeln!(report, "|---|---|---|---|---|")?;
    let n = super::scaled(1500, scale);
    let mut entry_sizes = Vec::new();
    for (key, csr_key) in [
        ("rsa2048", &["rsa:2048"][..]),
        ("p256", &["ec", "-pkeyopt", "ec_paramgen_curve:P-256"][..]),
    ] {
        eprintln!("bench: audit checkpoints with a {key} issuer");
        let off_c = Ceremony::new(key, SERVER_PROFILE);
        let on_c = Ceremony::new(key, SERVER_PROFILE);
        let on_yaml = on_c
            .with_audit_log()
            .replace("every_entries: 4", "every_entries: 1000")
            .replace("every_secs: 1", "every_secs: 60");
        let off = Bench::start_with_env(LinkSpec::unthrottled(), &off_c.ca_yaml, off_c.env());
        let on = Bench::start_with_env(LinkSpec::unthrottled(), &on_yaml, on_c.env());
        let csr = make_csr(off_c.dir(), "bench", csr_key);
        let (c_off, c_on) = (off.client(), on.client());
        let rate = |c: &signer_client::Client, n: usize, tag: &str| -> anyhow::Result<f64> {
            Ok(n as f64 / super::pipelined_sign(c, &csr, n, tag)?.as_secs_f64())
        };
        rate(&c_off, 20, "warm")?;
        rate(&c_on, 20, "warm")?;
        let (mut v_off, mut v_on) = (Vec::new(), Vec::new());
        for round in 0..5 {
            v_off.push(rate(&c_off, n, &format!("off-{round}"))?);
            v_on.push(rate(&c_on, n, &format!("on-{round}"))?);
        }
        let (m_off, m_on) = (median(&v_off), median(&v_on));
        writeln!(
            report,
            "| {key} | {m_off:.0} ({}) | {m_on:.0} ({}) | {:.2} | ≥ 0.95 |",
            range(&v_off),
            range(&v_on),
            m_on / m_off
        )?;
        let note = c_on.request::<calls::AuditCheckpoint>(&msg::Empty {})?;
        let size = SignedCheckpoint::parse(&note.checkpoint)
            .map_err(anyhow::Error::msg)?
            .checkpoint
            .size;
        let entries = c_on.request::<calls::AuditEntries>(&msg::AuditEntries {
            start: size.saturating_sub(200),
            count: 200,
        })?;
        entry_sizes.extend(entries.entries.iter().map(|e| e.len()));
        std::thread::sleep(Duration::from_millis(10));
    }
    writeln!(report)?;

    // Sizes for a log of a million entries.
    let size: u64 = 1_000_000;
    let tree = LeafHashes(
        (0..size)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect(),
    );
    let root = merkle::root(&tree, size).map_err(anyhow::Error::msg)?;
    let note = SignedCheckpoint {
        checkpoint: Checkpoint {
            origin: "signer-a.example.org/audit".into(),
            size,
            root,
        },
        signatures: vec![SignatureLine {
            name: "signer-a.example.org/audit".into(),
            key_id: [0; 4],
            signature: vec![0; 64],
        }],
    };
    let checkpoint_bytes = encode_body(&msg::AuditCheckpointReply {
        checkpoint: note.render(),
    })
    .len();
    let mut consistency = 0usize;
    for old in [1u64, 999_999, 524_288, 123_457, 999_000] {
        let proof =
            merkle::consistency_proof(&tree, old, size).map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = encode_body(&msg::AuditConsistencyReply {
            proof: proof
                .iter()
                .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
                .collect(),
        });
        consistency = consistency.max(body.len());
    }
    let mut inclusion = 0usize;
    for index in [0u64, 999_999, 524_288, 123_457] {
        let proof =
            merkle::inclusion_proof(&tree, index, size).map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = encode_body(&msg::AuditInclusionReply {
            entry: serde_bytes::ByteBuf::from(Vec::new()),
            proof: proof
                .iter()
                .map(|h| serde_bytes::ByteBuf::from(h.to_vec()))
                .collect(),
        });
        inclusion = inclusion.max(body.len());
    }
    let mean_entry = entry_sizes.iter().sum::<usize>() as f64 / entry_sizes.len().max(1) as f64;
    writeln!(
        report,
        "On the wire, for a log of 1,000,000 entries (reply bodies, msgpack):\n"
    )?;
    writeln!(report, "| what | bytes |")?;
    writeln!(report, "|---|---|")?;
    writeln!(
        report,
        "| a checkpoint (`audit_checkpoint`) | {checkpoint_bytes} |"
    )?;
    writeln!(
        report,
        "| a consistency proof, largest of five size pairs | {consistency} |"
    )?;
    writeln!(
        report,
        "| an inclusion proof without its entry, largest of four | {inclusion} |"
    )?;
    writeln!(
        report,
        "| an issuance entry (`audit_entries`, mean of {} measured above) | {mean_entry:.0} |",
        entry_sizes.len()
    )?;
    writeln!(
        report,
        "| the whole log for a new copy (256 entries per answer) | {:.0} MiB in {} answers |\n",
        mean_entry * size as f64 / 1048576.0,
        size.div_ceil(256)
    )?;
    Ok(())
}
