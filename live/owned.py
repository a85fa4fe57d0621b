"""What every holder of kernel resources in `live/` shares: released by `close()`, also on the way out of
a `with` block, whatever happened inside it, so that no fd, mapping or trace instance outlives a run."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Owned:
    """A holder of resources: subclasses release them in `close()`, which must be idempotent."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
