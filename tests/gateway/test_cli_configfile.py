"""The CLI's config loading: the config itself, or None with every problem on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.configfile import load_config_or_report


def test_a_valid_config_is_returned(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config_or_report(Path(__file__).parents[2] / "config" / "gateway.yaml")
    assert config is not None
    assert config.console_url == "https://gateway.localhost:8443"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("console_url: 42\nsurprise: 1\n", ["surprise", "console_url"]),
        ("{{{{", ["bad.yaml"]),
        ("\x00" * 10, ["bad.yaml"]),
    ],
)
def test_every_problem_is_printed_and_none_returned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert load_config_or_report(path) is None
    err = capsys.readouterr().err
    for word in expected:
        assert word in err


def test_a_missing_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config_or_report(tmp_path / "absent.yaml") is None
    assert "absent.yaml" in capsys.readouterr().err
