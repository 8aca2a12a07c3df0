//! Simulator throughput: simulated client requests per second of one core, for Istio defaults
//! (few events per request) and the hand-tuned config (timeouts, retries, per-try timers).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshtune_core::Knobs;
use meshtune_sim::cli::bench_scenario;
use meshtune_sim::{hand_tuned, Engine};

fn engine(c: &mut Criterion) {
    let sc = bench_scenario();
    let mut g = c.benchmark_group("sim");
    // One window of the bench scenario = ~20k client requests.
    g.throughput(Throughput::Elements(20_000));
    g.sample_size(20);
    for (name, knobs) in [
        ("istio_defaults_window", Knobs::istio_defaults()),
        ("hand_tuned_window", hand_tuned().knobs),
    ] {
        let mut e = Engine::new(&sc, 1, &knobs);
        // Warm up the slabs and queues.
        for _ in 0..3 {
            e.run_window();
        }
        g.bench_function(name, |b| b.iter(|| e.run_window()));
    }
    g.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
