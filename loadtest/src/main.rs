//! `grpc-loadtest`: load generator (`run`), echo upstream (`serve`), the
//! merge of several machines' interval logs (`merge`) and the end-to-end
//! demo (`demo`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use grpc_loadtest::run::{Rpc, RunOptions};
use grpc_loadtest::serve::ServeOptions;
use grpc_proxy::config::{parse_duration, parse_size};
use grpc_proxy::runtime::cores::{CoreSelection, CpuList};
use grpc_proxy::Driver;
use http::{HeaderName, HeaderValue};

/// gRPC load generator and echo upstream.
#[derive(Parser, Debug)]
#[command(name = "grpc-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a fast gRPC echo upstream (service loadtest.Echo).
    Serve(ServeArgs),
    /// Load a gRPC server or proxy and report throughput and latency.
    Run(Box<RunArgs>),
    /// Merge the interval logs of several `run --hdr-log` (from several
    /// machines, say) into one report.
    Merge {
        /// The logs.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Also write the report as JSON to this file ("-" for stdout,
        /// which then carries only the JSON).
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Draw the logs as an SVG, one line per log.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// Start an echo upstream and grpc-proxy on loopback, load both, and
    /// print direct and proxied results side by side.
    Demo {
        /// Seconds per measured load.
        #[arg(long, default_value_t = 2)]
        seconds: u64,
    },
}

#[derive(Args, Debug)]
struct CoreArgs {
    /// Number of worker cores.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        conflicts_with = "cpu_set"
    )]
    cores: usize,
    /// Exact CPUs for the workers, e.g. 0,2 or 1-3.
    #[arg(long, value_name = "LIST")]
    cpu_set: Option<CpuList>,
    /// monoio driver: auto, io_uring or legacy.
    #[arg(long, value_name = "DRIVER", default_value = "auto")]
    driver: Driver,
}

impl CoreArgs {
    fn selection(&self) -> Result<CoreSelection, String> {
        match &self.cpu_set {
            Some(set) => Ok(CoreSelection::Set(set.0.clone())),
            None => CoreSelection::from_parts(Some(self.cores), None).map_err(|e| format!("--{e}")),
        }
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50052")]
    listen: SocketAddr,
    #[command(flatten)]
    cores: CoreArgs,
    /// Response payload size (default: echo the request), e.g. 1KiB.
    #[arg(long, value_parser = size)]
    response_size: Option<usize>,
    /// Responses per server-streaming call (requests may say x-messages).
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Delay before each response, e.g. 2ms (requests may say x-delay).
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The gRPC server or proxy to load.
    #[arg(long)]
    target: SocketAddr,
    /// RPC kind: unary, server-stream, client-stream or bidi.
    #[arg(long, default_value = "unary")]
    rpc: Rpc,
    /// Request payload size, e.g. 10B, 1KiB, 1MiB.
    #[arg(long, default_value = "10B", value_parser = size)]
    payload: usize,
    /// Ask the echo server for responses of this size.
    #[arg(long, value_parser = size)]
    response_size: Option<usize>,
    /// Messages per streaming call: requests (client-stream), responses
    /// (server-stream) or round trips (bidi).
    #[arg(long, default_value_t = 10)]
    messages: usize,
    /// Connections in total.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    #[command(flatten)]
    cores: CoreArgs,
    /// Measured time after warm-up, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "calls")]
    duration: Duration,
    /// Stop after this many measured calls instead of a duration.
    #[arg(long)]
    calls: Option<u64>,
    /// Warm-up before measuring, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Open loop at this many calls per second (latency from the intended
    /// start); default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Ask the echo server to wait this long before each response.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Extra request metadata, key=value; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = metadata)]
    metadata: Vec<(HeaderName, HeaderValue)>,
    /// Request metadata that changes per call: each call sends the next
    /// line of FILE as KEY's value (many users' bearer tokens, say).
    #[arg(long = "metadata-file", value_name = "KEY=FILE", value_parser = metadata_file)]
    metadata_file: Option<(HeaderName, Vec<HeaderValue>)>,
    /// :authority to send (default: the target address).
    #[arg(long)]
    authority: Option<String>,
    /// Write the full result as JSON to this file ("-" for stdout, which
    /// then carries only the JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress line every second.
    #[arg(long)]
    quiet: bool,
    /// Speak TLS to the target, verifying it against the system roots
    /// (or --tls-ca).
    #[arg(long)]
    tls: bool,
    /// Speak TLS, verifying the target against this PEM CA bundle.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name the target's certificate must have (default: localhost).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    tls_server_name: String,
    /// Client certificate (PEM) for mTLS, with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A new connection for every call (with --streams 1): measures TCP,
    /// TLS and HTTP/2 set-up per call.
    #[arg(long)]
    connection_per_call: bool,
    /// Write the measured window's latency histograms, a second at a time,
    /// as HdrHistogram's interval log (for `merge`, and HdrHistogram's
    /// own tools).
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    /// Start the load (after connecting) at this wall-clock time: RFC 3339
    /// (2026-12-01T18:00:00Z) or Unix seconds, so that several machines
    /// start together.
    #[arg(long, value_name = "TIME", value_parser = grpc_loadtest::hdrlog::parse_time)]
    start_at: Option<std::time::SystemTime>,
    /// Draw the run as an SVG: latency by percentile, rate and p99 over
    /// time.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Call this method of any service, /package.Service/Method, instead
    /// of the echo service (--rpc says its kind; --payload, --response-size
    /// and --delay are the echo service's and are not sent).
    #[arg(long, value_name = "PATH")]
    method: Option<String>,
    /// With --method: the request message, protobuf-encoded, from this
    /// file (default: an empty message).
    #[arg(long, value_name = "FILE", requires = "method", conflicts_with_all = ["data", "data_file"])]
    data_bin: Option<PathBuf>,
    /// With --method: the request message as JSON (the protobuf JSON
    /// mapping), with its schema from --proto, --protoset or --reflection;
    /// the schema also gives the method's kind.
    #[arg(
        long,
        value_name = "JSON",
        requires = "method",
        conflicts_with = "data_file"
    )]
    data: Option<String>,
    /// --data from this file.
    #[arg(long, value_name = "FILE", requires = "method")]
    data_file: Option<PathBuf>,
    /// The schema: these .proto files (repeatable), compiled in-process.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["protoset", "reflection"])]
    proto: Vec<PathBuf>,
    /// Where --proto files' imports are found (repeatable).
    #[arg(long, value_name = "DIR", requires = "proto")]
    import_path: Vec<PathBuf>,
    /// The schema: a descriptor set (protoc --descriptor_set_out
    /// --include_imports).
    #[arg(long, value_name = "FILE", conflicts_with = "reflection")]
    protoset: Option<PathBuf>,
    /// The schema: asked of the target's reflection service
    /// (grpc.reflection.v1; over TLS with --tls or --tls-ca).
    #[arg(long)]
    reflection: bool,
}

/// The TLS client the flags ask for, with its files read.
fn client_tls(args: &RunArgs) -> anyhow::Result<Option<grpc_proxy::ClientTls>> {
    if !args.tls && args.tls_ca.is_none() && args.tls_cert.is_none() {
        return Ok(None);
    }
    let settings = grpc_proxy::config::UpstreamTls {
        ca: args.tls_ca.clone(),
        server_name: args.tls_server_name.clone(),
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
    };
    let tls = grpc_proxy::ClientTls::load(&settings, &args.tls_server_name)
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    Ok(Some(tls))
}

fn size(text: &str) -> Result<usize, String> {
    parse_size(text)
        .and_then(|n| usize::try_from(n).map_err(|_| format!("size {text:?} is too large")))
}

fn metadata(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("metadata {text:?} is not KEY=VALUE"))?;
    let k = HeaderName::try_from(k.to_ascii_lowercase())
        .map_err(|_| format!("invalid metadata key {k:?}"))?;
    let v = HeaderValue::try_from(v).map_err(|_| format!("invalid metadata value {v:?}"))?;
    Ok((k, v))
}

fn metadata_file(text: &str) -> Result<(HeaderName, Vec<HeaderValue>), String> {
    let (k, path) = text
        .split_once('=')
        .ok_or_else(|| format!("metadata file {text:?} is not KEY=FILE"))?;
    let k = HeaderName::try_from(k.to_ascii_lowercase())
        .map_err(|_| format!("invalid metadata key {k:?}"))?;
    let lines = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let values = lines
        .lines()
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| {
            HeaderValue::try_from(l)
                .map_err(|_| format!("{path}: line {}: not a valid metadata value", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if values.is_empty() {
        return Err(format!("{path}: no values"));
    }
    Ok((k, values))
}

fn main() -> ExitCode {
    let cli = match grpc_proxy::config::flags::parse::<Cli>("grpc-loadtest") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Run(args) => run(*args),
        Command::Merge { files, json, plot } => merge(&files, json.as_deref(), plot.as_deref()),
        Command::Demo { seconds } => grpc_loadtest::demo::demo(seconds.max(1)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let handle = grpc_loadtest::serve::start(ServeOptions {
        listen: args.listen,
        cores: args.cores.selection().map_err(anyhow::Error::msg)?,
        driver: args.cores.driver,
        response_size: args.response_size,
        messages: args.messages,
        delay: args.delay,
    })?;
    eprintln!("grpc-loadtest: echo upstream on {}", handle.local_addr());
    handle.wait();
    Ok(())
}

fn merge(
    files: &[PathBuf],
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let merged = grpc_loadtest::hdrlog::merge(files).map_err(anyhow::Error::msg)?;
    if let Some(path) = plot {
        let title = format!("grpc-loadtest merge of {} logs", files.len());
        grpc_loadtest::plot::draw(path, &title, "call latency", "calls", &merged.series)
            .map_err(anyhow::Error::msg)?;
    }
    let json_only = json == Some(std::path::Path::new("-"));
    if !json_only {
        print!("{}", merged.text());
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&merged)?;
        if json_only {
            writeln!(std::io::stdout().lock(), "{text}")?;
        } else {
            std::fs::write(path, text + "\n")
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// With --data or --data-file: the request from JSON by the schema, and
/// the method's kind from it.
fn with_schema(mut options: RunOptions, args: &RunArgs) -> anyhow::Result<RunOptions> {
    use grpc_loadtest::schema::{self, Schema};
    let json = match (&args.data, &args.data_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--data-file {}: {e}", path.display()))?,
        (None, None) => return Ok(options),
    };
    let source = if !args.proto.is_empty() {
        Schema::Proto {
            files: args.proto.clone(),
            imports: args.import_path.clone(),
        }
    } else if let Some(set) = &args.protoset {
        Schema::Protoset(set.clone())
    } else if args.reflection {
        Schema::Reflection
    } else {
        anyhow::bail!("--data needs a schema: --proto FILE, --protoset FILE or --reflection");
    };
    let method = options.method.clone().unwrap_or_default();
    let service = schema::service_of(&method)
        .ok_or_else(|| anyhow::anyhow!("method {method:?} is not /package.Service/Method"))?;
    let pool = schema::pool(
        &source,
        options.target,
        options.authority.as_deref(),
        options.tls.as_ref(),
        service,
    )
    .map_err(anyhow::Error::msg)?;
    let call = schema::call(&pool, &method, &json).map_err(anyhow::Error::msg)?;
    options.rpc = call.rpc;
    options.data = Some(call.request);
    Ok(options)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let json_only = args.json.as_deref() == Some(std::path::Path::new("-"));
    let tls = client_tls(&args)?;
    let options = RunOptions {
        target: args.target,
        authority: args.authority.clone(),
        rpc: args.rpc,
        payload: args.payload,
        response_size: args.response_size,
        messages: args.messages,
        connections: args.connections,
        streams: args.streams,
        cores: args.cores.selection().map_err(anyhow::Error::msg)?,
        driver: args.cores.driver,
        duration: args.duration,
        calls: args.calls,
        warmup: args.warmup,
        rate: args.rate,
        delay: args.delay,
        metadata: args.metadata.clone(),
        rotating: args
            .metadata_file
            .clone()
            .and_then(|(k, v)| grpc_loadtest::run::Rotating::new(k, v))
            .map(std::sync::Arc::new),
        progress: !args.quiet && !json_only,
        tls,
        connection_per_call: args.connection_per_call,
        hdr_log: args.hdr_log.clone(),
        start_at: args.start_at,
        plot: args.plot.clone(),
        method: args.method.clone(),
        data: match &args.data_bin {
            Some(path) => {
                Some(bytes::Bytes::from(std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("--data-bin {}: {e}", path.display())
                })?))
            }
            None => None,
        },
    };
    let options = with_schema(options, &args)?;
    let report = grpc_loadtest::run::run(&options)?;
    if !json_only {
        print!("{}", report.to_text());
    }
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report)?;
        if json_only {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{json}")?;
        } else {
            std::fs::write(&path, json + "\n")
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_from(std::iter::once("grpc-loadtest").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_parse() {
        let cli = parse(&[
            "run",
            "--target",
            "127.0.0.1:1",
            "--rpc",
            "bidi",
            "--payload",
            "1KiB",
            "--connections",
            "4",
            "--streams",
            "8",
            "--cpu-set",
            "0",
            "--driver",
            "legacy",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--rate",
            "100",
            "--metadata",
            "X-Key=v",
            "--json",
            "-",
        ])
        .expect("valid flags");
        let Command::Run(args) = cli.command else {
            panic!("run expected")
        };
        assert_eq!(args.rpc, Rpc::Bidi);
        assert_eq!(args.payload, 1024);
        assert_eq!(args.cores.selection(), Ok(CoreSelection::Set(vec![0])));
        assert_eq!(args.metadata[0].0, "x-key");
        assert!(parse(&["run", "--target", "127.0.0.1:1", "--rpc", "nope"]).is_err());
        assert!(parse(&["run", "--target", "127.0.0.1:1", "--payload", "1XB"]).is_err());
        assert!(parse(&[
            "run",
            "--target",
            "127.0.0.1:1",
            "--calls",
            "5",
            "--duration",
            "1s"
        ])
        .is_err());
        assert!(parse(&["serve", "--cores", "1", "--cpu-set", "0"]).is_err());
    }

    #[test]
    fn a_metadata_file_gives_one_value_per_line() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(&path, "Bearer a\nBearer b\n\nBearer c\n").expect("write");
        let arg = format!("Authorization={}", path.display());
        let (name, values) = metadata_file(&arg).expect("valid file");
        assert_eq!(name, "authorization");
        assert_eq!(values, ["Bearer a", "Bearer b", "Bearer c"]);
        let rotating = grpc_loadtest::run::Rotating::new(name, values).expect("values");
        let taken: Vec<_> = (0..4).map(|_| rotating.take().clone()).collect();
        assert_eq!(taken, ["Bearer a", "Bearer b", "Bearer c", "Bearer a"]);
        std::fs::write(&path, "\n").expect("write");
        assert!(metadata_file(&arg)
            .expect_err("empty")
            .contains("no values"));
        std::fs::write(&path, "ok\nbad\u{1}\n").expect("write");
        assert!(metadata_file(&arg).expect_err("bad").contains("line 2"));
        assert!(metadata_file("k=/no/such/file")
            .expect_err("missing")
            .contains("/no/such/file"));
        assert!(metadata_file("no-equals").is_err());
    }
}
