"""The benchmark scripts are run by hand, not by CI: each still loads against the package's current API and
parses its command line (`--help`), so a renamed function or setting breaks here, not in a researcher's run."""

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# value_units_ab.py patches PPO and runs ppo_sweep.py as it loads: ppo_sweep.py's own check covers it.
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "value_units_ab.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_script_loads_and_parses_its_flags(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    namespace = runpy.run_path(str(script), run_name="benchmark_under_test")
    with pytest.raises(SystemExit) as exit_:
        namespace["main"]()
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
