"""Dataset references as written on the command line and in benchmarks.yaml.

A reference is `[gray:]NAME[@SPLIT]`: "svhn", "gray:cifar10", "svhn@train" (use SVHN's train split
where a test split would be used; the staged data has no SVHN test split). A pair is `IN:OUT`, e.g.
"cifar10:svhn", "gray:cifar10:svhn", "cifar10:gray:cifar10". Pairs are split on ':' and the token
"gray" attaches to the token after it, so "gray:" never needs quoting or brackets.

A user's own images are `folder:PATH` or `npz:PATH` (data/user.py), e.g. "cifar10:folder:~/my_ood":
the tokens "folder" and "npz" attach to the token after them in the same way. Their paths keep their
case, take no "@split" (a folder's train/ and test/ subfolders are its splits) and cannot hold ':'.

Parsing imports neither torch nor the dataset registry: names, channels and splits come from their light
list (`oodbench/names.py`), and a user's own images' path from `user_source.py`, so the CLI answers a
misspelt dataset, a malformed pair or a missing folder at once. `display_name` is the short form the
terminal's tables and the report's figures show ("cifar10:folder:…/my_ood").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from oodbench import names
from oodbench.data.user_source import is_user_name, parse_user
from oodbench.errors import OodbenchError

GRAY = "gray"
DISPLAY_CHARS = 40  # the longest folder or file name tables and figures show whole
# A user's images inside a reference or a pair: the kind, then the path up to the next ':' (paths hold none).
_USER_PATH = re.compile(rf"(?<![^:])({'|'.join(names.USER_KINDS)}):([^:]+)", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetRef:
    name: str  # canonical, with the prefix when there is one: "cifar10", "gray:cifar10"
    split_override: str | None = None  # "svhn@train" -> "train"

    @property
    def split(self) -> str | None:
        """Alias of `split_override`: the split to use instead of the default one, if any."""
        return self.split_override

    @property
    def gray(self) -> bool:
        return self.name.startswith(f"{GRAY}:")

    @property
    def base(self) -> str:
        """The registered dataset underneath: "gray:cifar10" -> "cifar10"."""
        return self.name.removeprefix(f"{GRAY}:")

    def __str__(self) -> str:
        return self.name if self.split_override is None else f"{self.name}@{self.split_override}"


@dataclass(frozen=True)
class Pair:
    in_ref: DatasetRef
    out_ref: DatasetRef

    def __str__(self) -> str:
        return f"{self.in_ref}:{self.out_ref}"


def parse_dataset_ref(text: str) -> DatasetRef:
    """"[gray:]NAME[@SPLIT]" -> DatasetRef; unknown names, splits or a grey base are OodbenchErrors."""
    stripped = text.strip()
    gray_prefix = stripped.lower().startswith(f"{GRAY}:")
    body = stripped[len(GRAY) + 1:] if gray_prefix else stripped
    if is_user_name(body):
        source = parse_user(body)  # a path that is not there: an error naming it
        return DatasetRef(name=f"{GRAY}:{source.name}" if gray_prefix else source.name)
    spec_text = stripped.lower()
    body, _, split = spec_text.partition("@")
    gray = body.startswith(f"{GRAY}:")
    base = body.removeprefix(f"{GRAY}:") if gray else body
    if not base:
        raise OodbenchError(f"empty dataset name in {text!r}; expected [gray:]NAME[@SPLIT], e.g. gray:cifar10")
    spec = names.dataset(base)  # unknown name -> error listing the valid ones
    if gray and spec.channels != 3:
        raise OodbenchError(f"{text!r}: {base} is already greyscale ({spec.channels} channel); drop the gray: prefix")
    if "@" in spec_text and split not in spec.splits:
        raise OodbenchError(f"{base} has no split {split!r} in {text!r}; valid splits: {', '.join(spec.splits)}")
    return DatasetRef(name=f"{GRAY}:{base}" if gray else base, split_override=split or None)


def parse_pair(text: str) -> Pair:
    """"IN:OUT" -> Pair. Tokens split on ':'; "gray" joins the token after it."""
    malformed = OodbenchError(f"malformed pair {text!r}: expected IN:OUT, e.g. cifar10:svhn")
    refs: list[str] = []
    pending_gray = False
    pending_user: str | None = None  # "folder" / "npz" waiting for its path
    for token in (part.strip() for part in text.split(":")):
        if not token:
            raise malformed
        if token.lower() == GRAY and not pending_gray and pending_user is None:
            pending_gray = True
            continue
        if token.lower() in names.USER_KINDS and pending_user is None:
            pending_user = token.lower()
            continue
        if pending_user is not None:
            token, pending_user = f"{pending_user}:{token}", None
        refs.append(f"{GRAY}:{token}" if pending_gray else token)
        pending_gray = False
    if pending_gray or pending_user is not None or len(refs) != 2:
        raise malformed
    return Pair(parse_dataset_ref(refs[0]), parse_dataset_ref(refs[1]))


def display_name(text: str) -> str:
    """A dataset reference, pair or run's dataset as tables and figures show it: each folder:/npz: path
    shortened to its last component, "cifar10:folder:/home/me/data/my_images" -> "cifar10:folder:…/my_images",
    and a component longer than `DISPLAY_CHARS` to its two ends around "…" (result files keep the whole
    path). Pure text: nothing is parsed or checked, so any row's name works."""

    def shorten(match: re.Match[str]) -> str:
        path = PurePath(match[2])
        if not path.name:
            return match[0]
        half = (DISPLAY_CHARS - 1) // 2
        name = path.name if len(path.name) <= DISPLAY_CHARS else f"{path.name[:half]}…{path.name[-half:]}"
        return f"{match[1]}:{path.with_name(name)}" if len(path.parts) <= 2 else f"{match[1]}:…/{name}"

    return _USER_PATH.sub(shorten, text)
