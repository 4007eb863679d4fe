//! Results from many machines: HdrHistogram's standard interval log.
//!
//! `run --hdr-log FILE` writes, for every second of the measured window
//! (and the last part of one), the latency histograms of the calls
//! measured in it, tagged `call`, `message` and `first-message`, as
//! HdrHistogram's own tools read them (V2 compressed histograms, base64,
//! with `StartTime` and `BaseTime` headers). Every measured call is in
//! exactly one interval, so the intervals of one log add up to the run's
//! own report.
//!
//! `merge FILE...` adds up the logs of several machines (started together
//! with `run --start-at`) into one report: per tag, the count, the rate
//! over the time the logs span together, and the percentiles.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriter, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::report::{histogram, Latency, Stats};

/// The tags of a log's histograms, and which of a run's histograms each
/// holds.
const TAGS: [&str; 3] = ["call", "message", "first-message"];

fn by_tag(stats: &Stats) -> [&Histogram<u64>; 3] {
    [&stats.call, &stats.message, &stats.first_message]
}

/// A log being written: the file, and the serializer its writer uses.
pub struct LogFile {
    file: std::io::BufWriter<std::fs::File>,
    serializer: V2DeflateSerializer,
}

impl LogFile {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<LogFile, String> {
        let file = std::fs::File::create(path)
            .map_err(|e| format!("--hdr-log {}: {e}", path.display()))?;
        Ok(LogFile {
            file: std::io::BufWriter::new(file),
            serializer: V2DeflateSerializer::new(),
        })
    }

    /// Writes out what is buffered.
    pub fn finish(&mut self) -> Result<(), String> {
        use std::io::Write as _;
        self.file.flush().map_err(|e| format!("--hdr-log: {e}"))
    }

    /// Starts the log of a run that started at `start`.
    pub fn begin(&mut self, start: SystemTime, about: &str) -> Result<Writer<'_>, String> {
        let writer = IntervalLogWriterBuilder::new()
            .add_comment(&format!("grpc-loadtest {about}"))
            .add_comment("latencies in nanoseconds; max column in milliseconds")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1_000_000.0)
            .begin_log_with(&mut self.file, &mut self.serializer)
            .map_err(|e| format!("--hdr-log: {e}"))?;
        Ok(Writer { writer })
    }
}

/// Writes a run's intervals.
pub struct Writer<'a> {
    writer: IntervalLogWriter<'a, 'a, std::io::BufWriter<std::fs::File>, V2DeflateSerializer>,
}

impl Writer<'_> {
    /// Writes the histograms of `stats` (those with samples) as the
    /// interval from `from` (since the run's start) lasting `length`.
    pub fn interval(
        &mut self,
        stats: &Stats,
        from: Duration,
        length: Duration,
    ) -> Result<(), String> {
        for (tag, h) in TAGS.iter().zip(by_tag(stats)) {
            if h.is_empty() {
                continue;
            }
            self.writer
                .write_histogram(h, from, length, Tag::new(tag))
                .map_err(|e| format!("--hdr-log: {e}"))?;
        }
        Ok(())
    }
}

/// What one or more logs add up to.
#[derive(Debug, Serialize)]
pub struct Merged {
    /// The logs merged.
    pub files: Vec<String>,
    /// Seconds from the earliest interval's start to the latest one's end.
    pub seconds: f64,
    /// Per tag (`call`, `message`, `first-message`): samples, their rate
    /// over `seconds`, and latency.
    pub tags: BTreeMap<String, TagReport>,
    /// For a picture: each log's `call` histograms, and its intervals'
    /// rate and p99 over time (seconds from the earliest interval).
    #[serde(skip)]
    pub series: Vec<crate::plot::Series>,
}

/// One tag's merged figures.
#[derive(Debug, Serialize)]
pub struct TagReport {
    /// Samples per second over the logs' span.
    pub per_sec: f64,
    /// Latency of the samples.
    pub latency: Latency,
}

/// Adds up the logs at `paths`.
pub fn merge(paths: &[impl AsRef<Path>]) -> Result<Merged, String> {
    let mut sums: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut first: Option<Duration> = None;
    let mut last: Option<Duration> = None;
    // Per log: its call histograms, and (interval end in seconds since the
    // epoch, count/s, p99 us), moved to the merge's origin at the end.
    let mut series: Vec<crate::plot::Series> = Vec::new();
    for path in paths {
        let mut own = histogram();
        let mut points = Vec::new();
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut base = Duration::ZERO;
        let mut intervals = 0;
        for entry in IntervalLogIterator::new(&text) {
            let entry =
                entry.map_err(|e| format!("{}: not an interval log ({e:?})", path.display()))?;
            match entry {
                LogEntry::BaseTime(t) => base = t,
                LogEntry::StartTime(t) if base.is_zero() => base = t,
                LogEntry::StartTime(_) => {}
                LogEntry::Interval(i) => {
                    intervals += 1;
                    let tag = i.tag().map_or("call", |t| t.as_str()).to_string();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(i.encoded_histogram())
                        .map_err(|e| format!("{}: bad histogram encoding ({e})", path.display()))?;
                    let h: Histogram<u64> = Deserializer::new()
                        .deserialize(&mut bytes.as_slice())
                        .map_err(|e| format!("{}: bad histogram ({e:?})", path.display()))?;
                    let start = base + i.start_timestamp();
                    let end = start + i.duration();
                    if tag == "call" {
                        let _ = own.add(&h);
                        let secs = i.duration().as_secs_f64();
                        if secs > 0.0 {
                            let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
                            points.push((end.as_secs_f64(), h.len() as f64 / secs, p99));
                        }
                    }
                    let sum = sums.entry(tag).or_insert_with(histogram);
                    sum.add(&h).map_err(|e| {
                        format!("{}: histogram out of range ({e:?})", path.display())
                    })?;
                    first = Some(first.map_or(start, |f| f.min(start)));
                    last = Some(last.map_or(end, |l| l.max(end)));
                }
            }
        }
        if intervals == 0 {
            return Err(format!("{}: no interval histograms", path.display()));
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        series.push(crate::plot::Series {
            name,
            latency: own,
            timeline: points,
        });
    }
    let origin = first.unwrap_or_default().as_secs_f64();
    for point in series.iter_mut().flat_map(|s| s.timeline.iter_mut()) {
        point.0 -= origin;
    }
    let seconds = match (first, last) {
        (Some(f), Some(l)) => l.saturating_sub(f).as_secs_f64(),
        _ => 0.0,
    };
    let tags = sums
        .into_iter()
        .filter_map(|(tag, h)| {
            let latency = Latency::of(&h)?;
            let per_sec = if seconds > 0.0 {
                latency.count as f64 / seconds
            } else {
                0.0
            };
            Some((tag, TagReport { per_sec, latency }))
        })
        .collect();
    Ok(Merged {
        files: paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect(),
        seconds,
        tags,
        series,
    })
}

impl Merged {
    /// The text table.
    pub fn text(&self) -> String {
        let mut out = format!(
            "merged {} logs, {:.1}s from the first interval to the last\n",
            self.files.len(),
            self.seconds
        );
        let _ = writeln!(
            out,
            "{:<14} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (us)", "count", "per sec", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for (tag, t) in &self.tags {
            let l = &t.latency;
            let _ = writeln!(
                out,
                "{tag:<14} {:>10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                l.count, t.per_sec, l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
            );
        }
        out
    }
}

/// A wall-clock time given as RFC 3339 (`2026-12-01T18:00:00Z`) or as
/// seconds since the Unix epoch.
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("{text:?} is not a time ({e}; expected e.g. 2026-12-01T18:00:00Z or Unix seconds)")
    })
}
