//! The table, its upgrades, and the SQL of each operation.

use state_store_core::Error;
use tokio_postgres::Client;

/// The schema this release writes. A table with a higher one was written by a newer release
/// and is refused rather than misread.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// Milliseconds as an interval, from a `bigint` parameter (`NULL` stays `NULL`: no deadline).
const MS: &str = "* interval '1 millisecond'";

/// The statements, for one schema and table.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `"schema"."table"`, quoted.
    table: String,
    /// `"schema"."table_meta"`: the schema version.
    meta: String,
    /// `"schema"."table_version"`: versions.
    sequence: String,
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
    /// `(from, below or NULL, after or NULL, limit)` → live keys in byte order.
    pub(crate) list: String,
    /// `(batch)`: deletes up to `batch` expired rows.
    pub(crate) sweep: String,
}

impl Sql {
    /// `schema` and `table` are plain identifiers (checked by the config).
    pub(crate) fn new(schema: &str, table: &str) -> Self {
        let t = format!("\"{schema}\".\"{table}\"");
        let sequence = format!("\"{schema}\".\"{table}_version\"");
        let next = format!("nextval('{}')", sequence.replace('\'', "''"));
        let live = "(s.expires_at IS NULL OR s.expires_at > now())";
        let insert = format!(
            "INSERT INTO {t} AS s (key, value, version, expires_at)
             VALUES ($1, $2, {next}, now() + $3::bigint {MS})"
        );
        let entry = "key, value, version,
                     CEIL(EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::bigint";
        Sql {
            get: format!("SELECT {entry} FROM {t} s WHERE key = ANY($1) AND {live}"),
            get_one: format!("SELECT {entry} FROM {t} s WHERE key = $1 AND {live}"),
            values: format!("SELECT key, value FROM {t} s WHERE key = ANY($1) AND {live}"),
            value_one: format!("SELECT key, value FROM {t} s WHERE key = $1 AND {live}"),
            upsert: format!(
                "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 version = excluded.version, expires_at = excluded.expires_at
                 RETURNING version"
            ),
            upsert_keep_ttl: format!(
                "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 version = excluded.version,
                 expires_at = CASE WHEN {live} THEN s.expires_at ELSE excluded.expires_at END
                 RETURNING version"
            ),
            create: format!(
                "{insert} ON CONFLICT (key) DO UPDATE SET value = excluded.value,
                 version = excluded.version, expires_at = excluded.expires_at
                 WHERE NOT {live}
                 RETURNING version"
            ),
            update: format!(
                "UPDATE {t} s SET value = $2, version = {next},
                 expires_at = CASE WHEN $5 THEN s.expires_at ELSE now() + $3::bigint {MS} END
                 WHERE key = $1 AND version = $4 AND {live}
                 RETURNING version"
            ),
            remove: format!("DELETE FROM {t} s WHERE key = $1 RETURNING {live}"),
            remove_if: format!(
                "DELETE FROM {t} s WHERE key = $1 AND version = $2 AND {live} RETURNING true"
            ),
            // A live value must be a canonical JSON integer; the sum leaving bigint's range
            // raises numeric_value_out_of_range, which the store reports as NotAnInteger.
            increment: format!(
                "INSERT INTO {t} AS s (key, value, version, expires_at)
                 VALUES ($1, $2::bigint::text, {next}, now() + $3::bigint {MS})
                 ON CONFLICT (key) DO UPDATE SET
                 value = CASE WHEN {live} THEN (s.value::bigint + $2::bigint)::text
                         ELSE excluded.value END,
                 version = excluded.version,
                 expires_at = CASE WHEN {live} THEN s.expires_at ELSE excluded.expires_at END
                 WHERE NOT {live} OR s.value ~ '^(0|-?[1-9][0-9]*)$'
                 RETURNING value::bigint"
            ),
            list: format!(
                "SELECT key FROM {t} s
                 WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2)
                   AND ($3::bytea IS NULL OR key > $3) AND {live}
                 ORDER BY key LIMIT $4"
            ),
            sweep: format!(
                "DELETE FROM {t} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {t} WHERE expires_at <= now() LIMIT $1))"
            ),
            meta: format!("\"{schema}\".\"{table}_meta\""),
            table: t,
            sequence,
            schema_name: schema.to_owned(),
            table_name: table.to_owned(),
        }
    }
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
        Some(_) => {}
        None => {
            // Keys are bytea: any string, compared byte by byte, so a prefix is a range of
            // the primary key. Values are JSON text (not jsonb: that rejects \u0000 and
            // reorders objects).
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
                 INSERT INTO {meta} (name, value) VALUES ('schema', {SCHEMA_VERSION});",
                seq = sql.sequence,
                t = sql.table,
                name = sql.table_name,
                meta = sql.meta,
            ))
            .await?;
        }
    }
    tx.commit().await?;
    Ok(Ok(()))
}
