"""`display_name`: how tables and figures show a dataset reference or pair. A user's folder or npz file
by its last path component (the result files keep the path); everything else exactly as written."""

from __future__ import annotations

import pytest

from oodbench.data.refs import DISPLAY_CHARS, display_name


@pytest.mark.parametrize(("text", "shown"), [
    ("cifar10:folder:/home/me/data/my_images", "cifar10:folder:…/my_images"),
    ("folder:/home/me/data/my_images", "folder:…/my_images"),
    ("gray:folder:/a/b/c:svhn@train", "gray:folder:…/c:svhn@train"),
    ("npz:/home/me/sets/faces.npz:folder:/data/x/field", "npz:…/faces.npz:folder:…/field"),
    ("folder:/photos", "folder:/photos"),  # nothing to leave out
    ("cifar10:svhn@train", "cifar10:svhn@train"),
    ("cifar10:gray:cifar10", "cifar10:gray:cifar10"),
])
def test_a_folder_is_shown_by_its_last_component_and_nothing_else_changes(text, shown):
    assert display_name(text) == shown


def test_a_very_long_folder_name_keeps_its_two_ends():
    name = "start_of_a_folder_name_" + "x" * 80 + "_and_its_end"
    shown = display_name(f"cifar10:folder:/data/{name}")
    folder = shown.removeprefix("cifar10:folder:…/")
    assert len(folder) <= DISPLAY_CHARS and folder.startswith("start_of_a_folder") and folder.endswith("and_its_end")
    assert folder.count("…") == 1
