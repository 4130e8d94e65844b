"""Bounds on outside input that need no CA: clipped error text and the config file size cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from rotatord.config import MAX_CONFIG_BYTES, load_config
from rotatord.core.errors import ConfigError, IssuanceError
from rotatord.core.text import MAX_ERROR_CHARS, clip, quote
from rotatord.rotation.failure import error_fields


def test_clip_keeps_short_text_and_marks_cut_text() -> None:
    """Short text is unchanged; long text keeps its head and says how much was cut."""
    assert clip("abc", 10) == "abc"
    out = clip("x" * 1000, 10)
    assert out.startswith("x" * 10) and out.endswith("…[truncated 990 chars]")


def test_quote_clips_outside_values() -> None:
    """A quoted outside value (a URL) is bounded too."""
    out = quote("h" * 10_000)
    assert len(out) < 300 and "truncated 9800 chars" in out


def test_an_8_mib_issuance_error_reaches_audit_fields_clipped() -> None:
    """An IssuanceError quoting 8 MiB and the audit/status fields built from it stay small."""
    exc = IssuanceError("bad url " + "u" * (8 << 20), retryable=True, problem_type="p" * 9999)
    assert len(str(exc)) < MAX_ERROR_CHARS + 64
    fields = error_fields(exc)
    assert "[truncated" in fields["error"] and len(fields["error"]) < MAX_ERROR_CHARS + 64
    assert len(fields["problem_type"]) < 600
    plain = error_fields(RuntimeError("y" * 100_000))
    assert len(plain["error"]) < MAX_ERROR_CHARS + 64


def test_an_oversized_config_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A config larger than the cap is refused with one problem naming the file."""
    path = tmp_path / "huge.toml"
    path.write_bytes(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "larger than 8 MiB" in problem.message
