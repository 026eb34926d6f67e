//! Presigned URLs used by a plain HTTP client (reqwest, no credentials) against the embedded
//! endpoint; tampered, expired and wrongly signed requests are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use blindfold_store::presign::{self, PresignedRequest};
use blindfold_store::{Store, StoreError};
use bytes::Bytes;
use common::*;

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn status(req: &PresignedRequest, body: Option<&[u8]>) -> (u16, String) {
    let mut b = http().request(req.method.parse().unwrap(), &req.url);
    for (k, v) in &req.headers {
        b = b.header(k, v);
    }
    if let Some(body) = body {
        b = b.body(body.to_vec());
    }
    let resp = b.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_put_and_get_work_with_plain_http() {
    let h = harness().await;
    let key = input_key("job-p", "upload.bin");
    let body = Bytes::from(data(5, 300_000));
    let put = h.store.presign_put(&key, body.len() as u64, Duration::from_secs(600)).await.unwrap();
    assert_eq!(put.method, "PUT");
    assert!(put.url.contains("X-Amz-Signature="), "{}", put.url);
    assert!(!put.url.contains(SECRET_KEY));
    presign::put_presigned(&http(), &put, body.clone()).await.unwrap();
    assert_eq!(h.store.get_bytes(&key).await.unwrap(), body);

    let get = h.store.presign_get(&key, Duration::from_secs(600)).await.unwrap();
    assert_eq!(presign::get_presigned(&http(), &get).await.unwrap(), body);
    h.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_multipart_uploads_a_file_without_credentials() {
    let h = harness().await;
    let key = input_key("job-pm", "batch.bin");
    let body = data(6, 11 * MIB + 123);
    let file = h.dir.path().join("batch.bin");
    std::fs::write(&file, &body).unwrap();

    let upload = h.store.presign_multipart(&key, body.len() as u64, Duration::from_secs(600)).await.unwrap();
    assert_eq!(upload.parts.len(), 3);
    let parts = presign::upload_file(&http(), &file, &upload, 2).await.unwrap();
    assert_eq!(parts.iter().map(|p| p.part_number).collect::<Vec<_>>(), vec![1, 2, 3]);
    h.store.complete_presigned(&key, &upload.upload_id, &parts).await.unwrap();
    let mut out = Vec::new();
    h.store.download(&key, &mut out, Some(crc32c::crc32c(&body))).await.unwrap();
    assert!(out == body, "presigned multipart object differs");
    assert!(leftover_uploads(&h.dir.path().join("data")).is_empty());

    // A file of another size than announced is refused before anything is sent.
    let upload = h.store.presign_multipart(&key, 10, Duration::from_secs(600)).await.unwrap();
    let err = presign::upload_file(&http(), &file, &upload, 2).await.unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    h.store.abort_upload(&key, &upload.upload_id).await.unwrap();
    h.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_and_wrongly_signed_urls_are_refused() {
    let h = harness().await;
    let key = input_key("job-t", "object.bin");
    let other = input_key("job-t", "other.bin");
    h.store.put_bytes(&key, Bytes::from_static(b"ciphertext")).await.unwrap();
    h.store.put_bytes(&other, Bytes::from_static(b"someone else")).await.unwrap();
    let get = h.store.presign_get(&key, Duration::from_secs(600)).await.unwrap();
    assert_eq!(status(&get, None).await.0, 200);

    // Tampered: another key, a longer expiry, a changed signature.
    let mut tampered = get.clone();
    tampered.url = get.url.replace("object.bin", "other.bin");
    let (code, body) = status(&tampered, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    let mut tampered = get.clone();
    tampered.url = get.url.replace("X-Amz-Expires=600", "X-Amz-Expires=604800");
    assert_ne!(tampered.url, get.url);
    assert_eq!(status(&tampered, None).await.0, 403);
    let mut tampered = get.clone();
    let at = tampered.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &tampered.url[at..=at] == "0" { "1" } else { "0" };
    tampered.url.replace_range(at..=at, flipped);
    assert_eq!(status(&tampered, None).await.0, 403);
    // A presigned GET cannot be turned into a PUT.
    let mut as_put = get.clone();
    as_put.method = "PUT".to_owned();
    assert_eq!(status(&as_put, Some(b"overwritten")).await.0, 403);
    assert_eq!(&h.store.get_bytes(&key).await.unwrap()[..], b"ciphertext");

    // Expired.
    let short = h.store.presign_get(&key, Duration::from_secs(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, body) = status(&short, None).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("expired"), "{body}");

    // Signed with the wrong secret key.
    let mut config = h.config.clone();
    config.secret_key = Some(secrecy::SecretString::from("not-the-secret-key"));
    let forger = Store::connect(&config).await.unwrap();
    let forged = forger.presign_put(&key, 6, Duration::from_secs(600)).await.unwrap();
    let (code, body) = status(&forged, Some(b"forged")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    assert_eq!(&h.store.get_bytes(&key).await.unwrap()[..], b"ciphertext");
    h.s3.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_put_stores_only_the_signed_length() {
    let h = harness().await;
    let key = input_key("job-len", "keys.bfkb");
    let put = h.store.presign_put(&key, 1000, Duration::from_secs(600)).await.unwrap();
    assert!(
        put.headers.iter().any(|(name, value)| name.eq_ignore_ascii_case("content-length") && value == "1000"),
        "the length is among the signed headers: {:?}",
        put.headers
    );
    // Another length, with the header telling the truth about the body: the signature fails.
    let mut lying = put.clone();
    lying.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
    for len in [999usize, 1001, 64 << 10] {
        let (code, body) = status(&lying, Some(&vec![7u8; len])).await;
        assert_eq!(code, 403, "{len} bytes: {body}");
        assert!(h.store.head(&key).await.unwrap().is_none(), "{len} bytes stored nothing");
    }
    presign::put_presigned(&http(), &put, Bytes::from(vec![7u8; 1000])).await.unwrap();
    assert_eq!(h.store.head(&key).await.unwrap().unwrap().size, 1000);

    // Each part of a multipart upload is signed with its own length.
    let big = input_key("job-len", "batch.bin");
    let size = 11 * MIB as u64 + 5;
    let upload = h.store.presign_multipart(&big, size, Duration::from_secs(600)).await.unwrap();
    let last = upload.parts.last().unwrap();
    let expected = (size - upload.part_size * (upload.parts.len() as u64 - 1)).to_string();
    assert!(last.request.headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("content-length") && *v == expected));
    let mut lying = last.request.clone();
    lying.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
    let (code, body) = status(&lying, Some(&[1u8; 6])).await;
    assert_eq!(code, 403, "{body}");
    h.s3.shutdown().await;
}
