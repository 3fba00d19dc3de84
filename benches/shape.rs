//! Shape ops at detection sizes: the NCHW → NHWC permute of a P3-sized feature map ([8, 256, 100, 168],
//! f32), the concat of five FPN levels' head outputs along the anchor axis ([8, 20 000, 80] in all), and
//! index_select of 1024 rows of width 12 544 (256·7·7 pooled RoI features, from 2048 candidates, with
//! duplicates) with its backward. Outputs are preallocated (`_into` entries), so the numbers are the data
//! movement, not the allocator; throughput counts bytes read plus bytes written. CPU always; CUDA too when
//! built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench shape -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use detkd::ops::shape::{concat_into, index_select_backward_into, index_select_into, permute_into};
use detkd::testing::Rng;
use detkd::{DType, Device, Tensor};

const NCHW: [usize; 4] = [8, 256, 100, 168];
const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// Anchors per FPN level (P3–P7, ratio about 4 between levels), summing to 20 000.
const LEVEL_ANCHORS: [usize; 5] = [15_000, 3_750, 938, 247, 65];
const IMAGES: usize = 8;
const CLASSES: usize = 80;
const CANDIDATES: usize = 2048;
const SELECTED: usize = 1024;
const WIDTH: usize = 12_544;

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("shape bench: CUDA skipped: {e}"),
    }
    out
}

fn random(rng: &mut Rng, shape: &[usize], device: &Device) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(data, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn bytes(elements: usize) -> Throughput {
    Throughput::Bytes((2 * elements * std::mem::size_of::<f32>()) as u64)
}

fn shape_ops(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut rng = Rng::new(1);
        let mut group = c.benchmark_group(format!("shape/{name}"));
        group.sample_size(10);
        let sync = || device.synchronize().unwrap();

        let x = random(&mut rng, &NCHW, &device);
        let nhwc: Vec<usize> = TO_NHWC.iter().map(|&a| NCHW[a]).collect();
        let mut out = Tensor::zeros(&nhwc, DType::F32, &device).unwrap();
        group.throughput(bytes(x.numel()));
        group.bench_function(
            BenchmarkId::new("permute_nchw_to_nhwc", "8x256x100x168"),
            |b| {
                b.iter(|| {
                    permute_into(&x, &TO_NHWC, &mut out).unwrap();
                    sync();
                })
            },
        );
        drop((x, out));

        let parts: Vec<Tensor> = LEVEL_ANCHORS
            .iter()
            .map(|&n| random(&mut rng, &[IMAGES, n, CLASSES], &device))
            .collect();
        let refs: Vec<&Tensor> = parts.iter().collect();
        let total: usize = LEVEL_ANCHORS.iter().sum();
        let mut out = Tensor::zeros(&[IMAGES, total, CLASSES], DType::F32, &device).unwrap();
        group.throughput(bytes(out.numel()));
        group.bench_function(BenchmarkId::new("concat_fpn_levels", "8x20000x80"), |b| {
            b.iter(|| {
                concat_into(&refs, 1, &mut out).unwrap();
                sync();
            })
        });
        drop((parts, out));

        let features = random(&mut rng, &[CANDIDATES, WIDTH], &device);
        let picked: Vec<i64> = (0..SELECTED)
            .map(|_| rng.below(CANDIDATES) as i64)
            .collect();
        let indices = Tensor::from_vec(picked, &[SELECTED]).unwrap();
        let mut gathered = Tensor::zeros(&[SELECTED, WIDTH], DType::F32, &device).unwrap();
        group.throughput(bytes(SELECTED * WIDTH));
        group.bench_function(
            BenchmarkId::new("index_select", "1024_of_2048x12544"),
            |b| {
                b.iter(|| {
                    index_select_into(&features, 0, &indices, &mut gathered).unwrap();
                    sync();
                })
            },
        );
        let grad = random(&mut rng, &[SELECTED, WIDTH], &device);
        let mut grad_features = Tensor::zeros(&[CANDIDATES, WIDTH], DType::F32, &device).unwrap();
        group.throughput(Throughput::Bytes(
            ((SELECTED + CANDIDATES) * WIDTH * std::mem::size_of::<f32>()) as u64,
        ));
        group.bench_function(
            BenchmarkId::new("index_select_backward", "1024_of_2048x12544"),
            |b| {
                b.iter(|| {
                    index_select_backward_into(&grad, 0, &indices, &mut grad_features).unwrap();
                    sync();
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, shape_ops);
criterion_main!(benches);
