//! The report suites' peers on 127.0.0.1: the real `collector` binary over SQLite ([`Collector`]),
//! started and stopped on one port so a device's configured URL outlives a restart, and raw TCP
//! servers that misbehave ([`RawServer`]).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::collector_binary;

/// A port free now on 127.0.0.1 (bound, then released: a peer is started on it later).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `collector` with its own SQLite database, on a fixed port; not serving until [`Collector::start`].
pub struct Collector {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Collector {
    /// A collector database and a port for it, not serving yet (a device sending now finds it down).
    pub fn new() -> Collector {
        Collector {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            child: None,
        }
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("collector.db")
    }

    /// `http://127.0.0.1:PORT`, what a device is configured with.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(collector_binary())
            .args(args)
            .arg("--db")
            .arg(self.db())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "collector {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `collector enroll --key HEX`.
    pub fn enroll(&self, public_key_hex: &str) {
        self.run(&["enroll", "--key", public_key_hex]);
    }

    /// `collector summary --json`, parsed.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::from_slice(&self.run(&["summary", "--json"]).stdout).unwrap()
    }

    /// The summary's entry for release `version` (panics when there is none).
    pub fn release(&self, version: &str) -> serde_json::Value {
        let summary = self.summary();
        let releases = summary["releases"].as_array().unwrap();
        let found = releases.iter().find(|r| r["to_version"] == version);
        found
            .unwrap_or_else(|| panic!("no release {version} in {summary}"))
            .clone()
    }

    /// Starts `collector serve` on the port and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already serving");
        // Panics unless the collector says `listening on ...`.
        let (child, _addr) = ota_testbed::spawn_listening(
            Command::new(collector_binary())
                .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--db"])
                .arg(self.db()),
        );
        self.child = Some(child);
    }

    /// Stops serving (the database stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a [`RawServer`] answers every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Accepts, reads the request, and never answers.
    Stall,
    /// Answers `503` and a body that never ends (64 KiB writes for as long as the client reads).
    EndlessBody,
    /// Answers `201 Created` and then an endless body.
    EndlessAccepted,
    /// Sends its status line one byte every half second, for ever (slow loris, server side).
    Slowloris,
}

/// A raw TCP server on 127.0.0.1 that answers every connection as its [`Misbehaviour`] says; its
/// threads live as long as the test process.
pub struct RawServer {
    port: u16,
}

impl RawServer {
    /// Starts it.
    pub fn start(how: Misbehaviour) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || misbehave(stream, how));
            }
        });
        RawServer { port }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn misbehave(mut stream: TcpStream, how: Misbehaviour) {
    // Read what the client sends first (the request), so it is not refused unread.
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut buf = [0u8; 64 * 1024];
    let _ = stream.read(&mut buf);
    let endless = |stream: &mut TcpStream, head: &str| {
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        while stream.write_all(&chunk).is_ok() {}
    };
    match how {
        Misbehaviour::Stall => std::thread::sleep(Duration::from_secs(600)),
        Misbehaviour::EndlessBody => endless(
            &mut stream,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\r\n",
        ),
        Misbehaviour::EndlessAccepted => endless(
            &mut stream,
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\r\n",
        ),
        Misbehaviour::Slowloris => {
            for b in b"HTTP/1.1 201 Created\r\n".iter().cycle() {
                if stream.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// A client that trusts only the CA `ca_pem` and shows no certificate of its own.
pub fn client_without_certificate(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// POSTs a JSON `body`: the response's status and text, or the error and its causes on one line.
pub async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| device_agent::error_chain(&e))?;
    let status = resp.status().as_u16();
    Ok((
        status,
        resp.text().await.map_err(|e| device_agent::error_chain(&e))?,
    ))
}

/// Asserts that a collector serving mutual TLS refuses `body` from `client()`'s connections with the TLS
/// alert `alert`. In TLS 1.3 the server checks the client's certificate after the client has finished its
/// side of the handshake, so the client may see the connection close before it reads the alert
/// ("connection was not ready"): every attempt must be refused, and one of up to five must name the reason.
pub async fn assert_tls_refusal(client: &dyn Fn() -> reqwest::Client, url: &str, body: Vec<u8>, alert: &str) {
    let mut seen = Vec::new();
    for _ in 0..5 {
        match post(&client(), url, body.clone()).await {
            Ok((status, text)) => panic!("accepted without {alert}: {status} {text}"),
            Err(e) if e.contains(alert) => return,
            Err(e) => seen.push(e),
        }
    }
    panic!("no {alert} alert in 5 refusals: {seen:?}");
}
