"""Triton kernels of rgpo_fast (`rgpo_fast.kernels.linear_logprob`, `.policy_loss`, ...).

Their sources live in the repository's top-level `kernels/`. That directory has no
`__init__.py` on purpose: a regular package named `kernels` at the repository root would
shadow the PyPI package `kernels` (which transformers imports when a model class loads)
whenever the root is on `sys.path` (`python -m` or pytest run from the root). A directory
without `__init__.py` is only a namespace portion, and any installed regular package of the
same name wins over it.

How the modules are found:
- a wheel: setup.py's build_py copies `kernels/*.py` next to this file;
- an editable install or a bare source tree: the modules are not here, so the search path
  of this package is extended with the repository's `kernels/` (found next to setup.py).
"""

import os as _os

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_ROOT = _os.path.dirname(_os.path.dirname(_HERE))
_SOURCES = _os.path.join(_ROOT, "kernels")

# Only a source checkout has setup.py beside kernels/linear_logprob.py: an installed wheel
# (modules copied here) never extends its path into an unrelated site-packages/kernels.
if not _os.path.exists(_os.path.join(_HERE, "linear_logprob.py")) and all(
    _os.path.exists(p)
    for p in (_os.path.join(_SOURCES, "linear_logprob.py"), _os.path.join(_ROOT, "setup.py"))
):
    __path__.append(_SOURCES)  # noqa: F821 (a package's __path__ is set by the import system)
