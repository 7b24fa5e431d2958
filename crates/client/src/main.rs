//! `signer-client`: talk to a signer over a serial device.
//!
//! Exit codes: 0 success, 1 the signer refused the request, 2 usage error,
//! 3 link failure or timeout, 4 bad local input (a file, an argument).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use signer_client::{Client, ClientError, LinkOptions};
use signer_protocol::msg;

/// Client for the serial-link signer.
#[derive(Parser)]
#[command(name = "signer-client", version, about)]
struct Cli {
    /// Serial device of the signer.
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
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the signer's health; warns when its clock is off.
    Health {
        /// Warn when the signer's clock differs from this host's by more than this many seconds.
        #[arg(long, default_value_t = 60.0)]
        max_clock_skew: f64,
    },
    /// Show protocol version and limits agreed with the signer.
    Hello,
}

const EXIT_REFUSED: u8 = 1;
const EXIT_LINK: u8 = 3;
const EXIT_INPUT: u8 = 4;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        eprintln!("signer-client: --timeout must be a positive number of seconds");
        return ExitCode::from(EXIT_INPUT);
    }
    let mut options = LinkOptions::new(&cli.link);
    options.baud = cli.baud;
    options.timeout = Duration::from_secs_f64(cli.timeout);
    let result = Client::open(&options).and_then(|client| match cli.command {
        Cmd::Health { max_clock_skew } => health(&client, cli.json, max_clock_skew),
        Cmd::Hello => hello(&client, cli.json),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                let status = e.status().map(|s| s.to_string());
                println!(
                    "{}",
                    serde_json::json!({"error": e.to_string(), "status": status})
                );
            } else {
                eprintln!("signer-client: {e}");
            }
            ExitCode::from(match e {
                ClientError::Signer { .. } => EXIT_REFUSED,
                _ => EXIT_LINK,
            })
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn health(client: &Client, json: bool, max_skew: f64) -> Result<ExitCode, ClientError> {
    let before = now_ms();
    let h = client.health()?;
    let after = now_ms();
    // Compare against the middle of the round trip.
    let skew_s = (h.time_ms - (before + after) / 2) as f64 / 1000.0;
    let skew_warning = skew_s.abs() > max_skew;
    if json {
        let value = serde_json::json!({
            "health": h,
            "clock_skew_s": skew_s,
            "clock_skew_warning": skew_warning,
            "client_link": client.stats(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print_health(&h, skew_s);
        if skew_warning {
            eprintln!(
                "warning: the signer's clock is {skew_s:+.1} s off this host's (more than {max_skew} s)"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_word(s: msg::HealthStatus) -> &'static str {
    match s {
        msg::HealthStatus::Ok => "ok",
        msg::HealthStatus::Degraded => "DEGRADED",
        msg::HealthStatus::Failing => "FAILING",
    }
}

fn print_health(h: &msg::HealthReply, skew_s: f64) {
    let time = UNIX_EPOCH + Duration::from_millis(h.time_ms.max(0) as u64);
    println!("signer    {} (signerd {})", h.signer_id, h.version);
    println!("status    {}", status_word(h.status));
    println!(
        "time      {} (differs from this host by {skew_s:+.1} s)",
        humantime::format_rfc3339_seconds(time)
    );
    println!(
        "uptime    {}",
        humantime::format_duration(Duration::from_secs(h.uptime_s))
    );
    let l = &h.link;
    println!(
        "link      {} frames in, {} bad (crc {}, cobs {}, oversize {}, short {}), {} malformed",
        l.frames_ok,
        l.frames_bad_crc + l.frames_bad_cobs + l.frames_oversize + l.frames_short,
        l.frames_bad_crc,
        l.frames_bad_cobs,
        l.frames_oversize,
        l.frames_short,
        l.malformed
    );
    println!(
        "          {} frames out, {} replayed, {} duplicate retries, {} busy, device opened {} time(s)",
        l.frames_sent, l.replayed, l.duplicates_in_flight, l.busy, l.opens
    );
    for c in &h.checks {
        println!(
            "check     {:<24} {:<8} {}",
            c.name,
            status_word(c.status),
            c.detail
        );
    }
}

fn hello(client: &Client, json: bool) -> Result<ExitCode, ClientError> {
    let Some(h) = client.server() else {
        return Err(ClientError::Protocol("no hello reply".into()));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&h).unwrap_or_default());
    } else {
        println!("signer        {} ({})", h.signer_id, h.server);
        println!(
            "protocol      version {} (signer speaks {:?})",
            h.version, h.versions
        );
        println!("max_frame     {} bytes", h.max_frame);
        println!("max_in_flight {}", h.max_in_flight);
        let names: Vec<String> = h
            .commands
            .iter()
            .map(|&c| signer_protocol::Command(c).to_string())
            .collect();
        println!("commands      {}", names.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}
