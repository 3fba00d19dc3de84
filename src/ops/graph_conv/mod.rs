//! The `graph_conv` op family (work in progress).
