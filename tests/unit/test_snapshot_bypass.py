"""reliant.snapshot.unprotected_volumes: which volumes qubesd starts without create-snapshot
(qubes-core-admin 4.3.30: Volume.snapshots_disabled for the file pool)."""

from __future__ import annotations

import pytest
from lxml import etree
from qubes_platforms import R42, R43
from reliant import snapshot
from reliant.platform import Platform

STORE = """<qubes><labels/><pools>
  <pool name="varlibqubes" dir_path="/var/lib/qubes" driver="file" revisions_to_keep="{pool}"/>
  <pool name="vm-pool" volume_group="qubes_dom0" thin_pool="vm-pool" driver="lvm_thin"
        revisions_to_keep="-1"/>
</pools><properties/><domains>
  <domain id="domain-3" class="TemplateVM"><properties>
    <property name="name">tpl</property></properties><volume-config>{volume}</volume-config>
  </domain>
</domains></qubes>"""


def unprotected(volume: str, pool: str = "1", found=R43) -> list[str]:
    return snapshot.unprotected_volumes(etree.fromstring(STORE.format(volume=volume, pool=pool)),
                                        found)


ORIGIN = 'name="root" pool="varlibqubes" rw="True" save_on_stop="True" snap_on_start="False"'


@pytest.mark.parametrize(("volume", "pool", "bypass"), [
    (f'<volume {ORIGIN} revisions_to_keep="-1"/>', "1", True),
    (f'<volume {ORIGIN}/>', "-1", True),  # the pool's value when the volume has none
    (f'<volume {ORIGIN} revisions_to_keep="1"/>', "-1", False),  # the volume's wins
    (f'<volume {ORIGIN} revisions_to_keep="0"/>', "1", False),
    ('<volume name="root" pool="varlibqubes" rw="True" save_on_stop="False" '
     'snap_on_start="True" revisions_to_keep="-1" source="x"/>', "-1", False),
    ('<volume name="volatile" pool="varlibqubes" rw="True" save_on_stop="False" '
     'snap_on_start="False"/>', "-1", False),
    ('<volume name="root" pool="vm-pool" rw="True" save_on_stop="True" snap_on_start="False" '
     'revisions_to_keep="-1"/>', "1", False),  # not a file pool
])
def test_which_volumes_bypass_create_snapshot(volume, pool, bypass):
    found = unprotected(volume, pool)
    assert bool(found) is bypass
    if bypass:
        assert found[0].startswith("volume tpl:root (file pool, revisions_to_keep=-1) not "
                                   "protected: from qubes-core-dom0 4.3.30")


def test_before_4_3_30_nothing_bypasses_it():
    volume = f'<volume {ORIGIN} revisions_to_keep="-1"/>'
    assert unprotected(volume, found=R42) == []
    assert unprotected(volume, found=Platform((4, 3), {"qubes-core-dom0": (4, 3, 29)})) == []
    assert unprotected(volume, found=Platform((4, 3), {"qubes-core-dom0": (4, 3, 30)}))


def test_a_dom0_whose_version_is_unknown_may_bypass_it():
    (found,) = unprotected(f'<volume {ORIGIN} revisions_to_keep="-1"/>',
                           found=Platform((4, 3), unread=("rpm -q qubes-core-dom0: oops",)))
    assert found == ("volume tpl:root (file pool, revisions_to_keep=-1) may not be protected "
                     "(cannot tell whether Qubes R4.3 has create-snapshot bypass for file-pool "
                     "volumes with revisions_to_keep=-1 (it starts at qubes-core-dom0 4.3.30): "
                     "rpm -q qubes-core-dom0: oops)")
