//! [`MongoConfig`]: which server, database and collection.

use std::fmt;

/// The default server URL.
pub const DEFAULT_URL: &str = "mongodb://127.0.0.1:27017";
/// The default collection, as in ipyparallel.
pub const DEFAULT_COLLECTION: &str = "task_records";
/// The default [`MongoConfig::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Settings for [`MongoStore`](crate::MongoStore): the `[store]` table when `db = "mongodb"`.
///
/// ```
/// let config: ipp_store_mongo::MongoConfig =
///     toml::from_str("url = 'mongodb://user:secret@db:27017'\ndatabase = 'tasks'").unwrap();
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MongoConfig {
    /// Server URL (may hold a password). Default: `mongodb://127.0.0.1:27017`.
    pub url: Option<String>,
    /// Database name. Default: a new name each time the controller starts, as in
    /// ipyparallel (which uses the Hub's session id); set it to keep records across
    /// restarts.
    pub database: Option<String>,
    /// Collection name. Default: `task_records`.
    pub collection: Option<String>,
    /// Writes that may wait for the writer task at once. Default: 10,000. When the queue
    /// is full, callers wait for room (the controller's Hub at most a second).
    pub queue_capacity: Option<usize>,
}

impl MongoConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`MongoConfig::url`].
    #[must_use]
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Sets [`MongoConfig::database`].
    #[must_use]
    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Sets [`MongoConfig::collection`].
    #[must_use]
    pub fn with_collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = Some(collection.into());
        self
    }

    /// Sets [`MongoConfig::queue_capacity`].
    #[must_use]
    pub fn with_queue_capacity(mut self, queue_capacity: usize) -> Self {
        self.queue_capacity = Some(queue_capacity);
        self
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted_url(&self) -> String {
        redact(self.url.as_deref().unwrap_or(DEFAULT_URL))
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

impl fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &self.url.as_deref().map(redact))
            .field("database", &self.database)
            .field("collection", &self.collection)
            .field("queue_capacity", &self.queue_capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mongodb://u:p@h:1/db?x=1"),
            "mongodb://u:***@h:1/db?x=1"
        );
        assert_eq!(redact("mongodb://u@h:1"), "mongodb://u@h:1");
        assert_eq!(redact("mongodb://h:1"), "mongodb://h:1");
        assert_eq!(redact("nonsense"), "nonsense");
        let config = MongoConfig::new().with_url("mongodb://a:topsecret@h");
        assert!(!format!("{config:?}").contains("topsecret"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = toml::from_str::<MongoConfig>("uri = 'x'").unwrap_err();
        assert!(err.to_string().contains("uri"), "{err}");
    }
}
