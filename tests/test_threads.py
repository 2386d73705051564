"""Thread policy: a run's torch threads come from ROBUSTNESS_THREADS (default: every core), checked before work."""
import os

import pytest

from robustness_book import runner
from robustness_book.cli import main
from robustness_book.runtime import thread_count


def test_thread_count_defaults_to_every_core_and_reads_the_variable(monkeypatch):
    monkeypatch.delenv("ROBUSTNESS_THREADS", raising=False)
    assert thread_count() == (os.cpu_count() or 1)
    monkeypatch.setenv("ROBUSTNESS_THREADS", "1")
    assert thread_count() == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_names_the_variable(monkeypatch, bad):
    monkeypatch.setenv("ROBUSTNESS_THREADS", bad)
    with pytest.raises(ValueError, match="ROBUSTNESS_THREADS"):
        thread_count()


def test_the_kernel_inherits_the_thread_policy_and_the_environment_is_restored(monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with runner._kernel_environment():
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["ROBUSTNESS_PROGRESS"] == "0"
    assert "OMP_NUM_THREADS" not in os.environ and "ROBUSTNESS_PROGRESS" not in os.environ


def test_cli_rejects_a_bad_thread_count_before_any_kernel(monkeypatch, capsys):
    monkeypatch.delenv("ROBUSTNESS_THREADS", raising=False)
    with pytest.raises(SystemExit):
        main(["run", "baselines", "--profile", "smoke", "--threads", "0"])
    assert "--threads must be a positive integer" in capsys.readouterr().err
