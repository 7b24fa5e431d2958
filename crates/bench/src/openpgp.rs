//! OpenPGP certification end to end against the raw HSM signing rate of a
//! key of the same type on the same token.

use signer_client::Calls;
use signer_protocol::calls;
use std::fmt::Write as _;
use std::time::Instant;

use signer_protocol::{encode_body, msg, Command};
use signer_testsupport::ca::{Ceremony, SERVER_PROFILE};
use signer_testsupport::gpg::Gpg;
use signer_testsupport::{Bench, LinkSpec};

use crate::scale::spread;
use crate::{raw_in_child, scaled};

/// A user ID and the exported OpenPGP key it is on.
type UserKey = (String, Vec<u8>);

pub fn section(report: &mut String, scale: f64) -> anyhow::Result<()> {
    writeln!(
        report,
        "## OpenPGP certification: end to end vs. the raw HSM signing rate\n"
    )?;
    writeln!(
        report,
        "The CA's OpenPGP key is RSA-2048 on a SoftHSM2 token; the baseline is the raw \
         RSA-2048 signing rate on the same token with two sessions (the intermediate's key: \
         same type and size, same mechanism). End to end: pipelined `certify_openpgp` \
         requests (distinct request ids, one user ID each) over an unthrottled pty, each key \
         parsed, checked against the policy, its self-signature verified, certified by the \
         HSM, the new signature verified, the result (the whole certified key) committed to \
         the repository (group commit, fsync'd) before the answer. Unlike `sign_x509`, the \
         worker waits for that commit. In one process without the link (same token), \
         checking and certifying an Ed25519 key took 2.2 ms against 1.7 ms for a raw \
         signature: the two signature verifications (the user's self-signature, and the new \
         certification checked before it leaves) make up most of the difference. Five rounds, \
         each the raw rate and then both user key types (four keys of each, taken in turn); \
         min / median / max, ratios per round.\n"
    )?;
    let rounds = 5;
    let mut ceremony = Ceremony::new("rsa2048", SERVER_PROFILE);
    ceremony.add_openpgp();
    let n = scaled(600, scale);
    let yaml = format!(
        "protocol:\n  workers: {}\n  max_in_flight: 32\n{}",
        crate::workers(),
        ceremony.ca_yaml
    );
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, ceremony.env());
    let client = bench.client();
    let users = Gpg::new();
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 30 * 86_400;
    // Four user keys of each type, taken in turn.
    let kinds: Vec<(&str, &str, Vec<UserKey>)> = [("Ed25519", "ed25519"), ("RSA-3072", "rsa3072")]
        .into_iter()
        .map(|(label, algo)| {
            let keys = (0..4)
                .map(|k| {
                    let uid = format!("Bench {label} {k} <bench-{algo}-{k}@example.org>");
                    let fpr = users.gen_key(&uid, algo);
                    (uid, users.export(&fpr))
                })
                .collect();
            (label, algo, keys)
        })
        .collect();
    let request = |algo: &str, keys: &[UserKey], tag: &str, i: usize| {
        let (uid, key) = &keys[i % keys.len()];
        msg::CertifyOpenpgp {
            request_id: format!("bench-{algo}-{tag}-{i}"),
            key: key.clone(),
            user_ids: vec![uid.clone()],
            expires_at,
        }
    };
    for (_, algo, keys) in &kinds {
        let _: msg::CertifyOpenpgpReply =
            client.request::<calls::CertifyOpenpgp>(&request(algo, keys, "warm", 0))?;
    }
    // Per round: the raw rate, then each user key type's end-to-end rate
    // and bytes per request.
    let mut raw = Vec::new();
    let mut rows: Vec<Vec<(f64, u64, u64)>> = vec![Vec::new(); kinds.len()];
    for k in 0..rounds {
        raw.push(raw_in_child(&ceremony, "rsa2048", 2, n)?);
        for (row, (_, algo, keys)) in rows.iter_mut().zip(&kinds) {
            let before = client.stats();
            let started = Instant::now();
            let tag = format!("r{k}");
            let pending: Vec<_> = (0..n)
                .map(|i| {
                    client.submit(
                        Command::CERTIFY_OPENPGP,
                        encode_body(&request(algo, keys, &tag, i)),
                    )
                })
                .collect();
            for p in pending {
                let _: msg::CertifyOpenpgpReply = p.wait()?.decode()?;
            }
            let rate = n as f64 / started.elapsed().as_secs_f64();
            let after = client.stats();
            row.push((
                rate,
                (after.bytes_sent - before.bytes_sent) / n as u64,
                (after.bytes_received - before.bytes_received) / n as u64,
            ));
        }
        eprintln!("bench: openpgp round {k}: raw {:.0} sig/s", raw[k]);
    }
    writeln!(report, "| user key | raw HSM, 2 sessions (sig/s) | end to end (certifications/s) | end to end ÷ raw | request / reply bytes |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    for ((label, _, _), row) in kinds.iter().zip(&rows) {
        let (_, sent, received) = row[row.len() - 1];
        writeln!(
            report,
            "| {label} | {} | {} | {} | {sent} / {received} |",
            spread(raw.clone(), |x| format!("{x:.0}")),
            spread(row.iter().map(|r| r.0).collect(), |x| format!("{x:.0}")),
            spread(
                row.iter().zip(&raw).map(|(r, raw)| r.0 / raw).collect(),
                |x| format!("{:.0} %", 100.0 * x)
            ),
        )?;
    }
    writeln!(report)?;
    Ok(())
}
