"""docs/benchmarks.md is appended by the benchmarks themselves: what they printed, under who measured it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from parlab.benchmark_page import PAGE, recorded, split_record_option

REPO = Path(__file__).resolve().parents[1]


def test_the_record_option_is_taken_out_of_the_arguments():
    assert split_record_option(["--steps", "3"]) == (["--steps", "3"], None)
    assert split_record_option(["--record", "--steps", "3"]) == (["--steps", "3"], PAGE)
    assert split_record_option(["--steps", "3", "--record"]) == (["--steps", "3"], PAGE)
    assert split_record_option(["--record", "x/page.md", "-n"]) == (["-n"], Path("x/page.md"))
    assert split_record_option(["--record=x.md"]) == ([], Path("x.md"))


def test_a_recorded_run_appends_its_output_and_provenance_and_nothing_else(tmp_path, monkeypatch, capsys):
    page = tmp_path / "benchmarks.md"
    for argv, figure in ((["bench.py", "--steps", "3", "--record", str(page)], "12.5 img/s"),
                         (["bench.py", f"--record={page}"], "ratio 0.97")):
        monkeypatch.setattr(sys, "argv", argv)
        with recorded("benchmarks/bench.py"):
            assert "--record" not in " ".join(sys.argv)  # the script's own parser never sees it
            print(f"measured: {figure}")
    text = page.read_text()
    assert text.startswith("# Benchmarks\n") and text.count("# Benchmarks") == 1
    first, second = text.split("\n## bench.py, ")[1:]
    assert "| command | `python benchmarks/bench.py --steps 3` |" in first and "measured: 12.5 img/s" in first
    assert "| command | `python benchmarks/bench.py` |" in second and "measured: ratio 0.97" in second
    for key in ("| commit | ", "| machine | ", "| software | Python ", "| date | "):
        assert key in first and key in second
    assert "measured: 12.5 img/s" in capsys.readouterr().out  # the terminal still gets it

    monkeypatch.setattr(sys, "argv", ["bench.py", "--record", str(page)])
    with pytest.raises(RuntimeError), recorded("benchmarks/bench.py"):
        print("half a measurement")
        raise RuntimeError("the benchmark failed")
    assert page.read_text() == text  # a failed run records nothing
    monkeypatch.setattr(sys, "argv", ["bench.py"])
    with recorded("benchmarks/bench.py"):
        print("not recorded")
    assert page.read_text() == text


def test_a_benchmark_script_records_itself(tmp_path):
    page = tmp_path / "page.md"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "synthpa_generation.py"), "--size", "20",
                             "--record", str(page)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    assert "`python benchmarks/synthpa_generation.py --size 20`" in text
    assert "20 images, 1 worker(s):" in text and "images/s" in text
