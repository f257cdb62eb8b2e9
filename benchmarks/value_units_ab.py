"""A/B of the value model's starting units: PPO as ppo_sweep.py trains it, but with the value model in the RM's raw
units, as before commit 69b6d52 (now it starts in the rewards' units, (RM + bias) / std). Same flags as ppo_sweep.py:

    .venv/bin/python benchmarks/value_units_ab.py --run runs/bench20k/seed0 --param value_model \
        --values runs/bench20k/seed0/reward --out benchmarks/results/value_units_ab_seed0

(`--param value_model` set to the run's own RM only makes the sweep train anew instead of reusing the run's PPO.)
"""

import runpy
import sys

sys.path.insert(0, "benchmarks")
from rlhfkit.modeling import TokenScores  # noqa: E402
from rlhfkit.stages import ppo  # noqa: E402

real = ppo.make_value_model


def raw_units(cfg, policy, tokenizer):
    value_model = real(cfg, policy, tokenizer)
    return TokenScores(value_model.model) if isinstance(value_model, ppo.ValueModel) else value_model


ppo.make_value_model = raw_units
sys.argv = ["benchmarks/ppo_sweep.py", *sys.argv[1:]]
runpy.run_path("benchmarks/ppo_sweep.py", run_name="__main__")
