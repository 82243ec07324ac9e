//! Issue 15, the collector: `POST /v1/reports` on a real `collector serve` on 127.0.0.1. A good report
//! is stored; every bad one is refused with its status and code and leaves no row anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use common::*;
use ota_report::{Outcome, ReportSigner as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_report_is_stored_and_counted() {
    let db = Db::new();
    let key = device_key(1);
    db.enroll(&key);
    let server = Server::start(&db.path, &[]);
    let client = reqwest::Client::new();

    let (status, body) = post(
        &client,
        &server.base,
        signed(&report(&key, 1, "1.1.0", Outcome::Committed, ""), &key),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["device_id"], key.public_key().device_id().to_string());
    assert_eq!(body["sequence"], 1);
    assert_eq!(db.rows(), (1, 1, 1));

    let summary: serde_json::Value = client
        .get(format!("{}/v1/summary", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let release = &summary["releases"][0];
    assert_eq!(release["to_version"], "1.1.0");
    assert_eq!(release["devices"], 1);
    assert_eq!(release["committed"], 1);
}

/// Each refused body: what it is, the status and error code expected.
struct Case {
    name: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn refused_cases(enrolled: &ed25519_dalek::SigningKey, revoked: &ed25519_dalek::SigningKey) -> Vec<Case> {
    let stranger = device_key(66);
    let enrolled_id = enrolled.public_key().key_id();
    let good = signed(&report(enrolled, 10, "1.1.0", Outcome::Committed, ""), enrolled);
    let payload = serde_json::to_vec(&report(enrolled, 11, "1.1.0", Outcome::Committed, "")).unwrap();
    let mut tampered_payload = payload.clone();
    let at = tampered_payload.len() - 3;
    tampered_payload[at] ^= 1;
    let tampered = {
        // Signed over the original payload, sent with another.
        let env: serde_json::Value =
            serde_json::from_slice(&sealed(&payload, enrolled, &enrolled_id)).unwrap();
        let other: serde_json::Value =
            serde_json::from_slice(&sealed(&tampered_payload, enrolled, &enrolled_id)).unwrap();
        let mut out = env.clone();
        out["payload"] = other["payload"].clone();
        serde_json::to_vec(&out).unwrap()
    };
    let mut unknown_field: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    unknown_field["extra"] = serde_json::json!(1);
    let unknown_field = serde_json::to_vec(&unknown_field).unwrap();
    let mut unsigned: serde_json::Value = serde_json::from_slice(&good).unwrap();
    unsigned["signatures"] = serde_json::json!([]);
    vec![
        Case {
            name: "forged: another key's signature under the enrolled key id",
            body: sealed(&payload, &stranger, &enrolled_id),
            status: 401,
            code: "bad_signature",
        },
        Case {
            name: "tampered payload",
            body: tampered,
            status: 401,
            code: "bad_signature",
        },
        Case {
            name: "unsigned",
            body: serde_json::to_vec(&unsigned).unwrap(),
            status: 401,
            code: "unsigned",
        },
        Case {
            name: "truncated",
            body: good[..good.len() / 2].to_vec(),
            status: 400,
            code: "malformed",
        },
        Case {
            name: "not JSON",
            body: b"hello".to_vec(),
            status: 400,
            code: "malformed",
        },
        Case {
            name: "empty",
            body: Vec::new(),
            status: 400,
            code: "malformed",
        },
        Case {
            name: "report with an unknown field, validly signed",
            body: sealed(&unknown_field, enrolled, &enrolled_id),
            status: 400,
            code: "malformed",
        },
        Case {
            name: "unknown device",
            body: signed(&report(&stranger, 1, "1.1.0", Outcome::Committed, ""), &stranger),
            status: 403,
            code: "unknown_device",
        },
        Case {
            name: "revoked device",
            body: signed(&report(revoked, 1, "1.1.0", Outcome::Committed, ""), revoked),
            status: 403,
            code: "revoked",
        },
        Case {
            name: "signed by an enrolled key, claiming another device",
            body: {
                let mut r = report(enrolled, 12, "1.1.0", Outcome::Committed, "");
                r.device_id = revoked.public_key().device_id();
                sealed(&serde_json::to_vec(&r).unwrap(), enrolled, &enrolled_id)
            },
            status: 403,
            code: "wrong_device",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_are_refused_with_their_status_and_stored_nowhere() {
    let db = Db::new();
    let (enrolled, revoked) = (device_key(1), device_key(2));
    db.enroll(&enrolled);
    db.enroll(&revoked);
    let id = revoked.public_key().device_id().to_string();
    let out = collector(&["revoke", "--db", db.arg(), "--device", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start(&db.path, &[]);
    let client = reqwest::Client::new();
    let before = db.rows();
    assert_eq!(before, (0, 0, 0));

    for case in refused_cases(&enrolled, &revoked) {
        let (status, body) = post(&client, &server.base, case.body).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (case.status, Some(case.code)),
            "{}: {body}",
            case.name
        );
        assert!(!body["message"].as_str().unwrap().is_empty(), "{}", case.name);
        assert_eq!(db.rows(), before, "{} left a row", case.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_or_older_sequence_is_refused_and_not_stored() {
    let db = Db::new();
    let key = device_key(3);
    db.enroll(&key);
    let server = Server::start(&db.path, &[]);
    let client = reqwest::Client::new();
    let five = signed(&report(&key, 5, "1.1.0", Outcome::Failed, "download"), &key);
    assert_eq!(post(&client, &server.base, five.clone()).await.0, 201);
    let after_first = db.rows();

    let (status, body) = post(&client, &server.base, five).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("replay")), "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("last accepted is 5"),
        "{body}"
    );
    let older = signed(&report(&key, 4, "1.1.0", Outcome::Committed, ""), &key);
    assert_eq!(post(&client, &server.base, older).await.0, 409);
    assert_eq!(db.rows(), after_first);

    let six = signed(&report(&key, 6, "1.1.0", Outcome::Committed, ""), &key);
    assert_eq!(post(&client, &server.base, six).await.0, 201);
    assert_eq!(db.rows().0, 2);
}

/// A declared length over the bound is refused from the headers alone: the server answers 413 without
/// waiting for (or reading) the body. Through a raw socket that sends no body, because a client still
/// writing a 1 MiB body when the server answers and closes may see a broken pipe instead of the answer.
#[test]
fn an_oversized_declared_body_is_refused_before_it_is_read() {
    let db = Db::new();
    let server = Server::start(&db.path, &[]);
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(
        b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    assert_eq!(db.rows(), (0, 0, 0));
}

/// Without a Content-Length (chunked) the limit still holds: the body is cut off once it passes the bound.
#[test]
fn an_oversized_chunked_body_is_refused() {
    let db = Db::new();
    let server = Server::start(&db.path, &[]);
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 4096, "x".repeat(4096));
    // Sends until the server answers and closes (it must not wait for the end of the body).
    for _ in 0..256 {
        if conn.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(db.rows(), (0, 0, 0));
}

/// Slow-loris: a client that stalls in its headers or its body is cut off by the read timeouts.
#[test]
fn a_stalled_client_is_cut_off() {
    let db = Db::new();
    let server = Server::start(
        &db.path,
        &["--header-timeout-secs", "1", "--body-timeout-secs", "1"],
    );

    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pay")
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).ok();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let started = Instant::now();
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    conn.write_all(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).ok();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "headers stalled for {:?}",
        started.elapsed()
    );
    assert_eq!(db.rows(), (0, 0, 0));
}

/// Revoking a device while the server runs (its key already read and kept in memory) refuses its next
/// report: the revocation is checked in the report's own transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_serving_is_refused_at_once() {
    let db = Db::new();
    let key = device_key(5);
    db.enroll(&key);
    let server = Server::start(&db.path, &[]);
    let client = reqwest::Client::new();
    let first = signed(&report(&key, 1, "1.1.0", Outcome::Committed, ""), &key);
    assert_eq!(post(&client, &server.base, first).await.0, 201);

    let id = key.public_key().device_id().to_string();
    let out = collector(&["revoke", "--db", db.arg(), "--device", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = signed(&report(&key, 2, "1.1.0", Outcome::Committed, ""), &key);
    let (status, body) = post(&client, &server.base, second).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("revoked")), "{body}");
    assert_eq!(db.rows(), (1, 1, 1));
}
