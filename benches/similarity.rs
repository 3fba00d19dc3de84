//! Pairwise instance similarity at the shapes of shared/DESIGN.md: m = 1024 nodes × D = 12 544 (256·7·7,
//! Dsig) and 100 × 2 304 (256·3·3, DRKD). Cosine Gram forward and backward, and the fused Dsig edge loss
//! (loss + gradient). CPU always; CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench similarity -- --warm-up-time 1 --measurement-time 3`
//!
//! The CPU Gram at 1024 × 12 544 is ~26 GFLOP (the fused loss three such products), so samples are few.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::similarity::{
    cosine_gram, cosine_gram_backward, dsig_edge_loss_with_grad, CosineConfig, DsigEdgeConfig,
};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

const SHAPES: [(&str, usize, usize); 2] = [
    ("dsig_1024x12544", 1024, 12_544),
    ("drkd_100x2304", 100, 2_304),
];

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("similarity bench: CUDA skipped: {e}"),
    }
    out
}

fn features(rows: usize, d: usize, seed: u64, device: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    // Non-negative like post-ReLU pooled features, so cosines are spread in (0, 1).
    let data: Vec<f32> = (0..rows * d)
        .map(|_| rng.uniform(0.0, 1.0) as f32)
        .collect();
    Tensor::from_vec(data, &[rows, d])
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn similarity(c: &mut Criterion) {
    let cfg = CosineConfig::default();
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("similarity/{name}"));
        group.sample_size(10);
        for (label, rows, d) in SHAPES {
            let student = features(rows, d, 1, &device);
            let teacher = features(rows, d, 2, &device);
            group.bench_function(BenchmarkId::new("cosine_gram_forward", label), |b| {
                b.iter(|| {
                    let s = cosine_gram(&student, &cfg).unwrap();
                    device.synchronize().unwrap();
                    s
                })
            });
            let grad = features(rows, rows, 3, &device);
            group.bench_function(BenchmarkId::new("cosine_gram_backward", label), |b| {
                b.iter(|| {
                    let g = cosine_gram_backward(&student, &grad, &cfg).unwrap();
                    device.synchronize().unwrap();
                    g
                })
            });
            let edge = DsigEdgeConfig::default();
            group.bench_function(BenchmarkId::new("dsig_edge_loss_with_grad", label), |b| {
                b.iter(|| {
                    let out = dsig_edge_loss_with_grad(&student, &teacher, None, &edge).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, similarity);
criterion_main!(benches);
