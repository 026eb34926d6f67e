//! The model registry's records: which (name, version) exist, in which state, and what their
//! files must hash to. The files themselves live in object storage and their verification and
//! compilation in the API; this module only keeps the rows consistent.
//!
//! A version is immutable: once announced, a (name, version) is never announced again, even
//! after it is retired. A version that failed verification is removed (`abandon`), so nothing
//! is ever half registered.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use crate::{Error, Result};

/// Where a model version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    /// Announced; its files are not verified yet and it is never served.
    Uploading,
    /// Served: key sets and jobs may name it.
    Active,
    /// No new key sets or jobs; those already queued or running still finish.
    Retired,
}

impl ModelState {
    /// The state as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uploading => "uploading",
            Self::Active => "active",
            Self::Retired => "retired",
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for ModelState {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        match value.as_str() {
            "uploading" => Ok(Self::Uploading),
            "active" => Ok(Self::Active),
            "retired" => Ok(Self::Retired),
            _ => Err(Error::Unexpected { what: "model state", value }),
        }
    }
}

/// A model as a user names it: `NAME` (its highest active version) or `NAME@VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// The registry name (`[a-z0-9][a-z0-9._-]{0,63}`).
    pub name: String,
    /// The pinned version, if any.
    pub version: Option<i32>,
}

impl ModelRef {
    /// A reference pinned to `version`.
    pub fn pinned(name: impl Into<String>, version: i32) -> Self {
        Self { name: name.into(), version: Some(version) }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(version) => write!(f, "{}@{version}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl FromStr for ModelRef {
    type Err = Error;
    fn from_str(text: &str) -> Result<Self> {
        let (name, version) = match text.split_once('@') {
            Some((name, version)) => {
                let version = version.parse::<i32>().ok().filter(|v| *v >= 1).ok_or_else(|| Error::Invalid {
                    what: "model version",
                    reason: format!("{version:?} in {text:?} is not a version number (1, 2, …)"),
                })?;
                (name, Some(version))
            }
            None => (text, None),
        };
        check_name(name)?;
        Ok(Self { name: name.to_owned(), version })
    }
}

/// Refuses a name the registry cannot hold (the same rule as the table's CHECK): it becomes
/// part of object keys and directory names.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && name.len() <= 64 {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "model name",
            reason: format!(
                "{name:?}: a model name is 1 to 64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
            ),
        })
    }
}

/// One registered model version.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize)]
pub struct RegisteredModel {
    /// The registry name.
    pub name: String,
    /// The version (the manifest's).
    pub version: i32,
    /// Where it is in its life.
    #[sqlx(try_from = "String")]
    pub state: ModelState,
    /// SHA-256 of `model.onnx`, as announced and then verified.
    #[serde(serialize_with = "hex")]
    pub onnx_sha256: Vec<u8>,
    /// Size of `model.onnx` in bytes.
    pub onnx_bytes: i64,
    /// Size of `manifest.json` in bytes.
    pub manifest_bytes: i64,
    /// The manifest (once verified).
    pub manifest: Option<serde_json::Value>,
    /// The compiled plans' summaries, one per packing (once verified).
    pub plans: Option<serde_json::Value>,
    /// When it was announced.
    pub created_at: DateTime<Utc>,
    /// When it became active.
    pub activated_at: Option<DateTime<Utc>>,
    /// When it was retired.
    pub retired_at: Option<DateTime<Utc>>,
}

impl RegisteredModel {
    /// `NAME@VERSION`.
    pub fn reference(&self) -> ModelRef {
        ModelRef::pinned(self.name.clone(), self.version)
    }

    /// The ONNX file's SHA-256 in lower-case hex.
    pub fn onnx_sha256_hex(&self) -> String {
        self.onnx_sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex<S: serde::Serializer>(bytes: &[u8], serializer: S) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// What an announcement promises about the files that will be uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The version being registered.
    pub model: ModelRef,
    /// SHA-256 of `model.onnx`.
    pub onnx_sha256: [u8; 32],
    /// Size of `model.onnx` in bytes.
    pub onnx_bytes: i64,
    /// Size of `manifest.json` in bytes.
    pub manifest_bytes: i64,
}

/// Records an announced version (state `uploading`). A version that exists in any state is
/// refused with [`Error::ModelVersionExists`]: versions are immutable.
pub async fn announce(db: impl PgExecutor<'_>, announcement: &Announcement) -> Result<RegisteredModel> {
    let Some(version) = announcement.model.version else {
        return Err(Error::Invalid { what: "model", reason: "announcing a model needs NAME@VERSION".into() });
    };
    check_name(&announcement.model.name)?;
    if announcement.onnx_bytes < 1 || announcement.manifest_bytes < 1 {
        return Err(Error::Invalid { what: "model files", reason: "both files must be at least one byte".into() });
    }
    let inserted: Option<RegisteredModel> = sqlx::query_as(
        "INSERT INTO models (name, version, onnx_sha256, onnx_bytes, manifest_bytes) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (name, version) DO NOTHING RETURNING *",
    )
    .bind(&announcement.model.name)
    .bind(version)
    .bind(&announcement.onnx_sha256[..])
    .bind(announcement.onnx_bytes)
    .bind(announcement.manifest_bytes)
    .fetch_optional(db)
    .await?;
    inserted.ok_or_else(|| Error::ModelVersionExists { model: announcement.model.to_string() })
}

/// Marks an uploading version active with its verified manifest and plans. `None` when there is
/// no such version in state `uploading` (completed meanwhile, or abandoned).
pub async fn activate(
    db: impl PgExecutor<'_>,
    name: &str,
    version: i32,
    manifest: &serde_json::Value,
    plans: &serde_json::Value,
) -> Result<Option<RegisteredModel>> {
    Ok(sqlx::query_as(
        "UPDATE models SET state = 'active', manifest = $3, plans = $4, activated_at = now() \
         WHERE name = $1 AND version = $2 AND state = 'uploading' RETURNING *",
    )
    .bind(name)
    .bind(version)
    .bind(manifest)
    .bind(plans)
    .fetch_optional(db)
    .await?)
}

/// Removes a version that is still `uploading` (its files failed verification, or the operator
/// gave up), so that it can be announced again. True when a row was removed.
pub async fn abandon(db: impl PgExecutor<'_>, name: &str, version: i32) -> Result<bool> {
    let removed = sqlx::query("DELETE FROM models WHERE name = $1 AND version = $2 AND state = 'uploading'")
        .bind(name)
        .bind(version)
        .execute(db)
        .await?;
    Ok(removed.rows_affected() == 1)
}

/// Retires an active version: no new key sets or jobs may name it. Retiring a retired version
/// answers it unchanged; `None` when the version does not exist or is still uploading.
pub async fn retire(db: impl PgExecutor<'_>, name: &str, version: i32) -> Result<Option<RegisteredModel>> {
    Ok(sqlx::query_as(
        "UPDATE models SET state = 'retired', retired_at = COALESCE(retired_at, now()) \
         WHERE name = $1 AND version = $2 AND state IN ('active', 'retired') RETURNING *",
    )
    .bind(name)
    .bind(version)
    .fetch_optional(db)
    .await?)
}

/// One version in any state.
pub async fn get(db: impl PgExecutor<'_>, name: &str, version: i32) -> Result<Option<RegisteredModel>> {
    Ok(sqlx::query_as("SELECT * FROM models WHERE name = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .fetch_optional(db)
        .await?)
}

/// What a reference names: a pinned version in any state but `uploading` (the caller decides
/// what a retired one may still do), or a bare name's highest active version.
pub async fn resolve(db: impl PgExecutor<'_>, model: &ModelRef) -> Result<Option<RegisteredModel>> {
    Ok(match model.version {
        Some(version) => {
            sqlx::query_as("SELECT * FROM models WHERE name = $1 AND version = $2 AND state IN ('active', 'retired')")
                .bind(&model.name)
                .bind(version)
                .fetch_optional(db)
                .await?
        }
        None => {
            sqlx::query_as("SELECT * FROM models WHERE name = $1 AND state = 'active' ORDER BY version DESC LIMIT 1")
                .bind(&model.name)
                .fetch_optional(db)
                .await?
        }
    })
}

/// Every version, by name then newest first; only active ones unless `all`.
pub async fn list(db: impl PgExecutor<'_>, all: bool) -> Result<Vec<RegisteredModel>> {
    Ok(sqlx::query_as("SELECT * FROM models WHERE $1 OR state = 'active' ORDER BY name, version DESC")
        .bind(all)
        .fetch_all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print() {
        let bare: ModelRef = "derma-lenet5".parse().unwrap();
        assert_eq!(bare, ModelRef { name: "derma-lenet5".into(), version: None });
        let pinned: ModelRef = "derma-lenet5@3".parse().unwrap();
        assert_eq!(pinned.version, Some(3));
        assert_eq!(pinned.to_string(), "derma-lenet5@3");
        for bad in ["", "Derma", "a/b", "x@", "x@0", "x@-1", "x@two", "@1", "../x", &"a".repeat(65)] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad:?} accepted");
        }
    }
}
