//! `chatgw-peer`: the mainstream tokio + tokio-tungstenite chat server the
//! comparison (`bench/compare.sh`) runs beside chatgw and nats-server. See
//! `chatgw_bench::peer` for what it serves and what it leaves out.

use std::sync::Arc;

use anyhow::Context;
use chatgw_bench::peer::Settings;
use chatgw_bench::peer::http::Server;
use chatgw_bench::peer::state::State;
use clap::Parser;

/// Flags of `chatgw-peer`.
#[derive(Debug, Parser)]
#[command(about = "A plain tokio + tokio-tungstenite server of chatgw's protocol subset, for comparisons")]
struct Args {
    /// Where to listen (HTTP and WebSocket).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
    /// Runtime worker threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// The token signing secret: the same one across restarts keeps the
    /// tokens made before valid [default: a random one].
    #[arg(long, env = "CHATGW_PEER_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Heartbeat announced in hello, ms (silence for twice it closes).
    #[arg(long, default_value_t = 15_000)]
    heartbeat_ms: u64,
    /// Frames queued per connection before it is closed as a slow reader.
    #[arg(long, default_value_t = 1024)]
    outbox_frames: usize,
    /// Each connection's read buffer, bytes [default: tungstenite's, 128 KiB].
    #[arg(long)]
    read_buffer_bytes: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let jwt_secret = match args.jwt_secret {
        Some(secret) => secret,
        None => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("the OS random source: {error}"))?;
            bytes.iter().map(|byte| format!("{byte:02x}")).collect()
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.enable_all().build().context("starting the tokio runtime")?;
    let settings = Settings {
        jwt_secret,
        heartbeat_ms: args.heartbeat_ms.max(100),
        outbox_frames: args.outbox_frames.max(2),
        read_buffer_bytes: args.read_buffer_bytes,
    };
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("chatgw-peer listening on {}", listener.local_addr()?);
        let server = Arc::new(Server::new(Arc::new(State::default()), settings));
        server.run(listener).await.context("accepting connections")
    })
}
