//! Key sets: generation for a model, and the keys directory.
//!
//! A keys directory (created with mode 0700) holds three files:
//!
//! | file | what | who reads it |
//! |---|---|---|
//! | `keyset.json` | the descriptor: key-set id, model and version, packing, parameter fingerprint, creation time | everyone |
//! | `evaluation.keys` | the evaluation-key bundle (`BFKB`, `blindfold-batch`): relinearization key, rotation keys the plan needs | `eval`, the service |
//! | `secret.key` | the secret key (`BFSK`), mode 0600 | `encrypt`, `decrypt`, never anything else |
//!
//! The secret key is read only by [`KeySet::secret_key`] (crate-private), which refuses a file
//! other users can access, as ssh does, and holds the bytes in zeroizing buffers.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blindfold_batch::{BatchKind, Expect, KeyBundle, KeyBundleExpect, Packing, RawBatchReader};
use blindfold_ckks::{Context, KeyGenerator, SecretKey};
use blindfold_evaluate::CompiledModel;
use blindfold_nn::registry::Source;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::PackingChoice;
use crate::error::{Error, Result};

/// The descriptor's file name in a keys directory.
pub const DESCRIPTOR_FILE: &str = "keyset.json";
/// The evaluation-key bundle's file name in a keys directory.
pub const EVALUATION_KEYS_FILE: &str = "evaluation.keys";
/// The secret key's file name in a keys directory.
pub const SECRET_KEY_FILE: &str = "secret.key";

const DESCRIPTOR_FORMAT: &str = "blindfold-keyset/1";
/// Largest secret key file read (N = 2^16 at 2 bits per coefficient is 16 KiB).
const MAX_SECRET_KEY_BYTES: u64 = 1 << 20;

/// The descriptor of a key set (`keyset.json`): nothing secret in it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeySetDescriptor {
    /// `blindfold-keyset/1`.
    pub format: String,
    /// The key-set id every batch made with these keys carries.
    pub key_set: Uuid,
    /// The model the keys are for (its manifest name).
    pub model: String,
    /// The directory the model was read from, when it is not a registered model: `encrypt`,
    /// `eval` and `decrypt` read the same files again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<PathBuf>,
    /// Its version.
    pub model_version: String,
    /// The packing (`throughput` or `latency`).
    pub packing: String,
    /// The parameter fingerprint, 64 hex digits.
    pub fingerprint: String,
    /// The rotation steps with Galois keys in the bundle.
    pub rotation_steps: Vec<i64>,
    /// When the keys were made (RFC 3339, UTC).
    pub created: chrono::DateTime<chrono::Utc>,
}

impl KeySetDescriptor {
    /// The packing, parsed.
    pub fn packing(&self) -> Result<Packing> {
        self.packing.parse().map_err(|_| Error::Invalid {
            path: PathBuf::from(DESCRIPTOR_FILE),
            reason: format!("packing {:?} is not throughput or latency", self.packing),
        })
    }
}

/// A keys directory.
#[derive(Debug, Clone)]
pub struct KeySet {
    dir: PathBuf,
    descriptor: KeySetDescriptor,
}

/// The largest estimated peak memory of one throughput batch for which `keygen`'s automatic
/// choice stays with the throughput packing: 64 GiB, more than any worker we deploy (the k8s
/// worker has 6 GiB) yet above every built-in model's batch (at most 6.95 GB, derma-lenet5).
pub const THROUGHPUT_BATCH_CEILING: u64 = 64 << 30;

impl KeySet {
    /// Makes a key set for `model` (a registered name or a model directory) in `dir` (created
    /// if missing; must not hold a key set):
    /// the plan for the chosen packing decides the parameters and which evaluation keys are
    /// needed (relinearization always, rotations only for latency).
    /// `Auto` is the throughput packing, unless one throughput batch of the model needs more
    /// than [`THROUGHPUT_BATCH_CEILING`] (a 64 × 64 U-Net's needs about 600 GiB): then the
    /// latency packing, whose key set serves both.
    pub fn generate(dir: &Path, model: &str, packing: PackingChoice) -> Result<KeySet> {
        let compiled = match packing {
            PackingChoice::Throughput => CompiledModel::load(model, Packing::Throughput)?,
            PackingChoice::Latency => CompiledModel::load(model, Packing::Latency)?,
            PackingChoice::Auto => {
                let throughput = CompiledModel::load(model, Packing::Throughput)?;
                if throughput.plan().peak_memory_bytes() as u64 > THROUGHPUT_BATCH_CEILING {
                    CompiledModel::load(model, Packing::Latency)?
                } else {
                    throughput
                }
            }
        };
        create_private_dir(dir)?;
        for name in [DESCRIPTOR_FILE, EVALUATION_KEYS_FILE, SECRET_KEY_FILE] {
            let file = dir.join(name);
            if file.exists() {
                return Err(Error::KeysExist { dir: dir.to_path_buf(), file });
            }
        }
        let context = Context::new(compiled.plan().params().clone())?;
        let generator = KeyGenerator::new(&context);
        let relin = generator.relin_key();
        let steps = compiled.plan().rotation_steps();
        let galois = generator.galois_keys_at(&compiled.plan().rotation_keys());
        let key_set = Uuid::new_v4();

        let bundle_path = dir.join(EVALUATION_KEYS_FILE);
        let file = create_file(&bundle_path, 0o644)?;
        let finished = KeyBundle::write(BufWriter::new(file), &context, key_set, &relin, &galois)
            .map_err(Error::batch(&bundle_path))?;
        finish_file(finished.writer, &bundle_path)?;

        let secret_path = dir.join(SECRET_KEY_FILE);
        let secret = generator.secret_key().to_bytes();
        drop(generator);
        let mut file = create_file(&secret_path, 0o600)?;
        file.write_all(&secret).map_err(Error::io(&secret_path))?;
        file.sync_all().map_err(Error::io(&secret_path))?;
        drop(secret);

        let descriptor = KeySetDescriptor {
            format: DESCRIPTOR_FORMAT.into(),
            key_set,
            model: compiled.name().into(),
            model_dir: match compiled.source() {
                Source::Directory(dir) => Some(dir.clone()),
                Source::Embedded | Source::Files => None,
            },
            model_version: compiled.version(),
            packing: compiled.packing().to_string(),
            fingerprint: compiled.fingerprint().to_string(),
            rotation_steps: steps,
            created: chrono::Utc::now(),
        };
        let path = dir.join(DESCRIPTOR_FILE);
        let json = serde_json::to_vec_pretty(&descriptor).map_err(|e| Error::Invalid {
            path: path.clone(),
            reason: format!("cannot serialize the descriptor: {e}"),
        })?;
        let mut file = create_file(&path, 0o644)?;
        file.write_all(&json).and_then(|()| file.sync_all()).map_err(Error::io(&path))?;
        tracing::info!(key_set = %key_set, model, dir = %dir.display(), "key set generated");
        Ok(KeySet { dir: dir.to_path_buf(), descriptor })
    }

    /// Opens a keys directory by its descriptor. Reads no key.
    pub fn open(dir: &Path) -> Result<KeySet> {
        let path = dir.join(DESCRIPTOR_FILE);
        if !path.exists() {
            return Err(Error::MissingFile {
                path,
                what: "the key-set descriptor",
                hint: "make a key set with `blindfold keygen --model NAME --out DIR`".into(),
            });
        }
        let bytes = fs::read(&path).map_err(Error::io(&path))?;
        let descriptor: KeySetDescriptor = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid { path: path.clone(), reason: format!("not a key-set descriptor: {e}") })?;
        if descriptor.format != DESCRIPTOR_FORMAT {
            return Err(Error::Invalid {
                path,
                reason: format!("format {:?}; this build reads {DESCRIPTOR_FORMAT:?}", descriptor.format),
            });
        }
        descriptor.packing()?;
        Ok(KeySet { dir: dir.to_path_buf(), descriptor })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The descriptor.
    pub fn descriptor(&self) -> &KeySetDescriptor {
        &self.descriptor
    }
    /// The key-set id.
    pub fn id(&self) -> Uuid {
        self.descriptor.key_set
    }

    /// Whether the key set's evaluation keys serve `packing`: its own packing, and the
    /// throughput packing too for a latency key set (its relinearization key is all a
    /// throughput batch needs; [`compiled_model_for`](Self::compiled_model_for) checks that the
    /// parameters agree).
    pub fn serves(&self, packing: Packing) -> Result<bool> {
        Ok(self.descriptor.packing()?.serves(packing))
    }

    /// What `CompiledModel::load` takes for the key set's model: its directory, or its name.
    pub fn model_source(&self) -> String {
        match &self.descriptor.model_dir {
            Some(dir) => dir.display().to_string(),
            None => self.descriptor.model.clone(),
        }
    }

    /// Compiles the key set's model for its packing and checks that the parameters are still
    /// the ones the keys were made for.
    pub fn compiled_model(&self) -> Result<CompiledModel> {
        self.compiled_model_for(self.descriptor.packing()?)
    }

    /// Compiles the key set's model for `packing`, which the key set must
    /// [serve](Self::serves), and checks that the parameters are the ones the keys were made for.
    pub fn compiled_model_for(&self, packing: Packing) -> Result<CompiledModel> {
        if !self.serves(packing)? {
            return Err(Error::KeySetMismatch(format!(
                "the key set in {} is for the {} packing, which has no rotation keys for the {packing} packing; \
                 make one with `blindfold keygen --model {} --packing {packing}`",
                self.dir.display(),
                self.descriptor.packing,
                self.descriptor.model
            )));
        }
        let compiled = CompiledModel::load(&self.model_source(), packing)?;
        if compiled.name() != self.descriptor.model {
            return Err(Error::KeySetMismatch(format!(
                "the key set in {} is for {}, but {} now holds {}; make a new key set",
                self.dir.display(),
                self.descriptor.model,
                self.model_source(),
                compiled.name()
            )));
        }
        if compiled.version() != self.descriptor.model_version {
            return Err(Error::KeySetMismatch(format!(
                "the key set in {} is for {} version {}, this build has version {}; make a new key set",
                self.dir.display(),
                self.descriptor.model,
                self.descriptor.model_version,
                compiled.version()
            )));
        }
        if compiled.fingerprint().to_string() != self.descriptor.fingerprint {
            return Err(Error::KeySetMismatch(format!(
                "the key set in {} was made for parameters {}, but {} now compiles to {}; make a new key set",
                self.dir.display(),
                &self.descriptor.fingerprint[..self.descriptor.fingerprint.len().min(16)],
                self.descriptor.model,
                compiled.fingerprint().short()
            )));
        }
        Ok(compiled)
    }

    /// Compiles the key set's model for the packing of the batch at `path` (input or result, as
    /// `kind` says): a latency key set's batches may be in either packing.
    pub(crate) fn compiled_model_of_batch(&self, path: &Path, kind: BatchKind) -> Result<CompiledModel> {
        let file = BufReader::new(File::open(path).map_err(Error::io(path))?);
        let expect = Expect::new()
            .model(self.descriptor.model.clone(), self.descriptor.model_version.clone())
            .key_set(self.id());
        let raw = RawBatchReader::open(file, kind, &expect).map_err(Error::batch(path))?;
        self.compiled_model_for(raw.header().packing)
    }

    /// Reads the evaluation-key bundle, checked against the descriptor. Never touches the secret
    /// key; refuses a directory that holds only one.
    pub fn evaluation_keys(&self) -> Result<KeyBundle> {
        read_evaluation_keys(&self.dir, Some(self))
    }

    /// Reads the secret key for `context`, refusing a file other users can access.
    pub(crate) fn secret_key(&self, context: &Arc<Context>) -> Result<SecretKey> {
        let path = self.dir.join(SECRET_KEY_FILE);
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.clone(),
                    what: "the secret key",
                    hint: "encrypting and decrypting need the keys directory `blindfold keygen` wrote, secret key \
                           included"
                        .into(),
                }
            } else {
                Error::Io { path: path.clone(), error: source }
            }
        })?;
        check_private(&file, &path)?;
        let len = file.metadata().map_err(Error::io(&path))?.len().min(MAX_SECRET_KEY_BYTES);
        // Sized up front so the buffer never reallocates (a reallocation would leave a copy of
        // the key in freed memory that `Zeroizing` cannot reach).
        let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize + 1));
        file.take(len).read_to_end(&mut bytes).map_err(Error::io(&path))?;
        SecretKey::from_bytes(context, &bytes).map_err(|e| Error::Invalid {
            path: path.clone(),
            reason: format!("not a secret key for this key set's parameters: {e}"),
        })
    }
}

/// Reads `dir/evaluation.keys`, checked against the descriptor when there is one.
pub fn read_evaluation_keys(dir: &Path, key_set: Option<&KeySet>) -> Result<KeyBundle> {
    let path = dir.join(EVALUATION_KEYS_FILE);
    if !path.exists() {
        if dir.join(SECRET_KEY_FILE).exists() {
            return Err(Error::OnlySecretKey { dir: dir.to_path_buf(), bundle: path });
        }
        return Err(Error::MissingFile {
            path,
            what: "the evaluation-key bundle",
            hint: "make a key set with `blindfold keygen --model NAME --out DIR`".into(),
        });
    }
    let file = File::open(&path).map_err(Error::io(&path))?;
    let mut expect = KeyBundleExpect::new();
    if let Some(key_set) = key_set {
        expect = expect.key_set(key_set.id());
    }
    let bundle = KeyBundle::read(BufReader::new(file), &expect).map_err(Error::batch(&path))?;
    if let Some(key_set) = key_set
        && bundle.parameters().fingerprint().to_string() != key_set.descriptor.fingerprint
    {
        return Err(Error::KeySetMismatch(format!(
            "{}: the bundle's parameters {} are not the descriptor's; the directory mixes two key sets",
            path.display(),
            bundle.parameters().fingerprint().short()
        )));
    }
    Ok(bundle)
}

/// Refuses a secret key file with any group or other permission bit, like ssh.
#[cfg(unix)]
fn check_private(file: &File, path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata().map_err(Error::io(path))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::SecretKeyPermissions { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &File, _path: &Path) -> Result<()> {
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(Error::io(dir))
}

/// Creates a new file (never overwriting) with `mode` on unix.
pub(crate) fn create_file(path: &Path, mode: u32) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path).map_err(Error::io(path))
}

/// Flushes a buffered file and syncs it to disk.
pub(crate) fn finish_file(writer: BufWriter<File>, path: &Path) -> Result<()> {
    let file = writer.into_inner().map_err(|e| Error::Io { path: path.to_path_buf(), error: e.into_error() })?;
    file.sync_all().map_err(Error::io(path))
}
