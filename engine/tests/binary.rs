//! The `grpc-proxy` binary: start-up errors, `check`, the SIGTERM drain,
//! reloads.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use grpc_proxy_tests::admin::request as http;

const BIN: &str = env!("CARGO_BIN_EXE_grpc-proxy");

#[test]
fn bad_flags_and_configs_are_one_line_and_exit_code_2() {
    let dir = std::env::temp_dir().join(format!("grpc-proxy-bin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[routes]]\ncluster = \"missing\"\n").expect("write");
    let cases: [(&[&str], &str); 8] = [
        (
            &[
                "--log",
                "info,[",
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "127.0.0.1:1",
            ],
            "invalid --log filter",
        ),
        (&["--listen", "127.0.0.1:0"], "no upstream"),
        (&["--nonsense"], "unexpected argument '--nonsense'"),
        (
            &["--listen", "nowhere", "--upstream", "127.0.0.1:1"],
            "invalid value 'nowhere'",
        ),
        (&["--cpu-set", "0-99999999999999"], "above 8191"),
        (&["--upstream", "127.0.0.1:1"], "no listen address"),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                "no-such-host.invalid:1",
            ],
            "cannot resolve",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--config",
                bad.to_str().expect("utf-8 path"),
            ],
            "no cluster named",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN).args(args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `grpc-proxy check --config` on `text` written to a file in `dir`.
fn check(dir: &std::path::Path, name: &str, text: &str) -> std::process::Output {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write");
    Command::new(BIN)
        .args(["check", "--config", file.to_str().expect("utf-8 path")])
        .output()
        .expect("runs")
}

#[test]
fn check_passes_a_good_file_and_names_what_is_wrong_with_a_bad_one() {
    let pki = grpc_proxy_tests::Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).expect("logs");
    let cluster =
        "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:50052\", \"127.0.0.1:50053\"]\n";
    let good = format!(
        "listen = \"127.0.0.1:50051\"\nadmin = \"127.0.0.1:9901\"\naccess_log = {:?}\n\
         [tls]\ncert = {:?}\nkey = {:?}\n{cluster}[clusters.tls]\nca = {:?}\n\
         [[routes]]\nmethod = \"/a.B/C\"\ncluster = \"a\"\n[[routes]]\ncluster = \"a\"\n",
        logs.join("access.log"),
        pki.server.cert,
        pki.server.key,
        pki.ca.cert,
    );
    let out = check(dir.path(), "good.toml", &good);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(said.trim().lines().count(), 1, "{said}");
    for part in [
        "good.toml: ok",
        "127.0.0.1:50051 (TLS)",
        "2 routes",
        "1 cluster (2 endpoints)",
        "admin on 127.0.0.1:9901",
    ] {
        assert!(said.contains(part), "{said:?} lacks {part:?}");
    }
    assert!(!logs.join("access.log").exists(), "check creates nothing");

    let listen = "listen = \"127.0.0.1:50051\"\n";
    let route = "[[routes]]\ncluster = \"a\"\n";
    let missing = dir.path().join("missing.pem");
    let cases = [
        ("syntax.toml", "listen = ".to_string(), "syntax.toml"),
        ("nolisten.toml", format!("{cluster}{route}"), "no listen address"),
        ("route.toml", format!("{listen}[[routes]]\ncluster = \"b\"\n"), "no cluster named \"b\""),
        ("host.toml", format!("{listen}[[clusters]]\nname = \"a\"\nendpoints = [\"no-such-host.invalid:1\"]\n{route}"), "cannot resolve"),
        ("cert.toml", format!("{listen}[tls]\ncert = {missing:?}\nkey = {:?}\n{cluster}{route}", pki.server.key), "missing.pem"),
        ("key.toml", format!("{listen}[tls]\ncert = {:?}\nkey = {:?}\n{cluster}{route}", pki.server.cert, pki.alice.key), "key"),
        ("ca.toml", format!("{listen}{cluster}[clusters.tls]\nca = {missing:?}\n{route}"), "missing.pem"),
        ("log.toml", format!("{listen}access_log = {:?}\n{cluster}{route}", dir.path().join("nowhere").join("access.log")), "does not exist"),
        ("h2.toml", format!("{listen}[http2]\nframe_path = \"h2\"\n{cluster}{route}"), "h2 frame path was removed"),
        ("forever.toml", format!("{listen}[timeouts]\nhandshake = \"10000000000000000000s\"\n{cluster}{route}"), "timeouts.handshake: duration \"10000000000000000000s\" is longer than 10 years"),
        ("connect0.toml", format!("{listen}[timeouts]\nconnect = \"0s\"\n{cluster}{route}"), "timeouts.connect: must be more than 0"),
        ("pending0.toml", format!("{listen}{cluster}max_pending_calls = 0\n{route}"), "max_pending_calls: must be at least 1"),
        ("keepalive.toml", format!("{listen}[timeouts]\ntcp_keepalive = \"500ms\"\n{cluster}{route}"), "timeouts.tcp_keepalive: must be 0 (off) or from 1s to 32767s"),
        ("route0.toml", format!("{listen}{cluster}{route}timeout = \"0s\"\n"), "routes[0].timeout: must be more than 0"),
        ("noroutes.toml", format!("{listen}{cluster}"), "no [[routes]]: every call would be refused"),
    ];
    for (name, text, want) in cases {
        let out = check(dir.path(), name, &text);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err:?} lacks {want:?}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(out.stdout.is_empty(), "{name}");
    }
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            dir.path().join("absent.toml").to_str().expect("utf-8"),
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let args = [
        "--listen",
        &port,
        "--upstream",
        "127.0.0.1:1",
        "--cores",
        "1",
    ];
    let (mut child, lines) = start(&[&args[..], &["--log", "info"]].concat());
    signal(&child, "TERM");
    wait_exit(&mut child, 0);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
}

/// Waits (20 s at most) for the binary to exit with `code`.
fn wait_exit(child: &mut std::process::Child, code: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(code));
            return;
        }
        assert!(Instant::now() < deadline, "no exit after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts the binary with `args`, returns it and its stderr lines once it
/// logs that it serves.
fn start(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
) {
    let mut child = Command::new(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("grpc-proxy serving"));
    assert!(serving, "the proxy did not start");
    (child, lines)
}

fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn sighup_reloads_a_valid_config_and_refuses_an_invalid_one() {
    let dir = std::env::temp_dir().join(format!("grpc-proxy-hup-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("proxy.toml");
    let config = |route: &str| {
        format!("listen = \"127.0.0.1:0\"\ncores = 1\n[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n{route}")
    };
    std::fs::write(&file, config("[[routes]]\ncluster = \"a\"\n")).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let (mut child, mut lines) = start(&["--config", path, "--log", "info"]);
    let mut next_line_with = |want: &str| {
        lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains(want))
            .unwrap_or_else(|| panic!("no log line with {want:?}"))
    };

    std::fs::write(
        &file,
        config("[[routes]]\nreject = { code = \"unavailable\" }\n"),
    )
    .expect("write");
    signal(&child, "HUP");
    let reloaded = next_line_with("config reloaded");
    assert!(reloaded.contains("version=2"), "{reloaded}");

    std::fs::write(&file, config("[[routes]]\ncluster = \"nope\"\n")).expect("write");
    signal(&child, "HUP");
    let refused = next_line_with("reload refused");
    assert!(refused.contains("no cluster named \"nope\""), "{refused}");

    // A file cut short before its routes (read half written) is refused
    // too, rather than refusing every call.
    std::fs::write(&file, config("")).expect("write");
    signal(&child, "HUP");
    let refused = next_line_with("reload refused");
    assert!(refused.contains("no [[routes]]"), "{refused}");

    // Still serving: a valid file is taken again, as version 3.
    std::fs::write(&file, config("[[routes]]\ncluster = \"a\"\n")).expect("write");
    signal(&child, "HUP");
    assert!(next_line_with("config reloaded").contains("version=3"));

    // A setting only a restart changes is named in a warning; the rest
    // of the file applies.
    let moved = config("[[routes]]\ncluster = \"a\"\n").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&file, moved).expect("write");
    signal(&child, "HUP");
    let warned = next_line_with("only after a restart");
    assert!(warned.contains("listen"), "{warned}");
    assert!(next_line_with("config reloaded").contains("version=4"));

    signal(&child, "TERM");
    wait_exit(&mut child, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_admin_endpoint_reloads_the_config_file() {
    let dir = std::env::temp_dir().join(format!("grpc-proxy-admin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("proxy.toml");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let config = |cluster: &str| {
        format!("listen = \"127.0.0.1:0\"\ncores = 1\n[[clusters]]\nname = \"{cluster}\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"{cluster}\"\n")
    };
    std::fs::write(&file, config("a")).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let (mut child, mut lines) = start(&["--config", path, "--admin", &admin, "--log", "info"]);
    // The admin endpoint starts after the workers: wait for its own line.
    let admin_up = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("admin endpoint serving"));
    assert!(admin_up, "the admin endpoint did not start");
    let (status, body) = http(&admin, "GET", "/config");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"version\":1") && body.contains("proxy.toml"),
        "{body}"
    );

    std::fs::write(&file, config("b")).expect("write");
    assert_eq!(
        http(&admin, "POST", "/reload"),
        (200, "reloaded: version 2\n".into())
    );
    std::fs::write(&file, "[[routes]]\ncluster = \"nope\"\n").expect("write");
    let (status, body) = http(&admin, "POST", "/reload");
    assert_eq!(status, 400);
    assert!(body.contains("no cluster named \"nope\""), "{body}");
    assert!(http(&admin, "GET", "/config").1.contains("\"version\":2"));
    assert_eq!(http(&admin, "GET", "/ready").0, 200);
    let (status, metrics) = http(&admin, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("grpc_proxy_downstream_connections{core=\"0\"} 0"),
        "{metrics}"
    );

    signal(&child, "TERM");
    wait_exit(&mut child, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts the binary under `sh` with `ulimit` arguments applied first.
fn start_limited(ulimit: &str, args: &[&str]) -> (std::process::Child, Vec<String>) {
    let script = format!("ulimit {ulimit} && exec \"$0\" \"$@\"");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let serving = line.contains("grpc-proxy serving");
        seen.push(line);
        if serving {
            // Keep draining stderr so that the proxy never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, seen);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the proxy did not start: {seen:?}");
}

/// The soft and hard "Max open files" of a process.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[3].to_owned(), fields[4].to_owned())
}

#[test]
fn the_file_descriptor_limit_is_raised_and_caps_connections_per_worker() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .to_string()
    };
    let start = |ulimit: &str| {
        let listen = free();
        let args = [
            "--listen",
            &listen,
            "--upstream",
            "127.0.0.1:1",
            "--cores",
            "1",
            "--log",
            "info",
        ];
        let (child, seen) = start_limited(ulimit, &args);
        (child, seen, listen)
    };
    // A soft limit below the hard one is raised to it.
    let (mut child, _, _) = start("-S -n 200");
    let (soft, hard) = nofile(child.id());
    assert_eq!(soft, hard, "soft limit raised to the hard one");
    signal(&child, "TERM");
    wait_exit(&mut child, 0);

    // With 300 descriptors in all, one worker admits 172 clients (a
    // reserve of 128 stays for everything else) and closes the rest at
    // accept, instead of running out of descriptors.
    let (mut child, seen, listen) = start("-n 300");
    assert!(
        seen.iter().any(|l| l.contains("per_worker=172")),
        "the derived limit is logged: {seen:?}"
    );
    let conns: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&listen).expect("connect"))
        .collect();
    let mut closed = 0;
    for mut c in conns.iter() {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        // The admitted wait for a preface (and send SETTINGS first); the
        // refused read EOF at once.
        if matches!(c.read(&mut buf), Ok(0)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 200 - 172, "connections past the limit are closed");
    drop(conns);
    signal(&child, "TERM");
    wait_exit(&mut child, 0);
}

#[test]
fn it_speaks_systemds_notify_protocol_and_pings_the_watchdog() {
    // Scenario: run as a Type=notify service with a 300 ms watchdog; the
    // test plays the service manager on a unix datagram socket.
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket).expect("bind");
    manager
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\ncores = 1\n[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\n",
    )
    .expect("write");
    let mut child = Command::new(BIN)
        .args(["--config", file.to_str().expect("utf-8"), "--log", "warn"])
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "300000")
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let next = || {
        let mut buf = [0u8; 512];
        loop {
            match manager.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                got => {
                    let n = got.expect("a datagram in time");
                    return String::from_utf8_lossy(&buf[..n]).into_owned();
                }
            }
        }
    };
    // Each state in turn; watchdog pings may come between them.
    let expect = |want: &str| loop {
        let got = next();
        if got.starts_with(want) {
            return got;
        }
        assert_eq!(got, "WATCHDOG=1", "expected {want:?}");
    };
    let ready = expect("READY=1");
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    let pings = (0..3)
        .filter(|_| expect("WATCHDOG=1") == "WATCHDOG=1")
        .count();
    assert_eq!(pings, 3);
    signal(&child, "HUP");
    let reloading = expect("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    expect("READY=1");
    // A refused reload still ends with READY=1, saying why.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\n[[routes]]\ncluster = \"b\"\n",
    )
    .expect("write");
    signal(&child, "HUP");
    expect("RELOADING=1");
    let refused = expect("READY=1");
    assert!(refused.contains("reload refused"), "{refused}");
    signal(&child, "TERM");
    expect("STOPPING=1");
    wait_exit(&mut child, 0);
}
