import builtins
from typing import Any

def list(fd: int, /) -> builtins.list[tuple[str, Any, int, int, int, int, int, int]]: ...
