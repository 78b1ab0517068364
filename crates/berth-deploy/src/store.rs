//! The desired-state store: an embedded redb database in the state dir.
//!
//! Each service is stored as the app.toml text it was started from plus the operator's overrides (scale,
//! stop). Keeping the source rather than a parsed form makes the spec file itself the on-disk format: boot
//! re-parses it with the same pure parser, so nothing can drift. Release records are in `store/releases.rs`.

mod releases;

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services_v1");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredService {
    /// The service directory (absolute); relative paths in the spec are resolved against it.
    pub dir: PathBuf,
    /// The app.toml text the service runs from.
    pub source: String,
    /// Set by `berth scale`; wins over the spec's `replicas`.
    pub replicas: Option<u32>,
    /// Set by `berth stop`, cleared by `berth start`.
    pub stopped: bool,
    /// A release's copy of the program, run instead of `run.command[0]` (`LoadedService::program`).
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// The release this is (`berth deploy`); `None` for a service run from its own directory (`berth up`).
    /// Changes only once a rollout has finished: after a crash mid-rollout, this is what runs.
    #[serde(default)]
    pub release: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database {path}: {source}")]
    Open { path: String, source: Box<redb::DatabaseError> },
    #[error("state database: {0}")]
    Db(String),
    #[error("state database holds an unreadable record for `{name}`: {source}")]
    Corrupt { name: String, source: serde_json::Error },
    #[error("`{service}` has no release {number}")]
    NoRelease { service: String, number: u32 },
    #[error("cannot remove the pruned release {path}: {source}")]
    Prune { path: String, source: std::io::Error },
}

pub struct Store {
    db: redb::Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = redb::Database::builder()
            // The store holds a few KiB per service; a small cache keeps the daemon's memory small.
            .set_cache_size(1024 * 1024)
            .create(path)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source: Box::new(source) })?;
        Ok(Store { db })
    }

    pub fn list(&self) -> Result<Vec<(String, DesiredService)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(SERVICES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(db_err(error)),
        };
        let mut res = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (name, value) = entry.map_err(db_err)?;
            let name = name.value().to_owned();
            let desired = serde_json::from_slice(value.value())
                .map_err(|source| StoreError::Corrupt { name: name.clone(), source })?;
            res.push((name, desired));
        }
        Ok(res)
    }

    pub fn get(&self, name: &str) -> Result<Option<DesiredService>, StoreError> {
        Ok(self.list()?.into_iter().find(|(n, _)| n == name).map(|(_, desired)| desired))
    }

    pub fn put(&self, name: &str, desired: &DesiredService) -> Result<(), StoreError> {
        let value = serde_json::to_vec(desired).map_err(|error| StoreError::Db(error.to_string()))?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SERVICES).map_err(db_err)?;
            table.insert(name, value.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(SERVICES).map_err(db_err)?;
            table.remove(name).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

fn db_err(error: impl std::fmt::Display) -> StoreError {
    StoreError::Db(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let desired = DesiredService {
            dir: "/srv/a".into(),
            source: "name = \"a\"".into(),
            replicas: Some(3),
            stopped: false,
            program: None,
            release: Some(4),
        };
        {
            let store = Store::open(&path).expect("open");
            assert_eq!(store.list().expect("list"), vec![]);
            store.put("a", &desired).expect("put");
            store.put("b", &DesiredService { stopped: true, ..desired.clone() }).expect("put");
            store.remove("b").expect("remove");
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(store.list().expect("list"), vec![("a".to_owned(), desired)]);
    }
}
