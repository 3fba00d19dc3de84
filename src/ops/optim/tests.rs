//! Optimizer updates against hand-computed steps, dtype paths and validation. Peer fixtures
//! (torch.optim) and CUDA parity live in tests/optim.rs.

use super::*;

fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

#[test]
fn sgd_momentum_nesterov_and_weight_decay_by_hand() {
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.0,
        weight_decay: 0.5,
        nesterov: false,
    };
    let mut p = t(vec![1.0, -2.0], &[2]);
    let mut buf = zero_state(&p).unwrap();
    let g = t(vec![0.2, 0.4], &[2]);
    sgd_step(&mut p, &g, Some(&mut buf), true, &cfg).unwrap();
    // d = g + 0.5 p = [0.7, -0.6]; buf = d; p -= 0.1 d.
    assert_eq!(buf.to_vec::<f64>().unwrap(), vec![0.7, -0.6]);
    let p1 = p.to_vec::<f64>().unwrap();
    assert!((p1[0] - 0.93).abs() < 1e-15 && (p1[1] + 1.94).abs() < 1e-15);
    sgd_step(&mut p, &g, Some(&mut buf), false, &cfg).unwrap();
    // d = [0.2 + 0.465, 0.4 - 0.97]; buf = 0.9·buf + d.
    let d = [0.2 + 0.5 * 0.93, 0.4 - 0.5 * 1.94];
    let b = [0.9 * 0.7 + d[0], 0.9 * -0.6 + d[1]];
    let p2 = p.to_vec::<f64>().unwrap();
    assert!((p2[0] - (0.93 - 0.1 * b[0])).abs() < 1e-15);
    assert!((p2[1] - (-1.94 - 0.1 * b[1])).abs() < 1e-15);

    let nesterov = SgdConfig {
        nesterov: true,
        weight_decay: 0.0,
        ..cfg
    };
    let mut p = t(vec![1.0], &[1]);
    let mut buf = zero_state(&p).unwrap();
    sgd_step(&mut p, &t(vec![2.0], &[1]), Some(&mut buf), true, &nesterov).unwrap();
    // buf = 2, step = g + 0.9·buf = 3.8.
    assert!((p.to_vec::<f64>().unwrap()[0] - (1.0 - 0.38)).abs() < 1e-15);
}

#[test]
fn plain_sgd_needs_no_buffer() {
    let mut p = t(vec![1.0, 2.0], &[2]);
    sgd_step(
        &mut p,
        &t(vec![1.0, -1.0], &[2]),
        None,
        true,
        &SgdConfig::default(),
    )
    .unwrap();
    assert_eq!(p.to_vec::<f64>().unwrap(), vec![0.99, 2.01]);
}

#[test]
fn adamw_first_steps_by_hand() {
    let cfg = AdamWConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut p = t(vec![0.5], &[1]);
    let (mut m, mut v) = (zero_state(&p).unwrap(), zero_state(&p).unwrap());
    adamw_step(&mut p, &t(vec![0.3], &[1]), &mut m, &mut v, 1, &cfg).unwrap();
    // Step 1: m̂ = g, v̂ = g², so the update is lr·g/(|g| + ε) ≈ lr after decay.
    let want = 0.5 * (1.0 - 0.001) - 0.01 * 0.3 / (0.3 + 1e-8);
    assert!((p.to_vec::<f64>().unwrap()[0] - want).abs() < 1e-12);
    assert!((m.to_vec::<f64>().unwrap()[0] - 0.03).abs() < 1e-15);
    assert!((v.to_vec::<f64>().unwrap()[0] - 0.001 * 0.09).abs() < 1e-15);
}

#[test]
fn half_parameters_keep_f32_state() {
    let mut p = Tensor::from_vec(vec![half::bf16::from_f32(1.0); 3], &[3]).unwrap();
    let g = Tensor::from_vec(vec![half::bf16::from_f32(0.5); 3], &[3]).unwrap();
    let mut buf = zero_state(&p).unwrap();
    assert_eq!(buf.dtype(), DType::F32);
    let cfg = SgdConfig {
        momentum: 0.9,
        lr: 0.5,
        ..Default::default()
    };
    sgd_step(&mut p, &g, Some(&mut buf), true, &cfg).unwrap();
    assert_eq!(p.to_vec::<f64>().unwrap(), vec![0.75; 3]);
    assert_eq!(buf.to_vec::<f64>().unwrap(), vec![0.5; 3]);
}

#[test]
fn clip_grad_norm_matches_pytorch_rule() {
    let mut a = t(vec![3.0, 0.0], &[2]);
    let mut b = t(vec![4.0], &[1]);
    let total = clip_grad_norm(&mut [&mut a, &mut b], 1.0).unwrap();
    assert_eq!(total, 5.0);
    let coef = 1.0 / (5.0 + 1e-6);
    assert_eq!(a.to_vec::<f64>().unwrap(), vec![3.0 * coef, 0.0]);
    // Below the threshold nothing changes; non-finite norms are reported, not applied.
    let mut c = t(vec![0.1], &[1]);
    assert!((clip_grad_norm(&mut [&mut c], 1.0).unwrap() - 0.1).abs() < 1e-15);
    assert_eq!(c.to_vec::<f64>().unwrap(), vec![0.1]);
    let mut d = t(vec![f64::NAN, 1.0], &[2]);
    assert!(clip_grad_norm(&mut [&mut d], 1.0).unwrap().is_nan());
    assert_eq!(d.to_vec::<f64>().unwrap()[1], 1.0);
}

#[test]
fn bad_input_is_an_error() {
    let mut p = t(vec![1.0, 2.0], &[2]);
    let g = t(vec![1.0, 2.0], &[2]);
    let mut bad = t(vec![0.0; 3], &[3]);
    let momentum = SgdConfig {
        momentum: 0.9,
        ..Default::default()
    };
    let msg = |r: Result<()>| r.unwrap_err().to_string();
    assert!(msg(sgd_step(&mut p, &g, None, true, &momentum)).contains("needs a buffer"));
    assert!(msg(sgd_step(&mut p, &g, Some(&mut bad), true, &momentum)).contains("[2]"));
    let mut f32_state = Tensor::zeros(&[2], DType::F32, &Device::Cpu).unwrap();
    assert!(msg(sgd_step(&mut p, &g, Some(&mut f32_state), true, &momentum)).contains("f64"));
    assert!(msg(sgd_step(
        &mut p,
        &t(vec![1.0], &[1]),
        None,
        true,
        &SgdConfig::default()
    ))
    .contains("`grad`"));
    let nesterov = SgdConfig {
        nesterov: true,
        ..Default::default()
    };
    assert!(msg(sgd_step(&mut p, &g, None, true, &nesterov)).contains("Nesterov"));
    let negative_lr = SgdConfig {
        lr: -1.0,
        ..Default::default()
    };
    assert!(msg(sgd_step(&mut p, &g, None, true, &negative_lr)).contains("`lr`"));
    let (mut m, mut v) = (zero_state(&p).unwrap(), zero_state(&p).unwrap());
    let adam = AdamWConfig::default();
    assert!(msg(adamw_step(&mut p, &g, &mut m, &mut v, 0, &adam)).contains("from 1"));
    let bad_beta = AdamWConfig { beta2: 1.0, ..adam };
    assert!(msg(adamw_step(&mut p, &g, &mut m, &mut v, 1, &bad_beta)).contains("beta2"));
    let bad_eps = AdamWConfig { eps: 0.0, ..adam };
    assert!(msg(adamw_step(&mut p, &g, &mut m, &mut v, 1, &bad_eps)).contains("eps"));
    let mut labels = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
    let li = Tensor::from_vec(vec![1i64, 2], &[2]).unwrap();
    assert!(msg(sgd_step(
        &mut labels,
        &li,
        None,
        true,
        &SgdConfig::default()
    ))
    .contains("float"));
    assert!(scale_in_place(&mut p, f64::INFINITY).is_err());
    assert!(clip_grad_norm(&mut [&mut p], 0.0).is_err());
    // Empty parameters are a no-op.
    let mut empty = t(vec![], &[0]);
    sgd_step(
        &mut empty,
        &t(vec![], &[0]),
        None,
        true,
        &SgdConfig::default(),
    )
    .unwrap();
}
