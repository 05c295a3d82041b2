import builtins
from typing import Any

def list(
    fd: int, xattrs: bool = ..., strip: int = ..., since: int = ..., /
) -> builtins.list[tuple[str, Any, int, int, int, int, int, int, int, int, int]]: ...
