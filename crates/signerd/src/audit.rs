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
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
