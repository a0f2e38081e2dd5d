Buffer = bytes | bytearray | memoryview

def diff_and_seal_many(
    chunks: list[memoryview] | list[Buffer],
    olds: list[bytes],
    *,
    hash_key: bytes,
    id_max: int,
    level: int,
    data_key: bytes | None,
    raw: bool,
) -> list[tuple[bytes, list[tuple[int, int, bool]], list[tuple[str, bytes, int] | None]]]: ...
