"""`edgetrain export-tflite` against TFLite's own interpreter, ai-edge-litert (LiteRT, the successor
of tflite-runtime, whose last release, 2.14, is built against numpy 1.x and does not load beside the
numpy 2 our install resolves to). The int8 model as quantised and as personalised on the device
runtime: ≥ 99.9 % of output values identical to ours, none more than 1 LSB apart, argmax ≥ 99.9 %;
what it cannot express is one error naming every node."""
import numpy as np
import onnx
import pytest

import edgetrain
from conftest import run_json


litert = pytest.importorskip("ai_edge_litert.interpreter",
                             reason="TFLite's interpreter, ai-edge-litert, is not installed (it is in [host])")


def run_tflite(path, x):
    it = litert.Interpreter(model_path=str(path))
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def _scale(model_path):
    m = onnx.load(model_path)
    dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear")
    return float(onnx.numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == dq.input[1])))


def agreement(capsys, tmp_path, onnx_path, x):
    code, r = run_json(capsys, "export-tflite", str(onnx_path), "-o", str(tmp_path / "m.tflite"))
    assert code == 0 and r["ops"]["CONV_2D"] == 2 and r["ops"]["FULLY_CONNECTED"] == 3, r
    ours = edgetrain.load(onnx_path).run(x)
    lsb = _scale(onnx_path)
    theirs = run_tflite(tmp_path / "m.tflite", x)
    diff = np.abs(np.rint((theirs - ours) / lsb))
    assert theirs.shape == ours.shape
    assert (theirs == ours).mean() >= 0.999 and diff.max() <= 1, ((theirs == ours).mean(), diff.max())
    assert (theirs.argmax(1) == ours.argmax(1)).mean() >= 0.999
    return ours


@pytest.mark.parametrize("per_channel", [True, False])
def test_the_int8_model_runs_in_tflite_as_on_our_runtime(capsys, tmp_path, int8_onnx, mnist, per_channel):
    ours = agreement(capsys, tmp_path, int8_onnx(per_channel=per_channel), mnist.x_test)
    assert (ours.argmax(1) == mnist.y_test).mean() > 0.9


def test_the_personalised_model_too(capsys, tmp_path, int8_onnx, mnist):
    trainer = edgetrain.Trainer(edgetrain.load(int8_onnx()), method="elasticzo-int8", cut=3, seed=1)
    before = {n: v.copy() for n, v in trainer.model.params.items()}
    shifted = np.roll(mnist.x_train[:256], 3, axis=-1)
    trainer.fit(shifted, mnist.y_train[:256], epochs=1, progress=False)
    assert any(not np.array_equal(v, before[n]) for n, v in trainer.model.params.items())
    trainer.export(tmp_path / "personal.onnx")
    agreement(capsys, tmp_path, tmp_path / "personal.onnx", np.roll(mnist.x_test, 3, axis=-1))


def test_what_tflite_cannot_express_is_named(capsys, tmp_path, int8_onnx, trained_onnx):
    code, r = run_json(capsys, "export-tflite", str(int8_onnx("rescnn")), "-o", str(tmp_path / "r.tflite"))
    assert code == 2 and "QLinearAdd ('/3/Add_quant')" in r["error"] and "QLinearGlobalAveragePool" in r["error"]
    code, r = run_json(capsys, "export-tflite", str(trained_onnx("lenet5")), "-o", str(tmp_path / "f.tflite"))
    assert code == 2 and r["error"].endswith("quantise it first (`edgetrain quantize`, QOperator form)")
    assert "Conv ('/0/Conv')" in r["error"]
    code, r = run_json(capsys, "export-tflite", str(int8_onnx(fmt="qdq")), "-o", str(tmp_path / "q.tflite"))
    assert code == 2 and r["error"].endswith("it is in QDQ form: quantise it in the QOperator form "
                                             "(`edgetrain quantize` without --format qdq)")
    assert list(tmp_path.iterdir()) == []
