"""Gateway instances sharing a data directory and starting at once sign identity assertions
with one key and publish the same key set, so an upstream holding any instance's
`jwks.json` accepts every instance's assertions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.assertion import load_signer, rotate
from tests.gateway.accounts.test_keyfile_instances import race

STARTERS = 6
TRIALS = 5


def start_together(directory: Path) -> list[tuple[str, ...] | Exception]:
    """What each of STARTERS signers loaded at the same moment publishes (its key ids)."""

    def published() -> tuple[str, ...]:
        signer = load_signer(directory, issuer="https://gateway.example", environ={})
        jwks: dict[str, Any] = signer.jwks()
        return tuple(key["kid"] for key in jwks["keys"])

    return race(published, STARTERS)


def test_instances_starting_at_once_publish_one_first_key(tmp_path: Path) -> None:
    for trial in range(TRIALS):
        directory = tmp_path / f"trial-{trial}" / "keys"
        published = start_together(directory)
        assert len(published) == STARTERS
        assert len(set(published)) == 1, published
        [kids] = set(published)
        assert isinstance(kids, tuple)
        assert len(kids) == 1
        assert len(list(directory.glob("*.pem"))) == 1


def test_a_rotation_while_instances_start_keeps_both_keys_published(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load_signer(directory, issuer="https://gateway.example", environ={})
    rotated = rotate(directory, now=2_000_000_000)
    later = load_signer(directory, issuer="https://gateway.example", environ={})
    kids = [key["kid"] for key in later.jwks()["keys"]]
    assert kids[-1] == rotated.kid
    assert first.current.kid in kids
    assert not list(directory.glob("*.tmp"))
