"""Model families and OOD scores from other installed packages: the entry point groups `oodbench.families`
and `oodbench.scores`.

A package declares, in its pyproject.toml (README.md, "Your own model or score (plugins)", has a whole example):

    [project.entry-points."oodbench.families"]
    factorized = "oodbench_factorized.model:FAMILY"      # a models.ModelFamily
    [project.entry-points."oodbench.scores"]
    complexity_ratio = "oodbench_factorized.score:SCORE"  # a scores.Score, or a tuple of them (its variants)

Once it is installed, `--model factorized` and `--scores complexity_ratio` work like the built-in names. The
entry point's name is the name users type, and the family's or every score variant's `name` must be the same.

Two costs are kept apart. The names come from the installed packages' metadata (their entry_points.txt,
read once per process, a few milliseconds): names.py adds them to the CLI's light lists, so a plugin name is
checked, and listed beside a typo, before torch is imported. The objects come from importing the plugin's
module, which happens only when a registry hands that name out (`Registry.get`): a command that does not
use a plugin never imports it, and a plugin that fails to import, or gives something else than the contract
(models/base.py, scores/base.py), fails only the commands that use it, with one line naming its entry point
and package. A plugin name equal to a built-in's or to another plugin's of the same group is an error
naming both, whenever names of that kind are checked.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import TYPE_CHECKING, Any, Collection

from oodbench.errors import OodbenchError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

FAMILIES_GROUP = "oodbench.families"
SCORES_GROUP = "oodbench.scores"
KINDS = {FAMILIES_GROUP: "model", SCORES_GROUP: "score"}  # what the registry of each group holds

# The names the built-ins use: lower case, digits, "-" and "_" (a comma would split `--scores a,b`).
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@functools.cache
def _installed() -> dict[str, tuple[EntryPoint, ...]]:
    """Each group's entry points over the installed distributions, by name: one read of their metadata,
    nothing imported. Cached for the process (tests that install a plugin call `_installed.cache_clear()`)."""
    from importlib.metadata import entry_points  # ~20 ms to import: only when the names are first needed

    found = entry_points()
    return {group: tuple(sorted(found.select(group=group), key=lambda ep: ep.name)) for group in KINDS}


def entry_points(group: str) -> tuple[EntryPoint, ...]:
    return _installed()[group]


def origin(ep: EntryPoint) -> str:
    """"entry point 'factorized = oodbench_factorized.model:FAMILY' of oodbench-factorized 0.1.0"."""
    dist = getattr(ep, "dist", None)
    return f"entry point '{ep.name} = {ep.value}'" + (f" of {dist.name} {dist.version}" if dist is not None else "")


def names(group: str, builtins: Collection[str]) -> tuple[str, ...]:
    """The plugin names of `group` in name order, read from metadata (no plugin is imported), leaving out
    those `check` refuses, which would otherwise shadow a built-in."""
    return tuple(dict.fromkeys(ep.name for ep in entry_points(group) if ep.name not in builtins and _NAME.fullmatch(ep.name)))


def check(group: str, builtins: Collection[str]) -> None:
    """An error naming both sides when a plugin of `group` takes a built-in's name or another plugin's, or
    naming the entry point when its name is not one a command line can type."""
    kind, seen = KINDS[group], {}
    for ep in entry_points(group):
        if ep.name in builtins:
            raise OodbenchError(f"the plugin {kind} {ep.name!r} ({origin(ep)}) has the name of oodbench's built-in {kind} "
                                f"{ep.name!r}; rename the entry point or uninstall that package")
        if ep.name in seen:
            raise OodbenchError(f"two plugins name the {kind} {ep.name!r}: {origin(seen[ep.name])} and {origin(ep)}; "
                                "uninstall one of the packages")
        if not _NAME.fullmatch(ep.name):
            raise OodbenchError(f"the plugin {kind} name {ep.name!r} ({origin(ep)}) is not lower-case letters, digits, "
                                "'-' and '_'; rename the entry point")
        seen[ep.name] = ep


def load(ep: EntryPoint) -> Any:
    """What the entry point gives, checked against its group's contract: a ModelFamily, or a tuple of Scores."""
    try:
        loaded = ep.load()
    except Exception as exc:  # noqa: BLE001 - whatever the plugin's import raised, as one line
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise OodbenchError(f"the plugin {KINDS[ep.group]} {ep.name!r} ({origin(ep)}) failed to load: "
                            f"{type(exc).__name__}: {first_line}") from exc
    return _family(ep, loaded) if ep.group == FAMILIES_GROUP else _scores(ep, loaded)


def _wrong(ep: EntryPoint, what: str) -> OodbenchError:
    return OodbenchError(f"the plugin {KINDS[ep.group]} {ep.name!r} ({origin(ep)}) {what}")


def _what(loaded: Any) -> str:
    return f"the class {loaded.__name__}" if isinstance(loaded, type) else f"a {type(loaded).__name__}"


def _family(ep: EntryPoint, loaded: Any) -> Any:
    from oodbench.models.families import ModelFamily

    if not isinstance(loaded, ModelFamily):
        raise _wrong(ep, f"gives {_what(loaded)}, not an oodbench.models.ModelFamily (models/families.py)")
    if loaded.name != ep.name:
        raise _wrong(ep, f"gives the family {loaded.name!r}; the family's name and the entry point's must be the same")
    if not (isinstance(loaded.config_cls, type) and dataclasses.is_dataclass(loaded.config_cls)):
        raise _wrong(ep, f"has config_cls {loaded.config_cls!r}, not a dataclass")
    if not callable(loaded.build):
        raise _wrong(ep, f"has build {loaded.build!r}, not a callable")
    return loaded


def _scores(ep: EntryPoint, loaded: Any) -> tuple[Any, ...]:
    from oodbench.scores.base import Score

    variants = (loaded,) if isinstance(loaded, Score) else tuple(loaded) if isinstance(loaded, (tuple, list)) else ()
    if not variants or not all(isinstance(v, Score) for v in variants):
        raise _wrong(ep, f"gives {_what(loaded)}, not an oodbench.scores.Score instance or a tuple of them "
                         "(scores/base.py)")
    if any(v.name != ep.name for v in variants):
        other = next(v.name for v in variants if v.name != ep.name)
        raise _wrong(ep, f"gives the score {other!r}; each variant's name and the entry point's must be the same")
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise _wrong(ep, f"gives variants with the same parameters ({', '.join(labels)}); each needs its own")
    return variants
