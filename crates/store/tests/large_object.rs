//! A 256 MiB object streamed up in parts and down again through aws-sdk-s3 against the embedded
//! endpoint, with bounded memory. Its own test binary, so no other test disturbs the process's
//! peak-RSS measurement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{HashingWriter, MIB, RandomReader, harness, input_key, leftover_uploads};
use sha2::Digest;

/// A field of /proc/self/status in bytes (VmHWM: peak resident set; VmRSS: current).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_256_mib_object_streams_up_and_down_with_bounded_memory() {
    const SIZE: u64 = 256 * MIB as u64;
    const PART: usize = 8 * MIB;
    const IN_FLIGHT: usize = 4;
    let h = harness().await;
    let store = h.store.clone().with_transfer(PART, IN_FLIGHT);
    let key = input_key("big-job", "batch.bin");

    // Warm up: connections, TLS-less pool, allocator arenas, the server's first requests.
    let warm = input_key("big-job", "warm.bin");
    let mut r = RandomReader::new(1, (2 * PART) as u64);
    store.upload(&warm, &mut r).await.unwrap();
    store.download(&warm, HashingWriter::default(), None).await.unwrap();
    store.delete(&warm).await.unwrap();

    let peak_before = status_bytes("VmHWM:");
    let mut source = RandomReader::new(42, SIZE);
    let receipt = store.upload(&key, &mut source).await.unwrap();
    assert_eq!(receipt.size, SIZE);
    assert_eq!(receipt.parts, 32);
    assert_eq!(source.produced, SIZE);
    let sent = source.sha.finalize();

    let mut sink = HashingWriter::default();
    let got = store.download(&key, &mut sink, Some(receipt.crc32c)).await.unwrap();
    assert_eq!(got.size, SIZE);
    assert_eq!(sink.written, SIZE);
    assert_eq!(sink.sha.finalize(), sent, "the bytes read back differ from the bytes sent");
    let peak_after = status_bytes("VmHWM:");
    let growth = peak_after.saturating_sub(peak_before);
    eprintln!(
        "object {} MiB, part {} MiB x {IN_FLIGHT} in flight: peak RSS {} MiB -> {} MiB (growth {} MiB), RSS now {} MiB",
        SIZE >> 20,
        PART >> 20,
        peak_before >> 20,
        peak_after >> 20,
        growth >> 20,
        status_bytes("VmRSS:") >> 20
    );
    // The client holds at most (IN_FLIGHT + 1) parts (40 MiB); the object is 256 MiB. Measured
    // about 43 MiB; the bound leaves room for allocator and server buffers.
    assert!(
        growth < 96 * MIB as u64,
        "peak RSS grew by {} MiB for a {} MiB object: it was buffered",
        growth >> 20,
        SIZE >> 20
    );

    assert_eq!(store.head(&key).await.unwrap().unwrap().size, SIZE);
    assert!(leftover_uploads(&h.dir.path().join("data")).is_empty());
    store.delete(&key).await.unwrap();
    h.s3.shutdown().await;
}
