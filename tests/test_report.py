"""The report escapes every text that comes from a class list; no class name becomes a path."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import yaml
from conftest import OFFLINE_CONFIG, cli, set_args

HOSTILE = "<img src=x onerror=alert(1)>\"'&"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_hostile_class_names_are_text(tmp_path: Path, kit_overrides: list[str]) -> None:
    names = [HOSTILE, "../../etc/passwd", "a/b", "Trouser"]
    config = yaml.safe_load(OFFLINE_CONFIG.read_text())
    config["classes"] = {"names": names}
    config["prompts"]["shares"] = {"naive": 1}  # templates only: this test is about the page
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = cli("run", str(path), "--out", str(out), "--stages", "classes,prompts,report",
                 *set_args(kit_overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr

    html = (out / "report" / "index.html").read_text()
    parser = _Tags()
    parser.feed(html)
    assert not [t for t in parser.tags if t[0] == "img" and t[1].get("src") == "x"]
    assert not [t for t in parser.tags if any(k.startswith("on") for k in t[1])]
    assert HOSTILE in "".join(parser.text)  # shown as text
    # nothing was written outside the run directory, and no file is named after a class
    files = [p.relative_to(out).as_posix() for p in out.rglob("*")]
    assert all("passwd" not in f and "onerror" not in f for f in files)
    assert not (tmp_path / "etc").exists()
