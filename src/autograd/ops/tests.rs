//! Gradchecks of the tape ops end to end (recorded closures included), and compositions of several ops.
//! The ops' own backward passes have their gradchecks in `crate::ops`; these prove the wiring: which input
//! gets which gradient, optional inputs, constants left alone.

use crate::autograd::{tape_gradcheck, GradcheckOptions, Tape, Var};
use crate::error::Result;
use crate::testing::Rng;
use crate::Tensor;

pub(crate) fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

pub(crate) fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor {
    t(rng.normal_vec(shape.iter().product()), shape)
}

pub(crate) fn labels(v: Vec<i64>) -> Tensor {
    let n = v.len();
    Tensor::from_vec(v, &[n]).unwrap()
}

/// Gradcheck of `build` at `leaves`, requiring a Jacobian that is not all zero.
#[track_caller]
pub(crate) fn check(
    what: &str,
    build: impl Fn(&Tape, &[Var], &[Var]) -> Result<Var>,
    leaves: &[Tensor],
    constants: &[Tensor],
) {
    let report = tape_gradcheck(build, leaves, constants, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.nonzero_entries > 0, "{what}: all-zero Jacobian");
}

mod existing_families {
    use super::*;
    use crate::ops::dist_kl::{DflConfig, IntegralConfig, KdKlConfig};
    use crate::ops::focal::{MmcvFocalConfig, QualityFocalConfig, SigmoidFocalConfig};
    use crate::ops::loss::Reduction;
    use crate::ops::roi_align::{FpnLevels, LevelRule, RoiAlignConfig};
    use crate::ops::similarity::{CosineConfig, Distance, DsigEdgeConfig};

    #[test]
    fn matmul_all_transposes_and_batches() {
        let mut rng = Rng::new(1);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = randn(&mut rng, if ta { &[4, 3] } else { &[3, 4] });
            let b = randn(&mut rng, if tb { &[2, 4] } else { &[4, 2] });
            check(
                "matmul",
                |tp, l, _| tp.matmul(l[0], l[1], ta, tb),
                &[a, b],
                &[],
            );
        }
        let a = randn(&mut rng, &[2, 3, 4]);
        let b = randn(&mut rng, &[2, 4, 5]);
        check(
            "batched matmul, b constant",
            |tp, l, c| tp.matmul(l[0], c[0], false, false),
            &[a],
            &[b],
        );
    }

    #[test]
    fn roi_align_single_and_multilevel() {
        let mut rng = Rng::new(2);
        let rois = t(
            vec![0., 1.3, 0.7, 9.9, 7.1, 1., 2.2, 1.9, 6.6, 5.4],
            &[2, 5],
        );
        let cfg = RoiAlignConfig {
            output_size: (2, 3),
            ..Default::default()
        };
        check(
            "roi_align",
            |tp, l, c| tp.roi_align(l[0], c[0], 0.5, &cfg),
            &[randn(&mut rng, &[2, 2, 6, 7])],
            &[rois],
        );
        let levels = FpnLevels {
            spatial_scales: vec![1.0 / 16.0, 1.0 / 32.0],
            rule: LevelRule::Mmdet,
        };
        let rois = t(
            vec![0., 3.1, 2.7, 60.2, 50.3, 1., 10.4, 9.9, 150.2, 140.6],
            &[2, 5],
        );
        check(
            "roi_align_multilevel",
            |tp, l, c| tp.roi_align_multilevel(&[l[0], l[1]], c[0], &levels, &cfg),
            &[
                randn(&mut rng, &[2, 2, 8, 10]),
                randn(&mut rng, &[2, 2, 4, 5]),
            ],
            &[rois],
        );
    }

    #[test]
    fn focal_family() {
        let mut rng = Rng::new(3);
        let logits = randn(&mut rng, &[4, 3]);
        let targets = t(
            (0..12).map(|i| ((i * 5) % 7) as f64 / 7.0).collect(),
            &[4, 3],
        );
        let cfg = SigmoidFocalConfig {
            reduction: Reduction::Mean,
            ..Default::default()
        };
        check(
            "sigmoid_focal_loss",
            |tp, l, c| tp.sigmoid_focal_loss(l[0], c[0], &cfg),
            &[logits.try_clone().unwrap()],
            &[targets],
        );
        let lab = labels(vec![0, 3, 2, 1]);
        let class_weight = t(vec![1.0, 0.5, 2.0], &[3]);
        check(
            "sigmoid_focal_loss_mmcv with weight",
            |tp, l, c| {
                tp.sigmoid_focal_loss_mmcv(l[0], c[0], Some(c[1]), &MmcvFocalConfig::default())
            },
            &[logits.try_clone().unwrap()],
            &[lab.try_clone().unwrap(), class_weight],
        );
        let scores = t(vec![0.8, 0.0, 0.3, 0.55], &[4]);
        let anchor_weight = t(vec![1.0, 0.2, 0.7, 1.5], &[4]);
        let cfg = QualityFocalConfig {
            avg_factor: Some(2.5),
            ..Default::default()
        };
        check(
            "quality_focal_loss",
            |tp, l, c| tp.quality_focal_loss(l[0], c[0], c[1], Some(c[2]), &cfg),
            &[logits],
            &[lab, scores, anchor_weight],
        );
    }

    #[test]
    fn distribution_family() {
        let mut rng = Rng::new(4);
        let student = randn(&mut rng, &[6, 5]);
        let teacher = randn(&mut rng, &[6, 5]);
        let w = t(vec![1.0, 0.5, 0.0, 2.0, 1.0, 0.3], &[6]);
        let cfg = KdKlConfig {
            temperature: 2.0,
            ..Default::default()
        };
        check(
            "kd_kl_div",
            |tp, l, c| tp.kd_kl_div(l[0], c[0], Some(c[1]), Some(3.0), &cfg),
            &[student.try_clone().unwrap()],
            &[teacher, w.try_clone().unwrap()],
        );
        let targets = t(vec![0.3, 1.7, 3.2, 2.5, 0.0, 3.9], &[6]);
        let cfg = DflConfig {
            reg_max: 4,
            ..DflConfig::gfl()
        };
        check(
            "distribution_focal_loss",
            |tp, l, c| tp.distribution_focal_loss(l[0], c[0], Some(c[1]), None, &cfg),
            &[student.try_clone().unwrap()],
            &[targets, w],
        );
        check(
            "integral",
            |tp, l, _| tp.integral(l[0], &IntegralConfig { reg_max: 4 }),
            &[student.reshape(&[3, 2, 5]).unwrap()],
            &[],
        );
    }

    #[test]
    fn similarity_family() {
        let mut rng = Rng::new(5);
        let x = randn(&mut rng, &[4, 3]);
        let y = randn(&mut rng, &[5, 3]);
        let cos = CosineConfig::default();
        check(
            "normalize_rows",
            |tp, l, _| tp.normalize_rows(l[0], &cos),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "cosine_gram",
            |tp, l, _| tp.cosine_gram(l[0], &cos),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "cosine_cross, both leaves",
            |tp, l, _| tp.cosine_cross(l[0], l[1], &cos),
            &[x.try_clone().unwrap(), y.try_clone().unwrap()],
            &[],
        );
        check(
            "cosine_cross, y constant",
            |tp, l, c| tp.cosine_cross(l[0], c[0], &cos),
            &[x.try_clone().unwrap()],
            &[y.try_clone().unwrap()],
        );
        for kind in [Distance::Squared, Distance::Euclidean] {
            check(
                "pairwise_distance cross",
                |tp, l, _| tp.pairwise_distance(l[0], Some(l[1]), kind),
                &[x.try_clone().unwrap(), y.try_clone().unwrap()],
                &[],
            );
            check(
                "pairwise_distance self",
                |tp, l, _| tp.pairwise_distance(l[0], None, kind),
                &[x.try_clone().unwrap()],
                &[],
            );
        }
        let teacher = randn(&mut rng, &[4, 3]);
        let nodes = labels(vec![0, 2, 3]);
        let cfg = DsigEdgeConfig {
            loss_weight: 2.0,
            ..Default::default()
        };
        check(
            "dsig_edge_loss with nodes",
            |tp, l, c| tp.dsig_edge_loss(l[0], c[0], Some(c[1]), &cfg),
            &[x],
            &[teacher, nodes],
        );
    }

    #[test]
    fn graph_conv_family() {
        let mut rng = Rng::new(6);
        let adjacency = t(
            (0..16).map(|i| 0.2 + ((i * 7) % 5) as f64 / 5.0).collect(),
            &[4, 4],
        );
        let x = randn(&mut rng, &[4, 3]);
        let w = randn(&mut rng, &[3, 2]);
        let b = randn(&mut rng, &[2]);
        check(
            "graph_conv, learned A",
            |tp, l, _| tp.graph_conv(l[0], l[1], l[2], Some(l[3])),
            &[
                adjacency.try_clone().unwrap(),
                x.try_clone().unwrap(),
                w.try_clone().unwrap(),
                b,
            ],
            &[],
        );
        check(
            "graph_conv, fixed A, no bias",
            |tp, l, c| tp.graph_conv(c[0], l[0], l[1], None),
            &[x, w],
            &[adjacency],
        );
        let v = randn(&mut rng, &[2, 3, 5]);
        let bp = randn(&mut rng, &[2, 4, 5]);
        check(
            "glore_project",
            |tp, l, _| tp.glore_project(l[0], l[1]),
            &[v, bp.try_clone().unwrap()],
            &[],
        );
        let z = randn(&mut rng, &[2, 3, 4]);
        let a = randn(&mut rng, &[4, 4]);
        let bias = randn(&mut rng, &[4]);
        for relu in [false, true] {
            check(
                "glore_node_conv",
                |tp, l, _| tp.glore_node_conv(l[0], l[1], Some(l[2]), relu),
                &[
                    z.try_clone().unwrap(),
                    a.try_clone().unwrap(),
                    bias.try_clone().unwrap(),
                ],
                &[],
            );
        }
        let y = randn(&mut rng, &[2, 3, 4]);
        check(
            "glore_reproject",
            |tp, l, _| tp.glore_reproject(l[0], l[1]),
            &[y, bp],
            &[],
        );
    }

    #[test]
    fn glore_chain_composes() {
        // Z = V·Bpᵀ, H = relu(Z(I + Aᵀ) + b), X̃ = H·Bp: Bp is used twice, so its gradient accumulates.
        let mut rng = Rng::new(7);
        let v = randn(&mut rng, &[1, 3, 5]);
        let bp = randn(&mut rng, &[1, 2, 5]);
        let a = randn(&mut rng, &[2, 2]);
        check(
            "glore chain",
            |tp, l, _| {
                let z = tp.glore_project(l[0], l[1])?;
                let h = tp.glore_node_conv(z, l[2], None, true)?;
                tp.glore_reproject(h, l[1])
            },
            &[v, bp, a],
            &[],
        );
    }
}

mod shape_and_prototype {
    use super::*;
    use crate::ops::prototype::SoftAssignConfig;

    #[test]
    fn shape_ops() {
        let mut rng = Rng::new(8);
        let x = randn(&mut rng, &[2, 3, 4]);
        check(
            "reshape",
            |tp, l, _| tp.reshape(l[0], &[6, 4]),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "permute",
            |tp, l, _| tp.permute(l[0], &[2, 0, 1]),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "transpose",
            |tp, l, _| tp.transpose(l[0], 0, 2),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "narrow",
            |tp, l, _| tp.narrow(l[0], 2, 1, 2),
            &[x.try_clone().unwrap()],
            &[],
        );
        let y = randn(&mut rng, &[2, 5, 4]);
        check(
            "concat",
            |tp, l, _| tp.concat(&[l[0], l[1], l[0]], 1),
            &[x.try_clone().unwrap(), y],
            &[],
        );
        check(
            "split then concat reversed",
            |tp, l, _| {
                let parts = tp.split(l[0], 1, &[1, 2])?;
                tp.concat(&[parts[1], parts[0]], 1)
            },
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "index_select with duplicates",
            |tp, l, c| tp.index_select(l[0], 1, c[0]),
            &[x],
            &[labels(vec![2, 0, 2, 1])],
        );
    }

    #[test]
    fn split_validates_sizes() {
        let tape = Tape::new();
        let x = tape.leaf(t(vec![0.0; 6], &[2, 3]));
        assert!(tape.split(x, 1, &[1, 1]).is_err());
        assert!(tape.split(x, 2, &[1]).is_err());
    }

    #[test]
    fn soft_assignment_to_both_inputs() {
        let mut rng = Rng::new(9);
        let x = randn(&mut rng, &[5, 3]);
        let p = randn(&mut rng, &[4, 3]);
        let cfg = SoftAssignConfig {
            temperature: 2.0,
            ..Default::default()
        };
        check(
            "soft_assignment",
            |tp, l, _| tp.soft_assignment(l[0], l[1], &cfg),
            &[x.try_clone().unwrap(), p.try_clone().unwrap()],
            &[],
        );
        check(
            "soft_assignment, fixed prototypes",
            |tp, l, c| tp.soft_assignment(l[0], c[0], &cfg),
            &[x],
            &[p],
        );
    }
}

mod boxes {
    use super::*;
    use crate::ops::boxes::GiouLossConfig;

    #[test]
    fn distance2bbox_then_giou() {
        // GFL's chain: distances → boxes around anchor points → GIoU against the targets.
        let points = t(vec![4.0, 5.0, 10.0, 3.0, 7.5, 7.5], &[3, 2]);
        let distances = t(
            vec![1.2, 2.1, 3.3, 0.7, 2.2, 1.4, 0.9, 3.1, 1.7, 2.6, 0.8, 1.9],
            &[3, 4],
        );
        let targets = t(
            vec![2.0, 3.5, 7.0, 6.0, 8.5, 1.0, 11.2, 6.1, 5.0, 4.0, 9.0, 10.0],
            &[3, 4],
        );
        let w = t(vec![0.5, 1.0, 2.0], &[3]);
        let cfg = GiouLossConfig::default();
        check(
            "distance2bbox + giou_loss",
            |tp, l, c| {
                let boxes = tp.distance2bbox(c[0], l[0], None)?;
                tp.giou_loss(boxes, c[1], Some(c[2]), Some(2.0), &cfg)
            },
            &[distances.try_clone().unwrap()],
            &[points.try_clone().unwrap(), targets, w],
        );
        check(
            "distance2bbox clamped",
            |tp, l, c| tp.distance2bbox(c[0], l[0], Some((20.0, 20.0))),
            &[distances],
            &[points],
        );
    }
}

mod elementwise {
    use super::*;

    #[test]
    fn broadcasting_binary_ops() {
        let mut rng = Rng::new(10);
        let a = randn(&mut rng, &[2, 3, 4]);
        let b = randn(&mut rng, &[1, 3, 1]);
        let positive = t((0..3).map(|i| 1.0 + i as f64 * 0.5).collect(), &[1, 3, 1]);
        for (name, op) in [("add", 0), ("sub", 1), ("mul", 2)] {
            check(
                name,
                |tp, l, _| match op {
                    0 => tp.add(l[0], l[1]),
                    1 => tp.sub(l[0], l[1]),
                    _ => tp.mul(l[0], l[1]),
                },
                &[a.try_clone().unwrap(), b.try_clone().unwrap()],
                &[],
            );
        }
        check(
            "div",
            |tp, l, _| tp.div(l[0], l[1]),
            &[a.try_clone().unwrap(), positive],
            &[],
        );
        check(
            "scale and broadcast_to",
            |tp, l, _| {
                let s = tp.scale(l[0], -1.5)?;
                tp.broadcast_to(s, &[2, 2, 3, 1])
            },
            &[b],
            &[],
        );
    }

    #[test]
    fn unary_ops_away_from_kinks() {
        let mut rng = Rng::new(11);
        // |x| ≥ 0.1 keeps relu/abs away from 0; log/sqrt get positive inputs.
        let x: Vec<f64> = rng
            .normal_vec(12)
            .into_iter()
            .map(|v| if v.abs() < 0.1 { v + 0.3 } else { v })
            .collect();
        let x = t(x, &[3, 4]);
        let positive = t((0..12).map(|i| 0.2 + i as f64 * 0.3).collect(), &[3, 4]);
        for name in ["neg", "relu", "sigmoid", "exp", "square", "abs"] {
            check(
                name,
                |tp, l, _| match name {
                    "neg" => tp.neg(l[0]),
                    "relu" => tp.relu(l[0]),
                    "sigmoid" => tp.sigmoid(l[0]),
                    "exp" => tp.exp(l[0]),
                    "square" => tp.square(l[0]),
                    _ => tp.abs(l[0]),
                },
                &[x.try_clone().unwrap()],
                &[],
            );
        }
        for name in ["log", "sqrt"] {
            check(
                name,
                |tp, l, _| {
                    if name == "log" {
                        tp.log(l[0])
                    } else {
                        tp.sqrt(l[0])
                    }
                },
                &[positive.try_clone().unwrap()],
                &[],
            );
        }
    }

    #[test]
    fn reductions_softmax_and_norms() {
        let mut rng = Rng::new(12);
        let x = randn(&mut rng, &[2, 3, 5]);
        let y = randn(&mut rng, &[2, 3, 5]);
        check(
            "sum_all",
            |tp, l, _| tp.sum_all(l[0]),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "mean_all",
            |tp, l, _| tp.mean_all(l[0]),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "sum_axes keepdim",
            |tp, l, _| tp.sum_axes(l[0], &[0, -1], true),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "mean_axes",
            |tp, l, _| tp.mean_axes(l[0], &[1], false),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "max_last_axis values",
            |tp, l, _| Ok(tp.max_last_axis(l[0])?.0),
            &[x.try_clone().unwrap()],
            &[],
        );
        for temperature in [1.0, 2.5] {
            check(
                "softmax",
                |tp, l, _| tp.softmax(l[0], temperature),
                &[x.try_clone().unwrap()],
                &[],
            );
            check(
                "log_softmax",
                |tp, l, _| tp.log_softmax(l[0], temperature),
                &[x.try_clone().unwrap()],
                &[],
            );
        }
        check(
            "mse_loss",
            |tp, l, _| tp.mse_loss(l[0], l[1]),
            &[x.try_clone().unwrap(), y.try_clone().unwrap()],
            &[],
        );
        check(
            "frobenius distance",
            |tp, l, c| {
                let d = tp.sub(l[0], c[0])?;
                tp.frobenius_norm(d)
            },
            &[x.try_clone().unwrap()],
            &[y],
        );
    }

    #[test]
    fn frobenius_norm_of_zero_has_zero_gradient() {
        let tape = Tape::new();
        let x = tape.leaf(t(vec![0.0; 4], &[2, 2]));
        let n = tape.frobenius_norm(x).unwrap();
        assert_eq!(tape.value(n).unwrap().to_vec::<f64>().unwrap(), vec![0.0]);
        let g = tape.backward(n).unwrap();
        assert_eq!(g.get(x).unwrap().to_vec::<f64>().unwrap(), vec![0.0; 4]);
    }
}

mod nn_ops {
    use super::*;
    use crate::ops::conv2d::Conv2dConfig;
    use crate::ops::norm::{BatchNormConfig, GroupNormConfig};

    #[test]
    fn conv2d_with_and_without_bias() {
        let mut rng = Rng::new(13);
        let x = randn(&mut rng, &[2, 3, 5, 6]);
        let w = randn(&mut rng, &[4, 3, 3, 3]);
        let b = randn(&mut rng, &[4]);
        let cfg = Conv2dConfig::square(2, 1, 1);
        check(
            "conv2d",
            |tp, l, _| tp.conv2d(l[0], l[1], Some(l[2]), &cfg),
            &[x.try_clone().unwrap(), w.try_clone().unwrap(), b],
            &[],
        );
        let one = randn(&mut rng, &[5, 3, 1, 1]);
        check(
            "conv2d 1x1, constant input",
            |tp, l, c| tp.conv2d(c[0], l[0], None, &Conv2dConfig::default()),
            &[one],
            &[x],
        );
    }

    #[test]
    fn resize_and_upsample() {
        let mut rng = Rng::new(14);
        let x = randn(&mut rng, &[1, 2, 3, 4]);
        check(
            "resize_bilinear up",
            |tp, l, _| tp.resize_bilinear(l[0], (5, 7)),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "resize_bilinear down",
            |tp, l, _| tp.resize_bilinear(l[0], (2, 3)),
            &[x.try_clone().unwrap()],
            &[],
        );
        check(
            "upsample_nearest2x",
            |tp, l, _| tp.upsample_nearest2x(l[0]),
            &[x],
            &[],
        );
    }

    #[test]
    fn group_and_batch_norm() {
        let mut rng = Rng::new(15);
        let x = randn(&mut rng, &[2, 4, 3, 3]);
        let g = randn(&mut rng, &[4]);
        let b = randn(&mut rng, &[4]);
        let gn = GroupNormConfig {
            num_groups: 2,
            ..Default::default()
        };
        check(
            "group_norm",
            |tp, l, _| tp.group_norm(l[0], Some(l[1]), Some(l[2]), &gn),
            &[
                x.try_clone().unwrap(),
                g.try_clone().unwrap(),
                b.try_clone().unwrap(),
            ],
            &[],
        );
        check(
            "batch_norm_train",
            |tp, l, _| {
                Ok(tp
                    .batch_norm_train(
                        l[0],
                        Some(l[1]),
                        Some(l[2]),
                        None,
                        &BatchNormConfig::default(),
                    )?
                    .0)
            },
            &[
                x.try_clone().unwrap(),
                g.try_clone().unwrap(),
                b.try_clone().unwrap(),
            ],
            &[],
        );
        let mean = t(vec![0.1, -0.2, 0.3, 0.0], &[4]);
        let var = t(vec![1.5, 0.5, 2.0, 1.0], &[4]);
        check(
            "batch_norm_eval",
            |tp, l, c| tp.batch_norm_eval(l[0], Some(c[0]), Some(c[1]), (&mean, &var), 1e-5),
            &[x],
            &[g, b],
        );
    }
}
