//! `chatgw admin`: the operator's client of a running server's admin API
//! (docs/admin-api.md). Tables for people by default, `--json` for scripts.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

/// Flags of `chatgw admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server's base URL.
    #[arg(long, env = "CHATGW_URL", default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// The admin token (printed by the server's first start).
    #[arg(long, env = "CHATGW_ADMIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Figures per shard: connections, messages/s, queues, storage.
    Stats,
    /// Connected devices, a page at a time (or --all).
    Conns {
        /// Connections per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Where to start: the `next` cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Every page, one after the other.
        #[arg(long)]
        all: bool,
    },
    /// Disconnect a user's devices (close 1008); they may reconnect.
    Kick {
        /// The user.
        username: String,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Disable an account (it cannot log in or connect; it is kicked) or
    /// enable it again.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// The banned words a message may not hold.
    BannedWords {
        #[command(subcommand)]
        action: BannedAction,
    },
    /// Push records waiting in each shard's outbox; `dead` lists those the
    /// webhook refused for good, `retry` puts them back.
    Outbox {
        #[command(subcommand)]
        action: Option<OutboxAction>,
    },
    /// Flush and compact the whole store, and wait until it is done: what
    /// was overwritten or deleted (a deleted message's text) is then gone
    /// from the files.
    Compact,
    /// Live figures, redrawn every second until interrupted.
    Top {
        /// Stop after this many redraws.
        #[arg(long)]
        iterations: Option<u64>,
        /// Milliseconds between redraws.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxAction {
    /// Pushes the webhook refused for good (a 4xx), per shard.
    Dead {
        /// At most this many per shard (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Puts the dead pushes back into the outbox, to be sent again.
    Retry,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Disable an account and kick its devices.
    Disable {
        /// The user.
        username: String,
    },
    /// Enable an account again.
    Enable {
        /// The user.
        username: String,
    },
}

#[derive(Debug, Subcommand)]
enum BannedAction {
    /// The list in force.
    List,
    /// Replace the whole list.
    Set {
        /// Words or phrases (quote a phrase).
        words: Vec<String>,
    },
    /// Add entries.
    Add {
        /// Words or phrases.
        #[arg(required = true)]
        words: Vec<String>,
    },
    /// Remove entries.
    Remove {
        /// Words or phrases.
        #[arg(required = true)]
        words: Vec<String>,
    },
}

/// The admin API over HTTP.
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let token = token.ok_or_else(|| anyhow!("no admin token: pass --token or set CHATGW_ADMIN_TOKEN"))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client { agent, base: url.trim_end_matches('/').to_string(), token })
    }

    /// One call; a refusal or an unreachable server is an error for people.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/admin/v1/{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("POST", Some(body)) => self.agent.post(&url).header("Authorization", &auth).send_json(body),
            ("POST", None) => self.agent.post(&url).header("Authorization", &auth).send_empty(),
            ("PUT", Some(body)) => self.agent.put(&url).header("Authorization", &auth).send_json(body),
            ("PATCH", Some(body)) => self.agent.patch(&url).header("Authorization", &auth).send_json(body),
            (method, _) => bail!("no {method} call in this client"),
        };
        let mut response = result.map_err(|error| anyhow!("cannot reach the server at {}: {error}", self.base))?;
        let status = response.status().as_u16();
        let answer: Value = response.body_mut().read_json().unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        let code = answer["error"]["code"].as_str().unwrap_or("unknown");
        let message = answer["error"]["message"].as_str().unwrap_or("no message");
        match status {
            401 => bail!("the server refused the admin token (401 {code}): {message}"),
            403 => bail!("that token is not the admin token (403 {code}): {message}"),
            _ => bail!("{method} {path} failed: {status} {code}: {message}"),
        }
    }
}

/// Runs `chatgw admin`.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.url, args.token)?;
    let json = args.json;
    match args.command {
        AdminCommand::Stats => {
            let stats = client.call("GET", "stats", None)?;
            print(json, &stats, || stats_table(&stats));
        }
        AdminCommand::Conns { limit, cursor, all } => {
            let mut cursor = cursor;
            loop {
                let mut path = format!("connections?limit={limit}");
                if let Some(cursor) = &cursor {
                    path.push_str(&format!("&cursor={cursor}"));
                }
                let page = client.call("GET", &path, None)?;
                print(json, &page, || conns_table(&page));
                cursor = page["next_cursor"].as_str().map(str::to_string);
                match (&cursor, all) {
                    (Some(_), true) => continue,
                    (Some(next), false) if !json => println!("more: --cursor {next}"),
                    _ => {}
                }
                break;
            }
        }
        AdminCommand::Kick { username, device } => {
            let answer = client.call("POST", "kick", Some(json!({ "username": username, "device": device })))?;
            print(json, &answer, || format!("kicked {} connection(s) of {username}", answer["kicked"]));
        }
        AdminCommand::User { action } => {
            let (username, verb) = match &action {
                UserAction::Disable { username } => (username, "disable"),
                UserAction::Enable { username } => (username, "enable"),
            };
            let answer = client.call("POST", &format!("users/{username}/{verb}"), None)?;
            print(json, &answer, || {
                let state = if answer["disabled"] == true { "disabled" } else { "enabled" };
                format!("{username} is {state} (kicked {} connection(s))", answer["kicked"])
            });
        }
        AdminCommand::BannedWords { action } => {
            let answer = match action {
                BannedAction::List => client.call("GET", "banned-words", None)?,
                BannedAction::Set { words } => client.call("PUT", "banned-words", Some(json!({ "words": words })))?,
                BannedAction::Add { words } => client.call("PATCH", "banned-words", Some(json!({ "add": words })))?,
                BannedAction::Remove { words } => {
                    client.call("PATCH", "banned-words", Some(json!({ "remove": words })))?
                }
            };
            print(json, &answer, || {
                let words: Vec<&str> =
                    answer["words"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                format!(
                    "banned words (version {}): {}",
                    answer["version"],
                    if words.is_empty() { "none".to_string() } else { words.join(", ") }
                )
            });
        }
        AdminCommand::Outbox { action: Some(OutboxAction::Dead { limit }) } => {
            let answer = client.call("GET", &format!("outbox/dead?limit={limit}"), None)?;
            print(json, &answer, || {
                let mut table = table(&["shard", "push", "user", "message", "status", "failed at"]);
                for dead in answer["dead"].as_array().into_iter().flatten() {
                    table.add_row(vec![
                        dead["shard"].to_string(),
                        text(&dead["push_id"]),
                        text(&dead["username"]),
                        text(&dead["message_id"]),
                        dead["status"].to_string(),
                        dead["failed_at"].to_string(),
                    ]);
                }
                format!("{table}\n{} dead push(es)", answer["dead"].as_array().map_or(0, Vec::len))
            });
        }
        AdminCommand::Outbox { action: Some(OutboxAction::Retry) } => {
            let answer = client.call("POST", "outbox/dead/retry", None)?;
            print(json, &answer, || format!("{} dead push(es) back in the outbox", answer["retried"]));
        }
        AdminCommand::Outbox { action: None } => {
            let answer = client.call("GET", "outbox", None)?;
            print(json, &answer, || {
                let mut table = table(&["shard", "waiting pushes"]);
                for shard in answer["shards"].as_array().into_iter().flatten() {
                    table.add_row(vec![shard["shard"].to_string(), shard["depth"].to_string()]);
                }
                format!("{table}\ntotal: {}", answer["depth"])
            });
        }
        AdminCommand::Compact => {
            client.call("POST", "compact", None)?;
            let status = loop {
                let status = client.call("GET", "compact", None)?;
                if status["running"] == false {
                    break status;
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            if status["last"]["ok"] != true {
                bail!("the compaction failed: {}", status["last"]["error"]);
            }
            print(json, &status, || format!("compacted in {} ms", status["last"]["took_ms"]));
        }
        AdminCommand::Top { iterations, interval_ms } => top(&client, json, iterations, interval_ms)?,
    }
    Ok(())
}

fn print(json: bool, value: &Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header.to_vec());
    table
}

fn text(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_string)
}

fn mib(bytes: &Value) -> String {
    format!("{:.1}", bytes.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0))
}

fn rate(value: &Value) -> String {
    format!("{:.0}", value.as_f64().unwrap_or(0.0))
}

fn p99(stats: &Value) -> String {
    match stats["fan_out_p99_s"].as_f64() {
        Some(seconds) if seconds.is_finite() => format!("≤ {:.2} ms", seconds * 1000.0),
        Some(_) => "> 5 s".to_string(),
        None => "-".to_string(),
    }
}

fn stats_table(stats: &Value) -> String {
    let mut table = table(&[
        "shard",
        "conns",
        "users",
        "msgs/s",
        "deliv/s",
        "stored",
        "delivered",
        "in queue",
        "pending",
        "commit q",
        "sst MiB",
        "memtable MiB",
        "outbox",
    ]);
    for shard in stats["shards"].as_array().into_iter().flatten() {
        table.add_row(vec![
            shard["shard"].to_string(),
            shard["connections"].to_string(),
            shard["users_connected"].to_string(),
            rate(&shard["messages_per_s"]),
            rate(&shard["deliveries_per_s"]),
            shard["messages_stored"].to_string(),
            shard["deliveries"].to_string(),
            shard["inbound_queue_depth"].to_string(),
            shard["requests_pending"].to_string(),
            shard["commit_queue"].to_string(),
            mib(&shard["storage_sst_bytes"]),
            mib(&shard["storage_memtable_bytes"]),
            shard["outbox_depth"].to_string(),
        ]);
    }
    format!(
        "node {}  up {} s  RSS {} MiB  load {:.2}  fan-out p99 {}\n{table}",
        stats["node"].as_str().unwrap_or("?"),
        stats["uptime_s"],
        mib(&stats["rss_bytes"]),
        stats["load"].as_f64().unwrap_or(0.0),
        p99(stats),
    )
}

fn conns_table(page: &Value) -> String {
    let mut table = table(&["user", "device", "shard", "remote", "connected at", "last active"]);
    for conn in page["connections"].as_array().into_iter().flatten() {
        table.add_row(vec![
            conn["username"].as_str().unwrap_or("?").to_string(),
            conn["device"].as_str().unwrap_or("?").to_string(),
            conn["shard"].to_string(),
            conn["remote_addr"].as_str().unwrap_or("?").to_string(),
            conn["connected_at"].to_string(),
            conn["last_active_at"].to_string(),
        ]);
    }
    table.to_string()
}

fn sum(stats: &Value, field: &str) -> f64 {
    stats["shards"].as_array().into_iter().flatten().filter_map(|shard| shard[field].as_f64()).sum()
}

/// Redraws the figures every `interval_ms` until interrupted (or for
/// `iterations` rounds).
fn top(client: &Client, json: bool, iterations: Option<u64>, interval_ms: u64) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let redraw = std::io::stdout().is_terminal() && !json;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) && iterations.is_none_or(|limit| round < limit) {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
        round += 1;
        let stats = client.call("GET", "stats", None)?;
        if json {
            println!("{stats}");
            continue;
        }
        let mut table = table(&["shard", "conns", "msgs/s in", "deliv/s out", "in queue", "pending", "commit q"]);
        for shard in stats["shards"].as_array().into_iter().flatten() {
            table.add_row(vec![
                shard["shard"].to_string(),
                shard["connections"].to_string(),
                rate(&shard["messages_per_s"]),
                rate(&shard["deliveries_per_s"]),
                shard["inbound_queue_depth"].to_string(),
                shard["requests_pending"].to_string(),
                shard["commit_queue"].to_string(),
            ]);
        }
        if redraw {
            // Clear the screen and go home, then draw.
            print!("\x1b[2J\x1b[H");
        }
        println!(
            "chatgw top: {}  up {} s  conns {}  msgs/s in {:.0}  deliveries/s out {:.0}  fan-out p99 {}  RSS {} MiB  load {:.2}\n{table}",
            stats["node"].as_str().unwrap_or("?"),
            stats["uptime_s"],
            sum(&stats, "connections"),
            sum(&stats, "messages_per_s"),
            sum(&stats, "deliveries_per_s"),
            p99(&stats),
            mib(&stats["rss_bytes"]),
            stats["load"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(())
}
