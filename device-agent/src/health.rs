//! Health checks after booting a trial image: commands and HTTP probes, each try with its own timeout.
//! A failing check is tried again every `retry_interval` until it passes or the deadline passes (after
//! an optional settle time before the first try), so a service that needs a few seconds after boot is
//! waited for instead of rolling back a good release. Healthy means every check passed before the
//! deadline; a check still failing then (or one that could not even start) means roll back, and the
//! report names it with its last cause.
//!
//! It does not decide what happens next (that is the state machine in `state.rs`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{HealthCheckConfig, HealthConfig};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What happened on the last try ("exit status 0", "HTTP 503", "timed out after 5000 ms", ...),
    /// with the number of tries when it failed.
    pub detail: String,
    /// How many times it was tried (0: the deadline passed before its turn).
    pub tries: u32,
}

/// The outcome of all checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// Per check, in order (checks not reached before the deadline are reported as failed).
    pub checks: Vec<CheckResult>,
}

impl HealthReport {
    /// Whether every check passed.
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// A one-line summary naming the failed checks and why each failed.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        if failed.is_empty() {
            format!("{} health checks passed", self.checks.len())
        } else {
            format!("health check failed: {}", failed.join("; "))
        }
    }
}

/// The last try of one check.
#[derive(Default)]
struct Tries {
    count: u32,
    passed: bool,
    last: String,
}

/// Waits the settle time, then tries every check not yet passed, in order, once per round, a round every
/// `retry_interval`, until all have passed or the deadline passes. Each try gets the check's own
/// timeout, cut short by what remains of the deadline.
pub async fn run_checks(config: &HealthConfig) -> HealthReport {
    let started = Instant::now();
    let deadline = started + config.deadline;
    if !config.settle.is_zero() && !config.checks.is_empty() {
        tracing::info!(
            seconds = config.settle.as_secs_f64(),
            "waiting before the first health check"
        );
        tokio::time::sleep(config.settle).await;
    }
    let mut tries: Vec<Tries> = config.checks.iter().map(|_| Tries::default()).collect();
    loop {
        try_round(config, &mut tries, deadline).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if tries.iter().all(|t| t.passed) || left.is_zero() {
            break;
        }
        tokio::time::sleep(config.retry_interval.min(left)).await;
    }
    let elapsed = started.elapsed();
    let checks = config
        .checks
        .iter()
        .zip(tries)
        .map(|(check, t)| conclude(check, t, config.deadline, elapsed))
        .collect();
    HealthReport { checks }
}

/// One round: tries each check not yet passed, while the deadline allows.
async fn try_round(config: &HealthConfig, tries: &mut [Tries], deadline: Instant) {
    for (check, t) in config.checks.iter().zip(tries.iter_mut()) {
        if t.passed {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let timeout = Duration::from_secs(check.timeout_secs).min(left);
        let (passed, detail) = run_one(check, timeout).await;
        t.count = t.count.saturating_add(1);
        t.passed = passed;
        t.last = detail;
        if passed {
            tracing::info!(check = %check.name, tries = t.count, detail = %t.last, "health check passed");
        } else {
            // Expected while the system comes up: only a check still failing at the deadline is a failure.
            tracing::info!(
                check = %check.name,
                tries = t.count,
                cause = %t.last,
                retry_in_secs = config.retry_interval.as_secs_f64(),
                "health check not passing yet"
            );
        }
    }
}

/// The result of a check once the trying is over; a failure is logged at WARN with its last cause.
fn conclude(check: &HealthCheckConfig, t: Tries, deadline: Duration, elapsed: Duration) -> CheckResult {
    let detail = if t.passed {
        t.last
    } else if t.count == 0 {
        format!("not run: the {} s deadline passed", deadline.as_secs_f64())
    } else {
        format!(
            "{} ({} tries in {:.1} s, deadline {} s)",
            t.last,
            t.count,
            elapsed.as_secs_f64(),
            deadline.as_secs_f64()
        )
    };
    if !t.passed {
        tracing::warn!(check = %check.name, tries = t.count, cause = %detail, "health check failed");
    }
    CheckResult {
        name: check.name.clone(),
        passed: t.passed,
        detail,
        tries: t.count,
    }
}

async fn run_one(check: &HealthCheckConfig, timeout: Duration) -> (bool, String) {
    match (&check.command, &check.http) {
        (Some(argv), _) => run_command(argv, timeout).await,
        (None, Some(url)) => probe_http(url, check.expect_status, timeout).await,
        (None, None) => (false, "neither command nor http given".to_owned()),
    }
}

async fn run_command(argv: &[String], timeout: Duration) -> (bool, String) {
    let Some((program, args)) = argv.split_first() else {
        return (false, "empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A check that outlives its timeout is killed, not left behind.
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot start {program}: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => (true, "exit status 0".into()),
        Ok(Ok(status)) => (false, format!("{program} failed: {status}")),
        Ok(Err(e)) => (false, format!("waiting for {program}: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            (
                false,
                format!("{program} timed out after {} ms", timeout.as_millis()),
            )
        }
    }
}

async fn probe_http(url: &str, expect: Option<u16>, timeout: Duration) -> (bool, String) {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return (false, format!("HTTP client: {e}")),
    };
    match client.get(url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let ok = match expect {
                Some(code) => status.as_u16() == code,
                None => status.is_success(),
            };
            (ok, format!("HTTP {}", status.as_u16()))
        }
        Err(e) if e.is_timeout() => (false, format!("{url} timed out after {} ms", timeout.as_millis())),
        // reqwest's own message is "error sending request for url (...)": the cause that matters
        // ("Connection refused") is further down the chain.
        Err(e) => (false, crate::error_chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn command(name: &str, argv: &[&str], timeout_secs: u64) -> HealthCheckConfig {
        HealthCheckConfig {
            name: name.into(),
            command: Some(argv.iter().map(|s| s.to_string()).collect()),
            http: None,
            expect_status: None,
            timeout_secs,
        }
    }

    fn http(name: &str, url: String, expect: Option<u16>) -> HealthCheckConfig {
        HealthCheckConfig {
            name: name.into(),
            command: None,
            http: Some(url),
            expect_status: expect,
            timeout_secs: 2,
        }
    }

    /// A policy with this deadline (seconds), a 1 s retry interval and no settle time.
    fn policy(deadline_secs: u64, checks: Vec<HealthCheckConfig>) -> HealthConfig {
        HealthConfig {
            deadline: Duration::from_secs(deadline_secs),
            settle: Duration::ZERO,
            retry_interval: Duration::from_secs(1),
            checks,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A one-shot HTTP server on loopback answering every request with `status`.
    fn serve(status: u16, delay: Duration) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", l.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in l.incoming().take(4) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        url
    }

    #[test]
    fn commands_pass_fail_and_time_out() {
        let config = policy(
            3,
            vec![
                command("ok", &["true"], 5),
                command("bad", &["false"], 5),
                command("slow", &["sleep", "10"], 1),
                command("missing", &["/nonexistent/check"], 5),
            ],
        );
        let started = Instant::now();
        let report = rt().block_on(run_checks(&config));
        assert!(started.elapsed() < Duration::from_secs(5));
        let passed: Vec<bool> = report.checks.iter().map(|c| c.passed).collect();
        assert_eq!(passed, [true, false, false, false]);
        assert!(
            report.checks[2].detail.contains("timed out"),
            "{:?}",
            report.checks[2]
        );
        assert!(
            report.checks[3].detail.contains("cannot start"),
            "{:?}",
            report.checks[3]
        );
        assert!(!report.healthy());
        assert!(report.summary().contains("bad:"));
    }

    #[test]
    fn http_probes_check_the_status() {
        let config = policy(
            5,
            vec![
                http("up", serve(200, Duration::ZERO), None),
                http("down", serve(503, Duration::ZERO), None),
                http("teapot", serve(418, Duration::ZERO), Some(418)),
                http("slow", serve(200, Duration::from_secs(4)), None),
            ],
        );
        let report = rt().block_on(run_checks(&config));
        let passed: Vec<bool> = report.checks.iter().map(|c| c.passed).collect();
        assert_eq!(passed, [true, false, true, false], "{report:?}");
        assert!(report.checks[1].detail.contains("503"));
        assert!(
            report.checks[3].detail.contains("timed out"),
            "{:?}",
            report.checks[3]
        );
    }

    #[test]
    fn the_deadline_bounds_all_checks() {
        let config = policy(
            1,
            vec![
                command("slow", &["sleep", "5"], 5),
                command("never", &["true"], 5),
            ],
        );
        let started = Instant::now();
        let report = rt().block_on(run_checks(&config));
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!report.checks[0].passed && !report.checks[1].passed);
        assert!(
            report.checks[1].detail.contains("deadline"),
            "{:?}",
            report.checks[1]
        );
    }

    #[test]
    fn no_checks_is_healthy() {
        let report = rt().block_on(run_checks(&policy(1, vec![])));
        assert!(report.healthy());
    }

    #[test]
    fn a_check_is_retried_until_it_passes() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let flag = ready.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            std::fs::write(flag, b"").unwrap();
        });
        let mut config = policy(
            20,
            vec![command("late", &["test", "-e", ready.to_str().unwrap()], 5)],
        );
        config.retry_interval = Duration::from_millis(200);
        let started = Instant::now();
        let report = rt().block_on(run_checks(&config));
        assert!(report.healthy(), "{report:?}");
        assert!(report.checks[0].tries > 1, "{report:?}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[test]
    fn a_check_that_never_passes_fails_at_the_deadline_with_its_last_cause() {
        let mut config = policy(2, vec![command("never", &["false"], 5)]);
        config.retry_interval = Duration::from_millis(300);
        config.settle = Duration::from_millis(500);
        let started = Instant::now();
        let report = rt().block_on(run_checks(&config));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2),
            "gave up before the deadline: {took:?}"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        let check = &report.checks[0];
        assert!(!check.passed);
        assert!(check.tries >= 3, "{check:?}");
        assert!(check.detail.contains("false failed: exit status: 1"), "{check:?}");
        assert!(
            report.summary().contains("never: false failed"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn a_refused_connection_keeps_its_cause() {
        // A port nothing listens on: bind one, then let it go.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = policy(
            1,
            vec![http("api", format!("http://127.0.0.1:{port}/healthz"), None)],
        );
        let report = rt().block_on(run_checks(&config));
        let detail = &report.checks[0].detail;
        assert!(detail.to_lowercase().contains("connection refused"), "{detail}");
        assert_eq!(detail.matches("os error 111").count(), 1, "{detail}");
    }
}
