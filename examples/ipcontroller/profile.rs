//! Where the controller's files go: the IPython profile directory, as ipyparallel finds it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `--profile-dir`, else `$IPP_PROFILE_DIR`, else `$IPYTHONDIR/profile_<name>` (with
/// `$IPYTHONDIR` defaulting to `~/.ipython`).
pub(crate) fn resolve_profile_dir(profile_dir: Option<&Path>, profile: &str) -> Result<PathBuf> {
    if let Some(dir) = profile_dir {
        return Ok(dir.to_path_buf());
    }
    if let Some(dir) = std::env::var_os("IPP_PROFILE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let ipython_dir = match std::env::var_os("IPYTHONDIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .context("neither IPYTHONDIR nor HOME is set; pass --profile-dir")?;
            PathBuf::from(home).join(".ipython")
        }
    };
    Ok(ipython_dir.join(format!("profile_{profile}")))
}

/// Creates the profile directory with `security/`, `log/` and `startup/`, as IPython does.
pub(crate) fn create_profile_dir(dir: &Path) -> Result<()> {
    for sub in ["security", "log", "startup"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
    }
    Ok(())
}

/// This machine's host name, for the connection files' `location`.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
