from pathlib import Path

from segcache.bench.markdown import replace_section, run_on, write_section

RUN = run_on()


def test_a_missing_file_is_created_with_the_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    replace_section(path, "Agents benchmark", "table 1")
    assert path.read_text() == f"# Benchmarks\n\n## Agents benchmark\n\n{RUN}\n\ntable 1\n"


def test_only_the_named_section_is_rewritten(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Agents benchmark\n\nold table\n\n## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "new table\n\nratios")
    assert path.read_text() == (f"# Benchmarks\n\nintro\n\n## Agents benchmark\n\n{RUN}\n\nnew table\n\nratios\n\n"
                                "## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "newest")
    assert path.read_text().count("## Agents benchmark") == 1 and "## Cache hit\n\nhit table\n" in path.read_text()


def test_a_new_section_goes_after_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "agents table")
    assert path.read_text() == f"# Benchmarks\n\n## Cache hit\n\nhit table\n\n## Agents benchmark\n\n{RUN}\n\nagents table\n"


def test_a_dash_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    replace_section(Path("-"), "Agents benchmark", "table")
    assert list(tmp_path.iterdir()) == []


def test_write_section_writes_only_for_a_real_path(tmp_path, capsys):
    path = tmp_path / "BENCHMARKS.md"
    write_section(None, "Agents benchmark", "table")
    write_section(Path("-"), "Agents benchmark", "table")
    assert not path.exists() and capsys.readouterr().out == ""
    write_section(path, "Agents benchmark", "table")
    assert f"## Agents benchmark\n\n{RUN}\n\ntable\n" in path.read_text()
    assert "updated the '## Agents benchmark' section" in capsys.readouterr().out


def test_each_section_says_which_cpu_and_code_made_it():
    """The kernels that serve, and so the figures, depend on the CPU's features: every section names them."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert RUN.startswith("Run on: ") and "cores (" in RUN and "segcache " in RUN
    assert ("AVX512-BF16" in RUN) == (" avx512_bf16" in cpuinfo)
    assert ("no AMX" in RUN) == (" amx_int8" not in cpuinfo)
