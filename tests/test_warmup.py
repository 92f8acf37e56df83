"""The warm-up thread of a pipeline run (lstm_dist.warmup): it makes the MLflow store and imports what the later
steps need, and a module it cannot import stops nothing.

Each case runs in a fresh Python process: this test process has imported torch and the rest long ago."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "conf/debug.yaml"

WARM = """
import json, sys
from lstm_dist import warmup
from lstm_dist.config import load_config

cfg = load_config(sys.argv[1], ["workflow.work_dir=" + sys.argv[2]])
extra = sys.argv[3:]
if extra:  # modules that cannot be imported, first in the list
    names = warmup.modules(cfg)
    warmup.modules = lambda cfg: [*extra, *names]
before = {name: name in sys.modules for name in warmup.modules(cfg)}
warm = warmup.Warmup(cfg).start()
warm.store_ready()
warm.thread.join(120)
print(json.dumps({"before": before, "after": {n: n in sys.modules for n in before}, "alive": warm.thread.is_alive()}))
"""


def _warm(tmp_path: Path, *extra: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WARM, str(DEBUG), str(tmp_path / "work"), *extra],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_warm_up_makes_the_store_and_imports_what_a_local_run_needs_past_a_module_it_cannot_import(tmp_path):
    # One process for both (each imports torch, MLflow and statsforecast afresh): the list starts with a module
    # that does not exist, and everything after it is still imported.
    seen = _warm(tmp_path, "lstm_dist_no_such_module")
    assert not seen["alive"]
    assert (tmp_path / "work" / "mlflow.db").is_file()  # conf/debug.yaml's store: sqlite under the work dir
    assert seen["after"].pop("lstm_dist_no_such_module") is False
    assert "torch._dynamo" in seen["after"]  # train.backend=local: the first optimizer imports it
    missing = [name for name, done in seen["after"].items() if not done]
    assert not missing, missing
    assert not all(seen["before"].values())  # the process had not imported them itself
