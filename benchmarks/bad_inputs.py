"""Run the bad-input corpus of tests/test_bad_inputs.py and count what each family of inputs gets.

Each case runs in a forked child (so a crash, e.g. SIGBUS, is counted instead of ending the run),
through the `facekd` command line in that process, with its stderr captured. Outcomes:

* `clear`: exit code 2, one stderr line naming the file (with its folder), no traceback, no hint to
  enable allow_pickle, and no existing file changed;
* `vague`: refused without a traceback, but the line fails one of those checks (it names no file,
  spans several lines, exits with another code, or an existing file changed);
* `traceback`: a Python traceback on stderr;
* `accepted`: exit code 0 (the bad input was taken silently);
* `crash`: the child died of a signal; `hang`: no answer within `--timeout` seconds;
* `skipped`: the case could not be set up here (a tmpfs needs root).

The corpus is imported from tests/test_bad_inputs.py and facekd from `sys.path`, so the same corpus
can be run against another version of the package (PYTHONPATH=<its checkout>):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bad_inputs.py [--json out.json] [--only PREFIX ...]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("clear", "vague", "traceback", "accepted", "crash", "hang", "skipped")
FAMILIES = {  # case-name prefix → family
    "rec": "RecordIO",
    "train-rec": "RecordIO",
    "pack": "image folders and lists",
    "train-folder": "image folders and lists",
    "bin": ".bin sets",
    "cfg": "YAML configs and options",
    "opt": "YAML configs and options",
    "cache": "embedding caches",
    "ckpt": "checkpoints",
    "run": "run directories",
    "embed": "run directories",
    "ijb": "IJB meta",
    "out": "output locations",
    "fs": "output locations",
    "worker": "DataLoader workers",
}


# What the commands import when they run (the children inherit them).
PRELOAD = ("facekd.cli", "facekd.build", "facekd.embed", "facekd.onnx", "facekd.evaluate.ijb", "facekd.data.recordio")


def family(name: str) -> str:
    prefix = max((p for p in FAMILIES if name.startswith(p + "-")), key=len)
    return FAMILIES[prefix]


def _child(corpus, case, d: Path, err_path: Path) -> int:
    """In the forked child: build the case, run the command line, write stderr and the snapshot check."""
    from facekd.cli import app

    os.chdir(d)
    os.environ.pop("FACEKD_DEBUG", None)
    with contextlib.ExitStack() as stack:
        if case.fs is not None:
            stack.enter_context(corpus.small_fs(d / "fs"))
        args = case.build(d)
        if case.fs is not None:
            corpus.seal(case, d / "fs")
        before = corpus.snapshot(d)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                app(args, prog_name="facekd")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        after = corpus.snapshot(d)
    changed = {k: v for k, v in after.items() if k in before} != before
    err_path.write_text(json.dumps({"code": code, "stderr": err.getvalue(), "changed": changed}))
    return 0


def classify(case, d: Path, result: dict) -> str:
    err, code = result["stderr"], result["code"]
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "accepted"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    named = len(lines) == 1 and case.file in lines[0] and (case.relative or str(d) in lines[0])
    ok = code == 2 and named and lines[0].startswith("error: ") and "allow_pickle" not in err
    return "clear" if ok and not result["changed"] else "vague"


def run_case(corpus, case, root: Path, timeout: float) -> tuple[str, str]:
    """(outcome, the stderr's first lines) of one case, run in a forked child."""
    d = root / case.name
    d.mkdir()
    err_path = root / f"{case.name}.json"
    pid = os.fork()
    if pid == 0:  # the child never returns into the parent's code
        status = 3
        try:
            status = _child(corpus, case, d, err_path)
        except BaseException as e:  # the corpus' own set-up failing, or pytest.skip
            skipped = type(e).__name__ == "Skipped"
            err_path.write_text(json.dumps({"skipped": skipped, "stderr": f"{type(e).__name__}: {e}"}))
        finally:
            os._exit(status)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = None
            break
        time.sleep(0.05)
    if case.fs is not None and os.path.ismount(d / "fs"):  # a child killed inside the case left it mounted
        subprocess.run(["umount", "-l", str(d / "fs")], capture_output=True)
    if status is None:
        return "hang", ""
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)}"
    result = json.loads(err_path.read_text()) if err_path.exists() else {"skipped": False, "stderr": ""}
    if "skipped" in result:
        return ("skipped" if result["skipped"] else "traceback"), result["stderr"]
    return classify(case, d, result), result["stderr"].replace(str(d), "<tmp>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=[], help="case-name prefixes to run (default: all)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--json", type=Path, help="also write counts and every case's outcome and line here")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import importlib

    import test_bad_inputs as corpus
    import torch

    from facekd.models import get_model

    for module in PRELOAD:  # imported once here, not again in every forked child
        importlib.import_module(module)

    counts: dict[str, Counter] = {}
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus.CHECKPOINT = root / "backbone.pth"
        torch.save(get_model("mbf_tiny", embedding_size=8).state_dict(), corpus.CHECKPOINT)
        for case in corpus.CASES:
            if a.only and not any(case.name.startswith(p) for p in a.only):
                continue
            outcome, text = run_case(corpus, case, root, a.timeout)
            counts.setdefault(family(case.name), Counter())[outcome] += 1
            cases.append({"name": case.name, "outcome": outcome, "stderr": text[:600]})
            print(f"{outcome:>9}  {case.name}: {' | '.join(text.strip().splitlines()[-1:])[:160]}", flush=True)
    print(f"\n{'family':<26}{'cases':>6}" + "".join(f"{o:>10}" for o in OUTCOMES))
    for fam, c in sorted(counts.items()):
        print(f"{fam:<26}{sum(c.values()):>6}" + "".join(f"{c[o]:>10}" for o in OUTCOMES))
    total = sum(counts.values(), Counter())
    print(f"{'all':<26}{sum(total.values()):>6}" + "".join(f"{total[o]:>10}" for o in OUTCOMES))
    if a.json:
        a.json.write_text(json.dumps({"counts": {k: dict(v) for k, v in counts.items()}, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
