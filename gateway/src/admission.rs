//! Who may open a WebSocket now: the caps checked at the upgrade, before
//! the `101`, so that a refused client gets an HTTP status it can read.
//! And, at accept, the caps on HTTP connections ([`HttpConnections`]: per
//! process and per IP, for every connection until it upgrades) and the
//! descriptor reserve ([`within_reserve`]), where a refused connection is
//! closed at once.
//!
//! - connections per process, below the open-file limit, so that
//!   `/healthz`, the admin API and storage still have descriptors;
//! - live connections per client IP;
//! - new connections per client IP per second (a token bucket);
//! - live connections (devices) per user.
//!
//! It also knows where each (user, device) is connected, so that a second
//! connection with the same device id replaces the first (which the
//! caller closes), and does not count against the devices cap.
//!
//! A cap of 0 is off. A plain state machine, the time an argument; the node
//! keeps one under a lock, taken once when a connection opens and once when
//! it ends (off the message path). Across nodes each node caps its own.

use std::collections::HashMap;
use std::net::IpAddr;

use chatgw_idgen::UserId;

use crate::error::{ApiError, ErrorCode};

/// The caps (0: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Live WebSocket connections in the process.
    pub connections: usize,
    /// Live connections from one client IP.
    pub per_ip: u32,
    /// New connections from one client IP per second, in bursts of twice
    /// that.
    pub new_per_ip_per_s: u32,
    /// Live connections of one user.
    pub per_user: u32,
}

#[derive(Debug, Clone, Copy)]
struct FromIp {
    live: u32,
    tokens: f64,
    refilled_ms: u64,
}

/// The live connections the node admitted, by IP and by user.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    live: usize,
    by_ip: HashMap<IpAddr, FromIp>,
    by_user: HashMap<UserId, u32>,
    /// Where each connected device is: its shard and registry key.
    devices: HashMap<(UserId, Box<str>), (u16, usize)>,
}

/// IPs with no live connection kept at most for their token buckets.
const QUIET_IPS_MAX: usize = 100_000;

impl Admission {
    /// An empty admission under `caps`.
    pub fn new(caps: Caps) -> Self {
        Admission { caps, live: 0, by_ip: HashMap::new(), by_user: HashMap::new(), devices: HashMap::new() }
    }

    /// Admits a connection from `ip` for a user's device (`None`: no user,
    /// the conformance echo) at `now_ms`, or says which cap it meets. A
    /// device already connected is let in past the devices cap: it replaces
    /// its older connection. An admitted connection must be
    /// [`release`](Self::release)d.
    pub fn admit(&mut self, ip: IpAddr, device: Option<(UserId, &str)>, now_ms: u64) -> Result<(), ApiError> {
        let caps = self.caps;
        if caps.connections > 0 && self.live >= caps.connections {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                format!("the server holds its most connections ({}); try another node or later", caps.connections),
            ));
        }
        if self.by_ip.len() >= QUIET_IPS_MAX {
            self.by_ip.retain(|_, from| from.live > 0);
        }
        let burst = f64::from(caps.new_per_ip_per_s) * 2.0;
        let from = self.by_ip.entry(ip).or_insert(FromIp { live: 0, tokens: burst, refilled_ms: now_ms });
        if caps.per_ip > 0 && from.live >= caps.per_ip {
            return Err(ApiError::rate_limited(format!("at most {} connections from one address", caps.per_ip), 1_000));
        }
        if caps.new_per_ip_per_s > 0 {
            let rate = f64::from(caps.new_per_ip_per_s);
            let elapsed_s = now_ms.saturating_sub(from.refilled_ms) as f64 / 1_000.0;
            from.tokens = (from.tokens + elapsed_s * rate).min(burst);
            from.refilled_ms = now_ms;
            if from.tokens < 1.0 {
                let wait_ms = ((1.0 - from.tokens) / rate * 1_000.0).ceil() as u64;
                return Err(ApiError::rate_limited(
                    format!("at most {} new connections a second from one address", caps.new_per_ip_per_s),
                    wait_ms.max(1),
                ));
            }
        }
        if let Some((user, device)) = device {
            let devices = self.by_user.get(&user).copied().unwrap_or(0);
            let replaces = self.devices.contains_key(&(user, device.into()));
            if caps.per_user > 0 && devices >= caps.per_user && !replaces {
                return Err(ApiError::rate_limited(
                    format!("at most {} devices connected per user", caps.per_user),
                    1_000,
                ));
            }
            *self.by_user.entry(user).or_insert(0) += 1;
        }
        if caps.new_per_ip_per_s > 0 {
            from.tokens -= 1.0;
        }
        from.live += 1;
        self.live += 1;
        Ok(())
    }

    /// Ends a connection [`admit`](Self::admit) let in.
    pub fn release(&mut self, ip: IpAddr, user: Option<UserId>) {
        self.live = self.live.saturating_sub(1);
        if let Some(from) = self.by_ip.get_mut(&ip) {
            from.live = from.live.saturating_sub(1);
            if from.live == 0 && self.caps.new_per_ip_per_s == 0 {
                self.by_ip.remove(&ip);
            }
        }
        if let Some(user) = user
            && let Some(devices) = self.by_user.get_mut(&user)
        {
            *devices -= 1;
            if *devices == 0 {
                self.by_user.remove(&user);
            }
        }
    }

    /// Records that `user`'s `device` is now connected at (`shard`, `key`);
    /// returns where it was connected before, if it was (the connection the
    /// caller must close).
    pub fn claim_device(&mut self, user: UserId, device: &str, at: (u16, usize)) -> Option<(u16, usize)> {
        self.devices.insert((user, device.into()), at).filter(|before| *before != at)
    }

    /// Forgets `user`'s `device` at `at`, unless a newer connection of it
    /// claimed it since.
    pub fn release_device(&mut self, user: UserId, device: &str, at: (u16, usize)) {
        let key = (user, Box::<str>::from(device));
        if self.devices.get(&key) == Some(&at) {
            self.devices.remove(&key);
        }
    }

    /// Live connections admitted.
    pub fn live(&self) -> usize {
        self.live
    }
}

/// Why an accepted connection was closed at once, before any byte of it
/// was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptRefusal {
    /// Its descriptor fell within the reserve kept below the open-file
    /// limit for storage and the listeners (`--fd-reserve`).
    Descriptors,
    /// The process holds its most HTTP connections
    /// (`--max-http-connections`).
    Process,
    /// Its address holds its most HTTP connections
    /// (`--max-http-connections-per-ip`).
    PerIp,
}

impl AcceptRefusal {
    /// Every reason, in a fixed order (the index of its counter).
    pub const ALL: [AcceptRefusal; 3] = [AcceptRefusal::Descriptors, AcceptRefusal::Process, AcceptRefusal::PerIp];

    /// Its index in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name, for the metrics' `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptRefusal::Descriptors => "descriptors",
            AcceptRefusal::Process => "process",
            AcceptRefusal::PerIp => "per_ip",
        }
    }
}

/// The caps on HTTP connections (0: no cap): every accepted connection
/// counts until it ends or becomes a WebSocket, whose caps are [`Caps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCaps {
    /// HTTP connections in the process.
    pub connections: usize,
    /// HTTP connections from one client IP.
    pub per_ip: u32,
}

/// The node's live HTTP connections (accepted and not upgraded), by IP.
/// Each is opened at accept and closed when it ends or upgrades; only IPs
/// with a live connection are kept, so the table is bounded by the caps.
#[derive(Debug)]
pub struct HttpConnections {
    caps: HttpCaps,
    live: usize,
    by_ip: HashMap<IpAddr, u32>,
}

impl HttpConnections {
    /// None yet, under `caps`.
    pub fn new(caps: HttpCaps) -> Self {
        HttpConnections { caps, live: 0, by_ip: HashMap::new() }
    }

    /// Takes room for a connection from `ip`, or says which cap it meets.
    /// A connection let in must be [`close`](Self::close)d.
    pub fn open(&mut self, ip: IpAddr) -> Result<(), AcceptRefusal> {
        if self.caps.connections > 0 && self.live >= self.caps.connections {
            return Err(AcceptRefusal::Process);
        }
        let from = self.by_ip.entry(ip).or_insert(0);
        if self.caps.per_ip > 0 && *from >= self.caps.per_ip {
            return Err(AcceptRefusal::PerIp);
        }
        *from += 1;
        self.live += 1;
        Ok(())
    }

    /// Ends a connection [`open`](Self::open) let in.
    pub fn close(&mut self, ip: IpAddr) {
        self.live = self.live.saturating_sub(1);
        if let Some(from) = self.by_ip.get_mut(&ip) {
            *from = from.saturating_sub(1);
            if *from == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }

    /// HTTP connections live now.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Addresses with a live HTTP connection.
    pub fn addresses(&self) -> usize {
        self.by_ip.len()
    }
}

/// Whether an accepted descriptor `fd` falls within `reserve` of the
/// open-file limit `limit`: the kernel hands out the lowest free number,
/// so a descriptor that high means at least that many are open, and
/// refusing it keeps the top `reserve` numbers for what is not a client
/// connection (storage's files, the listeners, the webhook's sockets).
pub fn within_reserve(fd: u64, limit: u64, reserve: u64) -> bool {
    fd.saturating_add(reserve) >= limit
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn caps() -> Caps {
        Caps { connections: 0, per_ip: 0, new_per_ip_per_s: 0, per_user: 0 }
    }

    #[test]
    fn each_cap_refuses_and_a_release_makes_room() {
        let mut process = Admission::new(Caps { connections: 2, ..caps() });
        process.admit(A, Some((UserId(1), "a")), 0).unwrap();
        process.admit(B, Some((UserId(2), "b")), 0).unwrap();
        assert_eq!(process.admit(A, Some((UserId(3), "a")), 0).unwrap_err().code, ErrorCode::Overloaded);
        process.release(A, Some(UserId(1)));
        process.admit(A, Some((UserId(3), "a")), 0).unwrap();

        let mut per_ip = Admission::new(Caps { per_ip: 1, ..caps() });
        per_ip.admit(A, Some((UserId(1), "a")), 0).unwrap();
        assert_eq!(per_ip.admit(A, Some((UserId(2), "a")), 0).unwrap_err().code, ErrorCode::RateLimited);
        per_ip.admit(B, Some((UserId(2), "b")), 0).unwrap();

        let mut per_user = Admission::new(Caps { per_user: 2, ..caps() });
        per_user.admit(A, Some((UserId(1), "a")), 0).unwrap();
        per_user.admit(B, Some((UserId(1), "b")), 0).unwrap();
        let refused = per_user.admit(A, Some((UserId(1), "a")), 0).unwrap_err();
        assert!(refused.message.contains("devices"), "{refused:?}");
        per_user.release(B, Some(UserId(1)));
        per_user.admit(B, Some((UserId(1), "b")), 0).unwrap();
        assert_eq!(per_user.live(), 2);
    }

    #[test]
    fn a_device_connecting_again_replaces_its_older_connection() {
        let mut admission = Admission::new(Caps { per_user: 1, ..caps() });
        admission.admit(A, Some((UserId(1), "phone")), 0).unwrap();
        assert_eq!(admission.claim_device(UserId(1), "phone", (0, 7)), None);
        // At the cap, yet the same device comes in: it replaces.
        admission.admit(B, Some((UserId(1), "phone")), 0).unwrap();
        assert_eq!(admission.claim_device(UserId(1), "phone", (1, 3)), Some((0, 7)));
        assert!(admission.admit(B, Some((UserId(1), "laptop")), 0).is_err(), "another device meets the cap");
        // The older one's end leaves the newer one's claim.
        admission.release_device(UserId(1), "phone", (0, 7));
        assert_eq!(admission.claim_device(UserId(1), "phone", (1, 3)), None);
        admission.release_device(UserId(1), "phone", (1, 3));
        assert_eq!(admission.claim_device(UserId(1), "phone", (2, 1)), None);
    }

    #[test]
    fn http_connections_are_capped_per_ip_and_per_process() {
        let mut http = HttpConnections::new(HttpCaps { connections: 3, per_ip: 2 });
        http.open(A).unwrap();
        http.open(A).unwrap();
        assert_eq!(http.open(A), Err(AcceptRefusal::PerIp));
        http.open(B).unwrap();
        let c = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(http.open(c), Err(AcceptRefusal::Process));
        http.close(A);
        http.open(c).unwrap();
        assert_eq!(http.open(A), Err(AcceptRefusal::Process));
        for ip in [A, B, c] {
            http.close(ip);
        }
        assert_eq!((http.live(), http.addresses()), (0, 0), "ended connections leave nothing");
        let mut open = HttpConnections::new(HttpCaps { connections: 0, per_ip: 0 });
        for _ in 0..10_000 {
            open.open(A).unwrap();
        }
    }

    #[test]
    fn descriptors_near_the_limit_are_refused() {
        assert!(!within_reserve(18_975, 20_000, 1_024));
        assert!(within_reserve(18_976, 20_000, 1_024));
        assert!(within_reserve(19_999, 20_000, 1_024));
        assert!(within_reserve(5, 100, u64::MAX), "a reserve above the limit refuses all");
        assert!(!within_reserve(5, 20_000, 0));
    }

    #[test]
    fn new_connections_per_ip_come_at_the_rate_after_a_burst() {
        let mut admission = Admission::new(Caps { new_per_ip_per_s: 10, ..caps() });
        for user in 0..20 {
            admission.admit(A, Some((UserId(user), "a")), 1_000).unwrap();
        }
        let refused = admission.admit(A, Some((UserId(99), "a")), 1_000).unwrap_err();
        assert_eq!((refused.code, refused.retry_after_ms), (ErrorCode::RateLimited, Some(100)));
        admission.admit(B, Some((UserId(99), "b")), 1_000).unwrap();
        admission.admit(A, Some((UserId(99), "a")), 1_100).unwrap();
    }
}
