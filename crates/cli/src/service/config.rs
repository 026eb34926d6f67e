//! Where the service is and how to authenticate: `blindfold login` writes it, every service
//! command reads it (flags and environment variables take precedence).
//!
//! The file is TOML with two keys, `api` and `token`, mode 0600 in a 0700 directory: the
//! token is a secret. A file other users can read is refused, as ssh refuses such keys.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret as _, SecretString};

use super::client::ServiceError;

/// Overrides the config file's path (tests, several accounts).
pub const CONFIG_ENV: &str = "BLINDFOLD_CONFIG";

/// What `blindfold login` saves.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The API's base URL, e.g. `http://127.0.0.1:8080`.
    pub api: String,
    /// The tenant's bearer token.
    pub token: SecretString,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    api: String,
    token: String,
}

/// `$BLINDFOLD_CONFIG`, else `$XDG_CONFIG_HOME/blindfold/config.toml`, else
/// `$HOME/.config/blindfold/config.toml`.
pub fn config_path() -> Result<PathBuf, ServiceError> {
    if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(ServiceError::Config(format!(
                    "cannot find a config directory (no HOME or XDG_CONFIG_HOME); set {CONFIG_ENV}=FILE"
                )));
            }
        },
    };
    Ok(base.join("blindfold").join("config.toml"))
}

impl ServiceConfig {
    /// Reads the config file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<ServiceConfig>, ServiceError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ServiceError::Config(format!("reading {}: {error}", path.display()))),
        };
        check_private(path)?;
        let on_disk: OnDisk = toml::from_str(&text).map_err(|error| {
            ServiceError::Config(format!(
                "{} is not a blindfold config file ({error}); run `blindfold login` to write it again",
                path.display()
            ))
        })?;
        Ok(Some(ServiceConfig { api: on_disk.api, token: SecretString::from(on_disk.token) }))
    }

    /// Writes the config file with mode 0600 (its directory 0700), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), ServiceError> {
        let fail =
            |what: &str, error: std::io::Error| ServiceError::Config(format!("{what} {}: {error}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(0o700);
            }
            builder.create(dir).map_err(|e| fail("creating the directory of", e))?;
        }
        let text = toml::to_string(&OnDisk { api: self.api.clone(), token: self.token.expose_secret().to_owned() })
            .map_err(|e| ServiceError::Config(format!("writing the config: {e}")))?;
        let temporary = path.with_extension("toml.tmp");
        let _ = fs::remove_file(&temporary);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(|e| fail("creating", e))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| fail("writing", e))?;
        fs::rename(&temporary, path).map_err(|e| fail("replacing", e))
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(path)
        .map_err(|e| ServiceError::Config(format!("reading {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(ServiceError::Config(format!(
            "{} holds a token but other users can read it (mode {mode:o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), ServiceError> {
    Ok(())
}
