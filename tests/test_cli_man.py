"""man/gearman.1 and man/gearadmin.1: every option of the tools' option tables is
documented, and man renders them without warnings."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gearman_cli import gearadmin, gearman
from gearman_cli._argv import ArgParser

MAN = Path(__file__).resolve().parent.parent / "man"


@pytest.mark.parametrize(("page", "parser"),
                         [("gearman.1", gearman.PARSER), ("gearadmin.1", gearadmin.PARSER)])
def test_every_option_is_in_the_man_page(page: str, parser: ArgParser) -> None:
    text = (MAN / page).read_text()
    assert len(parser.options) > 10
    for option in parser.options:
        for flag in option.names:
            assert flag.replace("-", r"\-") in text, f"{flag} missing from {page}"
    for flag in parser.help_names:
        assert flag.replace("-", r"\-") in text, f"{flag} missing from {page}"
    assert "EXIT STATUS" in text and "ENVIRONMENT" in text and "EXAMPLES" in text


@pytest.mark.parametrize("page", ["gearman.1", "gearadmin.1"])
def test_man_renders_without_warnings(page: str) -> None:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (apt-get install man-db)")
    done = subprocess.run(["man", "--warnings", "-l", str(MAN / page)],
                          capture_output=True, timeout=30, check=False,
                          env={**os.environ, "MANWIDTH": "80"})
    assert done.returncode == 0
    assert done.stderr == b"", done.stderr.decode()
    assert len(done.stdout) > 1000
