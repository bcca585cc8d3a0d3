"""Distributed GaussianMixture EM: one process against N processes (torch.distributed, gloo).

The bench/gmm.py case (N=200000, D=16, K=8, 20 EM iterations, tol=0, float32) from the same
initial parameters (init="current"), timed from a barrier before `fit` to a barrier after it
(process start-up and data loading excluded). Every process of a run uses `--threads` intra-op
threads; the one-process run is timed at 1 thread and at processes x threads threads, so the
table shows both what the extra processes buy over one thread and over the same cores used by
threads. Also prints the bytes one EM iteration all-reduces and the measured time of that
all-reduce, and the difference of the final mean log-likelihoods of the two runs (float32
rounding: about 1e-3 for full covariances here, as between float32 and float64 in one process).

    python bench/distributed_em.py                     # diag and full, 1 vs 2 processes
    python bench/distributed_em.py --types diag --processes 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
import warnings
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for bench/gmm.py
from cerebrum import ConvergenceWarning, GaussianMixture
from gmm import initial_params, make_data  # the same data and start as bench/gmm.py


def statistics_bytes(kind: str, K: int, D: int, itemsize: int = 4) -> int:
    """Bytes one EM iteration all-reduces: resp_sum (K), first moments (K D), second moments
    (K D for diag/spherical, K D D for full/tied) and the log-likelihood (1)."""
    second = K * D * D if kind in ("full", "tied") else K * D
    return itemsize * (K + K * D + second + 1)


def timed_fit(X, start, kind, args) -> tuple[float, float]:
    """Seconds of the best of `repeat` fits from `start`, and the final lower bound."""
    best, bound = float("inf"), None
    for _ in range(args.repeat):
        model = GaussianMixture.from_params(*start, covariance_type=kind)
        if dist.is_initialized():
            dist.barrier()
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, init="current", max_iter=args.n_iter, tol=0)
        if dist.is_initialized():
            dist.barrier()
        best = min(best, time.perf_counter() - began)
        bound = model.lower_bound_
    return best, bound


def all_reduce_seconds(n_bytes: int, repeat: int = 50) -> float:
    """Median seconds of one all-reduce of `n_bytes` of float32 on the default group."""
    buffer = torch.zeros(n_bytes // 4)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        dist.all_reduce(buffer)
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def _worker(rank, world_size, port, args, out_dir):
    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=timedelta(minutes=10))
    X = make_data(args.n_samples, args.n_features, args.n_components, args.seed)
    shard = X[rank * len(X) // world_size:(rank + 1) * len(X) // world_size].astype(np.float32)
    results = {}
    for kind in args.types:
        start = initial_params(X, args.n_components, kind, args.seed)
        seconds, bound = timed_fit(shard, start, kind, args)
        n_bytes = statistics_bytes(kind, args.n_components, args.n_features)
        results[kind] = {"seconds": seconds, "lower_bound": bound,
                         "all_reduce_seconds": all_reduce_seconds(n_bytes)}
    dist.destroy_process_group()
    if rank == 0:
        with open(os.path.join(out_dir, f"{world_size}.json"), "w") as file:
            json.dump(results, file)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-components", type=int, default=8)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--types", nargs="+", default=["diag", "full"])
    parser.add_argument("--processes", type=int, default=2, help="processes of the parallel run")
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    X = make_data(args.n_samples, args.n_features, args.n_components, args.seed)
    X32 = X.astype(np.float32)
    single = {}
    for threads in sorted({args.threads, args.threads * args.processes}):
        torch.set_num_threads(threads)
        for kind in args.types:
            start = initial_params(X, args.n_components, kind, args.seed)
            single[(kind, threads)] = timed_fit(X32, start, kind, args)
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(args.processes, _free_port(), args, out_dir),
                 nprocs=args.processes, join=True)
        with open(os.path.join(out_dir, f"{args.processes}.json")) as file:
            parallel = json.load(file)

    rows = []
    for kind in args.types:
        one_thread, bound_one = single[(kind, args.threads)]
        same_cores, _ = single[(kind, args.threads * args.processes)]
        run = parallel[kind]
        rows.append({
            "covariance_type": kind,
            "one_process_seconds": one_thread,
            "one_process_all_threads_seconds": same_cores,
            "processes_seconds": run["seconds"],
            "speedup_over_one_process": one_thread / run["seconds"],
            "speedup_over_threads": same_cores / run["seconds"],
            "bytes_all_reduced_per_iteration": statistics_bytes(kind, args.n_components,
                                                                args.n_features),
            "all_reduce_seconds": run["all_reduce_seconds"],
            "lower_bound_difference": abs(run["lower_bound"] - bound_one),
        })
        if rows[-1]["lower_bound_difference"] > 1e-3 * abs(bound_one):
            print(f"warning: {kind}: the runs disagree by "
                  f"{rows[-1]['lower_bound_difference']:.3g} in log-likelihood", file=sys.stderr)
    meta = {"n_samples": args.n_samples, "n_features": args.n_features,
            "n_components": args.n_components, "n_iter": args.n_iter,
            "processes": args.processes, "threads_per_process": args.threads,
            "backend": "gloo", "cpu_count": os.cpu_count(), "machine": platform.processor()
            or platform.machine(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    p, t = args.processes, args.threads
    print(f"N={args.n_samples} D={args.n_features} K={args.n_components}, {args.n_iter} EM "
          f"iterations, float32, gloo; {os.cpu_count()} CPUs")
    print(f"{'type':<10}{f'1 proc x {t} thr':>16}{f'1 proc x {p * t} thr':>18}"
          f"{f'{p} proc x {t} thr':>16}{'vs 1 proc':>11}{'vs threads':>12}"
          f"{'bytes/iter':>12}{'all-reduce':>12}{'|d bound|':>11}")
    for row in rows:
        print(f"{row['covariance_type']:<10}{row['one_process_seconds']:>15.3f}s"
              f"{row['one_process_all_threads_seconds']:>17.3f}s{row['processes_seconds']:>15.3f}s"
              f"{row['speedup_over_one_process']:>10.2f}x{row['speedup_over_threads']:>11.2f}x"
              f"{row['bytes_all_reduced_per_iteration']:>12,}"
              f"{row['all_reduce_seconds'] * 1e6:>10.0f}us"
              f"{row['lower_bound_difference']:>11.1e}")


if __name__ == "__main__":
    main()
