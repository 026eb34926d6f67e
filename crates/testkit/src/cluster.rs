//! A PostgreSQL cluster in a temporary directory, started with the system's `initdb`/`pg_ctl`.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// Where distribution packages put server binaries that are often not on PATH.
const PACKAGE_BIN_GLOB_ROOTS: &[&str] = &["/usr/lib/postgresql", "/usr/local/pgsql", "/opt/homebrew/opt"];

/// Prefix of every cluster directory, so stale ones from killed processes can be found.
const DIR_PREFIX: &str = "blindfold-pg-";

/// The user PostgreSQL runs as when we are root (it refuses to run as root).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running PostgreSQL cluster that exists only for this process.
///
/// It listens on 127.0.0.1 on a free port, trusts local connections for user `postgres`, runs
/// with durability turned off (it is thrown away anyway), and is stopped and deleted by
/// [`ThrowawayCluster::stop`] or on drop.
#[derive(Debug)]
pub struct ThrowawayCluster {
    dir: PathBuf,
    port: u16,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    stopped: AtomicBool,
}

impl ThrowawayCluster {
    /// Initialises and starts a cluster; blocks until it accepts connections (at most ~30 s).
    pub fn start() -> Result<Self, Error> {
        let bin_dir = find_postgres_binaries(&package_bin_dirs())?;
        let run_as = run_as()?;
        remove_stale_clusters(&bin_dir, run_as);

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(|source| io("creating a temporary directory in", std::env::temp_dir(), source))?
            .keep();
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|source| io("writing", dir.join("owner.pid"), source))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .map_err(|source| io("handing to the postgres user", dir.clone(), source))?;
        }

        let mut cluster = Self { dir, port: 0, bin_dir, run_as, stopped: AtomicBool::new(false) };
        cluster.initdb()?;
        // The port is free when we look and taken a moment later by the server; another process
        // may grab it in between, so try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port().map_err(|source| io("finding a free port on", "127.0.0.1".into(), source))?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    tracing::info!(port = cluster.port, dir = %cluster.dir.display(), "throwaway PostgreSQL started");
                    return Ok(cluster);
                }
                Err(error) => last_error = Some(error),
            }
        }
        cluster.stop();
        Err(last_error.unwrap_or_else(|| Error::ServerUnavailable("could not start".into())))
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Restarts the server on the same port and data (`pg_ctl restart -m fast`): every session
    /// is disconnected, as when a managed database fails over or is patched. Blocks until it
    /// accepts connections again. For fault tests.
    pub fn restart(&self) -> Result<(), Error> {
        let log = self.dir.join("postgres.log");
        let mut command = self.tool("pg_ctl");
        command.arg("restart").arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "30", "-l"]).arg(&log);
        command.arg("-o").arg(self.server_options());
        check("pg_ctl restart", run(command, "pg_ctl restart")?)
    }

    /// Stops the server at once and deletes its directory. Idempotent.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        stop_and_remove(&self.bin_dir, self.run_as, &self.dir);
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self) -> Result<(), Error> {
        let mut command = self.tool("initdb");
        command.arg("-D").arg(self.data_dir()).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        check("initdb", run(command, "initdb")?)
    }

    fn pg_ctl_start(&self) -> Result<(), Error> {
        let log = self.dir.join("postgres.log");
        let mut command = self.tool("pg_ctl");
        command.arg("start").arg("-D").arg(self.data_dir()).args(["-w", "-t", "30", "-l"]).arg(&log);
        command.arg("-o").arg(self.server_options());
        let output = run(command, "pg_ctl start")?;
        if output.status.success() {
            return Ok(());
        }
        let log_tail = std::fs::read_to_string(&log).map(|text| tail(&text)).unwrap_or_default();
        Err(Error::Tool { tool: "pg_ctl start".into(), status: output.status.to_string(), output: log_tail })
    }

    fn server_options(&self) -> String {
        format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{}' -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=300",
            self.port,
            self.dir.display()
        )
    }

    fn tool(&self, name: &str) -> Command {
        tool(&self.bin_dir, self.run_as, name)
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `pg_ctl`: PATH first, then `extra_dirs` in order (for
/// example `/usr/lib/postgresql/15/bin` on Debian, which is not on PATH).
pub fn find_postgres_binaries(extra_dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    search(std::env::var_os("PATH"), extra_dirs)
}

fn search(path: Option<std::ffi::OsString>, extra_dirs: &[PathBuf]) -> Result<PathBuf, Error> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let on_path = path.map(|path| std::env::split_paths(&path).collect::<Vec<_>>()).unwrap_or_default();
    on_path.into_iter().chain(extra_dirs.iter().cloned()).find(|dir| has_tools(dir)).ok_or_else(|| {
        Error::NoPostgresBinaries {
            searched: PACKAGE_BIN_GLOB_ROOTS.iter().map(|root| format!("{root}/*/bin")).collect::<Vec<_>>().join(", "),
        }
    })
}

/// `/usr/lib/postgresql/*/bin` and friends, highest version first.
fn package_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in PACKAGE_BIN_GLOB_ROOTS {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        let mut versions: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|e| e.path())).collect();
        versions.sort_by_key(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            std::cmp::Reverse(name.trim_start_matches("postgresql@").parse::<u32>().unwrap_or(0))
        });
        dirs.extend(versions.into_iter().map(|path| path.join("bin")));
    }
    dirs
}

/// `None` when we may run the server ourselves; the `postgres` user when we are root.
fn run_as() -> Result<Option<RunAs>, Error> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some(RunAs { uid: uid.parse().ok()?, gid: gid.parse().ok()? }),
                _ => None,
            }
        })
        .map(Some)
        .ok_or(Error::NoUnprivilegedUser)
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn tool(bin_dir: &Path, run_as: Option<RunAs>, name: &str) -> Command {
    let mut command = Command::new(bin_dir.join(name));
    command.env_remove("PGDATA").env("LC_ALL", "C");
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid).current_dir("/");
    }
    command
}

fn run(mut command: Command, what: &str) -> Result<Output, Error> {
    command.output().map_err(|source| io("running", PathBuf::from(what), source))
}

fn check(what: &str, output: Output) -> Result<(), Error> {
    if output.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Err(Error::Tool { tool: what.into(), status: output.status.to_string(), output: tail(&text) })
}

fn stop_and_remove(bin_dir: &Path, run_as: Option<RunAs>, dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let mut command = tool(bin_dir, run_as, "pg_ctl");
        command.arg("stop").arg("-D").arg(&data).args(["-m", "immediate", "-w", "-t", "10"]);
        if let Err(error) = command.output() {
            tracing::warn!(%error, dir = %dir.display(), "could not stop throwaway PostgreSQL");
        }
    }
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(%error, dir = %dir.display(), "could not remove throwaway PostgreSQL directory");
    }
}

/// Clusters whose owning process died without cleaning up (killed test runs) are stopped and
/// removed, so they do not pile up in the temporary directory.
fn remove_stale_clusters(bin_dir: &Path, run_as: Option<RunAs>) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_ours = dir.file_name().is_some_and(|name| name.to_string_lossy().starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let owner = std::fs::read_to_string(dir.join("owner.pid")).ok().and_then(|pid| pid.trim().parse::<u32>().ok());
        let owner_alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if owner.is_some() && !owner_alive {
            tracing::info!(dir = %dir.display(), "removing a stale throwaway PostgreSQL");
            stop_and_remove(bin_dir, run_as, &dir);
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn io(what: &'static str, path: PathBuf, source: std::io::Error) -> Error {
    Error::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir().expect("temporary directory")
    }

    #[test]
    fn missing_binaries_name_the_package_to_install() {
        let empty = scratch();
        let result = search(Some(empty.path().as_os_str().to_owned()), &[empty.path().to_path_buf()]);
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("install the postgresql package"), "{message}");
        assert!(message.contains("DATABASE_URL"), "{message}");
    }

    #[test]
    fn binaries_are_found_outside_path() {
        let root = scratch();
        let bin = root.path().join("15").join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["initdb", "pg_ctl"] {
            std::fs::write(bin.join(tool), "").unwrap();
        }
        let found = search(Some(root.path().as_os_str().to_owned()), std::slice::from_ref(&bin));
        assert_eq!(found.ok(), Some(bin));
    }
}
