//! Caching the frozen teacher's outputs per training image.
//!
//! The teacher runs in evaluation mode with GroupNorm only (per-sample statistics), so its outputs for an
//! image do not depend on the other images of the batch: they are a function of the image, its flip and the
//! padded canvas size (up to float rounding: a convolution over a different number of images may sum in a
//! different order). Over an epoch schedule every (image, flip) pair recurs, so each is computed once and
//! reused — for a 5-epoch schedule with flips this removes about 60% of the teacher's forwards. Entries are
//! keyed by `(image id, flipped, padded height, padded width)`; a batch with a new padded size simply
//! misses. The cache stops growing at its byte budget (later misses are computed and not stored).

use super::data::Batch;
use super::train::Detector;
use crate::autograd::{Tape, Var};
use crate::distill::DetectorOutputs;
use crate::error::Result;
use crate::ops::shape::{concat, index_select, narrow};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::rc::Rc;

type Key = (u64, bool, usize, usize);

/// One image's teacher outputs, each `[1, C, H, W]`: stages, FPN levels, classification and box logits.
#[derive(Debug)]
struct Entry {
    levels: [Vec<Tensor>; 4],
}

/// Per-image teacher outputs (see the module docs).
#[derive(Debug)]
pub struct TeacherCache {
    entries: HashMap<Key, Rc<Entry>>,
    bytes: usize,
    budget_bytes: usize,
    /// Images whose teacher outputs were computed (not in the cache), for the log.
    pub misses: usize,
    /// Images whose outputs came from the cache, for the log.
    pub hits: usize,
}

fn tensor_bytes(t: &Tensor) -> usize {
    t.numel() * t.dtype().size_in_bytes()
}

impl TeacherCache {
    /// An empty cache that stores up to `budget_bytes` bytes of tensors (the engine gives it 2 GiB).
    pub fn new(budget_bytes: usize) -> Self {
        TeacherCache {
            entries: HashMap::new(),
            bytes: 0,
            budget_bytes,
            misses: 0,
            hits: 0,
        }
    }

    /// The teacher's outputs for `batch` (whose images, on the training device, are `images`), as
    /// constants on `tape`.
    pub fn outputs(
        &mut self,
        teacher: &Detector,
        batch: &Batch,
        images: &Tensor,
        tape: &Tape,
    ) -> Result<DetectorOutputs> {
        let [b, _, h, w] = images.shape()[..] else {
            return Err(crate::Error::shape(
                "images",
                "[B, 3, H, W]",
                images.shape(),
            ));
        };
        if b != batch.metas.len() || b == 0 {
            return Err(crate::Error::shape(
                "images",
                format!(
                    "a batch of {} images (the batch's metas)",
                    batch.metas.len()
                ),
                images.shape(),
            ));
        }
        let keys: Vec<Key> = batch
            .metas
            .iter()
            .map(|m| (m.image_id, m.flipped, h, w))
            .collect();
        let missing: Vec<usize> = (0..keys.len())
            .filter(|&i| !self.entries.contains_key(&keys[i]))
            .collect();
        let mut fresh: HashMap<usize, Rc<Entry>> = HashMap::new();
        if !missing.is_empty() {
            let index = Tensor::from_vec(
                missing.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                &[missing.len()],
            )?;
            let sub = index_select(images, 0, &index)?;
            let scratch = Tape::new();
            let x = scratch.constant(sub);
            let out = teacher
                .model
                .forward(&teacher.store.bind_frozen(&scratch), x)?;
            let groups = [&out.stages, &out.fpn, &out.cls, &out.reg];
            for (j, &i) in missing.iter().enumerate() {
                let mut levels: [Vec<Tensor>; 4] = Default::default();
                for (g, vars) in groups.iter().enumerate() {
                    for &v in vars.iter() {
                        levels[g].push(narrow(&*scratch.value(v)?, 0, j, 1)?);
                    }
                }
                let entry = Rc::new(Entry { levels });
                let size: usize = entry.levels.iter().flatten().map(tensor_bytes).sum();
                if self.bytes + size <= self.budget_bytes {
                    self.bytes += size;
                    self.entries.insert(keys[i], entry.clone());
                }
                fresh.insert(i, entry);
            }
            self.misses += missing.len();
        }
        self.hits += keys.len() - missing.len();
        let per_image: Vec<Rc<Entry>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                fresh
                    .get(&i)
                    .or_else(|| self.entries.get(k))
                    .cloned()
                    .ok_or_else(|| crate::Error::invalid("teacher cache", "entry vanished"))
            })
            .collect::<Result<_>>()?;
        let gather = |g: usize| -> Result<Vec<Var>> {
            let count = per_image[0].levels[g].len();
            (0..count)
                .map(|l| {
                    let parts: Vec<&Tensor> = per_image.iter().map(|e| &e.levels[g][l]).collect();
                    Ok(tape.constant(concat(&parts, 0)?))
                })
                .collect()
        };
        let strides = super::model::TinyGflConfig::STAGE_STRIDES.to_vec();
        let fpn_strides = super::model::TinyGflConfig::FPN_STRIDES.to_vec();
        Ok(DetectorOutputs {
            stages: gather(0)?,
            stage_strides: strides,
            fpn: gather(1)?,
            fpn_strides,
            cls: gather(2)?,
            reg: gather(3)?,
        })
    }
}
