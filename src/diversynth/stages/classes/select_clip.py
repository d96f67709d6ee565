"""Choosing names by CLIP zero-shot accuracy on real exemplar images.

The objective is the whole class set's zero-shot top-1 on the exemplars: a name that
matches its own images well but also draws in other classes' images loses. It is
maximised by coordinate ascent: starting from the text rule's names, each class in turn
takes the candidate that most raises the number of exemplars labelled right (ties: the
candidate's specificity, then staying put), until a pass changes nothing.

Images and texts are encoded once; one class's move is scored for all its candidates at
once against the best *other* column of each image, which is kept as a running top-2, so
a pass costs O(images x candidates) and no full re-scoring.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClipChoice:
    choice: list[int]  # per class: index into the candidate columns
    correct: list[int]  # per candidate column: exemplars right if it were its class's name
    own: list[int]  # per candidate column: own exemplars right
    drawn: list[int]  # per candidate column: other classes' exemplars it would take
    passes: int


class _Top2:
    """Best and second-best column of each row of L, kept current as columns change."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.refresh(torch.ones(len(logits), dtype=torch.bool, device=logits.device))

    def refresh(self, rows: torch.Tensor) -> None:
        k = min(2, self.logits.shape[1])
        values, indices = self.logits[rows].topk(k, dim=1)
        if k == 1:  # one class: nothing competes
            values = torch.cat([values, torch.full_like(values, -torch.inf)], dim=1)
            indices = torch.cat([indices, torch.full_like(indices, -1)], dim=1)
        if rows.all():
            self.values, self.indices = values, indices
        else:
            self.values[rows], self.indices[rows] = values, indices

    def others(self, column: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: the best value and column among all columns but `column`."""
        first = self.indices[:, 0] == column
        value = torch.where(first, self.values[:, 1], self.values[:, 0])
        index = torch.where(first, self.indices[:, 1], self.indices[:, 0])
        return value, index

    def replace(self, column: int, new: torch.Tensor) -> None:
        self.logits[:, column] = new
        held = (self.indices == column).any(dim=1)
        self.refresh(held)  # rows where the old column was in the top 2: recompute
        rest = ~held
        above_first = rest & (new > self.values[:, 0])
        above_second = rest & ~above_first & (new > self.values[:, 1])
        self.values[above_first, 1] = self.values[above_first, 0]
        self.indices[above_first, 1] = self.indices[above_first, 0]
        self.values[above_first, 0] = new[above_first]
        self.indices[above_first, 0] = column
        self.values[above_second, 1] = new[above_second]
        self.indices[above_second, 1] = column


def _outcomes(
    sims: torch.Tensor, labels: torch.Tensor, top: _Top2, cls: int, columns: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each candidate column of class `cls`: exemplars right overall, own right, drawn."""
    other_value, other_index = top.others(cls)
    mine = labels == cls
    others_right = ~mine & (other_index == labels)
    wins = sims[:, columns] > other_value[:, None]
    own = (wins & mine[:, None]).sum(0)
    drawn = (wins & ~mine[:, None]).sum(0)
    kept = (~wins & others_right[:, None]).sum(0)
    return own + kept, own, drawn


def clip_select(
    sims: torch.Tensor,
    labels: torch.Tensor,
    columns_by_class: list[list[int]],
    keys: list[str],
    tiebreak: list[float],
    start: list[int],
    max_passes: int = 10,
) -> ClipChoice:
    """sims: (images, candidate columns) similarities; labels: each image's class;
    columns_by_class: each class's candidate columns; keys: each column's casefolded text
    (no two classes may end on the same); start: a distinct starting column per class."""
    choice = list(start)
    top = _Top2(sims[:, choice].clone())
    holder = {keys[col]: cls for cls, col in enumerate(choice)}
    passes = 0
    while passes < max_passes:
        passes += 1
        changed = False
        for cls, cols in enumerate(columns_by_class):
            if len(cols) < 2:
                continue
            correct, _, _ = _outcomes(
                sims, labels, top, cls, torch.tensor(cols, device=sims.device)
            )
            best = choice[cls]
            best_key = (int(correct[cols.index(best)]), tiebreak[best], 1)
            for col, right in zip(cols, correct.tolist(), strict=True):
                if holder.get(keys[col], cls) != cls:
                    continue  # another class holds this name
                if (right, tiebreak[col], 0) > best_key:
                    best, best_key = col, (right, tiebreak[col], 0)
            if best != choice[cls]:
                del holder[keys[choice[cls]]]
                holder[keys[best]] = cls
                choice[cls] = best
                top.replace(cls, sims[:, best])
                changed = True
        if not changed:
            break
    n_columns = sims.shape[1]
    correct_all, own_all, drawn_all = [0] * n_columns, [0] * n_columns, [0] * n_columns
    for cls, cols in enumerate(columns_by_class):
        correct, own, drawn = _outcomes(
            sims, labels, top, cls, torch.tensor(cols, device=sims.device)
        )
        for j, col in enumerate(cols):
            correct_all[col], own_all[col], drawn_all[col] = (
                int(correct[j]),
                int(own[j]),
                int(drawn[j]),
            )
    return ClipChoice(choice, correct_all, own_all, drawn_all, passes)
