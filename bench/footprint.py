"""Footprint of the SDK as a dependency (issue 16), beside segment-analytics-python and posthog.

    python bench/footprint.py [--repeat 7]

Builds our wheel from this checkout, then fresh virtual environments in this run
(``uv venv``: no pip, no setuptools) holding only

* ``innkt-analytics`` (the SDK, what ``pip install innkt-analytics`` brings),
* ``innkt-analytics[server]`` (for the command-line timings),
* ``segment-analytics-python`` and ``posthog`` (the peers),

and reports for each: distributions installed (``*.dist-info``), the size of
site-packages after install (with the bytecode compiled, as pip does), and the
time of ``import X`` in a fresh interpreter (best and median of ``--repeat`` runs
after one warm-up run). Then wall
time of ``innkt-analytics --help``, ``--version`` and ``keys list`` (the console
script of the server venv), beside ``python -c pass``. Targets: SDK size <= 1/2
of the smaller peer's, <= 8 distributions, import <= 1/2 of the faster peer's;
each command <= 0.3 s. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
)


#: the environment of every probe: PYTHONDONTWRITEBYTECODE (set on some machines) would
#: make each run compile the modules it imports
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _sh(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env or ENV)


def _venv(base: Path, name: str, *requirements: str) -> Path:
    """A fresh venv with ``requirements``; returns its python."""
    path = base / name
    _sh("uv", "venv", "-q", "--python", sys.executable, path)
    python = path / "bin" / "python"
    # Bytecode compiled at install, as pip does by default: the timings below are those
    # of an installed app, not of a first run compiling every module.
    _sh("uv", "pip", "install", "-q", "--compile-bytecode", "--python", python, *requirements)
    return python


def _site_packages(python: Path) -> Path:
    out = _sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    return Path(out.stdout.strip())


def _size_and_dists(python: Path) -> tuple[float, list[str]]:
    site = _site_packages(python)
    total = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    dists = sorted(d.name.removesuffix(".dist-info") for d in site.glob("*.dist-info"))
    return total / 1e6, dists


def _import_times(python: Path, module: str, repeat: int) -> list[float]:
    probe = IMPORT_PROBE.format(module=module)
    _sh(python, "-c", probe)  # warm-up: writes the bytecode
    return [float(_sh(python, "-c", probe).stdout) for _ in range(repeat)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(
    argv: list[str | Path], repeat: int, env: dict[str, str] | None = None
) -> tuple[list[float], list[float]]:
    """Wall and CPU (user+sys) times of a command, after one warm-up run; empty on failure."""
    command = [str(a) for a in argv]
    times, cpu = [], []
    env = env or ENV
    subprocess.run(command, capture_output=True, check=False, env=env)
    for _ in range(repeat):
        cpu_before = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, check=False, env=env)
        times.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - cpu_before)
        if done.returncode != 0:
            return [], []
    return times, cpu


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values) * 1000:.0f} ms (median {statistics.median(values) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="innkt-footprint-") as tmp:
        base = Path(tmp)
        _sh("uv", "build", "-q", "--wheel", "--out-dir", base / "dist", ROOT)
        wheel = next((base / "dist").glob("innkt_analytics-*.whl"))
        pythons = {
            "innkt-analytics (SDK)": _venv(base, "sdk", str(wheel)),
            "segment-analytics-python": _venv(base, "segment", "segment-analytics-python"),
            "posthog": _venv(base, "posthog", "posthog"),
            "innkt-analytics[server]": _venv(
                base, "server", f"innkt-analytics[server] @ {wheel.as_uri()}"
            ),
        }
        modules = {
            "innkt-analytics (SDK)": "innkt_analytics",
            "segment-analytics-python": "segment.analytics",
            "posthog": "posthog",
            "innkt-analytics[server]": "innkt_analytics",
        }
        rows = {}
        print("\n| install | distributions | site-packages | import (best, median) |")
        print("|---|---|---|---|")
        for label, python in pythons.items():
            size, dists = _size_and_dists(python)
            times = _import_times(python, modules[label], args.repeat)
            rows[label] = (size, dists, min(times))
            print(f"| {label} | {len(dists)} | {size:.1f} MB | {_ms(times)} |")
        sdk_python = pythons["innkt-analytics (SDK)"]
        print("\nSDK distributions:", ", ".join(rows["innkt-analytics (SDK)"][1]))
        service = _import_times(
            sdk_python, "innkt_analytics; innkt_analytics.AnalyticsBackendService", args.repeat
        )
        print(f"import + first use of AnalyticsBackendService (SDK venv): {_ms(service)}")

        peers = ("segment-analytics-python", "posthog")
        smaller = min(rows[p][0] for p in peers)
        faster = min(rows[p][2] for p in peers)
        sdk_size, sdk_dists, sdk_import = rows["innkt-analytics (SDK)"]
        print(
            f"\nSDK size / smaller peer: {sdk_size / smaller:.2f} (target <= 0.5); "
            f"distributions: {len(sdk_dists)} (target <= 8); "
            f"import / faster peer: {sdk_import / faster:.2f} (target <= 0.5)"
        )

        cli = pythons["innkt-analytics[server]"].parent / "innkt-analytics"
        db = base / "keys.db"
        env = {**ENV, "INNKT_DB": str(db)}
        _sh(cli, "keys", "create", "--scope", "read", env=env)
        print("\n| command (server venv) | wall (best, median) | CPU (best, median) |")
        print("|---|---|---|")
        runs = [("python -c pass", [sdk_python, "-c", "pass"])]
        runs += [
            (f"innkt-analytics {' '.join(argv)}", [cli, *argv])
            for argv in (["--help"], ["--version"], ["keys", "list"])
        ]
        for label, argv in runs:
            times, cpu = _wall(argv, args.repeat, env=env)
            print(f"| {label} | {_ms(times)} | {_ms(cpu)} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
