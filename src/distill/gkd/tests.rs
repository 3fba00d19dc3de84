use super::pgm::{densities, gap_crop};
use super::*;
use crate::autograd::{tape_gradcheck, GradcheckOptions};
use crate::distill::test_support::{on_tape, t, vals};
use crate::distill::ImageTargets;
use crate::nn::ParamStore;
use crate::Device;

fn shape(fpn: usize, classes: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![4, 8],
        fpn_channels: fpn,
        num_classes: classes,
        reg_max: 4,
    }
}

/// Two images of 32×32 px, two levels (strides 8, 16: maps 4×4 and 2×2), student width 2, teacher 3,
/// 3 classes. The level rule with `s₀ = 12` puts boxes under 24 px on level 0.
struct Problem {
    student: Vec<Tensor>, // fpn0, fpn1, cls0, cls1
    teacher: Vec<Tensor>,
    assign: DenseAssignment,
    strides: Vec<f64>,
}

fn problem(seed: u64) -> Problem {
    let mut rng = Rng::new(seed);
    let mut normal = |shape: &[usize]| {
        let n = shape.iter().product();
        t(rng.normal_vec(n), shape)
    };
    let student = vec![
        normal(&[2, 2, 4, 4]),
        normal(&[2, 2, 2, 2]),
        normal(&[2, 3, 4, 4]),
        normal(&[2, 3, 2, 2]),
    ];
    let teacher = vec![
        normal(&[2, 3, 4, 4]),
        normal(&[2, 3, 2, 2]),
        normal(&[2, 3, 4, 4]),
        normal(&[2, 3, 2, 2]),
    ];
    let images = vec![
        ImageTargets {
            boxes: vec![[2.0, 3.0, 20.0, 17.0], [10.0, 1.0, 30.0, 30.0]],
            labels: vec![0, 2],
        },
        ImageTargets {
            boxes: vec![
                [0.0, 0.0, 9.0, 6.0],
                [5.0, 18.0, 31.0, 31.0],
                [1.0, 2.0, 31.0, 28.0],
            ],
            labels: vec![1, 0, 1],
        },
    ];
    let a = 20;
    let positives = vec![5, 6, 17, a + 3, a + 14, a + 18, a + 19];
    let which = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 2)];
    let positive_boxes = which.iter().map(|&(i, k)| images[i].boxes[k]).collect();
    let positive_labels = which.iter().map(|&(i, k)| images[i].labels[k]).collect();
    let mut points = Vec::new();
    let mut strides = Vec::new();
    for (s, n) in [(8.0, 4), (16.0, 2)] {
        for y in 0..n {
            for x in 0..n {
                points.push([(x as f64 + 0.5) * s, (y as f64 + 0.5) * s]);
                strides.push(s);
            }
        }
    }
    let anchor_boxes = points
        .iter()
        .zip(&strides)
        .map(|(p, s)| {
            [
                p[0] - 4.0 * s,
                p[1] - 4.0 * s,
                p[0] + 4.0 * s,
                p[1] + 4.0 * s,
            ]
        })
        .collect();
    let assign = DenseAssignment {
        batch: 2,
        anchors_per_image: a,
        points,
        strides,
        anchor_boxes,
        positives,
        positive_boxes,
        positive_labels,
        images,
        thresholds: vec![vec![0.2; 2], vec![0.2; 3]],
    };
    Problem {
        student,
        teacher,
        assign,
        strides: vec![8.0, 16.0],
    }
}

fn prototypes(seed: u64) -> GkdPrototypes {
    let mut rng = Rng::new(seed);
    let mut level = |labels: Vec<i64>| {
        let k = labels.len();
        LevelPrototypes {
            student: t(rng.normal_vec(k * 2), &[k, 2]),
            teacher: t(rng.normal_vec(k * 3), &[k, 3]),
            labels: Tensor::from_vec(labels, &[k]).unwrap(),
            source_rows: (0..k).collect(),
        }
    };
    GkdPrototypes {
        levels: vec![level(vec![0, 0, 1, 2]), level(vec![0, 1, 1])],
        num_classes: 3,
    }
}

fn distiller(cfg: GkdConfig, with_prototypes: bool) -> (ParamStore, GkdDistiller) {
    let mut store = ParamStore::new();
    let mut d = GkdDistiller::new(&mut store, &shape(2, 3), &shape(3, 3), 2, cfg, 7).unwrap();
    if with_prototypes {
        d.set_prototypes(prototypes(11)).unwrap();
    }
    store.to_dtype(crate::DType::F64).unwrap();
    (store, d)
}

fn test_cfg() -> GkdConfig {
    GkdConfig {
        level_base_scale: 12.0,
        ..GkdConfig::default()
    }
}

fn ctx(assign: &DenseAssignment, epoch: usize) -> StepContext<'_> {
    StepContext {
        assignment: assign,
        student_gfl: None,
        epoch,
        num_epochs: 4,
        step_seed: 0,
        image_size: (32, 32),
    }
}

fn outputs(v: &[Var], strides: &[f64]) -> DetectorOutputs {
    DetectorOutputs {
        stages: vec![],
        stage_strides: vec![],
        fpn: v[..2].to_vec(),
        fpn_strides: strides.to_vec(),
        cls: v[2..4].to_vec(),
        reg: vec![],
    }
}

fn inputs<'a>(v: &'a [Tensor], strides: &[f64]) -> GkdInputs<'a> {
    GkdInputs {
        fpn: vec![&v[0], &v[1]],
        fpn_strides: strides.to_vec(),
        cls: vec![&v[2], &v[3]],
    }
}

fn adapter_values(store: &ParamStore, d: &GkdDistiller) -> Vec<Tensor> {
    d.adapters()
        .iter()
        .flat_map(|c| [c.weight, c.bias.unwrap()])
        .map(|id| store.value(id).try_clone().unwrap())
        .collect()
}

fn sum_terms(tape: &Tape, terms: &[LossTerm]) -> Result<Var> {
    let mut total = terms[0].value;
    for term in &terms[1..] {
        total = tape.add(total, term.value)?;
    }
    Ok(total)
}

/// The whole loss, with the robustness weights computed once at the unperturbed point and held fixed.
fn check_whole_loss(cfg: GkdConfig) {
    let p = problem(3);
    let (store, d) = distiller(cfg, true);
    let c = ctx(&p.assign, 1);
    let fixed = {
        let tape = Tape::new();
        let s: Vec<Var> = on_tape(&tape, &p.student, false);
        let tt: Vec<Var> = on_tape(&tape, &p.teacher, false);
        let b = store.bind(&tape);
        let adapters = d.adapter_vars(&b);
        let (_, r) = d
            .terms(
                &tape,
                &adapters,
                &outputs(&s, &p.strides),
                &outputs(&tt, &p.strides),
                &c,
                None,
            )
            .unwrap();
        r
    };
    // Prototypes of classes 0 and 1 exist at both levels: those weights differ from 1.
    assert!(fixed
        .per_level
        .iter()
        .flatten()
        .any(|&r| (r - 1.0).abs() > 1e-3));
    let mut leaves: Vec<Tensor> = p.student.iter().map(|x| x.try_clone().unwrap()).collect();
    leaves.extend(adapter_values(&store, &d));
    let report = tape_gradcheck(
        |tape, leaves, consts| {
            let adapters = vec![(leaves[4], leaves[5]), (leaves[6], leaves[7])];
            let (terms, _) = d.terms(
                tape,
                &adapters,
                &outputs(&leaves[..4], &p.strides),
                &outputs(consts, &p.strides),
                &c,
                Some(&fixed),
            )?;
            sum_terms(tape, &terms)
        },
        &leaves,
        &p.teacher,
        &GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.nonzero_entries > 100, "{report:?}");
}

#[test]
fn gradcheck_of_the_released_configuration() {
    check_whole_loss(test_cfg());
}

#[test]
fn gradcheck_with_the_global_cosine_loss() {
    check_whole_loss(GkdConfig {
        global: GlobalKnowledge::Cosine,
        ..test_cfg()
    });
}

#[test]
fn gradcheck_with_the_soft_assignment_variant() {
    check_whole_loss(GkdConfig {
        global: GlobalKnowledge::SoftAssignment { temperature: 0.2 },
        ..test_cfg()
    });
}

#[test]
fn terms_follow_the_formulas() {
    // The fg/bg terms and the soft term recomputed on the host from the same inputs.
    let p = problem(5);
    let (store, d) = distiller(test_cfg(), true);
    let c = ctx(&p.assign, 1);
    let tape = Tape::new();
    let s: Vec<Var> = on_tape(&tape, &p.student, false);
    let tt: Vec<Var> = on_tape(&tape, &p.teacher, false);
    let b = store.bind(&tape);
    let adapters = d.adapter_vars(&b);
    let (so, to) = (outputs(&s, &p.strides), outputs(&tt, &p.strides));
    let (terms, robust) = d.terms(&tape, &adapters, &so, &to, &c, None).unwrap();
    let value = |name: &str| {
        let v = terms.iter().find(|t| t.name == name).unwrap().value;
        vals(&tape.value(v).unwrap())[0]
    };
    let names: Vec<&str> = terms.iter().map(|t| t.name).collect();
    assert_eq!(names, ["loss_kd_point", "loss_bg_point", "loss_kd_soft"]);

    // Robust weights: GAP over the crops, max cosine per class in each space.
    let boxes: Vec<Box4> = p
        .assign
        .images
        .iter()
        .flat_map(|i| i.boxes.clone())
        .collect();
    let labels: Vec<usize> = p
        .assign
        .images
        .iter()
        .flat_map(|i| i.labels.clone())
        .collect();
    let image_of = [0, 0, 1, 1, 1];
    let protos = prototypes(11);
    let gap = |map: &Tensor, img: usize, bx: &Box4, stride: f64| -> Vec<f64> {
        let [_, ch, h, w] = map.shape()[..] else {
            panic!()
        };
        let (y0, y1, x0, x1) = gap_crop(bx, stride, h, w);
        let v = vals(map);
        (0..ch)
            .map(|c| {
                let mut sum = 0.0;
                for y in y0..=y1 {
                    for x in x0..=x1 {
                        sum += v[((img * ch + c) * h + y) * w + x];
                    }
                }
                sum / ((y1 - y0 + 1) * (x1 - x0 + 1)) as f64
            })
            .collect()
    };
    let cos = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (na * nb)
    };
    for l in 0..2 {
        let lp = &protos.levels[l];
        let pl = lp.labels.to_vec::<i64>().unwrap();
        let (ps, pt) = (vals(&lp.student), vals(&lp.teacher));
        for (n, bx) in boxes.iter().enumerate() {
            let fs = gap(&p.student[l], image_of[n], bx, p.strides[l]);
            let ft = gap(&p.teacher[l], image_of[n], bx, p.strides[l]);
            let best = |f: &[f64], protos: &[f64], d: usize| {
                (0..pl.len())
                    .filter(|&k| pl[k] == labels[n] as i64)
                    .map(|k| cos(f, &protos[k * d..(k + 1) * d]))
                    .fold(f64::NEG_INFINITY, f64::max)
            };
            let (bs, bt) = (best(&fs, &ps, 2), best(&ft, &pt, 3));
            let want = if bs.is_finite() {
                1.0 - (bs - bt).abs()
            } else {
                1.0
            };
            assert!(
                (robust.per_level[l][n] - want).abs() < 1e-12,
                "level {l} box {n}"
            );
        }
    }
    // Class 2 has no prototype at level 1: weight 1.
    assert_eq!(robust.per_level[1][1], 1.0);

    // Feature terms from the adapted maps.
    let adapted: Vec<Vec<f64>> = (0..2)
        .map(|l| {
            let (w, bias) = adapters[l];
            vals(
                &tape
                    .value(
                        tape.conv2d(so.fpn[l], w, Some(bias), &d.adapters()[l].cfg)
                            .unwrap(),
                    )
                    .unwrap(),
            )
        })
        .collect();
    let levels_of: Vec<usize> = boxes.iter().map(|b| gkd_box_level(b, 12.0, 2)).collect();
    assert_eq!(levels_of, [0, 1, 0, 0, 1]);
    let (mut fg, mut bg) = (0.0, 0.0);
    for l in 0..2 {
        let (h, w, stride) = ([4, 2][l], [4, 2][l], p.strides[l]);
        let tv = vals(&p.teacher[l]);
        let mut mask = vec![0.0f64; 2 * h * w];
        for (n, bx) in boxes.iter().enumerate() {
            if levels_of[n] != l {
                continue;
            }
            let img = image_of[n];
            let lx = ((bx[0] / stride).floor().max(0.0) as usize).min(w - 1);
            let ly = ((bx[1] / stride).floor().max(0.0) as usize).min(h - 1);
            let rx = ((bx[2] / stride).floor() as usize).min(w);
            let ry = ((bx[3] / stride).floor() as usize).min(h);
            let r = robust.per_level[l][n];
            if rx <= lx || ry <= ly {
                let m = &mut mask[img * h * w + ly * w + lx];
                *m = m.max(r);
            } else {
                for y in ly..ry {
                    for x in lx..rx {
                        mask[img * h * w + y * w + x] = r;
                    }
                }
            }
        }
        let (mut sf, mut sb, mut nf, mut nb) = (0.0, 0.0, 0.0, 0.0);
        for img in 0..2 {
            for c in 0..3 {
                for q in 0..h * w {
                    let i = (img * 3 + c) * h * w + q;
                    let d2 = (adapted[l][i] - tv[i]).powi(2);
                    let m = mask[img * h * w + q];
                    let o = if m > 0.0 { 0.0 } else { 1.0 - m };
                    sf += m * d2;
                    sb += o * d2;
                    nf += m;
                    nb += o;
                }
            }
        }
        fg += sf / (2.0 * nf).max(1.0);
        bg += sb / (2.0 * nb).max(1.0);
    }
    let a = 1.0 - 1.0 / 4.0;
    assert!((value("loss_kd_point") - a * fg / 2.0).abs() < 1e-12);
    assert!((value("loss_bg_point") - 4.0 * a * bg / 2.0).abs() < 1e-12);

    // Soft labels: softmax over classes at the positives, T = 2, weights r' of the GT box at its level.
    let flat = |maps: &[Tensor]| -> Vec<Vec<f64>> {
        let mut rows = Vec::new();
        for img in 0..2 {
            for m in maps {
                let [_, ch, h, w] = m.shape()[..] else {
                    panic!()
                };
                let v = vals(m);
                for q in 0..h * w {
                    rows.push((0..ch).map(|c| v[(img * ch + c) * h * w + q]).collect());
                }
            }
        }
        rows
    };
    let (sr, tr) = (flat(&p.student[2..]), flat(&p.teacher[2..]));
    let gt_index = [0, 0, 1, 2, 3, 4, 4];
    let temp: f64 = 2.0;
    let softmax = |z: &[f64]| {
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| ((v - m) / temp).exp()).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let mut soft = 0.0;
    for (i, &anchor) in p.assign.positives.iter().enumerate() {
        let (ps, pt) = (softmax(&sr[anchor]), softmax(&tr[anchor]));
        let kl: f64 = pt.iter().zip(&ps).map(|(t, s)| t * (t.ln() - s.ln())).sum();
        let k = gt_index[i];
        soft += robust.per_level[levels_of[k]][k] * temp * temp / 3.0 * kl;
    }
    soft /= 7.0;
    assert!((value("loss_kd_soft") - soft).abs() < 1e-12);
}

#[test]
fn without_prototypes_every_weight_is_one_and_the_engine_path_matches_compute() {
    let p = problem(9);
    let (store, d) = distiller(test_cfg(), false);
    let c = ctx(&p.assign, 0);
    let tape = Tape::new();
    let s: Vec<Var> = on_tape(&tape, &p.student, true);
    let tt: Vec<Var> = on_tape(&tape, &p.teacher, false);
    let b = store.bind(&tape);
    let mut updates = BufferUpdates::default();
    let terms = d
        .loss(
            &b,
            &store,
            &outputs(&s, &p.strides),
            &outputs(&tt, &p.strides),
            &c,
            &mut updates,
        )
        .unwrap();
    let total = sum_terms(&tape, &terms).unwrap();
    let loss = vals(&tape.value(total).unwrap())[0];
    let grads = tape.backward(total).unwrap();
    let adapters = d.adapter_vars(&b);
    let (_, r) = d
        .terms(
            &tape,
            &adapters,
            &outputs(&s, &p.strides),
            &outputs(&tt, &p.strides),
            &c,
            None,
        )
        .unwrap();
    assert!(r.per_level.iter().flatten().all(|&w| w == 1.0));

    let out = d
        .compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &c,
        )
        .unwrap();
    assert_eq!(out.loss, loss);
    assert_eq!(out.terms.len(), 3);
    for (g, &v) in out.student_grads.iter().zip(&s) {
        assert_eq!(vals(g), vals(grads.get(v).unwrap()));
    }
    assert_eq!(out.param_grads.len(), 4);
}

#[test]
fn attenuation_and_switches() {
    let p = problem(4);
    let (store, d) = distiller(test_cfg(), true);
    let run = |d: &GkdDistiller, epoch| {
        d.compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &ctx(&p.assign, epoch),
        )
        .unwrap()
    };
    let (e0, e2) = (run(&d, 0), run(&d, 2));
    // a = 1 at epoch 0, 1/2 at epoch 2 of 4; the soft term is not attenuated.
    for k in 0..2 {
        assert!((e2.terms[k].1 - 0.5 * e0.terms[k].1).abs() < 1e-12);
    }
    assert_eq!(e2.terms[2].1, e0.terms[2].1);
    let e = d
        .compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &ctx(&p.assign, 4),
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch < num_epochs"), "{e}");

    let mut store2 = ParamStore::new();
    let off = GkdDistiller::new(
        &mut store2,
        &shape(2, 3),
        &shape(3, 3),
        2,
        GkdConfig {
            robust_weights: false,
            attenuation: false,
            ..test_cfg()
        },
        7,
    )
    .unwrap();
    store2.to_dtype(crate::DType::F64).unwrap();
    let mut off = off;
    off.set_prototypes(prototypes(11)).unwrap();
    let unweighted = off
        .compute(
            &store2,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &ctx(&p.assign, 3),
        )
        .unwrap();
    let (_, plain) = distiller(test_cfg(), false);
    let at_zero = plain
        .compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &ctx(&p.assign, 0),
        )
        .unwrap();
    // Same seed → same adapters; no robust weights and no attenuation at epoch 3 = r = 1 at epoch 0.
    assert_eq!(unweighted.loss, at_zero.loss);
}

#[test]
fn empty_ground_truth_and_no_positives_are_documented_zeros() {
    let p = problem(6);
    let (store, d) = distiller(test_cfg(), true);
    let mut assign = p.assign.clone();
    assign.positives.clear();
    assign.positive_boxes.clear();
    assign.positive_labels.clear();
    let out = d
        .compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &p.strides),
            &ctx(&assign, 0),
        )
        .unwrap();
    assert_eq!(out.terms[2], ("loss_kd_soft", 0.0));
    assert!(out.loss.is_finite() && out.loss > 0.0);
    // The class-logit gradients are exactly zero without positives.
    assert!(vals(&out.student_grads[2]).iter().all(|&g| g == 0.0));

    for image in &mut assign.images {
        image.boxes.clear();
        image.labels.clear();
    }
    let d_global = {
        let mut s = ParamStore::new();
        let mut g = GkdDistiller::new(
            &mut s,
            &shape(2, 3),
            &shape(3, 3),
            2,
            GkdConfig {
                global: GlobalKnowledge::Cosine,
                ..test_cfg()
            },
            7,
        )
        .unwrap();
        g.set_prototypes(prototypes(11)).unwrap();
        s.to_dtype(crate::DType::F64).unwrap();
        (s, g)
    };
    for (store, d) in [(&store, &d), (&d_global.0, &d_global.1)] {
        let out = d
            .compute(
                store,
                &inputs(&p.student, &p.strides),
                &inputs(&p.teacher, &p.strides),
                &ctx(&assign, 0),
            )
            .unwrap();
        // All background: no foreground term, the background term over every cell.
        assert_eq!(out.terms[0], ("loss_kd_point", 0.0));
        assert!(out.terms[1].1 > 0.0 && out.terms[1].1.is_finite());
        if let Some(pair) = out.terms.get(3) {
            assert_eq!(*pair, ("loss_kd_pair", 0.0));
        }
        assert!(out
            .student_grads
            .iter()
            .all(|g| vals(g).iter().all(|v| v.is_finite())));
    }
}

#[test]
fn bad_inputs_are_errors() {
    let p = problem(8);
    let (store, d) = distiller(test_cfg(), true);
    let c = ctx(&p.assign, 0);
    let run = |s: &[Tensor], te: &[Tensor], c: &StepContext<'_>| {
        d.compute(&store, &inputs(s, &p.strides), &inputs(te, &p.strides), c)
            .unwrap_err()
            .to_string()
    };
    // Teacher map of the wrong size.
    let mut teacher: Vec<Tensor> = p.teacher.iter().map(|x| x.try_clone().unwrap()).collect();
    teacher[0] = t(vec![0.0; 2 * 3 * 3 * 3], &[2, 3, 3, 3]);
    let e = run(&p.student, &teacher, &c);
    assert!(e.contains("teacher.fpn[0]"), "{e}");
    // Student width not the adapter's.
    let mut student: Vec<Tensor> = p.student.iter().map(|x| x.try_clone().unwrap()).collect();
    student[1] = t(vec![0.0; 2 * 4 * 2 * 2], &[2, 4, 2, 2]);
    let e = run(&student, &p.teacher, &c);
    assert!(e.contains("adapter's input width"), "{e}");
    // Empty batch.
    let empty_s: Vec<Tensor> = p
        .student
        .iter()
        .map(|x| {
            let mut s = x.shape().to_vec();
            s[0] = 0;
            Tensor::zeros(&s, crate::DType::F64, &Device::Cpu).unwrap()
        })
        .collect();
    let empty_t: Vec<Tensor> = p
        .teacher
        .iter()
        .map(|x| {
            let mut s = x.shape().to_vec();
            s[0] = 0;
            Tensor::zeros(&s, crate::DType::F64, &Device::Cpu).unwrap()
        })
        .collect();
    let e = run(&empty_s, &empty_t, &c);
    assert!(e.contains("non-empty batch"), "{e}");
    // Ground truth for the wrong number of images; a positive whose box is not a GT box; a label out of
    // range; an inverted box; strides that differ.
    let mut assign = p.assign.clone();
    assign.images.pop();
    assert!(run(&p.student, &p.teacher, &ctx(&assign, 0)).contains("ground truth of 2 images"));
    let mut assign = p.assign.clone();
    assign.positive_boxes[0][0] += 0.5;
    assert!(run(&p.student, &p.teacher, &ctx(&assign, 0)).contains("not a ground-truth box"));
    let mut assign = p.assign.clone();
    assign.images[0].labels[0] = 3;
    assert!(run(&p.student, &p.teacher, &ctx(&assign, 0)).contains("out of range for 3 classes"));
    let mut assign = p.assign.clone();
    assign.images[1].boxes[0] = [5.0, 0.0, 1.0, 6.0];
    assert!(run(&p.student, &p.teacher, &ctx(&assign, 0)).contains("x1 ≤ x2"));
    let mut assign = p.assign.clone();
    assign.anchors_per_image = 19;
    assert!(run(&p.student, &p.teacher, &ctx(&assign, 0)).contains("do not match"));
    let e = d
        .compute(
            &store,
            &inputs(&p.student, &p.strides),
            &inputs(&p.teacher, &[8.0, 32.0]),
            &c,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("student's strides"), "{e}");

    // Prototypes that do not fit.
    let (_, mut d2) = distiller(test_cfg(), false);
    let mut wrong = prototypes(1);
    wrong.levels.pop();
    assert!(d2
        .set_prototypes(wrong)
        .unwrap_err()
        .to_string()
        .contains("expected 2 levels"));
    let mut wrong = prototypes(1);
    wrong.levels[0].student = t(vec![0.0; 12], &[4, 3]);
    assert!(d2
        .set_prototypes(wrong)
        .unwrap_err()
        .to_string()
        .contains("level 0"));
    let mut wrong = prototypes(1);
    wrong.num_classes = 4;
    assert!(d2
        .set_prototypes(wrong)
        .unwrap_err()
        .to_string()
        .contains("classes"));
    // Configs.
    let mut s = ParamStore::new();
    for cfg in [
        GkdConfig {
            temperature: 0.0,
            ..GkdConfig::default()
        },
        GkdConfig {
            global: GlobalKnowledge::SoftAssignment { temperature: -1.0 },
            ..GkdConfig::default()
        },
    ] {
        assert!(GkdDistiller::new(&mut s, &shape(2, 3), &shape(3, 3), 2, cfg, 0).is_err());
    }
    assert!(GkdDistiller::new(
        &mut s,
        &shape(2, 3),
        &shape(3, 4),
        2,
        GkdConfig::default(),
        0
    )
    .is_err());
}

#[test]
fn adapters_are_registered_with_torch_default_init() {
    let mut store = ParamStore::new();
    let d = GkdDistiller::new(
        &mut store,
        &shape(32, 8),
        &shape(64, 8),
        3,
        GkdConfig::default(),
        1,
    )
    .unwrap();
    assert_eq!(d.name(), "gkd");
    for l in 0..3 {
        let w = store
            .id(&format!("distill.gkd.adapter.{l}.weight"))
            .unwrap();
        let b = store.id(&format!("distill.gkd.adapter.{l}.bias")).unwrap();
        assert_eq!(store.value(w).shape(), &[64, 32, 3, 3]);
        assert_eq!(store.value(b).shape(), &[64]);
        let bound = 1.0 / (32.0f64 * 9.0).sqrt();
        let v = vals(store.value(w));
        assert!(v.iter().all(|x| x.abs() <= bound));
        let var = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
        assert!(
            (var - bound * bound / 3.0).abs() < 0.1 * bound * bound / 3.0,
            "{var}"
        );
    }
    // Seeded: the same seed gives the same adapters.
    let mut again = ParamStore::new();
    GkdDistiller::new(
        &mut again,
        &shape(32, 8),
        &shape(64, 8),
        3,
        GkdConfig::default(),
        1,
    )
    .unwrap();
    let name = "distill.gkd.adapter.2.weight";
    assert_eq!(
        vals(store.value(store.id(name).unwrap())),
        vals(again.value(again.id(name).unwrap()))
    );
}

#[test]
fn level_rule_and_masks() {
    assert_eq!(gkd_box_level(&[0.0, 0.0, 111.0, 111.0], 56.0, 5), 1);
    assert_eq!(gkd_box_level(&[0.0, 0.0, 110.0, 110.0], 56.0, 5), 0);
    assert_eq!(gkd_box_level(&[0.0, 0.0, 5000.0, 5000.0], 56.0, 5), 4);
    // Default s₀ = 16 on TinyGFL's 3 levels: < 32 px → 0, 32–64 → 1, ≥ 64 → 2.
    let lv = |side: f64| gkd_box_level(&[0.0, 0.0, side - 1.0, side - 1.0], 16.0, 3);
    assert_eq!(
        (lv(6.0), lv(31.0), lv(32.0), lv(63.0), lv(64.0), lv(128.0)),
        (0, 0, 1, 1, 2, 2)
    );

    let (_, d) = distiller(GkdConfig::default(), false);
    let boxes = BatchBoxes {
        per_image: vec![vec![
            [8.0, 8.0, 24.0, 16.0],  // cells x 1..3, y 1..2
            [16.0, 0.0, 40.0, 20.0], // x 2..4 (clamped to 4), y 0..2; overwrites (1, 2)
            [3.0, 25.0, 5.0, 31.0],  // empty extent: single cell (3, 0), max
            [-9.0, 30.0, 2.0, 31.0], // clamped left, empty: (3, 0) again with a smaller weight
        ]],
        labels: vec![0; 4],
        levels: vec![0; 4],
    };
    let m = d.level_mask(0, 8.0, &boxes, &[0.5, 0.75, 0.25, 0.125], 1, 4, 4);
    #[rustfmt::skip]
    let want = [
        0.0, 0.0, 0.75, 0.75,
        0.0, 0.5, 0.75, 0.75,
        0.0, 0.0, 0.0, 0.0,
        0.25, 0.0, 0.0, 0.0,
    ];
    assert_eq!(m, want);
    // Boxes of another level leave the mask empty.
    let m = d.level_mask(1, 8.0, &boxes, &[0.5, 0.75, 0.25, 0.125], 1, 4, 4);
    assert!(m.iter().all(|&v| v == 0.0));
}

#[test]
fn box_features_pool_the_clamped_integer_crops() {
    let mut rng = Rng::new(2);
    let map = t(rng.normal_vec(2 * 3 * 5 * 4), &[2, 3, 5, 4]);
    let boxes = vec![
        vec![[0.0, 0.0, 7.9, 7.9], [9.0, 17.0, 100.0, 100.0]],
        vec![],
    ];
    let f = box_gap_features(&map, 8.0, &boxes).unwrap();
    assert_eq!(f.shape(), &[2, 3]);
    let v = vals(&map);
    let at = |c: usize, y: usize, x: usize| v[(c * 5 + y) * 4 + x];
    let got = vals(&f);
    for c in 0..3 {
        // Rows 0..=0, cols 0..=0.
        assert!((got[c] - at(c, 0, 0)).abs() < 1e-14);
        // Rows 2..=4 and cols 1..=3 (clamped from 12 and 12).
        let mut s = 0.0;
        for y in 2..5 {
            for x in 1..4 {
                s += at(c, y, x);
            }
        }
        assert!((got[3 + c] - s / 9.0).abs() < 1e-14);
    }
    assert_eq!(
        gap_crop(&[-20.0, 50.0, -10.0, 60.0], 8.0, 5, 4),
        (4, 4, 0, 0)
    );
    // No boxes at all: [0, C].
    assert_eq!(
        box_gap_features(&map, 8.0, &[vec![], vec![]])
            .unwrap()
            .shape(),
        &[0, 3]
    );
    // The tape version's gradient (each crop cell receives g/|crop|).
    tape_gradcheck(
        |tape, leaves, _| tape_box_gap_features(tape, leaves[0], 8.0, &boxes),
        &[map.try_clone().unwrap()],
        &[],
        &GradcheckOptions::default(),
    )
    .unwrap();
    // Bad input.
    assert!(box_gap_features(&map, 8.0, &boxes[..1])
        .unwrap_err()
        .to_string()
        .contains("one box list per image"));
    assert!(box_gap_features(&map, 0.0, &boxes).is_err());
    let nan_box = vec![vec![[0.0, f64::NAN, 1.0, 1.0]], vec![]];
    assert!(box_gap_features(&map, 8.0, &nan_box)
        .unwrap_err()
        .to_string()
        .contains("non-finite"));
    assert!(box_gap_features(&t(vec![0.0; 4], &[2, 2]), 8.0, &boxes).is_err());
}

/// Unit vectors around `centre` with small noise.
fn cluster(rng: &mut Rng, centre: &[f64], n: usize, noise: f64) -> Vec<Vec<f64>> {
    (0..n)
        .map(|_| centre.iter().map(|c| c + noise * rng.normal()).collect())
        .collect()
}

#[test]
fn matching_pursuit_picks_one_representative_per_cluster_by_size() {
    let mut rng = Rng::new(17);
    let d_s = 6;
    // Three orthogonal directions (with a scale that the normalisation removes), clusters of 9, 7 and 5,
    // and 14 scattered outliers in the orthogonal complement: 40 % of the boxes, so the density quantile
    // keeps all three clusters. The teacher space is a different embedding of the same structure.
    let centres = [
        vec![3.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        vec![0.0, 0.0, 5.0, 0.0, 0.0, 0.0],
        vec![0.0, 0.0, 0.0, 0.0, 2.0, 0.0],
    ];
    let sizes = [9, 7, 5];
    let mut student = Vec::new();
    let mut owner = Vec::new();
    for (k, (c, &n)) in centres.iter().zip(&sizes).enumerate() {
        student.extend(cluster(
            &mut rng,
            c,
            n,
            0.05 * c.iter().map(|v| v.abs()).sum::<f64>(),
        ));
        owner.extend(std::iter::repeat(k).take(n));
    }
    for _ in 0..14 {
        let r = rng.normal_vec(3);
        student.push(vec![0.0, r[0], 0.0, r[1], 0.0, r[2]]);
        owner.push(usize::MAX);
    }
    let embed = |x: &[f64]| -> Vec<f64> {
        vec![
            2.0 * x[2],
            x[0],
            0.5 * x[1],
            x[4],
            x[3],
            x[5],
            0.1 * x[0],
            0.0,
        ]
    };
    let teacher: Vec<Vec<f64>> = student.iter().map(|x| embed(x)).collect();
    let n = student.len();
    let s = t(student.concat(), &[n, d_s]);
    let te = t(teacher.concat(), &[n, 8]);
    let chosen = joint_matching_pursuit(&s, &te, &PgmConfig::default()).unwrap();
    assert_eq!(chosen.len(), 10);
    // Every pick is a cluster member (outliers have low density), the first three cover the clusters
    // largest first.
    assert!(chosen.iter().all(|&i| owner[i] != usize::MAX), "{chosen:?}");
    let first: Vec<usize> = chosen[..3].iter().map(|&i| owner[i]).collect();
    assert_eq!(first, [0, 1, 2], "{chosen:?}");

    // Densities: an isolated point counts itself only; the tight cluster's members count their mates.
    let xn: Vec<f64> = {
        let rows = vals(&s);
        rows.chunks(d_s)
            .flat_map(|r| {
                let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
                r.iter().map(move |v| v / norm).collect::<Vec<_>>()
            })
            .collect()
    };
    let rho = densities(&xn, n, d_s, 0.1).unwrap();
    assert!(rho[..9].iter().all(|&r| r > 5.0), "{rho:?}");
    // A direct evaluation of one density.
    let direct: f64 = (0..n)
        .map(|j| {
            let dot: f64 = (0..d_s).map(|c| xn[c] * xn[j * d_s + c]).sum();
            (-((1.0 - dot) / 0.1f64).powi(2)).exp()
        })
        .sum();
    assert!((rho[0] - direct).abs() < 1e-12);
}

#[test]
fn matching_pursuit_edge_cases() {
    let cfg = PgmConfig::default();
    let empty = t(vec![], &[0, 3]);
    assert!(joint_matching_pursuit(&empty, &t(vec![], &[0, 2]), &cfg)
        .unwrap()
        .is_empty());
    // One box: nothing is strictly above the 0-th density.
    let one = t(vec![1.0, 2.0, 3.0], &[1, 3]);
    assert!(
        joint_matching_pursuit(&one, &t(vec![1.0, 0.5], &[1, 2]), &cfg)
            .unwrap()
            .is_empty()
    );
    // All equal: no candidate either.
    let same = t([1.0, 2.0, 3.0].repeat(4), &[4, 3]);
    assert!(
        joint_matching_pursuit(&same, &t([1.0, 0.5].repeat(4), &[4, 2]), &cfg)
            .unwrap()
            .is_empty()
    );
    // Bad input.
    let e = joint_matching_pursuit(&one, &t(vec![1.0, 0.5, 2.0, 1.0], &[2, 2]), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("one row per student row"), "{e}");
    let e = joint_matching_pursuit(
        &t(vec![f64::NAN, 1.0, 1.0], &[1, 3]),
        &t(vec![1.0, 0.5], &[1, 2]),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not finite"), "{e}");
    let bad = PgmConfig {
        density_quantile: 1.0,
        ..PgmConfig::default()
    };
    assert!(joint_matching_pursuit(&one, &t(vec![1.0, 0.5], &[1, 2]), &bad).is_err());
}

#[test]
fn prototypes_are_built_per_class_and_level_from_the_collected_boxes() {
    let mut rng = Rng::new(23);
    // Images with boxes of two classes; both levels' maps random.
    let targets: Vec<ImageTargets> = (0..6)
        .map(|i| ImageTargets {
            boxes: vec![
                [1.0 + i as f64, 2.0, 20.0, 22.0],
                [8.0, 9.0, 30.0, 31.0 - i as f64],
                [0.0, 0.0, 3.0, 3.0], // under the minimum size: dropped by the sample
            ],
            labels: vec![0, 1, 1],
        })
        .collect();
    let sample = pgm_sample(&targets, 3, &PgmConfig::default(), 5).unwrap();
    assert_eq!(sample.images.len(), 6);
    assert!(sample.images.iter().all(|im| im.targets.boxes.len() == 2));
    let mut collector = GkdPrototypeCollector::new(2);
    let mut all_s = [Vec::new(), Vec::new()];
    for chunk in sample.images.chunks(4) {
        let b = chunk.len();
        let s0 = t(rng.normal_vec(b * 2 * 4 * 4), &[b, 2, 4, 4]);
        let s1 = t(rng.normal_vec(b * 2 * 2 * 2), &[b, 2, 2, 2]);
        let t0 = t(rng.normal_vec(b * 3 * 4 * 4), &[b, 3, 4, 4]);
        let t1 = t(rng.normal_vec(b * 3 * 2 * 2), &[b, 3, 2, 2]);
        let tg: Vec<ImageTargets> = chunk.iter().map(|im| im.targets.clone()).collect();
        collector
            .add(&[&s0, &s1], &[&t0, &t1], &[8.0, 16.0], &tg)
            .unwrap();
        let boxes: Vec<Vec<Box4>> = tg.iter().map(|t| t.boxes.clone()).collect();
        all_s[0].extend(vals(&box_gap_features(&s0, 8.0, &boxes).unwrap()));
        all_s[1].extend(vals(&box_gap_features(&s1, 16.0, &boxes).unwrap()));
    }
    assert_eq!(collector.len(), 12);
    let protos = collector.build(3, &PgmConfig::default()).unwrap();
    assert_eq!(protos.levels.len(), 2);
    for (l, level) in protos.levels.iter().enumerate() {
        let labels = level.labels.to_vec::<i64>().unwrap();
        // Labels grouped ascending, only classes 0 and 1 (class 2 has no box), ≤ 10 each.
        assert!(labels.windows(2).all(|w| w[0] <= w[1]));
        assert!(labels.iter().all(|&c| c == 0 || c == 1));
        assert!(labels.iter().filter(|&&c| c == 0).count() <= 10);
        // Unnormalised features of the chosen boxes, of the right class (box 0 of an image is class 0).
        let s = vals(&level.student);
        for (k, &row) in level.source_rows.iter().enumerate() {
            assert_eq!(labels[k], (row % 2) as i64);
            assert_eq!(&s[k * 2..k * 2 + 2], &all_s[l][row * 2..row * 2 + 2]);
        }
    }
    let (_, mut d) = distiller(test_cfg(), false);
    d.set_prototypes(protos).unwrap();

    // Sampling: ≤ max_images_per_class per class, seeded.
    let cfg = PgmConfig {
        max_images_per_class: 2,
        ..PgmConfig::default()
    };
    let a = pgm_sample(&targets, 3, &cfg, 1).unwrap();
    let b = pgm_sample(&targets, 3, &cfg, 1).unwrap();
    assert_eq!(a, b);
    for class in 0..2 {
        let n = a
            .images
            .iter()
            .filter(|im| im.targets.labels.contains(&class))
            .count();
        assert_eq!(n, 2);
    }
    assert!(pgm_sample(&targets, 1, &cfg, 1)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    assert!(collector
        .add(&[], &[], &[], &[])
        .unwrap_err()
        .to_string()
        .contains("expected 2 levels"));
}
