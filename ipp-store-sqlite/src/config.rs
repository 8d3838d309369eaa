//! [`SqliteConfig`]: where the database lives and how writes are batched.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// ipyparallel's default table name (`SQLiteDB.table`).
pub const DEFAULT_TABLE: &str = "ipython-tasks";

/// Settings for [`SqliteStore`](crate::SqliteStore): the `[store]` table when
/// `db = "sqlite"`.
///
/// ```
/// let config: ipp_store_sqlite::SqliteConfig =
///     toml::from_str("path = 'tasks.db'\nbatch_size = 500").unwrap();
/// assert_eq!(config.table, "ipython-tasks");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file (`filename` is accepted too, as ipyparallel names it). Default:
    /// `tasks.db`; the controller resolves a relative path against the profile directory.
    #[serde(alias = "filename")]
    pub path: PathBuf,
    /// The table (ipyparallel's `SQLiteDB.table`). Default: `ipython-tasks`.
    pub table: String,
    /// Most queued writes committed in one transaction. Default: 1000.
    pub batch_size: usize,
    /// Capacity of the queue between callers and the writer thread; a caller waits when it
    /// is full. Default: 10,000.
    pub queue_capacity: usize,
    /// Milliseconds a transaction that was not full waits before the next one begins, so
    /// that under moderate load writes are committed together rather than one per
    /// transaction; a read, a `drop_matching`, `close`, or a queue holding a full batch
    /// ends the wait at once. 0 commits whatever is queued as soon as the last commit
    /// ends. Default: 10.
    pub commit_interval_ms: u64,
    /// Milliseconds an assignment (the engine a task was sent to) whose request is already
    /// committed may be held back to be written with the task's result instead of on its
    /// own (reads through the store always see it; another process reading the file sees
    /// it this much later at most). 0 writes every assignment with the batch it came in.
    /// Default: 1000.
    pub assignment_hold_ms: u64,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("tasks.db"),
            table: DEFAULT_TABLE.to_owned(),
            batch_size: 1000,
            queue_capacity: 10_000,
            commit_interval_ms: 10,
            assignment_hold_ms: crate::held::HOLD_MS,
        }
    }
}

impl SqliteConfig {
    /// The defaults, with the database at `path`.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            ..Self::default()
        }
    }

    /// Sets [`SqliteConfig::path`].
    #[must_use]
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        self.path = path.as_ref().to_path_buf();
        self
    }

    /// Sets [`SqliteConfig::table`].
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Sets [`SqliteConfig::batch_size`].
    #[must_use]
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Sets [`SqliteConfig::queue_capacity`].
    #[must_use]
    pub fn with_queue_capacity(mut self, queue_capacity: usize) -> Self {
        self.queue_capacity = queue_capacity;
        self
    }

    /// Sets [`SqliteConfig::commit_interval_ms`].
    #[must_use]
    pub fn with_commit_interval_ms(mut self, commit_interval_ms: u64) -> Self {
        self.commit_interval_ms = commit_interval_ms;
        self
    }

    /// Sets [`SqliteConfig::assignment_hold_ms`].
    #[must_use]
    pub fn with_assignment_hold_ms(mut self, assignment_hold_ms: u64) -> Self {
        self.assignment_hold_ms = assignment_hold_ms;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key when `table` is empty (ipyparallel would invent a
    /// per-session name; we ask for one), or `batch_size` or `queue_capacity` is 0.
    pub fn validate(&self) -> Result<()> {
        if self.table.is_empty() {
            return Err(Error::Config(
                "table must not be empty; the default is \"ipython-tasks\"".to_owned(),
            ));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".to_owned()));
        }
        if self.queue_capacity == 0 {
            return Err(Error::Config(
                "queue_capacity must be at least 1".to_owned(),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::Config("path must not be empty".to_owned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filename_is_an_alias_of_path_and_unknown_keys_are_errors() {
        let config: SqliteConfig = toml::from_str("filename = 'x.db'\ntable = 't'").unwrap();
        assert_eq!(config, SqliteConfig::new("x.db").with_table("t"));
        let config: SqliteConfig = toml::from_str("assignment_hold_ms = 0").unwrap();
        assert_eq!(config, SqliteConfig::default().with_assignment_hold_ms(0));
        let err = toml::from_str::<SqliteConfig>("pth = 'x.db'").unwrap_err();
        assert!(err.to_string().contains("pth"), "{err}");
    }

    #[test]
    fn validate_names_the_bad_key() {
        let err = SqliteConfig::new("x.db")
            .with_table("")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("table"), "{err}");
        let err = SqliteConfig::new("x.db")
            .with_batch_size(0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
        let err = SqliteConfig::new("x.db")
            .with_queue_capacity(0)
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("queue_capacity"), "{err}");
    }
}
