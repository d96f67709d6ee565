"""`diversynth plan SWEEP.yaml`: the pools' cost (as `plan CONFIG` prices a run) and every
training's, in total and by axis value."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from diversynth.commands.plan import Plan, hours_span, make_plan
from diversynth.commands.sweep.spec import Sweep, trains_on_synthetic
from diversynth.models.cost import CARDS, TrainingCost, training_cost


def plan_sweep(sweep: Sweep) -> tuple[dict[str, Plan], dict[str, TrainingCost]]:
    """Each pool's plan (generation) and each distinct training's cost."""
    from diversynth.data.classes.catalog import load_classes

    pools = {pool_id: make_plan(config) for pool_id, config in sweep.pools.items()}
    trainings = {}
    for trial in sweep.trainings().values():
        classes = len(load_classes(trial.config.classes))
        trainings[trial.id] = training_cost(trial.config, classes, CARDS,
                                            trains_on_synthetic(trial.config))  # fmt: skip
    return pools, trainings


def _hours(costs: list[TrainingCost], card: str) -> tuple[float, float]:
    spans = [c.gpu_hours[card] for c in costs if card in c.gpu_hours]
    return sum(s[0] for s in spans), sum(s[1] for s in spans)


def render_sweep(sweep: Sweep, pools: dict[str, Plan], trainings: dict[str, TrainingCost]) -> Any:
    from rich.console import Group
    from rich.table import Table

    from diversynth.commands.plan import render

    shown: list[Any] = [render(plan, f"pool {pool_id}") for pool_id, plan in pools.items()]
    cards = [card for card in CARDS if any(card in c.gpu_hours for c in trainings.values())]
    table = Table(title=f"sweep: {len(sweep.trials)} combinations, {len(trainings)} trainings: "
                  "GPU-hours")  # fmt: skip
    table.add_column("", no_wrap=True)
    for card in cards:
        table.add_column(card, justify="right", no_wrap=True)
    generation = {card: sum(p.gpu_hours.get(card, 0.0) for p in pools.values()) for card in cards}
    table.add_row("pool(s): generation", *[f"{generation[c]:,.1f}" for c in cards])
    every = list(trainings.values())
    table.add_row("trainings", *[hours_span(*_hours(every, c)) for c in cards])
    totals = [_hours(every, c) for c in cards]
    table.add_row("total", *[hours_span(generation[c] + t[0], generation[c] + t[1])
                             for c, t in zip(cards, totals, strict=True)])  # fmt: skip
    by_value: dict[str, dict[str, TrainingCost]] = defaultdict(dict)
    for key, values in sweep.spec.vary.items():  # in the file's order
        for value in values:
            text = json.dumps(value, separators=(",", ":"))
            label = f"{key.removeprefix('train.')}={text}"
            for trial in sweep.trials:
                if json.dumps(trial.values[key], separators=(",", ":")) == text:
                    by_value[label][trial.id] = trainings[trial.id]
    for label, costs in by_value.items():
        table.add_row(f"  with {label}",
                      *[hours_span(*_hours(list(costs.values()), c)) for c in cards])  # fmt: skip
    shown.append(table)
    notes = {note for cost in every for note in cost.notes}
    from diversynth.commands.sweep.command import pool_size_problem

    if problem := pool_size_problem(sweep):
        notes.add(f"the pool is too small: {problem}")
    shown += [f"note: {note}" for note in sorted(notes)]
    return Group(*shown)
