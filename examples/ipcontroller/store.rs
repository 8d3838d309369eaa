//! The task database: chosen by `--dictdb`/`--nodb`/`--sqlitedb`/`--mongodb` or by the
//! `[store]` table of the profile's `ipcontroller.toml`, and opened.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipp::core::store::{DictDb, DictDbConfig, NoDb, Store};
use ipp::store_mongo::{MongoConfig, MongoStore};
use ipp::store_sqlite::{SqliteConfig, SqliteStore};
use serde::Deserialize;

/// The `[store]` table: `db` names the backend, the other keys are its settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "db", rename_all = "lowercase")]
pub(crate) enum StoreConfig {
    /// `db = "dictdb"`: in memory (the default), with `record_limit`, `size_limit`,
    /// `cull_fraction`.
    DictDb(DictDbConfig),
    /// `db = "nodb"`: records nothing.
    NoDb(NoDbConfig),
    /// `db = "sqlite"`: `path` (relative to the profile directory), `table`, `batch_size`,
    /// `queue_capacity`, `commit_interval_ms` (how long the writer may wait to fill a batch;
    /// reads never wait for it), `assignment_hold_ms` (how long an assignment may wait to be
    /// written with its task's result; 0: never).
    #[serde(alias = "sqlitedb")]
    Sqlite(SqliteConfig),
    /// `db = "mongodb"`: `url`, `database`, `collection`.
    MongoDb(MongoConfig),
}

/// NoDb has no settings; any key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoDbConfig {}

/// The command-line switches that pick a backend.
pub(crate) struct Flags {
    pub(crate) dictdb: bool,
    pub(crate) nodb: bool,
    pub(crate) sqlitedb: bool,
    pub(crate) mongodb: bool,
}

/// A flag picks the backend (with the `[store]` settings when they are for the same one);
/// without a flag, `[store]` decides; without either, DictDb.
pub(crate) fn choose(flags: Flags, config: Option<StoreConfig>) -> StoreConfig {
    let flagged = if flags.dictdb {
        Some("dictdb")
    } else if flags.nodb {
        Some("nodb")
    } else if flags.sqlitedb {
        Some("sqlite")
    } else if flags.mongodb {
        Some("mongodb")
    } else {
        None
    };
    let Some(flagged) = flagged else {
        return config.unwrap_or(StoreConfig::DictDb(DictDbConfig::default()));
    };
    if let Some(config) = config {
        if config.name() == flagged {
            return config;
        }
        tracing::warn!(configured = config.name(), chosen = flagged,
            "ipcontroller.toml's [store] is for another database than the command line chose; using the command line's with default settings");
    }
    match flagged {
        "nodb" => StoreConfig::NoDb(NoDbConfig::default()),
        "sqlite" => StoreConfig::Sqlite(SqliteConfig::default()),
        "mongodb" => StoreConfig::MongoDb(MongoConfig::default()),
        _ => StoreConfig::DictDb(DictDbConfig::default()),
    }
}

impl StoreConfig {
    fn name(&self) -> &'static str {
        match self {
            StoreConfig::DictDb(_) => "dictdb",
            StoreConfig::NoDb(_) => "nodb",
            StoreConfig::Sqlite(_) => "sqlite",
            StoreConfig::MongoDb(_) => "mongodb",
        }
    }

    /// Whether records outlive the controller (so `--restore` has something to restore).
    pub(crate) fn is_persistent(&self) -> bool {
        match self {
            StoreConfig::Sqlite(_) => true,
            StoreConfig::MongoDb(config) => config.database.is_some(),
            StoreConfig::DictDb(_) | StoreConfig::NoDb(_) => false,
        }
    }
}

/// The opened store, and what must be closed at exit.
pub(crate) struct OpenStore {
    shared: Arc<dyn Store>,
    sqlite: Option<Arc<SqliteStore>>,
    mongo: Option<Arc<MongoStore>>,
}

impl OpenStore {
    /// The store for the controller.
    pub(crate) fn shared(&self) -> Arc<dyn Store> {
        Arc::clone(&self.shared)
    }

    /// Finishes the writes the SQLite or MongoDB writer still has queued.
    pub(crate) async fn close(&self) {
        if let Some(mongo) = &self.mongo {
            if let Err(err) = mongo.close().await {
                tracing::error!(error = %err, "closing the mongodb task database failed");
            }
            tracing::info!(
                queue_high_water_mark = mongo.queue_high_water_mark(),
                "mongodb task database closed"
            );
        }
        if let Some(sqlite) = &self.sqlite {
            if let Err(err) = sqlite.close().await {
                tracing::error!(error = %err, "closing the sqlite task database failed");
            }
            tracing::info!(
                queue_high_water_mark = sqlite.queue_high_water_mark(),
                "sqlite task database closed"
            );
        }
    }
}

/// Opens the chosen store; a relative SQLite path is taken from the profile directory.
pub(crate) async fn open(config: StoreConfig, profile_dir: &Path) -> Result<OpenStore> {
    let (shared, sqlite, mongo): (Arc<dyn Store>, _, _) = match config {
        StoreConfig::DictDb(config) => {
            let store = DictDb::with_config(config).context("bad [store] settings for dictdb")?;
            (Arc::new(store), None, None)
        }
        StoreConfig::NoDb(_) => (Arc::new(NoDb), None, None),
        StoreConfig::Sqlite(config) => {
            let path = profile_dir.join(&config.path);
            let store = SqliteStore::open_with(config.with_path(&path))
                .await
                .with_context(|| {
                    format!("cannot open the sqlite task database {}", path.display())
                })?;
            let store = Arc::new(store);
            (Arc::clone(&store) as Arc<dyn Store>, Some(store), None)
        }
        StoreConfig::MongoDb(config) => {
            let store = MongoStore::connect(config)
                .await
                .context("cannot connect to the mongodb task database")?;
            let store = Arc::new(store);
            (Arc::clone(&store) as Arc<dyn Store>, None, Some(store))
        }
    };
    tracing::info!(store = %shared, "task database");
    Ok(OpenStore {
        shared,
        sqlite,
        mongo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_tables_parse_and_unknown_keys_are_errors() {
        let config: StoreConfig =
            toml::from_str("db = 'sqlite'\npath = 'x.db'\ntable = 't'").unwrap();
        assert!(matches!(config, StoreConfig::Sqlite(ref c) if c.table == "t"));
        let config: StoreConfig = toml::from_str("db = 'mongodb'\nurl = 'mongodb://h:1'").unwrap();
        assert!(matches!(config, StoreConfig::MongoDb(_)));
        assert!(!config.is_persistent());
        let err = toml::from_str::<StoreConfig>("db = 'sqlite'\ntabel = 't'").unwrap_err();
        assert!(err.to_string().contains("tabel"), "{err}");
        assert!(toml::from_str::<StoreConfig>("db = 'nodb'\nx = 1").is_err());
        assert!(toml::from_str::<StoreConfig>("db = 'redis'").is_err());
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let flags = Flags {
            dictdb: false,
            nodb: false,
            sqlitedb: true,
            mongodb: false,
        };
        let chosen = choose(flags, Some(StoreConfig::NoDb(NoDbConfig {})));
        assert!(matches!(chosen, StoreConfig::Sqlite(_)));
        let none = Flags {
            dictdb: false,
            nodb: false,
            sqlitedb: false,
            mongodb: false,
        };
        assert!(matches!(choose(none, None), StoreConfig::DictDb(_)));
    }
}
