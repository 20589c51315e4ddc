import os
import sys

# Reference models run eagerly: transformers' BitNet kernels are @torch.compile'd.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# --import-mode=importlib: let test modules import the shared helpers next to them.
sys.path.insert(0, os.path.dirname(__file__))
