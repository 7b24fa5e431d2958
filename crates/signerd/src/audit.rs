//! `signerd audit …`: verify the audit log's hash chains and show entries.

use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use clap::Subcommand;

use crate::config::ConfigArg;
use crate::exit::Failed;
use crate::repo::{inspect, repo_failed};

/// `signerd audit …`
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the audit chain (and the twin's copy); reports the first broken link.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the audit key's verifier key (`origin+keyid+key`): what a copy
    /// of the log (`signer-client audit sync --vkey`) is configured with.
    Vkey {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show audit entries, oldest first.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Only entries at or after this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        since: Option<String>,
        /// Only entries before this time (RFC 3339 or Unix seconds).
        #[arg(long)]
        until: Option<String>,
        /// Only entries with this request id.
        #[arg(long)]
        request_id: Option<String>,
        /// Only entries naming this serial (hex).
        #[arg(long)]
        serial: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs * 1000);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is neither Unix seconds nor RFC 3339: {e}"))
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)
        })
}

fn audit(cmd: AuditCmd) -> Result<ExitCode, Failed> {
    let open = inspect;
    match cmd {
        AuditCmd::Verify { config } => {
            let repo = open(&config.config)?;
            let mut ok = true;
            for r in repo.audit_verify().map_err(repo_failed)? {
                let head = r
                    .head
                    .as_ref()
                    .map(|(n, h)| format!("head {n} {}", hex::encode(h)))
                    .unwrap_or_else(|| "empty".into());
                match &r.broken {
                    None => say!("{}: {} entries verified, {head}", r.signer_id, r.entries),
                    Some((seq, why)) => {
                        ok = false;
                        say!(
                            "{}: BROKEN at entry {seq}: {why} ({} entries before it verified)",
                            r.signer_id,
                            r.entries
                        );
                    }
                }
            }
            if let Err(e) = verify_tree(&config.config, &repo) {
                ok = false;
                say!("audit tree: BROKEN: {e}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCmd::Vkey { config } => {
            let (c, ca) = crate::config::load(&config.config)?;
            let verifier = audit_verifier(&ca, &c.signer_id)?;
            say!("{}", verifier.vkey());
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Show {
            config,
            since,
            until,
            request_id,
            serial,
            json,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            let serial = serial.map(|s| s.trim_start_matches("0x").replace(':', "").to_lowercase());
            let repo = open(&config.config)?;
            let entries = repo
                .audit_entries(|e| {
                    since.is_none_or(|t| e.time_ms >= t)
                        && until.is_none_or(|t| e.time_ms < t)
                        && request_id
                            .as_ref()
                            .is_none_or(|r| e.facts.get("request_id") == Some(r))
                        && serial
                            .as_ref()
                            .is_none_or(|s| e.facts.get("serial") == Some(s))
                })
                .map_err(repo_failed)?;
            for e in entries {
                if json {
                    let value = serde_json::json!({
                        "signer_id": e.signer_id,
                        "seq": e.seq,
                        "time_ms": e.time_ms,
                        "kind": e.kind,
                        "action": e.action,
                        "outcome": e.outcome,
                        "facts": e.facts,
                        "hash": hex::encode(&e.hash),
                    });
                    say!("{value}");
                } else {
                    let time =
                        UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms.max(0) as u64);
                    let facts: Vec<String> =
                        e.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    say!(
                        "{} {}#{} {} {} {} {}",
                        humantime::format_rfc3339_millis(time),
                        e.signer_id,
                        e.seq,
                        e.kind,
                        e.action,
                        e.outcome,
                        facts.join(" ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The audit key's verifier, from the token.
fn audit_verifier(
    ca: &signer_ca::CaConfig,
    signer_id: &str,
) -> Result<signer_tlog::Verifier, Failed> {
    let a = ca
        .audit
        .as_ref()
        .ok_or_else(|| Failed(1, "the configuration has no ca.audit section".into()))?;
    let backend = signer_hsm::open(&ca.hsm, ca.key_specs(), 1, None)
        .map_err(|e| Failed(1, format!("the token: {e}")))?;
    signer_ca::checkpoints::verifier(a, signer_id, backend.as_ref()).map_err(|e| Failed(1, e))
}

/// Recomputes the Merkle tree from the entries and checks it against the
/// stored tree and every stored checkpoint (signature and root).
fn verify_tree(
    config: &std::path::Path,
    repo: &signer_repository::Repository,
) -> Result<(), String> {
    use signer_tlog::merkle;
    let (c, ca) = crate::config::load(config)?;
    let mut leaves = Vec::new();
    loop {
        let batch = repo
            .audit_leaves(leaves.len() as u64, 4096)
            .map_err(|e| e.to_string())?;
        if batch.is_empty() {
            break;
        }
        leaves.extend(batch.iter().map(|l| merkle::leaf_hash(l)));
    }
    let tree = merkle::LeafHashes(leaves);
    let size = tree.0.len() as u64;
    let root = merkle::root(&tree, size)?;
    let (stored_size, stored_root) = repo.audit_tree_head().map_err(|e| e.to_string())?;
    if (stored_size, stored_root) != (size, root) {
        return Err(format!(
            "the stored tree (size {stored_size}) does not match the entries (size {size})"
        ));
    }
    let checkpoints = repo.checkpoints().map_err(|e| e.to_string())?;
    if ca.audit.is_none() {
        say!("audit tree: {size} entries, root {}", hex::encode(root));
        return Ok(());
    }
    let verifier = audit_verifier(&ca, &c.signer_id).map_err(|Failed(_, e)| e)?;
    for cp in &checkpoints {
        let note = signer_tlog::SignedCheckpoint::parse(&cp.note)
            .and_then(|n| n.verify_log(&verifier).map(|()| n))
            .map_err(|e| format!("checkpoint {}: {e}", cp.size))?;
        if note.checkpoint.size > size {
            return Err(format!(
                "checkpoint {} was signed but the log has {size} entries: entries were removed or an older repository restored",
                note.checkpoint.size
            ));
        }
        if merkle::root(&tree, note.checkpoint.size)? != note.checkpoint.root {
            return Err(format!(
                "the entries do not give the root of checkpoint {}: the log was rewritten",
                note.checkpoint.size
            ));
        }
    }
    // The twin's cosignatures of this log's checkpoints.
    let mut cosigned = 0;
    if let (Some(peer), Some(r)) = (
        ca.audit.as_ref().and_then(|a| a.peer_vkey.as_ref()),
        ca.replication.as_ref(),
    ) {
        let log = signer_tlog::Verifier::from_vkey(peer)
            .map_err(|e| format!("ca.audit.peer_vkey: {e}"))?;
        let witness = signer_tlog::Verifier::new(
            &signer_ca::checkpoints::witness_name(&log.name),
            signer_tlog::note::TYPE_COSIGNATURE,
            log.key,
        )?;
        for (size, who, line) in repo.cosignatures().map_err(|e| e.to_string())? {
            if who != r.peer_id {
                continue;
            }
            let cp = checkpoints
                .iter()
                .find(|c| c.size == size)
                .ok_or_else(|| format!("{who} cosigned checkpoint {size}, which is not stored"))?;
            let checkpoint = signer_tlog::SignedCheckpoint::parse(&cp.note)?.checkpoint;
            let l = signer_tlog::note::SignatureLine::parse(&line)?;
            signer_tlog::note::verify_cosignature_line(&checkpoint, &witness, &l)
                .map_err(|e| format!("{who}'s cosignature of checkpoint {size}: {e}"))?;
            cosigned += 1;
        }
        // The twin's checkpoints held here: its signature, and the root of
        // this signer's copy of its log.
        let mut witnessed = 0;
        for (size, note, _) in repo
            .peer_checkpoints(&r.peer_id)
            .map_err(|e| e.to_string())?
        {
            let note = signer_tlog::SignedCheckpoint::parse(&note)
                .and_then(|n| n.verify_log(&log).map(|()| n))
                .map_err(|e| format!("{}'s checkpoint {size}: {e}", r.peer_id))?;
            match repo
                .peer_audit_root(&r.peer_id, size)
                .map_err(|e| e.to_string())?
            {
                Some(root) if root != note.checkpoint.root => {
                    return Err(format!(
                        "{}'s checkpoint {size} does not match the copy of its log held here",
                        r.peer_id
                    ))
                }
                Some(_) => witnessed += 1,
                None => {}
            }
        }
        say!(
            "audit tree: {} of {}'s checkpoints match the copy of its log held here",
            witnessed,
            r.peer_id
        );
    }
    say!(
        "audit tree: {size} entries, root {}; {} checkpoints verified (newest {}), {cosigned} cosigned by the twin",
        hex::encode(root),
        checkpoints.len(),
        checkpoints.last().map_or(0, |c| c.size)
    );
    Ok(())
}

/// Runs an audit command: 0 when everything verified (or was shown), 1
/// otherwise (5 or 6 when the repository is refused or damaged).
pub fn run(cmd: AuditCmd) -> ExitCode {
    match audit(cmd) {
        Ok(code) => code,
        Err(Failed(code, e)) => {
            eprintln!("signerd audit: {e}");
            ExitCode::from(code)
        }
    }
}
