//! `signer-client batch`: many requests over one link, pipelined.
//!
//! ```text
//! JSONL lines | CSR files ─► Request (checked, all before anything is sent)
//!        ─► N threads ─► requests::execute (checked answers) ─► OUT/<id>.json (+ .pem/.asc)
//!                                                            └► one JSON line each (--json)
//! ```
//!
//! Every request has a fixed request id (a JSONL line names it; a CSR's is
//! derived from the profile and the CSR's bytes), so running the batch again
//! after an interruption issues nothing twice: requests whose result file
//! is in the output directory are skipped, the others are answered by the
//! signer from its record if it had executed them. A request in doubt (it
//! reached one of twin signers, which did not answer) leaves `<id>.in-doubt`
//! naming that signer's device: a re-run sends it there only, never to the
//! twin, which would issue a second certificate.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::Digest;
use signer_client::requests::{self, Done, Kind, Line, Request, Trust};
use signer_client::{ClientError, Failover};
use signer_protocol::msg;

/// One request of the batch.
pub struct Job {
    /// Its request id.
    pub request_id: String,
    /// What it asks for.
    pub kind: Kind,
    /// Ready to send.
    pub request: Request,
}

/// Reads a JSON-lines file (`{"request_id", "kind", "body"}` per line, as
/// `signer-gateway enqueue` takes them). Every line is checked; the first
/// bad one is the error.
pub fn from_jsonl(path: &Path) -> Result<Vec<Job>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut jobs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| format!("{} line {}: {e}", path.display(), n + 1);
        let line: Line = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let kind = Kind::parse(&line.kind).ok_or_else(|| {
            at(format!(
                "kind {:?} is not one of sign_x509, revoke_x509, certify_openpgp",
                line.kind
            ))
        })?;
        if !requests::valid_request_id(&line.request_id) {
            return Err(at(
                "request_id must be 1-128 printable ASCII characters without spaces".into(),
            ));
        }
        if !seen.insert(line.request_id.clone()) {
            return Err(at(format!("request_id {} appears twice", line.request_id)));
        }
        let request = Request::from_row(&line.request_id, kind.as_str(), &line.body.to_string())
            .map_err(|e| at(format!("body: {e}")))?;
        jobs.push(Job {
            request_id: line.request_id,
            kind,
            request,
        });
    }
    Ok(jobs)
}

/// Reads every `*.csr` and `*.pem` file of a directory as a `sign_x509`
/// request under `profile`, asking for the names in the CSR. Each must be a
/// CSR whose self-signature verifies.
pub fn from_csr_dir(dir: &Path, profile: &str, days: Option<u32>) -> Result<Vec<Job>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "csr" || x == "pem"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.csr or *.pem files", dir.display()));
    }
    files
        .iter()
        .map(|path| {
            let at = |e: String| format!("{}: {e}", path.display());
            let csr = std::fs::read(path).map_err(|e| at(e.to_string()))?;
            crate::check_csr(&csr).map_err(at)?;
            let names = signer_x509::csr::requested_names(&csr).map_err(|e| at(e.to_string()))?;
            let digest = sha2::Sha256::new()
                .chain_update(profile.as_bytes())
                .chain_update([0])
                .chain_update(&csr)
                .finalize();
            let request_id = format!("csr-{}", hex::encode(&digest[..20]));
            let request = Request::Sign(msg::SignX509 {
                request_id: request_id.clone(),
                profile: profile.to_string(),
                csr,
                subject: names.subject,
                sans: names
                    .sans
                    .into_iter()
                    .map(|(kind, value)| msg::SanEntry { kind, value })
                    .collect(),
                validity_days: days,
            });
            Ok(Job {
                request_id,
                kind: Kind::SignX509,
                request,
            })
        })
        .collect()
}

/// How the batch went.
#[derive(Debug, Default)]
pub struct Summary {
    /// Answered `ok` now.
    pub done: usize,
    /// Answered earlier (result file present): not sent.
    pub skipped: usize,
    /// Refused by the signer (final).
    pub refused: usize,
    /// Not answered (link, timeout): run the batch again.
    pub failed: usize,
}

/// A request id as a file name: characters other than letters, digits,
/// `-`, `_` and `.` (and a leading dot) are written as `%XX`.
pub fn file_stem(request_id: &str) -> String {
    request_id
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One result line.
fn result_line(job: &Job, outcome: &Result<Done, ClientError>) -> serde_json::Value {
    match outcome {
        Ok(done) => serde_json::json!({
            "request_id": job.request_id, "kind": job.kind.as_str(), "status": "ok",
            "serial": done.serial, "certificate": done.certificate, "result": done.result,
        }),
        Err(ClientError::Signer {
            status,
            message,
            detail,
        }) => serde_json::json!({
            "request_id": job.request_id, "kind": job.kind.as_str(),
            "status": status.to_string(), "status_code": status.0,
            "message": message, "detail": detail,
        }),
        Err(e @ ClientError::InDoubt { device, .. }) => serde_json::json!({
            "request_id": job.request_id, "kind": job.kind.as_str(),
            "status": "in_doubt", "signer": device, "message": e.to_string(),
        }),
        Err(e) => serde_json::json!({
            "request_id": job.request_id, "kind": job.kind.as_str(),
            "status": "not_answered", "message": e.to_string(),
        }),
    }
}

/// Writes a finished request's files: `ID.json` last, as the mark that it is done.
fn write_result(
    dir: &Path,
    job: &Job,
    line: &serde_json::Value,
    done: &Done,
) -> std::io::Result<()> {
    let stem = file_stem(&job.request_id);
    if let Some(cert) = &done.certificate {
        let ext = if job.kind == Kind::CertifyOpenpgp {
            "asc"
        } else {
            "pem"
        };
        std::fs::write(dir.join(format!("{stem}.{ext}")), cert)?;
    }
    let tmp = dir.join(format!(".{stem}.json.tmp"));
    std::fs::write(&tmp, format!("{line}\n"))?;
    std::fs::rename(tmp, dir.join(format!("{stem}.json")))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `job` only to the signer named in its in-doubt file from an earlier
/// run, if there is one.
fn pin(client: &Failover, job: &Job, file: &Path) -> Result<(), ClientError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ClientError::InDoubt {
                device: "(unknown)".into(),
                cause: format!("{}: {e}", file.display()),
            })
        }
    };
    let device = Path::new(text.trim());
    if client.set_in_doubt(job.kind.command(), &job.request_id, device) {
        return Ok(());
    }
    Err(ClientError::InDoubt {
        device: device.display().to_string(),
        cause: format!(
            "{} names it from an earlier run, and it is not among --link",
            file.display()
        ),
    })
}

/// Runs the jobs, `parallel` at a time, calling `report` with each result
/// line as it comes.
pub fn run(
    client: &Failover,
    jobs: &[Job],
    out_dir: Option<&Path>,
    parallel: usize,
    report: &(dyn Fn(&serde_json::Value) + Sync),
) -> Result<Summary, String> {
    let trust = Trust::default();
    let summary = Mutex::new(Summary::default());
    let next = AtomicUsize::new(0);
    let local_error: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { return };
                let stem = file_stem(&job.request_id);
                let doubt_file = out_dir.map(|dir| dir.join(format!("{stem}.in-doubt")));
                if let Some(dir) = out_dir {
                    if dir.join(format!("{stem}.json")).exists() {
                        lock(&summary).skipped += 1;
                        continue;
                    }
                }
                let outcome = match doubt_file.as_deref().map(|f| pin(client, job, f)) {
                    Some(Err(e)) => Err(e),
                    _ => requests::execute(client, &trust, &job.request),
                };
                if let (Some(file), Err(e @ ClientError::InDoubt { device, .. })) =
                    (&doubt_file, &outcome)
                {
                    if let Err(io) = std::fs::write(file, format!("{device}\n")) {
                        lock(&local_error).get_or_insert(format!(
                            "{}: {io} (request {} is in doubt: {e})",
                            file.display(),
                            job.request_id
                        ));
                    }
                } else if let (Some(file), Ok(_) | Err(ClientError::Signer { .. })) =
                    (&doubt_file, &outcome)
                {
                    // A signer answered: nothing is in doubt any more —
                    // unless it answered without reading its records
                    // (starting, stopping), which says nothing of before.
                    let unread = matches!(&outcome, Err(ClientError::Signer { status, .. })
                        if signer_client::refused_unread(*status));
                    if !unread {
                        let _ = std::fs::remove_file(file);
                    }
                }
                let line = result_line(job, &outcome);
                match &outcome {
                    Ok(done) => {
                        if let Some(dir) = out_dir {
                            if let Err(e) = write_result(dir, job, &line, done) {
                                // Issued and recorded by the signer: a re-run
                                // fetches it again under the same request id.
                                let mut err = lock(&local_error);
                                err.get_or_insert(format!(
                                    "{}: {e} (request {} was answered; run the batch again to fetch it)",
                                    dir.display(),
                                    job.request_id
                                ));
                            }
                        }
                        lock(&summary).done += 1;
                    }
                    Err(ClientError::Signer { status, .. })
                        if signer_client::twin_may_answer(*status)
                            || *status == signer_protocol::Status::BUSY =>
                    {
                        lock(&summary).failed += 1;
                    }
                    Err(ClientError::Signer { .. }) => lock(&summary).refused += 1,
                    Err(_) => lock(&summary).failed += 1,
                }
                report(&line);
            });
        }
    });
    if let Some(e) = local_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(summary.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_become_safe_distinct_file_names() {
        assert_eq!(file_stem("webdb-4711"), "webdb-4711");
        assert_eq!(file_stem("../etc/passwd"), "%2E.%2Fetc%2Fpasswd");
        assert_eq!(file_stem(".hidden"), "%2Ehidden");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        assert_ne!(file_stem("a%2Fb"), file_stem("a/b"));
    }
}
