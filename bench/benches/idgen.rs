//! Snowflake generation on one core.
//!
//! `cargo bench -p chatgw-bench --bench idgen`
//!
//! Criterion times `next_id`; the flat-out section then counts ids made in
//! two seconds and compares the rate with the format's own cap of 4,096
//! ids per millisecond per worker (4,096,000 ids/s). Target: at least 95%
//! of the cap, i.e. generation is never the bottleneck.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chatgw_bench::filter_allows;
use chatgw_idgen::{Generator, Layout, SEQUENCE_PER_MS, WorkerId};
use criterion::{Criterion, Throughput};

fn next_id(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("idgen");
    group.throughput(Throughput::Elements(1));
    let mut generator = Generator::new(Layout::default(), WorkerId { node: 1, shard: 0 }).unwrap();
    group.bench_function("next_id", |bencher| bencher.iter(|| black_box(generator.next_id())));
    group.finish();
}

fn flat_out() {
    let mut generator = Generator::new(Layout::default(), WorkerId { node: 1, shard: 0 }).unwrap();
    let run = Duration::from_secs(2);
    let start = Instant::now();
    let mut count = 0u64;
    let mut last = 0;
    // Bounded by time; check the clock every 4,096 ids.
    while start.elapsed() < run {
        for _ in 0..4096 {
            let id = generator.next_id();
            assert!(id > last);
            last = id;
        }
        count += 4096;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    let cap = SEQUENCE_PER_MS as f64 * 1000.0;
    println!(
        "idgen/flat_out: {count} ids in {:.2}s = {:.0} ids/s = {:.1}% of the format's cap of {cap:.0} ids/s (target >= 95%)",
        start.elapsed().as_secs_f64(),
        rate,
        100.0 * rate / cap
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    next_id(&mut criterion);
    criterion.final_summary();
    if filter_allows("idgen/flat_out") {
        flat_out();
    }
}
