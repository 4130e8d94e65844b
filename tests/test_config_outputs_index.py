"""The indexed output-overlap checks report exactly what comparing every output with every
directory output reported: same problems, same messages, same order (and so stay linear)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotatord.config import _show_path, parse_config
from rotatord.core.errors import ConfigError
from tests.test_config import base_config

SEGMENTS = st.sampled_from(["a", "b", "c", ".", ".."])
OUTPUT = st.tuples(
    st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda p: "/o/" + "/".join(p)),
    st.booleans(),  # a directory output?
)


def reference(outputs: list[tuple[str, str, bool]]) -> list[tuple[str, str]]:
    """The old quadratic rules, written out plainly: (key path, message) in order."""
    paths: dict[Path, str] = {}
    dirs: dict[Path, str] = {}
    out: list[tuple[str, str]] = []
    for where, raw, is_dir in outputs:
        file = Path(os.path.normpath(raw))
        if file in paths:
            out.append((where, f"{_show_path(file)} is also written by {paths[file]}"))
            continue
        for d, other in dirs.items():
            if file.is_relative_to(d):
                out.append(
                    (
                        where,
                        f"{_show_path(file)} is inside {_show_path(d)}, the directory output of "
                        f"{other}, "
                        "which owns everything below it",
                    )
                )
        if is_dir:
            for f, other in paths.items():
                if f.is_relative_to(file):
                    out.append(
                        (
                            where,
                            f"this directory output would own {_show_path(f)}, which is written "
                            f"by {other}",
                        )
                    )
            dirs[file] = where
        paths[file] = where
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(OUTPUT, min_size=1, max_size=3), min_size=1, max_size=4))
def test_overlap_problems_match_the_pairwise_rules(services: list[list[tuple[str, bool]]]) -> None:
    """Random outputs over a few services, nested and repeated paths included."""
    data = base_config()
    template = data["services"].pop("web")
    outputs: list[tuple[str, str, bool]] = []
    for i, outs in enumerate(services):
        spec = copy.deepcopy(template)
        spec["domains"] = [f"s{i}.example.test"]
        spec["outputs"] = [
            {"path": p, "format": "directory", "mode": "0600"} if d else {"path": p}
            for p, d in outs
        ]
        data["services"][f"s{i}"] = spec
        outputs += [(f"services.s{i}.outputs[{j}].path", p, d) for j, (p, d) in enumerate(outs)]
    try:
        parse_config(data, Path("/etc/rotatord/rotatord.toml"))
        got: list[tuple[str, str]] = []
    except ConfigError as exc:
        got = [
            (p.path, p.message)
            for p in exc.problems
            if p.path.endswith(".path") and "state_dir" not in p.message  # not what is compared
        ]
    assert got == reference(outputs)
