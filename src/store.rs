//! The durable store of app records: SQLite (bundled) in WAL mode, one row per app.
//!
//! Every write is one transaction, committed before it is answered, so it survives `kill -9`.
//! Registrations and deletions, which nothing else could recreate, are also synced to the disk
//! (`synchronous = FULL`) and survive power loss; observations of containers use WAL's `NORMAL`,
//! where power loss may roll back the last few, and the next start re-derives them from the engine. Writes run on tokio's blocking pool, never on the async workers. Reads come from
//! an in-memory copy of the table, updated after each commit under the same lock as the write, so
//! that reading a record never waits for a write or touches the disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use crate::record::{
    AppId, AppRecord, LastExit, LastStart, LastStop, Registration, ResourceMetrics, format_time,
};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 4;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the store at {path} has schema version {found}, newer than this agent's {SCHEMA_VERSION}"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error("store query failed")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored record {id:?} cannot be read: {message}")]
    Corrupt { id: String, message: String },
    #[error("store worker failed")]
    Worker(#[from] tokio::task::JoinError),
}

/// A cheap-clone handle to the store.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    records: Arc<Committed>,
}

/// What has been committed: every record by id, and the channels that tell waiters of an app
/// that its record changed.
#[derive(Debug, Default)]
struct Committed {
    map: RwLock<BTreeMap<AppId, AppRecord>>,
    /// One channel per app that someone waits on; it carries the record's generation, `0` once the
    /// record is gone. Dropped when its last waiter goes.
    watchers: Mutex<HashMap<AppId, tokio::sync::watch::Sender<u64>>>,
}

/// A subscription to the changes of one app's record; see [`Store::watch`].
#[derive(Debug)]
pub struct RecordWatch {
    records: Arc<Committed>,
    id: AppId,
    rx: tokio::sync::watch::Receiver<u64>,
}

impl RecordWatch {
    /// Waits until the record changes (or is deleted) after the last call.
    pub async fn changed(&mut self) {
        // The sender lives as long as a receiver does, in the map: this cannot fail.
        let _ = self.rx.changed().await;
    }
}

impl Drop for RecordWatch {
    fn drop(&mut self) {
        let mut watchers = self
            .records
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // This receiver still counts until the end of this function.
        if watchers
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            watchers.remove(&self.id);
        }
    }
}

/// What the agent saw of an app's container, to be written to its record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub metrics: ResourceMetrics,
    /// How its last run ended; `None` keeps the recorded one.
    pub last_exit: Option<LastExit>,
    /// Where the agent's stop of it stands; `None` keeps the recorded one.
    pub last_stop: Option<LastStop>,
    /// Where the agent's start of it stands; `None` keeps the recorded one.
    pub last_start: Option<LastStart>,
}

impl Observation {
    /// New metrics, keeping the recorded exit and stop.
    pub fn metrics(metrics: ResourceMetrics) -> Observation {
        Observation {
            metrics,
            last_exit: None,
            last_stop: None,
            last_start: None,
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Replaced,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |err: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.into()))?;
        Self::init(conn, path).map_err(|e| match e {
            StoreError::Sqlite(err) => open_err(err.into()),
            other => other,
        })
    }

    fn init(conn: Connection, path: &Path) -> Result<Store, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets readers run beside the writer; FULL makes each commit durable before it returns.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Reads are served from memory; SQLite's own page cache only helps writes find their row.
        conn.pragma_update(None, "cache_size", -256)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS apps (
                     id          TEXT PRIMARY KEY NOT NULL,
                     registered  TEXT NOT NULL,
                     metrics     TEXT,
                     last_exit   TEXT,
                     updated_at  TEXT NOT NULL
                 ) STRICT;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // The agent's last stop of each app: its intent while under way, then its outcome.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE apps ADD COLUMN last_stop TEXT;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            // The agent's last start of each app: its intent while under way, then its outcome.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE apps ADD COLUMN last_start TEXT;
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            // Generations: one counter per node that only goes up, a record's generation drawn from
            // it in the transaction of each change, and a tombstone for each deletion. Records kept
            // from before get generations in id order.
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS counters (
                     name   TEXT PRIMARY KEY NOT NULL,
                     value  INTEGER NOT NULL
                 ) STRICT;
                 ALTER TABLE apps ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
                 UPDATE apps SET generation =
                     (SELECT count(*) FROM apps AS earlier WHERE earlier.id <= apps.id);
                 INSERT INTO counters (name, value)
                     VALUES ('generation', (SELECT count(*) FROM apps));
                 CREATE TABLE IF NOT EXISTS tombstones (
                     id          TEXT PRIMARY KEY NOT NULL,
                     generation  INTEGER NOT NULL,
                     deleted_at  TEXT NOT NULL
                 ) STRICT;
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        let records = load_all(&conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            records: Arc::new(Committed {
                map: RwLock::new(records),
                watchers: Mutex::default(),
            }),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written (the transaction rolls
            // back), so a poisoned lock is safe to take over.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await?
    }

    /// The record of `id`, if registered.
    pub async fn get(&self, id: &AppId) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.read().get(id).cloned())
    }

    /// Every record, ordered by id.
    pub async fn list(&self) -> Result<Vec<AppRecord>, StoreError> {
        Ok(self.read().values().cloned().collect())
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// How many records there are, and how many of them are online.
    pub fn counts(&self) -> (usize, usize) {
        let records = self.read();
        let online = records.values().filter(|r| r.online()).count();
        (records.len(), online)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<AppId, AppRecord>> {
        self.records.map.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to the changes of `id`'s record. Subscribe before reading the record, so that a
    /// change between the two is not missed. Every waiter on one app shares one channel, and a
    /// change wakes them all at once.
    pub fn watch(&self, id: &AppId) -> RecordWatch {
        let mut watchers = self
            .records
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let rx = watchers
            .entry(id.clone())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe();
        RecordWatch {
            records: self.records.clone(),
            id: id.clone(),
            rx,
        }
    }

    /// Makes the in-memory copy say what was just committed, and tells the app's waiters. Called
    /// with the connection lock held, so copies are updated in commit order.
    fn committed(records: &Committed, id: &AppId, now: Option<AppRecord>) {
        let generation = now.as_ref().map_or(0, |r| r.generation);
        {
            let mut map = records.map.write().unwrap_or_else(|p| p.into_inner());
            match now {
                Some(r) => map.insert(id.clone(), r),
                None => map.remove(id),
            };
        }
        let watchers = records.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watchers.get(id) {
            tx.send_replace(generation);
        }
    }

    /// Registers or replaces `id`. The agent's own observations are kept when the container stays the
    /// same, and dropped when the registration names another container.
    pub async fn register(
        &self,
        id: &AppId,
        registration: Registration,
        now: DateTime<Utc>,
    ) -> Result<(AppRecord, Registered), StoreError> {
        let id = id.clone();
        let records = self.records.clone();
        self.with_conn(move |c| {
            durability(c, Durability::Synced)?;
            let tx = c.transaction()?;
            let existing = select_one(&tx, &id)?;
            let created_before = existing.is_some();
            let same_container = existing
                .as_ref()
                .is_some_and(|r| r.container_id() == registration.container_id());
            let (metrics, last_exit, last_stop, last_start) = match existing {
                Some(r) if same_container => (r.metrics, r.last_exit, r.last_stop, r.last_start),
                _ => (None, None, None, None),
            };
            let record = AppRecord {
                id: id.clone(),
                registered: registration.registered,
                metrics,
                last_exit,
                last_stop,
                last_start,
                updated_at: now,
                generation: next_generation(&tx)?,
            };
            tx.execute("DELETE FROM tombstones WHERE id = ?1", [id.as_str()])?;
            tx.execute(
                "INSERT INTO apps (id, registered, metrics, last_exit, last_stop, last_start, updated_at,
                                   generation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO UPDATE SET
                     registered = ?2, metrics = ?3, last_exit = ?4, last_stop = ?5,
                     last_start = ?6, updated_at = ?7, generation = ?8",
                params![
                    id.as_str(),
                    Value::Object(record.registered.clone()).to_string(),
                    to_json_text(&record.metrics),
                    to_json_text(&record.last_exit),
                    to_json_text(&record.last_stop),
                    to_json_text(&record.last_start),
                    format_time(now),
                    generation_value(record.generation),
                ],
            )?;
            let record = select_one(&tx, &id)?.unwrap_or(record);
            tx.commit()?;
            Store::committed(&records, &id, Some(record.clone()));
            let how = if created_before {
                Registered::Replaced
            } else {
                Registered::Created
            };
            Ok((record, how))
        })
        .await
    }

    /// Forgets `id`, leaving a tombstone with a generation of its own; false when it was not
    /// registered.
    pub async fn delete(&self, id: &AppId) -> Result<bool, StoreError> {
        let id = id.clone();
        let records = self.records.clone();
        self.with_conn(move |c| {
            durability(c, Durability::Synced)?;
            let tx = c.transaction()?;
            let deleted = tx.execute("DELETE FROM apps WHERE id = ?1", [id.as_str()])? > 0;
            if deleted {
                let generation = next_generation(&tx)?;
                tx.execute(
                    "INSERT INTO tombstones (id, generation, deleted_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET generation = ?2, deleted_at = ?3",
                    params![
                        id.as_str(),
                        generation_value(generation),
                        format_time(Utc::now())
                    ],
                )?;
            }
            tx.commit()?;
            Store::committed(&records, &id, None);
            Ok(deleted)
        })
        .await
    }

    /// The generation of `id`'s tombstone, if it was deleted and not registered again since.
    pub async fn tombstone(&self, id: &AppId) -> Result<Option<u64>, StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let g: Option<i64> = c
                .query_row(
                    "SELECT generation FROM tombstones WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(g.map(|g| u64::try_from(g).unwrap_or_default()))
        })
        .await
    }

    /// Records what the agent observed of `id`'s container, provided the record still names
    /// `container_id` (a registration may have replaced it meanwhile). `observe` computes the
    /// observation from the record as stored, inside the transaction, or returns `None` to leave it
    /// as it is; so a decision never rests on a copy another writer has since replaced. Returns the
    /// record as stored afterwards, or `None` when it is gone or names another container.
    pub async fn observe(
        &self,
        id: &AppId,
        container_id: &str,
        now: DateTime<Utc>,
        observe: impl FnOnce(&AppRecord) -> Option<Observation> + Send + 'static,
    ) -> Result<Option<AppRecord>, StoreError> {
        let id = id.clone();
        let container_id = container_id.to_owned();
        let records = self.records.clone();
        self.with_conn(move |c| {
            durability(c, Durability::CrashSafe)?;
            let tx = c.transaction()?;
            let Some(mut record) = select_one(&tx, &id)? else {
                return Ok(None);
            };
            if record.container_id() != container_id {
                return Ok(None);
            }
            let Some(observation) = observe(&record) else {
                return Ok(Some(record));
            };
            record.metrics = Some(observation.metrics);
            if observation.last_exit.is_some() {
                record.last_exit = observation.last_exit;
            }
            if observation.last_stop.is_some() {
                record.last_stop = observation.last_stop;
            }
            if observation.last_start.is_some() {
                record.last_start = observation.last_start;
            }
            record.updated_at = now;
            record.generation = next_generation(&tx)?;
            tx.execute(
                "UPDATE apps SET metrics = ?2, last_exit = ?3, last_stop = ?4, last_start = ?5,
                     updated_at = ?6, generation = ?7
                 WHERE id = ?1",
                params![
                    id.as_str(),
                    to_json_text(&record.metrics),
                    to_json_text(&record.last_exit),
                    to_json_text(&record.last_stop),
                    to_json_text(&record.last_start),
                    format_time(now),
                    generation_value(record.generation),
                ],
            )?;
            // Answer with the row as stored (times at stored precision), as a later read would.
            let stored = select_one(&tx, &id)?;
            tx.commit()?;
            Store::committed(&records, &id, stored.clone());
            Ok(stored)
        })
        .await
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.query_row("SELECT count(*) FROM apps", [], |r| r.get::<_, i64>(0))?;
            Ok(())
        })
        .await
    }

    /// Folds the write-ahead log into the database file; called at shutdown.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.with_conn(|c| {
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

/// Draws the next generation from the node's counter, inside the caller's transaction, so that
/// the counter and the change it marks commit together or not at all.
fn next_generation(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let g: i64 = tx.query_row(
        "UPDATE counters SET value = value + 1 WHERE name = 'generation' RETURNING value",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(g).unwrap_or_default())
}

/// A generation as SQLite stores it (a signed 64-bit integer; the counter never comes near).
fn generation_value(g: u64) -> i64 {
    i64::try_from(g).unwrap_or(i64::MAX)
}

/// How far a write must reach before it is answered.
#[derive(Debug, Clone, Copy)]
enum Durability {
    /// Committed to the write-ahead log: survives the process dying.
    CrashSafe,
    /// Synced to the disk as well: survives power loss.
    Synced,
}

fn durability(c: &Connection, d: Durability) -> Result<(), StoreError> {
    let level = match d {
        Durability::CrashSafe => "NORMAL",
        Durability::Synced => "FULL",
    };
    c.pragma_update(None, "synchronous", level)?;
    Ok(())
}

fn to_json_text<T: serde::Serialize>(v: &Option<T>) -> Option<String> {
    v.as_ref().and_then(|v| serde_json::to_string(v).ok())
}

struct RawRow {
    id: String,
    registered: String,
    metrics: Option<String>,
    last_exit: Option<String>,
    last_stop: Option<String>,
    last_start: Option<String>,
    updated_at: String,
    generation: i64,
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        registered: r.get(1)?,
        metrics: r.get(2)?,
        last_exit: r.get(3)?,
        last_stop: r.get(4)?,
        last_start: r.get(5)?,
        updated_at: r.get(6)?,
        generation: r.get(7)?,
    })
}

impl RawRow {
    fn decode(self) -> Result<AppRecord, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            id: self.id.clone(),
            message,
        };
        let id = AppId::parse(&self.id).map_err(|e| corrupt(e.to_string()))?;
        let registered: Map<String, Value> = serde_json::from_str(&self.registered)
            .map_err(|e| corrupt(format!("registered: {e}")))?;
        let metrics = optional_json(self.metrics.as_deref(), "metrics").map_err(corrupt)?;
        let last_exit = optional_json(self.last_exit.as_deref(), "last_exit").map_err(corrupt)?;
        let last_stop = optional_json(self.last_stop.as_deref(), "last_stop").map_err(corrupt)?;
        let last_start =
            optional_json(self.last_start.as_deref(), "last_start").map_err(corrupt)?;
        let updated_at = DateTime::parse_from_rfc3339(&self.updated_at)
            .map_err(|e| corrupt(format!("updated_at: {e}")))?
            .with_timezone(&Utc);
        Ok(AppRecord {
            id,
            registered,
            metrics,
            last_exit,
            last_stop,
            last_start,
            updated_at,
            generation: u64::try_from(self.generation).unwrap_or_default(),
        })
    }
}

/// A nullable JSON column; the error names the column.
fn optional_json<T: serde::de::DeserializeOwned>(
    text: Option<&str>,
    column: &str,
) -> Result<Option<T>, String> {
    text.map(serde_json::from_str)
        .transpose()
        .map_err(|e| format!("{column}: {e}"))
}

fn load_all(c: &Connection) -> Result<BTreeMap<AppId, AppRecord>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, registered, metrics, last_exit, last_stop, last_start, updated_at, generation
         FROM apps ORDER BY id",
    )?;
    let rows = stmt.query_map([], raw_row)?;
    let mut out = BTreeMap::new();
    for row in rows {
        // A row this agent cannot read is left in the file, untouched, and not served: one bad row
        // must not keep every other app from being served. Registering the app again replaces it.
        match row?.decode() {
            Ok(record) => {
                out.insert(record.id.clone(), record);
            }
            Err(e) => tracing::error!(error = %e, "stored record skipped"),
        }
    }
    Ok(out)
}

fn select_one(c: &Connection, id: &AppId) -> Result<Option<AppRecord>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, registered, metrics, last_exit, last_stop, last_start, updated_at, generation
         FROM apps WHERE id = ?1",
    )?;
    let raw = stmt.query_row([id.as_str()], raw_row).optional()?;
    raw.map(RawRow::decode).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::WorkerNode;
    use serde_json::json;

    fn reg(id: &AppId, container: &str) -> Registration {
        let node = WorkerNode {
            id: "n".into(),
            node_name: "N".into(),
        };
        Registration::parse(id, json!({"containerId": container, "name": "x"}), &node)
            .expect("valid")
    }

    fn seen(online: bool) -> Observation {
        Observation::metrics(ResourceMetrics {
            timestamp: Utc::now(),
            online,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db/agent.db");
        let id = AppId::parse("a").expect("id");
        {
            let store = Store::open(&path).expect("open");
            let (_, how) = store
                .register(&id, reg(&id, "c1"), Utc::now())
                .await
                .expect("put");
            assert_eq!(how, Registered::Created);
            store
                .observe(&id, "c1", Utc::now(), |_| Some(seen(false)))
                .await
                .expect("observe")
                .expect("updated");
        }
        let store = Store::open(&path).expect("reopen");
        let got = store.get(&id).await.expect("get").expect("present");
        assert_eq!(got.container_id(), "c1");
        assert!(!got.online());
        assert!(got.metrics.is_some());
    }

    #[tokio::test]
    async fn replacing_keeps_observations_only_for_the_same_container() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("open");
        let id = AppId::parse("a").expect("id");
        store
            .register(&id, reg(&id, "c1"), Utc::now())
            .await
            .expect("put");
        store
            .observe(&id, "c1", Utc::now(), |_| Some(seen(true)))
            .await
            .expect("obs");
        let (r, how) = store
            .register(&id, reg(&id, "c1"), Utc::now())
            .await
            .expect("put");
        assert_eq!(how, Registered::Replaced);
        assert!(r.online());
        let (r, _) = store
            .register(&id, reg(&id, "c2"), Utc::now())
            .await
            .expect("put");
        assert!(r.metrics.is_none());
        // An observer that finds nothing to change writes nothing.
        let before = store.get(&id).await.expect("get");
        let kept = store
            .observe(&id, "c2", Utc::now(), |_| None)
            .await
            .expect("obs");
        assert_eq!(kept, before);
        assert_eq!(store.get(&id).await.expect("get"), before);
        // An observation of the old container no longer lands.
        let stale = store
            .observe(&id, "c1", Utc::now(), |_| Some(seen(false)))
            .await
            .expect("obs");
        assert!(stale.is_none());
    }

    #[tokio::test]
    async fn every_change_takes_a_new_generation_that_survives_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("g.db");
        let (a, b) = (
            AppId::parse("a").expect("id"),
            AppId::parse("b").expect("id"),
        );
        let mut generations = Vec::new();
        {
            let store = Store::open(&path).expect("open");
            let (r, _) = store
                .register(&a, reg(&a, "ca"), Utc::now())
                .await
                .expect("put");
            generations.push(r.generation);
            let (r, _) = store
                .register(&b, reg(&b, "cb"), Utc::now())
                .await
                .expect("put");
            generations.push(r.generation);
            let r = store
                .observe(&a, "ca", Utc::now(), |_| Some(seen(true)))
                .await
                .expect("observe")
                .expect("written");
            generations.push(r.generation);
            // An observation that changes nothing takes no generation.
            let same = store
                .observe(&a, "ca", Utc::now(), |_| None)
                .await
                .expect("observe")
                .expect("kept");
            assert_eq!(same.generation, r.generation);
            assert!(store.delete(&a).await.expect("delete"));
            let tomb = store.tombstone(&a).await.expect("tomb").expect("kept");
            generations.push(tomb);
            assert_eq!(
                store.get(&b).await.expect("get").expect("b").generation,
                generations[1]
            );
        }
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.tombstone(&a).await.expect("tomb"),
            Some(generations[3])
        );
        // Registered again after its deletion: newer than its tombstone, which goes.
        let (r, _) = store
            .register(&a, reg(&a, "ca"), Utc::now())
            .await
            .expect("put");
        generations.push(r.generation);
        assert_eq!(store.tombstone(&a).await.expect("tomb"), None);
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "{generations:?}"
        );
        assert_eq!(
            store.get(&b).await.expect("get").expect("b").generation,
            generations[1]
        );
    }

    #[tokio::test]
    async fn delete_and_list() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("open");
        for name in ["b", "a", "c"] {
            let id = AppId::parse(name).expect("id");
            store
                .register(&id, reg(&id, name), Utc::now())
                .await
                .expect("put");
        }
        let ids: Vec<_> = store
            .list()
            .await
            .expect("list")
            .into_iter()
            .map(|r| r.id.to_string())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let b = AppId::parse("b").expect("id");
        assert!(store.delete(&b).await.expect("delete"));
        assert!(!store.delete(&b).await.expect("delete"));
        assert!(store.get(&b).await.expect("get").is_none());
        assert!(
            store
                .observe(&b, "b", Utc::now(), |_| Some(seen(false)))
                .await
                .expect("obs")
                .is_none()
        );
    }
}
