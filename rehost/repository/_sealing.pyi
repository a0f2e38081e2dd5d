from collections.abc import Sequence

_Pieces = Sequence[bytes | bytearray | memoryview]

def blob_ids(key: bytes, pieces: _Pieces, max_len: int, /) -> list[str | None]: ...
def seal(
    level: int, pieces: _Pieces, key: bytes | None, aads: Sequence[bytes], raw: bool = False, /
) -> list[bytes]: ...
