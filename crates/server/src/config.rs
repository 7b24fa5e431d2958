//! The daemon's YAML configuration: parsed strictly (unknown keys are
//! errors), then validated; every error names the key path.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::engine::EngineConfig;
pub use signer_service::config::{ConfigError, Section};

/// Parity setting of the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control of the serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF (unusable with binary frames unless the line is 7-bit clean; kept for completeness).
    Software,
    /// RTS/CTS.
    Hardware,
}

fn default_baud() -> u32 {
    115_200
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_flow() -> FlowControl {
    FlowControl::None
}
fn default_reopen_min_ms() -> u64 {
    100
}
fn default_reopen_max_ms() -> u64 {
    5_000
}

/// `link:` — the serial device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// Device path, e.g. `/dev/ttyUSB0` (relative paths are resolved against the config file).
    pub device: PathBuf,
    /// Line speed in baud (default 115200).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none` (default), `odd` or `even`.
    #[serde(default = "default_parity")]
    pub parity: Parity,
    /// 5–8 (default 8).
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 (default) or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// `none` (default), `software` or `hardware`.
    #[serde(default = "default_flow")]
    pub flow_control: FlowControl,
    /// First delay before reopening a vanished device, in ms (default 100).
    #[serde(default = "default_reopen_min_ms")]
    pub reopen_min_ms: u64,
    /// Longest delay between reopen attempts, in ms (default 5000).
    #[serde(default = "default_reopen_max_ms")]
    pub reopen_max_ms: u64,
}

fn default_max_frame() -> u32 {
    16_384
}
fn default_max_in_flight() -> u32 {
    16
}
fn default_cache_entries() -> usize {
    4096
}
fn default_cache_mib() -> usize {
    64
}
fn default_workers() -> usize {
    2
}

/// `protocol:` — limits of the wire protocol.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    /// Largest frame content in bytes, 4096–1048576 (default 16384).
    #[serde(default = "default_max_frame")]
    pub max_frame: u32,
    /// Requests that may be in flight at once, 1–1024 (default 16).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Completed responses kept for retried ids (default 4096).
    #[serde(default = "default_cache_entries")]
    pub response_cache_entries: usize,
    /// Memory for kept responses in MiB (default 64).
    #[serde(default = "default_cache_mib")]
    pub response_cache_mib: usize,
    /// Worker threads executing commands, 1–64 (default 2).
    #[serde(default = "default_workers")]
    pub workers: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            max_frame: default_max_frame(),
            max_in_flight: default_max_in_flight(),
            response_cache_entries: default_cache_entries(),
            response_cache_mib: default_cache_mib(),
            workers: default_workers(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines (journald adds timestamps).
    Text,
    /// One JSON object per line.
    Json,
}

fn default_log_format() -> LogFormat {
    LogFormat::Text
}
fn default_log_level() -> String {
    "info".into()
}

/// `log:` — tracing output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `signer_server=debug` (default `info`).
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// No `ca:` section: the file must not have one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSection {}

impl Section for NoSection {
    fn validate(&mut self, _file: &Path, _base: &Path) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "S: Section"))]
pub struct Config<S = NoSection> {
    /// This signer's name: lowercase letters, digits and `-`, distinct for each twin.
    pub signer_id: String,
    /// The serial link.
    pub link: LinkConfig,
    /// Protocol limits.
    #[serde(default)]
    pub protocol: ProtocolConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The certificate authority: HSM, keys, CAs, profiles, repository.
    #[serde(default)]
    pub ca: Option<S>,
}

impl<S: Section> Config<S> {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config<S>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` resolves relative paths and names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config<S>, ConfigError> {
        let mut config: Config<S> = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.link.device.is_relative() {
            config.link.device = base.join(&config.link.device);
        }
        config.validate(path)?;
        if let Some(section) = config.ca.as_mut() {
            section.validate(path, base)?;
        }
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let id_ok = !self.signer_id.is_empty()
            && self.signer_id.len() <= 32
            && self
                .signer_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(invalid(
                "signer_id",
                format!(
                    "expected 1–32 of a-z, 0-9 and '-', got {:?}",
                    self.signer_id
                ),
            ));
        }
        let l = &self.link;
        if l.baud == 0 {
            return Err(invalid("link.baud", "expected a positive baud rate".into()));
        }
        if !(5..=8).contains(&l.data_bits) {
            return Err(invalid(
                "link.data_bits",
                format!("expected 5 to 8, got {}", l.data_bits),
            ));
        }
        if !(1..=2).contains(&l.stop_bits) {
            return Err(invalid(
                "link.stop_bits",
                format!("expected 1 or 2, got {}", l.stop_bits),
            ));
        }
        if l.reopen_min_ms == 0 || l.reopen_min_ms > l.reopen_max_ms {
            return Err(invalid(
                "link.reopen_min_ms",
                format!(
                    "expected 1 to link.reopen_max_ms ({}), got {}",
                    l.reopen_max_ms, l.reopen_min_ms
                ),
            ));
        }
        let p = &self.protocol;
        if !(1024..=1 << 20).contains(&p.max_frame) {
            return Err(invalid(
                "protocol.max_frame",
                format!("expected 1024 to 1048576, got {}", p.max_frame),
            ));
        }
        if !(1..=1024).contains(&p.max_in_flight) {
            return Err(invalid(
                "protocol.max_in_flight",
                format!("expected 1 to 1024, got {}", p.max_in_flight),
            ));
        }
        if !(1..=64).contains(&p.workers) {
            return Err(invalid(
                "protocol.workers",
                format!("expected 1 to 64, got {}", p.workers),
            ));
        }
        if p.response_cache_entries == 0 {
            return Err(invalid(
                "protocol.response_cache_entries",
                "expected at least 1".into(),
            ));
        }
        if !(1..=4096).contains(&p.response_cache_mib) {
            return Err(invalid(
                "protocol.response_cache_mib",
                format!("expected 1 to 4096, got {}", p.response_cache_mib),
            ));
        }
        if tracing_level_ok(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "expected a level such as info or debug, got {:?}",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    /// The engine's limits from this configuration.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            signer_id: self.signer_id.clone(),
            max_frame: self.protocol.max_frame,
            max_in_flight: self.protocol.max_in_flight,
            cache_entries: self.protocol.response_cache_entries,
            cache_bytes: self.protocol.response_cache_mib << 20,
            workers: self.protocol.workers,
        }
    }
}

/// Accepts `level` or comma-separated `target=level` directives.
fn tracing_level_ok(filter: &str) -> Result<(), ()> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',') {
        let level = directive.rsplit('=').next().unwrap_or("");
        if !LEVELS.contains(&level.trim()) {
            return Err(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::<NoSection>::parse(text, Path::new("/etc/signer/signerd.yaml"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse("signer_id: a\nlink:\n  device: ttyS0\n").unwrap();
        assert_eq!(c.link.device, Path::new("/etc/signer/ttyS0"));
        assert_eq!(c.link.baud, 115_200);
        assert_eq!(c.protocol.max_frame, 16_384);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse("signer_id: a\nlink:\n  device: /dev/x\n  baudrate: 9600\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("link") && err.contains("baudrate"), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = parse("signer_id: a\nlink:\n  device: /dev/x\n  baud: fast\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("link.baud"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        for (yaml, key) in [
            ("signer_id: A\nlink: {device: /x}\n", "signer_id"),
            (
                "signer_id: a\nlink: {device: /x, data_bits: 9}\n",
                "link.data_bits",
            ),
            (
                "signer_id: a\nlink: {device: /x}\nprotocol: {max_frame: 10}\n",
                "protocol.max_frame",
            ),
            (
                "signer_id: a\nlink: {device: /x}\nlog: {level: loud}\n",
                "log.level",
            ),
        ] {
            let err = parse(yaml).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
