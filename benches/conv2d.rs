//! The detector-layer ops at a small detector's shapes: convolutions 3×3 stride 1 `[B, 64, 80, 80]` → 64,
//! 3×3 stride 2 `[B, 64, 80, 80]` → 128 and 1×1 `[B, 256, 40, 40]` → 256 (with bias), GroupNorm (32 groups)
//! on `[B, 128, 40, 40]`, and a bilinear resize `[B, 256, 50, 84]` → `100×168` — each forward and backward,
//! f32. CUDA (when built with `--features cuda` and a device is present) runs B = 8; the CPU runs B = 2 so
//! that the whole bench takes about a minute on a small machine.
//!
//! `cargo bench --bench conv2d -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::conv2d::{conv2d, conv2d_backward, Conv2dConfig, Conv2dGradsWanted};
use detkd::ops::norm::{group_norm, group_norm_backward, GroupNormConfig};
use detkd::ops::resize::{resize_bilinear, resize_bilinear_backward};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

fn devices() -> Vec<(Device, usize)> {
    let mut out = vec![(Device::Cpu, 2)];
    match detkd::cuda::probe() {
        Ok(dev) => out.push((Device::Cuda(dev), 8)),
        Err(e) => eprintln!("conv2d bench: CUDA skipped: {e}"),
    }
    out
}

/// An f32 tensor of uniform values in `[-scale, scale)` on `device`.
fn uniform(rng: &mut Rng, shape: &[usize], scale: f64, device: &Device) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn layers(c: &mut Criterion) {
    for (device, batch) in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("nn/{name}"));
        group.sample_size(10);
        let mut rng = Rng::new(1);
        for (label, cin, hw, cout, k, stride) in [
            ("conv3x3_s1_64x80x80_to64", 64, 80, 64, 3, 1),
            ("conv3x3_s2_64x80x80_to128", 64, 80, 128, 3, 2),
            ("conv1x1_256x40x40_to256", 256, 40, 256, 1, 1),
        ] {
            let label = format!("b{batch}_{label}");
            let cfg = Conv2dConfig::square(stride, k / 2, 1);
            let x = uniform(&mut rng, &[batch, cin, hw, hw], 1.0, &device);
            let w = uniform(&mut rng, &[cout, cin, k, k], 0.05, &device);
            let b = uniform(&mut rng, &[cout], 0.1, &device);
            let y = conv2d(&x, &w, Some(&b), &cfg).unwrap();
            let g = uniform(&mut rng, y.shape(), 1.0, &device);
            group.bench_function(BenchmarkId::new("conv2d_forward", &label), |bench| {
                bench.iter(|| {
                    let y = conv2d(&x, &w, Some(&b), &cfg).unwrap();
                    device.synchronize().unwrap();
                    y
                })
            });
            group.bench_function(BenchmarkId::new("conv2d_backward", &label), |bench| {
                bench.iter(|| {
                    let grads =
                        conv2d_backward(&x, &w, &g, Conv2dGradsWanted::default(), &cfg).unwrap();
                    device.synchronize().unwrap();
                    grads
                })
            });
        }

        let label = format!("b{batch}_128x40x40_g32");
        let x = uniform(&mut rng, &[batch, 128, 40, 40], 1.0, &device);
        let gamma = uniform(&mut rng, &[128], 1.0, &device);
        let beta = uniform(&mut rng, &[128], 1.0, &device);
        let g = uniform(&mut rng, x.shape(), 1.0, &device);
        let cfg = GroupNormConfig::default();
        let out = group_norm(&x, Some(&gamma), Some(&beta), &cfg).unwrap();
        group.bench_function(BenchmarkId::new("group_norm_forward", &label), |bench| {
            bench.iter(|| {
                let out = group_norm(&x, Some(&gamma), Some(&beta), &cfg).unwrap();
                device.synchronize().unwrap();
                out
            })
        });
        group.bench_function(BenchmarkId::new("group_norm_backward", &label), |bench| {
            bench.iter(|| {
                let grads = group_norm_backward(&x, Some(&gamma), &out.stats, &g, &cfg).unwrap();
                device.synchronize().unwrap();
                grads
            })
        });

        let label = format!("b{batch}_256x50x84_to100x168");
        let x = uniform(&mut rng, &[batch, 256, 50, 84], 1.0, &device);
        let g = uniform(&mut rng, &[batch, 256, 100, 168], 1.0, &device);
        group.bench_function(
            BenchmarkId::new("resize_bilinear_forward", &label),
            |bench| {
                bench.iter(|| {
                    let y = resize_bilinear(&x, (100, 168)).unwrap();
                    device.synchronize().unwrap();
                    y
                })
            },
        );
        group.bench_function(
            BenchmarkId::new("resize_bilinear_backward", &label),
            |bench| {
                bench.iter(|| {
                    let dx = resize_bilinear_backward(&g, (50, 84)).unwrap();
                    device.synchronize().unwrap();
                    dx
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, layers);
criterion_main!(benches);
