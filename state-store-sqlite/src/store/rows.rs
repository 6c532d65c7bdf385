//! The SQL of each operation, and the values, versions and deadlines it reads and writes.

use super::*;

/// Statements the store runs, public so the benchmark's raw-rusqlite side runs the very same.
#[doc(hidden)]
pub mod sql {
    /// Unconditional write: `(key, value, version, expires_at)`.
    pub const UPSERT: &str =
        "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = excluded.value, version = excluded.version,
     expires_at = excluded.expires_at";

    /// Unconditional write keeping a live row's deadline: `(key, value, version, expires_at if
    /// created, now)`.
    pub const UPSERT_KEEP_TTL: &str =
        "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = excluded.value, version = excluded.version,
     expires_at = CASE WHEN state_store.expires_at IS NULL OR state_store.expires_at > ?5
     THEN state_store.expires_at ELSE excluded.expires_at END";

    /// Atomic increment: `(key, delta, version, expires_at if created, now)`, returning the new
    /// value; no row when the stored value is not a canonical integer or the sum overflows.
    pub const INCREMENT: &str = "INSERT INTO state_store (key, value, version, expires_at)
     VALUES (?1, CAST(?2 AS TEXT), ?3, ?4)
     ON CONFLICT (key) DO UPDATE SET
     value = CASE WHEN state_store.expires_at <= ?5 THEN CAST(?2 AS TEXT)
     ELSE CAST(CAST(state_store.value AS INTEGER) + ?2 AS TEXT) END,
     version = ?3,
     expires_at = CASE WHEN state_store.expires_at <= ?5 THEN ?4
     ELSE state_store.expires_at END
     WHERE state_store.expires_at <= ?5
     OR (printf('%d', CAST(state_store.value AS INTEGER)) = state_store.value
     AND typeof(CAST(state_store.value AS INTEGER) + ?2) = 'integer')
     RETURNING CAST(value AS INTEGER)";
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The deadline of a write made now with `ttl`, in Unix milliseconds, rounded up.
pub(super) fn deadline(now: i64, ttl: Option<Duration>) -> Option<i64> {
    ttl.map(|ttl| {
        let ms = ttl.as_nanos().div_ceil(1_000_000);
        now.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
    })
}

pub(super) fn new_version() -> i64 {
    rand::random_range(1..i64::MAX)
}

pub(super) fn version(v: i64) -> Version {
    Version::new(v.to_string())
}

/// A version that cannot be ours (not a number) matches no row.
/// The data version a caller expects: a read's version, or a watch event's
/// (`<version>@<change>`).
pub(super) fn expected_version(v: &Version) -> i64 {
    let text = v.as_str();
    let data = text.split_once('@').map_or(text, |(data, _)| data);
    data.parse().unwrap_or(0)
}

pub(super) fn text(value: Vec<u8>) -> Result<String> {
    String::from_utf8(value).map_err(|e| Error::backend(STORE, e))
}

pub(super) fn read_value(value: ValueRef<'_>) -> Vec<u8> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => bytes.to_vec(),
        ValueRef::Integer(n) => n.to_string().into_bytes(),
        ValueRef::Real(x) => x.to_string().into_bytes(),
        ValueRef::Null => b"null".to_vec(),
    }
}

pub(super) fn get_many(conn: &Connection, keys: &[String]) -> rusqlite::Result<Vec<Option<Entry>>> {
    read_live(conn, keys, |row, now| {
        let expires_at: Option<i64> = row.get(3)?;
        Ok(Entry {
            value: read_value(row.get_ref(1)?),
            version: version(row.get(2)?),
            expires_in: expires_at
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0))),
        })
    })
}

/// The values alone: no version string per row.
pub(super) fn get_values(
    conn: &Connection,
    keys: &[String],
) -> rusqlite::Result<Vec<Option<Vec<u8>>>> {
    read_live(conn, keys, |row, _| Ok(read_value(row.get_ref(1)?)))
}

/// Chunks up to this many keys find a row's place by scanning the chunk, larger ones through
/// a map.
pub(super) const SCAN_CHUNK: usize = 16;

/// `read(row)` for each live row among `keys`, in the caller's order (`None`: missing or
/// expired; a name asked twice is answered twice).
pub(super) fn read_live<T: Clone>(
    conn: &Connection,
    keys: &[String],
    mut read: impl FnMut(&rusqlite::Row<'_>, i64) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<Option<T>>> {
    let now = now_ms();
    let mut found: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
    for (c, chunk) in keys.chunks(READ_CHUNK).enumerate() {
        let out = &mut found[c * READ_CHUNK..][..chunk.len()];
        // The first place of each key; later duplicates are copied from it below.
        let places: Option<HashMap<&[u8], usize>> = (chunk.len() > SCAN_CHUNK).then(|| {
            chunk
                .iter()
                .enumerate()
                .rev()
                .map(|(i, k)| (k.as_bytes(), i))
                .collect()
        });
        let place = |key: &[u8]| match &places {
            Some(places) => places.get(key).copied(),
            None => chunk.iter().position(|k| k.as_bytes() == key),
        };
        let mut stmt = conn.prepare_cached(&select_sql(chunk.len()))?;
        let params = chunk
            .iter()
            .map(|k| k as &dyn rusqlite::ToSql)
            .chain(std::iter::once(&now as &dyn rusqlite::ToSql));
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let ValueRef::Text(key) = row.get_ref(0)? else {
                continue;
            };
            if let Some(i) = place(key) {
                out[i] = Some(read(row, now)?);
            }
        }
        for i in 0..chunk.len() {
            if out[i].is_none() {
                if let Some(first) = place(chunk[i].as_bytes()).filter(|&first| first != i) {
                    out[i] = out[first].clone();
                }
            }
        }
    }
    Ok(found)
}

/// The `SELECT` for `n` keys: built once for the sizes inline reads use.
pub(super) fn select_sql(n: usize) -> std::borrow::Cow<'static, str> {
    pub(super) fn build(n: usize) -> String {
        let placeholders = vec!["?"; n].join(",");
        format!(
            "SELECT key, value, version, expires_at FROM state_store
             WHERE key IN ({placeholders}) AND (expires_at IS NULL OR expires_at > ?)"
        )
    }
    static SMALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let small = SMALL.get_or_init(|| (0..=INLINE_READ_KEYS).map(build).collect());
    match small.get(n) {
        Some(sql) => std::borrow::Cow::Borrowed(sql.as_str()),
        None => std::borrow::Cow::Owned(build(n)),
    }
}

/// The smallest byte string above every string starting with `prefix` (UTF-8 never holds
/// 0xFF, so bumping the last byte suffices); `None` for an empty prefix.
pub(super) fn upper_bound(prefix: &str) -> Option<Vec<u8>> {
    let mut bound = prefix.as_bytes().to_vec();
    let last = bound.last_mut()?;
    *last = last.saturating_add(1);
    Some(bound)
}

/// Live keys starting with `prefix`, after `after`, in byte order (keyset pagination on the
/// primary key).
pub(super) fn list_keys(
    conn: &Connection,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> rusqlite::Result<KeyPage> {
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM state_store
         WHERE key >= ?1 AND (?2 IS NULL OR key < CAST(?2 AS TEXT)) AND (?3 IS NULL OR key > ?3)
           AND (expires_at IS NULL OR expires_at > ?4)
         ORDER BY key LIMIT ?5",
    )?;
    let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut keys: Vec<String> = stmt
        .query_map(
            rusqlite::params![prefix, upper_bound(prefix), after, now_ms(), fetch],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let more = keys.len() > limit;
    keys.truncate(limit);
    let next = more.then(|| keys.last().cloned()).flatten();
    Ok(KeyPage::new(keys, next))
}

/// The new version, or `None` when the condition did not hold.
pub(super) fn set(
    conn: &Connection,
    key: &str,
    value: &str,
    options: &SetOptions,
) -> rusqlite::Result<Option<i64>> {
    let now = now_ms();
    let expires_at = deadline(now, options.ttl);
    let next = new_version();
    let written = match &options.mode {
        SetMode::Upsert if options.keep_ttl => conn
            .prepare_cached(sql::UPSERT_KEEP_TTL)
            .and_then(|mut s| s.execute(params![key, value, next, expires_at, now])),
        SetMode::Upsert => conn
            .prepare_cached(sql::UPSERT)
            .and_then(|mut s| s.execute(params![key, value, next, expires_at])),
        // An expired row counts as absent: it is replaced.
        SetMode::Create => conn
            .prepare_cached(
                "INSERT INTO state_store (key, value, version, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET
                     value = excluded.value, version = excluded.version,
                     expires_at = excluded.expires_at
                 WHERE state_store.expires_at <= ?5",
            )
            .and_then(|mut s| s.execute(params![key, value, next, expires_at, now])),
        SetMode::Update(expected) => conn
            .prepare_cached(
                "UPDATE state_store SET value = ?2, version = ?3,
                     expires_at = CASE WHEN ?7 THEN expires_at ELSE ?4 END
                 WHERE key = ?1 AND version = ?5 AND (expires_at IS NULL OR expires_at > ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    key,
                    value,
                    next,
                    expires_at,
                    expected_version(expected),
                    now,
                    options.keep_ttl
                ])
            }),
    }?;
    Ok((written > 0).then_some(next))
}

pub(super) fn remove(
    conn: &Connection,
    key: &str,
    expected: Option<&Version>,
) -> rusqlite::Result<bool> {
    let now = now_ms();
    match expected {
        None => conn
            .prepare_cached(
                "DELETE FROM state_store WHERE key = ?1 RETURNING expires_at IS NULL OR expires_at > ?2",
            )
            .and_then(|mut s| returning(&mut s, params![key, now], |row| row.get::<_, bool>(0)))
            .map(|live| live.unwrap_or(false)),
        Some(expected) => conn
            .prepare_cached(
                "DELETE FROM state_store
                 WHERE key = ?1 AND version = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
            )
            .and_then(|mut s| s.execute(params![key, expected_version(expected), now]))
            .map(|n| n > 0),
    }
}

/// One statement: insert the counter, or add to it when it is a live canonical integer and the
/// sum stays an integer (SQLite turns an overflowing sum into a REAL). An expired row restarts.
/// `None`: the stored value is not an integer, or the sum overflows.
pub(super) fn increment(
    conn: &Connection,
    key: &str,
    delta: i64,
    ttl: Option<Duration>,
) -> rusqlite::Result<Option<i64>> {
    let now = now_ms();
    returning(
        &mut *conn.prepare_cached(sql::INCREMENT)?,
        params![key, delta, new_version(), deadline(now, ttl), now],
        |row| row.get::<_, i64>(0),
    )
}

/// A lease acquisition with owned parts, for the store's thread.
pub(super) struct LeaseTxn {
    pub(super) record_key: String,
    pub(super) counter_key: String,
    /// The record's JSON before the token, and after it.
    pub(super) record: (String, &'static str),
    pub(super) ttl: Duration,
}

/// What a lease transaction found.
pub(super) enum LeaseOutcome {
    /// Taken: the token and the record's version.
    Granted(u64, i64),
    /// Somebody holds it; nothing changed.
    Held,
    /// The counter holds something that is not a positive integer; nothing changed.
    BadCounter,
}

/// Takes a lease in one immediate transaction: if no live record exists, increments the
/// counter and writes the record with the new token and the TTL. Committed with
/// `synchronous = FULL` whatever the store's durability, so a token handed out survives a
/// power cut: a token is never handed out twice. `full` says the connection already syncs so.
pub(super) fn acquire_lease(
    conn: &mut Connection,
    lease: &LeaseTxn,
    full: bool,
) -> rusqlite::Result<LeaseOutcome> {
    if !full {
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    let outcome = lease_transaction(conn, lease);
    if !full {
        // Back to the store's durability; should this fail, the connection stays safer.
        let _ = conn.pragma_update(None, "synchronous", "NORMAL");
    }
    outcome
}

fn lease_transaction(conn: &mut Connection, lease: &LeaseTxn) -> rusqlite::Result<LeaseOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms();
    let held = tx
        .prepare_cached(
            "SELECT 1 FROM state_store
             WHERE key = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        )?
        .exists(params![lease.record_key, now])?;
    if held {
        return Ok(LeaseOutcome::Held);
    }
    let token = match increment(&tx, &lease.counter_key, 1, None)?
        .and_then(|token| u64::try_from(token).ok())
        .filter(|token| *token > 0)
    {
        Some(token) => token,
        None => return Ok(LeaseOutcome::BadCounter),
    };
    let (before, after) = &lease.record;
    let record = format!("{before}{token}{after}");
    let version = new_version();
    tx.prepare_cached(sql::UPSERT)?.execute(params![
        lease.record_key,
        record,
        version,
        deadline(now, Some(lease.ttl))
    ])?;
    tx.commit()?;
    Ok(LeaseOutcome::Granted(token, version))
}
