"""The GRUB and dracut doubles behave like the tools they stand for, where it matters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import volatile_root


@pytest.fixture
def root(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "root"
    for name, value in volatile_root.install(root, tmp_path / "logs").items():
        monkeypatch.setenv(name, value)
    return root


def mkconfig(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / "usr/sbin/grub2-mkconfig"), "-o",
                           str(root / "boot/grub2/grub.cfg")],
                          capture_output=True, text=True, check=False)


def test_mkconfig_runs_only_executable_scripts_in_name_order(root):
    grub_d = root / "etc/grub.d"
    (grub_d / "10_first").write_text("#!/bin/sh\necho 'menuentry first'\n")
    (grub_d / "10_first").chmod(0o755)
    (grub_d / "30_off").write_text("#!/bin/sh\necho 'menuentry off'\n")  # not executable
    (grub_d / "40_custom~").write_text("#!/bin/sh\necho 'menuentry backup'\n")
    (grub_d / "40_custom~").chmod(0o755)
    assert mkconfig(root).returncode == 0
    text = (root / "boot/grub2/grub.cfg").read_text()
    assert "menuentry off" not in text and "menuentry backup" not in text
    assert text.index('set default="saved"') < text.index("menuentry first") \
        < text.index("menuentry 'Qubes, with Xen hypervisor'")


def test_mkconfig_keeps_the_old_config_when_a_script_fails(root):
    before = (root / "boot/grub2/grub.cfg").read_text()
    (root / "etc/grub.d/30_broken").write_text("#!/bin/sh\necho partial\nexit 3\n")
    (root / "etc/grub.d/30_broken").chmod(0o755)
    result = mkconfig(root)
    assert result.returncode == 1 and "30_broken failed" in result.stderr
    assert (root / "boot/grub2/grub.cfg").read_text() == before
    assert not list((root / "boot/grub2").glob("grub.cfg.new.*"))


def test_dracut_builds_each_initramfs_from_its_configuration(root):
    (root / "etc/dracut.conf.d/10-x.conf").write_text('add_drivers+=" nvme "\n')
    dracut = str(root / "usr/bin/dracut")
    assert subprocess.run([dracut, "--regenerate-all"], capture_output=True,
                          check=False).returncode == 2  # the formula always forces
    subprocess.run([dracut, "--force", "--regenerate-all"], check=True)
    image = next((root / "boot").glob("initramfs-*.img")).read_text()
    assert 'add_drivers+=" nvme "' in image
    assert len(Path(os.environ["DRACUT_DOUBLE_LOG"]).read_text().splitlines()) == 1
