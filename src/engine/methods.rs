//! Building the distillation methods by name for `detkd distill` and the demo, with per-term weight
//! multipliers from a config file.

use super::model::TinyGflConfig;
use super::train::Detector;
use crate::distill::{
    DetectorOutputs, DetectorShape, Distiller, FeatureSource, LossTerm, StepContext,
};
use crate::error::{Error, Result};
use crate::nn::{Bound, BufferUpdates, ParamStore};
use std::collections::BTreeMap;

/// Every method `detkd distill --methods` accepts.
pub const METHODS: [&str; 5] = ["ld", "dsig", "gkd", "drkd", "hgd"];

/// The widths of a detector, for sizing adapters.
pub fn shape_of(d: &Detector) -> DetectorShape {
    let c = &d.model.cfg;
    DetectorShape {
        stage_channels: c.stage_channels.to_vec(),
        fpn_channels: c.fpn_channels,
        num_classes: c.num_classes,
        reg_max: c.reg_max,
    }
}

/// A method whose terms are multiplied by per-term factors (official weights × factor).
struct Scaled {
    inner: Box<dyn Distiller>,
    multipliers: BTreeMap<String, f64>,
}

impl Distiller for Scaled {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn loss(
        &self,
        b: &Bound,
        store: &ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        updates: &mut BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        let terms = self.inner.loss(b, store, student, teacher, ctx, updates)?;
        terms
            .into_iter()
            .map(|t| match self.multipliers.get(t.name) {
                Some(&m) => Ok(LossTerm {
                    name: t.name,
                    value: b.tape().scale(t.value, m)?,
                }),
                None => Ok(t),
            })
            .collect()
    }

    fn epoch_start(&mut self, epoch: usize, features: &mut dyn FeatureSource) -> Result<()> {
        self.inner.epoch_start(epoch, features)
    }
}

/// Builds `names` (any of [`METHODS`], each at most once), registering their trainable parts in the
/// student's store. `multipliers` maps a method name to `{term name: factor}`.
pub fn build_methods(
    names: &[String],
    student: &mut Detector,
    teacher: &Detector,
    seed: u64,
    multipliers: &BTreeMap<String, BTreeMap<String, f64>>,
) -> Result<Vec<Box<dyn Distiller>>> {
    let (s, t) = (shape_of(student), shape_of(teacher));
    let mut seen = Vec::new();
    let mut out: Vec<Box<dyn Distiller>> = Vec::new();
    for (k, name) in names.iter().enumerate() {
        if seen.contains(name) {
            return Err(Error::invalid(
                "methods",
                format!("`{name}` is listed twice"),
            ));
        }
        seen.push(name.clone());
        let method_seed = super::data::derive_seed(seed, 1000 + k as u64);
        let method = build_one(name, &mut student.store, &s, &t, method_seed)?;
        let m = multipliers.get(name).cloned().unwrap_or_default();
        out.push(if m.is_empty() {
            method
        } else {
            Box::new(Scaled {
                inner: method,
                multipliers: m,
            })
        });
    }
    if let Some(unknown) = multipliers.keys().find(|k| !names.contains(k)) {
        return Err(Error::invalid(
            "config",
            format!("weights given for `{unknown}`, which is not among the methods {names:?}"),
        ));
    }
    Ok(out)
}

fn build_one(
    name: &str,
    store: &mut ParamStore,
    student: &DetectorShape,
    teacher: &DetectorShape,
    seed: u64,
) -> Result<Box<dyn Distiller>> {
    use crate::distill::{drkd, dsig, gkd, hgd, ld};
    let levels = TinyGflConfig::FPN_STRIDES.len();
    Ok(match name {
        "ld" => Box::new(ld::LdDistiller::new(Default::default())?),
        "dsig" => Box::new(dsig::DsigDistiller::new(
            store,
            student,
            teacher,
            levels,
            Default::default(),
            seed,
        )?),
        "gkd" => Box::new(GkdWithPrototypes {
            inner: gkd::GkdDistiller::new(
                store,
                student,
                teacher,
                levels,
                Default::default(),
                seed,
            )?,
            num_classes: student.num_classes,
            images_per_rebuild: GKD_PROTOTYPE_IMAGES,
        }),
        "hgd" => Box::new(hgd::HgdDistiller::new(
            store,
            student,
            teacher,
            levels,
            Default::default(),
            seed,
        )?),
        "drkd" => Box::new(drkd::DrkdDistiller::new(
            store,
            student,
            teacher,
            levels,
            Default::default(),
            seed,
        )?),
        _ => {
            return Err(Error::invalid(
                "methods",
                format!("unknown method `{name}` (known: {})", METHODS.join(", ")),
            ))
        }
    })
}

/// Training images the GKD prototypes are rebuilt from before each epoch. The official code samples up to
/// 800 images per class of COCO; the synthetic set's images are i.i.d., so its first images are a random
/// sample, and 400 of them hold ≈ 200 boxes per class — enough for 10 prototypes per class and level at a
/// few seconds per epoch on a CPU.
pub const GKD_PROTOTYPE_IMAGES: usize = 400;

/// GKD with its prototype generation wired to the engine: before every epoch but the first (the official
/// code builds prototypes from the current student checkpoint; before any training there is nothing to
/// build from, and the robust weights are 1), frozen student and teacher forwards over
/// [`GKD_PROTOTYPE_IMAGES`] training images feed the PGM.
struct GkdWithPrototypes {
    inner: crate::distill::gkd::GkdDistiller,
    num_classes: usize,
    images_per_rebuild: usize,
}

impl Distiller for GkdWithPrototypes {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn loss(
        &self,
        b: &Bound,
        store: &ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        updates: &mut BufferUpdates,
    ) -> Result<Vec<LossTerm>> {
        self.inner.loss(b, store, student, teacher, ctx, updates)
    }

    fn epoch_start(&mut self, epoch: usize, features: &mut dyn FeatureSource) -> Result<()> {
        use crate::distill::gkd::{GkdPrototypeCollector, PgmConfig};
        if epoch == 0 {
            return Ok(());
        }
        let mut collector: Option<GkdPrototypeCollector> = None;
        features.for_each_batch(self.images_per_rebuild, &mut |batch| {
            let c = collector
                .get_or_insert_with(|| GkdPrototypeCollector::new(batch.student_fpn.len()));
            let s: Vec<&crate::Tensor> = batch.student_fpn.iter().collect();
            let t: Vec<&crate::Tensor> = batch.teacher_fpn.iter().collect();
            c.add(&s, &t, &batch.fpn_strides, &batch.targets)
        })?;
        if let Some(c) = collector {
            let prototypes = c.build(self.num_classes, &PgmConfig::default())?;
            self.inner.set_prototypes(prototypes)?;
        }
        Ok(())
    }
}
