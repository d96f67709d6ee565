"""The prompts stage: exact counts per strategy, quality controls, diversity, cache, reruns."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import OFFLINE_CONFIG, cli, set_args

from diversynth.models import diversity
from diversynth.models.clip_tokens import clip_tokens
from diversynth.models.diversity import mean_cosine_distance, vendi_score
from diversynth.stages.prompts.budget import strategy_counts
from diversynth.stages.prompts.quality import blocked, near_duplicate_mask


def _prompts(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]


def _state(run: Path, stage: str) -> dict:
    return json.loads((run / ".state" / f"{stage}.json").read_text())


def test_strategy_counts_are_exact() -> None:
    assert strategy_counts(10, {"naive": 0.2, "cd": 0.5, "sd": 0.3}) == {
        "naive": 2,
        "cd": 5,
        "sd": 3,
    }
    assert strategy_counts(7, {"naive": 1, "cd": 1, "sd": 1}) == {"naive": 3, "cd": 2, "sd": 2}
    assert strategy_counts(5, {"cd": 1.0}) == {"naive": 0, "cd": 5, "sd": 0}
    for n in range(1, 40):
        assert sum(strategy_counts(n, {"naive": 0.1, "cd": 0.6, "sd": 0.3}).values()) == n


def test_diversity_metrics() -> None:
    same = np.tile(np.array([[1.0, 0.0, 0.0]]), (4, 1))
    orthogonal = np.eye(4)
    assert vendi_score(same) == pytest.approx(1.0)
    assert vendi_score(orthogonal) == pytest.approx(4.0)
    assert mean_cosine_distance(same) == pytest.approx(0.0)
    assert mean_cosine_distance(orthogonal) == pytest.approx(1.0)
    # more prompts than dimensions: the small-matrix path gives the same score
    x = np.random.default_rng(0).normal(size=(50, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(x @ x.T / 50)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    assert vendi_score(x) == pytest.approx(
        float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))
    )
    # the mean distance from the sum vector equals the one from the n x n similarities
    y = np.random.default_rng(1).normal(size=(2000, 384)).astype(np.float32)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    sims = (y @ y.T).astype(np.float64)
    pairwise = 1 - (sims.sum() - np.trace(sims)) / (2000 * 1999)
    assert mean_cosine_distance(y) == pytest.approx(pairwise, abs=1e-6)
    # and the Vendi score of clustered vectors (as sentence embeddings are) from the d x d
    # matrix, summed in chunks, equals the one from the n x n kernel's eigenvalues
    rng = np.random.default_rng(2)
    z = rng.normal(size=(20, 384))[rng.integers(0, 20, 2000)] + 0.3 * rng.normal(size=(2000, 384))
    z = (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)
    eigenvalues = np.linalg.eigvalsh(z.astype(np.float64) @ z.T.astype(np.float64) / 2000)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    kernel_vendi = float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))
    assert 10 < kernel_vendi < 1000
    assert np.allclose(diversity._gram(z, chunk=300), diversity._gram(z), rtol=0, atol=1e-9)
    assert vendi_score(z) == pytest.approx(kernel_vendi, abs=1e-6)


def _search_per_phrase(text: str, phrases: list[str]) -> str | None:
    """The first phrase found as whole words, one regex search per phrase."""
    for phrase in phrases:
        if re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.I):
            return phrase
    return None


def test_phrase_matcher_finds_what_a_search_per_phrase_finds() -> None:
    """Over ImageNet's 1000 names: the same first mention as one search per name, for
    texts naming classes in every way (inside other names, other case, punctuation), and
    in time that does not grow with the number of names."""
    import time

    from diversynth.config import ClassesConfig
    from diversynth.data.classes.catalog import load_classes
    from diversynth.stages.prompts.quality import PhraseMatcher

    names = [entry.raw_name for entry in load_classes(ClassesConfig(catalog="imagenet1k"))]
    names += ["T-shirt/top", "(odd) name", "sea", "sea lion"]
    rng = random.Random(0)
    words = ["a", "photo", "of", "the", "on", "rocky", "beach", "at", "dusk", ",", "-", "."]
    texts = []
    for _ in range(3000):  # the search per phrase checks 250 of them (it is the slow part)
        parts = [rng.choice(words) for _ in range(rng.randint(2, 8))]
        for _ in range(rng.randint(0, 3)):
            name = rng.choice(names)
            name = name.upper() if rng.random() < 0.2 else name
            parts.insert(rng.randint(0, len(parts)), name + rng.choice(["", "s", "-like"]))
        texts.append(" ".join(parts))
    texts += ["a sea lion on a rock", "a T-shirt/top, folded", "an (odd) name here"]
    matcher = PhraseMatcher(names)
    for text in texts[-250:]:
        assert matcher.first(text) == _search_per_phrase(text, names), text
    # with a class's own name left out, as the prompts stage asks "another class named?"
    own = "sea lion"
    others = [n for n in names if n.casefold() != own]
    for text in ["a sea lion on a rock", "a SEA LION", "sea lions at dusk"]:
        assert matcher.first(text, frozenset({own})) == _search_per_phrase(text, others)
    assert matcher.first("a sea lion", frozenset({own})) is not None  # "sea", "lion"
    start = time.perf_counter()
    for text in texts * 3:
        matcher.first(text)
    assert time.perf_counter() - start < 5.0  # 9,000 texts x 1,004 names


def test_quality_checks() -> None:
    assert clip_tokens("a photo of a coat") == 7
    assert clip_tokens("word " * 80) > 77
    assert blocked("a photo of a Coat, gore everywhere", ["gore"]) == "gore"
    assert blocked("a photo of a Coat in Singapore", ["gore"]) is None  # whole words only
    vectors = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert near_duplicate_mask(vectors, threshold=0.95).tolist() == [True, False, True]


def test_a_huge_answer_is_cleaned_in_bounded_time() -> None:
    """An answer of 250k phrases (a 10 MB answer hung the prompts stage): only the first
    MAX_LIST_ITEMS are looked at, at once; duplicates in another case are still dropped."""
    import time

    from diversynth.llm.json_requests import MAX_LIST_ITEMS
    from diversynth.stages.prompts.llm_requests import clean_phrases
    from diversynth.stages.prompts.quality import PhraseMatcher

    head = ["Sunny beach", "SUNNY  BEACH.", "sunny beach", "coat", "a red bag on a chair"]
    items = head + [f"city street number {i}" for i in range(250_000)]
    start = time.perf_counter()
    phrases = clean_phrases(items, "Coat", PhraseMatcher(["Coat", "Bag"]))
    assert time.perf_counter() - start < 1.0  # 2.7 s for 8k phrases when it was quadratic
    streets = MAX_LIST_ITEMS - len(head)  # the other four are copies or name a class
    assert phrases == ["Sunny beach", *(f"city street number {i}" for i in range(streets))]


@pytest.fixture(scope="module")
def prompts_run(finished_run: Path) -> Path:
    return finished_run


def test_offline_prompts_follow_the_shares(prompts_run: Path) -> None:
    from diversynth.stages.prompts.examples import EXAMPLES, fold

    prompts = _prompts(prompts_run)
    classes = [
        json.loads(line) for line in (prompts_run / "classes.jsonl").read_text().splitlines()
    ]
    summary = _state(prompts_run, "prompts")["summary"]
    assert summary["images"] == 100 == sum(len(p["image_seeds"]) for p in prompts)
    examples = {e.object: e for e in EXAMPLES}
    for cls in classes:
        mine = [p for p in prompts if p["class_index"] == cls["index"]]
        assert sum(len(p["image_seeds"]) for p in mine) == 10  # per_class x images_per_prompt
        assert len({p["text"] for p in mine}) == len(mine)  # no text twice in a class
        assert all(cls["name"].casefold() in p["text"].casefold() for p in mine)
        assert all(clip_tokens(p["text"]) <= 77 for p in mine)
        images = {s: sum(len(p["image_seeds"]) for p in mine if p["strategy"] == s)
                  for s in ("naive", "cd", "sd")}  # fmt: skip
        missing = sum(summary["shortfall"].get(str(cls["index"]), {}).values())
        # 2 naive (one template: one prompt with both images), 5 CD, 3 SD, unless the LLM
        # fell short and the template filled in
        assert sum(1 for p in mine if p["strategy"] == "naive") == 1
        assert images == {"naive": 2 + missing, "cd": images["cd"], "sd": images["sd"]}
        assert images["cd"] + images["sd"] + missing == 8
        for p in mine:
            if p["strategy"] == "cd":
                assert p["contexts"] and all(c in p["text"] for c in p["contexts"])
            if p["strategy"] == "sd":
                assert p["style"] in p["text"]
            if p.get("example"):  # the example shown: none of its phrases kept
                shown = {fold(x) for x in examples[p["example"]].phrases(p["strategy"])}
                assert not {fold(x) for x in p.get("contexts", [p.get("style")])} & shown
    assert summary["llm"].startswith("llamacpp:SmolLM2")
    assert summary["per_strategy"]["cd"] >= 40 and summary["per_strategy"]["sd"] >= 25
    # SmolLM2 copies its examples: counted, and the summary says where images were merged
    assert summary["copies_rejected"]["cd"] > 0 and summary["repeated_texts"]["naive"] >= 10
    assert set(summary["shared_phrases"]) == {"cd", "sd"}
    llm_made = [p["text"] for p in prompts if p["strategy"] in ("cd", "sd")]
    assert len(set(llm_made)) == len(llm_made)  # no duplicates among LLM-made prompts


def test_cd_and_sd_are_more_diverse_than_naive(prompts_run: Path) -> None:
    diversity = _state(prompts_run, "prompts")["summary"]["diversity"]
    assert set(diversity) == {"naive", "cd", "sd"}
    for strategy in ("cd", "sd"):
        assert diversity[strategy]["vendi"] > diversity["naive"]["vendi"]
        assert (
            diversity[strategy]["mean_cosine_distance"] > diversity["naive"]["mean_cosine_distance"]
        )


def test_rerun_makes_no_llm_calls_and_share_change_keeps_classes(
    run_copy: Path, kit_overrides: list[str]
) -> None:
    # in this process: the command line is tested elsewhere, and imports cost seconds
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir

    run, stages = RunDir(run_copy), ["classes", "prompts"]
    run_stages(load_config(OFFLINE_CONFIG, kit_overrides), run, stages, force=["prompts"])
    summary = _state(run_copy, "prompts")["summary"]
    assert summary["llm_calls"] == 0 and summary["llm_cached"] >= 20

    before = (run_copy / "classes.jsonl").stat().st_mtime_ns
    changed = load_config(OFFLINE_CONFIG, [*kit_overrides, "prompts.shares={naive: 0.5, cd: 0.5}"])
    assert run_stages(changed, run, stages) == {"classes": "skipped", "prompts": "ran"}
    assert (run_copy / "classes.jsonl").stat().st_mtime_ns == before
    summary = _state(run_copy, "prompts")["summary"]
    assert summary["per_class"] == {"naive": 5, "cd": 5, "sd": 0}
    assert summary["llm_calls"] == 0  # the contexts were cached


@pytest.mark.slow
def test_cd_without_llm_is_a_config_error(tmp_path: Path, kit_overrides: list[str]) -> None:
    config = yaml.safe_load(OFFLINE_CONFIG.read_text())
    del config["llm"]
    path = tmp_path / "nollm.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("run", str(path), "--out", str(tmp_path / "r"), *set_args(kit_overrides))
    assert result.returncode == 2
    assert "prompts.shares.cd is above 0 but no llm is configured" in result.stderr


@pytest.mark.slow
def test_llm_shortfall_is_filled_with_templates(tmp_path: Path, kit_overrides: list[str]) -> None:
    """An LLM that only refuses: the stage still writes N prompts per class, and says why."""
    from diversynth.testing.llm_servers import MisbehavingServer

    with MisbehavingServer(default="ok:I'm sorry, I can't do that.") as server:
        out = tmp_path / "run"
        overrides = [*kit_overrides, "llm.backend=openai", "llm.model=any",
                     f"llm.base_url={server.base_url}", "classes.names=[Coat, Bag]"]  # fmt: skip
        result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts",
                     *set_args(overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "unusable contexts" in result.stderr and "Coat" in result.stderr
    prompts = _prompts(out)
    assert sum(len(p["image_seeds"]) for p in prompts) == 20
    summary = _state(out, "prompts")["summary"]
    # no CD at all; SD still comes from the built-in styles
    assert summary["per_strategy"]["cd"] == 0 and summary["per_strategy"]["sd"] == 6
    assert summary["shortfall"] == {"0": {"cd": 5}, "1": {"cd": 5}}  # by class index
    # the template fills in: its one prompt per class carries 2 naive + 5 missing images
    naive = [p for p in prompts if p["strategy"] == "naive"]
    assert [len(p["image_seeds"]) for p in naive] == [7, 7]
    assert summary["repeated_texts"] == {"naive": 2 * 6}
    shutil.rmtree(out)


@pytest.mark.slow
def test_llm_server_failure_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, kit_overrides: list[str]
) -> None:
    from diversynth.testing.llm_servers import MisbehavingServer

    with MisbehavingServer(default="500") as server:
        out = tmp_path / "run"
        overrides = [*kit_overrides, "llm.backend=openai", "llm.model=any", "llm.max_retries=1",
                     f"llm.base_url={server.base_url}", "classes.names=[Coat, Bag]"]  # fmt: skip
        result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts",
                     *set_args(overrides))  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "llm (openai) at http://127.0.0.1" in errors[0]
    assert "'Coat'" in errors[0] or "'Bag'" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (out / "prompts.jsonl").exists()
    assert (out / "classes.jsonl").exists()  # the finished stage is kept


def test_copies_of_the_worked_example_are_caught() -> None:
    from diversynth.config import PromptsConfig
    from diversynth.models.diversity import Embedder
    from diversynth.stages.prompts.examples import EXAMPLES, CopyCheck, fold

    bicycle = next(e for e in EXAMPLES if e.object == "bicycle")
    check = CopyCheck(Embedder(PromptsConfig().embedder), threshold=0.85)
    answer = [
        "Leaning against the wall.",  # the example's, with another article and a full stop
        "leaning against a brick wall",  # a near copy (MiniLM similarity 0.86)
        "on a crowded city street",  # a near copy (0.87)
        "hanging in a closet",  # the class's own idea
        "folded on a shelf",
    ]
    assert check.keep(answer, bicycle, "cd") == ["hanging in a closet", "folded on a shelf"]
    assert check.keep(["Neon Sign", "crayon drawing"], bicycle, "sd") == ["crayon drawing"]
    assert check.keep(answer, None, "cd") == answer  # asked without an example
    assert check.rejected == {"cd": 3, "sd": 1}
    assert fold("  The Soft, Morning-Light!") == "soft morning light"
    # the pool's styles are not the built-in ones (a built-in style is no copy)
    from diversynth.stages.prompts.styles import BUILTIN_STYLES

    assert not {fold(s) for e in EXAMPLES for s in e.styles} & {fold(s) for s in BUILTIN_STYLES}


def test_each_class_is_shown_an_example_unlike_itself() -> None:
    from diversynth.config import PromptsConfig
    from diversynth.models.diversity import Embedder
    from diversynth.stages.prompts.examples import EXAMPLES, choose_examples
    from diversynth.stages.prompts.llm_requests import context_request, style_request

    embedder = Embedder(PromptsConfig().embedder)
    names = ["bicycle", "mountain bike", "fox", "baguette", "overcoat", "oak tree", "violin"]
    shown = choose_examples(names, embedder(names), embedder([e.object for e in EXAMPLES]),
                            list(range(len(names))))  # fmt: skip
    kinds = {"mountain bike": "vehicle", "fox": "animal", "baguette": "food",
             "overcoat": "garment", "oak tree": "plant",
             "violin": "musical instrument"}  # fmt: skip
    assert shown[0].object != "bicycle"  # an example naming the class is never shown to it
    for name, example in zip(names[1:], shown[1:], strict=True):
        assert example.kind != kinds[name], (name, example.object)
    # the request shows it, and asks without one when there is none
    with_one = context_request("fox", None, ["lighting"], 2, 0, 100, shown[2])
    assert f"Example for an {shown[2].object}" in with_one.messages[-1][1] or (
        f"Example for a {shown[2].object}" in with_one.messages[-1][1]
    )
    assert (
        "Example" not in context_request("fox", None, ["lighting"], 2, 0, 100, None).messages[-1][1]
    )
    assert "Example" not in style_request("fox", 4, 0, 100, None).messages[-1][1]


def test_a_repeated_text_gives_its_images_to_the_first_prompt() -> None:
    from diversynth.stages.prompts.examples import shared_phrase_share
    from diversynth.stages.prompts.stage import merge_repeats

    chosen = {
        "naive": [("a photo of a Bag.", {"template": True})] * 2
        + [("a photo of a Bag.", {"template": True, "filled_for": "cd"})],
        "sd": [("a sketch of a Bag", {"style": "sketch"})],
    }
    merged, repeated = merge_repeats(chosen)
    assert merged == {"naive": [("a photo of a Bag.", {"template": True}, 3)],
                      "sd": [("a sketch of a Bag", {"style": "sketch"}, 1)]}  # fmt: skip
    assert repeated == {"naive": 2}
    # "at sunset" for 3 of 8 classes is shared (more than a quarter); the rest are not
    phrases = {i: {f"phrase {i}", "At sunset"} if i < 3 else {f"phrase {i}"} for i in range(8)}
    assert shared_phrase_share(phrases, 8) == pytest.approx(3 / 11, abs=1e-4)


@pytest.mark.slow
def test_an_llm_that_echoes_the_example_is_caught(tmp_path: Path,
                                                   kit_overrides: list[str]) -> None:  # fmt: skip
    """Every answer the example verbatim: each phrase rejected and counted, the class asked
    again without an example, templates and built-in styles fill, nothing echoed kept."""
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir
    from diversynth.stages.prompts.examples import EXAMPLES, fold
    from diversynth.testing.llm_servers import MisbehavingServer

    with MisbehavingServer(default="echo") as server:
        overrides = [*kit_overrides, "llm.backend=openai", "llm.model=any",
                     f"llm.base_url={server.base_url}", "classes.names=[Dress, Bag]"]  # fmt: skip
        run_stages(load_config(OFFLINE_CONFIG, overrides), RunDir(tmp_path), ["classes", "prompts"])
        requests = [r["messages"][-1]["content"] for r in server.requests]
    summary = _state(tmp_path, "prompts")["summary"]
    # per class and strategy: one request with the example (6 axes x 2 phrases; 5 styles:
    # all copies, an empty answer, not retried), then three without (refused)
    assert summary["copies_rejected"] == {"cd": 2 * 12, "sd": 2 * 5}
    assert sum("Example for" in r for r in requests) == 2 * 2
    assert summary["llm_calls"] == len(requests) == 2 * 2 * 4
    assert summary["shortfall"] == {"0": {"cd": 5}, "1": {"cd": 5}}
    echoed = {fold(p) for e in EXAMPLES for s in ("cd", "sd") for p in e.phrases(s)}
    prompts = _prompts(tmp_path)
    for p in prompts:
        assert not {fold(c) for c in p.get("contexts", [])} & echoed
        assert fold(p.get("style", "")) not in echoed
        assert "example" not in p
    for index in (0, 1):
        texts = [p["text"] for p in prompts if p["class_index"] == index]
        assert len(texts) == len(set(texts))
        assert sum(len(p["image_seeds"]) for p in prompts if p["class_index"] == index) == 10


def test_requests_of_every_class_are_in_flight_at_once(tmp_path: Path) -> None:
    """The stage's contexts and styles of every class go out together, as soon as each is
    made: the server has more requests open at once than there are classes, and they take
    about one answer's time (6 requests, 16 slots), not one per round (contexts, then
    styles: two)."""
    from diversynth.config import load_config
    from diversynth.run.rundir import RunDir
    from diversynth.stages.prompts.stage import _llm_answers
    from diversynth.testing.llm_servers import MisbehavingServer

    def no_embedder(texts: list[str]) -> np.ndarray:
        raise AssertionError("without worked examples nothing is embedded")

    latency, names = 1.0, ["Coat", "Bag", "Sandal"]
    classes = [{"index": i, "name": name} for i, name in enumerate(names)]
    with MisbehavingServer(default="schema", latency=latency) as server:
        config = {"name": "in-flight", "classes": {"names": names},
                  "prompts": {"per_class": 10, "few_shot": False},
                  "llm": {"backend": "openai", "model": "any", "base_url": server.base_url,
                          "max_in_flight": 16}}  # fmt: skip
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        answers = _llm_answers(load_config(path, []), RunDir(tmp_path / "run"), classes,
                               {"naive": 2, "cd": 5, "sd": 3}, no_embedder)  # fmt: skip
    assert answers.stats["llm_calls"] == len(server.requests) == 2 * len(names)
    assert all(isinstance(a, dict) for a in answers.contexts)  # all usable
    assert all(isinstance(a, list) and a for a in answers.styles)
    assert server.peak_in_flight == 2 * len(names) > len(names)
    seconds = max(end for _, end in server.spans) - min(start for start, _ in server.spans)
    assert latency <= seconds < 1.5 * latency  # in rounds: 2 x latency
