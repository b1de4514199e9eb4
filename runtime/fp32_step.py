"""One training step on an fp32 model (DESIGN.md §4). ``bp``, ``zo`` and ``elasticzo`` are
this one step with different cuts: a clean pass that keeps only the BP tail's activations
gives the loss and the tail's exact gradient; the ZO head gets ``q`` one-sided SPSA
directions against that loss and a step normalised per tensor (:mod:`edgetrain.zo`).
Updates are computed first and applied together, so a step whose loss or update is not
finite leaves the weights as they were (up to the ±ε walk's rounding)."""
from __future__ import annotations

import math

import numpy as np

from . import autodiff, compressed, prng, zo
from .model import Model
from .plan import Plan


class Fp32Step:
    def __init__(self, model: Model, plan: Plan, lr: float | None = None, zo_lr: float | None = None,
                 eps: float | None = None, q: int = 1):
        self.model, self.plan = model, plan
        self.lr, self.zo_lr, self.eps, self.q = lr, zo_lr, eps, q
        self.zo_names, self.bp_names = list(plan.zo_params), set(plan.bp_params)
        # what the BP tail reads: the clean pass keeps these activations only
        self.tail_reads = {i for n in model.nodes[plan.tail_start:] for i in n.inputs if i}

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> dict:
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite losses are rolled back
            metrics = self._step(x, y, seed)
        compressed.constrain(self.model)  # codebook weights follow what was trained (also after a rollback)
        return metrics

    def _step(self, x, y, seed):
        params = self.model.params
        env = self.model.run_all(x, keep=self.tail_reads)
        logits = env[self.model.output_names[0]]
        loss, dlogits = autodiff.cross_entropy(logits, y)
        metrics = {"loss": loss, "accuracy": accuracy(logits, y)}
        if not math.isfinite(loss):
            return {**metrics, "rolled_back": True, "reason": "loss is not finite"}
        updates = {}
        if self.bp_names:
            wrt = compressed.gradient_inputs(self.model, self.bp_names)
            grads = compressed.to_sources(self.model, autodiff.backward(self.model, env, dlogits, wrt=wrt,
                                                                        start=self.plan.tail_start))
            for name in list(grads):  # a shared tensor (a codebook) steps by its users' mean gradient
                step = np.float32(self.lr) * compressed.step_scale(self.model, name)
                updates[name] = params[name] - step * grads.pop(name)
        del env, logits, dlogits  # the ZO passes below need none of it
        if self.zo_names:
            units = zo.rms_units(params, self.plan.zo_layers, self.zo_names)
            directions = [zo.GaussianPerturbation(params, units, prng.step_seed(seed, j, salt=1), self.eps)
                          for j in range(self.q)]
            diffs = zo.probe(directions, lambda: self._loss(x, y), loss)
            if not all(math.isfinite(d) for d in diffs):
                return {**metrics, "rolled_back": True, "reason": "perturbed loss is not finite"}
            metrics["zo_grad"] = [d / self.eps for d in diffs]  # directional derivatives along u·z
            updates.update(zo.gaussian_update(directions, diffs, self.zo_lr))
        if not all(np.all(np.isfinite(u)) for u in updates.values()):
            return {**metrics, "rolled_back": True, "reason": "update is not finite"}
        for name, value in updates.items():
            params[name][...] = value
        return metrics

    def _loss(self, x, y):
        compressed.constrain(self.model)  # codebook weights decoded from the perturbed codebooks
        return autodiff.cross_entropy(self.model.run(x), y)[0]


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())
