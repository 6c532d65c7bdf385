//! Moving state between stores: `cp` from one store to another, `export` to JSON Lines and
//! `import` from them. Every value travels with the time it has left; names whose value is
//! not JSON are reported by name and skipped, never dropped silently.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use serde_json::{json, Value};
use state_store::{report, Error, ListOptions, SetMode, SetOptions, StateStore, MAX_PAGE, MAX_TTL};

use crate::Failure;

/// What a run did, printed to stderr at the end.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Written (or, in a dry run, that would be).
    written: usize,
    /// Of those, with a TTL.
    with_ttl: usize,
    /// Left alone: the destination had the name (`--skip-existing`).
    existing: usize,
    /// Removed or expired between the listing and the read.
    gone: usize,
    /// Not copied: a value that is not JSON, or a line that does not parse.
    skipped: usize,
}

impl Tally {
    /// The summary line, and the exit code: 1 when anything was skipped.
    pub(crate) fn finish(&self, verb: &str, dry_run: bool) -> u8 {
        let mut line = format!(
            "{} {} names ({} with a TTL)",
            if dry_run {
                format!("would have {verb}")
            } else {
                verb.to_owned()
            },
            self.written,
            self.with_ttl
        );
        for (count, what) in [
            (self.existing, "already at the destination"),
            (self.gone, "gone before they were read"),
            (self.skipped, "skipped (see above)"),
        ] {
            if count > 0 {
                line.push_str(&format!(", {count} {what}"));
            }
        }
        eprintln!("state-store: {line}");
        u8::from(self.skipped > 0)
    }
}

/// A count on a terminal's stderr, redrawn in place; nothing when stderr is not a terminal.
struct Progress {
    on: bool,
    what: &'static str,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        Progress {
            on: std::io::stderr().is_terminal(),
            what,
        }
    }

    fn show(&self, n: usize) {
        if self.on {
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\r{}: {n}", self.what);
            let _ = stderr.flush();
        }
    }

    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// One value on its way: what `export` writes per line and `import` reads.
struct Record {
    name: String,
    value: Value,
    ttl: Option<Duration>,
}

impl Record {
    fn to_line(&self) -> String {
        let mut line = json!({ "name": self.name, "value": self.value });
        if let Some(ttl) = self.ttl {
            line["ttl_ms"] = json!(millis(ttl));
        }
        line.to_string()
    }

    fn from_line(line: &str) -> Result<Self, String> {
        let mut parsed: Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON (column {})", e.column()))?;
        let name = parsed
            .get("name")
            .and_then(Value::as_str)
            .ok_or("no \"name\" string")?
            .to_owned();
        let value = parsed
            .get_mut("value")
            .map(Value::take)
            .ok_or_else(|| format!("{name:?}: no \"value\""))?;
        let ttl = match parsed.get("ttl_ms") {
            None | Some(Value::Null) => None,
            // Past the longest TTL a store takes: the longest.
            Some(ms) => Some(
                Duration::from_millis(ms.as_u64().filter(|&ms| ms > 0).ok_or_else(|| {
                    format!("{name:?}: \"ttl_ms\" is not a positive whole number")
                })?)
                .min(MAX_TTL),
            ),
        };
        Ok(Record { name, value, ttl })
    }
}

/// Milliseconds, rounded up: a value with a moment left keeps a TTL, not none.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// Calls `each` with every value under `prefix` in `from` (each name once), a listing page at
/// a time; values gone before they are read are counted, values that are not JSON reported
/// and counted.
async fn for_each_value<F>(
    from: &StateStore,
    prefix: &str,
    tally: &mut Tally,
    mut each: F,
) -> Result<(), Failure>
where
    F: AsyncFnMut(Record, &mut Tally) -> Result<(), Failure>,
{
    // Redis pages may repeat a name: each is copied once.
    let mut seen = HashSet::new();
    let mut options = ListOptions::new().limit(MAX_PAGE);
    loop {
        let page = from.list(prefix, options.clone()).await?;
        for name in page.names {
            if !seen.insert(name.clone()) {
                continue;
            }
            match from.get_entry(&name).await {
                // No time left: it expired as it was read.
                Ok(Some(entry)) if entry.expires_in.is_some_and(|left| left.is_zero()) => {
                    tally.gone += 1;
                }
                Ok(Some(entry)) => {
                    let record = Record {
                        name,
                        value: entry.value,
                        ttl: entry.expires_in.map(|left| left.min(MAX_TTL)),
                    };
                    each(record, tally).await?;
                }
                Ok(None) => tally.gone += 1,
                Err(err @ Error::Decode { .. }) => {
                    eprintln!("state-store: skipped {name:?}: {}", report(&err));
                    tally.skipped += 1;
                }
                Err(err) => return Err(err.into()),
            }
        }
        match page.next {
            Some(next) => options = options.cursor(next),
            None => return Ok(()),
        }
    }
}

/// Where and how records are written.
pub(crate) struct Writer<'a> {
    pub(crate) to: &'a StateStore,
    pub(crate) dry_run: bool,
    pub(crate) skip_existing: bool,
}

impl Writer<'_> {
    /// Writes `record` (create-if-absent with `skip_existing`), keeping its TTL.
    async fn write(&self, record: &Record, tally: &mut Tally) -> Result<(), Failure> {
        if record.ttl.is_some() && !self.to.capabilities().ttl {
            return Err(Failure::usage(format!(
                "{:?} has a TTL, and the destination ({}) cannot expire values: nothing after it was written",
                record.name,
                self.to.name()
            )));
        }
        if !self.dry_run {
            let mut options = SetOptions::new();
            if let Some(ttl) = record.ttl {
                options = options.ttl(ttl);
            }
            if self.skip_existing {
                options = options.mode(SetMode::Create);
            }
            match self.to.set_with(&record.name, &record.value, options).await {
                Ok(_) => {}
                Err(Error::Conflict { .. }) if self.skip_existing => {
                    tally.existing += 1;
                    return Ok(());
                }
                Err(err) => return Err(err.into()),
            }
        }
        tally.written += 1;
        tally.with_ttl += usize::from(record.ttl.is_some());
        Ok(())
    }
}

/// `cp`: every value under `prefix` in `from`, written to the writer's store.
pub(crate) async fn copy(
    from: &StateStore,
    prefix: &str,
    writer: &Writer<'_>,
) -> Result<u8, Failure> {
    let mut tally = Tally::default();
    let progress = Progress::new("copied");
    for_each_value(from, prefix, &mut tally, async |record, tally| {
        writer.write(&record, tally).await?;
        progress.show(tally.written);
        Ok(())
    })
    .await?;
    progress.done();
    Ok(tally.finish("copied", writer.dry_run))
}

/// `export`: every value under `prefix` as a JSON line on `out`.
pub(crate) async fn export(
    from: &StateStore,
    prefix: &str,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let mut tally = Tally::default();
    let progress = Progress::new("exported");
    for_each_value(from, prefix, &mut tally, async |record, tally| {
        writeln!(out, "{}", record.to_line())
            .map_err(|e| Failure::usage(format!("writing the export: {e}")))?;
        tally.written += 1;
        tally.with_ttl += usize::from(record.ttl.is_some());
        progress.show(tally.written);
        Ok(())
    })
    .await?;
    out.flush()
        .map_err(|e| Failure::usage(format!("writing the export: {e}")))?;
    progress.done();
    Ok(tally.finish("exported", false))
}

/// `import`: every line of `input` written with the writer; a line that does not parse is
/// reported with its number and skipped.
pub(crate) async fn import(input: &mut dyn BufRead, writer: &Writer<'_>) -> Result<u8, Failure> {
    let mut tally = Tally::default();
    let progress = Progress::new("imported");
    for (number, line) in input.lines().enumerate() {
        let line = line.map_err(|e| Failure::usage(format!("reading the import: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match Record::from_line(&line) {
            Ok(record) => writer.write(&record, &mut tally).await?,
            Err(why) => {
                eprintln!("state-store: skipped line {}: {why}", number + 1);
                tally.skipped += 1;
            }
        }
        progress.show(tally.written);
    }
    progress.done();
    Ok(tally.finish("imported", writer.dry_run))
}

#[cfg(test)]
mod tests {
    use super::{millis, Record};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn lines_round_trip_and_bad_ones_say_why() {
        let record = Record {
            name: "a \"b\"\n".to_owned(),
            value: json!({"x": [1, "é"]}),
            ttl: Some(Duration::from_micros(1500)),
        };
        let line = record.to_line();
        let back = Record::from_line(&line).expect("parses");
        assert_eq!(back.name, record.name);
        assert_eq!(back.value, record.value);
        assert_eq!(back.ttl, Some(Duration::from_millis(2)));
        let plain = Record::from_line(r#"{"name":"n","value":null}"#).expect("parses");
        assert_eq!((plain.value, plain.ttl), (json!(null), None));
        for bad in [
            "{",
            r#"{"value":1}"#,
            r#"{"name":"n"}"#,
            r#"{"name":"n","value":1,"ttl_ms":0}"#,
            r#"{"name":"n","value":1,"ttl_ms":-5}"#,
            r#"{"name":7,"value":1}"#,
        ] {
            assert!(Record::from_line(bad).is_err(), "{bad}");
        }
        assert_eq!(millis(Duration::from_nanos(1)), 1);
    }
}
