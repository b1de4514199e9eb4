"""Progress on stderr: tqdm bars that a terminal shows cleanly (a bar leaves nothing behind, notes
stay), nothing but notes when stderr is not a terminal; Ctrl-C between training steps, never in one."""
import io
import os
import re
import signal
import sys
import time

import numpy as np
import pytest

import edgetrain
from edgetrain import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def screen(written: str) -> list[str]:
    """What a terminal shows after ``written``: ``\\r`` returns to the line's start, ``\\n``
    starts a new line, any other character overwrites the one under the cursor."""
    lines, col = [[]], 0
    for ch in written:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line[col:col + 1] = [ch]
            col += 1
    shown = ["".join(line).rstrip() for line in lines]
    return shown[:-1] if shown and not shown[-1] else shown


def test_screen_reads_like_a_terminal():
    assert screen("\rabcdef\rxy\n") == ["xycdef"] and screen("\rbar 50%\r       \rnote\n") == ["note"]


@pytest.fixture
def batch(mnist):
    return mnist.x_train[:64], mnist.y_train[:64]


def test_training_bars_leave_only_the_epoch_lines_on_a_terminal(monkeypatch, batch, trained_onnx):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer = edgetrain.Trainer(edgetrain.load(trained_onnx("mlp16")), method="bp", batch_size=8)
    trainer.fit(*batch, epochs=2, val=batch)
    written = terminal.getvalue()
    assert "%|" in written and "\r" in written  # bars were drawn ...
    shown = screen(written)  # ... and erased: the screen holds one line per epoch, nothing else
    assert len(shown) == 2 and all(re.fullmatch(rf"epoch {e}/2  loss \d\.\d{{4}}  acc \d\.\d{{4}}  val acc "
                                                rf"\d\.\d{{4}}  \d+\.\ds", line) for e, line in zip((1, 2), shown))


def test_without_a_terminal_only_the_notes_are_written(capsys, batch, trained_onnx):
    trainer = edgetrain.Trainer(edgetrain.load(trained_onnx("mlp16")), method="bp", batch_size=8)
    trainer.fit(*batch, epochs=1)
    err = capsys.readouterr().err
    assert "\r" not in err and err.count("\n") == 1 and err.startswith("epoch 1/1  loss ")
    trainer.fit(*batch, epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_wait_returns_or_raises_what_the_call_did():
    assert progress.wait(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]
    with pytest.raises(ZeroDivisionError):
        progress.wait(lambda: 1 / 0)


def test_wait_lets_ctrl_c_through_while_a_call_runs():
    """A native call that holds back signals (simulated: a sleep in the worker) is left
    behind: KeyboardInterrupt arrives within a fraction of a second."""
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            progress.wait(time.sleep, 5)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - start < 2


def test_ctrl_c_inside_a_step_is_raised_after_it(batch, trained_onnx):
    """The signal comes in the middle of the second step (after its update is computed, as a
    ZO step's perturbations would be in place); fit stops after that step, so the weights
    are those of two whole steps: the same as a run that stops there by itself."""
    model = edgetrain.load(trained_onnx("mlp16"))
    trainer = edgetrain.Trainer(model, method="elasticzo", batch_size=8)
    real_step = trainer._step

    def step(x, y, seed):
        metrics = real_step(x, y, seed)
        if trainer.step_count == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics
    trainer._step = step
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(*batch, epochs=1, progress=False)
    assert trainer.step_count == 2
    reference = edgetrain.Trainer(edgetrain.load(trained_onnx("mlp16")), method="elasticzo", batch_size=8)
    order = np.random.default_rng([0, 0]).permutation(64)
    for b in range(2):
        reference.step(batch[0][order[8 * b:8 * b + 8]], batch[1][order[8 * b:8 * b + 8]])
    assert all(np.array_equal(v, reference.model.params[n]) for n, v in model.params.items())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
