"""What the review notebook (``03_review_phi``) calls: one method per code cell.

The notebook is narrative plus one call per cell; the branching between the
unattended review (a decisions file, ``sendit review`` and ``sendit run``) and the
interactive one (the :class:`~sendit_helpers.stages.reviewer.Reviewer` widgets)
lives here, not in its cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sendit_helpers.core.layout import BatchLayout
from sendit_helpers.core.settings import Settings
from sendit_helpers.stages import review, review_decisions, review_items


@dataclass
class ReviewSession:
    """One batch's review, as the notebook runs it.

    Attributes
    ----------
    layout : BatchLayout
    settings : Settings
        Resolved settings (``REVIEWER``, ``REVIEW_DECISIONS``, ``AUTO_SCRUB_OCR`` ...).
    interactive : bool
        Show the reviewer widgets; False applies the decisions file only.
    decisions_file : str
        The decisions CSV; empty means ``REVIEW_DECISIONS``.
    items : pandas.DataFrame
        The quarantined images (:func:`~sendit_helpers.stages.review_items.load_items`).
    """

    layout: BatchLayout
    settings: Settings
    interactive: bool = True
    decisions_file: str = ""
    items: pd.DataFrame = field(default_factory=pd.DataFrame)
    reviewer: Any = None
    """The :class:`~sendit_helpers.stages.reviewer.Reviewer` once shown (interactive only)."""

    @classmethod
    def open(
        cls,
        layout: BatchLayout,
        settings: Settings,
        *,
        interactive: bool = True,
        decisions_file: str = "",
    ) -> ReviewSession:
        """Load the batch's quarantined images and print where the review stands."""
        session = cls(
            layout, settings, interactive, decisions_file, review_items.load_items(layout)
        )
        name = review_decisions.reviewer_name(settings)
        print(
            f"{review.waiting_message(layout)} in batch {layout.name} "
            f"({len(session.items)} quarantined); reviewer: {name}"
        )
        return session

    def flagged(self) -> pd.DataFrame:
        """One row per rule and series: group, label, images held back, the condition."""
        # What ``groupby(keys, sort=False).agg(images=size, condition=first)`` gives, without
        # pandas' group-by machinery for a dozen rows (the items' columns are never missing).
        keys = ["series", "modality", "group", "label"]
        if self.items.empty:
            return (
                self.items.groupby(keys, sort=False)
                .agg(images=("item", "size"), condition=("reason", "first"))
                .reset_index()
            )
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for *key, reason in zip(*(self.items[k] for k in [*keys, "reason"]), strict=True):
            found = groups.get(tuple(key))
            if found is None:
                groups[tuple(key)] = [1, reason]
            else:
                found[0] += 1
        columns: dict[str, Any] = {k: [key[i] for key in groups] for i, k in enumerate(keys)}
        columns["images"] = pd.Series([n for n, _ in groups.values()], dtype="int64")
        columns["condition"] = [reason for _, reason in groups.values()]
        return pd.DataFrame(columns)

    def apply_file(self) -> None:
        """Add the decisions file's decisions to the log (when there is one) and apply
        the log (then, or whenever nobody is at the screen); print what happened."""
        source = self.decisions_file or self.settings.review.decisions
        if self.reviewer is not None:  # its "Apply decisions" may have changed the items
            self.items = review_items.load_items(self.layout)
        if source:
            name = review_decisions.reviewer_name(self.settings)
            added = review_decisions.replay_decisions(self.layout, source, name, self.items)
            print(f"{added} new decision(s) from {source}")
        if source or not self.interactive:
            applied = review.apply_decisions(self.layout, self.settings, items=self.items)
            print("applied:", applied.summary())
            if applied.released or applied.scrubbed or applied.held:
                # Items released, passed or held again by the gate: their rows changed.
                self.items = review_items.load_items(self.layout)

    def show_reviewer(self) -> None:
        """Show the reviewer widgets (interactive only)."""
        if not self.interactive:
            return
        from sendit_helpers.stages.reviewer import Reviewer

        self.reviewer = Reviewer(self.layout, self.settings)
        self.reviewer.show()

    def status(self) -> Any:
        """Decision counts: a line that follows the reviewer, or the table when unattended."""
        if self.reviewer is not None:
            return self.reviewer.status_widget()
        return review.status(self.layout)
