//! The `grpc-proxy` binary: start-up errors and the SIGTERM drain.

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
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", "127.0.0.1:0"], "no upstream"),
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

    // Still serving: a valid file is taken again, as version 3.
    std::fs::write(&file, config("[[routes]]\ncluster = \"a\"\n")).expect("write");
    signal(&child, "HUP");
    assert!(next_line_with("config reloaded").contains("version=3"));

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
