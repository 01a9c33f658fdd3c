"""The report's time table: CPU (wall) seconds per run by mode and shots, from results.json."""

from __future__ import annotations

from adapt import report as rp
from adapt.grid import GridPoint
from adapt.report.render import render_markdown
from tests.test_report import write_result


def test_time_table_means_cpu_and_wall_seconds_per_mode_and_shots(tmp_path):
    for task, seed, cpu in (("my/a", 3, 10.0), ("my/b", 3, 20.0), ("my/a", 30, 30.0)):
        point = GridPoint(task, "m", "prompt", 5, seed)
        write_result(tmp_path, point, ap=1.0, cpu_time_s=cpu, wall_time_s=cpu * 2)
    write_result(tmp_path, GridPoint("my/a", "m", "zero", 0, 3), ap=1.0, wall_time_s=7.0)  # no cpu time
    write_result(tmp_path, GridPoint("my/b", "m", "prompt", 5, 30), status="failed", cpu_time_s=999.0)
    md = render_markdown(rp.build_report(tmp_path, paper=rp.PaperReference()))
    table = md[md.index("### Time per run") :].split("\n\n")[2].splitlines()
    assert table[0].split("|")[1:-1] == [" mode ", " 0 ", " 5 "]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert rows["prompt tuning"] == ["", "20 (40) n=3"]  # the failed run is not counted
    assert rows["zero-shot"] == ["— (7) n=1", ""]
