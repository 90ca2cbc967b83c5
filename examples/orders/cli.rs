//! The command line of the `orders` example, parsed by hand: four flags do not need a
//! parser crate, and the messages stay under our control.

use std::time::Duration;

use crate::store::StoreUrl;

/// What `--help` prints.
pub const USAGE: &str = "\
Usage: orders [--addr HOST:PORT] [--store URL] [--work-ms N] [--lease-ms N]

An order service whose `POST /orders` is safe to retry with an `Idempotency-Key`.

Options:
  --addr HOST:PORT  where to listen [default: 127.0.0.1:3000]
  --store URL       the idempotency store: `memory`, `redis://HOST:PORT` (feature `redis`)
                    or `postgres://USER@HOST:PORT/DB` (feature `postgres`) [default: memory]
  --work-ms N       milliseconds each order creation spends in its payment call [default: 0]
  --lease-ms N      milliseconds an in-flight claim outlives a crashed owner [default: 60000]
  -h, --help        print this help

Logging follows RUST_LOG (default: info).";

/// The settings of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `HOST:PORT` to listen on.
    pub addr: String,
    /// The idempotency store.
    pub store: StoreUrl,
    /// Time spent in the simulated payment call.
    pub work: Duration,
    /// The app-wide in-flight lease.
    pub lease: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:3000".to_owned(),
            store: StoreUrl::Memory,
            work: Duration::ZERO,
            lease: Duration::from_secs(60),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    Help,
}

/// Parses the arguments after the program name; `--flag value` and `--flag=value`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut options = Options::default();
    let mut seen: Vec<&'static str> = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let flag: &'static str = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--addr" => "--addr",
            "--store" => "--store",
            "--work-ms" => "--work-ms",
            "--lease-ms" => "--lease-ms",
            other if other.starts_with('-') => {
                return Err(format!("unknown option `{other}`"));
            }
            other => return Err(format!("unexpected argument `{other}`")),
        };
        if seen.contains(&flag) {
            return Err(format!("`{flag}` given more than once"));
        }
        seen.push(flag);
        let value = match inline {
            Some(value) => value.to_owned(),
            None => args
                .next()
                .ok_or_else(|| format!("`{flag}` needs a value"))?,
        };
        match flag {
            "--addr" => options.addr = parse_addr(&value)?,
            "--store" => options.store = StoreUrl::parse(&value)?,
            "--work-ms" => options.work = millis(flag, &value, 0)?,
            _ => options.lease = millis(flag, &value, 1)?,
        }
    }
    Ok(Command::Run(options))
}

fn parse_addr(value: &str) -> Result<String, String> {
    let invalid = || format!("`--addr` must be HOST:PORT (such as 127.0.0.1:3000), got `{value}`");
    let (host, port) = value.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok(value.to_owned())
}

fn millis(flag: &str, value: &str, min: u64) -> Result<Duration, String> {
    match value.parse::<u64>() {
        Ok(ms) if ms >= min => Ok(Duration::from_millis(ms)),
        _ => Err(format!(
            "`{flag}` must be a whole number of milliseconds, at least {min}, got `{value}`"
        )),
    }
}
