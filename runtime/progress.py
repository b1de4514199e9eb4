"""Progress of long work on stderr: a tqdm bar on a terminal, one-line notes, and
native calls that a Ctrl-C can interrupt.

Long loops (training, mask scoring, unlearning, proving) take ``progress`` (a bool;
the command line passes ``not --json``) and draw through :func:`bar`. The bar is
tqdm's, drawn only when stderr is a terminal: piped into a log, or with tqdm not
installed (the device install has numpy and onnx only), it is silent. :func:`note`
lines (an epoch's summary, the prover's plan) go to stderr whenever progress is on.
"""
from __future__ import annotations

import sys
import threading


class _Silent:
    """The bar's interface, drawing nothing."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def refresh(self):
        pass


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def bar(progress: bool, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0):
    """A context-managed bar (``update(n)``, ``set_postfix_str(text)``) over ``total``
    units from ``initial`` (total None: a count and the time elapsed); silent unless
    ``progress`` is on, stderr is a terminal and tqdm is installed. It erases itself
    when done."""
    tqdm = _tqdm() if progress and sys.stderr.isatty() else None
    if tqdm is None:
        return _Silent()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def note(progress: bool, text: str) -> None:
    """One line on stderr when ``progress`` is on (above a bar that is being drawn)."""
    if not progress:
        return
    tqdm = _tqdm()
    if tqdm is not None:
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def wait(fn, *args, ticking=None, **kwargs):
    """``fn(*args, **kwargs)`` run in a worker thread while this thread waits in short slices,
    so that Ctrl-C raises KeyboardInterrupt here at once (a native call that
    releases the GIL, such as a proof, would otherwise hold it back until it
    returns) and ``ticking`` (a bar) keeps its clock moving. After an interrupt the
    worker is left to finish on its own (a daemon thread) and its result dropped."""
    outcome = {}

    def work():
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the waiting thread
            outcome["error"] = e

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if ticking is not None:
            ticking.refresh()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
