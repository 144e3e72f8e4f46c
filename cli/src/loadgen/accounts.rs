//! The load generator's accounts: kept in a users file between runs, made
//! by signup over HTTP (in parallel) when the file holds too few.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// One account the load generator logs in as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    /// Its username.
    pub username: String,
    /// A token from signup (valid for the server's token lifetime).
    pub token: String,
}

/// An HTTP agent that reads error answers as answers (their JSON says the
/// code), each request bounded to 30 s.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

/// Signups in flight at once (the server hashes on a blocking thread per core).
const SIGNUP_THREADS: usize = 8;

/// Returns `count` accounts from `file`, making (and saving) the missing
/// ones by signup against `addr`. The flag says whether any were made: the
/// server has hashed passwords since it started then.
pub fn load_or_make(addr: &str, file: &Path, count: usize) -> anyhow::Result<(Vec<Account>, bool)> {
    let mut accounts: Vec<Account> = match std::fs::read_to_string(file) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("parsing the users file {}", file.display()))?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", file.display())),
    };
    if accounts.len() >= count {
        accounts.truncate(count);
        return Ok((accounts, false));
    }
    let missing = count - accounts.len();
    eprintln!("signing up {missing} accounts (kept in {} for later runs)", file.display());
    let made = signup_many(addr, missing)?;
    accounts.extend(made);
    std::fs::write(file, serde_json::to_vec(&accounts)?).with_context(|| format!("writing {}", file.display()))?;
    Ok((accounts, true))
}

fn signup_many(addr: &str, count: usize) -> anyhow::Result<Vec<Account>> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    // Names unique across runs against the same server, and across load
    // generator processes started in the same millisecond.
    let run = format!(
        "{:x}{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis(),
        std::process::id()
    );
    let next = AtomicUsize::new(0);
    let made = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..SIGNUP_THREADS.min(count))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count {
                            return Ok(());
                        }
                        let account = signup(&agent, addr, &format!("lg{run}_{n}"))?;
                        made.lock().unwrap().push((n, account));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().map_err(|_| anyhow::anyhow!("a signup thread panicked"))??;
        }
        Ok(())
    })?;
    let mut made = made.into_inner().unwrap();
    made.sort_by_key(|(n, _)| *n);
    Ok(made.into_iter().map(|(_, account)| account).collect())
}

fn signup(agent: &ureq::Agent, addr: &str, username: &str) -> anyhow::Result<Account> {
    let mut response = agent
        .post(format!("http://{addr}/v1/signup"))
        .send_json(serde_json::json!({ "username": username, "password": "loadgen-password" }))
        .with_context(|| format!("signup of {username}"))?;
    let body: serde_json::Value = response.body_mut().read_json().context("signup answer")?;
    let Some(token) = body["token"].as_str() else { bail!("signup of {username} failed: {body}") };
    Ok(Account { username: username.to_string(), token: token.to_string() })
}
