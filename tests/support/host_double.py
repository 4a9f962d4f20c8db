"""`HostDouble`: systemctl, xl, the root and the desktop user as reliant-shard sees them
(`reliant.commands.Host`), for the tests that run its commands."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

from reliant import cli, commands, menus


class HostDouble(commands.Host):
    """Test double of the host of reliant-shard's commands.

    - qubesd is `active` or not; `qubesd(action)` records the action and leaves qubesd
      active after a start; with `unit`, qubesd's unit and the formula's drop-in run
      `dissect --final` after a stop and `suture` before a start (through the CLI, on this
      host); `on_stop` / `on_start` run after the action;
    - `running` are the running qubes (xl's answer);
    - the root runs in `mode` (`reliant.volatile.running.status`'s answer: an overlay for
      ``volatile``, ext4 otherwise) with its `problems`; by default the volatile root,
      where the interlock lets shards be merged;
    - `facts` is the Qubes platform (default: the R4.3 dom0 of tests/conftest.py);
    - `home` is the desktop user's home (default: the real lookup of `commands.Host`).
    """

    def __init__(self, active: bool = False, running: Iterable[str] = (), *,
                 unit: bool = False, mode: str = "volatile", problems: Iterable[str] = (),
                 facts=None, home=None, on_stop: Optional[Callable[[], None]] = None,
                 on_start: Optional[Callable[[], None]] = None) -> None:
        self.active, self.running, self.unit, self.actions = active, set(running), unit, []
        self.mode, self.problems, self.facts, self.home = mode, list(problems), facts, home
        self.on_stop, self.on_start = on_stop, on_start

    def volatile_status(self, settings):
        fstype = "overlay" if self.mode == "volatile" else "ext4"
        return {"mode": self.mode, "root_fstype": fstype, "problems": list(self.problems)}

    def qubesd_active(self):
        return self.active

    def running_qubes(self):
        return set(self.running)

    def qubesd(self, action):
        self.actions.append(action)
        self.active = False
        if self.unit:
            assert cli.main(["dissect", "--final"] if action == "stop" else ["suture"],
                            host=self) == 0
        self.active = action == "start"
        hook = self.on_stop if action == "stop" else self.on_start
        if hook:
            hook()

    def qubes_platform(self):
        return self.facts if self.facts is not None else super().qubes_platform()

    def desktop(self):
        return menus.Desktop(None, str(self.home)) if self.home is not None \
            else super().desktop()
