"""actors/_launchusage: the launcher's memory cgroup, armed once per action.

A directory of plain files stands in for the cgroup: what is checked is which
files the launcher writes and reads at each arm, not what the kernel does with
them (``tests/agent/jobs/test_usage.py`` runs actions in real cgroups).
"""

from __future__ import annotations

from pathlib import Path

from actors import _launcher, _launchusage


def _cgroup_v1(path: Path) -> None:
    (path / "memory.limit_in_bytes").write_text("-1\n")
    (path / "memory.max_usage_in_bytes").write_text("4096\n")
    (path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")


def test_the_limit_is_written_only_when_it_changes(tmp_path: Path) -> None:
    _cgroup_v1(tmp_path)
    limit = tmp_path / "memory.limit_in_bytes"
    cgroup = _launchusage.MemoryCgroup(str(tmp_path), 1)
    try:
        assert cgroup.arm(1000)
        assert limit.read_text() == "1000"
        limit.write_text("sentinel")  # not rewritten while the limit stays the same
        assert cgroup.arm(1000)
        assert limit.read_text() == "sentinel"
        assert cgroup.arm(None)
        assert limit.read_text() == "-1"
        assert cgroup.arm(2000)
        assert limit.read_text() == "2000"
    finally:
        cgroup.close()


def test_kills_are_counted_from_each_arm_through_the_open_events_file(tmp_path: Path) -> None:
    _cgroup_v1(tmp_path)
    events = tmp_path / "memory.oom_control"
    cgroup = _launchusage.MemoryCgroup(str(tmp_path), 1)
    try:
        assert cgroup.arm(1000)
        assert cgroup.kills_before == 2 and not cgroup.oom_killed()
        with open(events, "r+") as file:  # the same file, as the kernel would update it
            file.write("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
        assert cgroup.oom_killed()
        assert cgroup.arm(1000)
        assert cgroup.kills_before == 3 and not cgroup.oom_killed()
    finally:
        cgroup.close()


def test_a_cgroup_that_takes_no_limit_is_not_used(tmp_path: Path) -> None:
    cgroup = _launchusage.MemoryCgroup(str(tmp_path / "missing"), 2)
    assert not cgroup.arm(None)
    assert _launchusage.Usage(None, cgroup).cgroup is None


def test_one_cgroup_object_serves_the_spawns_that_name_it(tmp_path: Path) -> None:
    _cgroup_v1(tmp_path)
    launcher = _launcher.Launcher.__new__(_launcher.Launcher)
    launcher.memory_cgroup = None
    first = launcher.cgroup_for([str(tmp_path), 1])
    assert first is not None
    assert launcher.cgroup_for([str(tmp_path), 1]) is first
    other = launcher.cgroup_for([str(tmp_path), 2])
    assert other is not None and other is not first
    assert launcher.cgroup_for(None) is None


def test_with_a_cgroup_the_first_tree_sample_waits_its_interval(tmp_path: Path) -> None:
    _cgroup_v1(tmp_path)
    sampled_only = _launchusage.Usage(None, None)
    counted = _launchusage.Usage(None, _launchusage.MemoryCgroup(str(tmp_path), 1))
    assert counted.cgroup is not None
    assert counted.next_sample - sampled_only.next_sample >= _launchusage.SAMPLE_SECONDS * 0.9
    counted.cgroup.close()
