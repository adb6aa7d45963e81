"""Serve `experiment-dag/<name>` and `experiment-sweep/<name>` until interrupted.

    python -m flows.serve [--root DIR] [--name default] [--dask-address tcp://HOST:8786]

then, from another terminal: `prefect deployment run 'experiment-dag/default' --watch`.
Why `serve` and not a work pool: it needs nothing but the Prefect API (PREFECT_API_URL) and
this process, which runs each flow run as a subprocess on this machine, where the data, the
DVC cache and the accelerators are (or, with --dask-address, hands the stages to that Dask
cluster). The deployments default `root` to the repository this process was pointed at
(absolute), so a run triggered from anywhere works on that checkout; `limit` keeps runs of
this process one at a time, and vitlab's workspace lock refuses a second writer from anywhere.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEPLOYMENT = "default"


def build_deployments(
    root: str | os.PathLike[str], name: str = DEPLOYMENT, dask_address: str | None = None
) -> list:
    """The two deployments, `root` (made absolute) and `dask_address` as their defaults."""
    from flows.dag import check_root, experiment_dag
    from flows.sweep import experiment_sweep

    repo = str(check_root(str(root)))
    where = f"on the Dask cluster at {dask_address}" if dask_address else "on this machine"
    return [
        experiment_dag.to_deployment(
            name=name,
            parameters={"root": repo, "dask_address": dask_address},
            description=f"The DVC DAG of {repo}, one task per stage {where}.",
            tags=["vitlab"],
        ),
        experiment_sweep.to_deployment(
            name=name,
            parameters={"root": repo},
            description=f"A small -S sweep of {repo} through DVC's experiment queue.",
            tags=["vitlab"],
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", default=".", help="the DVC repository to run (default: .)")
    parser.add_argument("--name", default=DEPLOYMENT, help="deployment name (default: default)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default: 1)")
    parser.add_argument(
        "--dask-address", default=None, help="default Dask scheduler for the stages (none: local)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")

    from prefect import serve

    from vitlab.core.errors import VitlabError

    try:
        deployments = build_deployments(Path(args.root), args.name, args.dask_address)
    except VitlabError as e:
        parser.exit(2, f"error: {e}\n")
    serve(*deployments, limit=args.limit)


if __name__ == "__main__":
    main()
