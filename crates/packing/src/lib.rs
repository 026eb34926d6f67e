//! The packing vocabulary: how a job's images are laid out in ciphertext slots.
//!
//! One enum for every crate that names a packing (the batch header, the model compiler, the
//! API's catalogue and key-set checks, the client and the worker), so a packing is never a
//! free-form string and a new packing is a compile error everywhere it must be handled.
//!
//! ```
//! use blindfold_packing::Packing;
//!
//! let packing: Packing = "latency".parse()?;
//! assert_eq!(packing.name(), "latency");
//! // A latency key set (rotation keys) also serves throughput jobs (same parameters); the
//! // reverse lacks the rotation keys.
//! assert!(Packing::Latency.serves(Packing::Throughput));
//! assert!(!Packing::Throughput.serves(Packing::Latency));
//! # Ok::<(), blindfold_packing::UnknownPacking>(())
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How images are laid out in ciphertexts (the model compiler plans each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// Deliberately exhaustive: adding a packing must break every match that has to handle it.
pub enum Packing {
    /// Slot i of every ciphertext holds image i; one ciphertext per input value. No rotation
    /// keys; thousands of images per batch.
    Throughput,
    /// One image in one or a few ciphertexts, evaluated with rotations: one image answers
    /// quickly.
    Latency,
}

impl Packing {
    /// Every packing, in a stable order.
    pub const ALL: [Packing; 2] = [Packing::Throughput, Packing::Latency];

    /// The stable name (`throughput`, `latency`): what the CLI, the API and the database use.
    pub fn name(self) -> &'static str {
        match self {
            Packing::Throughput => "throughput",
            Packing::Latency => "latency",
        }
    }

    /// Whether evaluation keys made for a `self` plan serve a `job` plan of the same model:
    /// a key set serves its own packing, and a latency key set (relinearization and rotation
    /// keys under the same parameters) also serves the throughput packing, which needs only
    /// the relinearization key.
    pub fn serves(self, job: Packing) -> bool {
        self == job || (self == Packing::Latency && job == Packing::Throughput)
    }

    /// The byte that stands for this packing in a batch header (`crates/batch/FORMAT.md`).
    pub fn code(self) -> u8 {
        match self {
            Packing::Throughput => 1,
            Packing::Latency => 2,
        }
    }

    /// The packing a batch-header byte stands for, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Packing::ALL.into_iter().find(|p| p.code() == code)
    }
}

impl fmt::Display for Packing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a packing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown packing {0:?}: use throughput or latency")]
pub struct UnknownPacking(pub String);

impl FromStr for Packing {
    type Err = UnknownPacking;
    fn from_str(s: &str) -> Result<Self, UnknownPacking> {
        Packing::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| UnknownPacking(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_codes_and_serde_round_trip() {
        for packing in Packing::ALL {
            assert_eq!(packing.name().parse::<Packing>(), Ok(packing));
            assert_eq!(Packing::from_code(packing.code()), Some(packing));
            let json = serde_json::to_string(&packing).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", packing.name()));
        }
        assert_eq!(Packing::from_code(0), None);
        assert!("Latency".parse::<Packing>().is_err());
    }

    #[test]
    fn a_latency_key_set_serves_both_packings_and_a_throughput_one_only_its_own() {
        assert!(Packing::Throughput.serves(Packing::Throughput));
        assert!(Packing::Latency.serves(Packing::Latency));
        assert!(Packing::Latency.serves(Packing::Throughput));
        assert!(!Packing::Throughput.serves(Packing::Latency));
    }
}
