//! Named parameters and buffers, their binding to a tape for one step, and strict checkpoint I/O.
//!
//! A [`ParamStore`] owns every tensor of a model under a PyTorch-style dotted name
//! (`backbone.stage1.0.conv.weight`), in registration order. Each training step binds the store to a fresh
//! [`Tape`] ([`ParamStore::bind`]): trainable parameters become leaves, buffers (running statistics)
//! constants; a frozen teacher binds everything as constants ([`ParamStore::bind_frozen`]). Values are shared
//! with the tape (`Rc`), so binding copies nothing, and once the tape is dropped the optimizer gets exclusive
//! access back ([`ParamStore::value_mut`]).

use crate::autograd::{Gradients, Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::io::NamedTensors;
use crate::tensor::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

/// Whether an entry is trained or only carried (and saved) with the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Receives gradients and optimizer updates.
    Trainable,
    /// Saved and loaded with the model, never trained (BatchNorm running mean/var).
    Buffer,
}

/// A handle to one entry of a [`ParamStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(usize);

impl ParamId {
    /// Position of the entry in its store's registration order (0-based).
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    value: Rc<Tensor>,
    kind: ParamKind,
}

/// The tensors of a model, by name.
#[derive(Debug, Default)]
pub struct ParamStore {
    entries: Vec<Entry>,
    by_name: BTreeMap<String, usize>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> Self {
        ParamStore::default()
    }

    /// Registers `value` under `name`; names are unique.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        value: Tensor,
        kind: ParamKind,
    ) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::invalid(
                "name",
                format!("`{name}` is registered twice"),
            ));
        }
        self.by_name.insert(name.clone(), self.entries.len());
        self.entries.push(Entry {
            name,
            value: Rc::new(value),
            kind,
        });
        Ok(ParamId(self.entries.len() - 1))
    }

    /// Number of entries, parameters and buffers together.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing has been registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries, in registration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.entries.len()).map(ParamId)
    }

    /// The trainable entries, in registration order.
    pub fn trainable(&self) -> impl Iterator<Item = ParamId> + '_ {
        self.ids()
            .filter(|id| self.entries[id.0].kind == ParamKind::Trainable)
    }

    /// Number of trainable scalars.
    pub fn num_trainable_elements(&self) -> usize {
        self.trainable().map(|id| self.value(id).numel()).sum()
    }

    /// The entry registered under the dotted `name`, if any.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied().map(ParamId)
    }

    /// The dotted name of `id` (PyTorch's state-dict key). `id` must come from this store (an
    /// out-of-range id panics).
    pub fn name(&self, id: ParamId) -> &str {
        &self.entries[id.0].name
    }

    /// Whether `id` is trainable or a buffer. `id` must come from this store (an out-of-range id panics).
    pub fn kind(&self, id: ParamId) -> ParamKind {
        self.entries[id.0].kind
    }

    /// The current value of `id`, shared (clone the `Rc` to keep it without copying). `id` must come from
    /// this store (an out-of-range id panics).
    pub fn value(&self, id: ParamId) -> &Rc<Tensor> {
        &self.entries[id.0].value
    }

    /// Exclusive access for an in-place update; an error while a tape (or anything else) still shares the
    /// value.
    pub fn value_mut(&mut self, id: ParamId) -> Result<&mut Tensor> {
        let entry = &mut self.entries[id.0];
        Rc::get_mut(&mut entry.value).ok_or_else(|| {
            Error::invalid(
                entry.name.clone(),
                "is still shared (drop the tape of the last step before updating)",
            )
        })
    }

    /// Replaces the value of `id` with a tensor of the same shape (dtype and device may change).
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let entry = &mut self.entries[id.0];
        if value.shape() != entry.value.shape() {
            return Err(Error::shape(
                entry.name.clone(),
                format!("{:?}", entry.value.shape()),
                value.shape(),
            ));
        }
        entry.value = Rc::new(value);
        Ok(())
    }

    /// Converts every float entry to `dtype` (e.g. f64 for a gradient check); integer buffers keep theirs.
    pub fn to_dtype(&mut self, dtype: crate::DType) -> Result<()> {
        for entry in &mut self.entries {
            if entry.value.dtype().is_float() && entry.value.dtype() != dtype {
                entry.value = Rc::new(entry.value.to_dtype(dtype)?);
            }
        }
        Ok(())
    }

    /// Moves every entry to `device`.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        for entry in &mut self.entries {
            if entry.value.device() != *device {
                entry.value = Rc::new(entry.value.to_device(device)?);
            }
        }
        Ok(())
    }

    /// Binds the store to `tape` for one training step: trainable entries as leaves, buffers as constants.
    pub fn bind<'t>(&self, tape: &'t Tape) -> Bound<'t> {
        let vars = self
            .entries
            .iter()
            .map(|e| match e.kind {
                ParamKind::Trainable => tape.leaf(e.value.clone()),
                ParamKind::Buffer => tape.constant(e.value.clone()),
            })
            .collect();
        Bound {
            tape,
            vars,
            training: true,
        }
    }

    /// Binds every entry as a constant, in evaluation mode: a frozen teacher, or inference.
    pub fn bind_frozen<'t>(&self, tape: &'t Tape) -> Bound<'t> {
        let vars = self
            .entries
            .iter()
            .map(|e| tape.constant(e.value.clone()))
            .collect();
        Bound {
            tape,
            vars,
            training: false,
        }
    }

    /// Every entry by name, for [`crate::tensor::io::save`].
    pub fn named_tensors(&self) -> Vec<(&str, &Tensor)> {
        self.entries
            .iter()
            .map(|e| (e.name.as_str(), &*e.value))
            .collect()
    }

    /// Writes the store as safetensors (host copies of device tensors), with `metadata`.
    pub fn save(&self, path: impl AsRef<Path>, metadata: &BTreeMap<String, String>) -> Result<()> {
        crate::tensor::io::save(path, self.named_tensors(), metadata)
    }

    /// PyTorch's `load_state_dict(strict=True)`: every entry must be present with its exact shape and no
    /// unknown name may appear; all problems are listed in one error. Values are converted to each entry's
    /// current dtype and device.
    pub fn load_strict(&mut self, file: &NamedTensors) -> Result<()> {
        let mut missing = Vec::new();
        let mut mis_shaped = Vec::new();
        for entry in &self.entries {
            match file.tensors.get(&entry.name) {
                None => missing.push(entry.name.clone()),
                Some(t) if t.shape() != entry.value.shape() => mis_shaped.push(format!(
                    "{} (expected {:?}, got {:?})",
                    entry.name,
                    entry.value.shape(),
                    t.shape()
                )),
                Some(t) if !t.dtype().is_float() && entry.value.dtype().is_float() => mis_shaped
                    .push(format!(
                        "{} (expected a float tensor, got {})",
                        entry.name,
                        t.dtype()
                    )),
                Some(_) => {}
            }
        }
        let unexpected: Vec<String> = file
            .tensors
            .keys()
            .filter(|k| !self.by_name.contains_key(*k))
            .cloned()
            .collect();
        if !(missing.is_empty() && unexpected.is_empty() && mis_shaped.is_empty()) {
            let mut parts = Vec::new();
            for (what, list) in [
                ("missing", &missing),
                ("unexpected", &unexpected),
                ("mis-shaped", &mis_shaped),
            ] {
                if !list.is_empty() {
                    parts.push(format!("{what}: {}", list.join(", ")));
                }
            }
            return Err(Error::invalid("checkpoint", parts.join("; ")));
        }
        for entry in &mut self.entries {
            let t = &file.tensors[&entry.name];
            let value = t
                .to_dtype(entry.value.dtype())?
                .to_device(&entry.value.device())?;
            entry.value = Rc::new(value);
        }
        Ok(())
    }

    /// [`ParamStore::load_strict`] from a safetensors file.
    pub fn load_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let file = crate::tensor::io::load(path)?;
        self.load_strict(&file)
    }
}

/// A [`ParamStore`] bound to a tape for one step.
#[derive(Debug)]
pub struct Bound<'t> {
    tape: &'t Tape,
    vars: Vec<Var>,
    training: bool,
}

impl<'t> Bound<'t> {
    /// The tape the store was bound to; layers record their ops on it.
    pub fn tape(&self) -> &'t Tape {
        self.tape
    }

    /// The tape variable of `id`.
    pub fn var(&self, id: ParamId) -> Var {
        self.vars[id.0]
    }

    /// Training mode (batch statistics in BatchNorm) or evaluation mode (frozen models).
    pub fn training(&self) -> bool {
        self.training
    }

    /// The gradients of the store's trainable entries, by id (`None` where no gradient reached one).
    pub fn gradients(
        &self,
        store: &ParamStore,
        grads: &mut Gradients,
    ) -> Vec<(ParamId, Option<Tensor>)> {
        store
            .trainable()
            .map(|id| (id, grads.take(self.vars[id.0])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape).unwrap()
    }

    fn store() -> ParamStore {
        let mut s = ParamStore::new();
        s.add(
            "layer.weight",
            t(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]),
            ParamKind::Trainable,
        )
        .unwrap();
        s.add(
            "layer.running_mean",
            t(vec![0.0, 0.0], &[2]),
            ParamKind::Buffer,
        )
        .unwrap();
        s
    }

    #[test]
    fn checkpoint_round_trip_and_strict_errors() {
        let s = store();
        let dir = std::env::temp_dir().join(format!("detkd-params-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.safetensors");
        s.save(&path, &BTreeMap::new()).unwrap();
        let mut other = store();
        let w = other.id("layer.weight").unwrap();
        other.set(w, t(vec![0.0; 4], &[2, 2])).unwrap();
        other.load_file(&path).unwrap();
        assert_eq!(
            other.value(w).to_vec::<f64>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0]
        );

        let mut file = crate::tensor::io::load(&path).unwrap();
        file.tensors.remove("layer.running_mean");
        file.tensors.insert("extra.bias".into(), t(vec![1.0], &[1]));
        file.tensors
            .insert("layer.weight".into(), t(vec![1.0; 6], &[2, 3]));
        let e = other.load_strict(&file).unwrap_err().to_string();
        assert!(
            e.contains("missing: layer.running_mean")
                && e.contains("unexpected: extra.bias")
                && e.contains("mis-shaped: layer.weight (expected [2, 2], got [2, 3])"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn binding_shares_values_and_returns_them() {
        let mut s = store();
        let w = s.id("layer.weight").unwrap();
        let m = s.id("layer.running_mean").unwrap();
        assert_eq!(s.trainable().collect::<Vec<_>>(), vec![w]);
        assert_eq!(s.num_trainable_elements(), 4);
        {
            let tape = Tape::new();
            let b = s.bind(&tape);
            assert!(tape.requires_grad(b.var(w)).unwrap());
            assert!(!tape.requires_grad(b.var(m)).unwrap());
            assert!(s.value_mut(w).is_err(), "the tape still shares the value");
            let frozen = s.bind_frozen(&tape);
            assert!(!tape.requires_grad(frozen.var(w)).unwrap() && !frozen.training());
        }
        s.value_mut(w).unwrap();
        assert!(s
            .add("layer.weight", t(vec![1.0], &[1]), ParamKind::Trainable)
            .is_err());
        assert!(s.set(w, t(vec![1.0], &[1])).is_err());
    }
}
