"""featviz: what makes a neuron or attention head of a language model fire.

Python API (the CLI is a thin layer over it)::

    import featviz
    m = featviz.load_model()                         # embedded SmolLM2-135M
    t = featviz.parse_target("mlp:12:345", m)
    featviz.read_text(m, [t], "The cat sat on the mat")
"""
from .errors import FeatvizError
from .models import DEFAULT_MODEL, ModelHandle, load_model, wrap_model
from .readout import Reading, evaluate_ids, read_text
from .targets import Atom, PerRow, Sum, Target, as_target, parse_target, parse_targets

__version__ = "0.1.0"

__all__ = ["FeatvizError", "DEFAULT_MODEL", "ModelHandle", "load_model", "wrap_model",
           "Reading", "evaluate_ids", "read_text", "Atom", "PerRow", "Sum", "Target", "as_target",
           "parse_target", "parse_targets", "__version__"]
