"""The README's quick-start `dig` lines, run against `dnsd --config examples/dnsd.yaml`, print what it shows."""

from __future__ import annotations

import re
import subprocess

from tests.dnsd_process import REPO, DnsdProcess


def _console_examples() -> list[tuple[str, list[str]]]:
    text = (REPO / "README.md").read_text()
    block = text.split("```console\n", 1)[1].split("```", 1)[0]
    examples: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            examples.append((line[2:], []))
        elif examples:
            examples[-1][1].append(line)
    return examples


def test_readme_dig_lines_return_what_the_readme_shows() -> None:
    examples = _console_examples()
    assert len(examples) >= 6
    with DnsdProcess("--config", "examples/dnsd.yaml", listen=(), http="off") as proc:
        assert ("127.0.0.1", 5353) in proc.bound and ("::1", 5353) in proc.bound
        for command, expected in examples:
            assert command.startswith("dig ")
            out = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=15,  # noqa: S602
                                 cwd=REPO).stdout.splitlines()
            assert len(out) == len(expected), (command, out)
            for got, want in zip(out, expected, strict=True):
                pattern = re.escape(want).replace(r"\.\.\.", ".*")
                assert re.fullmatch(pattern, got), (command, got, want)
