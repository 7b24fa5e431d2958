//! `signer-client`: talk to a signer over a serial device.
//!
//! Exit codes: 0 success, 1 the signer refused the request, 2 usage error,
//! 3 link failure or timeout, 4 bad local input (a file, an argument).
#![forbid(unsafe_code)]

/// Writes a line to standard output; a closed output (`| head`) is not an
/// error worth a panic: what was asked for happened either way.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like [`say!`], without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

#[path = "cli/batch.rs"]
mod batch;

use signer_client::Calls;
use signer_protocol::calls;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use signer_client::{ClientError, Failover, LinkOptions};
use signer_protocol::msg;

/// Client for the serial-link signer.
#[derive(Parser)]
#[command(name = "signer-client", version, about)]
struct Cli {
    /// Serial device of the signer; twins as DEVICE_A,DEVICE_B (a request
    /// that gets no answer goes to the next one, with the same request id).
    #[arg(
        long,
        global = true,
        env = "SIGNER_LINK",
        default_value = "/dev/ttyUSB0"
    )]
    link: String,
    /// Line speed in baud.
    #[arg(long, global = true, default_value_t = 115_200)]
    baud: u32,
    /// Seconds to wait for an answer, retries included.
    #[arg(long, global = true, default_value_t = 30.0)]
    timeout: f64,
    /// With several links: seconds without an answer before the next signer is tried.
    #[arg(long, global = true, default_value_t = 10.0)]
    failover_after: f64,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes man pages and shell completions into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory.
        dir: PathBuf,
    },
    /// Show the signer's health. Exits 0 ok, 1 degraded, 2 failing, 5 when
    /// its clock is off this host's (and it is not failing).
    Health {
        /// Exit 5 when the signer's clock differs from this host's by more than this many seconds.
        #[arg(long, default_value_t = 60.0)]
        max_clock_skew: f64,
    },
    /// Show protocol version and limits agreed with the signer.
    Hello,
    /// Ask for an X.509 certificate; writes it as PEM.
    Sign {
        /// Certificate profile.
        #[arg(long)]
        profile: String,
        /// The PKCS#10 request (PEM or DER).
        #[arg(long)]
        csr: PathBuf,
        /// Idempotency key: retrying with the same key returns the same certificate.
        #[arg(long)]
        request_id: String,
        /// Subject by RFC 4514, most specific first, e.g. "CN=www.example.org,O=Example\, Inc.,C=DE"
        /// (a comma inside a value is escaped with a backslash).
        #[arg(long)]
        subject: String,
        /// Subject alternative name as TYPE:VALUE (dns, email, ip, uri); repeat for more.
        #[arg(long)]
        san: Vec<String>,
        /// Validity in days (default: the profile's).
        #[arg(long)]
        days: Option<u32>,
        /// Write the certificate here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a certificate.
    Revoke {
        /// Name of the issuing CA.
        #[arg(long)]
        issuer: String,
        /// Serial number in hex.
        #[arg(long)]
        serial: String,
        /// Reason: unspecified, key_compromise, ca_compromise, affiliation_changed,
        /// superseded, cessation_of_operation, privilege_withdrawn, aa_compromise (or the code).
        #[arg(long, default_value = "unspecified")]
        reason: String,
        /// Invalidity date, Unix seconds.
        #[arg(long)]
        invalidity_date: Option<i64>,
        /// The request id recorded with the revocation.
        #[arg(long)]
        request_id: String,
    },
    /// Fetch an issuer's CRL into a file; the copy already there is stated,
    /// so an unchanged CRL is not sent again.
    Crl {
        /// Name of the issuing CA.
        #[arg(long)]
        issuer: String,
        /// The CRL file (DER); read first if present, replaced when the CRL changed.
        #[arg(long)]
        out: PathBuf,
        /// The issuer's certificate to verify the CRL with (default: from the signer's ca_certs).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// A shard's CRL (an issuer with partitioned CRLs), 0 first; without
        /// it, the full CRL.
        #[arg(long)]
        shard: Option<u8>,
    },
    /// Print an issuer's CRL shards as the JSON array of CRL URLs the CCADB
    /// asks for ("JSON Array of Partitioned CRLs").
    CrlUrls {
        /// Name of the issuing CA.
        #[arg(long)]
        issuer: String,
    },
    /// Fetch the CA certificates the signer issues under.
    CaCerts {
        /// Write NAME.pem files into this directory (default: print PEM).
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Send many requests over one link, pipelined: a JSON-lines file
    /// (`{"request_id", "kind", "body"}` per line, as docs/gateway.md
    /// describes), or every CSR in a directory under one profile. Shows a
    /// progress bar on a terminal; `--json` writes one line per result.
    /// Running it again after an interruption issues nothing twice.
    /// Exits 0 when every request was answered ok, 1 when the signer
    /// refused some, 3 when some got no answer (run it again).
    Batch {
        /// The JSON-lines file.
        #[arg(conflicts_with = "csr_dir", required_unless_present = "csr_dir")]
        file: Option<PathBuf>,
        /// A directory of CSRs (`*.csr`, `*.pem`), each asking for the names in it.
        #[arg(long, requires = "profile")]
        csr_dir: Option<PathBuf>,
        /// The profile for `--csr-dir`.
        #[arg(long)]
        profile: Option<String>,
        /// Validity in days for `--csr-dir` (default: the profile's).
        #[arg(long)]
        days: Option<u32>,
        /// Write each result here (`ID.json`, and `ID.pem` or `ID.asc`);
        /// requests with a result here are not sent again.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
    },
    /// OpenPGP: certify user IDs of a key, fetch the CA's OpenPGP certificate.
    Openpgp {
        #[command(subcommand)]
        command: OpenpgpCmd,
    },
    /// The signer's audit log: keep a verified copy of it here.
    Audit {
        #[command(subcommand)]
        command: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Bring the copy in DIR up to the signer's newest checkpoint: its
    /// signature, its consistency with the newest checkpoint held and the
    /// new entries are verified, then the size is acknowledged to the
    /// signer. Exits 1 when the signer's log contradicts the copy (the
    /// checkpoint is kept in DIR/evidence).
    Sync {
        /// The copy's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The audit key's verifier key (`signerd audit vkey`); needed the
        /// first time, then kept in DIR/log.vkey.
        #[arg(long)]
        vkey: Option<String>,
    },
    /// Check every checkpoint held in DIR against the entries held
    /// (offline: nothing is sent). Exits 1 when something does not verify.
    Verify {
        /// The copy's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prove that the signer's log holds the entry of a certificate (by
    /// request id, serial or the certificate itself) as of the newest
    /// checkpoint in DIR: the signer's inclusion proof is checked against
    /// the entry and the checkpoint held here.
    Prove {
        /// The copy's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The request id of the issuance.
        #[arg(long)]
        request_id: Option<String>,
        /// The certificate's serial (hex).
        #[arg(long)]
        serial: Option<String>,
        /// The certificate (PEM or DER).
        #[arg(long)]
        certificate: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OpenpgpCmd {
    /// Certify user IDs of a public key with the CA's OpenPGP key; writes the
    /// key with the new certifications (each checked against the CA key).
    Certify {
        /// The user's public key (binary or ASCII-armored), as `gpg --export` writes it.
        #[arg(long)]
        key: PathBuf,
        /// A user ID to certify, exactly as on the key; repeat for more.
        #[arg(long = "user-id", required = true)]
        user_ids: Vec<String>,
        /// Idempotency key: retrying with the same key returns the same certifications.
        #[arg(long)]
        request_id: String,
        /// Certifications expire after this many days.
        #[arg(long, default_value_t = 365, conflicts_with = "expires_at")]
        days: u32,
        /// Certifications expire at this time, Unix seconds.
        #[arg(long)]
        expires_at: Option<i64>,
        /// Write the certified key here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Write ASCII armor instead of binary.
        #[arg(long)]
        armor: bool,
        /// The CA's OpenPGP certificate to check the certifications with
        /// (default: fetched from the signer).
        #[arg(long)]
        ca_cert: Option<PathBuf>,
    },
    /// Fetch the CA's OpenPGP certificate (ASCII-armored).
    CaCert {
        /// Write it here (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn generate_docs(dir: &Path) -> ExitCode {
    match signer_clidoc::write(<Cli as clap::CommandFactory>::command(), dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("signer-client: {}: {e}", dir.display());
            ExitCode::from(EXIT_INPUT)
        }
    }
}

const EXIT_REFUSED: u8 = 1;
const EXIT_LINK: u8 = 3;
const EXIT_INPUT: u8 = 4;
const EXIT_OUTPUT: u8 = 6;
/// A request that issues got no answer from the signer it reached, and was
/// not sent to the twin (it would issue twice).
const EXIT_IN_DOUBT: u8 = 7;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::GenerateDocs { dir } = &cli.command {
        return generate_docs(dir);
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(cli.timeout) || !positive(cli.failover_after) {
        eprintln!(
            "signer-client: --timeout and --failover-after must be positive numbers of seconds"
        );
        return ExitCode::from(EXIT_INPUT);
    }
    let links: Vec<LinkOptions> = cli
        .link
        .split(',')
        .filter(|l| !l.trim().is_empty())
        .map(|device| {
            let mut options = LinkOptions::new(device.trim());
            options.baud = cli.baud;
            options
        })
        .collect();
    if links.is_empty() {
        eprintln!("signer-client: --link names no device");
        return ExitCode::from(EXIT_INPUT);
    }
    let per_signer = if links.len() == 1 {
        cli.timeout
    } else {
        cli.failover_after
    };
    let client = Failover::new(links, Duration::from_secs_f64(per_signer));
    let local = |kind: &str, message: &str, code: u8| {
        if cli.json {
            say!("{}", serde_json::json!({"error": message, "kind": kind}));
        }
        eprintln!("signer-client: {message}");
        ExitCode::from(code)
    };
    let result = match run(&cli, &client) {
        Ok(code) => Ok(code),
        Err(Failed::Input(message)) => return local("input", &message, EXIT_INPUT),
        Err(Failed::Output(message)) => return local("output", &message, EXIT_OUTPUT),
        Err(Failed::Client(e)) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                let status = e.status().map(|s| s.to_string());
                let mut json = serde_json::json!({"error": e.to_string(), "status": status});
                if matches!(e, ClientError::InDoubt { .. })
                    || matches!(&e, ClientError::Signer { detail, .. } if detail == signer_client::IN_DOUBT_AT_GATEWAY)
                {
                    json["kind"] = "in_doubt".into();
                }
                say!("{json}");
            } else {
                eprintln!("signer-client: {e}");
                if matches!(e, ClientError::Timeout(..)) {
                    eprintln!(
                        "signer-client: hint: nothing came back on {} at {} baud: is signerd running on the other end (systemctl status signerd), is its link.baud the same as --baud, is the cable in? `signer-client health` shows the line's error counters once it answers",
                        cli.link, cli.baud
                    );
                }
            }
            ExitCode::from(match e {
                ClientError::Signer { ref detail, .. }
                    if detail == signer_client::IN_DOUBT_AT_GATEWAY =>
                {
                    EXIT_IN_DOUBT
                }
                ClientError::Signer { .. } => EXIT_REFUSED,
                ClientError::InDoubt { .. } => EXIT_IN_DOUBT,
                _ => EXIT_LINK,
            })
        }
    }
}

/// Why a command failed: bad local input (checked before anything is sent)
/// or the link or signer.
enum Failed {
    Input(String),
    Client(ClientError),
    /// The signer answered, but the answer could not be written here; the
    /// message says how to fetch it again.
    Output(String),
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Failed {
        Failed::Client(e)
    }
}

/// Runs one command: its local input is read and checked first, and only
/// then is anything sent (the link opens with the first request).
fn run(cli: &Cli, client: &Failover) -> Result<ExitCode, Failed> {
    let json = cli.json;
    Ok(match &cli.command {
        Cmd::GenerateDocs { dir } => generate_docs(dir),
        Cmd::Health { max_clock_skew } => health(client, json, *max_clock_skew)?,
        Cmd::Hello => hello(client, json)?,
        Cmd::Sign {
            profile,
            csr,
            request_id,
            subject,
            san,
            days,
            out,
        } => {
            let body =
                sign_body(profile, csr, request_id, subject, san, *days).map_err(Failed::Input)?;
            sign(client, json, body, out.as_deref())?
        }
        Cmd::CaCerts { out_dir } => ca_certs(client, json, out_dir.as_deref())?,
        Cmd::Batch {
            file,
            csr_dir,
            profile,
            days,
            out_dir,
            parallel,
        } => {
            let jobs = match (file, csr_dir) {
                (Some(file), _) => batch::from_jsonl(file),
                (None, Some(dir)) => {
                    batch::from_csr_dir(dir, profile.as_deref().unwrap_or_default(), *days)
                }
                (None, None) => Err("give a JSON-lines file or --csr-dir".into()),
            }
            .map_err(Failed::Input)?;
            if let Some(dir) = out_dir {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Failed::Input(format!("{}: {e}", dir.display())))?;
            }
            run_batch(client, json, &jobs, out_dir.as_deref(), *parallel)?
        }
        Cmd::Crl {
            issuer,
            out,
            ca_cert,
            shard,
        } => crl(client, json, issuer, *shard, out, ca_cert.as_deref())?,
        Cmd::CrlUrls { issuer } => crl_urls(client, issuer)?,
        Cmd::Revoke {
            issuer,
            serial,
            reason,
            invalidity_date,
            request_id,
        } => {
            let body = revoke_body(issuer, serial, reason, *invalidity_date, request_id)
                .map_err(Failed::Input)?;
            revoke(client, json, body)?
        }
        Cmd::Openpgp {
            command: OpenpgpCmd::CaCert { out },
        } => openpgp_ca(client, json, out.as_deref())?,
        Cmd::Audit { command } => {
            // A copy holds one signer's log: a twin's answer would be another log.
            if cli.link.split(',').filter(|l| !l.trim().is_empty()).count() > 1 {
                return Err(Failed::Input(
                    "audit commands keep one signer's log: name one device with --link (one directory per signer)".into(),
                ));
            }
            audit(client, json, command)?
        }
        Cmd::Openpgp {
            command:
                OpenpgpCmd::Certify {
                    key,
                    user_ids,
                    request_id,
                    days,
                    expires_at,
                    out,
                    armor,
                    ca_cert,
                },
        } => {
            let key_bytes =
                std::fs::read(key).map_err(|e| Failed::Input(format!("{}: {e}", key.display())))?;
            let body = msg::CertifyOpenpgp {
                request_id: request_id.clone(),
                key: key_bytes,
                user_ids: user_ids.clone(),
                expires_at: expires_at.unwrap_or(now_ms() / 1000 + i64::from(*days) * 86_400),
            };
            certify(
                client,
                json,
                body,
                out.as_deref(),
                *armor,
                ca_cert.as_deref(),
            )?
        }
    })
}

fn run_batch(
    client: &Failover,
    json: bool,
    jobs: &[batch::Job],
    out_dir: Option<&Path>,
    parallel: usize,
) -> Result<ExitCode, Failed> {
    // A bar only for a person: indicatif draws nothing when stderr is not a terminal.
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(jobs.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = |line: &serde_json::Value| {
        if json {
            say!("{line}");
        } else if line["status"] != "ok" {
            bar.suspend(|| {
                eprintln!(
                    "{}: {} {}",
                    line["request_id"].as_str().unwrap_or_default(),
                    line["status"].as_str().unwrap_or_default(),
                    line["message"].as_str().unwrap_or_default()
                )
            });
        }
        bar.inc(1);
    };
    let summary = batch::run(client, jobs, out_dir, parallel, &report).map_err(|e| {
        // Answered by the signer, but not written here: a re-run fetches it.
        Failed::Client(ClientError::Protocol(e))
    })?;
    bar.finish_and_clear();
    if !json {
        eprintln!(
            "{} done, {} already done before, {} refused, {} not answered",
            summary.done, summary.skipped, summary.refused, summary.failed
        );
    }
    Ok(if summary.failed > 0 {
        ExitCode::from(EXIT_LINK)
    } else if summary.refused > 0 {
        ExitCode::from(EXIT_REFUSED)
    } else {
        ExitCode::SUCCESS
    })
}

fn audit(client: &Failover, json: bool, command: &AuditCmd) -> Result<ExitCode, Failed> {
    use signer_client::audit::{AuditCopy, AuditError};
    let result = match command {
        AuditCmd::Sync { dir, vkey } => AuditCopy::open(dir, vkey.as_deref())
            .and_then(|copy| copy.sync(client))
            .map(|r| {
                if json {
                    serde_json::json!({"from": r.from, "to": r.to}).to_string()
                } else {
                    format!("synced {} → {} entries (checkpoint verified, consistent, acknowledged)", r.from, r.to)
                }
            }),
        AuditCmd::Verify { dir } => AuditCopy::open(dir, None)
            .and_then(|copy| copy.verify())
            .map(|r| {
                if json {
                    serde_json::json!({"entries": r.entries, "checkpoints": r.checkpoints, "size": r.size}).to_string()
                } else {
                    format!(
                        "{} entries held; {} checkpoints verified (newest {})",
                        r.entries, r.checkpoints, r.size
                    )
                }
            }),
        AuditCmd::Prove {
            dir,
            request_id,
            serial,
            certificate,
        } => {
            let mut wanted: Vec<(&str, String)> = Vec::new();
            if let Some(r) = request_id {
                wanted.push(("request_id", r.clone()));
            }
            if let Some(s) = serial {
                wanted.push((
                    "serial",
                    s.trim_start_matches("0x").replace(':', "").to_lowercase(),
                ));
            }
            if let Some(path) = certificate {
                let bytes = std::fs::read(path)
                    .map_err(|e| Failed::Input(format!("{}: {e}", path.display())))?;
                let der = signer_x509::cert_der(&bytes)
                    .map_err(|e| Failed::Input(format!("{}: {e}", path.display())))?;
                use sha2::Digest as _;
                let digest: String = sha2::Sha256::digest(&der)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                wanted.push(("certificate_sha256", digest));
            }
            if wanted.is_empty() {
                return Err(Failed::Input(
                    "name the entry: --request-id, --serial or --certificate".into(),
                ));
            }
            AuditCopy::open(dir, None).and_then(|copy| {
                let found = copy.find(&wanted)?;
                // The issuance itself, not a refusal or a replay of it.
                let (index, _) = found
                    .iter()
                    .find(|(_, e)| e.action == "sign_x509" && e.outcome == "ok")
                    .or(found.first())
                    .cloned()
                    .ok_or_else(|| AuditError::Copy("no entry held names it (sync first?)".into()))?;
                let proven = copy.prove(client, index)?;
                Ok(if json {
                    serde_json::json!({
                        "entry": proven.entry.seq,
                        "action": proven.entry.action,
                        "outcome": proven.entry.outcome,
                        "facts": proven.entry.facts,
                        "checkpoint": proven.size,
                    })
                    .to_string()
                } else {
                    format!(
                        "entry {} ({} {}) is in checkpoint {}: inclusion proof verified",
                        proven.entry.seq, proven.entry.action, proven.entry.outcome, proven.size
                    )
                })
            })
        }
    };
    match result {
        Ok(line) => {
            say!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(AuditError::Client(e)) => Err(Failed::Client(e)),
        Err(e) => {
            if json {
                say!("{}", serde_json::json!({"error": e.to_string()}));
            } else {
                eprintln!("signer-client: {e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn health(client: &Failover, json: bool, max_skew: f64) -> Result<ExitCode, ClientError> {
    let before = now_ms();
    let h = client.health()?;
    let after = now_ms();
    // Compare against the middle of the round trip.
    let skew_s = (h.time_ms - (before + after) / 2) as f64 / 1000.0;
    let skew_warning = skew_s.abs() > max_skew;
    if json {
        let value = serde_json::json!({
            "health": h,
            "level": level(h.status),
            "checks": h.checks.iter().map(|c| serde_json::json!({
                "name": c.name, "status": c.status, "level": level(c.status), "detail": c.detail,
            })).collect::<Vec<_>>(),
            "clock_skew_s": skew_s,
            "clock_skew_warning": skew_warning,
            "client_link": client.stats(),
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print_health(&h, skew_s);
    }
    if h.status == msg::HealthStatus::Failing {
        return Ok(ExitCode::from(EXIT_FAILING));
    }
    if skew_warning {
        // The client never sets the signer's clock: an operator does, on the signer host.
        eprintln!(
            "signer-client: the signer's clock is {skew_s:+.1} s off this host's (more than --max-clock-skew {max_skew} s): set the signer host's clock"
        );
        return Ok(ExitCode::from(EXIT_CLOCK));
    }
    if h.status == msg::HealthStatus::Degraded {
        return Ok(ExitCode::from(EXIT_DEGRADED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit status of `health` for a degraded signer.
const EXIT_DEGRADED: u8 = 1;
/// Exit status of `health` for a failing signer.
const EXIT_FAILING: u8 = 2;

/// A health status as a number for monitoring: 0 ok, 1 degraded, 2 failing.
fn level(s: msg::HealthStatus) -> u8 {
    match s {
        msg::HealthStatus::Ok => 0,
        msg::HealthStatus::Degraded => EXIT_DEGRADED,
        msg::HealthStatus::Failing => EXIT_FAILING,
    }
}

/// Exit status of `health` when the signer's clock is off by more than
/// `--max-clock-skew`.
const EXIT_CLOCK: u8 = 5;

fn status_word(s: msg::HealthStatus) -> &'static str {
    match s {
        msg::HealthStatus::Ok => "ok",
        msg::HealthStatus::Degraded => "DEGRADED",
        msg::HealthStatus::Failing => "FAILING",
    }
}

fn print_health(h: &msg::HealthReply, skew_s: f64) {
    let time = UNIX_EPOCH + Duration::from_millis(h.time_ms.max(0) as u64);
    say!("signer    {} (signerd {})", h.signer_id, h.version);
    say!("status    {}", status_word(h.status));
    say!(
        "time      {} (differs from this host by {skew_s:+.1} s)",
        humantime::format_rfc3339_seconds(time)
    );
    say!(
        "uptime    {}",
        humantime::format_duration(Duration::from_secs(h.uptime_s))
    );
    let l = &h.link;
    say!(
        "link      {} frames in, {} bad (crc {}, cobs {}, oversize {}, short {}), {} malformed",
        l.frames_ok,
        l.frames_bad_crc + l.frames_bad_cobs + l.frames_oversize + l.frames_short,
        l.frames_bad_crc,
        l.frames_bad_cobs,
        l.frames_oversize,
        l.frames_short,
        l.malformed
    );
    say!(
        "          {} frames out, {} replayed, {} duplicate retries, {} busy, device opened {} time(s)",
        l.frames_sent, l.replayed, l.duplicates_in_flight, l.busy, l.opens
    );
    for c in &h.checks {
        say!(
            "check     {:<24} {:<8} {}",
            c.name,
            status_word(c.status),
            c.detail
        );
    }
}

fn hello(client: &Failover, json: bool) -> Result<ExitCode, ClientError> {
    let Some(h) = client.server() else {
        return Err(ClientError::Protocol("no hello reply".into()));
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
    } else {
        say!("signer        {} ({})", h.signer_id, h.server);
        say!(
            "protocol      version {} (signer speaks {:?})",
            h.version,
            h.versions
        );
        say!("max_frame     {} bytes", h.max_frame);
        say!("max_in_flight {}", h.max_in_flight);
        let names: Vec<String> = h
            .commands
            .iter()
            .map(|&c| signer_protocol::Command(c).to_string())
            .collect();
        say!("commands      {}", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses locally what is not a PKCS#10 request at all, before anything
/// is sent: above all a private key given by mistake. Whether the request
/// is acceptable (its key, its signature) is the signer's decision.
fn check_csr(bytes: &[u8]) -> Result<(), String> {
    if bytes
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
    {
        return Err(
            "this is a private key, not a certificate request: nothing was sent; give the CSR made from the key (openssl req -new -key …)".into(),
        );
    }
    match signer_x509::csr::Csr::parse(bytes) {
        Ok(_)
        | Err(
            signer_x509::csr::CsrError::UnsupportedKey(_)
            | signer_x509::csr::CsrError::UnknownCriticalExtension(_),
        ) => Ok(()),
        Err(e) => Err(format!(
            "not a certificate request (PKCS#10, PEM or DER): {e}; nothing was sent"
        )),
    }
}

fn sign_body(
    profile: &str,
    csr: &Path,
    request_id: &str,
    subject: &str,
    sans: &[String],
    days: Option<u32>,
) -> Result<msg::SignX509, String> {
    let path = csr;
    let csr = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check_csr(&csr).map_err(|e| format!("{}: {e}", path.display()))?;
    let subject =
        signer_x509::name::parse_rfc4514(subject).map_err(|e| format!("--subject: {e}"))?;
    let sans = sans
        .iter()
        .map(|s| {
            s.split_once(':')
                .map(|(k, v)| msg::SanEntry {
                    kind: k.to_string(),
                    value: v.to_string(),
                })
                .ok_or_else(|| format!("--san {s:?} is not TYPE:VALUE"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(msg::SignX509 {
        request_id: request_id.to_string(),
        profile: profile.to_string(),
        csr,
        subject,
        sans,
        validity_days: days,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sign(
    client: &Failover,
    json: bool,
    body: msg::SignX509,
    out: Option<&Path>,
) -> Result<ExitCode, Failed> {
    let reply = signer_client::verify::sign_checked(client, &body)?;
    let text = signer_x509::cert_pem(&reply.certificate);
    match out {
        Some(path) => std::fs::write(path, &text).map_err(|e| {
            Failed::Output(format!(
                "{}: {e}; the certificate (serial {}) was issued and the signer keeps it: run the same command again (request id {}) to fetch it",
                path.display(),
                hex(&reply.serial),
                body.request_id
            ))
        })?,
        None if !json => say_raw!("{text}"),
        None => {}
    }
    if json {
        let value = serde_json::json!({
            "serial": hex(&reply.serial),
            "issuer": reply.issuer,
            "not_before": reply.not_before,
            "not_after": reply.not_after,
            "replayed": reply.replayed,
            "signer": client.server().map(|h| h.signer_id),
            "failovers": client.failovers(),
            "certificate": text,
        });
        say!("{value}");
    } else {
        if client.failovers() > 0 {
            eprintln!(
                "note: failed over {} time(s); answered by {}",
                client.failovers(),
                client
                    .server()
                    .map(|h| h.signer_id)
                    .unwrap_or_else(|| "?".into())
            );
        }
        eprintln!(
            "issued by {} serial {}{}",
            reply.issuer,
            hex(&reply.serial),
            if reply.replayed {
                " (issued earlier for this request id)"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn ca_certs(client: &Failover, json: bool, out_dir: Option<&Path>) -> Result<ExitCode, Failed> {
    let reply: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {})?;
    for ca in &reply.cas {
        let text = signer_x509::cert_pem(&ca.certificate);
        match out_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.pem", ca.name));
                std::fs::write(&path, &text)
                    .map_err(|e| Failed::Output(format!("{}: {e}", path.display())))?;
                if !json {
                    say!("wrote {}", path.display());
                }
            }
            None if !json => say_raw!("# {}\n{text}", ca.name),
            None => {}
        }
    }
    if json {
        let list: Vec<_> = reply
            .cas
            .iter()
            .map(|c| {
                let mut v = serde_json::json!({"name": c.name, "certificate": signer_x509::cert_pem(&c.certificate)});
                if let Some(shards) = &c.crl_shards {
                    v["crl_shards"] = serde_json::json!(shards);
                }
                v
            })
            .collect();
        say!("{}", serde_json::Value::Array(list));
    }
    Ok(ExitCode::SUCCESS)
}

fn crl_urls(client: &Failover, issuer: &str) -> Result<ExitCode, Failed> {
    let reply: msg::CaCertsReply = client.request::<calls::CaCerts>(&msg::Empty {})?;
    let ca = reply
        .cas
        .iter()
        .find(|c| c.name == issuer)
        .ok_or_else(|| Failed::Input(format!("the signer has no CA named {issuer}")))?;
    let shards = ca.crl_shards.as_ref().ok_or_else(|| {
        Failed::Input(format!(
            "{issuer} has no CRL shards: its certificates name its full CRL"
        ))
    })?;
    say!("{}", serde_json::json!(shards));
    Ok(ExitCode::SUCCESS)
}

const REASONS: &[(&str, u8)] = &[
    ("unspecified", 0),
    ("key_compromise", 1),
    ("ca_compromise", 2),
    ("affiliation_changed", 3),
    ("superseded", 4),
    ("cessation_of_operation", 5),
    ("privilege_withdrawn", 9),
    ("aa_compromise", 10),
];

fn revoke_body(
    issuer: &str,
    serial: &str,
    reason: &str,
    invalidity_date: Option<i64>,
    request_id: &str,
) -> Result<msg::RevokeX509, String> {
    let hex_digits = serial.trim_start_matches("0x").replace(':', "");
    let padded = if hex_digits.len() % 2 == 1 {
        format!("0{hex_digits}")
    } else {
        hex_digits
    };
    let serial = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("--serial {serial:?} is not hex"))?;
    let reason = match REASONS.iter().find(|(name, _)| *name == reason) {
        Some((_, code)) => *code,
        None => reason
            .parse()
            .map_err(|_| format!("--reason {reason:?} is not a known reason"))?,
    };
    Ok(msg::RevokeX509 {
        request_id: request_id.to_string(),
        issuer: issuer.to_string(),
        serial,
        reason,
        invalidity_date,
    })
}

fn revoke(client: &Failover, json: bool, body: msg::RevokeX509) -> Result<ExitCode, ClientError> {
    let reply: msg::RevokeX509Reply = client.request::<calls::RevokeX509>(&body)?;
    if json {
        say!("{}", serde_json::to_string(&reply).unwrap_or_default());
    } else {
        let reason = REASONS
            .iter()
            .find(|(_, c)| *c == reply.reason)
            .map(|(n, _)| *n)
            .unwrap_or("?");
        say!(
            "revoked at {} with reason {reason}{}{}",
            reply.revoked_at,
            if reply.replayed {
                " (already revoked)"
            } else {
                ""
            },
            if reply.legacy { " (legacy serial)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn crl(
    client: &Failover,
    json: bool,
    issuer: &str,
    shard: Option<u8>,
    out: &Path,
    ca_cert: Option<&Path>,
) -> Result<ExitCode, Failed> {
    let have = std::fs::read(out).ok();
    let cert = match ca_cert {
        Some(path) => {
            let bytes = std::fs::read(path)
                .map_err(|e| Failed::Input(format!("{}: {e}", path.display())))?;
            Some(
                signer_x509::cert_der(&bytes)
                    .map_err(|e| Failed::Input(format!("{}: {e}", path.display())))?,
            )
        }
        None => None,
    };
    let before = client.stats().bytes_received;
    let fetched = signer_client::verify::fetch_crl_checked(
        client,
        issuer,
        shard,
        have.as_deref(),
        cert.as_deref(),
    )?;
    let received = client.stats().bytes_received - before;
    let (reply, new_der, via) = (fetched.reply, fetched.der, fetched.via);
    if let Some(der) = &new_der {
        // Replace atomically: a reader never sees half a CRL.
        let tmp = out.with_extension("tmp");
        std::fs::write(&tmp, der)
            .and_then(|()| std::fs::rename(&tmp, out))
            .map_err(|e| {
                Failed::Output(format!(
                    "{}: {e}; the CRL was fetched and checked but not written (the file held is unchanged)",
                    out.display()
                ))
            })?;
    }
    if json {
        let value = serde_json::json!({
            "unchanged": reply.unchanged,
            "via": via,
            "number": hex(&reply.number),
            "this_update": reply.this_update,
            "next_update": reply.next_update,
            "entries": reply.entries,
            "bytes": new_der.as_ref().map(Vec::len),
            "link_bytes": received,
        });
        say!("{value}");
    } else if reply.unchanged {
        say!(
            "CRL {} of {issuer} unchanged ({} entries, {received} bytes on the link)",
            hex(&reply.number),
            reply.entries
        );
    } else {
        say!(
            "wrote CRL {} of {issuer} to {} ({} entries, via {via}, {received} bytes on the link)",
            hex(&reply.number),
            out.display(),
            reply.entries
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `out` (or standard output); `again` says how to get
/// the answer once more when it cannot be written.
fn write_or_print(
    out: Option<&Path>,
    bytes: &[u8],
    print: bool,
    again: &str,
) -> Result<(), Failed> {
    use std::io::Write;
    match out {
        Some(path) => std::fs::write(path, bytes)
            .map_err(|e| Failed::Output(format!("{}: {e}; {again}", path.display()))),
        None if print => std::io::stdout()
            .write_all(bytes)
            .map_err(|e| Failed::Output(format!("standard output: {e}; {again}"))),
        None => Ok(()),
    }
}

fn openpgp_ca(client: &Failover, json: bool, out: Option<&Path>) -> Result<ExitCode, Failed> {
    let reply: msg::OpenpgpCaReply = client.request::<calls::OpenpgpCa>(&msg::Empty {})?;
    let armored = signer_openpgp::armor_public_key(&reply.certificate);
    write_or_print(out, armored.as_bytes(), !json, "run the command again")?;
    if json {
        let value = serde_json::json!({"fingerprint": reply.fingerprint, "certificate": armored});
        say!("{value}");
    } else {
        eprintln!("OpenPGP CA key {}", reply.fingerprint);
    }
    Ok(ExitCode::SUCCESS)
}

fn certify(
    client: &Failover,
    json: bool,
    body: msg::CertifyOpenpgp,
    out: Option<&Path>,
    armor: bool,
    ca_cert: Option<&Path>,
) -> Result<ExitCode, Failed> {
    let ca = match ca_cert {
        Some(path) => Some(
            std::fs::read(path).map_err(|e| Failed::Input(format!("{}: {e}", path.display())))?,
        ),
        None => None,
    };
    let reply = signer_client::verify::certify_checked(client, &body, ca.as_deref())?;
    let bytes = if armor {
        signer_openpgp::armor_public_key(&reply.key).into_bytes()
    } else {
        reply.key.clone()
    };
    let again = format!(
        "the certification was made and the signer keeps it: run the same command again (request id {}) to fetch it",
        body.request_id
    );
    write_or_print(out, &bytes, !json, &again)?;
    if json {
        let uids: Vec<&str> = reply
            .certifications
            .iter()
            .map(|c| c.user_id.as_str())
            .collect();
        let value = serde_json::json!({
            "fingerprint": reply.fingerprint,
            "ca_fingerprint": reply.ca_fingerprint,
            "user_ids": uids,
            "created_at": reply.created_at,
            "expires_at": reply.expires_at,
            "replayed": reply.replayed,
            "signer": client.server().map(|h| h.signer_id),
            "failovers": client.failovers(),
        });
        say!("{value}");
    } else {
        for c in &reply.certifications {
            eprintln!(
                "certified {:?} on {} with CA key {}{}",
                c.user_id,
                reply.fingerprint,
                reply.ca_fingerprint,
                if reply.replayed {
                    " (certified earlier for this request id)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
