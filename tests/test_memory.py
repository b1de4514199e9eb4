"""estimate_memory (from the graph) against Trainer.memory_report (tracemalloc) on real steps."""
import pytest

import edgetrain
from edgetrain.trainer import Trainer

CASES = [("lenet5", "bp", 0), ("lenet5", "zo", 0), ("lenet5", "elasticzo", 1), ("lenet5", "elasticzo", 2),
         ("lenet5", "elasticzo-int8", 1), ("lenet5", "elasticzo-int8", 2), ("lenet5", "elasticzo-int8", 3),
         ("rescnn", "elasticzo", 1), ("rescnn", "elasticzo", 2), ("rescnn", "elasticzo-int8", 1)]


@pytest.mark.parametrize("name, method, cut", CASES)
@pytest.mark.parametrize("batch_size", [8, 32])
def test_estimate_is_within_15_percent_of_the_measured_step(name, method, cut, batch_size, trained_onnx,
                                                            int8_onnx, mnist):
    path = int8_onnx(name) if method.endswith("int8") else trained_onnx(name)
    model = edgetrain.load(path)
    estimate = edgetrain.estimate_memory(model, method, cut, batch_size)
    report = Trainer(model, method=method, cut=cut).memory_report(mnist.x_train[:batch_size],
                                                                   mnist.y_train[:batch_size])
    assert estimate["peak_bytes"] == pytest.approx(report["step_traced_bytes"], rel=0.15)
    assert estimate["inference_peak_bytes"] == pytest.approx(report["inference_traced_bytes"], rel=0.15)


def test_elasticzo_step_stays_near_inference_memory(trained_onnx, mnist):
    report = Trainer(edgetrain.load(trained_onnx("lenet5")), method="elasticzo", cut=1).memory_report(
        mnist.x_train[:32], mnist.y_train[:32])
    assert report["step_traced_bytes"] <= 1.1 * report["inference_traced_bytes"]
