"""What the adapter and the trigger both know of a Whippy step: which step contacts are in it,
and when Whippy's background work on it is settled."""

from __future__ import annotations

#: Step contacts in these statuses are in their step; the others left it (or never started it
#: again: a contact that finished the sequence keeps its old, finished step contact).
CURRENT_STATUSES = frozenset({"pending", "active"})


class StepWatch:
    """A step's count, poll after poll: Whippy's background work is *settled* once the count
    stood still for ``stable_polls`` polls in a row. Contacts Whippy ignored never arrive, so a
    count that stopped short of what was sent is over too.

    :param stable_polls: unchanged polls in a row that mean the work is over.
    :param initial: the count before the contacts were sent, when known: a count that stays
        there never moved, which means Whippy has not started, not that it is done.
    """

    def __init__(self, stable_polls: int, *, initial: int | None = None) -> None:
        self.stable_polls = stable_polls
        self.initial = initial
        self.last: int | None = None
        #: Polls in a row the count stood still, and when it last moved.
        self.unchanged = 0
        self.moved_at = 0.0

    def observe(self, total: int, at: float) -> None:
        """The count read at ``at`` (``time.monotonic()``)."""
        if total == self.last and total != self.initial:
            self.unchanged += 1
        else:
            self.unchanged, self.moved_at = 0, at
        self.last = total

    @property
    def settled(self) -> bool:
        return self.unchanged >= self.stable_polls
