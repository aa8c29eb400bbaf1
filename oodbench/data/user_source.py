"""Where a user's own images are: `folder:PATH` and `npz:PATH` parsed into a `UserSource` (data/user.py
reads them). Pathlib only, so that the CLI checks such a reference (data/refs.py), a path that is not
there included, before torch and Pillow are imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from oodbench.errors import OodbenchError
from oodbench.names import USER_KINDS as KINDS

SPLITS = ("train", "test")


def is_user_name(text: str) -> bool:
    """True for "folder:..." and "npz:..." (the kinds are case-insensitive, paths are not)."""
    kind, sep, _ = text.partition(":")
    return bool(sep) and kind.strip().lower() in KINDS


@dataclass(frozen=True)
class UserSource:
    kind: str  # "folder" | "npz"
    path: Path  # absolute

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.path}"

    @property
    def title(self) -> str:
        return self.path.name if self.kind == "folder" else self.path.stem

    @property
    def splits(self) -> tuple[str, ...]:
        if self.kind == "folder":
            present = tuple(split for split in SPLITS if (self.path / split).is_dir())
            if present:
                return present
        return SPLITS

    @property
    def shared_splits(self) -> bool:
        """True when "train" and "test" are the same images (a flat folder, an npz file)."""
        return self.kind == "npz" or not any((self.path / split).is_dir() for split in SPLITS)

    def where(self, split: str) -> Path:
        return self.path if self.shared_splits else self.path / split


def parse_user(text: str) -> UserSource:
    """"folder:~/x" -> UserSource("folder", /home/me/x); a missing path is an OodbenchError."""
    kind, _, path_text = text.partition(":")
    kind = kind.strip().lower()
    if not path_text.strip():
        raise OodbenchError(f"{text!r} names no path; write {kind}:PATH, e.g. {kind}:~/my_images")
    path = Path(path_text.strip()).expanduser().resolve()
    if kind == "folder" and not path.is_dir():
        raise OodbenchError(f"{text!r}: {path} is not a folder; folder: takes a folder of images")
    if kind == "npz" and not path.is_file():
        raise OodbenchError(f"{text!r}: {path} is not a file; npz: takes a .npz file with an array x")
    return UserSource(kind, path)
