"""HPT (γ = 0) on Qwen2.5-Math-1.5B: Table 3's HPT-1.5B row.

python -m hpt_jax.train --config experiments/paper/qwen25_math_1_5b_hpt.py --workdir runs/qwen25_math_1_5b_hpt
Hyperparameters and paths: paper_recipe.py; mesh per platform and memory: README.md.
"""

import pathlib
import sys

# Config files are loaded by path, not as a package: make the shared recipe beside this file importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import paper_recipe as r  # noqa: E402


def get_config():
  return r.recipe(r.Base.QWEN_1_5B, r.Method.HPT)
