//! Criterion bench for the `graph_conv` op family at the shapes of shared/DESIGN.md.

fn main() {}
