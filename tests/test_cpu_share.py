"""The default thread count (config.threads = 0, app/cpu_share.py): the usable cores less those
other processes keep busy, from /proc/stat readings, here fed in by hand instead of a clock."""
import pytest
import torch

from sde_diffusion.app import cpu_share


@pytest.mark.parametrize("others, cores, threads", [
    (0.0, 2, 2), (0.7, 2, 2), (0.8, 2, 1), (1.0, 2, 1), (2.0, 2, 1), (5.0, 2, 1),
    (0.0, 8, 8), (2.9, 8, 5), (3.8, 8, 4), (0.0, 1, 1)])
def test_threads_are_the_cores_others_leave_free(others, cores, threads):
    assert cpu_share.threads_for(others, cores) == threads


@pytest.fixture
def fake_machine(monkeypatch):
    """A clock, this process's CPU time and /proc/stat's busy seconds, all set by the test."""
    machine = {"wall": 100.0, "own": 10.0, "busy": 50.0}
    monkeypatch.setattr(cpu_share.time, "monotonic", lambda: machine["wall"])
    monkeypatch.setattr(cpu_share.time, "process_time", lambda: machine["own"])
    monkeypatch.setattr(cpu_share, "_busy_seconds", lambda cores: machine["busy"])
    monkeypatch.setattr(cpu_share.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cpu_share, "_state", None)  # and back to None afterwards: no fitting in later tests
    before = torch.get_num_threads()
    yield machine
    torch.set_num_threads(before)


def advance(machine, seconds, own_cores, other_cores):
    machine["wall"] += seconds
    machine["own"] += own_cores * seconds
    machine["busy"] += (own_cores + other_cores) * seconds


def test_a_busy_neighbour_takes_a_core_and_gives_it_back(fake_machine):
    cpu_share.start()
    assert torch.get_num_threads() == 2
    advance(fake_machine, 0.5, own_cores=1.0, other_cores=2.0)
    cpu_share.adapt()
    assert torch.get_num_threads() == 2  # the first check comes after 1 s
    advance(fake_machine, 0.6, own_cores=1.0, other_cores=1.0)
    cpu_share.adapt()  # others kept 1.0 core busy over the last 1.1 s
    assert torch.get_num_threads() == 1
    advance(fake_machine, 1.0, own_cores=1.0, other_cores=0.0)
    cpu_share.adapt()
    assert torch.get_num_threads() == 1  # checked every CHECK_SECONDS, not at every call
    advance(fake_machine, cpu_share.CHECK_SECONDS, own_cores=1.0, other_cores=0.05)
    cpu_share.adapt()  # the window since the last check: others used 1/3 s of 3 s
    assert torch.get_num_threads() == 2


def test_without_proc_stat_the_count_stays_at_the_usable_cores(fake_machine, monkeypatch):
    monkeypatch.setattr(cpu_share, "_busy_seconds", lambda cores: None)
    cpu_share.start()
    advance(fake_machine, 5.0, own_cores=0.0, other_cores=2.0)
    cpu_share.adapt()
    assert torch.get_num_threads() == 2


def test_proc_stat_is_read_as_busy_seconds_of_the_given_cores(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    stat.write_text("cpu  900 0 100 5000 50 0 0 0 0 0\n"
                    "cpu0 400 0 50 2500 25 0 0 0 300 0\n"
                    "cpu1 500 0 50 2500 25 0 0 0 0 0\n")
    monkeypatch.setattr(cpu_share, "Path", lambda name: stat)
    monkeypatch.setattr(cpu_share.os, "sysconf", lambda name: 100)
    assert cpu_share._busy_seconds([0]) == pytest.approx(4.5)  # (400 + 50) ticks: idle, iowait and guest (in user) left out
    assert cpu_share._busy_seconds([0, 1]) == pytest.approx(10.0)


def test_omp_num_threads_in_the_environment_is_left_alone(fake_machine, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cpu_share.start()
    advance(fake_machine, 5.0, own_cores=1.0, other_cores=0.0)
    cpu_share.adapt()
    assert torch.get_num_threads() == 1 and cpu_share._state is None
