"""LUFFY baseline on Qwen2.5-Math-7B (Table 2), lr 1e-6.

python -m hpt_jax.train --config experiments/paper/qwen25_math_7b_luffy.py --workdir runs/qwen25_math_7b_luffy
Hyperparameters and paths: paper_recipe.py; mesh per platform and memory: README.md.
"""

import pathlib
import sys

# Config files are loaded by path, not as a package: make the shared recipe beside this file importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import paper_recipe as r  # noqa: E402


def get_config():
  return r.recipe(r.Base.QWEN_7B, r.Method.LUFFY)
