//! Tables, exact cases, adjoint identities, gradchecks, validation and empty inputs on the CPU. PyTorch
//! fixtures and CUDA parity live in tests/resize.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::tensor::DType;
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(shape.iter().product())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn axis_tables_follow_pytorch_source_indices() {
    // 4 → 8: scale ½, s = ½(o + ½) − ½; o = 0 clamps to 0, o = 7 sits past the last pixel.
    let t = AxisTable::<f64>::bilinear(4, 8);
    assert_eq!(t.i0, vec![0, 0, 0, 1, 1, 2, 2, 3]);
    assert_eq!(t.i1, vec![1, 1, 1, 2, 2, 3, 3, 3]);
    assert_eq!(t.l1, vec![0.0, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25]);
    assert_eq!(t.l0, vec![1.0, 0.75, 0.25, 0.75, 0.25, 0.75, 0.25, 0.75]);
    assert!(
        (t.weight(7, 3) - 1.0).abs() < 1e-15,
        "both taps on the last pixel"
    );
    // 10 → 4: scale 2.5, s = 2.5(o + ½) − ½ = 0.75, 3.25, 5.75, 8.25.
    let t = AxisTable::<f64>::bilinear(10, 4);
    assert_eq!(t.i0, vec![0, 3, 5, 8]);
    assert_eq!(t.l1, vec![0.75, 0.25, 0.75, 0.25]);
    // Identity.
    let t = AxisTable::<f32>::bilinear(5, 5);
    assert_eq!(
        (t.i0.clone(), t.i1.clone()),
        ((0..5).collect(), (0..5).collect())
    );
    assert!(t.l0.iter().all(|&v| v == 1.0) && t.l1.iter().all(|&v| v == 0.0));

    // Every output that reads an input lies in its [first, end) range, and nothing outside does.
    for (input, output) in [
        (7, 3),
        (3, 7),
        (5, 12),
        (12, 5),
        (1, 4),
        (4, 1),
        (9, 9),
        (100, 7),
    ] {
        let t = AxisTable::<f64>::bilinear(input, output);
        for i in 0..input {
            for o in 0..output {
                let reads = t.i0[o] as usize == i || t.i1[o] as usize == i;
                let inside = (t.first[i] as usize..t.end[i] as usize).contains(&o);
                assert_eq!(reads, inside, "{input}→{output}: input {i}, output {o}");
            }
        }
        // Weights of each output sum to 1.
        for o in 0..output {
            let total: f64 = (0..input).map(|i| t.weight(o, i)).sum();
            assert!((total - 1.0).abs() < 1e-15, "{input}→{output}: output {o}");
        }
    }
}

#[test]
fn exact_cases() {
    let (b, c, h, w) = (2, 3, 6, 8);
    let x = random(1, &[b, c, h, w]);
    let xt = tensor(x.clone(), &[b, c, h, w]);
    // Same size: identity.
    assert_eq!(values(&resize_bilinear(&xt, (h, w)).unwrap()), x);
    // Halving: s = 2o + ½, so every output is the mean of its 2×2 block.
    let y = values(&resize_bilinear(&xt, (h / 2, w / 2)).unwrap());
    for p in 0..b * c {
        for u in 0..h / 2 {
            for v in 0..w / 2 {
                let at = |yy: usize, xx: usize| x[(p * h + yy) * w + xx];
                let mean = (at(2 * u, 2 * v)
                    + at(2 * u, 2 * v + 1)
                    + at(2 * u + 1, 2 * v)
                    + at(2 * u + 1, 2 * v + 1))
                    / 4.0;
                assert!((y[(p * (h / 2) + u) * (w / 2) + v] - mean).abs() < 1e-14);
            }
        }
    }
    // A ramp along W stays a ramp (clamped at the borders) at any size.
    let ramp: Vec<f64> = (0..h * w).map(|i| (i % w) as f64).collect();
    let y = values(&resize_bilinear(&tensor(ramp, &[1, 1, h, w]), (5, 13)).unwrap());
    let scale = w as f64 / 13.0;
    for (v, &got) in y.iter().take(13).enumerate() {
        let s = (scale * (v as f64 + 0.5) - 0.5).clamp(0.0, (w - 1) as f64);
        assert!((got - s).abs() < 1e-13, "column {v}: {got} vs {s}");
    }
    // Nearest 2×.
    let up = values(&upsample_nearest2x(&xt).unwrap());
    for p in 0..b * c {
        for u in 0..2 * h {
            for v in 0..2 * w {
                assert_eq!(
                    up[(p * 2 * h + u) * 2 * w + v],
                    x[(p * h + u / 2) * w + v / 2]
                );
            }
        }
    }
}

#[test]
fn backward_is_the_adjoint_of_the_forward() {
    // ⟨resize(x), g⟩ = ⟨x, resize_backward(g)⟩ for up, down, mixed and non-integer factors.
    for (k, (h, w, oh, ow)) in [
        (5, 7, 9, 11),
        (9, 11, 5, 7),
        (6, 6, 4, 15),
        (13, 4, 3, 10),
        (1, 5, 3, 1),
        (8, 8, 8, 8),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random(10 + k as u64, &[2, 3, h, w]);
        let g = random(20 + k as u64, &[2, 3, oh, ow]);
        let y = values(&resize_bilinear(&tensor(x.clone(), &[2, 3, h, w]), (oh, ow)).unwrap());
        let dx =
            values(&resize_bilinear_backward(&tensor(g.clone(), &[2, 3, oh, ow]), (h, w)).unwrap());
        let (lhs, rhs) = (dot(&y, &g), dot(&x, &dx));
        assert!(
            (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
            "{h}x{w}→{oh}x{ow}: {lhs} vs {rhs}"
        );
    }
    let x = random(30, &[2, 2, 3, 5]);
    let g = random(31, &[2, 2, 6, 10]);
    let y = values(&upsample_nearest2x(&tensor(x.clone(), &[2, 2, 3, 5])).unwrap());
    let dx = values(&upsample_nearest2x_backward(&tensor(g.clone(), &[2, 2, 6, 10])).unwrap());
    assert!((dot(&y, &g) - dot(&x, &dx)).abs() < 1e-12);
}

#[test]
fn gradcheck_bilinear_and_nearest() {
    // Bilinear is linear in x, so its Jacobian is exact; non-integer factors up and down.
    for (h, w, oh, ow) in [(3, 4, 5, 7), (5, 6, 3, 4), (4, 3, 7, 2)] {
        let shape = [1, 2, h, w];
        let check = gradcheck(
            |v| {
                Ok(values(&resize_bilinear(
                    &tensor(v.to_vec(), &shape),
                    (oh, ow),
                )?))
            },
            |_, g| {
                Ok(values(&resize_bilinear_backward(
                    &tensor(g.to_vec(), &[1, 2, oh, ow]),
                    (h, w),
                )?))
            },
            &random(40, &shape),
            &GradcheckOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{h}x{w}→{oh}x{ow}: {e}"));
        assert!(check.nonzero_entries > 0);
    }
    let shape = [2, 1, 3, 2];
    let check = gradcheck(
        |v| Ok(values(&upsample_nearest2x(&tensor(v.to_vec(), &shape))?)),
        |_, g| {
            Ok(values(&upsample_nearest2x_backward(&tensor(
                g.to_vec(),
                &[2, 1, 6, 4],
            ))?))
        },
        &random(41, &shape),
        &GradcheckOptions::default(),
    )
    .unwrap();
    assert_eq!(check.nonzero_entries, 2 * 6 * 4);
}

#[test]
fn half_storage_matches_f64_on_the_rounded_inputs() {
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F16, 2e-3), (DType::BF16, 1e-2)] {
        let x = tensor(random(50, &[2, 3, 7, 9]), &[2, 3, 7, 9])
            .to_dtype(dtype)
            .unwrap();
        let x64 = x.to_dtype(DType::F64).unwrap();
        let y = resize_bilinear(&x, (10, 5)).unwrap();
        assert_eq!(y.dtype(), dtype);
        assert_close(
            &format!("bilinear {dtype}"),
            &values(&y),
            &values(&resize_bilinear(&x64, (10, 5)).unwrap()),
            tol,
        );
        let g = tensor(random(51, &[2, 3, 10, 5]), &[2, 3, 10, 5])
            .to_dtype(dtype)
            .unwrap();
        assert_close(
            &format!("bilinear backward {dtype}"),
            &values(&resize_bilinear_backward(&g, (7, 9)).unwrap()),
            &values(&resize_bilinear_backward(&g.to_dtype(DType::F64).unwrap(), (7, 9)).unwrap()),
            tol,
        );
        let up = upsample_nearest2x(&x).unwrap();
        assert_eq!(
            values(&up),
            values(&upsample_nearest2x(&x64).unwrap()),
            "an exact copy"
        );
    }
}

#[test]
fn into_variants_and_empty_inputs() {
    let x = tensor(random(60, &[1, 2, 4, 5]), &[1, 2, 4, 5]);
    let mut out = tensor(vec![f64::NAN; 2 * 6 * 3], &[1, 2, 6, 3]);
    resize_bilinear_into(&x, &mut out).unwrap();
    assert_eq!(values(&out), values(&resize_bilinear(&x, (6, 3)).unwrap()));
    let mut out = tensor(vec![f64::NAN; 2 * 8 * 10], &[1, 2, 8, 10]);
    upsample_nearest2x_into(&x, &mut out).unwrap();
    assert_eq!(values(&out), values(&upsample_nearest2x(&x).unwrap()));

    let empty = tensor(vec![], &[0, 3, 4, 4]);
    assert_eq!(
        resize_bilinear(&empty, (2, 9)).unwrap().shape(),
        &[0, 3, 2, 9]
    );
    assert_eq!(
        resize_bilinear_backward(&empty, (7, 1)).unwrap().shape(),
        &[0, 3, 7, 1]
    );
    let no_channels = tensor(vec![], &[2, 0, 4, 4]);
    assert_eq!(
        upsample_nearest2x(&no_channels).unwrap().shape(),
        &[2, 0, 8, 8]
    );
    assert_eq!(
        upsample_nearest2x_backward(&no_channels).unwrap().shape(),
        &[2, 0, 2, 2]
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let x = tensor(random(70, &[1, 2, 4, 5]), &[1, 2, 4, 5]);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let mut wrong_shape = tensor(vec![0.0; 12], &[1, 1, 3, 4]);
    let mut wrong_dtype = Tensor::zeros(&[1, 2, 3, 4], DType::F32, &Device::Cpu).unwrap();
    let mut odd = tensor(vec![0.0; 10], &[1, 2, 1, 5]);
    let cases: Vec<(String, &str)> = vec![
        (
            err(resize_bilinear(&tensor(vec![0.0; 20], &[4, 5]), (2, 2))),
            "`input`: expected shape [B, C, H, W], got [4, 5]",
        ),
        (
            err(resize_bilinear(&tensor(vec![], &[1, 2, 0, 5]), (2, 2))),
            "`input`: expected shape [B, C, H, W] with H, W > 0",
        ),
        (
            err(resize_bilinear(&x, (0, 3))),
            "`size`: the spatial size must be > 0 on both axes, got (0, 3)",
        ),
        (
            err(resize_bilinear(&x, (3, 1 << 31))),
            "`size`: width = 2147483648 exceeds 2^31 - 1",
        ),
        (
            err(resize_bilinear(
                &Tensor::from_vec(vec![0i64; 40], &[1, 2, 4, 5]).unwrap(),
                (2, 2),
            )),
            "`input`: expected dtype a float dtype",
        ),
        (
            err(resize_bilinear_backward(&x, (4, 0))),
            "`input_size`: the spatial size must be > 0",
        ),
        (
            err(resize_bilinear_backward(
                &tensor(vec![0.0; 5], &[5]),
                (4, 4),
            )),
            "`grad_output`: expected shape [B, C, H, W]",
        ),
        (
            resize_bilinear_into(&x, &mut wrong_shape)
                .unwrap_err()
                .to_string(),
            "`out`: expected shape [1, 2, 3, 4], got [1, 1, 3, 4]",
        ),
        (
            resize_bilinear_into(&x, &mut wrong_dtype)
                .unwrap_err()
                .to_string(),
            "`out`: expected dtype f64, got f32",
        ),
        (
            upsample_nearest2x_into(&x, &mut odd)
                .unwrap_err()
                .to_string(),
            "`out`: expected shape [1, 2, 8, 10], got [1, 2, 1, 5]",
        ),
        (
            err(upsample_nearest2x_backward(&x)),
            "`grad_output`: expected shape [B, C, 2H, 2W] (even spatial extents",
        ),
        (
            err(upsample_nearest2x(&tensor(vec![0.0; 3], &[1, 3]))),
            "`input`: expected shape [B, C, H, W]",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }
}
