//! The `grpc-proxy` binary: start-up errors and the SIGTERM drain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        .expect("addr");
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            &port.to_string(),
            "--upstream",
            "127.0.0.1:1",
            "--cores",
            "1",
            "--log",
            "info",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    // Wait for the "serving" log line rather than for time to pass.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("grpc-proxy serving"));
    assert!(serving, "the proxy did not start");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
}
