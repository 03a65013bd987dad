"""Dataset and run names: any script's letters and digits, never a path."""

from __future__ import annotations

import unicodedata

import pytest

from mlxlora.names import name_problem, normalize


@pytest.mark.parametrize(
    "name",
    [
        "医療専門知識データセット",
        "医療専門知識モデル_v1",
        "données-été",
        "Ärzte Modell 2",
        "run.v2",
        "हिन्दी",
    ],
)
def test_names_in_any_language_are_accepted(name):
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name, why",
    [
        ("", "empty"),
        ("   ", "empty"),
        (None, "empty"),
        ("../etc", "starts with a dot"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("tab\there", "U+0009"),
        ("nul\x00", "U+0000"),
        ("x" * 201, "longer than 200 bytes"),
        ("医" * 67, "longer than 200 bytes"),  # 201 bytes in UTF-8
    ],
)
def test_paths_and_control_characters_are_refused(name, why):
    problem = name_problem(name)
    assert problem is not None and why in problem


def test_decomposed_and_composed_forms_are_one_name():
    decomposed = unicodedata.normalize("NFD", "données-été")
    assert decomposed != "données-été"
    assert normalize(decomposed) == "données-été"
