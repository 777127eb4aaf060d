"""Nothing in the source tree shadows an installed package.

`python -m ...` and pytest put the repository root first on sys.path, pytest also puts
tests/ there (rootdir-relative conftest), and `python benchmarks/x.py` or `python
examples/x.py` put that folder there. A module or regular package in one of those folders
named like a top-level module of an installed distribution replaces it for every importer:
transformers 5.25 imports the PyPI package `kernels`, and a `kernels/__init__.py` at the root
broke every model load. A folder without `__init__.py` is only a namespace portion, which
loses to any installed module or regular package of the same name (PEP 420), so the Triton
sources can stay in kernels/.

The check resolves each such name the way the import system does with the folder first on
sys.path, and fails when a name that an installed distribution provides resolves into the
folder instead.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folders that become sys.path[0] in the documented ways of running the project.
PATH_FOLDERS = ("", "tests", "benchmarks", "examples")
OWN_DISTRIBUTIONS = {"rgpo_fast", "rgpo-fast"}


def importable_names(folder: Path) -> list[str]:
    """Top-level names that `folder` on sys.path makes importable: modules (x.py or an
    extension), regular packages and namespace portions (identifier-named folders)."""
    suffixes = tuple(importlib.machinery.all_suffixes())
    names = set()
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
        elif entry.is_file() and entry.name.endswith(suffixes):
            stem = entry.name.split(".")[0]
            if stem.isidentifier():
                names.add(stem)
    return sorted(names)


def shadowed(folder: Path, provided: dict[str, list[str]], rest_of_path: list[str]) -> list[str]:
    """Names in `folder` that some installed distribution provides (`provided`: name ->
    distributions, as importlib.metadata.packages_distributions() gives it) but that resolve
    into `folder` when it stands first on sys.path before `rest_of_path`."""
    bad = []
    for name in importable_names(folder):
        dists = [d for d in provided.get(name, []) if d not in OWN_DISTRIBUTIONS]
        if not dists:
            continue
        importlib.invalidate_caches()
        spec = importlib.machinery.PathFinder.find_spec(name, [str(folder), *rest_of_path])
        if spec is None:
            continue
        # A module's origin, a package's __init__.py, or a namespace's search locations:
        # in the folder when the entry (file or directory) sits directly in it.
        entries = [Path(p) for p in spec.submodule_search_locations or []]
        if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
            origin = Path(spec.origin)
            entries.append(origin.parent if origin.stem == "__init__" else origin)
        if any(e.resolve().parent == folder.resolve() for e in entries):
            bad.append(f"{folder / name} shadows `{name}` of {', '.join(sorted(set(dists)))}")
    return bad


def _rest_of_path() -> list[str]:
    """sys.path without the project's own folders and the current directory."""
    own = {str((ROOT / f).resolve()) for f in PATH_FOLDERS}
    return [p for p in sys.path if p and str(Path(p).resolve()) not in own]


def test_no_folder_of_the_tree_shadows_an_installed_distribution():
    provided = importlib.metadata.packages_distributions()
    problems = []
    for sub in PATH_FOLDERS:
        if (ROOT / sub).is_dir():
            problems += shadowed(ROOT / sub, provided, _rest_of_path())
    assert problems == [], "\n".join(problems)


def test_kernels_resolves_to_the_installed_package_and_triton_sources_stay_reachable():
    """The case that broke: with the PyPI `kernels` installed (transformers >= 5.25 pulls it
    in), `import kernels` from the root gets that package; rgpo_fast.kernels still finds the
    Triton sources in the root's kernels/."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    spec = importlib.util.find_spec("rgpo_fast.kernels.linear_logprob")
    assert spec is not None and spec.origin is not None
    if "kernels" in importlib.metadata.packages_distributions():
        spec = importlib.machinery.PathFinder.find_spec("kernels", [str(ROOT), *_rest_of_path()])
        assert spec is not None and spec.origin not in (None, "namespace")
        assert Path(spec.origin).resolve().parent != (ROOT / "kernels").resolve()


def _fake_site(tmp_path: Path, name: str) -> Path:
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("")
    return site


def test_the_check_catches_a_package_folder_named_like_an_installed_module(tmp_path):
    """Put back what broke (a regular package `kernels` at the root) and the check fails; a
    namespace folder of the same name or an unrelated module does not trip it."""
    site = _fake_site(tmp_path, "kernels")
    root = tmp_path / "repo"
    (root / "kernels").mkdir(parents=True)
    (root / "kernels" / "linear_logprob.py").write_text("")
    (root / "setup.py").write_text("")
    provided = {"kernels": ["kernels"], "setup": []}
    assert shadowed(root, provided, [str(site)]) == []

    (root / "kernels" / "__init__.py").write_text("")
    assert len(shadowed(root, provided, [str(site)])) == 1

    (root / "kernels" / "__init__.py").unlink()
    (root / "kernels.py").write_text("")  # a module shadows too
    assert len(shadowed(root, provided, [str(site)])) == 1


def test_the_check_sees_a_namespace_folder_merging_into_an_installed_namespace(tmp_path):
    """An installed namespace package (no __init__.py) would take the root's folder of the
    same name into its __path__: that counts as shadowing too."""
    site = tmp_path / "site"
    (site / "nsname" / "inner").mkdir(parents=True)
    root = tmp_path / "repo"
    (root / "nsname").mkdir(parents=True)
    assert len(shadowed(root, {"nsname": ["nsdist"]}, [str(site)])) == 1
    assert shadowed(root, {"nsname": ["rgpo_fast"]}, [str(site)]) == []


def test_the_repository_folders_are_scanned():
    names = importable_names(ROOT)
    assert {"kernels", "rgpo_fast", "setup"} <= set(names)
    assert "conftest" in importable_names(ROOT / "tests")
    assert os.path.basename(__file__).removesuffix(".py") in importable_names(ROOT / "tests")
