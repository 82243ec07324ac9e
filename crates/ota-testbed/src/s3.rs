//! [`S3Server`]: moto's S3 server (PyPI `moto[server]`, in the python-tuf virtualenv) on 127.0.0.1,
//! serving path-style URLs (`http://127.0.0.1:PORT/BUCKET/KEY`), stopped on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto S3 server. It accepts any credentials; a bucket made by [`S3Server::public_bucket`]
/// is readable without any, as a CDN origin or a device would read it.
pub struct S3Server {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

/// An HTTP response read by [`S3Server::request`].
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl S3Server {
    /// Starts moto's S3 server. Panics if moto is missing (`bash scripts/test.sh` installs it) or the
    /// server does not come up within 30 s.
    pub fn start() -> S3Server {
        let python = crate::python_tuf();
        assert!(
            crate::python_imports(&python, "moto.server"),
            "moto's S3 server is not installed in {}; run `bash scripts/test.sh` (it installs it) or \
             `{} -m pip install 'moto[server]==5.1.22'`",
            python.display(),
            python.display()
        );
        let log = tempfile::NamedTempFile::new().expect("log file for moto");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn moto server");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "moto server exited with {status}: {}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("moto server did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, port, log }
    }

    /// `http://127.0.0.1:PORT` (the endpoint; no trailing slash).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` with the `public-read` ACL: anyone may GET its objects over plain HTTP.
    pub fn public_bucket(&self, name: &str) {
        let r = self.request("PUT", &format!("/{name}"), &[("x-amz-acl", "public-read")]);
        assert_eq!(
            r.status,
            200,
            "create bucket {name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// One anonymous HTTP/1.0 request (`GET`, `HEAD`, `PUT` without body) to the server.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n",
            self.port
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP response head");
        let head = String::from_utf8_lossy(raw.get(..split).unwrap()).into_owned();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        HttpResponse {
            status,
            headers,
            body: raw.get(split + 4..).unwrap().to_vec(),
        }
    }

    /// What the server logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
