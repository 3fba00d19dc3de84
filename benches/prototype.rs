//! Criterion bench for the `prototype` op family at the shapes of shared/DESIGN.md.

fn main() {}
