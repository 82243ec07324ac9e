//! Health checks after booting a trial image: commands and HTTP probes, each with its own timeout, all
//! within one deadline. Healthy means every check passed in time; anything else (failure, timeout, a
//! check that cannot even start) means roll back.

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
    /// What happened ("exit status 0", "HTTP 503", "timed out after 5 s", ...).
    pub detail: String,
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

    /// A one-line summary naming the failed checks.
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

/// Runs every check in order; each gets its own timeout, cut short by what remains of the deadline.
pub async fn run_checks(config: &HealthConfig) -> HealthReport {
    let deadline = Instant::now() + Duration::from_secs(config.deadline_secs);
    let mut checks = Vec::with_capacity(config.checks.len());
    for check in &config.checks {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_secs(check.timeout_secs).min(left);
        let result = if left.is_zero() {
            CheckResult {
                name: check.name.clone(),
                passed: false,
                detail: format!("not run: the {} s deadline passed", config.deadline_secs),
            }
        } else {
            run_one(check, timeout).await
        };
        tracing::info!(check = %result.name, passed = result.passed, detail = %result.detail, "health check");
        checks.push(result);
    }
    HealthReport { checks }
}

async fn run_one(check: &HealthCheckConfig, timeout: Duration) -> CheckResult {
    let (passed, detail) = match (&check.command, &check.http) {
        (Some(argv), _) => run_command(argv, timeout).await,
        (None, Some(url)) => probe_http(url, check.expect_status, timeout).await,
        (None, None) => (false, "neither command nor http given".to_owned()),
    };
    CheckResult {
        name: check.name.clone(),
        passed,
        detail,
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
        Err(e) => (false, format!("{url}: {e}")),
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
        let config = HealthConfig {
            deadline_secs: 30,
            checks: vec![
                command("ok", &["true"], 5),
                command("bad", &["false"], 5),
                command("slow", &["sleep", "10"], 1),
                command("missing", &["/nonexistent/check"], 5),
            ],
        };
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
        let config = HealthConfig {
            deadline_secs: 30,
            checks: vec![
                http("up", serve(200, Duration::ZERO), None),
                http("down", serve(503, Duration::ZERO), None),
                http("teapot", serve(418, Duration::ZERO), Some(418)),
                http("slow", serve(200, Duration::from_secs(4)), None),
            ],
        };
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
        let config = HealthConfig {
            deadline_secs: 1,
            checks: vec![
                command("slow", &["sleep", "5"], 5),
                command("never", &["true"], 5),
            ],
        };
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
        let report = rt().block_on(run_checks(&HealthConfig {
            deadline_secs: 1,
            checks: vec![],
        }));
        assert!(report.healthy());
    }
}
