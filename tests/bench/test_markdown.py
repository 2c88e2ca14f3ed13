from pathlib import Path

from segcache.bench.markdown import replace_section, write_section


def test_a_missing_file_is_created_with_the_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    replace_section(path, "Agents benchmark", "table 1")
    assert path.read_text() == "# Benchmarks\n\n## Agents benchmark\n\ntable 1\n"


def test_only_the_named_section_is_rewritten(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro\n\n## Agents benchmark\n\nold table\n\n## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "new table\n\nratios")
    assert path.read_text() == ("# Benchmarks\n\nintro\n\n## Agents benchmark\n\nnew table\n\nratios\n\n"
                                "## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "newest")
    assert path.read_text().count("## Agents benchmark") == 1 and "## Cache hit\n\nhit table\n" in path.read_text()


def test_a_new_section_goes_after_the_others(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Cache hit\n\nhit table\n")
    replace_section(path, "Agents benchmark", "agents table")
    assert path.read_text() == "# Benchmarks\n\n## Cache hit\n\nhit table\n\n## Agents benchmark\n\nagents table\n"


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
    assert "## Agents benchmark\n\ntable\n" in path.read_text()
    assert "updated the '## Agents benchmark' section" in capsys.readouterr().out
