"""ONNX's own node tests (onnx.backend.test.case.node) for every op the runtime lists.

Each case is one graph with ONNX's reference outputs. Graph inputs after the first
become initializers (the runtime runs one input). A case either passes or is in
REFUSED, where it must be refused at load with a ModelFormatError that says why:
so neither list can rot.
"""
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgetrain

with warnings.catch_warnings():  # ONNX's case generators cast NaNs and overflow on purpose
    warnings.simplefilter("ignore")
    from onnx.backend.test.case.node import collect_testcases
    CASES = {c.name: c for c in collect_testcases(None)
             if all(n.op_type in edgetrain.supported_ops() for n in c.model.graph.node)}

_TYPE = "element type"
# case → what the ModelFormatError must say
REFUSED = {
    # element types the runtime has no arrays or kernels for (16-bit but int16 DequantizeLinear, 4/2-bit, float8/float4, uint32/64)
    **dict.fromkeys(["test_add_int16", "test_add_uint16", "test_add_uint32", "test_add_uint64",
                     "test_dequantizelinear_uint16", "test_dequantizelinear_int4",
                     "test_dequantizelinear_uint4", "test_dequantizelinear_int2", "test_dequantizelinear_uint2",
                     "test_dequantizelinear_e4m3fn", "test_dequantizelinear_e4m3fn_float16",
                     "test_dequantizelinear_e4m3fn_zero_point", "test_dequantizelinear_e5m2",
                     "test_dequantizelinear_float4e2m1", "test_quantizelinear_int16", "test_quantizelinear_uint16",
                     "test_quantizelinear_int4", "test_quantizelinear_uint4", "test_quantizelinear_int2",
                     "test_quantizelinear_uint2", "test_quantizelinear_e4m3fn", "test_quantizelinear_e5m2",
                     "test_quantizelinear_float4e2m1"], _TYPE),
    # float16 quantisation scales
    **dict.fromkeys(["test_qlinearmatmul_2D_int8_float16", "test_qlinearmatmul_2D_uint8_float16",
                     "test_qlinearmatmul_3D_int8_float16", "test_qlinearmatmul_3D_uint8_float16"],
                    r"input 1 \('a_scale'\) has element type float16"),
    # blocked quantisation (one scale per block of an axis)
    **dict.fromkeys(["test_dequantizelinear_blocked", "test_quantizelinear_blocked_asymmetric",
                     "test_quantizelinear_blocked_symmetric"], "attribute 'block_size' is 2"),
    # windows are 2-D (NCHW) only
    **dict.fromkeys(["test_averagepool_1d_default", "test_maxpool_1d_default", "test_averagepool_3d_default", "test_averagepool_3d_dilations_small",
                     "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False",
                     "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True",
                     "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False",
                     "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True",
                     "test_maxpool_3d_default", "test_maxpool_3d_dilations", "test_maxpool_3d_dilations_use_ref_impl",
                     "test_maxpool_3d_dilations_use_ref_impl_large"],
                    r"attribute '(kernel_shape|dilations)' is [13] value\(s\) .*, expected 2"),
    # second outputs: MaxPool's argmax indices, training-mode BatchNormalization's statistics
    **dict.fromkeys(["test_maxpool_with_argmax_2d_precomputed_pads", "test_maxpool_with_argmax_2d_precomputed_strides",
                     "test_batchnorm_example_training_mode", "test_batchnorm_epsilon_training_mode"], "extra outputs"),
}


def as_single_input_model(case):
    """The case's model with every graph input but the first moved into initializers."""
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, _ = case.data_sets[0]
    graph = model.graph
    for info, value in list(zip(graph.input, inputs))[1:]:
        tensor = onnx.TensorProto()
        if isinstance(value, onnx.TensorProto):  # types numpy has no dtype for (int4, float8)
            tensor.CopyFrom(value)
        else:
            tensor = numpy_helper.from_array(np.asarray(value))
        tensor.name = info.name
        graph.initializer.append(tensor)
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_node_case(name, tmp_path):
    case = CASES[name]
    path = tmp_path / f"{name}.onnx"
    onnx.save(as_single_input_model(case), path)
    inputs, outputs = case.data_sets[0]
    if name in REFUSED:
        with pytest.raises(edgetrain.ModelFormatError, match=REFUSED[name]):
            edgetrain.load(path)
        return
    got = edgetrain.load(path).run(np.asarray(inputs[0]))
    want = np.asarray(outputs[0])
    assert got.dtype == want.dtype and got.shape == want.shape
    if np.issubdtype(want.dtype, np.integer):  # integer results are exact
        np.testing.assert_array_equal(got, want)
    else:  # the tolerance ONNX holds every backend to for this case
        np.testing.assert_allclose(got, want, rtol=case.rtol, atol=case.atol)


def test_cases_were_collected():
    assert len(CASES) >= 150 and set(REFUSED) <= set(CASES)
