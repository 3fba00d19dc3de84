//! Distribution KL / DFL / Integral at the LD shape of shared/DESIGN.md: 20 000 positive locations × 4 sides
//! × 17 bins, i.e. `[80 000, 17]` logits; KL and DFL forward (mean), backward and fused, Integral forward and
//! backward, f32. CPU always; CUDA too when built with `--features cuda` and a device is present (the DFL
//! targets live on the device there, and every call reads them back once to validate them on the host).
//!
//! `cargo bench --bench dist_kl -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::dist_kl::{
    distribution_focal_loss, distribution_focal_loss_backward, distribution_focal_loss_fused,
    integral, integral_backward, kd_kl_div, kd_kl_div_backward, kd_kl_div_fused, DflConfig,
    IntegralConfig, KdKlConfig, LossWeighting, GFL_REG_MAX,
};
use detkd::testing::Rng;
use detkd::{DType, Device, Tensor};

const ROWS: usize = 20_000 * 4;
const BINS: usize = GFL_REG_MAX + 1;

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("dist_kl bench: CUDA skipped: {e}"),
    }
    out
}

fn tensor(data: Vec<f64>, shape: &[usize], device: &Device) -> Tensor {
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn losses(c: &mut Criterion) {
    let mut rng = Rng::new(5);
    let normal = |rng: &mut Rng, scale: f64| -> Vec<f64> {
        rng.normal_vec(ROWS * BINS)
            .into_iter()
            .map(|v| v * scale)
            .collect()
    };
    let student = normal(&mut rng, 15.0);
    let teacher = normal(&mut rng, 15.0);
    let labels: Vec<f64> = (0..ROWS).map(|_| rng.uniform(0.0, 15.9)).collect();
    let weights: Vec<f64> = (0..ROWS).map(|_| rng.uniform(0.0, 1.0)).collect();
    let shape = [ROWS, BINS];
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let s = tensor(student.clone(), &shape, &device);
        let t = tensor(teacher.clone(), &shape, &device);
        let y = tensor(labels.clone(), &[ROWS], &device);
        let w = tensor(weights.clone(), &[ROWS], &device);
        let one = tensor(vec![1.0], &[], &device);
        let weighting = LossWeighting::new(Some(&w), Some(4.0));
        let kl = KdKlConfig::ld();
        let dfl = DflConfig::gfl();
        let icfg = IntegralConfig::default();
        let sync = || device.synchronize().unwrap();

        let mut group = c.benchmark_group(format!("dist_kl_80000x17/{name}"));
        group.sample_size(20);
        group.bench_function(BenchmarkId::new("kd_kl", "forward"), |b| {
            b.iter(|| {
                let l = kd_kl_div(&s, &t, weighting, &kl).unwrap();
                sync();
                l
            })
        });
        group.bench_function(BenchmarkId::new("kd_kl", "backward"), |b| {
            b.iter(|| {
                let g = kd_kl_div_backward(&one, &s, &t, weighting, &kl).unwrap();
                sync();
                g
            })
        });
        group.bench_function(BenchmarkId::new("kd_kl", "fused"), |b| {
            b.iter(|| {
                let f = kd_kl_div_fused(&s, &t, weighting, &kl, 1.0).unwrap();
                sync();
                f
            })
        });
        group.bench_function(BenchmarkId::new("dfl", "forward"), |b| {
            b.iter(|| {
                let l = distribution_focal_loss(&s, &y, weighting, &dfl).unwrap();
                sync();
                l
            })
        });
        group.bench_function(BenchmarkId::new("dfl", "backward"), |b| {
            b.iter(|| {
                let g = distribution_focal_loss_backward(&one, &s, &y, weighting, &dfl).unwrap();
                sync();
                g
            })
        });
        group.bench_function(BenchmarkId::new("dfl", "fused"), |b| {
            b.iter(|| {
                let f = distribution_focal_loss_fused(&s, &y, weighting, &dfl, 1.0).unwrap();
                sync();
                f
            })
        });
        let d = integral(&s, &icfg).unwrap();
        group.bench_function(BenchmarkId::new("integral", "forward"), |b| {
            b.iter(|| {
                let d = integral(&s, &icfg).unwrap();
                sync();
                d
            })
        });
        group.bench_function(BenchmarkId::new("integral", "backward"), |b| {
            b.iter(|| {
                let g = integral_backward(&d, &s, &icfg).unwrap();
                sync();
                g
            })
        });
        group.finish();
    }
}

criterion_group!(benches, losses);
criterion_main!(benches);
