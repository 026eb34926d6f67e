//! `blindfold dev s3` starts an endpoint and prints where it listens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

#[test]
fn dev_s3_prints_its_endpoint_and_answers_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_blindfold"))
        .args(["dev", "s3", "--port", "0", "--access-key", "ak", "--secret-key", "sk", "--dir"])
        .arg(dir.path().join("s3"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let endpoint = line.trim().to_owned();
    let addr = endpoint.strip_prefix("http://").unwrap_or_else(|| panic!("not an endpoint: {line:?}"));
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // An unsigned request is answered by the S3 endpoint, and refused.
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    assert!(dir.path().join("s3").is_dir());
}
