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

use crate::{raw_in_child, scaled};

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
         certification checked before it leaves) make up most of the difference.\n"
    )?;
    writeln!(report, "| user key | raw HSM, 2 sessions (sig/s) | end to end (certifications/s) | end to end / raw | request / reply bytes |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    let mut ceremony = Ceremony::new("rsa2048", SERVER_PROFILE);
    ceremony.add_openpgp();
    let n = scaled(600, scale);
    let raw = raw_in_child(&ceremony, "rsa2048", 2, n)?;
    let yaml = format!(
        "protocol:\n  workers: 4\n  max_in_flight: 32\n{}",
        ceremony.ca_yaml
    );
    let bench = Bench::start_with_env(LinkSpec::unthrottled(), &yaml, ceremony.env());
    let client = bench.client();
    let users = Gpg::new();
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 30 * 86_400;
    for (label, algo) in [("Ed25519", "ed25519"), ("RSA-3072", "rsa3072")] {
        let uid = format!("Bench {label} <bench-{algo}@example.org>");
        let fpr = users.gen_key(&uid, algo);
        let key = users.export(&fpr);
        let request = |i: usize| msg::CertifyOpenpgp {
            request_id: format!("bench-{algo}-{i}"),
            key: key.clone(),
            user_ids: vec![uid.clone()],
            expires_at,
        };
        let _: msg::CertifyOpenpgpReply =
            client.request::<calls::CertifyOpenpgp>(&request(usize::MAX))?;
        let before = client.stats();
        let started = Instant::now();
        let pending: Vec<_> = (0..n)
            .map(|i| client.submit(Command::CERTIFY_OPENPGP, encode_body(&request(i))))
            .collect();
        for p in pending {
            let _: msg::CertifyOpenpgpReply = p.wait()?.decode()?;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let after = client.stats();
        writeln!(
            report,
            "| {label} | {raw:.0} | {rate:.0} | {:.0} % | {} / {} |",
            100.0 * rate / raw,
            (after.bytes_sent - before.bytes_sent) / n as u64,
            (after.bytes_received - before.bytes_received) / n as u64
        )?;
    }
    writeln!(report)?;
    Ok(())
}
