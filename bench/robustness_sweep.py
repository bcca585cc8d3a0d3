"""Robustness sweep: bad and odd input at every public entry point, one outcome per case.

Run:  OMP_NUM_THREADS=1 timeout 1200 .venv/bin/python bench/robustness_sweep.py \
          [--json /tmp/sweep.json] [--only GROUP] [--list]

Groups: gmm, hmm, managers, files, hybrids, lm, cli.  Each case is a small callable with a
name, a group, a one-line description of its input, and a declaration: `invalid=True` (the
input is wrong, so the library should refuse it) or `invalid=False` (valid but odd input, so
the library should handle it).  Every case is cheap (tiny data, few iterations, epochs=1).

Outcomes
--------
clean      A library exception of one of the types ValueError, TypeError, NotFittedError,
           CerebrumFileError, FileNotFoundError, IsADirectoryError (raised by cerebrum, not
           by numpy/torch internals) whose message names the offending argument or file
           (one of the case's `names` appears in it, case-insensitive; one-letter names such
           as X must appear as a word).  CLI: exit status 2, one `cerebrum VERB: error:` line
           naming the argument or file, no traceback.
handled    No exception and a sane result: every number returned is finite, a returned model
           has finite parameters, and any extra check of the case passes; or, for an invalid
           input, the library issued a warning of its own (a warning raised from cerebrum's
           source, ConvergenceWarning excluded) - the documented behaviour.  CLI: exit 0 for
           valid input (or exit 0 with a "warning" on stderr for invalid input).
unhelpful  Any other exception type (AttributeError, KeyError, IndexError, RuntimeError from
           torch, ZeroDivisionError, numpy errors, AssertionError, MemoryError, a timeout), or
           a library exception whose message does not name the argument or file.  CLI: a
           traceback, another exit status, a timeout, or an error line not naming it.
silent     No exception and no library warning although the input was invalid, or the result
           holds NaN/inf or fails the case's check (e.g. a failed fit that changed the model).
           CLI: exit 0 on invalid input without a warning.
excluded   NameError / ImportError / SyntaxError: code that is mid-edit by someone else; these
           are listed separately and not counted.

The process runs under RLIMIT_AS (default 6 GiB, --mem-gb) so a case that tries to allocate
too much fails as MemoryError (unhelpful) instead of taking the machine down; each
in-process case has an alarm timeout and each CLI case a subprocess timeout.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import math
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("clean", "handled", "unhelpful", "silent", "excluded")
GROUPS = ("gmm", "hmm", "managers", "files", "hybrids", "lm", "cli")


# --------------------------------------------------------------------------- cases


class Garbage(Exception):
    """Raised by a case's own check: the call returned, but the result or state is wrong."""


class CaseTimeout(BaseException):
    """The alarm of an in-process case (BaseException, so `except Exception` cannot eat it)."""


@dataclass
class Case:
    name: str
    group: str
    fn: Callable
    invalid: bool
    names: tuple = ()  # what a clean message must mention (any of them)
    input: str = ""
    cli: bool = False
    # filled in by run()
    outcome: str = ""
    detail: str = ""
    exc_type: str = ""
    seconds: float = 0.0
    where: str = ""  # file:line of the innermost cerebrum frame of an exception

    def record(self) -> dict:
        return {"name": self.name, "group": self.group, "input": self.input,
                "invalid": self.invalid, "expects": "error" if self.invalid else "handled",
                "names": list(self.names), "outcome": self.outcome, "exc_type": self.exc_type,
                "detail": self.detail, "where": self.where, "seconds": round(self.seconds, 3)}


CASES: list[Case] = []


def case(group, name, fn, *, invalid=True, names=(), input=""):
    CASES.append(Case(f"{group}.{name}", group, fn, invalid, tuple(names), input))


# --------------------------------------------------------------------------- classification

CLEAN_TYPES = None  # set after importing cerebrum
MIDEDIT = (NameError, ImportError, SyntaxError)


def names_in(message: str, names) -> bool:
    if not names:
        return True
    low = message.lower()
    for n in names:
        n = str(n)
        if len(n) <= 2:
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message,
                         re.IGNORECASE):
                return True
        elif n.lower() in low:
            return True
    return False


def finite(value, depth=0) -> bool:
    import numpy as np
    import torch
    from torch import nn

    if depth > 4:
        return True
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, np.generic):
        return bool(np.all(np.isfinite(value))) if np.issubdtype(value.dtype, np.number) \
            else True
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "fc":
            return bool(np.isfinite(value).all())
        return True
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return bool(torch.isfinite(value.detach()).all())
        return True
    if isinstance(value, nn.Module):
        return all(finite(p, depth + 1) for p in value.parameters())
    if isinstance(value, dict):
        return all(finite(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v, depth + 1) for v in value[:10000])
    return True


def library_warnings(caught) -> list[str]:
    from cerebrum.exceptions import ConvergenceWarning

    out = []
    for w in caught:
        if issubclass(w.category, (ConvergenceWarning, DeprecationWarning, FutureWarning)):
            continue
        # a library warning names the caller's line (stacklevel), here this file's
        if "/cerebrum/" in str(w.filename) or "cerebrum" in str(w.category.__module__) \
                or str(w.filename) == __file__:
            out.append(f"{w.category.__name__}: {w.message}")
    return out


def innermost_cerebrum_frame(tb) -> str:
    where = ""
    for frame in traceback.extract_tb(tb):
        if "/src/cerebrum/" in frame.filename:
            where = f"{frame.filename.split('/src/')[-1]}:{frame.lineno}"
    return where


def first_line(text: str, limit=240) -> str:
    text = " ".join(str(text).split())
    return text[:limit]


def run_inprocess(c: Case, timeout: int) -> None:
    def alarm(*_):
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = c.fn()
                exc = None
            except CaseTimeout:
                exc = TimeoutError(f"no answer within {timeout} s")
                c.where = ""
            except BaseException as err:
                if isinstance(err, (KeyboardInterrupt, _Stopped)):
                    raise
                exc = err
                c.where = innermost_cerebrum_frame(err.__traceback__)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        c.seconds = time.perf_counter() - t0
    warned = library_warnings(caught)
    if exc is not None:
        c.exc_type = type(exc).__name__
        msg = first_line(f"{type(exc).__name__}: {exc}")
        c.detail = msg
        if isinstance(exc, Garbage):
            c.outcome = "silent"
            c.detail = first_line(str(exc))
            return
        if isinstance(exc, MIDEDIT):
            c.outcome = "excluded"
            return
        origin = type(exc).__module__ or ""
        foreign = origin.startswith(("numpy", "torch", "safetensors", "scipy"))
        if isinstance(exc, CLEAN_TYPES) and not foreign and type(exc) not in (
                KeyError, IndexError):
            if names_in(str(exc), c.names):
                c.outcome = "clean"
            else:
                c.outcome = "unhelpful"
                c.detail = f"{msg} [message names none of {list(c.names)}]"
        else:
            c.outcome = "unhelpful"
        return
    if not finite(result):
        c.outcome = "handled" if warned else "silent"
        c.detail = f"returned non-finite numbers ({_short(result)})" + (
            f"; warned: {warned[0]}" if warned else "")
        return
    if c.invalid:
        if warned:
            c.outcome = "handled"
            c.detail = first_line(f"warned: {warned[0]}")
        else:
            c.outcome = "silent"
            c.detail = f"accepted without error or warning; returned {_short(result)}"
        return
    c.outcome = "handled"
    c.detail = f"returned {_short(result)}" + (f"; warned: {warned[0]}" if warned else "")


def _short(value) -> str:
    import numpy as np
    import torch
    from torch import nn

    if isinstance(value, nn.Module):
        return type(value).__name__
    if isinstance(value, (np.ndarray, torch.Tensor)):
        n = value.size if isinstance(value, np.ndarray) else value.numel()
        flat = value.reshape(-1)[:3].tolist() if n else []
        return f"{type(value).__name__}{tuple(value.shape)} {flat}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value[:3]) + ")"
    return first_line(repr(value), 80)


# --------------------------------------------------------------------------- CLI cases

CLI_TIMEOUT = 180


def cli_case(name, argv, *, invalid=True, names=(), input="", verb=None):
    verb = verb or argv[0]

    def fn():
        return argv, verb

    c = Case(f"cli.{name}", "cli", fn, invalid, tuple(names), input or " ".join(argv),
             cli=True)
    CASES.append(c)


def run_cli(c: Case) -> None:
    """One CLI case in a subprocess (it inherits this process's RLIMIT_AS)."""
    argv, verb = c.fn()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT / "src")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "cerebrum", *map(str, argv)],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT, env=env,
                              cwd=str(WORK))
    except subprocess.TimeoutExpired:
        c.seconds = time.perf_counter() - t0
        c.outcome, c.exc_type = "unhelpful", "timeout"
        c.detail = f"no answer within {CLI_TIMEOUT} s"
        return
    c.seconds = time.perf_counter() - t0
    err = proc.stderr.strip()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if re.match(rf"cerebrum( {re.escape(verb)})?: error:", ln)]
    c.exc_type = f"exit {proc.returncode}"
    tail = first_line(lines[-1] if lines else "(no stderr)")
    if "Traceback (most recent call last)" in err:
        last = tail
        c.detail = f"exit {proc.returncode}, traceback: {last}"
        m = re.findall(r'File "([^"]*/src/cerebrum/[^"]*)", line (\d+)', err)
        if m:
            c.where = f"{m[-1][0].split('/src/')[-1]}:{m[-1][1]}"
        c.outcome = "excluded" if re.search(r"^(NameError|ImportError|SyntaxError|"
                                            r"ModuleNotFoundError)", last) else "unhelpful"
        return
    if proc.returncode == 2 and len(error_lines) == 1:
        msg = error_lines[0]
        c.detail = first_line(msg)
        if names_in(msg.split("error:", 1)[1], c.names):
            c.outcome = "clean"
        else:
            c.outcome = "unhelpful"
            c.detail += f" [message names none of {list(c.names)}]"
        return
    if proc.returncode == 0:
        warned = [ln for ln in lines if "warning" in ln.lower()]
        out = first_line(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
        bad_numbers = re.search(r"(?<![A-Za-z])(nan|-?inf)(?![A-Za-z])", proc.stdout,
                                re.IGNORECASE)
        if bad_numbers:
            c.outcome = "handled" if warned else "silent"
            c.detail = f"exit 0 with non-finite output: {out}"
        elif c.invalid:
            c.outcome = "handled" if warned else "silent"
            c.detail = (f"exit 0 with warning: {first_line(warned[0])}" if warned
                        else f"exit 0, no error or warning; stdout: {out}")
        else:
            c.outcome = "handled"
            c.detail = f"exit 0; stdout: {out}"
        return
    c.outcome = "unhelpful"
    c.detail = f"exit {proc.returncode}, stderr: {tail}"


# --------------------------------------------------------------------------- fixtures

WORK: Path = Path(tempfile.gettempdir())


def build_cases(only: str | None) -> None:
    import numpy as np
    import torch

    def want(group):
        return only is None or only == group

    rng = np.random.default_rng(0)
    X2 = np.concatenate([rng.normal(-3, 1, (20, 2)), rng.normal(3, 1, (20, 2))])
    SEQ = rng.normal(size=(60, 2))

    def bad_data(D, *, sequences=False):
        """{variant: (value, invalid, description)} of X for a model of D features."""
        base = rng.normal(size=(6, D))
        nan = base.copy()
        nan[1, 0] = np.nan
        inf = base.copy()
        inf[2, 1 % D] = np.inf
        obj = base.astype(object)
        obj[0, 0] = None
        variants = {
            "ndim1": (np.zeros(6), True, "1-D array (6,)"),
            "wrong_D": (rng.normal(size=(6, D + 1)), True, f"(6, {D + 1}) array, model D={D}"),
            "empty": (np.zeros((0, D)), True, f"(0, {D}) array"),
            "empty_list": ([], True, "[]"),
            "nan": (nan, True, "one NaN"),
            "inf": (inf, True, "one inf"),
            "1e39": (np.full((6, D), 1e39), True, "1e39 (overflows float32)"),
            "scaled_1e30": (base * 1e30, True, "data * 1e30 (squares overflow float32)"),
            "strings": (np.array([["a"] * D] * 6), True, "array of strings"),
            "object_none": (obj, True, "object array holding None"),
            "complex": (base.astype(complex) + 1j, True, "complex array"),
            "ragged": ([[1.0] * D, [1.0] * (D + 1)], True, "ragged list of lists"),
            "none": (None, True, "None"),
            "scalar": (3.0, True, "a float scalar"),
            "bool": (base > 0, False, "bool array"),
            "int": (np.round(base * 10).astype(np.int64), False, "int64 array"),
            "list": (base.tolist(), False, "list of lists"),
            "tensor_f64": (torch.tensor(base), False, "float64 tensor"),
            "tensor_f16": (torch.tensor(base, dtype=torch.float16), False, "float16 tensor"),
            "fortran": (np.asfortranarray(base), False, "Fortran-ordered array"),
            "single_row": (base[:1], False, "one row"),
        }
        if sequences:
            variants["ndim3"] = (rng.normal(size=(2, 3, D)), False, "(2, 3, D) batch")
            variants["ndim4"] = (np.zeros((2, 2, 3, D)), True, "4-D array")
        else:
            variants["ndim3"] = (np.zeros((2, 3, D)), True, "3-D array")
        return variants

    XNAMES = ("X", "data", "sample", "sequence", "frame", "array", "feature", "n_features")

    from cerebrum import GaussianMixture, HiddenMarkov

    # ------------------------------------------------------------------ gmm
    # one function per group, so that a case's lambda never sees another group's names
    def group_gmm():
        gm = GaussianMixture(2, 2).fit(X2, max_iter=20, random_state=0)
        gm_full = GaussianMixture(2, 2, "full").fit(X2, max_iter=20, random_state=0)
        for variant, (X, invalid, desc) in bad_data(2).items():
            for method in ("score", "score_samples", "predict", "predict_proba", "bic",
                           "aic"):
                case("gmm", f"{method}.{variant}", (lambda m=method, X=X: getattr(gm, m)(X)),
                     invalid=invalid, names=XNAMES, input=f"fitted GMM(2,2).{method}({desc})")
            fit_invalid = invalid or variant == "single_row"
            case("gmm", f"fit.{variant}",
                 lambda X=X: GaussianMixture(2, 2).fit(X, max_iter=10, random_state=0),
                 invalid=fit_invalid, names=(*XNAMES, "n_components"),
                 input=f"GMM(2,2).fit({desc})")
            case("gmm", f"fit_full.{variant}",
                 lambda X=X: GaussianMixture(2, 2, "full").fit(X, max_iter=10, random_state=0),
                 invalid=fit_invalid, names=(*XNAMES, "n_components"),
                 input=f"GMM(2,2,'full').fit({desc})")
        for method in ("score", "predict", "predict_proba", "sample"):
            call = (lambda m=method: GaussianMixture(2, 2).sample(3)) if method == "sample" \
                else (lambda m=method: getattr(GaussianMixture(2, 2), m)(X2))
            case("gmm", f"unfitted.{method}", call, names=("fit",),
                 input=f"unfitted GMM.{method}")
        ctor_bad = [("n_components", v) for v in (0, -1, 1.5, "2", None, True, 10**9,
                                                  float("nan"))] + \
                   [("n_features", v) for v in (0, -3, 2.5, "2", None, 10**9)] + \
                   [("covariance_type", v) for v in ("bogus", None, 3, "DIAG")]
        for arg, v in ctor_bad:
            kw = {"n_components": 2, "n_features": 2, arg: v}
            case("gmm", f"ctor.{arg}={v!r}",
                 lambda kw=kw: GaussianMixture(**kw),
                 names=(arg,), input=f"GaussianMixture({arg}={v!r})")
        case("gmm", "ctor.n_components=np.int64(2)",
             lambda: GaussianMixture(np.int64(2), 2), invalid=False,
             input="GaussianMixture(np.int64(2), 2)")
        case("gmm", "ctor.device=cuda:7", lambda: GaussianMixture(2, 2, device="cuda:7"),
             names=("cuda:7", "device"), input="GaussianMixture(2,2, device='cuda:7')")
        fit_bad = [("reg_covar", v) for v in (-1.0, float("nan"), float("inf"), "a", None)] + \
                  [("max_iter", v) for v in (0, -1, 1.5, "10", None)] + \
                  [("tol", v) for v in (-1.0, float("nan"), "a")] + \
                  [("n_init", v) for v in (0, -1, 2.5, None)] + \
                  [("init", v) for v in ("bogus", None, 3)] + \
                  [("method", v) for v in ("bogus", None, "EM ")] + \
                  [("random_state", v) for v in ("abc", -1, 1.5, 2**70, [1, 2])] + \
                  [("lr", v) for v in (0.0, -1.0, float("nan"), float("inf"))] + \
                  [("epochs", v) for v in (0, -1, 1.5)]
        for arg, v in fit_bad:
            kw = {"max_iter": 10, "random_state": 0, arg: v}
            if arg in ("lr", "epochs"):
                kw["method"] = "gradient"
            case("gmm", f"fit.{arg}={v!r}",
                 lambda kw=kw: GaussianMixture(2, 2).fit(X2, **kw), names=(arg,),
                 input=f"GMM(2,2).fit(X, {arg}={v!r})")
        case("gmm", "fit.reg_covar=0", lambda: GaussianMixture(2, 2).fit(
            X2, reg_covar=0.0, max_iter=10, random_state=0), invalid=False,
            input="fit(X, reg_covar=0)")
        case("gmm", "fit.init=current_unfitted", lambda: GaussianMixture(2, 2).fit(
            X2, init="current", max_iter=10), names=("init", "current"),
            input="unfitted GMM.fit(X, init='current')")
        case("gmm", "fit.method=gradient", lambda: GaussianMixture(2, 2).fit(
            X2, method="gradient", max_iter=5, random_state=0), invalid=False,
            input="fit(X, method='gradient', max_iter=5)")
        case("gmm", "fit.n_components>N", lambda: GaussianMixture(50, 2).fit(
            X2, max_iter=5, random_state=0), names=("n_components", "sample"),
            input="GMM(50,2).fit(40 samples)")
        case("gmm", "fit.constant_data", lambda: GaussianMixture(2, 2).fit(
            np.ones((20, 2)), max_iter=5, random_state=0), invalid=False,
            input="fit(all-ones (20,2))")
        case("gmm", "fit.duplicate_points_k3", lambda: GaussianMixture(3, 2).fit(
            np.repeat(X2[:2], 10, 0), max_iter=5, random_state=0), invalid=False,
            input="GMM(3,2).fit(2 distinct points)")
        sw_bad = {
            "negative": (np.r_[-1.0, np.ones(39)], True),
            "nan": (np.r_[np.nan, np.ones(39)], True),
            "inf": (np.r_[np.inf, np.ones(39)], True),
            "all_zero": (np.zeros(40), True),
            "wrong_length": (np.ones(39), True),
            "2d": (np.ones((40, 1)), True),
            "strings": (np.array(["a"] * 40), True),
            "scalar": (1.0, True),
            "list": ([1.0] * 40, False),
            "int": (np.ones(40, dtype=np.int64), False),
        }
        for variant, (w, invalid) in sw_bad.items():
            case("gmm", f"score.sample_weight.{variant}",
                 lambda w=w: gm.score(X2, sample_weight=w), invalid=invalid,
                 names=("sample_weight",), input=f"score(X, sample_weight={variant})")
            case("gmm", f"fit.sample_weight.{variant}",
                 lambda w=w: GaussianMixture(2, 2).fit(X2, sample_weight=w, max_iter=10,
                                                       random_state=0),
                 invalid=invalid, names=("sample_weight",),
                 input=f"fit(X, sample_weight={variant})")
        for v in (0, -1, 1.5, "3", None, 10**12):
            case("gmm", f"sample.n_samples={v!r}", lambda v=v: gm.sample(v),
                 names=("n_samples",), input=f"sample({v!r})")
        for v in ("abc", 1.5, [1]):
            case("gmm", f"sample.random_state={v!r}", lambda v=v: gm.sample(3, random_state=v),
                 names=("random_state",), input=f"sample(3, random_state={v!r})")
        w, m, cv = gm.get_weights(), gm.get_means(), gm.get_variances()
        fp = {
            "weights_not_sum1": ((w * 2, m, cv, "diag"), True, ("weights",)),
            "weights_negative": ((np.array([1.5, -0.5]), m, cv, "diag"), True, ("weights",)),
            "weights_nan": ((np.array([np.nan, 1.0]), m, cv, "diag"), True, ("weights",)),
            "means_nan": ((w, np.full_like(m, np.nan), cv, "diag"), True, ("means",)),
            "K_mismatch": ((np.ones(3) / 3, m, cv, "diag"), True, ("weights", "means")),
            "cov_negative": ((w, m, -cv, "diag"), True, ("covariances",)),
            "cov_wrong_shape": ((w, m, cv[:, :1], "diag"), True, ("covariances",)),
            "cov_type_mismatch": ((w, m, cv, "full"), True, ("covariances",
                                                             "covariance_type")),
            "full_not_pd": ((w, m, np.array([[[1, 2], [2, 1]]] * 2, float), "full"), True,
                            ("covariances", "definite")),
            "means_1d": ((w, m[0], cv, "diag"), True, ("means",)),
            "strings": ((["a", "b"], m, cv, "diag"), True, ("weights",)),
            "none": ((None, m, cv, "diag"), True, ("weights",)),
            "bad_cov_type": ((w, m, cv, "bogus"), True, ("covariance_type",)),
            "own_params_diag": ((w, m, cv, "diag"), False, ()),
            "own_params_full_f32": ((gm_full.get_weights(), gm_full.get_means(),
                                     gm_full.get_variances(), "full"), False, ()),
        }
        for variant, (args, invalid, nm) in fp.items():
            case("gmm", f"from_params.{variant}",
                 lambda a=args: GaussianMixture.from_params(*a), invalid=invalid, names=nm,
                 input=f"GaussianMixture.from_params({variant})")

        def precise_far():  # issue 16 section 1: float32 accuracy with offset >> spread
            r = np.random.default_rng(1)
            X = np.concatenate([r.normal(-100, 0.1, (500, 2)), r.normal(100, 0.1, (500, 2))])
            s32 = GaussianMixture(2, 2).fit(X, random_state=0, max_iter=50).score(X)
            s64 = GaussianMixture(2, 2, dtype=torch.float64).fit(
                X, random_state=0, max_iter=50).score(X)
            if abs(s32 - s64) > 1e-3 * abs(s64) + 1e-3:
                raise Garbage(f"float32 score {s32:.4f} vs float64 {s64:.4f}")
            return s32
        case("gmm", "float32.offset_1000x_spread", precise_far, invalid=False,
             input="clusters at +-100, sd 0.1: float32 vs float64 score")

    # ------------------------------------------------------------------ hmm
    def group_hmm():
        hm = HiddenMarkov(2, 2).fit(SEQ, lengths=[30, 30], max_iter=5, random_state=0)
        for variant, (X, invalid, desc) in bad_data(2, sequences=True).items():
            for method in ("score", "predict", "predict_proba", "decode", "log_likelihoods",
                           "bic"):
                case("hmm", f"{method}.{variant}", (lambda m=method, X=X: getattr(hm, m)(X)),
                     invalid=invalid, names=XNAMES, input=f"fitted HMM(2,2).{method}({desc})")
            case("hmm", f"fit.{variant}",
                 lambda X=X: HiddenMarkov(2, 2).fit(X, max_iter=3, random_state=0),
                 invalid=invalid or variant == "single_row",
                 names=(*XNAMES, "n_components"), input=f"HMM(2,2).fit({desc})")
        lengths_bad = {
            "float_frac": ([29.5, 30.5], True),
            "float_integral": ([30.0, 30.0], False),
            "negative": ([-10, 70], True),
            "zero": ([0, 60], True),
            "uint64": (np.array([30, 30], dtype=np.uint64), False),
            "wrong_sum": ([30, 20], True),
            "too_long": ([30, 40], True),
            "2d": ([[30, 30]], True),
            "empty": ([], True),
            "string": ("30,30", True),
            "nan": ([np.nan, 60], True),
            "bool": ([True] * 60, True),
            "int32": (np.array([30, 30], dtype=np.int32), False),
            "tensor": (torch.tensor([30, 30]), False),
        }
        for variant, (L, invalid) in lengths_bad.items():
            for method in ("fit", "score", "predict", "decode"):
                def fn(L=L, m=method):
                    if m == "fit":
                        return HiddenMarkov(2, 2).fit(SEQ, lengths=L, max_iter=3,
                                                      random_state=0)
                    return getattr(hm, m)(SEQ, lengths=L)
                case("hmm", f"{method}.lengths.{variant}", fn, invalid=invalid,
                     names=("lengths",), input=f"{method}(X (60,2), lengths={variant})")
        case("hmm", "score.lengths_with_3d", lambda: hm.score(
            rng.normal(size=(2, 30, 2)), lengths=[30, 31]), names=("lengths",),
            input="score((2,30,2), lengths=[30,31]) (a length past T)")
        for method in ("score", "predict", "decode", "sample"):
            fn = (lambda: HiddenMarkov(2, 2).sample(3)) if method == "sample" else \
                (lambda m=method: getattr(HiddenMarkov(2, 2), m)(SEQ))
            case("hmm", f"unfitted.{method}", fn, names=("fit",),
                 input=f"unfitted HMM.{method}")
        ctor_bad = [("n_components", v) for v in (0, -1, 1.5, "2", None, 10**9)] + \
                   [("n_features", v) for v in (0, 2.5, None)] + \
                   [("n_mix", v) for v in (0, -1, 1.5, "1")] + \
                   [("covariance_type", v) for v in ("bogus", None)]
        for arg, v in ctor_bad:
            kw = {"n_components": 2, "n_features": 2, arg: v}
            case("hmm", f"ctor.{arg}={v!r}", lambda kw=kw: HiddenMarkov(**kw), names=(arg,),
                 input=f"HiddenMarkov({arg}={v!r})")
        fit_bad = [("reg_covar", v) for v in (-1.0, float("nan"), "a")] + \
                  [("max_iter", v) for v in (0, -1, 1.5)] + \
                  [("tol", v) for v in (-1.0, float("nan"))] + \
                  [("n_init", v) for v in (0, 2.5)] + \
                  [("init", v) for v in ("bogus", None)] + \
                  [("method", v) for v in ("bogus",)] + \
                  [("params", v) for v in ("xyz", 3)] + \
                  [("init_params", v) for v in ("q",)] + \
                  [("random_state", v) for v in ("abc", 1.5)] + \
                  [("lr", v) for v in (-1.0, float("nan"))]
        for arg, v in fit_bad:
            kw = {"max_iter": 3, "random_state": 0, "lengths": [30, 30], arg: v}
            if arg == "lr":
                kw["method"] = "gradient"
            case("hmm", f"fit.{arg}={v!r}", lambda kw=kw: HiddenMarkov(2, 2).fit(SEQ, **kw),
                 names=(arg,), input=f"HMM(2,2).fit(X, {arg}={v!r})")
        case("hmm", "fit.params=empty", lambda: HiddenMarkov(2, 2).fit(
            SEQ, params="", max_iter=3, random_state=0), invalid=False,
            input="fit(X, params='') (update nothing, as hmmlearn allows)")
        case("hmm", "fit.init=current_unfitted", lambda: HiddenMarkov(2, 2).fit(
            SEQ, init="current", max_iter=3), names=("init", "current"),
            input="unfitted HMM.fit(X, init='current')")
        case("hmm", "fit.method=gradient", lambda: HiddenMarkov(2, 2).fit(
            SEQ, lengths=[30, 30], method="gradient", max_iter=3, random_state=0),
            invalid=False, input="fit(method='gradient', max_iter=3)")
        case("hmm", "fit.list_of_seqs", lambda: HiddenMarkov(2, 2).fit(
            [SEQ[:25], SEQ[25:]], max_iter=3, random_state=0), invalid=False,
            input="fit([(25,2), (35,2)])")
        case("hmm", "fit.length1_seqs", lambda: HiddenMarkov(2, 2).fit(
            SEQ, lengths=[1] * 60, max_iter=3, random_state=0), invalid=False,
            input="fit(X, lengths=[1]*60)")
        for arg, v in [("n_steps", 0), ("n_steps", -1), ("n_steps", 1.5), ("n_steps", "3"),
                       ("n_sequences", 0), ("n_sequences", -2), ("random_state", "abc")]:
            kw = {"n_steps": 3, arg: v}
            case("hmm", f"sample.{arg}={v!r}", lambda kw=kw: hm.sample(**kw), names=(arg,),
                 input=f"sample({arg}={v!r})")
        sp, tm, w, m, cv = (hm.get_startprob(), hm.get_transmat(), hm.get_weights(),
                            hm.get_means(), hm.get_variances())
        fp = {
            "startprob_not_sum1": ((sp * 2, tm, w, m, cv), ("startprob",)),
            "startprob_negative": ((np.array([1.5, -0.5]), tm, w, m, cv), ("startprob",)),
            "transmat_rows": ((sp, tm * 2, w, m, cv), ("transmat",)),
            "transmat_shape": ((sp, tm[:1], w, m, cv), ("transmat",)),
            "transmat_nan": ((sp, np.full_like(tm, np.nan), w, m, cv), ("transmat",)),
            "weights_shape": ((sp, tm, w[0], m, cv), ("weights",)),
            "means_nan": ((sp, tm, w, np.full_like(m, np.nan), cv), ("means",)),
            "cov_negative": ((sp, tm, w, m, -cv), ("covariances",)),
            "S_mismatch": ((np.ones(3) / 3, tm, w, m, cv), ("startprob", "transmat")),
            "none": ((None, tm, w, m, cv), ("startprob",)),
        }
        for variant, (args, nm) in fp.items():
            case("hmm", f"from_params.{variant}", lambda a=args: HiddenMarkov.from_params(*a),
                 names=nm, input=f"HiddenMarkov.from_params({variant})")
        case("hmm", "from_params.own_params", lambda: HiddenMarkov.from_params(
            sp, tm, w, m, cv), invalid=False, input="from_params(own parameters)")

        def zero_prob_grad():  # issue 16 section 1: -inf logits after EM give NaN gradients
            seq = np.concatenate([np.zeros((20, 1)), np.full((20, 1), 10.0)])
            seq = seq + np.random.default_rng(0).normal(0, 0.1, seq.shape)
            model = HiddenMarkov(2, 1).fit(seq, max_iter=30, random_state=0)
            model.zero_grad()
            model.log_prob(torch.tensor(seq, dtype=torch.float32)).sum().backward()
            bad = [n for n, p in model.named_parameters()
                   if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                raise Garbage(f"NaN/inf gradients after EM in {bad}")
            return True
        case("hmm", "grad_after_em", zero_prob_grad, invalid=False,
             input="one left-to-right sequence, EM, then log_prob().backward()")

    # ------------------------------------------------------------------ managers
    def group_managers():
        from cerebrum import MM, MMM, Cerebrum, MMMan

        def brain_with_gmm():
            b = Cerebrum()
            b.fit_and_add(X2, "gmm", model_id="g", n_components=2, max_iter=10,
                          random_state=0)
            return b

        brain = brain_with_gmm()
        brain.fit_and_add(SEQ, "hmm", model_id="h", n_components=2, lengths=[30, 30],
                          max_iter=3, random_state=0)
        brain3 = Cerebrum()
        brain3.fit_and_add(rng.normal(size=(20, 3)), "gmm", model_id="g3", n_components=1,
                           max_iter=5, random_state=0)
        brain3.models["g"] = brain.models["g"]
        for cls_name, cls in (("Cerebrum", Cerebrum), ("MMM", MMM)):
            fa = {
                "model_type=bogus": (dict(model_type="bogus"), ("bogus", "model_type")),
                "model_type=None": (dict(model_type=None), ("model_type",)),
                "model_type=3": (dict(model_type=3), ("model_type",)),
                "unknown_kwarg": (dict(model_type="gmm", foo=1), ("foo",)),
                "n_components=0": (dict(model_type="gmm", n_components=0), ("n_components",)),
                "model_id=int": (dict(model_type="gmm", model_id=3), ("model_id",)),
                "model_id=empty": (dict(model_type="gmm", model_id=""), ("model_id",)),
                "model_id=dotted": (dict(model_type="gmm", model_id="a.b"), ("model_id",)),
                "model_id=list": (dict(model_type="gmm", model_id=["a"]), ("model_id",)),
                "model_id=float": (dict(model_type="gmm", model_id=1.5), ("model_id",)),
                "device=cuda:7": (dict(model_type="gmm", device="cuda:7"), ("cuda:7",
                                                                             "device")),
                "device=bogus": (dict(model_type="gmm", device="bogus"), ("device",
                                                                          "bogus")),
                "hmm_lengths_bad": (dict(model_type="hmm", lengths=[5, 5]), ("lengths",)),
                "X_nan": (dict(model_type="gmm", data=np.full((10, 2), np.nan)), XNAMES),
                "X_none": (dict(model_type="gmm", data=None), XNAMES),
                "lengths_on_gmm": (dict(model_type="gmm", lengths=[20, 20]), ("lengths",)),
            }
            for variant, (kw, nm) in fa.items():
                def fn(kw=kw, cls=cls):
                    kw = dict(kw)
                    data = kw.pop("data", X2)
                    kw.setdefault("max_iter", 5)
                    kw.setdefault("n_components", 2)
                    return cls().fit_and_add(data, **kw)
                case("managers", f"{cls_name}.fit_and_add.{variant}", fn, names=nm,
                     input=f"{cls_name}().fit_and_add(X, {variant})")

            def dup(cls=cls):
                b = cls()
                b.fit_and_add(X2, "gmm", model_id="a", n_components=2, max_iter=5)
                return b.fit_and_add(X2, "gmm", model_id="a", n_components=2, max_iter=5)
            case("managers", f"{cls_name}.fit_and_add.duplicate_id", dup, names=("a",),
                 input="fit_and_add twice under model_id='a'")
        cl = {
            "model_ids=str": (lambda: brain.classify(X2, model_ids="g"), False, ()),
            "model_ids=empty": (lambda: brain.classify(X2, model_ids=[]), True,
                                ("model_ids",)),
            "model_ids=unknown": (lambda: brain.classify(X2, model_ids=["nope"]), True,
                                  ("nope",)),
            "model_ids=unknown_str": (lambda: brain.classify(X2, model_ids="speaker"), True,
                                      ("speaker",)),
            "model_ids=int": (lambda: brain.classify(X2, model_ids=3), True, ("model_ids",
                                                                              "3")),
            "mismatched_D": (lambda: brain3.classify(X2), True, ("n_features",)),
            "X_wrong_D": (lambda: brain.classify(rng.normal(size=(5, 3))), True, XNAMES),
            "X_nan": (lambda: brain.classify(np.full((5, 2), np.nan)), True, XNAMES),
            "X_1d": (lambda: brain.classify(np.zeros(5)), True, XNAMES),
            "X_none": (lambda: brain.classify(None), True, XNAMES),
            "empty_brain": (lambda: Cerebrum().classify(X2), True, ("empty",)),
            "lengths_bad": (lambda: brain.classify(SEQ, lengths=[10, 10]), True,
                            ("lengths",)),
            "valid_seq": (lambda: brain.classify(SEQ, lengths=[30, 30]), False, ()),
        }
        for variant, (fn, invalid, nm) in cl.items():
            case("managers", f"Cerebrum.classify.{variant}", fn, invalid=invalid, names=nm,
                 input=f"classify {variant}")
        unknown = {
            "score": lambda: brain.score("nope", X2),
            "get_means": lambda: brain.get_means("nope"),
            "get_variances": lambda: brain.get_variances("nope"),
            "get_weights": lambda: brain.get_weights(None),
            "get_log_likelihoods": lambda: brain.get_log_likelihoods("nope", X2),
            "remove_model": lambda: Cerebrum().remove_model("nope"),
            "export_model": lambda: brain.export_model("nope"),
            "generate": lambda: brain.generate("nope", "hi"),
            "data_ids_on_single": lambda: brain.get_means("g", data_ids=[1]),
        }
        for variant, fn in unknown.items():
            nm = ("data_ids", "data_id") if variant == "data_ids_on_single" else (
                "model_id", "nope", "none")
            case("managers", f"Cerebrum.{variant}.unknown_id", fn, names=nm,
                 input=f"Cerebrum.{variant}('nope')")
        case("managers", "Cerebrum.generate.on_gmm", lambda: brain.generate("g", "hi"),
             names=("g", "generate"), input="generate on a gmm entry")
        case("managers", "Cerebrum.score.wrong_D", lambda: brain.score("g", rng.normal(
            size=(5, 3))), names=XNAMES, input="score('g', (5,3))")
        case("managers", "Cerebrum.score.hmm_bad_lengths", lambda: brain.score(
            "h", SEQ, lengths=[1, 2]), names=("lengths",), input="score('h', lengths=[1,2])")
        tmp = WORK / "managers"
        tmp.mkdir(exist_ok=True)
        (tmp / "adir").mkdir(exist_ok=True)
        ex = {
            "export.missing_dir": (lambda: brain.export_model("g", tmp / "no" / "x.cbm"),
                                   (str(tmp / "no"),)),
            "export.to_directory": (lambda: brain.export_model("g", tmp / "adir"),
                                    (str(tmp / "adir"),)),
            "export.to_dev_null_child": (lambda: brain.export_model("g", "/dev/null/x.cbm"),
                                         ("/dev/null",)),
            "save.missing_dir": (lambda: brain.save(tmp / "no" / "b.cbm"),
                                 (str(tmp / "no"),)),
            "save.to_directory": (lambda: brain.save(tmp / "adir"), (str(tmp / "adir"),)),
            "save.path_none": (lambda: brain.save(None), ("path",)),
            "import.empty_state": (lambda: brain_with_gmm().import_model("g", {}),
                                   ("state", "missing", "g")),
            "import.bogus_state": (lambda: brain_with_gmm().import_model(
                "g", {"bogus": torch.zeros(1)}), ("bogus",)),
            "import.wrong_shape_state": (lambda: brain_with_gmm().import_model(
                "g", {k: torch.zeros(7) for k in brain.models["g"].state_dict()}),
                ("shape", "size")),
            "import.nan_state": (lambda: brain_with_gmm().import_model(
                "g", {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in brain.models["g"].state_dict().items()}), ("nan",)),
            "import.state_unknown_entry": (lambda: Cerebrum().import_model("x", {}),
                                           ("x", "model_id")),
            "import.missing_path": (lambda: Cerebrum().import_model("x", tmp / "missing"),
                                    (str(tmp / "missing"),)),
            "import.int_id": (lambda: Cerebrum().import_model(3, tmp / "missing"),
                              ("model_id",)),
            "import.source_int": (lambda: Cerebrum().import_model("x", 42), ("source",)),
            "load.path_none": (lambda: Cerebrum.load(None), ("path",)),
            "assimilate.missing": (lambda: Cerebrum().assimilate(tmp / "missing.cbm"),
                                   (str(tmp / "missing.cbm"),)),
        }
        for variant, (fn, nm) in ex.items():
            case("managers", f"Cerebrum.{variant}", fn, names=nm, input=variant)

        def mm():
            m = MM("gmm", n_features=2, n_components=2)
            m.fit(X2, max_iter=5, random_state=0)
            return m
        mmv = {
            "MM(bogus)": (lambda: MM("bogus"), ("bogus", "model_type")),
            "MM(n_features=0)": (lambda: MM("gmm", n_features=0, n_components=2),
                                 ("n_features",)),
            "MM(n_components=-1)": (lambda: MM("gmm", n_features=2, n_components=-1),
                                    ("n_components",)),
            "MM(unknown_config)": (lambda: MM("gmm", n_features=2, n_components=2,
                                                      foo=1), ("foo",)),
            "MM(no_n_features).fit": (lambda: MM("gmm", n_components=2).fit(X2),
                                      ("n_features",)),
            "MM.fit.unknown_kwarg": (lambda: mm().fit(X2, foo=1), ("foo",)),
            "MM.fit.wrong_D": (lambda: mm().fit(rng.normal(size=(9, 3))), XNAMES),
            "MM.fit.duplicate_id": (lambda: mm().fit(X2, data_id=0), ("data_id",)),
            "MM.fit.data_id=float": (lambda: mm().fit(X2, data_id=1.5), ("data_id",)),
            "MM.fit.data_id=list": (lambda: mm().fit(X2, data_id=[1]), ("data_id",)),
            "MM.get_means.unknown": (lambda: mm().get_means(data_id=99), ("99", "data_id")),
            "MM.unfit.unknown": (lambda: mm().unfit(99), ("99", "data_id")),
            "MM.score.unknown": (lambda: mm().score(X2, data_id=99), ("99", "data_id")),
            "MM.export.unknown": (lambda: mm().export_model(tmp / "m.cbm", data_id=99),
                                  ("99", "data_id")),
            "MM.export.missing_dir": (lambda: mm().export_model(tmp / "no" / "m.cbm"),
                                      (str(tmp / "no"),)),
            "MM.import.empty_state": (lambda: mm().import_model({}), ("state", "missing")),
            "MM.import.bogus_state": (lambda: mm().import_model({"x": torch.zeros(1)}),
                                      ("x", "unexpected")),
            "MM.import.missing_path": (lambda: mm().import_model(tmp / "missing.cbm"),
                                       (str(tmp / "missing.cbm"),)),
            "MM.model.empty": (lambda: MM("gmm", n_features=2, n_components=2).model,
                               ("fit", "model")),
            "MM.score.empty": (lambda: MM("gmm", n_features=2, n_components=2)
                               .score(X2), ("fit", "model")),
            "MMMan.fit.bogus_type": (lambda: MMMan().fit(X2, "bogus"), ("bogus",)),
            "MMMan.fit.data_id=float": (lambda: MMMan().fit(X2, "gmm", data_id=1.5,
                                                            max_iter=5), ("data_id",)),
            "MMMan.fit.data_id=list": (lambda: MMMan().fit(X2, "gmm", data_id=[1],
                                                           max_iter=5), ("data_id",)),
            "MMMan.fit.wrong_model": (lambda: MMMan().fit(GaussianMixture(2, 2), "hmm"),
                                      ("GaussianMixture", "model_type")),
            "MMMan.fit.model_with_kwargs": (lambda: MMMan().fit(
                GaussianMixture(2, 2), "gmm", n_components=2), ("n_components",)),
            "MMMan.fit.unknown_kwarg": (lambda: MMMan().fit(X2, "gmm", foo=1), ("foo",)),
            "MMMan.get_means.unknown": (lambda: MMMan().get_means(99), ("99", "data_id")),
            "MMMan.score.unknown": (lambda: MMMan().score(X2, data_ids=[99]),
                                    ("99", "data_id")),
            "MMMan.unfit.unknown": (lambda: MMMan().unfit("zz"), ("zz", "data_id")),
            "MMMan.export.unknown": (lambda: MMMan().export_model(5), ("5", "data_id")),
        }
        for variant, (fn, nm) in mmv.items():
            case("managers", variant, fn, names=nm, input=variant)
        case("managers", "MMMan.fit.unfitted_model", lambda: MMMan().fit(
            GaussianMixture(2, 2), "gmm"), invalid=False,
            input="MMMan().fit(unfitted GaussianMixture) (seed 000 allows it)")

    # ------------------------------------------------------------------ files
    def group_files():
        from safetensors.torch import load as st_load
        from safetensors.torch import save as st_save

        from cerebrum import MM, Cerebrum
        from cerebrum.brain import persistence

        d = WORK / "files"
        d.mkdir(exist_ok=True)
        brain = Cerebrum()
        brain.fit_and_add(X2, "gmm", model_id="g", n_components=2, max_iter=5, random_state=0)
        good = brain.save(d / "good.cbm")
        m = MM("gmm", n_features=2, n_components=2)
        m.fit(X2, max_iter=5, random_state=0)
        good_model = Path(m.export_model(d / "model.cbm"))
        raw = good.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8:8 + size])["__metadata__"]
        header = json.loads(meta["cerebrum"])

        def rewrite(name, header_obj, tensors, *, rehash=True, extra=None):
            text = json.dumps(header_obj)
            md = {"cerebrum": text}
            if rehash:
                md["cerebrum.sha256"] = persistence.content_hash(text, tensors)
            md.update(extra or {})
            p = d / name
            p.write_bytes(st_save(tensors, metadata=md))
            return p

        tensors = st_load(raw)
        paths = {}
        paths["missing"] = d / "missing.cbm"
        paths["directory"] = d / "a_directory"
        paths["directory"].mkdir(exist_ok=True)
        paths["dev_null"] = Path("/dev/null")
        (d / "empty.cbm").write_bytes(b"")
        paths["empty"] = d / "empty.cbm"
        (d / "trunc.cbm").write_bytes(raw[: len(raw) // 2])
        paths["truncated_half"] = d / "trunc.cbm"
        (d / "trunc4.cbm").write_bytes(raw[:4])
        paths["truncated_4_bytes"] = d / "trunc4.cbm"
        (d / "trunc_end.cbm").write_bytes(raw[:-3])
        paths["truncated_3_short"] = d / "trunc_end.cbm"
        (d / "random.cbm").write_bytes(np.random.default_rng(0).bytes(4096))
        paths["random_bytes"] = d / "random.cbm"
        (d / "pickle.cbm").write_bytes(pickle.dumps({"a": 1}))
        paths["pickle"] = d / "pickle.cbm"
        torch.save({"w": torch.zeros(2)}, d / "torchsave.cbm")
        paths["torch_save"] = d / "torchsave.cbm"
        (d / "json.cbm").write_text(json.dumps(header))
        paths["json_only"] = d / "json.cbm"
        (d / "plain_st.cbm").write_bytes(st_save({"w": torch.zeros(2)}))
        paths["safetensors_no_metadata"] = d / "plain_st.cbm"
        flipped = bytearray(raw)
        flipped[-5] ^= 0x10
        (d / "flip.cbm").write_bytes(bytes(flipped))
        paths["flipped_byte_tensor_data"] = d / "flip.cbm"
        flipped_nohash = dict(tensors)
        k0 = sorted(flipped_nohash)[-1]
        t = flipped_nohash[k0].clone()
        t.view(-1)[0] = -t.view(-1)[0] + 3
        paths["changed_tensor_no_hash"] = rewrite("nohash.cbm", header, {
            **tensors, k0: t}, rehash=False)
        huge = json.loads(json.dumps(header))

        def set_config(obj, **kw):
            if isinstance(obj, dict):
                if "config" in obj and isinstance(obj["config"], dict):
                    obj["config"].update(kw)
                for v in obj.values():
                    set_config(v, **kw)
            elif isinstance(obj, list):
                for v in obj:
                    set_config(v, **kw)
        set_config(huge, n_components=200000, n_features=20000)
        paths["crafted_huge_sizes"] = rewrite("huge.cbm", huge, tensors)
        paths["crafted_huge_sizes_nohash"] = rewrite("huge_nohash.cbm", huge, tensors,
                                                     rehash=False)
        nan_t = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
                 for k, v in tensors.items()}
        paths["nan_tensors_rehashed"] = rewrite("nan.cbm", header, nan_t)
        i32 = {k: (v.to(torch.int32) if v.is_floating_point() else v)
               for k, v in tensors.items()}
        paths["int32_tensors_rehashed"] = rewrite("int32.cbm", header, i32)
        f64 = {k: (v.to(torch.float64) if v.is_floating_point() else v)
               for k, v in tensors.items()}
        paths["float64_tensors_rehashed"] = rewrite("f64.cbm", header, f64)
        for variant, rec in (("record_list", []), ("record_null", None),
                             ("record_string", "x")):
            paths[f"metadata_{variant}"] = rewrite(f"{variant}.cbm", {**header, "record": rec},
                                                   tensors)
        dup = json.loads(json.dumps(header))
        if isinstance(dup.get("record"), dict) and dup["record"].get("entries"):
            dup["record"]["entries"] = dup["record"]["entries"] * 2
        paths["duplicate_entry_ids"] = rewrite("dup.cbm", dup, tensors)
        entry_list = json.loads(json.dumps(header))
        if isinstance(entry_list.get("record"), dict) and entry_list["record"].get("entries"):
            entry_list["record"]["entries"] = [["g", "model"]]
        paths["entry_is_list"] = rewrite("entry_list.cbm", entry_list, tensors)
        paths["missing_tensor"] = rewrite("missing_t.cbm", header, {
            k: v for k, v in tensors.items() if k != sorted(tensors)[0]})
        paths["extra_tensor"] = rewrite("extra_t.cbm", header, {**tensors,
                                                                "zz.extra": torch.zeros(3)})
        paths["version_99"] = rewrite("v99.cbm", {**header, "version": 99}, tensors)
        paths["kind_bogus"] = rewrite("kindbogus.cbm", {**header, "kind": "bogus"}, tensors)
        paths["bad_hash_value"] = rewrite("badhash.cbm", header, tensors, rehash=False,
                                          extra={"cerebrum.sha256": "0" * 64})
        paths["unknown_family"] = rewrite("fam.cbm", json.loads(
            json.dumps(header).replace('"family": "gmm"', '"family": "bogus"')), tensors)
        neg = json.loads(json.dumps(header))
        set_config(neg, n_components=-2)
        paths["config_negative"] = rewrite("neg.cbm", neg, tensors)
        strc = json.loads(json.dumps(header))
        set_config(strc, covariance_type="bogus")
        paths["config_bad_choice"] = rewrite("badchoice.cbm", strc, tensors)
        header_len_huge = bytearray(raw)
        header_len_huge[:8] = struct.pack("<Q", 2**63)
        (d / "hdrlen.cbm").write_bytes(bytes(header_len_huge))
        paths["header_length_2^63"] = d / "hdrlen.cbm"
        # tensor offsets declaring a huge tensor
        hdr = json.loads(raw[8:8 + size])
        k = next(k for k in hdr if k != "__metadata__")
        hdr[k]["shape"] = [10**6, 10**6]
        hb = json.dumps(hdr).encode()
        (d / "huge_tensor.cbm").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + size:])
        paths["tensor_shape_10^12"] = d / "huge_tensor.cbm"

        loaders = {
            "Cerebrum.load": lambda p: Cerebrum.load(p),
            "MM.import_model": lambda p: MM("gmm", n_features=2, n_components=2)
            .import_model(p),
            "Cerebrum.import_model": lambda p: Cerebrum().import_model("x", p),
        }
        for variant, p in paths.items():
            for lname, load in loaders.items():
                invalid = True
                if variant == "changed_tensor_no_hash":  # files from before the hash load
                    invalid = False
                case("files", f"{lname}.{variant}", lambda p=p, load=load: load(p),
                     invalid=invalid, names=(str(p),), input=f"{lname}({variant})")
        case("files", "Cerebrum.load.good", lambda: Cerebrum.load(good), invalid=False,
             input="a real saved brain")
        def mm_gmm():
            return MM("gmm", n_features=2, n_components=2)
        case("files", "MM.import_model.good", lambda: mm_gmm().import_model(good_model),
             invalid=False, input="a real exported model")
        case("files", "MM.import_model.brain_file", lambda: mm_gmm().import_model(good),
             names=(str(good),), input="MM.import_model(a brain file)")
        case("files", "Cerebrum.load.model_file", lambda: Cerebrum.load(good_model),
             names=(str(good_model),), input="Cerebrum.load(a model file)")
        case("files", "MM(hmm).import_model.gmm_file", lambda: MM(
            "hmm", n_features=2, n_components=2).import_model(good_model),
             names=(str(good_model), "gmm"), input="MM('hmm').import_model(a gmm model file)")
        case("files", "Cerebrum.load.device=cuda:7", lambda: Cerebrum.load(
            good, device="cuda:7"), names=("cuda:7",), input="load(good, device='cuda:7')")

        def mode_kept():
            p = d / "mode.cbm"
            p.write_bytes(b"")
            os.chmod(p, 0o644)
            brain.save(p)
            mode = p.stat().st_mode & 0o777
            if mode != 0o644:
                raise Garbage(f"save changed an existing file's mode 0644 -> {oct(mode)}")
            return True
        case("files", "save.keeps_existing_mode", mode_kept, invalid=False,
             input="save over an existing 0644 file")

        def umask_kept():
            p = d / "umask.cbm"
            if p.exists():
                p.unlink()
            old = os.umask(0o022)
            try:
                brain.save(p)
            finally:
                os.umask(old)
            mode = p.stat().st_mode & 0o777
            if mode != 0o644:
                raise Garbage(f"new file has mode {oct(mode)}, umask 022 wants 0644")
            return True
        case("files", "save.respects_umask", umask_kept, invalid=False,
             input="save a new file under umask 022")

    # ------------------------------------------------------------------ hybrids
    def group_hybrids():
        from cerebrum.models.multi_mixture_transformer import MultiMixtureTransformer
        from cerebrum.models.vrmgt import VariationalRecurrentMarkovGaussianTransformer as VR

        small = dict(input_dim=2, hidden_dim=8, z_dim=2, rnn_hidden=8, num_states=2,
                     trans_d_model=8, trans_nhead=2)
        seqs = rng.normal(size=(6, 5, 2)).astype(np.float32)
        FIT = dict(epochs=1, batch_size=4, random_state=0, verbose=False)
        builders = {
            "MMT": lambda: MultiMixtureTransformer(**small, vocab_size=None),
            "VRMGT": lambda: VR(**small),
        }
        trained = {}
        for mname, build in builders.items():
            torch.manual_seed(0)
            model = build()
            model.fit(seqs, **FIT)
            trained[mname] = model
        for mname, build in builders.items():
            tm = trained[mname]
            for variant, (X, invalid, desc) in bad_data(2, sequences=True).items():
                if variant in ("tensor_f16", "bool", "single_row", "fortran"):
                    continue
                case("hybrids", f"{mname}.fit.{variant}",
                     lambda X=X, build=build: build().fit(X, **FIT), invalid=invalid,
                     names=XNAMES, input=f"{mname}.fit({desc})")
                case("hybrids", f"{mname}.score.{variant}",
                     lambda X=X, tm=tm: tm.score(X, n_samples=2), invalid=invalid,
                     names=XNAMES, input=f"{mname}.score({desc})")
            for variant, x, invalid in (
                    ("wrong_D", torch.randn(2, 5, 3), True),
                    ("ndim1", torch.randn(5), True),
                    ("nan", torch.full((2, 5, 2), float("nan")), True),
                    ("int_tensor", torch.ones(2, 5, 2, dtype=torch.int64), False),
                    ("float64_tensor", torch.randn(2, 5, 2, dtype=torch.float64), False),
                    ("numpy", np.zeros((2, 5, 2)), False),
                    ("empty_T", torch.randn(2, 0, 2), True),
                    ("list", [[0.0, 1.0]] * 5, False),
                    ("none", None, True)):
                case("hybrids", f"{mname}.forward.{variant}", lambda x=x, tm=tm: tm(x),
                     invalid=invalid, names=(*XNAMES, "x"), input=f"{mname}(x: {variant})")
                if mname == "MMT":
                    case("hybrids", f"{mname}.predict.{variant}",
                         lambda x=x, tm=tm: tm.predict(x), invalid=invalid,
                         names=(*XNAMES, "x"), input=f"MMT.predict({variant})")
            for arg, v in (("num_steps", 0), ("num_steps", -1), ("num_steps", 1.5),
                           ("num_steps", "3"), ("batch_size", 0), ("batch_size", -1)):
                kw = {"num_steps": 3, "batch_size": 1, arg: v}
                case("hybrids", f"{mname}.generate.{arg}={v!r}",
                     lambda kw=kw, tm=tm: tm.generate(**kw), names=(arg,),
                     input=f"{mname}.generate({arg}={v!r})")
            settings = [("epochs", v) for v in (0, -1, 1.5, "2", None)] + \
                       [("lr", v) for v in (0.0, -1.0, float("nan"), float("inf"), "a")] + \
                       [("batch_size", v) for v in (0, -1, 1.5)] + \
                       [("validation_split", v) for v in (-0.1, 1.0, 0.99, float("nan"),
                                                          "a")] + \
                       [("schedule", v) for v in ("bogus", None, 3)] + \
                       [("optimizer", v) for v in ("bogus",)] + \
                       [("random_state", v) for v in ("abc",)] + \
                       [("clip_norm", v) for v in (-1.0, float("nan"))] + \
                       [("patience", v) for v in (-1,)] + \
                       [("kl_anneal_epochs", v) for v in (-1,)] + \
                       [("bogus_setting", 1)]
            for arg, v in settings:
                kw = {**FIT, arg: v}
                data = seqs[:3] if (arg, v) == ("validation_split", 0.99) else seqs
                case("hybrids", f"{mname}.fit.{arg}={v!r}",
                     lambda kw=kw, build=build, data=data: build().fit(data, **kw),
                     names=(arg,), input=f"{mname}.fit(seqs, {arg}={v!r})")
            for arg, v in (("n_samples", 0), ("n_samples", -1), ("lengths", [5, 5, 5, 5, 5,
                                                                                  9])):
                case("hybrids", f"{mname}.score.{arg}={v!r}",
                     lambda arg=arg, v=v, tm=tm: tm.score(seqs, **{arg: v}), names=(arg,),
                     input=f"{mname}.score(seqs, {arg}={v!r})")

            def failed_fit_keeps_model(mname=mname, build=build):
                torch.manual_seed(0)
                model = build()
                model.fit(seqs, **FIT)
                before = {k: v.clone() for k, v in model.state_dict().items()}
                try:
                    model.fit(seqs, **{**FIT, "lr": 1e9, "epochs": 2})
                except (FloatingPointError, ValueError) as err:
                    changed = [k for k, v in model.state_dict().items()
                               if not torch.equal(v, before[k])]
                    if changed:
                        raise Garbage(f"fit(lr=1e9) raised {type(err).__name__} and changed "
                                      f"{len(changed)} of {len(before)} tensors") from None
                    # the documented behaviour: refuse, keep the model as it was
                    return f"refused ({type(err).__name__}: {first_line(err, 80)}); model kept"
                return model
            case("hybrids", f"{mname}.fit.lr=1e9_on_trained", failed_fit_keeps_model,
                 invalid=False, names=("lr",),
                 input=f"trained {mname}.fit(seqs, lr=1e9): refuse and keep, or fit finite")
        for mname, cls in (("MMT", MultiMixtureTransformer), ("VRMGT", VR)):
            for arg, v in (("input_dim", 0), ("input_dim", None), ("z_dim", -1),
                           ("trans_nhead", 3), ("min_variance", 0.0), ("dtype", "float16"),
                           ("num_states", 1.5), ("bogus", 1)):
                kw = {**small, arg: v}
                case("hybrids", f"{mname}.ctor.{arg}={v!r}", lambda kw=kw, cls=cls: cls(**kw),
                     names=(arg,), input=f"{mname}({arg}={v!r})")

    # ------------------------------------------------------------------ language models
    def group_lm():
        from cerebrum import Cerebrum
        from cerebrum.brain.gpt import GPTLanguageModel

        TINY = dict(block_size=64, n_layer=1, n_head=2, n_embd=32)
        FITLM = dict(steps=1, batch_size=4, seq_len=32, warmup_steps=0, random_state=0)
        corpus = WORK / "corpus"
        corpus.mkdir(exist_ok=True)
        for i in range(6):
            (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
        empty = WORK / "empty_corpus"
        empty.mkdir(exist_ok=True)
        brain = Cerebrum()
        brain.fit_and_add(str(corpus), "gpt", model_id="lm", **TINY, **FITLM)
        lm = brain.models["lm"]
        gen = [("temperature", v) for v in (0, -1.0, float("inf"), float("nan"), "1", None)] + \
              [("top_p", v) for v in (0.0, 1.5, float("nan"), -0.1, "0.9")] + \
              [("top_k", v) for v in (0, -1, 1.5, "5")] + \
              [("max_new_tokens", v) for v in (0, -1, 1.5, "5", 10**9)] + \
              [("random_state", v) for v in ("abc",)] + \
              [("adapt", v) for v in ("bogus",)]
        valid_gen = {("temperature", 0), ("max_new_tokens", 0)}
        for arg, v in gen:
            kw = {"max_new_tokens": 4, "random_state": 0, arg: v}
            if (arg, v) == ("max_new_tokens", 10**9):
                kw["max_new_tokens"] = 10**9
            case("lm", f"generate.{arg}={v!r}", lambda kw=kw: lm.generate("def f", **kw),
                 invalid=(arg, v) not in valid_gen, names=(arg,),
                 input=f"generate('def f', {arg}={v!r})")
        for variant, p, invalid in (("None", None, True), ("int", 5, True),
                                    ("bytes", b"def", True), ("empty", "", False),
                                    ("list", ["a"], True), ("non_ascii", "ünï©ødé 🙂", False),
                                    ("long", "x" * 500, False)):
            case("lm", f"generate.prompt={variant}", lambda p=p: lm.generate(
                p, max_new_tokens=3, random_state=0), invalid=invalid, names=("prompt",),
                input=f"generate(prompt={variant})")
            case("lm", f"brain.generate.prompt={variant}", lambda p=p: brain.generate(
                "lm", p, max_new_tokens=3, random_state=0), invalid=invalid,
                names=("prompt",), input=f"brain.generate('lm', prompt={variant})")
        for variant, X, invalid in (("[123]", [123], True), ("None", None, True),
                                    ("int", 5, True), ("bytes", [b"abc"], True),
                                    ("[]", [], True), ("['']", [""], True),
                                    ("str", "def f(x): return x", False),
                                    ("numpy_X", X2, True)):
            case("lm", f"score.{variant}", lambda X=X: lm.score(X), invalid=invalid,
                 names=("text", "X", "corpus"), input=f"score({variant})")
        case("lm", "score.lengths", lambda: lm.score(["abc"], lengths=[3]),
             names=("lengths",), input="score(['abc'], lengths=[3])")
        case("lm", "brain.classify", lambda: brain.classify(X2), names=("lm", "gpt"),
             input="classify on a brain with only a language model")
        for variant, kw, nm in (
                ("empty_corpus", dict(data=str(empty)), ("corpus", str(empty))),
                ("missing_corpus", dict(data=str(WORK / "nope")), (str(WORK / "nope"),)),
                ("corpus_numpy", dict(data=X2), ("corpus", "data")),
                ("steps=0", dict(steps=0), ("steps",)),
                ("steps=-1", dict(steps=-1), ("steps",)),
                ("lr=nan", dict(lr=float("nan")), ("lr",)),
                ("lr=abc", dict(lr="abc"), ("lr",)),
                ("lr=inf", dict(lr=float("inf")), ("lr",)),
                ("batch_size=0", dict(batch_size=0), ("batch_size",)),
                ("seq_len=0", dict(seq_len=0), ("seq_len",)),
                ("seq_len>block", dict(seq_len=1000), ("seq_len", "block_size")),
                ("n_head_mismatch", dict(n_head=3), ("n_head", "n_embd")),
                ("bogus_setting", dict(bogus=1), ("bogus",)),
                ("random_state=abc", dict(random_state="abc"), ("random_state",)),
                ("tokenizer=bogus", dict(tokenizer="bogus"), ("tokenizer",)),
                ("device=cuda:7", dict(device="cuda:7"), ("cuda:7",))):
            def fit_lm(kw=kw):
                kw = dict(kw)
                data = kw.pop("data", str(corpus))
                return Cerebrum().fit_and_add(data, "gpt", **{**TINY, **FITLM, **kw})
            case("lm", f"fit.{variant}", fit_lm, names=nm, invalid=bool(nm),
                 input=f"fit_and_add gpt {variant}")
        case("lm", "GPTLanguageModel.ctor.n_layer=0",
             lambda: GPTLanguageModel(**{**TINY, "n_layer": 0}), names=("n_layer",),
             input="GPTLanguageModel(n_layer=0)")
        case("lm", "GPTLanguageModel.fit.bad_config_type",
             lambda: GPTLanguageModel(**TINY).fit(str(corpus), config=42), names=("config",),
             input="fit(corpus, config=42)")

    # ------------------------------------------------------------------ cli
    def group_cli():
        from cerebrum import Cerebrum

        d = WORK / "cli"
        d.mkdir(exist_ok=True)
        np.save(d / "good.npy", X2)
        np.save(d / "wrongD.npy", rng.normal(size=(10, 3)))
        np.save(d / "nan.npy", np.r_[X2, [[np.nan, 0]]])
        np.save(d / "huge.npy", np.full((10, 2), 1e39))
        np.save(d / "scaled.npy", X2 * 1e30)
        np.save(d / "strings.npy", np.array([["a", "b"]] * 5))
        np.save(d / "ragged_obj.npy", np.array([[1.0], [1.0, 2.0]], dtype=object),
                allow_pickle=True)
        np.savez(d / "good.npz", X=X2)
        (d / "trunc.npz").write_bytes((d / "good.npz").read_bytes()[:100])
        (d / "random.npy").write_bytes(np.random.default_rng(1).bytes(2000))
        (d / "empty.npy").write_bytes(b"")
        (d / "data.txt").write_text("1 2\n3 4\n")
        (d / "bad.csv").write_text("a,b\n1,x\n2,3\n")
        (d / "adir").mkdir(exist_ok=True)
        (d / "existing_file").write_text("keep me")
        b = Cerebrum()
        b.fit_and_add(X2, "gmm", model_id="g", n_components=2, max_iter=5, random_state=0)
        b.fit_and_add(SEQ, "hmm", model_id="h", n_components=2, lengths=[30, 30], max_iter=3,
                      random_state=0)
        b.save(d / "brain.cbm")
        raw = (d / "brain.cbm").read_bytes()
        (d / "trunc.cbm").write_bytes(raw[: len(raw) // 2])
        (d / "random.cbm").write_bytes(np.random.default_rng(2).bytes(3000))
        (d / "pickle.cbm").write_bytes(pickle.dumps([1, 2]))
        corpus = d / "corpus"
        corpus.mkdir(exist_ok=True)
        for i in range(6):
            (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
        (d / "empty_corpus").mkdir(exist_ok=True)
        B = str(d / "brain.cbm")
        G = str(d / "good.npy")
        fit_out = str(d / "out.cbm")

        def p(name):
            return str(d / name)

        for name, data, extra, invalid, nm in (
                ("missing", p("missing.npy"), [], True, ("missing.npy",)),
                ("directory", p("adir"), [], True, ("adir",)),
                ("truncated_npz", p("trunc.npz"), [], True, ("trunc.npz",)),
                ("random_npy", p("random.npy"), [], True, ("random.npy",)),
                ("empty_npy", p("empty.npy"), [], True, ("empty.npy",)),
                ("txt_suffix", p("data.txt"), [], True, ("data.txt", ".txt")),
                ("bad_csv", p("bad.csv"), [], True, ("bad.csv", "x")),
                ("strings_npy", p("strings.npy"), [], True, ("strings.npy",)),
                ("object_npy", p("ragged_obj.npy"), [], True, ("ragged_obj.npy", "object",
                                                               "pickle")),
                ("nan", p("nan.npy"), [], True, ("nan.npy", "nan")),
                ("1e39", p("huge.npy"), [], True, ("huge.npy", "range", "float32")),
                ("scaled_1e30", p("scaled.npy"), [], True, ("scaled.npy", "range",
                                                            "float32")),
                ("key_on_npy", G, ["--key", "Y"], True, ("--key", "key")),
                ("key_missing_npz", p("good.npz"), ["--key", "Y"], True, ("Y",)),
                ("k=0", G, ["-k", "0"], True, ("components", "-k")),
                ("k=-1", G, ["-k", "-1"], True, ("components", "-k")),
                ("k=50", G, ["-k", "50"], True, ("components", "-k", "sample")),
                ("max_iter=0", G, ["--max-iter", "0"], True, ("max-iter", "max_iter")),
                ("seed=abc", G, ["--seed", "abc"], True, ("seed",)),
                ("out_missing_dir", G, ["-o", p("no/x.cbm")], True, ("no/x.cbm", "/no")),
                ("out_directory", G, ["-o", p("adir")], True, ("adir",)),
                ("out_not_brain", G, ["-o", p("existing_file")], True, ("existing_file",)),
                ("hmm_lengths_wrong_sum", G, ["--lengths", "10,10"], True, ("lengths",)),
                ("hmm_lengths_text", G, ["--lengths", "a,b"], True, ("lengths",)),
                ("valid", G, [], False, ())):
            family = "hmm" if name.startswith("hmm") else "gmm"
            argv = ["fit", family, data, "-k", "2", "-o", fit_out, *extra]
            if "-o" in extra:
                argv = ["fit", family, data, "-k", "2", *extra]
            if "-k" in extra:
                argv = ["fit", family, data, "-o", fit_out, *extra]
            cli_case(f"fit.{name}", argv, invalid=invalid, names=nm)
        for verb in ("score", "classify"):
            for name, brainp, data, extra, invalid, nm in (
                    ("missing_data", B, p("missing.npy"), [], True, ("missing.npy",)),
                    ("missing_brain", p("missing.cbm"), G, [], True, ("missing.cbm",)),
                    ("brain_directory", p("adir"), G, [], True, ("adir",)),
                    ("brain_dev_null", "/dev/null", G, [], True, ("/dev/null",)),
                    ("truncated_brain", p("trunc.cbm"), G, [], True, ("trunc.cbm",)),
                    ("random_brain", p("random.cbm"), G, [], True, ("random.cbm",)),
                    ("pickle_brain", p("pickle.cbm"), G, [], True, ("pickle.cbm",)),
                    ("random_npy", B, p("random.npy"), [], True, ("random.npy",)),
                    ("truncated_npz", B, p("trunc.npz"), [], True, ("trunc.npz",)),
                    ("wrong_D", B, p("wrongD.npy"), [], True, ("features", "wrongD")),
                    ("nan", B, p("nan.npy"), [], True, ("nan",)),
                    ("1e39", B, p("huge.npy"), [], True, ("range", "float32", "huge.npy")),
                    ("scaled_1e30", B, p("scaled.npy"), [], True, ("range", "float32",
                                                                   "scaled.npy")),
                    ("unknown_id", B, G, ["--id", "nope"], True, ("nope",)),
                    ("key_on_npy", B, G, ["--key", "X"], True, ("key",)),
                    ("lengths_wrong_sum", B, G, ["--lengths", "3,4"], True, ("lengths",)),
                    ("valid", B, G, [], False, ())):
                if verb == "classify" and name in (  # the same loaders as score's
                        "missing_data", "missing_brain", "brain_directory", "brain_dev_null",
                        "pickle_brain", "random_brain", "random_npy", "truncated_npz",
                        "key_on_npy", "1e39"):
                    continue
                cli_case(f"{verb}.{name}", [verb, brainp, data, *extra], invalid=invalid,
                         names=nm)
        for name, brainp, invalid, nm in (
                ("missing", p("missing.cbm"), True, ("missing.cbm",)),
                ("directory", p("adir"), True, ("adir",)),
                ("dev_null", "/dev/null", True, ("/dev/null",)),
                ("truncated", p("trunc.cbm"), True, ("trunc.cbm",)),
                ("random", p("random.cbm"), True, ("random.cbm",)),
                ("pickle", p("pickle.cbm"), True, ("pickle.cbm",)),
                ("npy_as_brain", G, True, ("good.npy",)),
                ("valid", B, False, ())):
            cli_case(f"info.{name}", ["info", brainp], invalid=invalid, names=nm)
        for name, extra, invalid, nm in (
                ("n=0", ["--id", "g", "-n", "0", "-o", p("s.npy")], True, ("-n", "n_samples",
                                                                         " n ")),
                ("n=-1", ["--id", "g", "-n", "-1", "-o", p("s.npy")], True, ("-n",
                                                                           "n_samples")),
                ("n=huge", ["--id", "g", "-n", "1000000000000", "-o", p("s.npy")], True,
                 ("-n", "n_samples")),
                ("unknown_id", ["--id", "nope", "-n", "3", "-o", p("s.npy")], True,
                 ("nope",)),
                ("out_missing_dir", ["--id", "g", "-n", "3", "-o", p("no/s.npy")], True,
                 ("no/s.npy", "/no")),
                ("out_directory", ["--id", "g", "-n", "3", "-o", p("adir")], True,
                 ("adir",)),
                ("out_txt", ["--id", "g", "-n", "3", "-o", p("s.txt")], True, ("s.txt",
                                                                              ".txt")),
                ("hmm_sequences=0", ["--id", "h", "-n", "3", "--sequences", "0", "-o",
                                     p("s.npy")], True, ("sequences",)),
                ("seed=abc", ["--id", "g", "-n", "3", "--seed", "abc", "-o", p("s.npy")],
                 True, ("seed",)),
                ("valid", ["--id", "g", "-n", "3", "-o", p("s.npz")], False, ())):
            cli_case(f"sample.{name}", ["sample", B, *extra], invalid=invalid, names=nm)
        tiny = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=32", "--set",
                "block_size=64", "--set", "batch_size=4", "--set", "seq_len=32", "--steps",
                "1", "--validation", "0.2", "--test", "0.2"]
        for name, extra, invalid, nm, out in (
                ("lr=abc", ["--set", "lr=abc"], True, ("lr",), "run1"),
                ("lr=Infinity", ["--set", "lr=Infinity"], True, ("lr",), "run2"),
                ("lr=NaN", ["--set", "lr=NaN"], True, ("lr",), "run2b"),
                ("random_state=abc", ["--set", "random_state=abc"], True, ("random_state",),
                 "run3"),
                ("unknown_setting", ["--set", "bogus=1"], True, ("bogus",), "run4"),
                ("set_no_equals", ["--set", "lr"], True, ("lr", "--set"), "run5"),
                ("steps=0", ["--steps", "0"], True, ("steps",), "run6"),
                ("out_existing_file", [], True, ("existing_file",), p("existing_file")),
                ("out_unwritable", [], True, ("/proc",), "/proc/cerebrum_run"),
                ("missing_corpus", ["--corpus", p("nope")], True, ("nope",), "run7"),
                ("empty_corpus", ["--corpus", p("empty_corpus")], True, ("empty_corpus",),
                 "run8"),
                ("missing_config", ["--config", p("nope.toml")], True, ("nope.toml",),
                 "run9"),
                ("bad_config", ["--config", G], True, ("good.npy", "config"), "run10"),
                ("validation=1.5", ["--validation", "1.5"], True, ("validation",), "run11"),
                ("resume_without_run", ["--resume"], True, ("resume", "checkpoint"),
                 "run12"),
                ("valid", [], False, (), "run0")):
            outp = out if out.startswith("/") else p(out)
            own_corpus = [] if "--corpus" in extra else ["--corpus", str(corpus)]
            cli_case(f"train.{name}", ["train", "gpt", *tiny, *own_corpus, *extra, "--out",
                                       outp], invalid=invalid, names=nm)
        cli_case("train.unknown_family", ["train", "bogus", "--out", p("runx")],
                 names=("bogus",))

    builders = {"gmm": group_gmm, "hmm": group_hmm, "managers": group_managers,
                "files": group_files, "hybrids": group_hybrids, "lm": group_lm,
                "cli": group_cli}
    for name in GROUPS:
        if want(name):
            builders[name]()


# --------------------------------------------------------------------------- main


class _Stopped(BaseException):
    pass


def _stop(*_):
    raise _Stopped()


def main(argv=None) -> int:
    global WORK, CLEAN_TYPES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write every case and its outcome")
    parser.add_argument("--only", choices=GROUPS, help="run one group")
    parser.add_argument("--match", help="run only cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--mem-gb", type=float, default=6.0, help="RLIMIT_AS (default 6)")
    parser.add_argument("--cli-jobs", type=int, default=4,
                        help="CLI subprocesses at a time (default 4)")
    parser.add_argument("--case-timeout", type=int, default=90, help="seconds per case")
    args = parser.parse_args(argv)

    mem = int(args.mem_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    torch_threads = os.environ.get("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", torch_threads)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    torch.set_num_threads(int(torch_threads))
    from cerebrum.exceptions import CerebrumFileError, NotFittedError

    CLEAN_TYPES = (ValueError, TypeError, NotFittedError, CerebrumFileError,
                   FileNotFoundError, IsADirectoryError)
    WORK = Path(tempfile.mkdtemp(prefix="cerebrum_sweep_"))
    t0 = time.perf_counter()
    try:
        build_cases(args.only)
        cases = [c for c in CASES if not args.match or args.match in c.name]
        if args.list:
            for c in cases:
                print(f"{c.name}\t{'invalid' if c.invalid else 'valid'}\t{c.input}")
            return 0
        print(f"{len(cases)} cases, work dir {WORK}", file=sys.stderr)
        # CLI cases run in subprocesses on a few threads while the in-process cases run here
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.cli_jobs)
        futures = [pool.submit(run_cli, c) for c in cases if c.cli]
        inproc = [c for c in cases if not c.cli]
        signal.signal(signal.SIGTERM, _stop)  # `timeout` ends the run: report what is done
        try:
            for i, c in enumerate(inproc):
                run_inprocess(c, args.case_timeout)
                if (i + 1) % 100 == 0:
                    print(f"  {i + 1}/{len(inproc)} in-process "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            for f in futures:
                f.result()
            pool.shutdown()
        except _Stopped:
            pool.shutdown(wait=False, cancel_futures=True)
            print("stopped by SIGTERM: reporting the cases that finished", file=sys.stderr)
        not_run = [c for c in cases if not c.outcome]
        cases = [c for c in cases if c.outcome]
        if not_run:
            print(f"{len(not_run)} cases did not finish", file=sys.stderr)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    report(cases, elapsed)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"elapsed_s": round(elapsed, 1), "counts": counts(cases),
             "not_run": [c.name for c in not_run],
             "cases": [c.record() for c in cases]}, indent=1))
    return 0


def counts(cases) -> dict:
    table: dict = collections.defaultdict(lambda: dict.fromkeys(OUTCOMES, 0))
    for c in cases:
        table[c.group][c.outcome] += 1
    return {g: table[g] for g in GROUPS if g in table}


def report(cases, elapsed) -> None:
    table = counts(cases)
    total = dict.fromkeys(OUTCOMES, 0)
    print(f"\n{'group':<10}" + "".join(f"{o:>11}" for o in OUTCOMES) + f"{'total':>8}")
    for g, row in table.items():
        for o in OUTCOMES:
            total[o] += row[o]
        print(f"{g:<10}" + "".join(f"{row[o]:>11}" for o in OUTCOMES) +
              f"{sum(row.values()):>8}")
    print(f"{'all':<10}" + "".join(f"{total[o]:>11}" for o in OUTCOMES) +
          f"{sum(total.values()):>8}")
    print(f"({elapsed:.0f} s)\n")
    for outcome in ("unhelpful", "silent", "excluded"):
        chosen = [c for c in cases if c.outcome == outcome]
        if not chosen:
            continue
        print(f"== {outcome} ({len(chosen)})")
        for c in chosen:
            where = f"  @ {c.where}" if c.where else ""
            print(f"  {c.name}  [{c.input}]\n      -> {c.detail}{where}")
        print()


if __name__ == "__main__":
    sys.exit(main())
