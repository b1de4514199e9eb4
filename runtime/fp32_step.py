"""One training step on an fp32 model (DESIGN.md §4). ``bp``, ``zo`` and ``elasticzo`` are
this one step with different cuts: the BP tail gets an exact gradient from a clean pass
that keeps only the tail's activations, the ZO head an SPSA estimate over ``q``
directions. Updates are computed first and applied together, so a step whose loss or
update is not finite leaves the weights as they were (up to the ±ε walk's rounding)."""
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
        updates, metrics = {}, {}
        if self.bp_names:
            env = self.model.run_all(x, keep=self.tail_reads)
            logits = env[self.model.output_names[0]]
            loss, dlogits = autodiff.cross_entropy(logits, y)
            metrics.update(loss=loss, accuracy=accuracy(logits, y))
            if not math.isfinite(loss):
                return {**metrics, "rolled_back": True, "reason": "loss is not finite"}
            wrt = compressed.gradient_inputs(self.model, self.bp_names)
            grads = compressed.to_sources(self.model, autodiff.backward(self.model, env, dlogits, wrt=wrt,
                                                                        start=self.plan.tail_start))
            del env  # the ZO passes below need none of it
            for name in list(grads):  # a shared tensor (a codebook) steps by its users' mean gradient
                step = np.float32(self.lr) * compressed.step_scale(self.model, name)
                updates[name] = params[name] - step * grads.pop(name)
        if self.zo_names:
            head = self._zo(x, y, seed)
            if head is None:
                return {**metrics, "rolled_back": True, "reason": "perturbed loss is not finite"}
            metrics.setdefault("loss", head["loss"])
            metrics.setdefault("accuracy", head["accuracy"])
            metrics["zo_grad"] = head["g"]
            updates.update(head["updates"])
        if not all(np.all(np.isfinite(u)) for u in updates.values()):
            return {**metrics, "rolled_back": True, "reason": "update is not finite"}
        for name, value in updates.items():
            params[name][...] = value
        return metrics

    def _zo(self, x, y, seed):
        """SPSA over the head, ``q`` directions; returns the updates (not applied), or None
        when a perturbed loss is not finite."""
        params = self.model.params

        def loss():
            compressed.constrain(self.model)  # the perturbed codebooks, decoded
            logits = self.model.run(x)
            return autodiff.cross_entropy(logits, y)[0], accuracy(logits, y)
        losses, accs, estimates = [], [], []
        for d in range(self.q):
            direction = zo.GaussianPerturbation(params, self.zo_names, prng.step_seed(seed, d, salt=1), self.eps)
            (lp, ap), (lm, am) = zo.two_point(direction, loss)
            g = (lp - lm) / (2 * self.eps)
            if not math.isfinite(g):
                return None
            estimates.append((direction, g))
            losses.append((lp + lm) / 2)
            accs.append((ap + am) / 2)
        updates = {}
        for name in self.zo_names:
            u = params[name].copy()
            for direction, g in estimates:
                u -= direction.step(name, self.zo_lr * g / self.q) * compressed.step_scale(self.model, name)
            updates[name] = u
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                "g": float(np.mean([g for _, g in estimates])), "updates": updates}


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())
