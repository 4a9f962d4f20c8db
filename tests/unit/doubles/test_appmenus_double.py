"""The qvm-appmenus double writes and removes the files the real tool and xdg-desktop-menu
write (qubes-desktop-linux-common qubesappmenus/__init__.py), and fails like it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from repo_paths import FIXTURES, ROOT

DOUBLE = ROOT / "tests" / "doubles" / "qvm-appmenus"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    templates = home / ".local/share/qubes-appmenus/debian-13-xfce/apps.templates"
    templates.mkdir(parents=True)
    (templates / "xterm.desktop").write_text("[Desktop Entry]\nName=%VMNAME%: Terminal\n")
    return home


def appmenus(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    environ.update(HOME=str(home), QVM_APPMENUS_DOUBLE_STORE=str(
        FIXTURES / "qubes-r4.3-merged.xml"), **env)
    return subprocess.run([sys.executable, str(DOUBLE), *args], env=environ,
                          capture_output=True, text=True, check=False)


def files(home: Path) -> set[str]:
    return {str(p.relative_to(home)) for p in home.rglob("*") if p.is_file()}


def test_update_writes_the_menu_files_of_the_qube(home):
    before = files(home)
    assert appmenus(home, "--update", "--force", "--quiet", "--", "secret-vpn").returncode == 0
    share = ".local/share/"
    assert files(home) - before == {
        share + "applications/org.qubes-os.vm._secret_dvpn.xterm.desktop",
        share + "applications/org.qubes-os.qubes-vm-settings._secret_dvpn.desktop",
        share + "desktop-directories/qubes-vm-directory_secret_dvpn.directory",
        ".config/menus/applications-merged/user-qubes-vm-directory_secret_dvpn.menu",
        share + "qubes-appmenus/secret-vpn/apps/org.qubes-os.vm._secret_dvpn.xterm.desktop",
        share + "qubes-appmenus/secret-vpn/apps/"
                "org.qubes-os.qubes-vm-settings._secret_dvpn.desktop",
        share + "qubes-appmenus/secret-vpn/apps/qubes-vm-directory_secret_dvpn.directory"}


def test_a_qube_without_template_gets_its_start_entry_and_remove_takes_all_back(home):
    before = files(home)
    assert appmenus(home, "--update", "deep-notes", "dom0").returncode == 0
    made = files(home) - before
    assert ".local/share/applications/org.qubes-os.vm._deep_dnotes.qubes-start.desktop" in made
    assert not [f for f in made if "dom0" in f]
    assert appmenus(home, "--remove", "--quiet", "--", "deep-notes", "gone").returncode == 0
    assert files(home) == before
    assert not (home / ".local/share/qubes-appmenus/deep-notes").exists()


def test_unknown_qubes_unwritable_homes_and_xdg_dirs(home, tmp_path):
    result = appmenus(home, "--update", "nosuch")
    assert result.returncode == 2 and "'nosuch' is not an existing qube" in result.stderr
    assert appmenus(home, "--update").returncode == 2
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert appmenus(blocked, "--update", "secret").returncode == 1
    data = tmp_path / "data"
    assert appmenus(home, "--update", "secret", XDG_DATA_HOME=str(data)).returncode == 0
    assert (data / "applications" / "org.qubes-os.qubes-vm-settings._secret.desktop").exists()
