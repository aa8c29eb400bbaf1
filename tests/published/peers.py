"""The reference implementations in ../shared/peers, imported for the conversion tests.

Each reference repository is a flat folder of modules with common names (model.py, utils.py, layers.py),
so each is imported in isolation: its folder first on sys.path, its module names removed from
sys.modules before and after, and the few source patches the peers README lists applied in memory (the
files are read, never copied into the project). Tests that need them are skipped where the folder is
absent.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Iterator

import pytest
import torch

PEERS = Path(__file__).resolve().parents[2].parent / "shared" / "peers"

needs_peers = pytest.mark.skipif(not PEERS.is_dir(), reason=f"the reference implementations are not at {PEERS} "
                                 "(../shared/peers): the conversions cannot be compared with them here")


@contextlib.contextmanager
def _isolated(folder: Path, names: tuple[str, ...]) -> Iterator[None]:
    saved_path = list(sys.path)
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def reference_modules(repository: str, names: tuple[str, ...],
                      patches: dict[str, list[tuple[str, str]]] | None = None) -> dict[str, types.ModuleType]:
    """Import `names` (in order) from ../shared/peers/<repository>, each module's source patched with
    `patches[name]` ((old, new) pairs, each of which must occur), and return them by name."""
    folder = PEERS / repository
    patches = patches or {}
    modules: dict[str, types.ModuleType] = {}
    with _isolated(folder, names):
        for name in names:
            path = folder / f"{name}.py"
            source = path.read_text()
            for old, new in patches.get(name, []):
                assert old in source, (path, old)
                source = source.replace(old, new)
            module = types.ModuleType(name)
            module.__file__ = str(path)
            sys.modules[name] = module
            exec(compile(source, str(path), "exec"), module.__dict__)  # noqa: S102 - the reference's own code
            modules[name] = module
    return modules


def randomise_(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1,
               skip: tuple[str, ...] = ()) -> None:
    """Give every floating-point parameter and buffer of `module` (except names ending in one of `skip`)
    random values: zero-initialised layers, priors and scales included, so that a conversion that
    reorders or drops a tensor changes the likelihood. Buffers named like batch-norm variances stay positive."""
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point() or name.endswith(skip):
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * scale
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            tensor.copy_(values.to(tensor.dtype))


def reference_functions(repository: str, module: str, names: tuple[str, ...],
                        namespace: dict[str, object]) -> dict[str, types.FunctionType]:
    """The top-level functions `names` of ../shared/peers/<repository>/<module>.py, compiled alone in
    `namespace` (the globals they use): for scripts whose imports (torchvision, datasets) or `__main__`
    code the tests cannot run. The file is read, never copied."""
    import ast

    path = PEERS / repository / f"{module}.py"
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert sorted(node.name for node in body) == sorted(names), (path, names)
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102
    return {name: namespace[name] for name in names}
