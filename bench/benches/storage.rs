//! The history store on one shard, `wal` durability.
//!
//! `cargo bench -p chatgw-bench --bench storage`
//!
//! Criterion: append with batches of 1 and 64 (200-byte texts), latest-50
//! read, inbox scan of 50. Then `scale`: fills one shard to each size in
//! `CHATGW_BENCH_SCALES` (default 1,000,000 and 10,000,000 messages over
//! 10,000 channels) with batches of 64, reporting the append rate, and
//! measures random latest-50 reads with an hdrhistogram (p50/p99/p99.9).
//! Targets: >= 300,000 appended messages/s with batches of 64; a latest-50
//! read under 100 us at p99 with 10 million messages.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chatgw_bench::{Rng, filter_allows, latency_histogram, summarize_us};
use chatgw_idgen::{ChannelId, Generator, Layout, MessageId, ShardId, UserId, WorkerId};
use chatgw_storage::{Message, Store, StoreConfig};
use criterion::{BatchSize, Criterion, Throughput};

const SHARD: ShardId = ShardId(0);
const TEXT_BYTES: usize = 200;
const CHANNELS: u64 = 10_000;

fn open(dir: &tempfile::TempDir) -> Store {
    let mut config = StoreConfig::new(dir.path(), 1);
    config.block_cache_bytes = 512 << 20;
    Store::open(&config).unwrap()
}

struct Filler {
    rng: Rng,
    ids: Generator,
    texts: Vec<String>,
}

impl Filler {
    fn new() -> Self {
        let mut rng = Rng::new(42);
        let texts = (0..1024).map(|_| rng.text(TEXT_BYTES)).collect();
        Filler { rng, ids: Generator::new(Layout::default(), WorkerId { node: 0, shard: 0 }).unwrap(), texts }
    }

    fn message(&mut self, channel: u64) -> Message {
        let id = self.ids.next_id();
        Message {
            id: MessageId(id),
            channel_id: ChannelId(channel),
            sender_id: UserId(1 + self.rng.below(100_000)),
            created_at_ms: id >> 22,
            client_msg_id: None,
            text: self.texts[(id % 1024) as usize].clone(),
            edited_at_ms: None,
            deleted_at_ms: None,
        }
    }

    /// `size` messages to random channels.
    fn messages(&mut self, size: usize) -> Vec<Message> {
        (0..size)
            .map(|_| {
                let channel = 1 + self.rng.below(CHANNELS);
                self.message(channel)
            })
            .collect()
    }

    /// One group commit of `size` messages, with the high-water mark as the
    /// gateway writes it.
    fn append(&mut self, store: &Store, size: usize) {
        let messages = self.messages(size);
        write_batch(store, &messages);
    }
}

/// Writes messages as one group commit, as the gateway's committer does.
fn write_batch(store: &Store, messages: &[Message]) {
    let mut batch = store.batch();
    for message in messages {
        batch.put_message(SHARD, message).unwrap();
    }
    if let Some(last) = messages.last() {
        batch.set_high_water(SHARD, last.id).unwrap();
    }
    store.write(batch).unwrap();
}

fn append(criterion: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut filler = Filler::new();
    let mut group = criterion.benchmark_group("storage/append");
    for size in [1usize, 64] {
        group.throughput(Throughput::Elements(size as u64));
        // Messages are made outside the timed part: this measures storage.
        group.bench_function(format!("batch_{size}"), |bencher| {
            bencher.iter_batched(
                || filler.messages(size),
                |messages| write_batch(&store, &messages),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn reads(criterion: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut filler = Filler::new();
    for _ in 0..(1_000_000 / 64) {
        filler.append(&store, 64);
    }
    let user = UserId(5);
    let mut batch = store.batch();
    for n in 1..=10_000u64 {
        batch.put_inbox(SHARD, user, MessageId(n * 1000), ChannelId(n % 100 + 1)).unwrap();
    }
    store.write(batch).unwrap();
    store.flush().unwrap();

    let mut group = criterion.benchmark_group("storage/read");
    group.throughput(Throughput::Elements(1));
    let mut rng = Rng::new(7);
    group.bench_function("latest_50_of_1m", |bencher| {
        bencher.iter_batched(
            || ChannelId(1 + rng.below(CHANNELS)),
            |channel| black_box(store.latest(SHARD, channel, 50).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inbox_scan_50", |bencher| {
        bencher.iter_batched(
            || MessageId(rng.below(9_950) * 1000),
            |since| black_box(store.inbox_after(SHARD, user, since, 50).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn scale() {
    let scales: Vec<u64> = std::env::var("CHATGW_BENCH_SCALES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut filler = Filler::new();
    let mut stored = 0u64;
    for target in scales {
        let start = Instant::now();
        let before = stored;
        while stored < target {
            filler.append(&store, 64);
            stored += 64;
        }
        let fill_seconds = start.elapsed().as_secs_f64();
        println!(
            "storage/scale/{target}: appended {} messages in batches of 64 at {:.0} messages/s ({} channels, {} B texts)",
            stored - before,
            (stored - before) as f64 / fill_seconds,
            CHANNELS,
            TEXT_BYTES
        );
        store.flush().unwrap();
        // Let background compaction settle (bounded), so the reads measure
        // the store and not two cores busy compacting what was just written.
        let settle = Instant::now();
        while store.background_work_pending().unwrap() && settle.elapsed() < Duration::from_secs(180) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("storage/scale/{target}: compaction settled in {:.1}s", settle.elapsed().as_secs_f64());

        let mut rng = Rng::new(target);
        let mut histogram = latency_histogram();
        // Warm the block cache with one pass, as a running node would be.
        for _ in 0..20_000 {
            black_box(store.latest(SHARD, ChannelId(1 + rng.below(CHANNELS)), 50).unwrap());
        }
        for _ in 0..100_000 {
            let channel = ChannelId(1 + rng.below(CHANNELS));
            let start = Instant::now();
            let messages = store.latest(SHARD, channel, 50).unwrap();
            histogram.record(start.elapsed().as_nanos() as u64).unwrap();
            assert_eq!(messages.len(), 50);
        }
        println!(
            "storage/scale/{target}: latest-50 reads, random channel: {} (disk {} MiB)",
            summarize_us(&histogram),
            store.shard_disk_bytes(SHARD).unwrap() >> 20
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    append(&mut criterion);
    reads(&mut criterion);
    criterion.final_summary();
    if filter_allows("storage/scale") {
        scale();
    }
}
