//! Log output: stderr in the foreground; a log file or syslog when detached.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;

/// Returns the level for `-v` given `count` times: warnings by default.
pub fn level(count: u8) -> LevelFilter {
    match count {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Logs to stderr; `RUST_LOG` overrides the level.
pub fn to_stderr(level: LevelFilter) {
    let _ = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .format_target(false)
        .try_init();
}

/// Logs to `file`, or to syslog's `/dev/log` when no file is given. Without
/// either, messages are dropped.
pub fn to_file_or_syslog(file: Option<&Path>, level: LevelFilter) -> std::io::Result<()> {
    let sink = match file {
        Some(path) => Sink::File(OpenOptions::new().create(true).append(true).open(path)?),
        None => match UnixDatagram::unbound()
            .and_then(|socket| socket.connect("/dev/log").map(|()| socket))
        {
            Ok(socket) => Sink::Syslog(socket),
            Err(_) => Sink::Discard,
        },
    };
    let logger = Box::new(Logger {
        sink: Mutex::new(sink),
        level,
    });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

enum Sink {
    File(File),
    Syslog(UnixDatagram),
    Discard,
}

struct Logger {
    sink: Mutex<Sink>,
    level: LevelFilter,
}

/// The syslog priority: facility daemon (3) and the record's severity.
fn priority(level: Level) -> u8 {
    let severity = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    3 * 8 + severity
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let pid = std::process::id();
        match &mut *self.sink.lock() {
            Sink::File(file) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let _ = writeln!(
                    file,
                    "{}.{:03} unionfs[{pid}] {}: {}",
                    now.as_secs(),
                    now.subsec_millis(),
                    record.level(),
                    record.args()
                );
            }
            Sink::Syslog(socket) => {
                let line = format!(
                    "<{}>unionfs[{pid}]: {}",
                    priority(record.level()),
                    record.args()
                );
                let _ = socket.send(line.as_bytes());
            }
            Sink::Discard => {}
        }
    }

    fn flush(&self) {
        if let Sink::File(file) = &mut *self.sink.lock() {
            let _ = file.flush();
        }
    }
}
