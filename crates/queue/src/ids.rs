//! Identifiers, each its own type so a tenant id cannot be passed where a job id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A job.
    JobId
);
uuid_id!(
    /// A tenant (a hospital).
    TenantId
);
uuid_id!(
    /// A tenant's evaluation key set.
    KeySetId
);
uuid_id!(
    /// An API token (not the token itself: its record).
    TokenId
);

/// A worker process. Must be unique per process lifetime (for example `hostname/pid/uuid`):
/// leases are fenced by worker id and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct WorkerId(pub String);

impl WorkerId {
    /// `prefix/uuid`: unique for this process's lifetime.
    pub fn unique(prefix: &str) -> Self {
        Self(format!("{prefix}/{}", Uuid::new_v4().simple()))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
