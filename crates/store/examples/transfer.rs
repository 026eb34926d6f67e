//! Times one upload and one download of a large object through the embedded endpoint:
//! `cargo run --release -p blindfold-store --example transfer -- [MB]`.

use std::time::Instant;

use blindfold_store::{EmbeddedS3, ObjectKey, Store, StoreConfig};
use secrecy::SecretString;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let megabytes: usize = std::env::args().nth(1).map_or(Ok(140), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let secret = SecretString::from("transfer-secret");
    let server = EmbeddedS3::start(dir.path(), 0, "transfer", &secret).await?;
    for checksums in [true, false] {
        let mut config = StoreConfig::for_endpoint(server.endpoint(), "bench", "transfer", secret.clone());
        config.checksums = checksums;
        let store = Store::connect(&config).await?;
        store.ensure_bucket().await?;
        let body: Vec<u8> = (0..megabytes << 20).map(|i| (i * 31 % 251) as u8).collect();
        let key = ObjectKey::parse(
            "tenants/00000000-0000-0000-0000-000000000001/jobs/00000000-0000-0000-0000-000000000002/input/batch.bfib",
        )?;
        let clock = Instant::now();
        store.upload(&key, std::io::Cursor::new(body)).await?;
        let up = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let bytes = store.get_bytes(&key).await?;
        let down = clock.elapsed().as_secs_f64();
        println!(
            "checksums {checksums}: {megabytes} MB up {up:.2} s ({:.0} MB/s), down {down:.2} s ({:.0} MB/s), {} bytes",
            megabytes as f64 / up,
            megabytes as f64 / down,
            bytes.len()
        );
    }
    server.shutdown().await;
    Ok(())
}
