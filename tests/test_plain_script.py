"""The Python API runs from a plain script, with no ``if __name__ == "__main__":`` guard.

Worker processes are spawned; multiprocessing's spawn would import the calling script again in
each worker, re-running its body (a second ``compile`` in every worker, then a broken pool).
The script below counts how often its body runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = """
import math
import sys

from kd_compile.executors import run_jobs

with open(sys.argv[1], "a") as fh:
    fh.write("body ran\\n")
print(run_jobs(math.factorial, [3, 4, 5, 6], 2))
"""


def test_a_script_without_a_main_guard_runs_its_body_once(tmp_path):
    script, counter = tmp_path / "plain.py", tmp_path / "runs.txt"
    script.write_text(textwrap.dedent(SCRIPT))
    res = subprocess.run(
        [sys.executable, str(script), str(counter)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[6, 24, 120, 720]"
    assert counter.read_text().splitlines() == ["body ran"]  # the workers did not re-run the script
