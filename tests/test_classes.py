"""The classes stage: catalogs, candidates, the text rule, CLIP selection, the LLM path."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, cli, tree_snapshot

from diversynth.config import ConfigError, load_config, validate_config
from diversynth.data.classes.entry import ClassListError
from diversynth.data.classes.imagenet import imagenet_catalog, named_subset
from diversynth.pipeline import PipelineError, run_stages
from diversynth.run.rundir import RunDir, read_jsonl
from diversynth.stages.classes.select_clip import clip_select
from diversynth.testing.tiny_models import EXEMPLAR_WNIDS, EXEMPLARS_PER_CLASS

PAIRS = {"crane": ("n02012849", "n03126707"), "maillot": ("n03710637", "n03710721"),
         "cardigan": ("n02963159", "n02113186")}  # fmt: skip


def run_classes(tmp_path: Path, classes: dict[str, Any], **sections: Any) -> tuple[list, dict]:
    config = validate_config({"name": "t", "classes": classes, **sections})
    run = RunDir(tmp_path / "run")
    run_stages(config, run, stages=["classes"], force=["classes"])
    return read_jsonl(run.classes), run.read_state("classes").summary


def by_wnid(records: list[dict]) -> dict[str, dict]:
    return {r["wnid"]: r for r in records}


# --------------------------------------------------------------------------- catalogs


def test_imagenet1k_catalog_in_standard_order() -> None:
    entries = imagenet_catalog(None)
    assert len(entries) == 1000
    assert [entries[0].wnid, entries[-1].wnid] == ["n01440764", "n15075141"]
    assert [e.index for e in entries] == list(range(1000))
    tench = entries[0]
    assert tench.lemmas == ("tench", "Tinca tinca") and "freshwater" in tench.description
    assert tench.hypernyms[0] == "cyprinid" and "fish" in " ".join(tench.hypernyms)
    crane_bird = next(e for e in entries if e.wnid == "n02012849")
    assert crane_bird.hypernyms[:3] == ("wading bird", "aquatic bird", "bird")
    assert crane_bird.curated == "crane bird"


def test_subsets_keep_standard_order() -> None:
    wnids = named_subset("imagenet100")
    assert len(wnids) == len(set(wnids)) == 100
    entries = imagenet_catalog("imagenet100")
    assert [e.wnid for e in entries] == sorted(wnids)  # imagenet1k's order is sorted wnids
    picked = imagenet_catalog(["n03126707", "n01440764"])
    assert [e.wnid for e in picked] == ["n01440764", "n03126707"]
    with pytest.raises(ClassListError, match=r"classes.subset\[1\]: unknown wnid 'n00000001'"):
        imagenet_catalog(["n01440764", "n00000001"])
    with pytest.raises(ClassListError, match="unknown subset 'imagenet7'"):
        imagenet_catalog("imagenet7")


def test_first_n_and_folder_and_file_sources(tmp_path: Path, kit: dict[str, Path]) -> None:
    records, _ = run_classes(tmp_path, {"catalog": "imagenet1k", "first": 5})
    assert [r["wnid"] for r in records] == list(imagenet_catalog(None)[i].wnid for i in range(5))
    # the class folders of an ImageFolder: wnid folders become WordNet classes
    records, _ = run_classes(tmp_path, {"folder": str(kit["exemplars"])})
    assert [r["wnid"] for r in records] == sorted(EXEMPLAR_WNIDS)
    assert all(r["hypernyms"] for r in records)
    # a file with descriptions and a wnid
    path = tmp_path / "classes.yaml"
    path.write_text(
        "- {name: apple, description: the fruit}\n- {name: apple, description: the company}\n"
        "- {name: crane, wnid: n03126707}\n"
    )
    records, _ = run_classes(tmp_path, {"file": str(path)})
    assert [r["name"] for r in records[:2]] == ["apple (the fruit)", "apple (the company)"]
    assert records[2]["wnid"] == "n03126707" and records[2]["name"] == "construction crane"


# --------------------------------------------------------------------------- acceptance 1


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("in1k") / "run"
    config = REPO / "configs" / "imagenet1k.yaml"
    result = cli("run", str(config), "--out", str(out), "--stages", "classes")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_imagenet1k_text_only_names_say_which_is_which(imagenet_run: Path) -> None:
    records = read_jsonl(imagenet_run / "classes.jsonl")
    assert [r["wnid"] for r in records] == [e.wnid for e in imagenet_catalog(None)]
    names = [r["name"].casefold() for r in records]
    assert len(set(names)) == 1000
    table = by_wnid(records)
    for raw, (a, b) in PAIRS.items():
        first, second = table[a]["name"], table[b]["name"]
        assert first.casefold() != raw and second.casefold() != raw, (first, second)
    assert "bird" in table["n02012849"]["name"] and "construction" in table["n03126707"]["name"]
    assert "corgi" in table["n02113186"]["name"].casefold()
    assert "sweater" in table["n02963159"]["name"]
    # an unambiguous name is kept as it is
    assert table["n01440764"]["name"] == "tench"
    state = json.loads((imagenet_run / ".state" / "classes.json").read_text())
    assert state["summary"]["mode"] == "text" and state["seconds"] < 120
    for record in records:
        assert record["candidates"] and record["reason"].startswith("text rule")
        assert all({"text", "score", "source"} <= set(c) for c in record["candidates"])
        assert record["name"] in [c["text"] for c in record["candidates"]]


@pytest.mark.slow
def test_classes_show_explains_one_decision(imagenet_run: Path) -> None:
    shown = cli("classes", "show", "n02963159", "--run", str(imagenet_run))
    assert shown.returncode == 0, shown.stderr
    assert "cardigan (sweater)" in shown.stdout and "2 WordNet senses" in shown.stdout
    assert "why: text rule" in shown.stdout
    by_index = cli("classes", "show", "0", "--run", str(imagenet_run))
    assert "tench" in by_index.stdout and "Tinca tinca" in by_index.stdout
    both = cli("classes", "show", "crane", "--run", str(imagenet_run))
    assert both.returncode == 2  # a key that names two classes: the question to mend
    assert "'crane' names 2 classes: 134 (n02012849), 517 (n03126707)" in both.stderr


# --------------------------------------------------------------------------- CLIP selection


def test_clip_prefers_the_name_that_does_not_draw_other_classes_images() -> None:
    # class 0 is the bird, class 1 the machine; "crane" matches the bird best but also
    # matches the machine's images more than "construction crane" does
    columns = ["crane", "crane bird", "construction crane", "crane"]
    by_class = [[0, 1], [2]]
    sims = torch.tensor(
        [  # crane, crane bird, construction crane
            [0.90, 0.80, 0.10, 0.0],  # bird images
            [0.90, 0.70, 0.20, 0.0],
            [0.85, 0.20, 0.60, 0.0],  # machine images
            [0.80, 0.10, 0.70, 0.0],
        ]
    )
    labels = torch.tensor([0, 0, 1, 1])
    result = clip_select(sims, labels, by_class, columns, [0.0] * 4, start=[0, 2])
    assert result.choice == [1, 2]
    assert result.correct[1] == 4 and result.correct[0] == 2  # "crane" draws both machines
    assert result.own[0] == 2 and result.drawn[0] == 2


def _correct(sims: torch.Tensor, labels: torch.Tensor, choice: list[int]) -> int:
    return int((sims[:, choice].argmax(1) == labels).sum())


def test_clip_search_ends_at_a_local_optimum_no_worse_than_its_start() -> None:
    rng = random.Random(0)
    for trial in range(20):
        classes, per_class, images = 5, 3, 30
        torch.manual_seed(trial)
        sims = torch.rand(images, classes * per_class)
        labels = torch.tensor([rng.randrange(classes) for _ in range(images)])
        by_class = [list(range(c * per_class, (c + 1) * per_class)) for c in range(classes)]
        keys = [f"name {col}" for col in range(classes * per_class)]
        start = [cols[0] for cols in by_class]
        result = clip_select(sims, labels, by_class, keys, [0.0] * len(keys), start)
        best = _correct(sims, labels, result.choice)
        assert best >= _correct(sims, labels, start)
        for c, cols in enumerate(by_class):
            assert result.correct[result.choice[c]] == best
            for col in cols:  # no single move improves, and the reported counts are right
                moved = list(result.choice)
                moved[c] = col
                assert _correct(sims, labels, moved) == result.correct[col] <= best


@pytest.mark.slow
def test_clip_mode_runs_end_to_end_on_the_kit(tmp_path: Path, kit: dict[str, Path]) -> None:
    records, summary = run_classes(
        tmp_path,
        {"catalog": "imagenet1k", "subset": EXEMPLAR_WNIDS,
         "disambiguate": {"mode": "clip", "exemplars": EXEMPLARS_PER_CLASS}},
        clip={"model": f"local-dir:{kit['open-clip']}"},
        data={"format": "imagefolder", "root": str(kit["exemplars"])},
    )  # fmt: skip
    assert summary["mode"] == "clip"
    assert summary["exemplars"] == len(EXEMPLAR_WNIDS) * EXEMPLARS_PER_CLASS
    accuracy = summary["zero_shot_top1"]
    assert set(accuracy) == {"raw", "text_rule", "chosen"}
    assert accuracy["chosen"] >= accuracy["text_rule"]  # the search never loses ground
    assert len({r["name"].casefold() for r in records}) == len(records) == 20
    for record in records:
        assert record["reason"].startswith("CLIP: zero-shot top-1")
        for cand in record["candidates"]:
            assert 0.0 <= cand["score"] <= 1.0 and {"own", "drawn"} <= set(cand)


def test_auto_mode_is_text_only_without_exemplars(tmp_path: Path, kit: dict[str, Path]) -> None:
    _, summary = run_classes(
        tmp_path,
        {"catalog": "imagenet1k", "first": 3, "disambiguate": {"exemplars": 0}},
        clip={"model": f"local-dir:{kit['open-clip']}"},
    )
    assert summary["mode"] == "text" and "zero_shot_top1" not in summary


# --------------------------------------------------------------------------- bad input


@pytest.mark.slow
def test_empty_and_unknown_inputs_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ClassListError, match="classes.names: the class list is empty"):
        run_classes(tmp_path, {"names": []})
    with pytest.raises(ClassListError, match=r"classes.names\[1\].wnid: unknown wnid 'n12'"):
        run_classes(tmp_path, {"names": ["a", {"name": "b", "wnid": "n12"}]})
    with pytest.raises(ConfigError, match="classes.subset needs classes.catalog"):
        validate_config({"classes": {"names": ["a"], "subset": "imagenet100"}})
    with pytest.raises(ConfigError, match="mode is clip: it needs a clip model"):
        validate_config({"classes": {"names": ["a"], "disambiguate": {"mode": "clip"}}})
    with pytest.raises(ConfigError, match="disambiguate.llm is true but no llm"):
        validate_config({"classes": {"names": ["a"], "disambiguate": {"llm": True}}})
    config = str(REPO / "configs/imagenet1k.yaml")
    subset = "classes.subset=[n01440764, n99999999]"
    with pytest.raises(PipelineError, match=r"generate: required by the generate stage \(or"):
        run_stages(load_config(config), RunDir(tmp_path / "x"))  # all stages: no generate section
    assert not (tmp_path / "x").exists()
    result = cli(
        "run", config, "--out", str(tmp_path / "x"), "--set", subset, "--stages", "classes"
    )
    assert result.returncode == 2
    assert "classes.subset[1]: unknown wnid 'n99999999'" in result.stderr


def test_duplicates_are_kept_and_told_apart(tmp_path: Path) -> None:
    records, summary = run_classes(tmp_path, {"names": ["apple", "Apple", "pear", "apple"]})
    assert [r["raw_name"] for r in records] == ["apple", "Apple", "pear", "apple"]
    names = [r["name"] for r in records]
    assert len({n.casefold() for n in names}) == 4
    assert names[2] == "pear" and summary["fallback"] == 2
    assert "numbered to keep names distinct" in records[1]["reason"]


def test_ten_thousand_classes(tmp_path: Path) -> None:
    names = [f"thing {i}" for i in range(9_990)] + ["crane"] * 10
    records, summary = run_classes(tmp_path, {"names": names})
    assert len(records) == 10_000 and summary["classes"] == 10_000
    assert len({r["name"].casefold() for r in records}) == 10_000


def test_hostile_and_unicode_names_stay_text(tmp_path: Path) -> None:
    hostile = ["../../etc/passwd", "a/b", "..", "<script>alert(1)</script>", 'say "hi"',
               "it's", "Ærø café ☕", "名前"]  # fmt: skip
    records, _ = run_classes(tmp_path, {"names": hostile})
    assert [r["name"] for r in records] == hostile
    files = set(tree_snapshot(tmp_path / "run"))
    assert files <= {"config.yaml", ".lock", "classes.jsonl", ".state/classes.json", ".state/run"}
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc").exists()
    with pytest.raises(ClassListError, match="control characters"):
        run_classes(tmp_path, {"names": ["ok", "bad\x07bell"]})


# --------------------------------------------------------------------------- LLM path


@pytest.mark.slow
def test_llm_answers_that_cannot_be_used_are_never_fatal(tmp_path: Path) -> None:
    from diversynth.testing.llm_servers import MisbehavingServer

    with MisbehavingServer() as server:
        # one request per class per attempt, in class order; a bad answer is asked again
        server.script.extend(
            [
                "ok:not json at all",  # crane (the machine), attempt 1
                'ok:{"names": ["crane", "construction crane", "jib crane"]}',  # apple
                "ok:",  # crane, attempt 2: empty
                'ok:{"names": ["crane"]}',  # crane, attempt 3: the ambiguous name again
            ]
        )
        records, summary = run_classes(
            tmp_path,
            {"names": [{"name": "crane", "wnid": "n03126707"}, "apple"],
             "disambiguate": {"llm": True}},
            llm={"backend": "openai", "base_url": server.base_url, "model": "m",
                 "max_in_flight": 1, "max_retries": 0},
        )  # fmt: skip
    assert summary["llm_calls"] == 4 and summary["llm_unusable"] == 1
    assert summary["llm_rejected"] == {"names another class": 2, "repeats the ambiguous name": 1}
    assert [r["name"] for r in records] == ["construction crane", "apple"]
    llm_names = [[c["text"] for c in r["candidates"] if c["source"] == "llm"] for r in records]
    assert llm_names == [[], ["jib crane"]]


@pytest.mark.slow
def test_llm_names_with_smollm2_are_cached(tmp_path: Path) -> None:
    classes = {"catalog": "imagenet1k", "subset": EXEMPLAR_WNIDS[:10],
               "disambiguate": {"mode": "text", "llm": True, "llm_names": 3}}  # fmt: skip
    llm = {"backend": "llamacpp", "model": "bundled:smollm2", "max_tokens": 80}
    records, summary = run_classes(tmp_path, classes, llm=llm)
    assert len(records) == 10 and summary["llm_calls"] >= 10 and summary["llm_cached"] == 0
    assert any(c["source"] == "llm" for r in records for c in r["candidates"])
    again, summary = run_classes(tmp_path, classes, llm=llm)
    assert summary["llm_calls"] == 0 and summary["llm_cached"] >= 10
    assert [r["name"] for r in again] == [r["name"] for r in records]
