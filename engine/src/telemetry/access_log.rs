//! The access log: one JSON line per call, written off the workers.
//!
//! Each worker formats its lines into its own buffer and hands full buffers
//! (or, every [`FLUSH_EVERY`], whatever it has) to one writer thread over a
//! bounded channel; only that thread touches the file or stdout. A worker
//! never waits: if the writer falls behind and the channel is full, the
//! batch is dropped and counted (`grpc_proxy_access_log_dropped`).
//!
//! A line: `{"time":"2026-11-30T09:00:00.123Z","peer":"10.0.0.9:51234",
//! "method":"/pkg.Svc/Do","route":"users","cluster":"users",
//! "upstream":"10.0.0.5:50052","grpc_status":0,"grpc_code":"OK",
//! "duration_ms":1.234,"bytes_in":120,"bytes_out":2048,
//! "client":"spiffe://example.org/billing"}`; `cluster` and `upstream` are
//! null for calls that never reached one, `client` is the verified client
//! certificate's first URI SAN (else its CN), or null. A call that failed
//! upstream adds `"error"`: the detail (endpoint, OS, TLS or HTTP/2 words)
//! that the client's short status leaves out.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::config::AccessLogTarget;
use crate::grpc::status::Code;
use crate::telemetry::metrics::CoreCounters;
use crate::transport::tls::PeerIdentity;

/// A worker hands its buffer on at this size...
const BATCH: usize = 32 * 1024;
/// ...or after this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Batches waiting for the writer before workers start dropping.
const QUEUE: usize = 256;

/// One call, as logged.
pub struct Entry<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The method path.
    pub method: &'a str,
    /// The route's name.
    pub route: &'a str,
    /// The cluster, if the call was forwarded.
    pub cluster: Option<&'a str>,
    /// The endpoint, if one was reached.
    pub upstream: Option<SocketAddr>,
    /// The status the client got.
    pub code: Code,
    /// From request headers to the end of the response.
    pub duration: Duration,
    /// Request payload bytes.
    pub bytes_in: u64,
    /// Response payload bytes.
    pub bytes_out: u64,
    /// The verified client certificate.
    pub client: Option<&'a PeerIdentity>,
    /// What went wrong upstream, in detail, if anything did.
    pub error: Option<&'a str>,
}

/// The writer side: a thread that owns the output.
#[derive(Debug)]
pub struct Writer {
    tx: Sender<Vec<u8>>,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Opens the output (a file is created or appended to) and starts the
    /// writer thread.
    pub fn start(target: &AccessLogTarget) -> std::io::Result<Writer> {
        let out = Output::open(target)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("grpc-proxy-log".into())
            .spawn(move || write_all(out, rx))?;
        Ok(Writer { tx, thread })
    }

    /// A logger for one worker.
    pub fn logger(&self) -> Logger {
        Logger {
            tx: self.tx.clone(),
            buf: RefCell::new(Vec::with_capacity(BATCH)),
            lines: Cell::new(0),
        }
    }

    /// Writes everything sent so far, then ends the writer: to be called
    /// once no worker runs. Not when the last logger is gone: a worker
    /// whose thread unwound from a panic may leave its logger behind
    /// (held by tasks it never dropped), and the writer would wait for
    /// good.
    pub fn finish(self) {
        // The end: a batch is never empty (see `Logger::flush`).
        let _ = self.tx.send(Vec::new());
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// How often the writer looks whether its file was moved away.
const ROTATION_LOOK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where the lines go: standard output, or a file that is opened again
/// when it was moved away or removed (logrotate's default: rename, then
/// the program's next file), so that lines never go to a file nobody
/// reads, or to a removed one whose space is never freed.
enum Output {
    Stdout(std::io::Stdout),
    File {
        path: std::path::PathBuf,
        file: std::fs::File,
        looked: std::time::Instant,
        /// Opening it again failed (said once, until it works).
        stuck: bool,
    },
}

impl Output {
    fn open(target: &AccessLogTarget) -> std::io::Result<Output> {
        Ok(match target {
            AccessLogTarget::Stdout => Output::Stdout(std::io::stdout()),
            AccessLogTarget::File(path) => Output::File {
                file: open_file(path)?,
                path: path.clone(),
                looked: std::time::Instant::now(),
                stuck: false,
            },
        })
    }

    /// The file to write to now, and whether it is another than the last
    /// time: the same one, unless its path names another file or none
    /// (then a new one), looked at once a second.
    fn current(&mut self) -> (&mut dyn Write, bool) {
        match self {
            Output::Stdout(out) => (out, false),
            Output::File {
                path,
                file,
                looked,
                stuck,
            } => {
                let mut new = false;
                if looked.elapsed() >= ROTATION_LOOK {
                    *looked = std::time::Instant::now();
                    if moved(path, file) {
                        match open_file(path) {
                            Ok(opened) => {
                                tracing::info!(path = %path.display(), "access log opened again after it was moved");
                                *file = opened;
                                *stuck = false;
                                new = true;
                            }
                            Err(e) if !*stuck => {
                                *stuck = true;
                                tracing::warn!(error = %e, "cannot open the access log again; writing on to the old file");
                            }
                            Err(_) => {}
                        }
                    }
                }
                (file, new)
            }
        }
    }
}

fn open_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            )
        })
}

/// Whether `path` no longer names `file` (renamed or removed).
fn moved(path: &std::path::Path, file: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(named), Ok(open)) => named.ino() != open.ino() || named.dev() != open.dev(),
        (Err(_), _) => true,
        (Ok(_), Err(_)) => false,
    }
}

/// Writes the batches as they come. A failed write (a full disk, a
/// closed pipe) is logged once, and its recovery once, not per batch; a
/// line it cut short is ended before the next batch, so that each line
/// stays one JSON value.
fn write_all(mut out: Output, rx: Receiver<Vec<u8>>) {
    let mut failing = false;
    let mut cut = false;
    for batch in rx {
        if batch.is_empty() {
            return;
        }
        let (out, new) = out.current();
        // A line cut short in the old file stays so; the new one starts
        // clean.
        cut &= !new;
        if cut && out.write_all(b"\n").is_ok() {
            cut = false;
        }
        let mut at = 0;
        let result = loop {
            match out.write(&batch[at..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    if at == batch.len() {
                        break out.flush();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("access log writes work again");
            }
            Ok(()) => {}
            Err(e) => {
                cut |= at > 0 && at < batch.len();
                if !failing {
                    failing = true;
                    tracing::error!(error = %e, "access log write failed; lines are lost until writes work again");
                }
            }
        }
    }
}

/// A line as serialised: borrowed fields, no allocation but the buffer's.
#[derive(serde::Serialize)]
struct Line<'a> {
    time: Shown<humantime::Rfc3339Timestamp>,
    peer: Shown<SocketAddr>,
    method: &'a str,
    route: &'a str,
    cluster: Option<&'a str>,
    upstream: Option<Shown<SocketAddr>>,
    grpc_status: u8,
    grpc_code: &'static str,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// Serialises a value as the string its `Display` writes.
struct Shown<T>(T);

impl<T: std::fmt::Display> serde::Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One worker's side of the access log.
pub struct Logger {
    tx: Sender<Vec<u8>>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
}

impl Logger {
    /// Appends one line; hands the buffer on when it is full.
    pub fn write(&self, e: &Entry<'_>, counters: &CoreCounters) {
        let client = e.client.and_then(|id| {
            id.uris
                .first()
                .map(String::as_str)
                .or(id.common_name.as_deref())
        });
        let line = Line {
            time: Shown(humantime::format_rfc3339_millis(SystemTime::now())),
            peer: Shown(e.peer),
            method: e.method,
            route: e.route,
            cluster: e.cluster,
            upstream: e.upstream.map(Shown),
            grpc_status: e.code.as_u8(),
            grpc_code: e.code.name(),
            duration_ms: e.duration.as_secs_f64() * 1e3,
            bytes_in: e.bytes_in,
            bytes_out: e.bytes_out,
            client,
            error: e.error,
        };
        let full = {
            let mut buf = self.buf.borrow_mut();
            // Writing JSON to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *buf, &line);
            buf.push(b'\n');
            buf.len() >= BATCH
        };
        self.lines.set(self.lines.get() + 1);
        if full {
            self.flush(counters);
        }
    }

    /// Hands whatever is buffered to the writer, without waiting.
    pub fn flush(&self, counters: &CoreCounters) {
        let lines = self.lines.replace(0);
        if lines == 0 {
            return;
        }
        let batch = std::mem::replace(&mut *self.buf.borrow_mut(), Vec::with_capacity(BATCH));
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                crate::telemetry::metrics::add(&counters.access_log_dropped, lines);
            }
        }
    }
}
