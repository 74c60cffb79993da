//! The durable store of app records: SQLite (bundled) in WAL mode, one row per app.
//!
//! Every write is one transaction, committed before it is answered, so it survives `kill -9`.
//! Registrations and deletions, which nothing else could recreate, are also synced to the disk
//! (`synchronous = FULL`) and survive power loss; observations of containers use WAL's `NORMAL`,
//! where power loss may roll back the last few, and the next start re-derives them from the engine. Writes run on tokio's blocking pool, never on the async workers. Reads come from
//! an in-memory copy of the table, updated after each commit under the same lock as the write, so
//! that reading a record never waits for a write or touches the disk.
//!
//! The store is also the outbox of reports to the control plane: what is not yet acknowledged is
//! exactly the records and tombstones whose generation is above the acknowledged one, a single
//! number kept beside the generation counter. A burst of changes to one app leaves one row, its
//! latest state, so the outbox never holds more than one entry per app.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};

use crate::events::{self, AppEvent, EventType, NewEvent};
use crate::record::{
    AppId, AppRecord, LastExit, LastOp, Registration, ResourceMetrics, StartOutcome, StopOutcome,
    format_time,
};

/// The schema's steps, in order: step N takes the store to `PRAGMA user_version` N + 1.
const MIGRATIONS: [&str; 7] = [
    "CREATE TABLE IF NOT EXISTS apps (
         id          TEXT PRIMARY KEY NOT NULL,
         registered  TEXT NOT NULL,
         metrics     TEXT,
         last_exit   TEXT,
         updated_at  TEXT NOT NULL
     ) STRICT;",
    // The agent's last stop of each app: its intent while under way, then its outcome.
    "ALTER TABLE apps ADD COLUMN last_stop TEXT;",
    // The agent's last start of each app: its intent while under way, then its outcome.
    "ALTER TABLE apps ADD COLUMN last_start TEXT;",
    // Generations: one counter per node that only goes up, a record's generation drawn from it in
    // the transaction of each change, and a tombstone for each deletion. Records kept from before
    // get generations in id order.
    "CREATE TABLE IF NOT EXISTS counters (
         name   TEXT PRIMARY KEY NOT NULL,
         value  INTEGER NOT NULL
     ) STRICT;
     ALTER TABLE apps ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
     UPDATE apps SET generation =
         (SELECT count(*) FROM apps AS earlier WHERE earlier.id <= apps.id);
     INSERT INTO counters (name, value) VALUES ('generation', (SELECT count(*) FROM apps));
     CREATE TABLE IF NOT EXISTS tombstones (
         id          TEXT PRIMARY KEY NOT NULL,
         generation  INTEGER NOT NULL,
         deleted_at  TEXT NOT NULL
     ) STRICT;",
    // The outbox: the highest generation the control plane has acknowledged. Nothing is
    // acknowledged yet, so every record kept from before is reported once.
    "INSERT OR IGNORE INTO counters (name, value) VALUES ('acknowledged', 0);",
    // The node's own state, a JSON document per key (`drain`: the node's drain).
    "CREATE TABLE IF NOT EXISTS node (
         key    TEXT PRIMARY KEY NOT NULL,
         value  TEXT NOT NULL
     ) STRICT;",
    // Each app's event history, an event per change with the change's generation, and the
    // engine's restart count of its container. An event the engine reported has a key (its
    // container and time), so that one reported twice is kept once; `delivered` once a report
    // carrying it was acknowledged (or dropped, or when there are no reports). Beside it, for two
    // hours, the spans of the agent's own operations and registrations (`windows`), which tell
    // the engine's late events apart; the records' last stop and start, ended before this step,
    // are taken as spans too (their times, kept to the millisecond, written as the engine's).
    "ALTER TABLE apps ADD COLUMN restart_count INTEGER;
     CREATE TABLE IF NOT EXISTS events (
         generation  INTEGER PRIMARY KEY NOT NULL,
         app_id      TEXT NOT NULL,
         type        TEXT NOT NULL,
         at          TEXT NOT NULL,
         by          TEXT NOT NULL,
         details     TEXT NOT NULL,
         key         TEXT,
         delivered   INTEGER NOT NULL DEFAULT 0
     ) STRICT;
     CREATE INDEX IF NOT EXISTS events_of_app ON events (app_id, generation);
     CREATE UNIQUE INDEX IF NOT EXISTS events_by_key ON events (app_id, key) WHERE key IS NOT NULL;
     CREATE TABLE IF NOT EXISTS windows (
         app_id     TEXT NOT NULL,
         kind       TEXT NOT NULL,
         from_at    TEXT NOT NULL,
         to_at      TEXT NOT NULL,
         run_began  TEXT
     ) STRICT;
     CREATE INDEX IF NOT EXISTS windows_of_app ON windows (app_id, to_at);
     INSERT INTO windows (app_id, kind, from_at, to_at, run_began)
         SELECT id, 'stop',
                substr(json_extract(last_stop, '$.requestedAt'), 1, 23) || '000000Z',
                substr(json_extract(last_stop, '$.finishedAt'), 1, 23) || '000000Z',
                NULL
         FROM apps WHERE json_extract(last_stop, '$.finishedAt') IS NOT NULL;
     INSERT INTO windows (app_id, kind, from_at, to_at, run_began)
         SELECT id,
                CASE json_extract(last_start, '$.outcome') WHEN 'started' THEN 'started'
                     ELSE 'start_failed' END,
                substr(json_extract(last_start, '$.requestedAt'), 1, 23) || '000000Z',
                substr(json_extract(last_start, '$.finishedAt'), 1, 23) || '000000Z',
                substr(json_extract(metrics, '$.startedAt'), 1, 23) || '000000Z'
         FROM apps WHERE json_extract(last_start, '$.finishedAt') IS NOT NULL;",
];

/// Events kept per app once delivered, unless the configuration says otherwise
/// (`[history] per_app`).
pub const DEFAULT_EVENTS_PER_APP: usize = 200;

/// The node-state key of the engine's time of the last engine event written to a history: the
/// watcher asks the engine for the events since then when it (re)connects, so that an exit while
/// the agent was down is not lost.
const ENGINE_EVENTS_SEEN: &str = "engine_events_seen";

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

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
    /// Events kept per app once the control plane has them.
    per_app: usize,
}

/// What has been committed: every record by id, and the channels that tell waiters of an app
/// that its record changed.
#[derive(Debug)]
struct Committed {
    tables: RwLock<Tables>,
    /// One channel per app that someone waits on; it carries the record's generation, `0` once the
    /// record is gone. Dropped when its last waiter goes.
    watchers: Mutex<HashMap<AppId, tokio::sync::watch::Sender<u64>>>,
    /// The latest generation committed on this node; the report sender waits on it.
    head: tokio::sync::watch::Sender<u64>,
    /// Events written since the store was opened, by type (in [`EventType::ALL`]'s order).
    written: [std::sync::atomic::AtomicU64; EventType::ALL.len()],
    /// Events dropped before the control plane had them (past [`MAX_UNDELIVERED_PER_APP`]).
    dropped: std::sync::atomic::AtomicU64,
    /// Whether events wait for a control plane; without reports they are written delivered.
    reporting: bool,
}

/// The in-memory copy of the committed tables.
#[derive(Debug, Default)]
struct Tables {
    records: BTreeMap<AppId, AppRecord>,
    /// Deleted apps whose deletion the control plane has not acknowledged yet.
    tombstones: HashMap<AppId, Tombstone>,
    /// Every record and tombstone by its generation: the outbox is the part above `acknowledged`.
    by_generation: BTreeMap<u64, AppId>,
    /// The highest generation the control plane has acknowledged (or that was dropped as refused).
    acknowledged: u64,
    /// When each app's oldest change not yet acknowledged was committed.
    unacknowledged_since: HashMap<AppId, DateTime<Utc>>,
}

/// A deleted app, kept until the control plane has acknowledged its deletion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tombstone {
    generation: u64,
    deleted_at: DateTime<Utc>,
}

/// What an app is after a commit: a record, or a tombstone.
#[derive(Debug, Clone)]
enum Current {
    Record(Box<AppRecord>),
    Deleted(Tombstone),
}

impl Current {
    fn generation(&self) -> u64 {
        match self {
            Current::Record(r) => r.generation,
            Current::Deleted(t) => t.generation,
        }
    }
}

impl Tables {
    /// The generation of `id`'s record or tombstone, if it has either.
    fn generation_of(&self, id: &AppId) -> Option<u64> {
        generation_in(&self.records, &self.tombstones, id)
    }

    /// Makes the tables say `now` of `id`, committed at `at`.
    fn apply(&mut self, id: &AppId, now: Current, at: DateTime<Utc>) {
        if let Some(old) = self.generation_of(id) {
            self.by_generation.remove(&old);
        }
        let generation = now.generation();
        match now {
            Current::Record(r) => {
                self.tombstones.remove(id);
                self.records.insert(id.clone(), *r);
            }
            Current::Deleted(t) => {
                self.records.remove(id);
                self.tombstones.insert(id.clone(), t);
            }
        }
        self.by_generation.insert(generation, id.clone());
        if generation > self.acknowledged {
            self.unacknowledged_since.entry(id.clone()).or_insert(at);
        }
    }

    /// Everything up to `upto` is acknowledged: acknowledged tombstones go.
    fn acknowledge(&mut self, upto: u64) {
        if upto <= self.acknowledged {
            return;
        }
        self.acknowledged = upto;
        let gone: Vec<AppId> = self
            .tombstones
            .iter()
            .filter(|(_, t)| t.generation <= upto)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(t) = self.tombstones.remove(&id) {
                self.by_generation.remove(&t.generation);
            }
        }
        let (records, tombstones) = (&self.records, &self.tombstones);
        self.unacknowledged_since
            .retain(|id, _| generation_in(records, tombstones, id).is_some_and(|g| g > upto));
    }
}

/// The generation of `id`'s record or tombstone, if it has either.
fn generation_in(
    records: &BTreeMap<AppId, AppRecord>,
    tombstones: &HashMap<AppId, Tombstone>,
    id: &AppId,
) -> Option<u64> {
    records
        .get(id)
        .map(|r| r.generation)
        .or_else(|| tombstones.get(id).map(|t| t.generation))
}

/// One entry of the outbox: the latest state of one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub id: AppId,
    pub generation: u64,
    /// The record; `None` when the app was deleted.
    pub record: Option<AppRecord>,
    /// The app's events the control plane has not acknowledged, oldest first (filled in by the
    /// report sender: they live only in SQLite).
    pub events: Vec<AppEvent>,
}

/// What the outbox holds at this moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxState {
    /// The highest generation acknowledged.
    pub acknowledged: u64,
    /// The latest generation committed.
    pub head: u64,
    /// Changes not yet acknowledged (one per app at most).
    pub pending: usize,
    /// When the oldest change not yet acknowledged was committed.
    pub oldest: Option<DateTime<Utc>>,
}

impl OutboxState {
    /// Seconds from the oldest change not yet acknowledged to `now`.
    pub fn oldest_age_secs(&self, now: DateTime<Utc>) -> Option<f64> {
        self.oldest
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    }
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
    /// The engine's restart count of the container; `None` keeps the recorded one.
    pub restart_count: Option<u64>,
    /// What the engine reported that the change comes with (an exit, a start behind the agent's
    /// back), beside the events the change of the record itself makes.
    pub events: Vec<NewEvent>,
    /// Written only for `events`: when none of them is kept (each already was, or is not the
    /// app's own), the record is left as it is.
    pub for_events_only: bool,
    pub metrics: ResourceMetrics,
    /// How its last run ended; `None` keeps the recorded one.
    pub last_exit: Option<LastExit>,
    /// Where the agent's stop of it stands; `None` keeps the recorded one.
    pub last_stop: Option<LastOp<StopOutcome>>,
    /// Where the agent's start of it stands; `None` keeps the recorded one.
    pub last_start: Option<LastOp<StartOutcome>>,
}

impl Observation {
    /// Writes what was observed into `record`, keeping what it leaves out.
    pub fn apply_to(self, record: &mut AppRecord) {
        record.metrics = Some(self.metrics);
        if self.last_exit.is_some() {
            record.last_exit = self.last_exit;
        }
        if self.last_stop.is_some() {
            record.last_stop = self.last_stop;
        }
        if self.last_start.is_some() {
            record.last_start = self.last_start;
        }
        if self.restart_count.is_some() {
            record.restart_count = self.restart_count;
        }
    }

    /// New metrics, keeping the recorded exit and stop.
    pub fn metrics(metrics: ResourceMetrics) -> Observation {
        Observation {
            metrics,
            ..Observation::default()
        }
    }
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Replaced,
}

/// Creates the database file with mode 0600 before SQLite opens it, whatever the umask, and takes
/// group and other bits off one that exists, and off its `-wal` and `-shm` files: they hold every
/// record, the control plane's data included. SQLite gives the `-wal` and `-shm` files it creates
/// the database file's own mode (it changes their mode after creating them, so the umask does not
/// widen them either), so a private database keeps them private.
fn keep_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Only made when missing: an existing database is opened by SQLite alone, which may do with
    // less access than writing (a read-only file fails at the first write, with its reason).
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    for file in [path.to_owned(), beside("-wal"), beside("-shm")] {
        let mode = match std::fs::metadata(&file) {
            Ok(meta) => meta.permissions().mode() & 0o7777,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if mode & 0o077 != 0 {
            // A file the agent may not change (another user's) is served as before: the agent
            // would rather run, and say so, than refuse a store it used to open.
            let private = mode & 0o700;
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(private)) {
                Ok(()) => tracing::warn!(
                    path = %file.display(),
                    was = %format!("{mode:04o}"),
                    now = %format!("{private:04o}"),
                    "the store's file was open beyond the agent's user; made private"
                ),
                Err(e) => tracing::warn!(
                    path = %file.display(),
                    mode = %format!("{mode:04o}"),
                    error = %e,
                    "the store's file is open beyond the agent's user, and cannot be made private"
                ),
            }
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database at `path`, private to the agent's user.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |err: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: path.to_owned(),
            err,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        }
        keep_private(path).map_err(|e| open_err(e.into()))?;
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
        for step in usize::try_from(version).unwrap_or(0)..MIGRATIONS.len() {
            migrate(&conn, step)?;
        }
        let tables = load_all(&conn)?;
        let head = tables.by_generation.keys().next_back().copied();
        let head = head.unwrap_or_default().max(counter(&conn, "generation")?);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            records: Arc::new(Committed {
                tables: RwLock::new(tables),
                watchers: Mutex::default(),
                head: tokio::sync::watch::channel(head).0,
                written: Default::default(),
                dropped: Default::default(),
                reporting: true,
            }),
            per_app: DEFAULT_EVENTS_PER_APP,
        })
    }

    /// This store, keeping `per_app` events of each app once the control plane has them; with
    /// `reporting` false (no control plane), events count as delivered when written.
    pub fn keeping_events(mut self, per_app: usize, reporting: bool) -> Store {
        self.per_app = per_app.max(1);
        if let Some(records) = Arc::get_mut(&mut self.records) {
            records.reporting = reporting;
        }
        self
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
        Ok(self.read().records.get(id).cloned())
    }

    /// Every record, ordered by id.
    pub async fn list(&self) -> Result<Vec<AppRecord>, StoreError> {
        Ok(self.read().records.values().cloned().collect())
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.read().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().records.is_empty()
    }

    /// How many records there are, and how many of them are online.
    pub fn counts(&self) -> (usize, usize) {
        let tables = self.read();
        let online = tables.records.values().filter(|r| r.online()).count();
        (tables.records.len(), online)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.records
            .tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `limit` entries of the outbox with a generation above `after`, oldest first: each
    /// app's latest state, a record or a tombstone.
    pub fn changes_after(&self, after: u64, limit: usize) -> Vec<Change> {
        let tables = self.read();
        tables
            .by_generation
            .range(after.saturating_add(1)..)
            .take(limit)
            .map(|(&generation, id)| Change {
                id: id.clone(),
                generation,
                record: tables.records.get(id).cloned(),
                events: Vec::new(),
            })
            .collect()
    }

    /// The outbox at this moment.
    pub fn outbox(&self) -> OutboxState {
        let tables = self.read();
        OutboxState {
            acknowledged: tables.acknowledged,
            head: *self.records.head.borrow(),
            pending: tables
                .by_generation
                .range(tables.acknowledged.saturating_add(1)..)
                .count(),
            oldest: tables.unacknowledged_since.values().min().copied(),
        }
    }

    /// The latest generation committed, changing with every commit.
    pub fn head(&self) -> tokio::sync::watch::Receiver<u64> {
        self.records.head.subscribe()
    }

    /// Records that the control plane has every change up to generation `upto` (or that changes up
    /// to it were dropped): they leave the outbox, and acknowledged tombstones are forgotten. The
    /// acknowledged generation never goes down.
    pub async fn acknowledge(&self, upto: u64) -> Result<(), StoreError> {
        self.acknowledge_batch(upto, Vec::new()).await
    }

    /// [`Store::acknowledge`] of a report that carried, for each `(app, generation)` of `sent`, the
    /// app's undelivered events up to that generation: those are delivered, and each of these apps
    /// keeps only its last `per_app` delivered ones. Events of apps the report did not carry stay
    /// undelivered, whatever their generation.
    pub async fn acknowledge_batch(
        &self,
        upto: u64,
        sent: Vec<(AppId, u64)>,
    ) -> Result<(), StoreError> {
        if upto <= self.read().acknowledged && sent.is_empty() {
            return Ok(());
        }
        let records = self.records.clone();
        let per_app = self.per_app;
        self.with_conn(move |c| {
            // Losing an acknowledgement to a crash only sends its changes again.
            durability(c, Durability::CrashSafe)?;
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE counters SET value = max(value, ?1) WHERE name = 'acknowledged'",
                [generation_value(upto)],
            )?;
            for (app, generation) in &sent {
                tx.prepare_cached(
                    "UPDATE events SET delivered = 1
                     WHERE app_id = ?1 AND generation <= ?2 AND delivered = 0",
                )?
                .execute(params![app.as_str(), generation_value(*generation)])?;
                prune_events(&tx, app, per_app)?;
            }
            // A deleted app's history goes with its tombstone (whose change carried the rest).
            for table in ["events", "windows"] {
                tx.execute(
                    &format!(
                        "DELETE FROM {table} WHERE app_id IN
                             (SELECT id FROM tombstones WHERE generation <= ?1)"
                    ),
                    [generation_value(upto)],
                )?;
            }
            tx.execute(
                "DELETE FROM tombstones WHERE generation <= ?1",
                [generation_value(upto)],
            )?;
            tx.commit()?;
            records
                .tables
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .acknowledge(upto);
            Ok(())
        })
        .await
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

    /// Makes the in-memory copy say what was just committed, and tells the app's waiters and the
    /// report sender. Called with the connection lock held, so copies are updated in commit order.
    fn committed(records: &Committed, id: &AppId, now: Current) {
        let generation = now.generation();
        let record_generation = match &now {
            Current::Record(r) => r.generation,
            Current::Deleted(_) => 0,
        };
        records
            .tables
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .apply(id, now, Utc::now());
        {
            let watchers = records.watchers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = watchers.get(id) {
                tx.send_replace(record_generation);
            }
        }
        records.head.send_replace(generation);
    }

    /// Registers or replaces `id`. The agent's own observations are kept when the container stays the
    /// same, and dropped when the registration names another container.
    pub async fn register(
        &self,
        id: &AppId,
        registration: Registration,
        now: DateTime<Utc>,
        by: &str,
        observe: impl FnOnce(&AppRecord) -> Option<Observation> + Send + 'static,
    ) -> Result<(AppRecord, Registered), StoreError> {
        let id = id.clone();
        let records = self.records.clone();
        let by = by.to_owned();
        let per_app = self.per_app;
        self.with_conn(move |c| {
            durability(c, Durability::Synced)?;
            let tx = c.transaction()?;
            let existing = select_one(&tx, &id)?;
            let created_before = existing.is_some();
            let same_container = existing
                .as_ref()
                .is_some_and(|r| r.container_id() == registration.container_id());
            // What the agent knew of this same container is kept; a new container starts unseen.
            let mut record = match existing {
                Some(r) if same_container => AppRecord {
                    registered: registration.registered,
                    ..r
                },
                _ => AppRecord {
                    id: id.clone(),
                    registered: registration.registered,
                    metrics: None,
                    last_exit: None,
                    last_stop: None,
                    last_start: None,
                    restart_count: None,
                    // Nothing was ever written of this container: no sighting is older than that.
                    updated_at: DateTime::<Utc>::MIN_UTC,
                    generation: 0,
                },
            };
            // Decided from the record as it stands, like any observation, and committed with the
            // registration: no report ever carries the registration without what was seen.
            if let Some(observation) = observe(&record) {
                observation.apply_to(&mut record);
            }
            record.updated_at = now;
            let registered = NewEvent::new(
                EventType::Registered,
                now,
                &by,
                serde_json::json!({
                    "created": !created_before,
                    "containerId": record.container_id(),
                    "containerChanged": !same_container,
                }),
            );
            record.generation = write_events(&tx, &id, vec![registered], per_app, &records)?;
            tx.execute("DELETE FROM tombstones WHERE id = ?1", [id.as_str()])?;
            tx.execute(
                "INSERT INTO apps (id, registered, metrics, last_exit, last_stop, last_start, updated_at,
                                   generation, restart_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(id) DO UPDATE SET
                     registered = ?2, metrics = ?3, last_exit = ?4, last_stop = ?5,
                     last_start = ?6, updated_at = ?7, generation = ?8, restart_count = ?9",
                params![
                    id.as_str(),
                    Value::Object(record.registered.clone()).to_string(),
                    to_json_text(&record.metrics),
                    to_json_text(&record.last_exit),
                    to_json_text(&record.last_stop),
                    to_json_text(&record.last_start),
                    format_time(now),
                    generation_value(record.generation),
                    record.restart_count.map(generation_value),
                ],
            )?;
            let record = select_one(&tx, &id)?.unwrap_or(record);
            tx.commit()?;
            Store::committed(&records, &id, Current::Record(Box::new(record.clone())));
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
    pub async fn delete(&self, id: &AppId, by: &str) -> Result<bool, StoreError> {
        let id = id.clone();
        let records = self.records.clone();
        let by = by.to_owned();
        let per_app = self.per_app;
        self.with_conn(move |c| {
            durability(c, Durability::Synced)?;
            let tx = c.transaction()?;
            let deleted = tx.execute("DELETE FROM apps WHERE id = ?1", [id.as_str()])? > 0;
            if !deleted {
                return Ok(false);
            }
            let now = Utc::now();
            let event = NewEvent::new(EventType::Deleted, now, &by, serde_json::json!({}));
            let tombstone = Tombstone {
                generation: write_events(&tx, &id, vec![event], per_app, &records)?,
                deleted_at: now,
            };
            tx.execute(
                "INSERT INTO tombstones (id, generation, deleted_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(id) DO UPDATE SET generation = ?2, deleted_at = ?3",
                params![
                    id.as_str(),
                    generation_value(tombstone.generation),
                    format_time(tombstone.deleted_at)
                ],
            )?;
            tx.commit()?;
            Store::committed(&records, &id, Current::Deleted(tombstone));
            Ok(true)
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
        let per_app = self.per_app;
        self.with_conn(move |c| {
            durability(c, Durability::CrashSafe)?;
            let tx = c.transaction()?;
            let Some(mut record) = select_one(&tx, &id)? else {
                return Ok(None);
            };
            if record.container_id() != container_id {
                return Ok(None);
            }
            let Some(mut observation) = observe(&record) else {
                return Ok(Some(record));
            };
            let before = record.clone();
            let seen = keepable(&tx, &id, std::mem::take(&mut observation.events))?;
            if observation.for_events_only {
                // Only the history changes: the record keeps what it says, and when.
                if seen.is_empty() {
                    return Ok(Some(record));
                }
            } else {
                observation.apply_to(&mut record);
                record.updated_at = now;
            }
            // The engine's own events first: they happened before the look that settled the
            // record, and before any operation's end written with it.
            let mut made = seen;
            made.extend(events::derive(&before, &record, now));
            record.generation = write_events(&tx, &id, made, per_app, &records)?;
            tx.execute(
                "UPDATE apps SET metrics = ?2, last_exit = ?3, last_stop = ?4, last_start = ?5,
                     updated_at = ?6, generation = ?7, restart_count = ?8
                 WHERE id = ?1",
                params![
                    id.as_str(),
                    to_json_text(&record.metrics),
                    to_json_text(&record.last_exit),
                    to_json_text(&record.last_stop),
                    to_json_text(&record.last_start),
                    format_time(record.updated_at),
                    generation_value(record.generation),
                    record.restart_count.map(generation_value),
                ],
            )?;
            // Answer with the row as stored (times at stored precision), as a later read would.
            let stored = select_one(&tx, &id)?.unwrap_or(record);
            tx.commit()?;
            Store::committed(&records, &id, Current::Record(Box::new(stored.clone())));
            Ok(Some(stored))
        })
        .await
    }

    /// `id`'s events, newest first: up to `limit` older than generation `before` (all when
    /// `None`), and whether there are more beyond them.
    pub async fn events(
        &self,
        id: &AppId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<AppEvent>, bool), StoreError> {
        let id = id.clone();
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT generation, type, at, by, details FROM events
                 WHERE app_id = ?1 AND generation < ?2 ORDER BY generation DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    id.as_str(),
                    before.map_or(i64::MAX, generation_value),
                    i64::try_from(limit + 1).unwrap_or(i64::MAX)
                ],
                event_row,
            )?;
            let mut events = Vec::with_capacity(limit);
            let mut more = false;
            for row in rows {
                if events.len() == limit {
                    more = true;
                    break;
                }
                events.extend(decode_event(&id, row?));
            }
            Ok((events, more))
        })
        .await
    }

    /// The undelivered events of each `(app, generation)` of `changes` up to that generation,
    /// oldest first, in the order of `changes`; it stops after the change that brings the count
    /// to `budget` (the first change always gets all of its own).
    pub async fn undelivered_events(
        &self,
        changes: Vec<(AppId, u64)>,
        budget: usize,
    ) -> Result<Vec<Vec<AppEvent>>, StoreError> {
        self.with_conn(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT generation, type, at, by, details FROM events
                 WHERE app_id = ?1 AND delivered = 0 AND generation <= ?2 ORDER BY generation",
            )?;
            let mut out = Vec::with_capacity(changes.len());
            let mut total = 0;
            for (id, upto) in changes {
                if !out.is_empty() && total >= budget {
                    break;
                }
                let rows =
                    stmt.query_map(params![id.as_str(), generation_value(upto)], event_row)?;
                let mut events = Vec::new();
                for row in rows {
                    events.extend(decode_event(&id, row?));
                }
                total += events.len();
                out.push(events);
            }
            Ok(out)
        })
        .await
    }

    /// Events written since the store was opened, by type.
    pub fn events_written(&self) -> [u64; EventType::ALL.len()] {
        std::array::from_fn(|n| self.records.written[n].load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Events dropped before the control plane had them, since the store was opened.
    pub fn events_dropped(&self) -> u64 {
        self.records
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The engine's time of the last engine event written to a history, if any.
    pub async fn engine_events_seen(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.node_state(ENGINE_EVENTS_SEEN).await?.and_then(|t| {
            DateTime::parse_from_rfc3339(&t)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }))
    }

    /// Keeps `t` as the engine time up to which its events have been taken in: the next
    /// (re)connection asks for the events since then. Not synced: a mark a power cut takes back
    /// only makes the next connection ask for more, and the events told twice are kept once.
    pub async fn set_engine_events_seen(&self, t: DateTime<Utc>) -> Result<(), StoreError> {
        self.write_node_state(
            ENGINE_EVENTS_SEEN,
            engine_time_text(t),
            Durability::CrashSafe,
        )
        .await
    }

    /// How many events are kept, and how many of them the control plane has not acknowledged.
    pub async fn event_counts(&self) -> Result<(u64, u64), StoreError> {
        self.with_conn(|c| {
            let (all, pending): (i64, i64) = c.query_row(
                "SELECT count(*), count(*) FILTER (WHERE delivered = 0) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            Ok((
                u64::try_from(all).unwrap_or_default(),
                u64::try_from(pending).unwrap_or_default(),
            ))
        })
        .await
    }

    /// The node's state kept under `key` (a JSON document), if any.
    pub async fn node_state(&self, key: &'static str) -> Result<Option<String>, StoreError> {
        self.with_conn(move |c| {
            Ok(
                c.query_row("SELECT value FROM node WHERE key = ?1", [key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Keeps `value` (a JSON document) as the node's state under `key`, durably before it returns:
    /// a drain, or a shutdown's figures, must outlive a power cut that comes right after.
    pub async fn set_node_state(&self, key: &'static str, value: String) -> Result<(), StoreError> {
        self.write_node_state(key, value, Durability::Synced).await
    }

    /// Keeps `value` as the node's state under `key`, as `d` says.
    async fn write_node_state(
        &self,
        key: &'static str,
        value: String,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.with_conn(move |c| {
            durability(c, d)?;
            c.execute(
                "INSERT INTO node (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            Ok(())
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

/// Runs migration `step` in one transaction with the version it reaches, so that a crash between
/// two steps leaves a store that the next start takes up where it stopped.
fn migrate(conn: &Connection, step: usize) -> Result<(), StoreError> {
    conn.execute_batch(&format!(
        "BEGIN;\n{}\nPRAGMA user_version = {};\nCOMMIT;",
        MIGRATIONS[step],
        step + 1
    ))?;
    Ok(())
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

/// Writes `made` to `id`'s history (what the engine reported, already through [`keepable`]), each
/// event with a generation of its own drawn from the node's counter, in the caller's transaction.
/// Returns the generation the change itself takes: the last event's, or a fresh one when
/// there is none. Events the control plane has beyond the last `per_app` of the app go.
fn write_events(
    tx: &rusqlite::Transaction<'_>,
    id: &AppId,
    made: Vec<NewEvent>,
    per_app: usize,
    tally: &Committed,
) -> Result<u64, StoreError> {
    let mut last = None;
    for event in made {
        let generation = next_generation(tx)?;
        tx.prepare_cached(
            "INSERT INTO events (generation, app_id, type, at, by, details, key, delivered)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            generation_value(generation),
            id.as_str(),
            event.kind.as_str(),
            format_time(event.at),
            event.by,
            event.details.to_string(),
            event.key,
            !tally.reporting,
        ])?;
        keep_window(tx, id, &event)?;
        last = Some(generation);
        if let Some(n) = EventType::ALL.iter().position(|t| *t == event.kind) {
            tally.written[n].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    if last.is_some() {
        let dropped = prune_events(tx, id, per_app)?;
        tally
            .dropped
            .fetch_add(dropped as u64, std::sync::atomic::Ordering::Relaxed);
    }
    match last {
        Some(g) => Ok(g),
        None => next_generation(tx),
    }
}

/// `made` (what the engine reported), without what is already kept (its key) or is not a fact of
/// `id`'s own history ([`not_on_its_own`]).
fn keepable(
    tx: &rusqlite::Transaction<'_>,
    id: &AppId,
    made: Vec<NewEvent>,
) -> Result<Vec<NewEvent>, StoreError> {
    let mut out = Vec::with_capacity(made.len());
    let mut keys = std::collections::HashSet::new();
    for event in made {
        if let Some(key) = &event.key {
            if !keys.insert(key.clone()) {
                continue;
            }
            let kept: Option<i64> = tx
                .prepare_cached("SELECT generation FROM events WHERE app_id = ?1 AND key = ?2")?
                .query_row(params![id.as_str(), key], |r| r.get(0))
                .optional()?;
            if kept.is_some() {
                continue;
            }
        }
        if not_on_its_own(tx, id, &event)? {
            continue;
        }
        out.push(event);
    }
    Ok(out)
}

/// Whether what the engine reported at `event.at` is not a fact of its own in `id`'s history:
/// it came before the app was registered with this container, or inside one of the agent's own operations on it (its
/// request and its end are in the history), which says it with its own events. The engine's
/// events may come late (Podman's by a second or more), after later operations: so every
/// operation kept is asked, not only the record's last.
fn not_on_its_own(
    tx: &rusqlite::Transaction<'_>,
    id: &AppId,
    event: &NewEvent,
) -> Result<bool, StoreError> {
    // Operation times are kept to the millisecond, the engine's to the nanosecond.
    let slack = chrono::TimeDelta::milliseconds(5);
    let start = event.kind == EventType::StartedByEngine;
    // A start's own `start` is inside it whatever it found; an exit is a start's only when the
    // start failed, or (one that ended `started`, having seen its run alive) before that run
    // began: a restart's stop, whose `die` Podman may tell late.
    let kinds = if start {
        "('registered', 'started', 'start_failed')"
    } else {
        "('registered', 'stop', 'started', 'start_failed')"
    };
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM windows WHERE app_id = ?1 AND to_at >= ?3 AND from_at <= ?4
                        AND kind IN {kinds} AND (?5 OR kind <> 'started' OR run_began > ?2))"
    );
    Ok(tx.prepare_cached(&sql)?.query_row(
        params![
            id.as_str(),
            engine_time_text(event.at),
            engine_time_text(event.at - slack),
            engine_time_text(event.at + slack),
            start,
        ],
        |r| r.get(0),
    )?)
}

/// How long the spans of operations and registrations are kept to tell the engine's events
/// apart: longer than any engine is late, and than the replay after a restart reaches back.
const WINDOWS_KEPT: chrono::TimeDelta = chrono::TimeDelta::hours(2);

/// Keeps the span an event of the agent's own closes (an operation's end, a registration of a
/// new container), so that an engine event inside it is told apart from one of its own, however
/// late it comes and whatever the history has pruned.
fn keep_window(
    tx: &rusqlite::Transaction<'_>,
    id: &AppId,
    event: &NewEvent,
) -> Result<(), StoreError> {
    let time = |key: &str| {
        event.details[key]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let (kind, from) = match event.kind {
        EventType::Stopped | EventType::StopFailed => ("stop", time("requestedAt")),
        EventType::Started => ("started", time("requestedAt")),
        EventType::StartFailed => ("start_failed", time("requestedAt")),
        EventType::Registered if event.details["containerChanged"] == true => {
            ("registered", Some(DateTime::<Utc>::MIN_UTC))
        }
        _ => return Ok(()),
    };
    let Some(from) = from else { return Ok(()) };
    tx.prepare_cached(
        "DELETE FROM windows WHERE app_id = ?1 AND to_at < ?2 AND kind <> 'registered'",
    )?
    .execute(params![
        id.as_str(),
        engine_time_text(event.at - WINDOWS_KEPT)
    ])?;
    tx.prepare_cached(
        "INSERT INTO windows (app_id, kind, from_at, to_at, run_began) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        id.as_str(),
        kind,
        engine_time_text(from),
        engine_time_text(event.at),
        time("startedAt").map(engine_time_text),
    ])?;
    Ok(())
}

/// The engine's time as kept in the node's state: RFC 3339 with nanoseconds, in UTC, so that the
/// text sorts as the time does.
fn engine_time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The most events one app keeps while the control plane has not acknowledged them (at least
/// `per_app`): a control plane away for days, and an app that crash-loops or is stopped and started
/// without end meanwhile, never fill the disk. Past it, the oldest go, counted and logged.
pub const MAX_UNDELIVERED_PER_APP: usize = 10_000;

/// Forgets `id`'s events that the control plane has acknowledged, beyond the last `per_app`, and
/// any beyond the last [`MAX_UNDELIVERED_PER_APP`] (or `per_app`, if more). Returns how many events
/// went undelivered.
fn prune_events(c: &Connection, id: &AppId, per_app: usize) -> Result<usize, StoreError> {
    c.prepare_cached(
        "DELETE FROM events WHERE app_id = ?1 AND delivered = 1
             AND generation <= (SELECT generation FROM events WHERE app_id = ?1
                                ORDER BY generation DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![
        id.as_str(),
        i64::try_from(per_app).unwrap_or(i64::MAX)
    ])?;
    let most = per_app.max(MAX_UNDELIVERED_PER_APP);
    let dropped = c
        .prepare_cached(
            "DELETE FROM events WHERE app_id = ?1
                 AND generation <= (SELECT generation FROM events WHERE app_id = ?1
                                    ORDER BY generation DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![
            id.as_str(),
            i64::try_from(most).unwrap_or(i64::MAX)
        ])?;
    if dropped > 0 {
        tracing::warn!(
            app = %id, dropped, kept = most,
            "events the control plane has not acknowledged were dropped: the app keeps at most this many"
        );
    }
    Ok(dropped)
}

/// One stored event.
fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

/// An event as stored, read back; `None` (logged) for one this agent cannot read.
fn decode_event(
    id: &AppId,
    (generation, kind, at, by, details): (i64, String, String, String, String),
) -> Option<AppEvent> {
    let event = (|| {
        Some(AppEvent {
            generation: u64::try_from(generation).ok()?,
            kind: EventType::parse(&kind)?,
            at: DateTime::parse_from_rfc3339(&at).ok()?.with_timezone(&Utc),
            by,
            details: serde_json::from_str(&details).ok()?,
        })
    })();
    if event.is_none() {
        tracing::error!(app = %id, generation, "stored event skipped: it cannot be read");
    }
    event
}

/// The value of one of the node's counters (`generation`, `acknowledged`).
fn counter(c: &Connection, name: &str) -> Result<u64, StoreError> {
    let v: Option<i64> = c
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(v.map_or(0, |v| u64::try_from(v).unwrap_or_default()))
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
    restart_count: Option<i64>,
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
        restart_count: r.get(8)?,
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
            restart_count: self.restart_count.and_then(|n| u64::try_from(n).ok()),
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

/// Reads every record and tombstone, and the acknowledged generation, into the in-memory tables.
fn load_all(c: &Connection) -> Result<Tables, StoreError> {
    let mut stmt = c.prepare(
        "SELECT id, registered, metrics, last_exit, last_stop, last_start, updated_at, generation,
                restart_count
         FROM apps ORDER BY id",
    )?;
    let rows = stmt.query_map([], raw_row)?;
    let mut tables = Tables {
        acknowledged: counter(c, "acknowledged")?,
        ..Tables::default()
    };
    for row in rows {
        // A row this agent cannot read is left in the file, untouched, and not served: one bad row
        // must not keep every other app from being served. Registering the app again replaces it.
        match row?.decode() {
            Ok(record) => {
                let (id, at) = (record.id.clone(), record.updated_at);
                tables.apply(&id, Current::Record(Box::new(record)), at);
            }
            Err(e) => tracing::error!(error = %e, "stored record skipped"),
        }
    }
    let mut stmt = c.prepare("SELECT id, generation, deleted_at FROM tombstones")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, generation, deleted_at) = row?;
        let (Ok(id), Ok(deleted_at)) =
            (AppId::parse(&id), DateTime::parse_from_rfc3339(&deleted_at))
        else {
            tracing::error!(id, "stored tombstone skipped: it cannot be read");
            continue;
        };
        let tombstone = Tombstone {
            generation: u64::try_from(generation).unwrap_or_default(),
            deleted_at: deleted_at.with_timezone(&Utc),
        };
        if tombstone.generation > tables.acknowledged {
            tables.apply(&id, Current::Deleted(tombstone), tombstone.deleted_at);
        }
    }
    Ok(tables)
}

fn select_one(c: &Connection, id: &AppId) -> Result<Option<AppRecord>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, registered, metrics, last_exit, last_stop, last_start, updated_at, generation,
                restart_count
         FROM apps WHERE id = ?1",
    )?;
    let raw = stmt.query_row([id.as_str()], raw_row).optional()?;
    raw.map(RawRow::decode).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::WorkerNode;
    use chrono::SubsecRound;
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
    async fn the_database_and_its_wal_and_shm_are_private_to_the_agent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.db");
        let mode = |suffix: &str| {
            let file = dir.path().join(format!("agent.db{suffix}"));
            std::fs::metadata(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                .permissions()
                .mode()
                & 0o7777
        };
        {
            let _store = Store::open(&path).expect("open");
            for suffix in ["", "-wal", "-shm"] {
                assert_eq!(mode(suffix), 0o600, "agent.db{suffix}");
            }
        }
        // Made by an earlier version under a wider umask: tightened at the next open.
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("agent.db{suffix}"));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
            }
        }
        let _store = Store::open(&path).expect("reopen");
        for suffix in ["", "-wal", "-shm"] {
            assert_eq!(mode(suffix), 0o600, "agent.db{suffix} after reopening");
        }
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("db/agent.db");
        let id = AppId::parse("a").expect("id");
        {
            let store = Store::open(&path).expect("open");
            let (_, how) = store
                .register(&id, reg(&id, "c1"), Utc::now(), "cp", |_| None)
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
            .register(&id, reg(&id, "c1"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        store
            .observe(&id, "c1", Utc::now(), |_| Some(seen(true)))
            .await
            .expect("obs");
        let (r, how) = store
            .register(&id, reg(&id, "c1"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        assert_eq!(how, Registered::Replaced);
        assert!(r.online());
        let (r, _) = store
            .register(&id, reg(&id, "c2"), Utc::now(), "cp", |_| None)
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
                .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
                .await
                .expect("put");
            generations.push(r.generation);
            let (r, _) = store
                .register(&b, reg(&b, "cb"), Utc::now(), "cp", |_| None)
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
            assert!(store.delete(&a, "cp").await.expect("delete"));
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
            .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
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
    async fn the_outbox_is_what_is_above_the_acknowledged_generation_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("o.db");
        let (a, b, c) = (
            AppId::parse("a").expect("id"),
            AppId::parse("b").expect("id"),
            AppId::parse("c").expect("id"),
        );
        let ids = |changes: &[Change]| -> Vec<(String, u64, bool)> {
            changes
                .iter()
                .map(|c| (c.id.to_string(), c.generation, c.record.is_none()))
                .collect()
        };
        let (ga, gb);
        {
            let store = Store::open(&path).expect("open");
            let head = store.head();
            for id in [&a, &b, &c] {
                store
                    .register(id, reg(id, id.as_str()), Utc::now(), "cp", |_| None)
                    .await
                    .expect("put");
            }
            // A burst of changes to one app is one entry, its latest state.
            for _ in 0..3 {
                store
                    .observe(&a, "a", Utc::now(), |r| Some(seen(!r.online())))
                    .await
                    .expect("observe");
            }
            ga = store.get(&a).await.expect("get").expect("a").generation;
            gb = store.get(&b).await.expect("get").expect("b").generation;
            assert_eq!(*head.borrow(), ga);
            let pending = store.changes_after(0, 10);
            assert_eq!(
                ids(&pending),
                [
                    ("b".into(), gb, false),
                    ("c".into(), 3, false),
                    ("a".into(), ga, false)
                ]
            );
            assert_eq!(ids(&store.changes_after(0, 1)), [("b".into(), gb, false)]);
            let outbox = store.outbox();
            assert_eq!(
                (outbox.pending, outbox.acknowledged, outbox.head),
                (3, 0, ga)
            );
            assert!(outbox.oldest.is_some());

            assert!(store.delete(&b, "cp").await.expect("delete"));
            store.acknowledge(3).await.expect("ack");
            // Going down is not a thing the acknowledged generation does.
            store.acknowledge(1).await.expect("ack");
            assert_eq!(store.outbox().acknowledged, 3);
            let pending = store.changes_after(3, 10);
            assert_eq!(ids(&pending)[0], ("a".into(), ga, false));
            assert!(pending[1].record.is_none() && pending[1].id == b);
        }
        // The acknowledged generation and the tombstone not yet acknowledged outlive the process.
        let store = Store::open(&path).expect("reopen");
        let pending = store.changes_after(store.outbox().acknowledged, 10);
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert!(pending[1].record.is_none());
        let tomb = pending[1].generation;
        assert_eq!(store.tombstone(&b).await.expect("tomb"), Some(tomb));
        store.acknowledge(tomb).await.expect("ack");
        assert_eq!(store.tombstone(&b).await.expect("tomb"), None);
        let outbox = store.outbox();
        assert_eq!((outbox.pending, outbox.oldest), (0, None));
        assert!(store.changes_after(outbox.acknowledged, 10).is_empty());
        // A resync reads everything there is: the records, not the acknowledged tombstone.
        assert_eq!(store.changes_after(0, 10).len(), 2);
    }

    #[tokio::test]
    async fn an_older_store_is_taken_up_step_by_step_and_its_records_reported_once() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        {
            // A store as an agent of schema 3 left it, with one record.
            let conn = Connection::open(&path).expect("open");
            for step in 0..3 {
                migrate(&conn, step).expect("old schema");
            }
            conn.execute(
                "INSERT INTO apps (id, registered, updated_at) VALUES ('a', ?1, ?2)",
                params![r#"{"containerId":"ca"}"#, format_time(Utc::now())],
            )
            .expect("old row");
        }
        let store = Store::open(&path).expect("upgraded");
        let a = AppId::parse("a").expect("id");
        let record = store.get(&a).await.expect("get").expect("kept");
        assert_eq!((record.container_id(), record.generation), ("ca", 1));
        let outbox = store.outbox();
        assert_eq!(
            (outbox.pending, outbox.acknowledged, outbox.head),
            (1, 0, 1)
        );
        let version: i64 = store
            .with_conn(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        // The next change draws from the counter the upgrade set.
        let (r, _) = store
            .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        assert_eq!(r.generation, 2);
    }

    #[tokio::test]
    async fn the_last_operations_of_a_store_from_before_the_history_tell_its_late_events_apart() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        let t = |ms: i64| Utc::now().trunc_subsecs(3) - chrono::TimeDelta::milliseconds(ms);
        let stop = LastOp::<StopOutcome>::intent("cp", t(5000)).closed(
            StopOutcome::Stopped,
            t(4000),
            None,
        );
        let start = LastOp::<StartOutcome>::intent("cp", t(3000)).closed(
            StartOutcome::Started,
            t(2000),
            None,
        );
        let metrics = ResourceMetrics {
            started_at: Some(t(2500)),
            ..ResourceMetrics::default()
        };
        {
            // A store as the agent before the history left it: a record whose last stop and
            // start have ended.
            let conn = Connection::open(&path).expect("open");
            for step in 0..6 {
                migrate(&conn, step).expect("old schema");
            }
            conn.execute(
                "INSERT INTO apps (id, registered, metrics, last_stop, last_start, updated_at)
                 VALUES ('a', ?1, ?2, ?3, ?4, ?5)",
                params![
                    r#"{"containerId":"ca"}"#,
                    to_json_text(&Some(metrics)),
                    to_json_text(&Some(stop)),
                    to_json_text(&Some(start)),
                    format_time(Utc::now())
                ],
            )
            .expect("old row");
        }
        let store = Store::open(&path).expect("upgraded");
        let a = AppId::parse("a").expect("id");
        // The engine tells, late, of the stop's own `die`, the restart's `die` before its run
        // began and the run's `start`, and of an exit of its own after the start.
        let told = vec![
            engine_event(EventType::Exited, t(4500), "stop's die"),
            engine_event(EventType::Exited, t(2700), "start's die"),
            engine_event(EventType::StartedByEngine, t(2500), "start's start"),
            engine_event(EventType::Exited, t(1000), "its own exit"),
        ];
        tell(&store, &a, "ca", told).await;
        assert_eq!(kinds(&store, &a).await, ["exited"]);
    }

    #[tokio::test]
    async fn delete_and_list() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("open");
        for name in ["b", "a", "c"] {
            let id = AppId::parse(name).expect("id");
            store
                .register(&id, reg(&id, name), Utc::now(), "cp", |_| None)
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
        assert!(store.delete(&b, "cp").await.expect("delete"));
        assert!(!store.delete(&b, "cp").await.expect("delete"));
        assert!(store.get(&b).await.expect("get").is_none());
        assert!(
            store
                .observe(&b, "b", Utc::now(), |_| Some(seen(false)))
                .await
                .expect("obs")
                .is_none()
        );
    }

    fn engine_event(kind: EventType, at: DateTime<Utc>, key: &str) -> NewEvent {
        NewEvent {
            key: Some(key.to_owned()),
            ..NewEvent::new(kind, at, crate::events::BY_ENGINE, json!({}))
        }
    }

    /// Writes `events` to `id`'s history with an observation that changes nothing else.
    async fn tell(store: &Store, id: &AppId, container: &str, events: Vec<NewEvent>) -> u64 {
        store
            .observe(id, container, Utc::now(), move |r| {
                Some(Observation {
                    metrics: r.metrics.clone().unwrap_or_default(),
                    events,
                    for_events_only: true,
                    ..Observation::default()
                })
            })
            .await
            .expect("observe")
            .expect("written")
            .generation
    }

    async fn kinds(store: &Store, id: &AppId) -> Vec<&'static str> {
        let (events, _) = store.events(id, 100, None).await.expect("events");
        events.iter().rev().map(|e| e.kind.as_str()).collect()
    }

    #[tokio::test]
    async fn each_event_has_a_generation_of_its_own_and_the_change_takes_the_last() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db")).expect("open");
        let a = AppId::parse("a").expect("id");
        let (r, _) = store
            .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        let now = Utc::now();
        // A restart's intents: two events, and the record takes the second's generation.
        let written = store
            .observe(&a, "ca", now, move |_| {
                Some(Observation {
                    last_stop: Some(LastOp::intent("cp", now)),
                    last_start: Some(LastOp::intent("cp", now)),
                    ..seen(true)
                })
            })
            .await
            .expect("observe")
            .expect("written");
        let (events, more) = store.events(&a, 10, None).await.expect("events");
        assert!(!more);
        let generations: Vec<u64> = events.iter().map(|e| e.generation).collect();
        assert_eq!(
            generations,
            [r.generation + 2, r.generation + 1, r.generation]
        );
        assert_eq!(written.generation, r.generation + 2);
        assert_eq!(
            kinds(&store, &a).await,
            ["registered", "stop_requested", "start_requested"]
        );
        // A plain observation makes no event, and takes a generation of its own.
        let g = store
            .observe(&a, "ca", Utc::now(), |_| Some(seen(false)))
            .await
            .expect("observe")
            .expect("written")
            .generation;
        assert_eq!(g, written.generation + 1);
        assert_eq!(kinds(&store, &a).await.len(), 3);
        // Pages: newest first, `before` a generation.
        let (page, more) = store.events(&a, 2, None).await.expect("page");
        assert!(more);
        assert_eq!(page[0].kind, EventType::StartRequested);
        let (page, more) = store
            .events(&a, 2, Some(page[1].generation))
            .await
            .expect("page");
        assert!(!more);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].kind, EventType::Registered);
        assert_eq!(store.events_written()[0], 1, "one registration");
    }

    #[tokio::test]
    async fn what_the_engine_reports_is_kept_once_and_never_for_the_agents_own_operations() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.db");
        let store = Store::open(&path).expect("open");
        let a = AppId::parse("a").expect("id");
        let before = Utc::now() - chrono::TimeDelta::seconds(10);
        store
            .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        // Before the registration: not the app's, and the record is left as it is.
        let registered = store.get(&a).await.expect("get").expect("there").generation;
        let g = tell(
            &store,
            &a,
            "ca",
            vec![engine_event(EventType::StartedByEngine, before, "s0")],
        )
        .await;
        assert_eq!(kinds(&store, &a).await, ["registered"]);
        assert_eq!(g, registered);
        // A stop by the agent, from t0 to t1: a die inside it is the stop's.
        let t0 = Utc::now().trunc_subsecs(3);
        let t1 = t0 + chrono::TimeDelta::seconds(2);
        store
            .observe(&a, "ca", t0, move |_| {
                Some(Observation {
                    last_stop: Some(LastOp::intent("cp", t0)),
                    ..seen(true)
                })
            })
            .await
            .expect("intent");
        store
            .observe(&a, "ca", t1, move |r| {
                Some(Observation {
                    last_stop: r
                        .last_stop
                        .clone()
                        .map(|s| s.closed(StopOutcome::Stopped, t1, None)),
                    ..seen(false)
                })
            })
            .await
            .expect("final");
        let inside = t0 + chrono::TimeDelta::milliseconds(500);
        let after = t1 + chrono::TimeDelta::seconds(1);
        tell(
            &store,
            &a,
            "ca",
            vec![engine_event(EventType::Exited, inside, "d1")],
        )
        .await;
        assert_eq!(
            kinds(&store, &a).await,
            ["registered", "stop_requested", "stopped"]
        );
        // After it, on its own; and the same event told twice is kept once.
        for _ in 0..2 {
            tell(
                &store,
                &a,
                "ca",
                vec![engine_event(EventType::Exited, after, "d2")],
            )
            .await;
        }
        assert_eq!(
            kinds(&store, &a).await,
            ["registered", "stop_requested", "stopped", "exited"]
        );
        // How far the watcher took the engine's events in, kept to the nanosecond.
        let noted = after + chrono::TimeDelta::nanoseconds(7);
        store.set_engine_events_seen(noted).await.expect("note");
        drop(store);
        let store = Store::open(&path).expect("reopen");
        tell(
            &store,
            &a,
            "ca",
            vec![engine_event(EventType::Exited, after, "d2")],
        )
        .await;
        assert_eq!(store.engine_events_seen().await.expect("read"), Some(noted));
        assert_eq!(
            kinds(&store, &a).await.len(),
            4,
            "kept once across a restart"
        );
    }

    #[tokio::test]
    async fn a_history_keeps_every_event_until_acknowledged_then_its_last_per_app() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&dir.path().join("a.db"))
            .expect("open")
            .keeping_events(3, true);
        let (a, b) = (
            AppId::parse("a").expect("id"),
            AppId::parse("b").expect("id"),
        );
        store
            .register(&a, reg(&a, "ca"), Utc::now(), "cp", |_| None)
            .await
            .expect("put");
        let mut at = Utc::now();
        for n in 0..6 {
            at += chrono::TimeDelta::seconds(1);
            tell(
                &store,
                &a,
                "ca",
                vec![engine_event(EventType::Exited, at, &format!("d{n}"))],
            )
            .await;
        }
        // Nothing delivered yet: all seven kept, and all seven go with the next report.
        assert_eq!(kinds(&store, &a).await.len(), 7);
        let head = *store.head().borrow();
        let undelivered = |upto: u64| {
            let store = store.clone();
            let a = a.clone();
            async move {
                store
                    .undelivered_events(vec![(a, upto)], 100)
                    .await
                    .expect("read")
                    .concat()
            }
        };
        assert_eq!(undelivered(head).await.len(), 7);
        // A report that carried a change of another app only, up to a higher generation, delivers
        // none of them.
        let b_head = store
            .register(&b, reg(&b, "cb"), Utc::now(), "cp", |_| None)
            .await
            .expect("put")
            .0
            .generation;
        store
            .acknowledge_batch(b_head, vec![(b.clone(), b_head)])
            .await
            .expect("ack");
        assert_eq!(undelivered(head).await.len(), 7);
        assert_eq!(kinds(&store, &a).await.len(), 7);
        store
            .acknowledge_batch(b_head, vec![(a.clone(), head)])
            .await
            .expect("ack");
        assert_eq!(kinds(&store, &a).await, ["exited", "exited", "exited"]);
        assert!(undelivered(head).await.is_empty());
        let (all, pending) = store.event_counts().await.expect("counts");
        assert_eq!((all, pending), (3 + 1, 0));
        // A deleted app's history goes once its deletion is acknowledged.
        assert!(store.delete(&b, "cp").await.expect("delete"));
        assert_eq!(kinds(&store, &b).await, ["registered", "deleted"]);
        store
            .acknowledge(*store.head().borrow())
            .await
            .expect("ack");
        assert!(kinds(&store, &b).await.is_empty());
        assert_eq!(kinds(&store, &a).await.len(), 3);
        // A control plane away for good: an app keeps at most MAX_UNDELIVERED_PER_APP, the oldest
        // go, counted.
        let flood: Vec<NewEvent> = (0..MAX_UNDELIVERED_PER_APP + 5)
            .map(|n| {
                at += chrono::TimeDelta::milliseconds(1);
                engine_event(EventType::Exited, at, &format!("f{n}"))
            })
            .collect();
        tell(&store, &a, "ca", flood).await;
        let (all, pending) = store.event_counts().await.expect("counts");
        let most = MAX_UNDELIVERED_PER_APP as u64;
        assert_eq!((all, pending), (most, most));
        assert_eq!(store.events_dropped(), 5);
    }
}
