"""The man pages install with the package: gearmand(8), gearman(1) and gearadmin(1) land under
``<prefix>/share/man`` (hatch ``shared-data``), so ``MANPATH=<venv>/share/man man gearman``
finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    "gearmand": "man8/gearmand.8",
    "gearman": "man1/gearman.1",
    "gearadmin": "man1/gearadmin.1",
}


def man_w(manpath: Path, name: str) -> str:
    """Where ``man`` finds page ``name`` with only ``manpath`` to look in."""
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    env = {**os.environ, "MANPATH": str(manpath)}
    proc = subprocess.run(["man", "-w", name], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    (built,) = out.glob("*.whl")
    return built


def test_the_wheel_carries_every_man_page_as_shared_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        data = {name.split(".data/data/", 1)[1]: name for name in zf.namelist()
                if ".data/data/" in name}
        assert sorted(data) == sorted(f"share/man/{page}" for page in PAGES.values())
        for page in PAGES.values():
            assert zf.read(data[f"share/man/{page}"]) == (ROOT / "man" / Path(page).name)\
                .read_bytes()


def test_pip_install_puts_the_pages_where_man_finds_them(wheel: Path, tmp_path: Path) -> None:
    # A fresh venv, so the install never touches (or uninstalls) the one running the tests.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True, timeout=120)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--no-compile", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, timeout=120,
    )
    manpath = venv / "share/man"
    for name, page in PAGES.items():
        assert (manpath / page).read_bytes() == (ROOT / "man" / Path(page).name).read_bytes()
        assert man_w(manpath, name) == str(manpath / page)


def test_the_development_venv_has_the_pages() -> None:
    """``pip install -e .`` installs them too: ``MANPATH=.venv/share/man man gearman``."""
    manpath = Path(sys.prefix) / "share/man"
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtualenv")
    missing = [page for page in PAGES.values() if not (manpath / page).is_file()]
    assert not missing, f"{missing} not under {manpath}: reinstall with `pip install -e .`"
    for name, page in PAGES.items():
        assert man_w(manpath, name) == str(manpath / page)
