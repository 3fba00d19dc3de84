//! Matrix products at a square size and at the shapes a 3×3 convolution gives them (im2col): 512³, the
//! forward product `W [64, 576] · col [576, 6400]` of a 3×3 conv 64 → 64 on an 80×80 map, and its weight
//! gradient `dY [64, 6400] · colᵀ` (K = 6400, transposed right operand). f32 (and f64 at 512³). CPU always;
//! CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench matmul -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::matmul::matmul;
use detkd::testing::Rng;
use detkd::{DType, Device, Tensor};

/// (label, m, n, k, trans_a, trans_b)
const SHAPES: [(&str, usize, usize, usize, bool, bool); 3] = [
    ("512x512x512", 512, 512, 512, false, false),
    ("conv3x3_fwd_64x6400x576", 64, 6400, 576, false, false),
    ("conv3x3_dw_64x576x6400_tb", 64, 576, 6400, false, true),
];

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("matmul bench: CUDA skipped: {e}"),
    }
    out
}

fn operand(rng: &mut Rng, shape: &[usize], dtype: DType, device: &Device) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn products(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("matmul/{name}"));
        group.sample_size(10);
        for (label, m, n, k, trans_a, trans_b) in SHAPES {
            let mut dtypes = vec![DType::F32];
            if device.is_cpu() && m == 512 {
                dtypes.push(DType::F64);
            }
            for dtype in dtypes {
                let mut rng = Rng::new(1);
                let sa = if trans_a { [k, m] } else { [m, k] };
                let sb = if trans_b { [n, k] } else { [k, n] };
                let a = operand(&mut rng, &sa, dtype, &device);
                let b = operand(&mut rng, &sb, dtype, &device);
                group.bench_function(BenchmarkId::new(dtype.name(), label), |bench| {
                    bench.iter(|| {
                        let out = matmul(&a, &b, trans_a, trans_b).unwrap();
                        device.synchronize().unwrap();
                        out
                    })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, products);
criterion_main!(benches);
