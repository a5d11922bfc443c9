"""HPT (γ = 2/8, Llama zero template) on Llama-3.1-8B: Table 3's HPT row.

python -m hpt_jax.train --config experiments/paper/llama31_8b_hpt.py --workdir runs/llama31_8b_hpt
Hyperparameters and paths: paper_recipe.py; mesh per platform and memory: README.md.
"""

import pathlib
import sys

# Config files are loaded by path, not as a package: make the shared recipe beside this file importable.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import paper_recipe as r  # noqa: E402


def get_config():
  return r.recipe(r.Base.LLAMA_8B, r.Method.HPT)
