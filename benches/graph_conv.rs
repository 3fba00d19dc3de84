//! The graph_conv family at the shapes of shared/DESIGN.md: a graph convolution with 1024 nodes, 256 → 256
//! and a data-dependent adjacency (forward; backward including dA), plus a small latency-sized one; DRKD's
//! GloRe pieces at P2 (C = 256 → nodes N = 64, state S = 128, L = 200×336, batch 2): projection, node
//! convolution (with the fused ReLU) and reprojection, forward and backward. f32. CPU always; CUDA too when
//! built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench graph_conv -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::graph_conv::{
    glore_node_conv, glore_node_conv_backward, glore_project, glore_project_backward,
    glore_reproject, glore_reproject_backward, graph_conv, graph_conv_backward, GraphConvInputs,
    NodeConvInputs,
};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("graph_conv bench: CUDA skipped: {e}"),
    }
    out
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cpu() {
        "cpu"
    } else {
        "cuda"
    }
}

/// An f32 tensor of uniform values in `[lo, hi)` on `device`.
fn uniform(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64, device: &Device) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn graph_convolution(c: &mut Criterion) {
    for device in devices() {
        let mut group = c.benchmark_group(format!("graph_conv/{}", device_name(&device)));
        group.sample_size(10);
        for (label, m, din, dout) in [
            ("1024x256to256", 1024, 256, 256),
            ("100x64to64", 100, 64, 64),
        ] {
            let mut rng = Rng::new(1);
            // A similarity-like graph in [0, 1): data-dependent, every degree > 0.
            let a = uniform(&mut rng, &[m, m], 0.0, 1.0, &device);
            let x = uniform(&mut rng, &[m, din], -1.0, 1.0, &device);
            let w = uniform(&mut rng, &[din, dout], -0.1, 0.1, &device);
            let b = uniform(&mut rng, &[dout], -0.1, 0.1, &device);
            let g = uniform(&mut rng, &[m, dout], -1.0, 1.0, &device);
            let inputs = GraphConvInputs {
                adjacency: &a,
                x: &x,
                weight: &w,
                bias: Some(&b),
            };
            group.bench_function(BenchmarkId::new("forward", label), |bench| {
                bench.iter(|| {
                    let out = graph_conv(&inputs).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
            let saved = graph_conv(&inputs).unwrap().saved;
            group.bench_function(BenchmarkId::new("backward_with_da", label), |bench| {
                bench.iter(|| {
                    let grads = graph_conv_backward(&inputs, &saved, &g, true).unwrap();
                    device.synchronize().unwrap();
                    grads
                })
            });
        }
        group.finish();
    }
}

fn glore(c: &mut Criterion) {
    let (batch, s, n, l) = (2, 128, 64, 200 * 336);
    for device in devices() {
        let mut rng = Rng::new(2);
        let v = uniform(&mut rng, &[batch, s, l], -1.0, 1.0, &device);
        let bp = uniform(&mut rng, &[batch, n, l], -1.0, 1.0, &device);
        let z = uniform(&mut rng, &[batch, s, n], -1.0, 1.0, &device);
        let a = uniform(&mut rng, &[n, n], -0.1, 0.1, &device);
        let b = uniform(&mut rng, &[n], -0.1, 0.1, &device);
        let g_sn = uniform(&mut rng, &[batch, s, n], -1.0, 1.0, &device);
        let g_sl = uniform(&mut rng, &[batch, s, l], -1.0, 1.0, &device);
        let label = "B2_S128_N64_L67200";
        let mut group = c.benchmark_group(format!("glore/{}", device_name(&device)));
        group.sample_size(10);
        let sync = || device.synchronize().unwrap();
        group.bench_function(BenchmarkId::new("project_forward", label), |bench| {
            bench.iter(|| {
                let out = glore_project(&v, &bp).unwrap();
                sync();
                out
            })
        });
        group.bench_function(BenchmarkId::new("project_backward", label), |bench| {
            bench.iter(|| {
                let out = glore_project_backward(&v, &bp, &g_sn).unwrap();
                sync();
                out
            })
        });
        let inputs = NodeConvInputs {
            z: &z,
            adjacency: &a,
            bias: Some(&b),
        };
        group.bench_function(BenchmarkId::new("node_conv_relu_forward", label), |bench| {
            bench.iter(|| {
                let out = glore_node_conv(&inputs, true).unwrap();
                sync();
                out
            })
        });
        let h = glore_node_conv(&inputs, true).unwrap();
        group.bench_function(
            BenchmarkId::new("node_conv_relu_backward", label),
            |bench| {
                bench.iter(|| {
                    let out = glore_node_conv_backward(&inputs, Some(&h), &g_sn).unwrap();
                    sync();
                    out
                })
            },
        );
        group.bench_function(BenchmarkId::new("reproject_forward", label), |bench| {
            bench.iter(|| {
                let out = glore_reproject(&z, &bp).unwrap();
                sync();
                out
            })
        });
        group.bench_function(BenchmarkId::new("reproject_backward", label), |bench| {
            bench.iter(|| {
                let out = glore_reproject_backward(&z, &bp, &g_sl).unwrap();
                sync();
                out
            })
        });
        group.finish();
    }
}

criterion_group!(benches, graph_convolution, glore);
criterion_main!(benches);
