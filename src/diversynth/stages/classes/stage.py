"""The `classes` stage: the class list -> classes.jsonl, one record per class with the name
prompts use, every candidate with its score, and the reason the winner won."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from rich.markup import escape

from diversynth.config import RunConfig
from diversynth.data.classes.catalog import load_classes
from diversynth.data.classes.entry import ClassEntry
from diversynth.data.classes.wordnet import wordnet
from diversynth.llm.client import BadAnswer, open_llm
from diversynth.run.artifacts.records import ClassRecord
from diversynth.run.progress import console, counting
from diversynth.run.rundir import RunDir, write_jsonl
from diversynth.run.seeding import derive_seed
from diversynth.stages.classes.candidates import Candidate, base_candidates, claimed_names
from diversynth.stages.classes.llm_names import name_request, name_validator
from diversynth.stages.classes.select_clip import clip_select
from diversynth.stages.classes.select_text import (
    assign_distinct,
    claim_index,
    explain_text,
    score_text,
)

ENCODE_BATCH = 256


def _display_name(entry: ClassEntry) -> str:
    """How another class is shown to the LLM: its clearest name."""
    if entry.curated:
        return entry.curated
    return f"{entry.raw_name} ({entry.hypernyms[0]})" if entry.hypernyms else entry.raw_name


def _encode_texts(scorer: Any, texts: list[str]) -> torch.Tensor:
    return torch.cat([scorer.encode_texts(texts[i : i + 512]) for i in range(0, len(texts), 512)])


def _confusable(
    entries: list[ClassEntry], claimed_by: dict[str, set[int]], scorer: Any, config: RunConfig
) -> list[list[str]]:
    """Per class, other classes it could be confused with: those sharing a name, then the
    closest names by CLIP text embedding (when a CLIP model is loaded)."""
    rule = config.classes.disambiguate
    shown = [_display_name(e) for e in entries]
    found = [
        sorted({o for name in claimed_names(e) for o in claimed_by[name]} - {pos})
        for pos, e in enumerate(entries)
    ]
    if scorer is not None and rule.confusable and len(entries) > 1:
        texts = [rule.template.format(name=e.raw_name) for e in entries]
        features = _encode_texts(scorer, texts)
        sims = features @ features.T
        sims.fill_diagonal_(-torch.inf)
        nearest = sims.topk(min(rule.confusable, len(entries) - 1), dim=1).indices.tolist()
        found = [
            same + [o for o in near if o not in same]
            for same, near in zip(found, nearest, strict=True)
        ]
    return [[shown[o] for o in others[: max(rule.confusable, 1) + 2]] for others in found]


def _llm_candidates(
    config: RunConfig,
    run: RunDir,
    entries: list[ClassEntry],
    claims: list[set[str]],
    claimed_by: dict[str, set[int]],
    scorer: Any,
) -> tuple[list[list[str]], dict[str, Any]]:
    rule, llm_config = config.classes.disambiguate, config.llm
    assert llm_config is not None  # checked by the config
    confusable = _confusable(entries, claimed_by, scorer, config)
    requests, validators, rejected = [], [], Counter[str]()
    every_claim = set(claimed_by)
    for pos, entry in enumerate(entries):
        ambiguous = len(claimed_by[entry.raw_name.casefold()]) > 1 or (
            wordnet().senses(entry.raw_name) > 1
        )
        seed = derive_seed(config.seed, "class-names", entry.index)
        requests.append(
            name_request(entry, confusable[pos], rule.llm_names, seed, llm_config.max_tokens)
        )
        validators.append(name_validator(entry, ambiguous, every_claim, claims[pos], rejected))
    with open_llm(llm_config, run.llm_cache) as llm:
        console.print(f"  classes: asking {escape(llm.name)} for names of {len(entries)} classes")
        with counting("llm names", len(requests), "requests") as progress:
            answers = llm.complete_json(requests, validators, progress=progress)
    unusable = [a for a in answers if isinstance(a, BadAnswer)]
    for answer in unusable:
        console.print(
            f"  classes: [yellow]unusable names from {escape(llm.name)}[/yellow] "
            f"{escape(str(answer))}",
            highlight=False,
        )
    names = [[] if isinstance(a, BadAnswer) else a for a in answers]
    stats = {"llm": llm.name, "llm_calls": llm.calls, "llm_cached": llm.cached,
             "llm_unusable": len(unusable), "llm_rejected": dict(rejected)}  # fmt: skip
    return names, stats


def _specificity(
    sims: torch.Tensor, labels: torch.Tensor, columns_by_class: list[list[int]], text: list[float]
) -> list[float]:
    """Tie-break of the CLIP search, per candidate: its mean similarity to its own class's
    exemplars minus its mean over all exemplars (the text score for a class without any)."""
    classes = len(columns_by_class)
    counts = torch.bincount(labels, minlength=classes).to(sims.dtype)
    class_mean = torch.zeros(classes, sims.shape[1], device=sims.device, dtype=sims.dtype)
    class_mean.index_add_(0, labels, sims)
    class_mean /= counts.clamp(min=1)[:, None]
    owner = torch.tensor(
        [cls for cls, cols in enumerate(columns_by_class) for _ in cols], device=sims.device
    )
    columns = torch.arange(sims.shape[1], device=sims.device)
    specific = class_mean[owner, columns] - sims.mean(0)
    fallback = torch.tensor(text, device=sims.device, dtype=sims.dtype)
    return torch.where(counts[owner] > 0, specific, fallback).tolist()


def _clip_choose(
    config: RunConfig,
    entries: list[ClassEntry],
    candidates: list[list[Candidate]],
    start: list[int],
    scorer: Any,
) -> tuple[list[int], dict[str, Any]]:
    from diversynth.data.subset import chosen_listing
    from diversynth.stages.classes.exemplars import exemplar_images

    rule = config.classes.disambiguate
    assert config.data is not None
    identities = [e.identity() for e in entries]
    chosen = chosen_listing(config, "train", identities, quiet=True)  # data.subset's images
    groups = exemplar_images(config.data, entries, rule.exemplars, chosen)
    flat = [image for group in groups for image in group]
    if not flat:
        console.print("  classes: [yellow]no exemplar images found: text rule only[/yellow]")
        return start, {"exemplars": 0}
    device = scorer.device  # similarities and the search stay on the GPU when there is one
    labels = torch.tensor([pos for pos, group in enumerate(groups) for _ in group], device=device)
    images = torch.cat(
        [
            scorer.encode_images(flat[i : i + ENCODE_BATCH])
            for i in range(0, len(flat), ENCODE_BATCH)
        ]
    )
    columns: list[Candidate] = []
    columns_by_class: list[list[int]] = []
    for cands in candidates:
        columns_by_class.append(list(range(len(columns), len(columns) + len(cands))))
        columns += cands
    texts = _encode_texts(scorer, [rule.template.format(name=c.text) for c in columns])
    sims = images @ texts.T
    tiebreak = _specificity(sims, labels, columns_by_class, [c.score or 0.0 for c in columns])
    starts = [cols[i] for cols, i in zip(columns_by_class, start, strict=True)]
    result = clip_select(sims, labels, columns_by_class, [c.key for c in columns], tiebreak, starts)
    n = len(flat)
    for col, cand in enumerate(columns):
        cand.score = result.correct[col] / n
        cand.detail = {"own": result.own[col], "drawn": result.drawn[col]}
    raw_texts = [rule.template.format(name=e.raw_name) for e in entries]

    def top1(features: torch.Tensor) -> float:
        return round(float(((images @ features.T).argmax(1) == labels).float().mean()), 4)

    picked = [cols.index(col) for cols, col in zip(columns_by_class, result.choice, strict=True)]
    stats = {
        "exemplars": n,
        "classes_without_exemplars": sum(1 for g in groups if not g),
        "passes": result.passes,
        "zero_shot_top1": {
            "raw": top1(_encode_texts(scorer, raw_texts)),
            "text_rule": top1(texts[starts]),
            "chosen": top1(texts[result.choice]),
        },
    }
    return picked, stats


def _reason(mode: str, cands: list[Candidate], winner: Candidate, total: int) -> str:
    if winner.source == "fallback":
        return "every candidate is also another class's name: numbered to keep names distinct"
    rivals = sorted((c for c in cands if c is not winner), key=lambda c: -(c.score or 0))
    if mode == "clip":
        why = (f"CLIP: zero-shot top-1 {winner.score:.3f} over all {total} exemplars with this "
               f"name ({winner.detail['own']} own exemplars right, {winner.detail['drawn']} of "
               f"other classes drawn in)")  # fmt: skip
        return why + (f"; next {rivals[0].text!r}: {rivals[0].score:.3f}" if rivals else "")
    if mode == "off":
        return "names used as given"
    why = f"text rule: {explain_text(winner)}"
    if rivals:
        why += f"; next {rivals[0].text!r}: {explain_text(rivals[0])}"
    return why if rivals else why + "; the only candidate"


def run_classes(config: RunConfig, run: RunDir) -> dict[str, Any]:
    rule = config.classes.disambiguate
    mode = config.disambiguation_mode
    entries = load_classes(config.classes)
    claims = [claimed_names(e) for e in entries]
    claimed_by = claim_index(claims)
    if mode == "off":
        candidates = [[Candidate(e.raw_name, "raw")] for e in entries]
    else:
        candidates = [base_candidates(e, rule.curated) for e in entries]
    needs_clip = mode == "clip" or (rule.llm and rule.confusable and config.clip is not None)
    scorer = None
    if needs_clip and config.clip is not None:
        from diversynth.models.clip import ClipScorer

        scorer = ClipScorer.load(config.clip)
    summary: dict[str, Any] = {"classes": len(entries), "mode": mode}
    if rule.llm and mode != "off":
        proposals, llm_stats = _llm_candidates(config, run, entries, claims, claimed_by, scorer)
        summary.update(llm_stats)
        for cands, names in zip(candidates, proposals, strict=True):
            keys = {c.key for c in cands}
            cands += [Candidate(n, "llm") for n in names if n.casefold() not in keys]
    for pos, (entry, cands) in enumerate(zip(entries, candidates, strict=True)):
        for cand in cands:
            score_text(pos, entry, cand, claimed_by)
    choice = assign_distinct(candidates)
    if mode == "clip":
        choice, clip_stats = _clip_choose(config, entries, candidates, choice, scorer)
        summary.update(clip_stats)
        if clip_stats["exemplars"] == 0:
            mode = summary["mode"] = "text"
    records = []
    for entry, cands, i in zip(entries, candidates, choice, strict=True):
        winner = cands[i]
        records.append(ClassRecord(
            index=entry.index, wnid=entry.wnid, raw_name=entry.raw_name,
            name=winner.text, description=entry.description,
            lemmas=list(entry.lemmas), hypernyms=list(entry.hypernyms[:4]),
            candidates=[c.as_record() for c in cands],
            reason=_reason(mode, cands, winner, summary.get("exemplars", 0)),
        ))  # fmt: skip
    write_jsonl(run.classes, records)
    summary["renamed"] = sum(1 for r in records if r["name"] != r["raw_name"])
    summary["fallback"] = sum(
        1 for c, i in zip(candidates, choice, strict=True) if c[i].source == "fallback"
    )
    summary["candidates"] = sum(len(c) for c in candidates)
    _print_summary(summary)
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    line = (f"  classes: {summary['classes']} classes, mode {summary['mode']}, "
            f"{summary['renamed']} renamed")  # fmt: skip
    if "zero_shot_top1" in summary:
        acc = summary["zero_shot_top1"]
        line += (f"; CLIP zero-shot top-1 on {summary['exemplars']} exemplars: first lemmas "
                 f"{acc['raw']:.3f} -> chosen names {acc['chosen']:.3f}")  # fmt: skip
    console.print(line, highlight=False, soft_wrap=True)
