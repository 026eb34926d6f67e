//! The object layout: every key Blindfold writes is built here, under one tenant's prefix.
//!
//! ```text
//! tenants/{tenant}/keysets/{keyset}/{name}     evaluation keys of one key set
//! tenants/{tenant}/jobs/{job}/input/{name}     ciphertext batches a job reads
//! tenants/{tenant}/jobs/{job}/result/{name}    encrypted results a job writes
//! models/{model}/{version}/{name}              a registered model's files (no tenant owns them)
//! ```
//!
//! Identifiers and names are validated so a key can never leave its tenant's prefix: ids are
//! 1–64 characters of `[A-Za-z0-9_-]`; object names are 1–128 characters of `[A-Za-z0-9._-]`,
//! not starting with a dot (so no `.`, `..` or hidden names) and never containing `/`.

use std::fmt;

use crate::error::{Result, StoreError};

const ID_MAX: usize = 64;
const NAME_MAX: usize = 128;

fn check_id(what: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("is empty")
    } else if value.len() > ID_MAX {
        Some("is longer than 64 characters")
    } else if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        Some("may only contain ASCII letters, digits, '-' and '_'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidName { what, value: value.to_owned(), reason }),
        None => Ok(()),
    }
}

fn check_name(value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("is empty")
    } else if value.len() > NAME_MAX {
        Some("is longer than 128 characters")
    } else if value.starts_with('.') {
        Some("may not start with '.' (no '.', '..' or hidden names)")
    } else if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        Some("may only contain ASCII letters, digits, '-', '_' and '.' (no '/')")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidName { what: "object name", value: value.to_owned(), reason }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            #[doc = concat!("Validates a ", $what, ": 1–64 characters of `[A-Za-z0-9_-]`.")]
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                check_id($what, &value)?;
                Ok(Self(value))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A tenant (one hospital or organisation); the root of everything stored for it.
    TenantId,
    "tenant id"
);
id_type!(
    /// A key set (the evaluation keys a tenant uploaded).
    KeysetId,
    "key set id"
);
id_type!(
    /// A job.
    JobId,
    "job id"
);

/// A registered model's name: 1–64 characters of `[a-z0-9._-]`, starting with a letter or a
/// digit (the registry's own rule, so no `.` or `..` component).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName(String);

impl ModelName {
    /// Validates a model name.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        let mut bytes = value.bytes();
        let ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
            && value.len() <= ID_MAX;
        if ok {
            Ok(Self(value))
        } else {
            Err(StoreError::InvalidName {
                what: "model name",
                value,
                reason: "must be 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            })
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The last component of a key: a file name with no path in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

impl ObjectName {
    /// Validates an object name: 1–128 characters of `[A-Za-z0-9._-]`, not starting with '.'.
    pub fn new(value: impl Into<String>) -> Result<Self> {
        let value = value.into();
        check_name(&value)?;
        Ok(Self(value))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which area of a tenant a key lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Area {
    /// `keysets/{keyset}/`.
    Keyset(KeysetId),
    /// `jobs/{job}/input/`.
    JobInput(JobId),
    /// `jobs/{job}/result/`.
    JobResult(JobId),
    /// `models/{model}/{version}/`: outside every tenant.
    Model(ModelName, u32),
}

/// A full object key in the Blindfold layout. Only built from validated parts, so it always lies
/// inside exactly one tenant's prefix, or (a model file) inside `models/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    tenant: Option<TenantId>,
    area: Area,
    name: ObjectName,
    key: String,
}

impl ObjectKey {
    /// `tenants/{tenant}/keysets/{keyset}/{name}`.
    pub fn keyset(tenant: &TenantId, keyset: &KeysetId, name: &ObjectName) -> Self {
        Self::build(tenant, Area::Keyset(keyset.clone()), name)
    }

    /// `tenants/{tenant}/jobs/{job}/input/{name}`.
    pub fn job_input(tenant: &TenantId, job: &JobId, name: &ObjectName) -> Self {
        Self::build(tenant, Area::JobInput(job.clone()), name)
    }

    /// `tenants/{tenant}/jobs/{job}/result/{name}`.
    pub fn job_result(tenant: &TenantId, job: &JobId, name: &ObjectName) -> Self {
        Self::build(tenant, Area::JobResult(job.clone()), name)
    }

    /// `models/{model}/{version}/{name}`: a registered model's file.
    pub fn model_file(model: &ModelName, version: u32, name: &ObjectName) -> Self {
        let key = format!("{}{}", Prefix::model(model, version).as_str(), name);
        Self { tenant: None, area: Area::Model(model.clone(), version), name: name.clone(), key }
    }

    fn build(tenant: &TenantId, area: Area, name: &ObjectName) -> Self {
        let key = format!("{}{}", Prefix::area(tenant, &area).as_str(), name);
        Self { tenant: Some(tenant.clone()), area, name: name.clone(), key }
    }

    /// Parses a key read back from the bucket (a listing), refusing anything outside the layout.
    pub fn parse(key: &str) -> Result<Self> {
        let foreign = || StoreError::ForeignKey { key: key.to_owned() };
        let parts: Vec<&str> = key.split('/').collect();
        let parsed = match parts.as_slice() {
            ["tenants", tenant, "keysets", keyset, name] => {
                Self::keyset(&TenantId::new(*tenant)?, &KeysetId::new(*keyset)?, &ObjectName::new(*name)?)
            }
            ["tenants", tenant, "jobs", job, "input", name] => {
                Self::job_input(&TenantId::new(*tenant)?, &JobId::new(*job)?, &ObjectName::new(*name)?)
            }
            ["tenants", tenant, "jobs", job, "result", name] => {
                Self::job_result(&TenantId::new(*tenant)?, &JobId::new(*job)?, &ObjectName::new(*name)?)
            }
            ["models", model, version, name] => {
                let version = version.parse::<u32>().ok().filter(|v| *v >= 1 && v.to_string() == *version);
                Self::model_file(&ModelName::new(*model)?, version.ok_or_else(foreign)?, &ObjectName::new(*name)?)
            }
            _ => return Err(foreign()),
        };
        Ok(parsed)
    }

    /// The tenant that owns this key (`None` for a model file, which no tenant owns).
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The area of the tenant the key lives in.
    pub fn area(&self) -> &Area {
        &self.area
    }

    /// The last component.
    pub fn name(&self) -> &ObjectName {
        &self.name
    }

    /// The key as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.key
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// A key prefix for listing and bulk deletion; always ends in `/` and lies inside one tenant
/// (or one model version).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// `tenants/{tenant}/`: everything of one tenant.
    pub fn tenant(tenant: &TenantId) -> Self {
        Self(format!("tenants/{tenant}/"))
    }

    /// `tenants/{tenant}/keysets/{keyset}/`.
    pub fn keyset(tenant: &TenantId, keyset: &KeysetId) -> Self {
        Self::area(tenant, &Area::Keyset(keyset.clone()))
    }

    /// `tenants/{tenant}/jobs/{job}/`: a job's inputs and results.
    pub fn job(tenant: &TenantId, job: &JobId) -> Self {
        Self(format!("tenants/{tenant}/jobs/{job}/"))
    }

    /// `tenants/{tenant}/jobs/{job}/input/`.
    pub fn job_input(tenant: &TenantId, job: &JobId) -> Self {
        Self::area(tenant, &Area::JobInput(job.clone()))
    }

    /// `tenants/{tenant}/jobs/{job}/result/`.
    pub fn job_result(tenant: &TenantId, job: &JobId) -> Self {
        Self::area(tenant, &Area::JobResult(job.clone()))
    }

    /// `models/{model}/{version}/`: one registered model version's files.
    pub fn model(model: &ModelName, version: u32) -> Self {
        Self(format!("models/{model}/{version}/"))
    }

    fn area(tenant: &TenantId, area: &Area) -> Self {
        match area {
            Area::Keyset(k) => Self(format!("tenants/{tenant}/keysets/{k}/")),
            Area::JobInput(j) => Self(format!("tenants/{tenant}/jobs/{j}/input/")),
            Area::JobResult(j) => Self(format!("tenants/{tenant}/jobs/{j}/result/")),
            Area::Model(model, version) => Self::model(model, *version),
        }
    }

    /// The prefix as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::new("st-mary").unwrap()
    }

    #[test]
    fn keys_follow_the_layout() {
        let t = tenant();
        let name = ObjectName::new("batch-0.bfb").unwrap();
        let job = JobId::new("0f8fad5b-d9cb-469f-a165-70867728950e").unwrap();
        let k = ObjectKey::job_input(&t, &job, &name);
        assert_eq!(k.as_str(), "tenants/st-mary/jobs/0f8fad5b-d9cb-469f-a165-70867728950e/input/batch-0.bfb");
        assert!(k.as_str().starts_with(Prefix::tenant(&t).as_str()));
        assert!(k.as_str().starts_with(Prefix::job(&t, &job).as_str()));
        let r = ObjectKey::job_result(&t, &job, &name);
        assert_eq!(r.as_str(), "tenants/st-mary/jobs/0f8fad5b-d9cb-469f-a165-70867728950e/result/batch-0.bfb");
        let ks = ObjectKey::keyset(&t, &KeysetId::new("ks1").unwrap(), &ObjectName::new("relin.key").unwrap());
        assert_eq!(ks.as_str(), "tenants/st-mary/keysets/ks1/relin.key");
        let model =
            ObjectKey::model_file(&ModelName::new("derma-lenet5").unwrap(), 2, &ObjectName::new("model.onnx").unwrap());
        assert_eq!(model.as_str(), "models/derma-lenet5/2/model.onnx");
        assert_eq!(model.tenant(), None);
        assert_eq!(ObjectKey::parse(model.as_str()).unwrap(), model);
    }

    #[test]
    fn parse_round_trips_and_refuses_foreign_keys() {
        let t = tenant();
        let k = ObjectKey::keyset(&t, &KeysetId::new("ks1").unwrap(), &ObjectName::new("galois.key").unwrap());
        assert_eq!(ObjectKey::parse(k.as_str()).unwrap(), k);
        for bad in [
            "tenants/a/jobs/j/other/x",
            "tenants/a/keysets/k/../../b/keysets/k/x",
            "tenants/a/keysets/k/sub/x",
            "elsewhere/a",
            "tenants//keysets/k/x",
            "tenants/a/keysets/k/",
            "models/m/0/model.onnx",
            "models/m/01/model.onnx",
            "models/M/1/model.onnx",
            "models/../1/model.onnx",
            "models/m/1/sub/model.onnx",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn valid_parts_always_build_keys_inside_the_tenant_that_parse_back(
            tenant in "[A-Za-z0-9_-]{1,64}",
            job in "[A-Za-z0-9_-]{1,64}",
            name in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}",
        ) {
            let t = TenantId::new(tenant).unwrap();
            let j = JobId::new(job).unwrap();
            let n = ObjectName::new(name).unwrap();
            for key in [ObjectKey::job_input(&t, &j, &n), ObjectKey::job_result(&t, &j, &n)] {
                proptest::prop_assert!(key.as_str().starts_with(Prefix::tenant(&t).as_str()));
                proptest::prop_assert!(key.as_str().starts_with(Prefix::job(&t, &j).as_str()));
                proptest::prop_assert_eq!(key.as_str().split('/').count(), 6);
                proptest::prop_assert_eq!(ObjectKey::parse(key.as_str()).unwrap(), key);
            }
        }

        #[test]
        fn names_with_a_slash_or_a_leading_dot_are_always_refused(
            before in "[A-Za-z0-9._-]{0,20}",
            after in "[A-Za-z0-9._-]{0,20}",
            sep in "[/\\\\]|\\.\\.",
        ) {
            let with_sep = format!("{before}{sep}{after}");
            if sep != ".." {
                proptest::prop_assert!(ObjectName::new(with_sep.clone()).is_err());
            }
            proptest::prop_assert!(TenantId::new(with_sep).is_err());
            let hidden = format!(".{after}");
            proptest::prop_assert!(ObjectName::new(hidden).is_err());
        }

        #[test]
        fn parse_never_accepts_a_key_with_dot_segments(key in "[a-z./]{0,40}") {
            if let Ok(k) = ObjectKey::parse(&key) {
                proptest::prop_assert!(k.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            }
        }
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a\\b", "a b", "é", "%2F"] {
            assert!(ObjectName::new(bad).is_err(), "{bad:?} accepted as object name");
        }
        for bad in ["", "a/b", "..", "a.b", "x".repeat(65).as_str()] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted as tenant id");
            assert!(JobId::new(bad).is_err(), "{bad:?} accepted as job id");
        }
        assert!(ObjectName::new("x".repeat(129)).is_err());
        assert!(ObjectName::new("result.v1.bin").is_ok());
    }
}
