//! What a client talks through: a serial device, or the local socket of a
//! gateway that owns the devices (`unix:/run/signer/gateway.sock`). Both
//! carry the same frames.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The prefix that names a gateway's local socket instead of a device.
pub const UNIX_PREFIX: &str = "unix:";

/// The socket path when `device` names a gateway's socket.
pub fn unix_path(device: &Path) -> Option<&Path> {
    device.to_str()?.strip_prefix(UNIX_PREFIX).map(Path::new)
}

/// One open link.
pub(crate) enum Port {
    Serial(Box<dyn serialport::SerialPort>),
    Unix(UnixStream),
}

impl Port {
    /// Opens a device or socket; reads time out after `poll`.
    pub(crate) fn open(device: &Path, baud: u32, poll: Duration) -> std::io::Result<Port> {
        match unix_path(device) {
            Some(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(poll))?;
                Ok(Port::Unix(stream))
            }
            None => serialport::new(device.to_string_lossy(), baud)
                .timeout(poll)
                .open()
                .map(Port::Serial)
                .map_err(std::io::Error::from),
        }
    }

    pub(crate) fn try_clone(&self) -> std::io::Result<Port> {
        match self {
            Port::Serial(p) => p.try_clone().map(Port::Serial).map_err(Into::into),
            Port::Unix(s) => s.try_clone().map(Port::Unix),
        }
    }

    /// Reads what arrived: `Ok(None)` when nothing did within the poll
    /// interval, an error when the link is gone (a socket's end of stream).
    pub(crate) fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        let result = match self {
            Port::Serial(p) => p.read(buf),
            Port::Unix(s) => match s.read(buf) {
                Ok(0) => Err(std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the gateway closed the connection",
                )),
                other => other,
            },
        };
        match result {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::TimedOut | ErrorKind::Interrupted | ErrorKind::WouldBlock
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

impl Write for Port {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Port::Serial(p) => p.write(buf),
            Port::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Port::Serial(p) => p.flush(),
            Port::Unix(s) => s.flush(),
        }
    }
}
