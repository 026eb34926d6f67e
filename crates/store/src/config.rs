//! Where the bucket is and how to talk to it, filled from flags or the environment.

use std::time::Duration;

use clap::builder::BoolishValueParser;
use secrecy::SecretString;

/// Connection settings for an S3-compatible store. Embed it in a binary's arguments with
/// `#[command(flatten)]`; every flag also reads a `BLINDFOLD_S3_*` environment variable.
///
/// Without `--s3-access-key`/`--s3-secret-key` the standard AWS credential chain is used
/// (environment `AWS_ACCESS_KEY_ID`…, profile files, web identity, ECS/IMDS).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// S3 endpoint URL (e.g. `http://127.0.0.1:9000`); omit for AWS S3's regional endpoint.
    #[arg(long = "s3-endpoint", env = "BLINDFOLD_S3_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Bucket holding all Blindfold objects.
    #[arg(long = "s3-bucket", env = "BLINDFOLD_S3_BUCKET", default_value = "blindfold")]
    pub bucket: String,

    /// Region used for signing (`us-east-1` for MinIO/Ceph, `garage` for Garage by default).
    #[arg(long = "s3-region", env = "BLINDFOLD_S3_REGION", default_value = "us-east-1")]
    pub region: String,

    /// Address buckets as `endpoint/bucket/key` (path style) instead of `bucket.endpoint/key`.
    #[arg(
        long = "s3-path-style",
        env = "BLINDFOLD_S3_PATH_STYLE",
        value_parser = BoolishValueParser::new(),
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub path_style: bool,

    /// Static access key id; with the secret key, overrides the AWS credential chain.
    #[arg(long = "s3-access-key", env = "BLINDFOLD_S3_ACCESS_KEY", requires = "secret_key")]
    pub access_key: Option<String>,

    /// Static secret access key (never logged).
    #[arg(
        long = "s3-secret-key",
        env = "BLINDFOLD_S3_SECRET_KEY",
        hide_env_values = true,
        requires = "access_key",
        value_parser = parse_secret
    )]
    pub secret_key: Option<SecretString>,

    /// Multipart part size in MiB (5 to 5120).
    #[arg(long = "s3-part-size-mib", env = "BLINDFOLD_S3_PART_SIZE_MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(5..=5120))]
    pub part_size_mib: u64,

    /// Parts uploaded at once (memory use is about this times the part size).
    #[arg(long = "s3-parts-in-flight", env = "BLINDFOLD_S3_PARTS_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parts_in_flight: u64,

    /// Send CRC32C checksums with uploads (verified by the store). Turn off only for old stores
    /// that reject `x-amz-checksum-*` headers; downloads are still checked against the receipt.
    #[arg(
        long = "s3-checksums",
        env = "BLINDFOLD_S3_CHECKSUMS",
        value_parser = BoolishValueParser::new(),
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub checksums: bool,

    /// Attempts per request (the first one included) before a transient error is returned.
    #[arg(long = "s3-max-attempts", env = "BLINDFOLD_S3_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Initial retry backoff in milliseconds (exponential with jitter, capped at 20 s).
    #[arg(long = "s3-initial-backoff-ms", env = "BLINDFOLD_S3_INITIAL_BACKOFF_MS", default_value_t = 200)]
    pub initial_backoff_ms: u64,

    /// TCP/TLS connect timeout in seconds.
    #[arg(long = "s3-connect-timeout-secs", env = "BLINDFOLD_S3_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,

    /// Timeout of one request attempt in seconds (a whole part upload must fit).
    #[arg(long = "s3-attempt-timeout-secs", env = "BLINDFOLD_S3_ATTEMPT_TIMEOUT_SECS", default_value_t = 300)]
    pub attempt_timeout_secs: u64,
}

fn parse_secret(value: &str) -> Result<SecretString, String> {
    if value.is_empty() {
        return Err("the secret key is empty".to_owned());
    }
    Ok(SecretString::from(value))
}

impl StoreConfig {
    /// Settings for an endpoint with static credentials and path-style addressing (MinIO, Ceph,
    /// Garage, the embedded endpoint), other settings at their defaults.
    pub fn for_endpoint(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        access_key: impl Into<String>,
        secret_key: SecretString,
    ) -> Self {
        Self {
            endpoint: Some(endpoint.into()),
            bucket: bucket.into(),
            region: "us-east-1".to_owned(),
            path_style: true,
            access_key: Some(access_key.into()),
            secret_key: Some(secret_key),
            part_size_mib: 16,
            parts_in_flight: 4,
            checksums: true,
            max_attempts: 8,
            initial_backoff_ms: 200,
            connect_timeout_secs: 10,
            attempt_timeout_secs: 300,
        }
    }

    /// The multipart part size in bytes.
    pub fn part_size(&self) -> usize {
        usize::try_from(self.part_size_mib.clamp(5, 5120) << 20).unwrap_or(5 << 20)
    }

    /// Initial retry backoff.
    pub fn initial_backoff(&self) -> Duration {
        Duration::from_millis(self.initial_backoff_ms)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        store: StoreConfig,
    }

    #[test]
    fn flags_fill_the_config_and_the_secret_is_not_printed() {
        let cli = Cli::try_parse_from([
            "x",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-bucket",
            "b",
            "--s3-path-style",
            "--s3-access-key",
            "AK",
            "--s3-secret-key",
            "very-secret",
            "--s3-part-size-mib",
            "8",
        ])
        .unwrap();
        let c = cli.store;
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(c.path_style);
        assert_eq!(c.part_size(), 8 << 20);
        assert_eq!(c.secret_key.as_ref().unwrap().expose_secret(), "very-secret");
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn a_lone_access_key_or_a_tiny_part_is_refused() {
        assert!(Cli::try_parse_from(["x", "--s3-access-key", "AK"]).is_err());
        assert!(Cli::try_parse_from(["x", "--s3-part-size-mib", "1"]).is_err());
        let c = Cli::try_parse_from(["x", "--s3-path-style", "false"]).unwrap().store;
        assert!(!c.path_style);
        assert!(c.checksums);
        let c = Cli::try_parse_from(["x", "--s3-checksums", "0"]).unwrap().store;
        assert!(!c.checksums);
    }
}
