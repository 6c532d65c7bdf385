//! `state-store`: read, write, list and watch state in any state-store backend, by URL,
//! through the same handle and prefix rules as the services that use it.
//!
//! ```text
//! state-store --store sqlite://./state.db ls
//! state-store --store redis://127.0.0.1:6379 --prefix billing get invoice:7
//! echo '{"status":"done"}' | state-store set job:42
//! state-store watch session:          # one line per change, until Ctrl-C
//! state-store cp --from sqlite://./state.db --to redis://127.0.0.1:6379   # values and TTLs
//! state-store export > state.jsonl && state-store --store nats://… import -i state.jsonl
//! ```
//!
//! Exit codes: 0 success; 1 a name `get` asked for is missing, or `cp`, `export` or `import`
//! skipped a value that is not JSON (named on stderr); 2 bad usage, URL or JSON; 3 the store
//! failed (unreachable, refused, unsupported).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

mod transfer;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use state_store::{
    report, Error, ListOptions, RemoveCause, Selector, SetOptions, StateStore, StoreConfig,
    WatchEvent, WatchStart, WatchSupport,
};

/// Read, write, list and watch state in a state-store backend.
#[derive(Debug, Parser)]
#[command(name = "state-store", version, about)]
struct Cli {
    /// The store: `sqlite://path`, `memory://`, `redis://…`, `redis-cluster://…`, `nats://…`,
    /// `dapr://host:port/COMPONENT`.
    #[arg(
        long,
        env = "STATE_STORE_URL",
        // `--help` would print the variable's value, password and all.
        hide_env_values = true,
        default_value = "sqlite://./state.db",
        global = true
    )]
    store: String,
    /// The key prefix the service uses (`tenant-7:sessions`): names are read and written
    /// under it, as the service's handle would.
    #[arg(long, default_value = "", global = true)]
    prefix: String,
    /// JSON output (one JSON document per line), for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the values of names (exit code 1 when one is missing).
    Get {
        /// The names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write a JSON value (from the argument, or from stdin when omitted).
    Set {
        /// The name.
        name: String,
        /// The value as JSON text.
        value: Option<String>,
        /// Expire after this many seconds.
        #[arg(long)]
        ttl: Option<f64>,
    },
    /// Remove names.
    Rm {
        /// The names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Add to an integer counter and print the new value.
    Incr {
        /// The name.
        name: String,
        /// What to add.
        #[arg(default_value_t = 1, allow_negative_numbers = true)]
        delta: i64,
    },
    /// List names starting with a prefix.
    Ls {
        /// Names starting with this (default: every name).
        #[arg(id = "name_prefix", value_name = "PREFIX", default_value = "")]
        prefix: String,
    },
    /// Print every change of names starting with a prefix until interrupted.
    Watch {
        /// Names starting with this (default: every name).
        #[arg(id = "name_prefix", value_name = "PREFIX", default_value = "")]
        prefix: String,
    },
    /// Copy every name under a prefix, with its value and the time it has left, to another
    /// store (`--prefix` applies to both). Idempotent: run it again after an interruption.
    /// Names whose value is not JSON are reported and skipped (exit code 1).
    Cp {
        /// The store to copy from (default: `--store`).
        #[arg(long, value_name = "URL")]
        from: Option<String>,
        /// The store to copy to.
        #[arg(long, value_name = "URL")]
        to: String,
        /// Names starting with this (default: every name).
        #[arg(id = "name_prefix", value_name = "PREFIX", default_value = "")]
        prefix: String,
        /// Read and count, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave names the destination already has (create-if-absent): a rerun copies only
        /// what is missing.
        #[arg(long)]
        skip_existing: bool,
    },
    /// Write every name under a prefix as JSON Lines: `{"name", "value", "ttl_ms"}` (the time
    /// left when read; absent without a TTL).
    Export {
        /// Names starting with this (default: every name).
        #[arg(id = "name_prefix", value_name = "PREFIX", default_value = "")]
        prefix: String,
        /// Write to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Write every line of an export (TTLs start again at import). Lines that do not parse
    /// are reported with their number and skipped (exit code 1).
    Import {
        /// Read this file instead of stdin.
        #[arg(long, short, value_name = "FILE")]
        input: Option<std::path::PathBuf>,
        /// Read and count, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave names the store already has (create-if-absent).
        #[arg(long)]
        skip_existing: bool,
    },
    /// The backend and what it supports; with `--count`, how many names it holds under the
    /// prefix.
    Info {
        /// Count the names: lists every key under the prefix (a full scan of a store without
        /// one), with progress on a terminal's stderr.
        #[arg(long)]
        count: bool,
    },
}

/// Counts the names under the handle's prefix, a page at a time, showing the count so far on
/// stderr when it is a terminal. (Redis pages may repeat a key: names are counted once.)
async fn count_names(store: &StateStore) -> Result<usize, Error> {
    use std::io::{IsTerminal, Write};

    let progress = std::io::stderr().is_terminal();
    let mut seen = std::collections::HashSet::new();
    let mut options = ListOptions::new().limit(state_store::MAX_PAGE);
    loop {
        let page = store.list("", options.clone()).await?;
        seen.extend(page.names);
        if progress {
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "\rcounting names: {}", seen.len());
            let _ = stderr.flush();
        }
        match page.next {
            Some(next) => options = options.cursor(next),
            None => break,
        }
    }
    if progress {
        eprintln!();
    }
    Ok(seen.len())
}

/// A failure with its exit code.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match err {
            Error::Config { .. }
            | Error::InvalidKey { .. }
            | Error::InvalidTtl { .. }
            | Error::ValueTooLarge { .. }
            | Error::Serialization { .. } => 2,
            _ => 3,
        };
        Failure {
            code,
            message: report(&err),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("state-store: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let from = match &cli.command {
        Command::Cp {
            from: Some(url), ..
        } => url,
        _ => &cli.store,
    };
    let store = open(from, &cli.prefix).await?;
    let outcome = command(&store, &cli).await;
    let _ = store.destroy().await;
    outcome
}

async fn open(url: &str, prefix: &str) -> Result<StateStore, Failure> {
    let config = StoreConfig::default().with_prefix(prefix);
    Ok(state_store::open_with(url, config).await?)
}

async fn command(store: &StateStore, cli: &Cli) -> Result<u8, Failure> {
    match &cli.command {
        Command::Get { names } => {
            let state = store.get_state(names).await?;
            let mut missing = 0;
            for name in names {
                match &state[name] {
                    Some(value) if cli.json => print_json(&json!({ "name": name, "value": value })),
                    Some(value) if names.len() == 1 => println!("{value}"),
                    Some(value) => println!("{name}\t{value}"),
                    None => {
                        missing += 1;
                        if cli.json {
                            print_json(&json!({ "name": name, "value": null, "missing": true }));
                        } else {
                            eprintln!("state-store: {name:?} is not stored");
                        }
                    }
                }
            }
            Ok(u8::from(missing > 0))
        }
        Command::Set { name, value, ttl } => {
            let text = match value {
                Some(text) => text.clone(),
                None => {
                    let mut text = String::new();
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .map_err(|e| Failure::usage(format!("reading stdin: {e}")))?;
                    text
                }
            };
            let value: Value = serde_json::from_str(&text).map_err(|e| {
                Failure::usage(format!(
                    "the value is not JSON (line {}, column {}); quote strings: '\"text\"'",
                    e.line(),
                    e.column()
                ))
            })?;
            let mut options = SetOptions::new();
            if let Some(secs) = ttl {
                let ttl = Duration::try_from_secs_f64(*secs)
                    .map_err(|_| Failure::usage("--ttl takes a positive number of seconds"))?;
                options = options.ttl(ttl);
            }
            store.set_with(name, &value, options).await?;
            if cli.json {
                print_json(&json!({ "name": name, "written": true }));
            }
            Ok(0)
        }
        Command::Rm { names } => {
            for name in names {
                store.remove_state(name).await?;
            }
            Ok(0)
        }
        Command::Incr { name, delta } => {
            let value = store.increment(name, *delta, None).await?;
            if cli.json {
                print_json(&json!({ "name": name, "value": value }));
            } else {
                println!("{value}");
            }
            Ok(0)
        }
        Command::Ls { prefix } => {
            let mut options = ListOptions::new();
            loop {
                let page = store.list(prefix, options.clone()).await?;
                for name in page.names {
                    if cli.json {
                        print_json(&json!({ "name": name }));
                    } else {
                        println!("{name}");
                    }
                }
                match page.next {
                    Some(next) => options = options.cursor(next),
                    None => return Ok(0),
                }
            }
        }
        Command::Watch { prefix } => watch(store, prefix, cli.json).await,
        Command::Cp {
            to,
            prefix,
            dry_run,
            skip_existing,
            ..
        } => {
            let to = open(to, &cli.prefix).await?;
            let writer = transfer::Writer {
                to: &to,
                dry_run: *dry_run,
                skip_existing: *skip_existing,
            };
            let outcome = transfer::copy(store, prefix, &writer).await;
            let _ = to.destroy().await;
            outcome
        }
        Command::Export { prefix, output } => match output {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
                transfer::export(store, prefix, &mut std::io::BufWriter::new(file)).await
            }
            None => transfer::export(store, prefix, &mut std::io::stdout().lock()).await,
        },
        Command::Import {
            input,
            dry_run,
            skip_existing,
        } => {
            let writer = transfer::Writer {
                to: store,
                dry_run: *dry_run,
                skip_existing: *skip_existing,
            };
            match input {
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
                    transfer::import(&mut std::io::BufReader::new(file), &writer).await
                }
                None => transfer::import(&mut std::io::stdin().lock(), &writer).await,
            }
        }
        Command::Info { count } => {
            let caps = store.capabilities();
            let names = if *count && caps.list {
                Some(count_names(store).await?)
            } else {
                None
            };
            let watch = match caps.watch {
                WatchSupport::Resumable => "resumable",
                WatchSupport::Compacted => "compacted",
                WatchSupport::Lossy => "lossy",
                _ => "no",
            };
            let info = json!({
                "backend": store.name(),
                "prefix": store.config().key_prefix,
                "names": names,
                "capabilities": {
                    "ttl": caps.ttl,
                    "compare_and_set": caps.conditional,
                    "increment": caps.increment,
                    "batch_get": caps.batch_get,
                    "persistent": caps.persistent,
                    "leases": caps.leases(),
                    "list": caps.list,
                    "watch": watch,
                    "max_key_len": caps.max_key_len,
                    "max_value_len": caps.max_value_len,
                },
            });
            if cli.json {
                print_json(&info);
            } else {
                println!("backend          {}", store.name());
                println!("prefix           {:?}", store.config().key_prefix);
                match names {
                    Some(n) => println!("names            {n}"),
                    None if !caps.list => println!("names            (this backend cannot list)"),
                    None => println!("names            (not counted: info --count lists them all)"),
                }
                for (feature, on) in [
                    ("ttl", caps.ttl),
                    ("compare-and-set", caps.conditional),
                    ("increment", caps.increment),
                    ("batch get", caps.batch_get),
                    ("persistent", caps.persistent),
                    ("leases", caps.leases()),
                    ("list", caps.list),
                ] {
                    println!("{feature:<16} {}", if on { "yes" } else { "no" });
                }
                println!("watch            {watch}");
            }
            Ok(0)
        }
    }
}

async fn watch(store: &StateStore, prefix: &str, json_lines: bool) -> Result<u8, Failure> {
    let mut events = store
        .watch(Selector::Prefix(prefix.to_owned()), WatchStart::Now)
        .await?;
    if !json_lines {
        eprintln!("watching {prefix:?}; Ctrl-C to stop");
    }
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        let Some(event) = event else {
            return Ok(0);
        };
        let line = match event? {
            WatchEvent::Put {
                name,
                value,
                version,
            } => {
                if json_lines {
                    json!({ "event": "put", "name": name, "value": value, "version": version.as_str() })
                        .to_string()
                } else {
                    format!("put\t{name}\t{value}")
                }
            }
            WatchEvent::Removed { name, cause, .. } => {
                let cause = if cause == RemoveCause::Expired {
                    "expired"
                } else {
                    "removed"
                };
                if json_lines {
                    json!({ "event": cause, "name": name }).to_string()
                } else {
                    format!("{cause}\t{name}")
                }
            }
            WatchEvent::Resync { reason } => {
                if json_lines {
                    json!({ "event": "resync", "reason": reason }).to_string()
                } else {
                    format!("resync\t{reason}")
                }
            }
            _ => continue,
        };
        println!("{line}");
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}
