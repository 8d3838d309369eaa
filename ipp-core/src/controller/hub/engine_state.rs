//! The engine state file: which engine has which id, and the next id to give out
//! (ipyparallel's `Hub.engine_state_file`, `<profile_dir>/log/engines<cluster_id>.json`).
//!
//! The Hub rewrites it whenever an engine registers or goes away; a controller started with
//! [`ControllerConfig::restore_engines`](crate::controller::ControllerConfig) reads it back,
//! so engines that outlived the previous controller rejoin with their ids (spec §2.1).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Engines to take back, and how long each may take to send its first heartbeat.
#[derive(Debug)]
pub(crate) struct Restore {
    pub(crate) state: EngineState,
    pub(crate) wait: Duration,
}

/// The file's content: `{"engines": {"<id>": "<uuid>"}, "next_id": N}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EngineState {
    /// Engine id (a JSON object key, so written as text) → uuid.
    pub(crate) engines: BTreeMap<u32, String>,
    /// The id the next new engine gets.
    pub(crate) next_id: u32,
}

impl EngineState {
    /// The state of `engines` (id, uuid) with the id counter at `next_id`.
    pub(crate) fn new(engines: impl IntoIterator<Item = (u32, String)>, next_id: u32) -> Self {
        Self {
            engines: engines.into_iter().collect(),
            next_id,
        }
    }

    /// Reads the file at `path`; `Ok(None)` when there is none (nothing to restore).
    ///
    /// # Errors
    /// [`Error::Config`] naming the file when it cannot be read or is not an engine state.
    pub(crate) fn read(path: &Path) -> crate::Result<Option<Self>> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(Error::Config(format!(
                    "cannot read the engine state file {}: {err}",
                    path.display()
                )))
            }
        };
        serde_json::from_slice(&text).map(Some).map_err(|err| {
            Error::Config(format!(
                "{} is not an engine state file ({err}); it should look like \
                 {{\"engines\": {{\"0\": \"<uuid>\"}}, \"next_id\": 1}}: fix it, or delete it \
                 to start without restoring engines",
                path.display()
            ))
        })
    }

    /// Writes the state to `path` (a temporary file renamed over it, so a reader never sees
    /// half a file).
    ///
    /// # Errors
    /// The I/O error of writing or renaming.
    pub(crate) fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_as_written_in_ipyparallels_layout() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("engines.json");
        let state = EngineState::new([(3, "c".to_owned()), (0, "a".to_owned())], 4);
        state.write(&path).expect("written");
        let text = std::fs::read_to_string(&path).expect("readable");
        assert_eq!(text, r#"{"engines":{"0":"a","3":"c"},"next_id":4}"#);
        let back = EngineState::read(&path).expect("valid").expect("present");
        assert_eq!(back, state);
    }

    #[test]
    fn a_missing_file_restores_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        assert!(matches!(
            EngineState::read(&dir.path().join("none.json")),
            Ok(None)
        ));
    }

    #[test]
    fn a_broken_file_is_an_error_that_names_it_and_says_what_to_do() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("engines.json");
        for text in ["{not json", r#"{"engines": {"x": "a"}, "next_id": 1}"#] {
            std::fs::write(&path, text).expect("written");
            let err = EngineState::read(&path).expect_err("refused").to_string();
            assert!(err.contains("engines.json"), "{err}");
            assert!(err.contains("delete it"), "{err}");
        }
    }
}
