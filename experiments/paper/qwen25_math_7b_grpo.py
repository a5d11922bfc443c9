"""GRPO baseline on Qwen2.5-Math-7B (Table 2).

python -m hpt_jax.train --config experiments/paper/qwen25_math_7b_grpo.py --workdir runs/qwen25_math_7b_grpo
Hyperparameters and paths: paper_recipe.py; mesh per platform and memory: README.md.
"""

import pathlib
import sys

# Config files are loaded by path, not as a package: make the shared recipe beside this file importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import paper_recipe as r  # noqa: E402


def get_config():
  return r.recipe(r.Base.QWEN_7B, r.Method.GRPO)
