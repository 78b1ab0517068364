//! Release records in the store: the `releases_v1` table, keyed by (service, number), and the
//! `release_numbers_v1` table holding each service's last assigned number, so numbers are never reused,
//! not even after pruning.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError, db_err};
use crate::release::{Release, release_number_of, remove_tree};

const RELEASES: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("releases_v1");
const RELEASE_NUMBERS: TableDefinition<&str, u32> = TableDefinition::new("release_numbers_v1");

impl Store {
    /// Reserves and returns the next release number of `service` (1 for its first release). Each call
    /// returns a new number, so two deploys can never snapshot into one directory; a deploy that fails
    /// before `put_release` leaves a gap in the numbers.
    pub fn next_release_number(&self, service: &str) -> Result<u32, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let number = {
            let mut numbers = txn.open_table(RELEASE_NUMBERS).map_err(db_err)?;
            let last = numbers.get(service).map_err(db_err)?.map(|n| n.value()).unwrap_or(0);
            // Records written without a reservation (none today) must not be overwritten either.
            let releases = txn.open_table(RELEASES).map_err(db_err)?;
            let newest = releases
                .range((service, 0)..=(service, u32::MAX))
                .map_err(db_err)?
                .next_back()
                .transpose()
                .map_err(db_err)?
                .map(|(key, _)| key.value().1)
                .unwrap_or(0);
            let number = last.max(newest).checked_add(1).ok_or_else(|| {
                StoreError::Db(format!("`{service}` has used every release number up to {}", u32::MAX))
            })?;
            numbers.insert(service, number).map_err(db_err)?;
            number
        };
        txn.commit().map_err(db_err)?;
        Ok(number)
    }

    /// Stores `release` under its service and number, replacing a record of the same number.
    pub fn put_release(&self, release: &Release) -> Result<(), StoreError> {
        let value = serde_json::to_vec(release).map_err(|error| StoreError::Db(error.to_string()))?;
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RELEASES).map_err(db_err)?;
            table.insert((release.service.as_str(), release.number), value.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn release(&self, service: &str, number: u32) -> Result<Option<Release>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(RELEASES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(db_err(error)),
        };
        let value = table.get((service, number)).map_err(db_err)?;
        value.map(|value| decode(service, number, value.value())).transpose()
    }

    /// The releases of `service`, newest first.
    pub fn releases(&self, service: &str) -> Result<Vec<Release>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = match txn.open_table(RELEASES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(db_err(error)),
        };
        let mut res = Vec::new();
        for entry in table.range((service, 0)..=(service, u32::MAX)).map_err(db_err)?.rev() {
            let (key, value) = entry.map_err(db_err)?;
            res.push(decode(service, key.value().1, value.value())?);
        }
        Ok(res)
    }

    /// Changes release `number` of `service` in one transaction and returns the changed record. The
    /// deploy fields (`strategy`, `outcome`, `deploy_*_ms`) are the ones meant to change; service and
    /// number are kept whatever `change` does to them.
    pub fn update_release(
        &self,
        service: &str,
        number: u32,
        change: impl FnOnce(&mut Release),
    ) -> Result<Release, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let release = {
            let mut table = txn.open_table(RELEASES).map_err(db_err)?;
            let mut release = match table.get((service, number)).map_err(db_err)? {
                Some(value) => decode(service, number, value.value())?,
                None => return Err(StoreError::NoRelease { service: service.to_owned(), number }),
            };
            change(&mut release);
            release.service = service.to_owned();
            release.number = number;
            let value = serde_json::to_vec(&release).map_err(|error| StoreError::Db(error.to_string()))?;
            table.insert((service, number), value.as_slice()).map_err(db_err)?;
            release
        };
        txn.commit().map_err(db_err)?;
        Ok(release)
    }

    /// Keeps the newest `keep` releases of `service` and every release in `protect` (the live one, the one
    /// to roll back to); deletes the other records and their directories. Also removes directories of
    /// older numbers that have no record (left by a deploy that died between snapshot and record). Assumes
    /// one deploy per service at a time: a slower deploy holding an older number than a finished one
    /// would look like an orphan.
    /// Returns the numbers whose records were deleted, newest first.
    pub fn prune_releases(&self, service: &str, keep: usize, protect: &[u32]) -> Result<Vec<u32>, StoreError> {
        let releases = self.releases(service)?;
        let mut kept: Vec<&Release> = Vec::new();
        let mut pruned: Vec<&Release> = Vec::new();
        for (idx, release) in releases.iter().enumerate() {
            if idx < keep || protect.contains(&release.number) { kept.push(release) } else { pruned.push(release) }
        }
        // Records first: a directory left behind by a failed removal is an orphan the next prune removes,
        // while a record without its directory would be a release that cannot run.
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(RELEASES).map_err(db_err)?;
            for release in &pruned {
                table.remove((service, release.number)).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        for release in &pruned {
            remove_dir(&release.dir)?;
        }
        // Orphans: only below the oldest kept number, since a deploy in progress holds a newer number
        // whose directory exists before its record does.
        let oldest_kept = kept.iter().map(|release| release.number).min();
        let releases_dir = releases.first().and_then(|release| release.dir.parent().map(Path::to_path_buf));
        if let (Some(oldest_kept), Some(releases_dir)) = (oldest_kept, releases_dir) {
            for orphan in orphan_dirs(&releases_dir, &releases, oldest_kept)? {
                remove_dir(&orphan)?;
            }
        }
        Ok(pruned.iter().map(|release| release.number).collect())
    }
}

/// Directories under `releases_dir` named for a release number below `below` that has no record.
fn orphan_dirs(releases_dir: &Path, records: &[Release], below: u32) -> Result<Vec<PathBuf>, StoreError> {
    let prune_err = |source| StoreError::Prune { path: releases_dir.display().to_string(), source };
    let mut res = Vec::new();
    for entry in std::fs::read_dir(releases_dir).map_err(prune_err)? {
        let entry = entry.map_err(prune_err)?;
        let Some(number) = release_number_of(&entry.file_name()) else { continue };
        if number < below && !records.iter().any(|release| release.number == number) {
            res.push(entry.path());
        }
    }
    Ok(res)
}

fn remove_dir(dir: &Path) -> Result<(), StoreError> {
    match remove_tree(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(StoreError::Prune { path: dir.display().to_string(), source: error })
        }
        _ => Ok(()),
    }
}

fn decode(service: &str, number: u32, bytes: &[u8]) -> Result<Release, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|source| StoreError::Corrupt { name: format!("{service} release {number}"), source })
}

#[cfg(test)]
mod tests;
