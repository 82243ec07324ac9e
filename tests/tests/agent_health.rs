//! Issue 22: health checks wait for a service that comes up late, and roll back at the deadline (not
//! before) when it never does. The real `device-agent` binary, a repository served by nginx, and an HTTP
//! service on 127.0.0.1 that the test starts (or never starts) while the trial boot is being checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ota_e2e::{firmware, text, SimDevice, TestRepo, REBOOT};

const SLOT_LEN: u64 = 1 << 20;

/// A loopback port nothing listens on (yet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts, after `delay`, an HTTP service on `port` answering 200 to every request.
fn serve_later(port: u16, delay: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
}

/// A device running 1.0.0 whose health check is an HTTP probe of `port`, with this deadline, a 1 s
/// retry interval, and 2.0.0 published and installed: the next start is the trial boot.
fn installed_trial(repo: &TestRepo, port: u16, deadline_secs: u64) -> SimDevice {
    let check = format!(
        "[[health.checks]]\nname = \"gateway-api\"\nhttp = \"http://127.0.0.1:{port}/healthz\"\ntimeout_secs = 2\n"
    );
    let dev = SimDevice::new(repo, "1.0.0", &firmware("1.0.0", 100_000), SLOT_LEN, &check);
    let config = std::fs::read_to_string(dev.config()).unwrap();
    let config = config.replace(
        "deadline_secs = 20",
        &format!("deadline_secs = {deadline_secs}\nretry_interval_secs = 1"),
    );
    std::fs::write(dev.config(), config).unwrap();
    repo.publish("2.0.0", &firmware("2.0.0", 120_000));
    let out = dev.agent(&["install"]);
    assert_eq!(out.status.code(), Some(REBOOT), "{}", text(&out));
    dev
}

#[test]
fn a_service_that_comes_up_late_is_waited_for_and_the_release_commits() {
    let repo = TestRepo::new();
    let port = free_port();
    let dev = installed_trial(&repo, port, 30);
    serve_later(port, Duration::from_secs(2));
    let started = Instant::now();
    let out = dev.agent(&["run", "--once"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took >= Duration::from_secs(2),
        "committed before the service was up: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert!(
        text(&out).contains("health check not passing yet"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("health check passed"), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "committed", "{s}");
    assert_eq!(s["running_version"], "2.0.0");
}

#[test]
fn a_service_that_never_comes_up_rolls_back_at_the_deadline_not_before() {
    let repo = TestRepo::new();
    let port = free_port();
    let dev = installed_trial(&repo, port, 4);
    let started = Instant::now();
    let out = dev.agent(&["run", "--once"]);
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(REBOOT),
        "back to the old slot: {}",
        text(&out)
    );
    assert!(
        took >= Duration::from_secs(4),
        "rolled back before the deadline: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    let log = text(&out);
    assert!(log.contains("WARN"), "the failure is a warning: {log}");
    assert!(log.contains("health check failed"), "{log}");
    let (out, _) = dev.run_until_settled();
    assert!(out.status.success(), "{}", text(&out));
    let s = dev.status();
    assert_eq!(s["state_name"], "rolled back", "{s}");
    assert_eq!(s["running_version"], "1.0.0");
    let why = s["state_text"].as_str().unwrap().to_lowercase();
    assert!(why.contains("gateway-api"), "status names the check: {why}");
    assert!(why.contains("connection refused"), "status says why: {why}");
}
