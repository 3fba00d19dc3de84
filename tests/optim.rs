//! Optimizer updates against torch.optim (golden fixtures from scripts/make_fixtures_optim.py, run through
//! the `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver and
//! fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::optim::{
    adamw_step, clip_grad_norm, sgd_step, squared_norm, zero_state, AdamWConfig, SgdConfig,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Device, Tensor};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/optim/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 9] = fixtures![
    "sgd_plain",
    "sgd_momentum_wd",
    "sgd_nesterov",
    "sgd_dampening",
    "adamw_default",
    "adamw_wd_betas",
    "adamw_tiny_grads",
    "clip_grad_norm_clips",
    "clip_grad_norm_below",
];

fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(!expected.is_empty(), "{name}: no expected results");
    assert_eq!(expected.len(), results.tensors.len(), "{name}");
    for key in expected {
        let result = &key["expected.".len()..];
        let got = results
            .get(result)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result}");
        assert_close(
            &format!("{name}/{result} ({dtype} on {device})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

#[test]
fn torch_optim_fixtures_on_the_cpu() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-12);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
    }
}

#[test]
fn torch_optim_fixtures_in_half_precision() {
    // Half storage rounds the parameter after every step; state stays f32.
    for (name, bytes) in FIXTURES {
        if name == "adamw_tiny_grads" {
            continue; // updates of ~1e-2 relative are below bf16's resolution for some elements
        }
        check_fixture(name, bytes, DType::BF16, &Device::Cpu, 2e-2);
        check_fixture(name, bytes, DType::F16, &Device::Cpu, 5e-3);
    }
}

#[test]
fn torch_optim_fixtures_on_cuda() {
    let Some(dev) = detkd::cuda::gpu_for_test("torch_optim_fixtures_on_cuda") else {
        return;
    };
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &Device::Cuda(dev.clone()), 1e-5);
    }
}

fn random(rng: &mut Rng, n: usize, dtype: DType, device: &Device) -> Tensor {
    Tensor::from_vec(rng.normal_vec(n), &[n])
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
        .to_device(device)
        .unwrap()
}

#[test]
fn cuda_updates_match_the_cpu() {
    let Some(dev) = detkd::cuda::gpu_for_test("cuda_updates_match_the_cpu") else {
        return;
    };
    let gpu = Device::Cuda(dev);
    let mut rng = Rng::new(42);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::BF16, 1e-2)] {
        for n in [1usize, 1000, 70_001] {
            let p0 = random(&mut rng, n, dtype, &Device::Cpu);
            let grads: Vec<Tensor> = (0..3)
                .map(|_| random(&mut rng, n, dtype, &Device::Cpu))
                .collect();
            let sgd = SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-4,
                nesterov: true,
                ..Default::default()
            };
            let adam = AdamWConfig::default();
            let run = |device: &Device| {
                let mut p = p0.to_device(device).unwrap();
                let mut q = p0.to_device(device).unwrap();
                let mut buf = zero_state(&p).unwrap();
                let (mut m, mut v) = (zero_state(&q).unwrap(), zero_state(&q).unwrap());
                for (step, g) in grads.iter().enumerate() {
                    let g = g.to_device(device).unwrap();
                    sgd_step(&mut p, &g, Some(&mut buf), step == 0, &sgd).unwrap();
                    adamw_step(&mut q, &g, &mut m, &mut v, step as u64 + 1, &adam).unwrap();
                }
                let norm = squared_norm(&grads[0].to_device(device).unwrap()).unwrap();
                (
                    p.to_vec::<f64>().unwrap(),
                    q.to_vec::<f64>().unwrap(),
                    m.to_vec::<f64>().unwrap(),
                    norm,
                )
            };
            let cpu = run(&Device::Cpu);
            let cuda = run(&gpu);
            assert_close(&format!("sgd {dtype} n={n}"), &cuda.0, &cpu.0, tol);
            assert_close(&format!("adamw {dtype} n={n}"), &cuda.1, &cpu.1, tol);
            assert_close(&format!("exp_avg {dtype} n={n}"), &cuda.2, &cpu.2, 1e-5);
            assert_close(&format!("norm {dtype} n={n}"), &[cuda.3], &[cpu.3], 1e-5);
            // The reduction order is fixed: the same norm twice, bit for bit.
            let again = squared_norm(&grads[0].to_device(&gpu).unwrap()).unwrap();
            assert_eq!(again.to_bits(), cuda.3.to_bits(), "norm not reproducible");
        }
    }
    let mut a = random(&mut rng, 5000, DType::F32, &gpu);
    let mut a_cpu = a.to_device(&Device::Cpu).unwrap();
    let total_gpu = clip_grad_norm(&mut [&mut a], 1.0).unwrap();
    let total_cpu = clip_grad_norm(&mut [&mut a_cpu], 1.0).unwrap();
    assert_close("clip total", &[total_gpu], &[total_cpu], 1e-5);
    assert_close(
        "clipped",
        &a.to_vec::<f64>().unwrap(),
        &a_cpu.to_vec::<f64>().unwrap(),
        1e-5,
    );
}
