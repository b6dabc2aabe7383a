"""``python -m tests.benchmarks [--quick] [--only NAME]``: run every ``bench_*`` module, print one report."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
import time
from datetime import datetime

import tests.benchmarks as package


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under a minute)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only bench_NAME (repeatable)")
    args = parser.parse_args(argv)

    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__) if info.name.startswith("bench_"))
    if args.only:
        args.only = [name.removeprefix("bench_") for name in args.only]  # NAME or bench_NAME
        unknown = {f"bench_{name}" for name in args.only} - set(names)
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}; choose from {', '.join(names)}")
        names = [name for name in names if name.removeprefix("bench_") in args.only]

    print(
        f"Sandcastle benchmarks — {datetime.now().astimezone():%Y-%m-%d %H:%M %Z} — "
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {platform.machine()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
        f"{' — quick' if args.quick else ''}",
        flush=True,
    )
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"{package.__name__}.{name}")
        module_started = time.perf_counter()
        text = module.report(quick=args.quick)
        print(f"\n{text}\n\n({name}: {time.perf_counter() - module_started:.1f} s)", flush=True)
    print(f"\nTotal {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
