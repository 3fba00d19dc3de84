//! The element-wise, reduction and softmax glue at the shapes a distillation step feeds it: a per-channel
//! broadcast add over an FPN P2-sized batch ([8, 256, 100, 168] + [1, 256, 1, 1]) and the bias-style
//! gradient reduction back to [1, 256, 1, 1]; the full sum of a focal-loss-sized map (8 × 20 000 × 80 ≈
//! 13 M elements); softmax over LD's box distributions ([80 000, 17]) and over class logits ([20 000, 80]),
//! forward and backward. f32 storage. CPU always; CUDA too when built with `--features cuda` and a device
//! is present.
//!
//! `cargo bench --bench elementwise -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use detkd::ops::elementwise::{add, sum_to_shape};
use detkd::ops::reduce::sum_all;
use detkd::ops::softmax::{softmax_last_axis, softmax_last_axis_backward};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

const FEATURES: [usize; 4] = [8, 256, 100, 168];
const CHANNEL: [usize; 4] = [1, 256, 1, 1];
const FOCAL_ELEMENTS: usize = 8 * 20_000 * 80;
const SOFTMAX_SHAPES: [(&str, usize, usize); 2] = [
    ("ld_80000x17", 80_000, 17),
    ("classes_20000x80", 20_000, 80),
];

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("elementwise bench: CUDA skipped: {e}"),
    }
    out
}

fn random(shape: &[usize], seed: u64, device: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-3.0, 3.0) as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn elementwise(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("elementwise/{name}"));
        group.sample_size(10);

        let features = random(&FEATURES, 1, &device);
        let bias = random(&CHANNEL, 2, &device);
        let n: usize = FEATURES.iter().product();
        // Bytes moved: read the features, write the sum (the bias is negligible).
        group.throughput(Throughput::Bytes((2 * n * 4) as u64));
        group.bench_function(
            BenchmarkId::new("broadcast_add", "8x256x100x168+1x256x1x1"),
            |b| {
                b.iter(|| {
                    let out = add(&features, &bias).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            },
        );
        group.throughput(Throughput::Bytes((n * 4) as u64));
        group.bench_function(
            BenchmarkId::new("sum_to_shape", "8x256x100x168->1x256x1x1"),
            |b| {
                b.iter(|| {
                    let out = sum_to_shape(&features, &CHANNEL).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            },
        );
        drop(features);

        let focal = random(&[FOCAL_ELEMENTS], 3, &device);
        group.throughput(Throughput::Bytes((FOCAL_ELEMENTS * 4) as u64));
        group.bench_function(BenchmarkId::new("sum_all", "8x20000x80"), |b| {
            b.iter(|| {
                let out = sum_all(&focal).unwrap();
                device.synchronize().unwrap();
                out
            })
        });
        drop(focal);

        for (label, rows, cols) in SOFTMAX_SHAPES {
            let x = random(&[rows, cols], 4, &device);
            let g = random(&[rows, cols], 5, &device);
            let p = softmax_last_axis(&x, 1.0).unwrap();
            group.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
            group.bench_function(BenchmarkId::new("softmax_forward", label), |b| {
                b.iter(|| {
                    let out = softmax_last_axis(&x, 1.0).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
            group.throughput(Throughput::Bytes((3 * rows * cols * 4) as u64));
            group.bench_function(BenchmarkId::new("softmax_backward", label), |b| {
                b.iter(|| {
                    let out = softmax_last_axis_backward(&p, &g, 1.0).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, elementwise);
criterion_main!(benches);
