// Kernels for the `graph_conv` op family (see src/ops/graph_conv/).
#include "common.cuh"
