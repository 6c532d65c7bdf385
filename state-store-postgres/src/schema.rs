//! The table, its upgrades, and the SQL of each operation.

use state_store_core::Error;
use tokio_postgres::Client;

/// The schema this release writes. A table with a higher one was written by a newer release
/// and is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// The clock now, in epoch microseconds.
const NOW_US: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::bigint";

/// The clock now, in epoch milliseconds.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint";

/// Milliseconds as an interval, from a `bigint` parameter (`NULL` stays `NULL`: no deadline).
const MS: &str = "* interval '1 millisecond'";

/// The statements, for one schema and table.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `"schema"."table"`, quoted.
    table: String,
    /// `"schema"."table_meta"`: the schema version.
    meta: String,
    /// `"schema"."table_version"`: versions, and the numbers of the change feed.
    sequence: String,
    /// `"schema"."table_changes"`: the change feed.
    changes: String,
    /// `"schema"."table_feed_until"`: a sequence holding the deadline (epoch ms) until which
    /// the feed is held open. A sequence, not a row: writes read its current value at once,
    /// without a snapshot that could predate a hold that committed while they waited.
    feed_until: String,
    /// `"schema"."table_feed_gap"`: a sequence holding a number above every write that went
    /// unrecorded while the feed lapsed (0: none yet).
    feed_gap: String,
    /// `"schema"."table_hold"(ms)`: holds the feed open.
    hold_fn: String,
    /// `"schema"."table_notify"()`: notifies the channel, and is true.
    notify: String,
    /// The advisory lock every write holds shared and a fence or hold exclusive.
    feed_lock: String,
    /// The channel a write notifies while the feed is held.
    pub(crate) channel: String,
    schema_name: String,
    table_name: String,
    /// `(keys bytea[])` → `key, value, version, milliseconds left`.
    pub(crate) get: String,
    /// `(key)` → as `get`, for one key (an equality the planner serves best).
    pub(crate) get_one: String,
    /// `(keys bytea[])` → `key, value`: what a read without versions needs.
    pub(crate) values: String,
    /// `(key)` → as `values`, for one key.
    pub(crate) value_one: String,
    /// `(key, value, ttl ms)` → version.
    pub(crate) upsert: String,
    /// As `upsert`, keeping a live row's deadline.
    pub(crate) upsert_keep_ttl: String,
    /// As `upsert`, only when no live row exists (an expired one is replaced).
    pub(crate) create: String,
    /// `(key, value, ttl ms, expected version, keep ttl)` → version, when the live row has it.
    pub(crate) update: String,
    /// `(key)` → whether a live row was there.
    pub(crate) remove: String,
    /// `(key, expected version)` → `true` when the live row had it.
    pub(crate) remove_if: String,
    /// `(key, delta, ttl ms)` → the new value; no row when the stored value is not an integer.
    pub(crate) increment: String,
    /// `(key, interval µs, burst, cost)` → the stored arrival time after the check, whether it
    /// passed, and the server's clock (µs); no row when the stored value is not an integer.
    pub(crate) gcra: String,
    /// `(key)` → the live stored value (or NULL) and the server's clock (µs).
    pub(crate) gcra_peek: String,
    /// `(from, below or NULL, after or NULL, limit)` → live keys in byte order.
    pub(crate) list: String,
    /// `(batch)` → how many expired rows it deleted, up to `batch`.
    pub(crate) sweep: String,
    /// `(batch, retention ms)` → how many changes older than the retention it deleted.
    pub(crate) trim: String,
    /// `(hold ms)`: holds the feed open that much longer; after a lapse, first marks the
    /// gap.
    pub(crate) hold: String,
    /// `()` → the highest change number whose change is final (committed or abandoned).
    pub(crate) fence: String,
    /// `()` → the sequence's last value, without waiting: whether a fence is worth taking.
    pub(crate) last_value: String,
    /// `(after, up to, limit)` → the trim watermark and the last gap, then
    /// `seq, key, op, value` per change.
    pub(crate) read_changes: String,
}

/// What a change-feed row records (`op`).
pub(crate) mod op {
    /// A write: `value` holds the new value; `seq` is the key's new version.
    pub(crate) const PUT: i16 = 0;
    /// A removal by a caller.
    pub(crate) const REMOVED: i16 = 1;
    /// A removal because the TTL ran out.
    pub(crate) const EXPIRED: i16 = 2;
}

impl Sql {
    /// `schema` and `table` are plain identifiers (checked by the config).
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let sequence = format!("\"{schema}\".\"{table}_version\"");
        let changes = format!("\"{schema}\".\"{table}_changes\"");
        let meta = format!("\"{schema}\".\"{table}_meta\"");
        let feed_until = format!("\"{schema}\".\"{table}_feed_until\"");
        let feed_gap = format!("\"{schema}\".\"{table}_feed_gap\"");
        let hold_fn = format!("\"{schema}\".\"{table}_hold\"");
        let notify = format!("\"{schema}\".\"{table}_notify\"");
        let channel = channel(schema, table);
        // Whether the feed is held, read after the feed lock: a hold that committed while this
        // write waited for the lock counts.
        let held = format!(
            "pg_sequence_last_value('{}'::regclass) > {NOW_MS}",
            feed_until.replace('\'', "''")
        );
        let feed_lock = format!("hashtext('state-store-feed:{schema}.{table}')::bigint");
        let next = format!("nextval('{}')", sequence.replace('\'', "''"));
        let live = "(s.expires_at IS NULL OR s.expires_at > now())";
        // Every write holds the feed lock shared from before it takes a number from the
        // sequence until it commits, so once a fence has held it exclusively, every number up
        // to the sequence's value then is final: a watcher reading up to it never sees a
        // smaller one commit later. Then it holds its key's lock, so one key's numbers are
        // taken in the order its writes commit (a number taken before waiting on the row —
        // an insert waiting out a delete — could otherwise commit after a larger one), and a
        // key's version doubles as its change number. The data statement reads `l` to take
        // both first, the feed's before the key's (the other order could deadlock with a
        // fence).
        let key_lock = |key: &str| {
            format!(
                "pg_advisory_xact_lock(hashtext('state-store-key:{schema}.{table}'),
                                       hashtext(encode({key}, 'hex')))"
            )
        };
        let try_key_lock = format!(
            "pg_try_advisory_xact_lock(hashtext('state-store-key:{schema}.{table}'),
                                       hashtext(encode(key, 'hex')))"
        );
        let feed_locked = format!("WITH l AS (SELECT pg_advisory_xact_lock_shared({feed_lock}))");
        let locked = format!(
            "WITH f AS (SELECT pg_advisory_xact_lock_shared({feed_lock})),
                  l AS (SELECT {} FROM f)",
            key_lock("$1::bytea")
        );
        // While the feed is held, a write's change rows go to the feed in the same statement.
        // A recorded change wakes the listening watches: `{notify}()` sends the `NOTIFY`, and
        // is declared costly, so the planner tests `{held}` first and a write nobody watches
        // sends nothing.
        let recorded = format!("{held} AND {notify}()");
        let put_change = format!(
            "c AS (INSERT INTO {changes} (seq, key, op, value)
                   SELECT version, key, {put}, value FROM w WHERE {recorded})",
            put = op::PUT
        );
        let removal = |cause: &str| {
            format!(
                "c AS (INSERT INTO {changes} (seq, key, op)
                       SELECT {next}, key, {cause} FROM w WHERE {recorded})"
            )
        };
        let insert = format!(
            "INSERT INTO {t} AS s (key, value, version, expires_at)
             SELECT $1::bytea, $2::text, {next}, now() + $3::bigint {MS} FROM l"
        );
        let put = |data: &str, result: &str| {
            format!(
                "{locked}, w AS ({data} RETURNING key, value, version), {put_change}
                 SELECT {result} FROM w"
            )
        };
        let entry = "key, value, version,
                     CEIL(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint";
        Sql {
            get: format!("SELECT {entry} FROM {t} s WHERE key = ANY($1) AND {live}"),
            get_one: format!("SELECT {entry} FROM {t} s WHERE key = $1 AND {live}"),
            values: format!("SELECT key, value FROM {t} s WHERE key = ANY($1) AND {live}"),
            value_one: format!("SELECT key, value FROM {t} s WHERE key = $1 AND {live}"),
            upsert: put(
                &format!(
                    "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     version = excluded.version, expires_at = excluded.expires_at"
                ),
                "version",
            ),
            upsert_keep_ttl: put(
                &format!(
                    "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     version = excluded.version,
                     expires_at = CASE WHEN {live} THEN s.expires_at ELSE excluded.expires_at END"
                ),
                "version",
            ),
            create: put(
                &format!(
                    "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                     version = excluded.version, expires_at = excluded.expires_at
                     WHERE NOT {live}"
                ),
                "version",
            ),
            update: put(
                &format!(
                    "UPDATE {t} s SET value = $2, version = {next},
                     expires_at = CASE WHEN $5 THEN s.expires_at ELSE now() + $3::bigint {MS} END
                     FROM l WHERE key = $1 AND version = $4 AND {live}"
                ),
                "version",
            ),
            // Removing an expired row reports the expiry.
            remove: format!(
                "{locked}, w AS (DELETE FROM {t} s USING l WHERE key = $1
                                 RETURNING key, {live} AS live),
                 {} SELECT live FROM w",
                removal(&format!(
                    "CASE WHEN live THEN {} ELSE {} END",
                    op::REMOVED,
                    op::EXPIRED
                ))
            ),
            remove_if: format!(
                "{locked}, w AS (DELETE FROM {t} s USING l
                                 WHERE key = $1 AND version = $2 AND {live} RETURNING key),
                 {} SELECT true FROM w",
                removal(&op::REMOVED.to_string())
            ),
            // A live value must be a canonical JSON integer; the sum leaving bigint's range
            // raises numeric_value_out_of_range, which the store reports as NotAnInteger.
            increment: put(
                &format!(
                    "INSERT INTO {t} AS s (key, value, version, expires_at)
                     SELECT $1::bytea, $2::bigint::text, {next}, now() + $3::bigint {MS} FROM l
                     ON CONFLICT (key) DO UPDATE SET
                     value = CASE WHEN {live} THEN (s.value::bigint + $2::bigint)::text
                             ELSE excluded.value END,
                     version = excluded.version,
                     expires_at = CASE WHEN {live} THEN s.expires_at ELSE excluded.expires_at END
                     WHERE NOT {live} OR s.value ~ '^(0|-?[1-9][0-9]*)$'"
                ),
                "value::bigint",
            ),
            gcra: gcra(&locked, &t, &changes, &next, &recorded),
            gcra_peek: format!(
                "SELECT (SELECT value FROM {t} s WHERE key = $1 AND {live}), {NOW_US}"
            ),
            list: format!(
                "SELECT key FROM {t} s
                 WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2)
                   AND ($3::bytea IS NULL OR key > $3) AND {live}
                 ORDER BY key LIMIT $4"
            ),
            // Only rows whose key lock it gets at once: a key being written is left for the
            // next sweep.
            sweep: format!(
                "{feed_locked}, w AS (DELETE FROM {t} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {t}, l WHERE expires_at <= now() AND {try_key_lock}
                     LIMIT $1)) RETURNING key),
                 {} SELECT count(*) FROM w",
                removal(&op::EXPIRED.to_string())
            ),
            trim: format!(
                "WITH d AS (DELETE FROM {changes} WHERE seq IN (
                     SELECT seq FROM {changes} WHERE at < now() - $2::bigint {MS}
                     ORDER BY seq LIMIT $1) RETURNING seq),
                 u AS (UPDATE {meta} SET value = GREATEST(value, (SELECT max(seq) FROM d))
                       WHERE name = 'trimmed' AND EXISTS (SELECT 1 FROM d))
                 SELECT count(*) FROM d"
            ),
            hold: format!("SELECT {hold_fn}($1)"),
            // The last value, read before or after the lock: either way every write that took
            // a number up to it held the lock shared then, and has finished once this holds
            // it. (`is_called` false: nothing taken yet, and the next number is `last_value`.)
            fence: format!(
                "WITH l AS (SELECT pg_advisory_xact_lock({feed_lock}))
                 SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}, l"
            ),
            last_value: format!(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {sequence}"
            ),
            // One snapshot: a trim is seen both in the watermark and in the missing rows.
            read_changes: format!(
                "SELECT m.value,
                        coalesce(pg_sequence_last_value('{gap}'::regclass), 0),
                        c.seq, c.key, c.op, c.value FROM {meta} m
                 LEFT JOIN LATERAL (SELECT seq, key, op, value FROM {changes}
                                    WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3) c
                   ON true
                 WHERE m.name = 'trimmed' ORDER BY c.seq",
                gap = feed_gap.replace('\'', "''")
            ),
            channel,
            meta,
            changes,
            feed_until,
            feed_gap,
            hold_fn,
            notify,
            feed_lock,
            table: t,
            sequence,
            schema_name: schema.to_owned(),
            table_name: table.to_owned(),
        }
    }
}

/// GCRA in one statement, on the server's clock, after core's `gcra_step` (which computes the
/// reply from what this returns): the theoretical arrival time (TAT) is the stored JSON integer
/// of microseconds, with a TTL until it is reached; a request of `cost` passes when
/// `max(TAT, now) + interval × cost − now ≤ interval × burst`, and then stores that sum. Only
/// for `cost ≤ burst` (else nothing passes, and a peek answers). A missing or expired value
/// counts as `now`. The arrival time is read from the row `DO UPDATE` locked, never from the
/// statement's snapshot, which predates the key lock. A denied check rewrites the row as it
/// was (same version, no change recorded): the reply needs the stored time, and `RETURNING`
/// sees only rows it wrote.
fn gcra(locked: &str, t: &str, changes: &str, next: &str, recorded: &str) -> String {
    let live = "(s.expires_at IS NULL OR s.expires_at > now())";
    let step = "$2::bigint * $4::bigint";
    // `now` of this statement, inside `DO UPDATE`, from the row proposed for insertion.
    let now = format!("(excluded.value::bigint - {step})");
    let tat = format!("(CASE WHEN {live} THEN s.value::bigint ELSE 0 END)");
    let new_tat = format!("(GREATEST({tat}, {now}) + {step})");
    let passes = format!("({new_tat} - {now} <= $2::bigint * $3::bigint)");
    format!(
        "{locked}, n AS (SELECT {NOW_US} AS at_us, {next} AS v FROM l),
         w AS (INSERT INTO {t} AS s (key, value, version, expires_at)
               SELECT $1::bytea, (at_us + {step})::text, v,
                      to_timestamp((at_us + {step}) / 1000000.0) FROM n
               ON CONFLICT (key) DO UPDATE SET
                 value = CASE WHEN {passes} THEN {new_tat}::text ELSE s.value END,
                 version = CASE WHEN {passes} THEN excluded.version ELSE s.version END,
                 expires_at = CASE WHEN {passes} THEN to_timestamp({new_tat} / 1000000.0)
                              ELSE s.expires_at END
               WHERE NOT {live} OR s.value ~ '^(0|-?[1-9][0-9]*)$'
               RETURNING key, value, version),
         c AS (INSERT INTO {changes} (seq, key, op, value)
               SELECT w.version, w.key, {put}, w.value FROM w, n
               WHERE w.version = n.v AND {recorded})
         SELECT w.value::bigint, w.version = n.v, n.at_us FROM w, n",
        put = op::PUT
    )
}

/// The `NOTIFY` channel of a table: a name within PostgreSQL's 63 bytes whatever the schema
/// and table are called, the same in every process (FNV-1a, not the std hasher's random
/// keys).
fn channel(schema: &str, table: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.bytes().chain([b'.']).chain(table.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("state_store_{hash:016x}")
}

/// With migration off: the table must be this release's. `Ok(Err(Config))` otherwise.
pub(crate) async fn check(
    client: &Client,
    sql: &Sql,
) -> Result<Result<(), Error>, tokio_postgres::Error> {
    let found: Option<i64> = client
        .query_opt(
            &format!("SELECT value FROM {} WHERE name = 'schema'", sql.meta),
            &[],
        )
        .await
        .map(|row| row.and_then(|row| row.try_get(0).ok()))
        .or_else(|err| {
            // No meta table at all.
            if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                Ok(None)
            } else {
                Err(err)
            }
        })?;
    Ok(match found {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(version) => Err(Error::config(format!(
            "the table {} has schema version {version}, and this release of \
             state-store-postgres needs {SCHEMA_VERSION}: run `migrate()` (or connect with \
             migration on) with the release that matches",
            sql.table
        ))),
        None => Err(Error::config(format!(
            "the table {} does not exist: run `migrate()` (or connect with migration on)",
            sql.table
        ))),
    })
}

/// Creates or upgrades the table, under an advisory lock so that processes starting together
/// take turns. `Ok(Err(Config))`: the table is from a newer release.
pub(crate) async fn migrate(
    client: &mut Client,
    sql: &Sql,
) -> Result<Result<(), Error>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let lock = format!("state-store:{}.{}", sql.schema_name, sql.table_name);
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&lock],
    )
    .await?;
    // CREATE SCHEMA IF NOT EXISTS wants the CREATE privilege even when the schema exists.
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&sql.schema_name],
        )
        .await?
        .is_some();
    if !exists {
        tx.batch_execute(&format!("CREATE SCHEMA \"{}\"", sql.schema_name))
            .await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, value bigint NOT NULL)",
        sql.meta
    ))
    .await?;
    let found: Option<i64> = match tx
        .query_opt(
            &format!("SELECT value FROM {} WHERE name = 'schema'", sql.meta),
            &[],
        )
        .await?
        .map(|row| row.try_get(0))
    {
        None => None,
        Some(Ok(version)) => Some(version),
        Some(Err(_)) => {
            return Ok(Err(Error::config(format!(
                "{} is not this store's meta table (its value column is not a bigint)",
                sql.meta
            ))))
        }
    };
    match found {
        Some(version) if version > SCHEMA_VERSION => {
            return Ok(Err(Error::config(format!(
                "the table {} has schema version {version}, written by a newer release of \
                 state-store-postgres (this one knows {SCHEMA_VERSION}); it is left untouched",
                sql.table
            ))));
        }
        Some(version) => {
            if version < 2 {
                upgrade_to_2(&tx, sql).await?;
            }
        }
        None => {
            create_version_1(&tx, sql).await?;
            upgrade_to_2(&tx, sql).await?;
        }
    }
    tx.commit().await?;
    Ok(Ok(()))
}

/// The table as the first release made it.
async fn create_version_1(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
) -> Result<(), tokio_postgres::Error> {
    // Keys are bytea: any string, compared byte by byte, so a prefix is a range of the
    // primary key. Values are JSON text (not jsonb: that rejects \u0000 and reorders
    // objects).
    tx.batch_execute(&format!(
        "CREATE SEQUENCE IF NOT EXISTS {seq};
         CREATE TABLE IF NOT EXISTS {t} (
             key bytea PRIMARY KEY,
             value text NOT NULL,
             version bigint NOT NULL,
             expires_at timestamptz
         );
         CREATE INDEX IF NOT EXISTS \"{name}_expires_at\" ON {t} (expires_at)
             WHERE expires_at IS NOT NULL;
         INSERT INTO {meta} (name, value) VALUES ('schema', 1);",
        seq = sql.sequence,
        t = sql.table,
        name = sql.table_name,
        meta = sql.meta,
    ))
    .await
}

/// Version 2: the change feed a watch follows. Rows are recorded only while some watch holds
/// the feed open; `trimmed` is the highest change number the sweep has deleted.
async fn upgrade_to_2(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
) -> Result<(), tokio_postgres::Error> {
    let quoted = |name: &str| name.replace('\'', "''");
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {changes} (
             seq bigint PRIMARY KEY,
             key bytea NOT NULL,
             op smallint NOT NULL,
             value text,
             at timestamptz NOT NULL DEFAULT now()
         );
         CREATE SEQUENCE IF NOT EXISTS {until} MINVALUE 0 START 0;
         CREATE SEQUENCE IF NOT EXISTS {gap} MINVALUE 0 START 0;
         INSERT INTO {meta} (name, value) VALUES ('trimmed', 0) ON CONFLICT (name) DO NOTHING;
         -- Under the feed lock held exclusively, no write is between its number and its
         -- commit: after a lapse, the gap mark is a number above every write that found the
         -- feed lapsed; then the hold. Both are sequences, so neither waits for a commit.
         CREATE OR REPLACE FUNCTION {hold}(ms bigint) RETURNS boolean
             LANGUAGE plpgsql VOLATILE AS $f$
         DECLARE held boolean;
         BEGIN
             PERFORM pg_advisory_xact_lock({lock});
             held := coalesce(pg_sequence_last_value('{until_q}'::regclass) > {NOW_MS}, false);
             IF NOT held THEN
                 PERFORM setval('{gap_q}'::regclass, nextval('{seq_q}'::regclass));
             END IF;
             PERFORM setval('{until_q}'::regclass, greatest(
                 coalesce(pg_sequence_last_value('{until_q}'::regclass), 0), {NOW_MS} + ms));
             RETURN held;
         END
         $f$;
         CREATE OR REPLACE FUNCTION {notify}() RETURNS boolean
             LANGUAGE plpgsql VOLATILE COST 10000 AS $f$
         BEGIN
             PERFORM pg_notify('{channel}', '');
             RETURN true;
         END
         $f$;
         UPDATE {meta} SET value = 2 WHERE name = 'schema';",
        changes = sql.changes,
        meta = sql.meta,
        until = sql.feed_until,
        gap = sql.feed_gap,
        hold = sql.hold_fn,
        notify = sql.notify,
        channel = sql.channel,
        lock = sql.feed_lock,
        until_q = quoted(&sql.feed_until),
        gap_q = quoted(&sql.feed_gap),
        seq_q = quoted(&sql.sequence),
    ))
    .await
}
