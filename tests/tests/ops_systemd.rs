//! Running under systemd: READY=1 and STOPPING=1 reach a fake NOTIFY_SOCKET, and the unit
//! file passes `systemd-analyze verify`.

use muster_tests::{muster_bin, try_request, AgentSpec, TempDir};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Reads datagrams until one contains `want` or `timeout` passes; returns all messages.
fn wait_message(sock: &UnixDatagram, want: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {timeout:?}; got {seen:?}");
}

#[test]
fn notifies_ready_once_http_listens_and_stopping_on_shutdown() {
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let spec = AgentSpec::dev("notify1", "127.0.0.1");
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], spec.http_port));
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut child = Command::new(muster_bin())
        .args(spec.command_args())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let msgs = wait_message(&sock, "READY=1", Duration::from_secs(20));
    // READY means the API answers: no retry needed right after it.
    let r = try_request(http, "GET", "/v1/agent/self", None, &[]);
    let ready_ok = r.as_ref().is_ok_and(|r| r.status == 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let stopping = wait_message(&sock, "STOPPING=1", Duration::from_secs(20));
    let status = child.wait().unwrap();
    assert!(
        ready_ok,
        "API not answering after READY=1: {r:?} ({msgs:?})"
    );
    assert!(stopping.iter().all(|m| !m.contains("READY=1")));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn unit_file_is_as_specified_and_passes_systemd_analyze_verify() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/muster.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/muster agent --config-dir /etc/muster --data-dir /var/lib/muster",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=muster",
        "ConfigurationDirectory=muster",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=65536",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "unit lacks `{line}`"
        );
    }
    let have_analyze = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_analyze {
        eprintln!(
            "SKIPPED systemd-analyze verify: systemd-analyze is not installed \
             (apt package `systemd`, listed in .ci/packages-ops.txt)"
        );
        return;
    }
    // verify insists that ExecStart's binary exists; point it at the binary under test
    // instead of /usr/local/bin (the only change to the unit).
    let dir = TempDir::new("unit");
    let copy = dir.path().join("muster.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/muster", &muster_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
